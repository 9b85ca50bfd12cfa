"""vitrieval.disk_errors: a write the machine refuses is one line naming the path, the cause and the fix (the CLI's
one error path reports it, exit 2); other OSErrors stay tracebacks (bugs or I/O failures, not the user's to fix)."""

from __future__ import annotations

import errno
import os

import pytest

from vitrieval.cli import is_user_error, report_error
from vitrieval.disk_errors import check_writable, describe, is_disk_error, naming


@pytest.mark.parametrize("code, cause, hint", [
    (errno.ENOSPC, "No space left on device (ENOSPC)", "free some space"),
    (errno.EDQUOT, "Disk quota exceeded (EDQUOT)", "raise the quota"),
    (errno.EROFS, "Read-only file system (EROFS)", "mounted read-only"),
    (errno.EACCES, "Permission denied (EACCES)", "run as its owner"),
    (errno.EPERM, "Operation not permitted (EPERM)", "immutable attribute"),
])
def test_a_disk_error_is_described_by_its_path_cause_and_fix(code, cause, hint):
    exc = OSError(code, os.strerror(code), "/data/cat.idx/journal.log")
    assert is_disk_error(exc) and is_user_error(exc)
    text = describe(exc, "/elsewhere")
    assert text.startswith(f"/data/cat.idx/journal.log: {cause}; ") and hint in text  # the error's own path first


def test_a_failed_write_that_names_no_file_is_named_by_the_command(capsys):
    with pytest.raises(OSError) as caught, naming("/data/cat.idx"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a failed write() or fsync() raises
    assert caught.value.filename == "/data/cat.idx"
    assert report_error("index", caught.value) == 2
    assert capsys.readouterr().err == ("vitrieval index: error: /data/cat.idx: No space left on device (ENOSPC); "
                                       "free some space (or raise the quota) and run it again\n")


def test_other_os_errors_are_not_user_errors_and_keep_their_name():
    exc = OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(OSError), naming("/data/cat.idx"):
        raise exc
    assert exc.filename is None and not is_disk_error(exc) and not is_user_error(exc)


def test_a_writable_folder_passes_the_check_and_keeps_no_probe(tmp_path):
    (tmp_path / "index.json").write_text("{}")
    check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_a_read_only_mount_is_not_writable(tmp_path):
    from mounts import PYTHON, in_mount_namespace, read_only

    mount = tmp_path / "ro"
    mount.mkdir()
    done = in_mount_namespace(
        f"mount -t tmpfs -o size=1m tmpfs {mount} && {read_only(mount)} && {PYTHON} -c 'from vitrieval.disk_errors "
        f"import check_writable; check_writable(\"{mount}\")'")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"vitrieval.disk_errors.NotWritable: cannot write {mount}: Read-only file system (EROFS); the file system "
        "is mounted read-only: use a folder on a writable one")


def test_an_immutable_file_in_the_folder_makes_it_unwritable(tmp_path):
    """``chattr +i`` on ``index.json``: the folder itself takes a new file, but the first swap would fail."""
    import shutil
    import subprocess

    from vitrieval.disk_errors import NotWritable

    held = tmp_path / "index.json"
    held.write_text("{}")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(held)], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE and a file system that has it)")
    try:
        with pytest.raises(NotWritable, match=f"cannot write {held}: Permission denied"):
            check_writable(tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(held)], check=True)
