"""Serving with runtime="onnx" needs no torch: the service runs and searches in a process where importing torch,
torchvision or timm fails (a meta-path finder on ``PYTHONPATH``'s ``sitecustomize``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnx_world import onnx_world
from ranking import assert_same_ranking
from vitrieval.index import Index

SRC = Path(__file__).resolve().parents[1] / "src"

BLOCKER = '''
import sys

class _NoTorch:
    """Refuses torch, torchvision and timm, as an environment without them would."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the torch-free test)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''

SERVICE = '''
import json, sys
from fastapi.testclient import TestClient
from vitrieval.serve.app import create_app

index_dir, query = sys.argv[1], sys.argv[2]
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
client = TestClient(create_app(index_dir, runtime="onnx"))
with open(query, "rb") as fh:
    r = client.post("/search?k=5", files={"file": ("q.png", fh.read(), "image/png")})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
try:  # the torch runtime cannot run here: a one-line error that names the way out
    create_app(index_dir, runtime="torch")
    torch_error = None
except ValueError as exc:
    torch_error = str(exc)
print(json.dumps({"blocked": blocked, "status": r.status_code, "results": r.json()["results"], "heavy": heavy,
                  "health": client.get("/healthz").json()["count"], "torch_error": torch_error}))
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return onnx_world(tmp_path_factory)


def test_the_service_searches_without_torch(world: dict, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    query = world["images"][7]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    proc = subprocess.run([sys.executable, "-c", SERVICE, str(world["index_dir"]), str(query)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blocked"] and out["heavy"] == [] and out["status"] == 200 and out["health"] == 30
    assert out["torch_error"].startswith("runtime torch needs torch, which is not installed here: use runtime onnx")
    expected = Index.load(world["index_dir"]).search([query], k=5)[0]
    assert_same_ranking(out["results"], expected, score_tol=1e-4)
