"""Issue 28: an index folder owned by another user, for real. The tests run as root, whom no file mode stops, so
the commands under test run in a child process dropped to ``nobody`` (uid/gid 65534, no supplementary groups)
against a folder owned by root, mode 0755 (files 0644): a writer is refused in one line and changes nothing; a
reader works, reading a pending write from ``journal.sqlite`` read-only.

Where the interpreter lies in a folder closed to others (a pyenv under ``/root``, 0700), the child runs in a private
mount namespace that opens that folder for it alone (:func:`_opening`). Skipped (with the reason) when the tests do
not run as root, when the drop or the namespace is refused, or when ``nobody`` still cannot import vitrieval.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from index_world import COLOURS, build_world, good_images, make_images
from mounts import SRC

NOBODY = 65534
"""uid and gid of ``nobody`` / ``nogroup``."""


def _closed_to_others(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that other users may not enter, or ``path`` itself if they may not
    read it; ``None`` when ``nobody`` can read it."""
    for folder in reversed(path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    mode = path.stat().st_mode
    return None if mode & stat.S_IROTH and (not path.is_dir() or mode & stat.S_IXOTH) else path


def _needed() -> dict[str, Path]:
    return {"the interpreter": Path(sys.executable).resolve(), "the standard library": Path(os.__file__).resolve(),
            "the environment's packages": Path(sysconfig.get_paths()["purelib"]),
            "vitrieval's sources": SRC / "vitrieval" / "__init__.py"}


def _opening() -> list[str]:
    """Shell lines that, in a private mount namespace, open to others each folder closed on the way to what the
    child needs (``/root``, 0700, holding a pyenv interpreter): the folder inside it on the way is bind-mounted
    aside, a 0755 tmpfs covers the closed folder, and the inside folder is bound back. The machine's mounts and
    modes are not touched."""
    lines, opened = [], set()
    for path in _needed().values():
        closed = _closed_to_others(path)
        if closed is None or closed == path or closed in opened:
            continue
        inside = shlex.quote(str(closed / path.relative_to(closed).parts[0]))
        lines += ['aside="$(mktemp -d)"', f'mount --bind {inside} "$aside"',
                  f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(closed))}", f"mkdir -p {inside}",
                  f'mount --bind "$aside" {inside}', 'umount "$aside"', 'rmdir "$aside"']
        opened.add(closed)
    return lines


def _why_not_as_nobody() -> str | None:
    """Why a child cannot run vitrieval as ``nobody`` here; ``None`` when it can."""
    if os.geteuid() != 0:
        return "runs only as root (dropping to uid 65534 needs root; as another user the files' modes are tested " \
               "by the read-only tests)"
    if _opening() and (shutil.which("unshare") is None or shutil.which("setpriv") is None):
        return "the interpreter is in a folder closed to other users, and unshare(1) / setpriv(1) are missing"
    try:
        done = _as_nobody(["-c", "import vitrieval.cli, faiss, fastapi, torch"], Path("/"))
    except (PermissionError, OSError) as exc:  # no CAP_SETUID / CAP_SETGID in this container
        return f"cannot drop to uid {NOBODY}: {exc}"
    if done.returncode != 0:
        return f"vitrieval does not import as uid {NOBODY}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def _as_nobody(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` as ``nobody`` (uid, gid 65534, no supplementary groups), with vitrieval's sources; in a
    private mount namespace that opens the folders closed on the way to the interpreter (:func:`_opening`) where
    there are some."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HOME": str(home)}
    opening = _opening()
    if not opening:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=home,
                              timeout=300, user=NOBODY, group=NOBODY, extra_groups=[])
    shell = "set -e; " + "; ".join(opening) + \
        f'; exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", sys.executable, *args], capture_output=True,
                          text=True, env=env, cwd=home, timeout=300)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: a file's bytes, ``None`` for a folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def world():
    """The tiny index world under a fresh folder open to others (pytest's own is root's, 0700), owned by root with
    folders 0755 and files 0644, and a removal of id 0 pending in its journal (written by root, not compacted)."""
    reason = _why_not_as_nobody()
    if reason is not None:
        pytest.skip(reason)
    top = Path(tempfile.mkdtemp(prefix="vitrieval-other-user-"))
    try:
        os.chmod(top, 0o755)
        world = build_world(top / "world")
        from vitrieval.index import Index

        assert Index.load(world["index_dir"]).remove([0], save=False) == 1  # read back only from the journal
        world["more"] = make_images(top / "more", COLOURS[6:7], prefix="more")
        world["token"] = top / "token"
        world["token"].write_text("a-token-of-the-other-user-test\n")
        for path in [top, *top.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        world["home"] = top / "home"
        world["home"].mkdir(mode=0o700)
        os.chown(world["home"], NOBODY, NOBODY)
        assert (world["index_dir"] / "journal.sqlite").is_file() and world["index_dir"].stat().st_uid == 0
        yield world
    finally:
        shutil.rmtree(top)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_with_writes_as_another_user_is_refused_in_one_line_and_changes_nothing(world):
    folder = world["index_dir"]
    before = _snapshot(folder)
    done = _as_nobody(["-m", "vitrieval", "serve", "--index", str(folder), "--write-token-file", str(world["token"]),
                       "--port", str(_free_port())], world["home"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "serving" not in done.stdout
    assert done.stderr.startswith(f"vitrieval serve: error: writes are on but cannot write {folder}: Permission "
                                  "denied (EACCES); this user may not use it")
    assert done.stderr.endswith("; or serve it read-only (no write token)\n")
    assert _snapshot(folder) == before


def test_index_add_as_another_user_is_refused_in_one_line_and_changes_nothing(world):
    folder = world["index_dir"]
    before = _snapshot(folder)
    done = _as_nobody(["-m", "vitrieval", "index", "--images", str(world["more"][0].parent), "-o", str(folder),
                       "--add", "--no-progress", "--num-workers", "0"], world["home"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"vitrieval index: error: cannot write {folder}: Permission denied (EACCES); "
                                  "this user may not use it")
    assert _snapshot(folder) == before


def test_search_as_another_user_reads_the_folder_and_its_pending_journal(world):
    """Reading needs no write access: the journal is opened read-only, and its pending removal is applied."""
    from vitrieval.index import Index

    folder, query = world["index_dir"], good_images(world)[0]
    reference = Index.load(folder).search([str(query)], k=30)[0]  # root's, in this process
    before = _snapshot(folder)
    done = _as_nobody(["-m", "vitrieval", "search", "--index", str(folder), str(query), "-k", "30", "--json"],
                      world["home"])
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)[0]["results"]
    assert [h["id"] for h in hits] == [h.id for h in reference] and len(hits) == 29
    assert 0 not in {h["id"] for h in hits}  # the removal pending in journal.sqlite was read
    assert max(abs(h["score"] - r.score) for h, r in zip(hits, reference)) <= 1e-6
    assert _snapshot(folder) == before
