"""The trainers' one loader per run: worker processes start once, the batches and the position are those of one
loader per epoch (any worker count, resumed at an epoch boundary), and an unreadable image with the default
``on_bad_image=stop`` ends ``vitrieval train`` with the one-line error naming the file (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.utils.data import dataloader as torch_dataloader

from vitrieval.cli import main
from vitrieval.config import apply_overrides
from vitrieval.data.dataset import SeededTableDataset
from vitrieval.data.tuples import TupleImages
from vitrieval.presets import load_preset
from vitrieval.training.pk_trainer import Trainer

TINY = ["model.name=deit_tiny_patch16_224", "model.pretrained=false", "model.image_size=32", "model.patch_size=8",
        "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "train.amp=off"]
PK = [*TINY, "train.batch_size=16", "train.eval_every=0", "train.log_every=1", "memory.size=32",
      "memory.start_iteration=2", "loss.koleo_weight=0.5"]


def _pools(monkeypatch) -> list[str]:
    """The worker pools the DataLoaders of a run start (the dataset type of each)."""
    started: list[str] = []
    original = torch_dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        started.append(type(loader.dataset).__name__)
        original(self, loader)

    monkeypatch.setattr(torch_dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    return started


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_pk_workers_start_once_per_run_and_batches_match_the_main_process(products_32, tmp_path, monkeypatch):
    """8 training classes, 4 per batch: 2 batches an epoch, so 7 iterations span 4 epochs; the training loader
    starts its two workers once, and the losses equal those of decoding in the main process."""
    started = _pools(monkeypatch)
    runs = {}
    for workers in (0, 2):
        cfg = apply_overrides(load_preset("cpu-tiny"), [f"data.root={products_32}", *PK, "train.iterations=7",
                                                        f"data.num_workers={workers}"])
        trainer = Trainer(cfg, tmp_path / f"w{workers}", progress=False)
        assert trainer.sampler.epoch_length(0) == 2
        trainer.run()
        assert (trainer.epoch, trainer.batch_in_epoch) == (3, 1)
        runs[workers] = _losses(tmp_path / f"w{workers}")
    assert started.count(SeededTableDataset.__name__) == 1, started
    assert len(runs[0]) == 7 and runs[0] == runs[2]


def test_pk_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(products_32, tmp_path):
    def run(out: Path, iterations: int, resume: bool = False) -> None:
        cfg = apply_overrides(load_preset("cpu-tiny"), [f"data.root={products_32}", *PK,
                                                        f"train.iterations={iterations}", "data.num_workers=1"])
        Trainer(cfg, out, resume=resume, progress=False).run()

    run(tmp_path / "whole", 6)
    run(tmp_path / "split", 4)  # stops after epoch 1's last batch: position (1, 2)
    run(tmp_path / "split", 6, resume=True)
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("whole", "split"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")


def _with_a_corrupt_training_image(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    first_class = sorted(p for p in dst.iterdir() if p.is_dir())[0]  # the folder reader trains on the first half
    victim = sorted(first_class.iterdir())[1]
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return victim


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_training_image_stops_train_with_one_line_naming_it(products_32, tmp_path, capsys, workers):
    """Issue 14 case 6: was "Caught ImageDecodeError in DataLoader worker process 1" and a traceback."""
    victim = _with_a_corrupt_training_image(products_32, tmp_path / "data")
    sets = [f"--set={s}" for s in [*PK, "train.iterations=12", f"data.num_workers={workers}"]]
    code = main(["train", "--preset", "cpu-tiny", "--data-root", str(tmp_path / "data"), "--output",
                 str(tmp_path / "run"), "--no-progress", *sets])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [f"vitrieval train: error: cannot read image {victim}: corrupt or truncated image data "
                     + lines[0].split("corrupt or truncated image data ", 1)[1]]
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_a_corrupt_image_in_a_tuple_stops_tuple_training_naming_it(tmp_path, capsys, monkeypatch):
    """With no negatives nothing is mined (no extraction): the corrupt query is met by the tuple loader's worker."""
    from vitrieval.data.readers import read_dataset
    from vitrieval.data.sfm120k_layout import write_sfm120k_layout
    from vitrieval.data.synthetic import render_product

    def views(ids, n):
        return {c: [render_product(c, v, size=32, seed=5) for v in range(n)] for c in ids}

    root = tmp_path / "sfm"
    write_sfm120k_layout(root, views(range(12), 4), views(range(100, 103), 3), seed=0)
    table = read_dataset("sfm120k", root).split("train")
    victim = Path(table[int(table.extras["pairs"]["train"][0][0])].path)
    victim.write_bytes(b"not an image")
    started = _pools(monkeypatch)
    sets = [f"--set={s}" for s in [*TINY, "tuples.query_size=1000", "tuples.negatives=0", "tuples.per_batch=4",
                                   "train.eval_every=0", "data.num_workers=2"]]
    code = main(["train", "--preset", "sfm120k-irt-l-deit-s", "--data-root", str(root), "--output",
                 str(tmp_path / "run"), "--no-progress", *sets])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"vitrieval train: error: cannot read image {victim}: not a recognised image format" in err
    assert started == [TupleImages.__name__]
