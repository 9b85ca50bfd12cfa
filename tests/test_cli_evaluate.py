"""``vitrieval evaluate``: the command's flags, JSON, printed layout and errors on tiny fixtures.

Every number is checked against :func:`vitrieval.evaluation.protocol.evaluate_model` or the metric functions called
directly on ``extract()`` descriptors of the same images (``evaluation_fixtures``); the library's tests:
``test_evaluation_protocol.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest
import torch

import test_evaluation_protocol as _protocol_fixtures
import vitrieval
from evaluation_fixtures import CATEGORY_KEYS, EVAL, tiny_encoder, write_shapes_folder
from evaluation_fixtures import direct as _direct
from vitrieval.config import ModelConfig
from vitrieval.data.readers import read_dataset
from vitrieval.evaluation.protocol import evaluate_model
from vitrieval.metrics import recall_at_k
from vitrieval.model import Encoder

roxford_root = _protocol_fixtures.roxford_root  # the revisited-format fixture


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/<class>/<image>``: 6 classes x 5 images; the first 3 classes train, the last 3 test."""
    return write_shapes_folder(tmp_path_factory.mktemp("folder") / "shapes")


# -- the command -------------------------------------------------------------------------------------------------

def _run(argv: list[str]) -> int:
    from vitrieval.cli import evaluate_cmd

    parser = argparse.ArgumentParser(prog="vitrieval")
    module_sub = parser.add_subparsers(dest="command")
    evaluate_cmd.add_parser(module_sub)
    return evaluate_cmd.run(parser.parse_args(argv))


def _importable(name: str) -> bool:
    try:
        importlib.import_module(f"vitrieval.cli.{name}_cmd")
        return True
    except ImportError:
        return False


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch):
    """``vitrieval.cli.main`` with only the sub-commands that exist yet (others are written concurrently)."""
    from vitrieval import cli

    monkeypatch.setattr(cli, "COMMANDS", tuple(c for c in cli.COMMANDS if _importable(c)))
    return cli.main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return tiny_encoder().save(tmp_path_factory.mktemp("cli") / "model")


def test_cli_checkpoint_json(main, model_dir: Path, folder_root: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "sop.json"
    out.parent.mkdir()
    code = main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root",
                 str(folder_root), "-o", str(out), "--workers", "0", "--batch-size", "16", "--device", "cpu",
                 "--no-progress"])
    assert code == 0
    payload = json.loads(out.read_text())
    assert set(payload) == CATEGORY_KEYS and payload["model"] == str(model_dir)
    expected = evaluate_model(vitrieval.load(model_dir), "folder", folder_root, **EVAL)
    assert payload["recall_at_k"] == expected["recall_at_k"]
    text = capsys.readouterr().out
    assert text.startswith("folder  R@1 ")
    assert f"results written to {out}" in text
    assert not (model_dir / "pca.safetensors").exists()
    # --json: one meaning across commands (search, reproduce --list, evaluate): the JSON alone on stdout
    assert main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "--json", "-o", str(tmp_path / "again.json"), "--workers", "0", "--batch-size", "16", "--device",
                 "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads((tmp_path / "again.json").read_text()) == payload
    assert "results written to" in captured.err


def test_cli_pca_never_edits_the_model_and_save_pca_writes_a_new_one(model_dir: Path, folder_root: Path,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """``evaluate --pca``: RUN/model byte-identical afterwards; ``--save-pca DIR``: a new model folder to index."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir / "model")
    before = {f.name: f.read_bytes() for f in (run_dir / "model").iterdir()}
    assert _run(["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "--pca", "8", "--workers", "0", "--no-progress", "-o", str(tmp_path / "r.json")]) == 0
    assert {f.name: f.read_bytes() for f in (run_dir / "model").iterdir()} == before
    assert json.loads((tmp_path / "r.json").read_text())["pca"]["fitted_on"] == "folder/train"
    assert _run(["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "--pca", "8", "--save-pca", str(tmp_path / "pca8"), "--workers", "0", "--no-progress"]) == 0
    assert f"written to {tmp_path / 'pca8'}" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in (run_dir / "model").iterdir()} == before
    saved = vitrieval.load(tmp_path / "pca8")
    assert saved.descriptor_dim == 8 and saved.fingerprint() != vitrieval.load(run_dir).fingerprint()
    # a plain evaluate afterwards still reports the model's own 192-d descriptors
    assert _run(["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "--workers", "0", "--no-progress", "-o", str(tmp_path / "plain.json")]) == 0
    assert json.loads((tmp_path / "plain.json").read_text())["descriptor_dim"] == 192
    # --save-pca never over an existing model, nor without a PCA
    from vitrieval.cli import CLIError

    with pytest.raises(CLIError, match="already there"):
        _run(["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-root", str(folder_root),
              "--pca", "8", "--save-pca", str(tmp_path / "pca8"), "--workers", "0", "--no-progress"])
    with pytest.raises(CLIError, match="goes with --pca"):
        _run(["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-root", str(folder_root),
              "--save-pca", str(tmp_path / "x"), "--workers", "0", "--no-progress"])


def test_cli_user_errors_exit_2(main, model_dir: Path, folder_root: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    base = ["evaluate", "--checkpoint", str(model_dir), "--workers", "0", "--no-progress"]
    assert main(base + ["--dataset", "folder", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(base + ["--dataset", "imagenet", "--data-root", str(folder_root)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "sop" in err
    assert main(base + ["--dataset", "folder", "--data-root", str(folder_root), "--whiten"]) == 2
    assert "--whiten needs --pca" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--dataset", "folder", "--data-root",
                 str(folder_root)]) == 2
    assert "not a vitrieval model folder" in capsys.readouterr().err
    assert main(base + ["--dataset", "sop", "--data-root", str(folder_root)]) == 2
    assert "Ebay_train.txt" in capsys.readouterr().err


def test_cli_unreadable_image_is_named(main, model_dir: Path, folder_root: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(folder_root, root)
    (root / "class5" / "broken.png").write_bytes(b"")
    assert main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(root),
                 "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(root / "class5" / "broken.png") in err and "empty" in err


def test_cli_model_offline_without_weights_names_pretrained_file(main, folder_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored afterwards: the command sets it for its process
    code = main(["evaluate", "--model", "deit_tiny_patch16_224", "--dataset", "folder", "--data-root",
                 str(folder_root), "--image-size", "32", "--workers", "0", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--pretrained-file" in err and "deit_tiny_patch16_224" in err and "Traceback" not in err
    assert main(["evaluate", "--model", "no_such_model_xyz", "--pretrained-file", "w.pth", "--dataset", "folder",
                 "--data-root", str(folder_root)]) == 2
    assert "w.pth" in capsys.readouterr().err


def test_cli_model_with_pretrained_file_is_irt_o(folder_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import timm

    torch.manual_seed(3)
    weights = tmp_path / "deit_tiny.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    out = tmp_path / "irt_o.json"
    assert _run(["evaluate", "--model", "deit_tiny_patch16_224", "--pretrained-file", str(weights), "--dataset",
                 "folder", "--data-root", str(folder_root), "--image-size", "32", "--workers", "0",
                 "--no-progress", "-o", str(out), "--ks", "1,2"]) == 0
    payload = json.loads(out.read_text())
    assert payload["model"] == "deit_tiny_patch16_224" and payload["image_size"] == 32
    enc = Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=True, pretrained_file=str(weights),
                              image_size=32)).eval()
    test = read_dataset("folder", folder_root).split("test")
    z = _direct(enc, test)
    assert payload["recall_at_k"] == {str(k): v for k, v in recall_at_k(z, test.labels, [1, 2]).items()}


def test_cli_off_the_shelf_convnet_takes_a_pooling(folder_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """IRT_O of a convnet (Fig 2's R50 row): --model with --pooling gem equals the encoder built directly; without
    --pooling the token default is refused naming the flag; --pooling with --checkpoint is refused."""
    import timm

    torch.manual_seed(4)
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    common = ["--pretrained-file", str(weights), "--dataset", "folder", "--data-root", str(folder_root),
              "--image-size", "32", "--workers", "0", "--no-progress", "--ks", "1,2"]
    out = tmp_path / "r18.json"
    assert _run(["evaluate", "--model", "resnet18", "--pooling", "gem", "-o", str(out), *common]) == 0
    payload = json.loads(out.read_text())
    enc = Encoder(ModelConfig(name="resnet18", pretrained=True, pretrained_file=str(weights), image_size=32,
                              pooling="gem")).eval()
    test = read_dataset("folder", folder_root).split("test")
    assert payload["descriptor_dim"] == 512
    assert payload["recall_at_k"] == {str(k): v for k, v in recall_at_k(_direct(enc, test), test.labels,
                                                                        [1, 2]).items()}
    from vitrieval.cli import main

    capsys.readouterr()
    assert main(["evaluate", "--model", "resnet18", *common]) == 2
    err = capsys.readouterr().err
    assert "'cls' does not apply to resnet18" in err and "--pooling" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--pooling", "gem", *common[2:]]) == 2
    assert "--pooling goes with --model" in capsys.readouterr().err


@pytest.mark.skipif(not _importable("demo"), reason="vitrieval.cli.demo_cmd is not written yet")
def test_cli_main_with_every_command(model_dir: Path, folder_root: Path, tmp_path: Path) -> None:
    from vitrieval.cli import main

    out = tmp_path / "all.json"
    assert main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "-o", str(out), "--workers", "0", "--no-progress"]) == 0
    assert set(json.loads(out.read_text())) == CATEGORY_KEYS


def test_cli_rerank_and_scales(model_dir: Path, folder_root: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    """``--rerank aqe,dba --rerank-n 3 --rerank-alpha 1 --scales 1,0.5``: the JSON equals the library call, and
    the printed table has the plain / +αQE / +αQE+DBA rows."""
    from vitrieval.evaluation.rerank_variants import RerankOptions

    out = tmp_path / "r.json"
    assert _run(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
                 "--rerank", "aqe,dba", "--rerank-n", "3", "--rerank-alpha", "1", "--scales", "1,0.5",
                 "--workers", "0", "--no-progress", "-o", str(out)]) == 0
    payload = json.loads(out.read_text())
    expected = evaluate_model(vitrieval.load(model_dir), "folder", folder_root, scales=(1, 0.5),
                              rerank=RerankOptions(("aqe", "dba"), 3, 1.0), **EVAL)
    assert payload == json.loads(json.dumps({**expected, "model": str(model_dir)}))
    assert payload["rerank"]["n"] == 3 and payload["scales"] == [1.0, 0.5]
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[3:6]] == ["plain", "+αQE", "+αQE+DBA"]


@pytest.mark.parametrize("argv, message", [
    (["--rerank", "qe"], "re-ranking methods"),
    (["--scales", "1,-1"], "positive"),
    (["--whiten", "zca"], "invalid choice"),
])
def test_cli_rerank_and_scales_errors(model_dir: Path, folder_root: Path, argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
              *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_whiten_learned_needs_the_pairs_dataset(main, model_dir: Path, folder_root: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    base = ["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
            "--workers", "0", "--no-progress"]
    assert main(base + ["--whiten", "learned"]) == 2
    assert "--pca-fit-dataset sfm120k" in capsys.readouterr().err
    # a fit set without pairs is one clear line
    assert main(base + ["--whiten", "learned", "--pca-fit-dataset", "folder", "--pca-fit-root",
                        str(folder_root)]) == 2
    assert "query-positive pairs" in capsys.readouterr().err


def test_cli_rerank_settings_without_rerank_and_bad_values(main, model_dir: Path, folder_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    base = ["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root", str(folder_root),
            "--workers", "0", "--no-progress"]
    assert main(base + ["--rerank-n", "5"]) == 2
    assert "go with --rerank" in capsys.readouterr().err
    assert main(base + ["--rerank", "aqe", "--rerank-alpha", "-1"]) == 2
    assert "--rerank-alpha >= 0" in capsys.readouterr().err


def test_cli_distractors_errors(main, model_dir: Path, folder_root: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    base = ["evaluate", "--checkpoint", str(model_dir), "--workers", "0", "--no-progress"]
    np.save(tmp_path / "x.npy", np.ones((3, 192), dtype=np.float32))
    assert main(base + ["--dataset", "folder", "--data-root", str(folder_root), "--distractors",
                        str(tmp_path / "x.npy")]) == 2
    assert "roxford5k / rparis6k" in capsys.readouterr().err
    (tmp_path / "roxford5k").mkdir()
    assert main(base + ["--dataset", "roxford5k", "--data-root", str(tmp_path / "roxford5k"), "--distractors",
                        str(tmp_path / "nothing.npy")]) == 2
    assert "no such .npy file" in capsys.readouterr().err


def test_cli_distractors_folder_is_embedded_cached_and_reused(model_dir: Path, roxford_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``--distractors DIR --scales 1,0.5 --pca 4``: the folder is embedded at the evaluation's scales and resize
    before PCA, reduced by the fitted PCA, and equals the library with those descriptors; a second run embeds
    nothing (the cache of this model)."""
    import vitrieval.index.build as build_module
    from vitrieval.data.readers import read_dataset as read
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.evaluation.pca_fit import PCAOptions
    from vitrieval.multiscale import MultiScaleEncoder

    roxford = roxford_root
    distractor_dir = tmp_path / "x"
    write_shapes_folder(distractor_dir)
    cache = tmp_path / "cache"
    base = ["evaluate", "--checkpoint", str(model_dir), "--dataset", "roxford5k", "--data-root", str(roxford),
            "--scales", "1,0.5", "--pca", "4", "--workers", "0", "--no-progress",
            "--distractors", str(distractor_dir), "--distractor-cache", str(cache), "--distractor-shard-size", "7"]
    assert _run(base + ["-o", str(tmp_path / "a.json")]) == 0
    payload = json.loads((tmp_path / "a.json").read_text())
    assert payload["distractors"]["count"] == 30 and len(list(cache.iterdir())) == 1

    encoder = vitrieval.load(model_dir)
    features = extract(MultiScaleEncoder(encoder, (1.0, 0.5)), read("folder", distractor_dir),
                       ExtractionOptions(batch_size=64, num_workers=0, resize="square", output="normalized",
                                         progress=False)).descriptors
    expected = evaluate_model(encoder, "roxford5k", roxford, scales=(1, 0.5), pca=PCAOptions(dim=4),
                              distractor_features=lambda model, options: features, **EVAL)
    assert payload["distractors"] == json.loads(json.dumps(expected["distractors"]))
    assert payload["map"] == expected["map"] and payload["distractors"]["map"] != payload["map"]

    calls = []
    monkeypatch.setattr(build_module, "extract", lambda *a, **k: calls.append(1) or extract(*a, **k))
    assert _run(base + ["-o", str(tmp_path / "b.json")]) == 0
    assert calls == [] and json.loads((tmp_path / "b.json").read_text()) == payload



def test_cli_full_decode_turns_fast_decoding_off(model_dir: Path, roxford_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``--full-decode``: the extraction decodes every JPEG at full size (default: fast decoding, as training), and
    the distractor cache gets the evaluation's own extraction options (at its resize, before the PCA), so it keys
    on them."""
    from types import SimpleNamespace

    import numpy as np

    import vitrieval.evaluation.protocol as protocol
    import vitrieval.index.descriptor_cache as descriptor_cache
    from vitrieval.embed import ExtractionOptions

    seen: list[bool] = []
    real = protocol.evaluate_model
    monkeypatch.setattr(protocol, "evaluate_model",
                        lambda *a, **k: seen.append(k["extraction"].fast_decode) or real(*a, **k))
    asked: list[tuple] = []

    def cached(model, fingerprint, images, root, options, **kwargs):  # records the call
        asked.append((options, kwargs, descriptor_cache.preprocessing_key(model, options)))
        one = np.full((1, model.descriptor_dim), model.descriptor_dim ** -0.5, np.float32)  # one unit distractor
        return SimpleNamespace(descriptors=one, directory=tmp_path, embedded=False, skipped=[])

    monkeypatch.setattr(descriptor_cache, "cached_descriptors", cached)
    (tmp_path / "x").mkdir()
    base = ["evaluate", "--checkpoint", str(model_dir), "--dataset", "roxford5k", "--data-root", str(roxford_root),
            "--workers", "0", "--no-progress", "--device", "cpu", "--amp", "off", "--distractors",
            str(tmp_path / "x"), "--distractor-shard-size", "10"]
    assert _run(base + ["-o", str(tmp_path / "fast.json")]) == 0
    assert _run(base + ["--full-decode", "-o", str(tmp_path / "full.json")]) == 0
    assert seen == [True, False]
    for (options, kwargs, key), fast in zip(asked, (True, False), strict=True):
        assert options == ExtractionOptions(num_workers=0, amp="off", resize="square", output="normalized",
                                            progress=False, fast_decode=fast)
        assert kwargs["shard_size"] == 10 and key["fast_decode"] is fast and key["pca"] == "before"
