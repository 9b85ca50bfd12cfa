"""Issue 14, case 5: a file name that is not UTF-8 is indexed like any other, its path kept faithfully (the same
bytes on the way back), searchable, and shown to HTTP clients without breaking the response."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, make_images, make_model
from vitrieval.cli import main
from vitrieval.index import Index
from vitrieval.serve import create_app

NAME = b"caf\xe9 \xff.png"  # Latin-1 bytes: not UTF-8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("names")
    images = root / "images"
    paths = make_images(images, COLOURS[:2])
    odd = os.path.join(os.fsencode(images), NAME)
    try:
        with open(odd, "wb") as fh:
            fh.write(paths[0].read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    os.unlink(paths[0])
    return {"root": root, "model": make_model(root / "model"), "images": images, "odd": odd}


def test_a_non_utf8_name_is_indexed_with_its_exact_bytes(world, tmp_path, capsys):
    out = tmp_path / "cat.idx"
    assert main(["index", "--checkpoint", str(world["model"]), "--images", str(world["images"]), "-o", str(out),
                 "--no-progress", "--workers", "0"]) == 0
    assert "indexed 10 image(s)" in capsys.readouterr().out
    index = Index.load(out)
    odd = [e for e in index.entries() if os.fsencode(e.path) == world["odd"]]
    assert len(odd) == 1 and Path(odd[0].path).is_file()
    hits = index.search([os.fsdecode(world["odd"])], k=1)[0]
    assert hits[0].id == odd[0].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    rerun = index.add(world["images"], num_workers=0, progress=False)  # the same name is recognised as indexed
    assert rerun.added == 0 and rerun.already_indexed == 10


def test_http_shows_the_name_and_serves_its_thumbnail(world, tmp_path):
    index = Index.build(world["model"], world["images"], tmp_path / "h.idx", factory="Flat", num_workers=0,
                        progress=False)
    client = TestClient(create_app(index))
    data = Path(os.fsdecode(world["odd"])).read_bytes()
    r = client.post("/search?k=1", files={"file": ("q.png", data, "image/png")})
    assert r.status_code == 200, r.text
    hit = r.json()["results"][0]
    assert hit["path"] == "caf\ufffd \ufffd.png"
    assert client.get(hit["thumbnail_url"]).status_code == 200


def test_search_prints_the_name_as_its_bytes(world, tmp_path):
    out = tmp_path / "p.idx"
    Index.build(world["model"], world["images"], out, factory="Flat", num_workers=0, progress=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PYTHONUTF8": "0",
           "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}  # a strict UTF-8 stdout
    query = os.fsdecode(world["odd"])
    done = subprocess.run([sys.executable, "-m", "vitrieval", "search", "--index", str(out), "-k", "1", query],
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert world["odd"] in done.stdout.splitlines()[-1]  # the table's row: the name's own bytes
    done = subprocess.run([sys.executable, "-m", "vitrieval", "search", "--index", str(out), "--json", "-k", "1",
                           query], capture_output=True, env=env, timeout=300)
    result = json.loads(done.stdout)[0]["results"][0]  # JSON escapes it; decoding gives the same bytes back
    assert os.fsencode(result["path"]) == world["odd"]
