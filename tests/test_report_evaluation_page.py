"""``vitrieval evaluate --report FILE.html`` (:mod:`vitrieval.report.evaluation_page`): a self-contained page whose
worst query and per-class recall agree with a brute-force ranking of the same descriptors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import test_evaluation_protocol as _protocol_fixtures
import vitrieval
from evaluation_fixtures import COLOURS, SHAPES, direct, draw, tiny_encoder
from vitrieval.cli import main
from vitrieval.data.readers import read_dataset

roxford_root = _protocol_fixtures.roxford_root


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/<class>/<image>``: 8 classes x 4 images (4 test classes) whose colours and shapes are drawn at
    random, not by class: the first correct neighbour comes at many different ranks."""
    root = tmp_path_factory.mktemp("page") / "mixed"
    rng = np.random.default_rng(0)
    for c in range(8):
        for i in range(4):
            p = root / f"class{c}" / f"img{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            draw(COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))],
                 dark=bool(rng.integers(2))).save(p)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return tiny_encoder().save(tmp_path_factory.mktemp("page-model") / "model")


def _evaluate(model_dir: Path, dataset: str, root: Path, page: Path, *extra: str) -> str:
    code = main(["evaluate", "--checkpoint", str(model_dir), "--dataset", dataset, "--data-root", str(root),
                 "--report", str(page), "--workers", "0", "--device", "cpu", "--no-progress", *extra])
    assert code == 0
    return page.read_text()


def _self_contained(text: str, n_images: int) -> None:
    images = re.findall(r"<img [^>]*>", text)
    assert len(images) == n_images
    assert all('src="data:image/png;base64,' in tag for tag in images)
    assert not re.search(r"https?://", text)
    assert "<script" not in text and "<link" not in text


def test_page_shows_the_worst_query_and_per_class_recall(model_dir: Path, folder_root: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    text = _evaluate(model_dir, "folder", folder_root, tmp_path / "r.html", "--report-queries", "4",
                     "--report-k", "3")
    assert f"report written to {tmp_path / 'r.html'}" in capsys.readouterr().out
    _self_contained(text, 4 + 1)  # one strip per worst query + the histograms

    test = read_dataset("folder", folder_root).split("test")
    z = direct(vitrieval.load(model_dir), test).astype(np.float64)
    y = test.labels
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    firsts = np.array([int(np.flatnonzero(y[np.argsort(-s[i], kind="stable")[:-1]] == y[i])[0])
                       for i in range(len(y))])
    worst = int(np.argmax(firsts))  # largest first-correct rank, lowest row on ties
    assert firsts[worst] > 0 and len(set(firsts.tolist())) > 2  # the fixture has failures to show
    headings = re.findall(r"<h2>(\d+)\. (.*?)</h2>", text)
    assert len(headings) == 4
    path = Path(test[worst].path)
    assert headings[0][1].startswith(f"{path.parent.name}/{path.name}, class {y[worst]}: ")
    assert f"first correct neighbour at rank {firsts[worst] + 1}" in headings[0][1]

    table = text.split("Recall@K per class (%), worst first</h2>")[1].split("</table>")[0]
    rows = re.findall(r'<tr><td class="variant">(-?\d+)</td><td>(\w+)</td><td>(\d+)</td>((?:<td>[\d.]+</td>)+)</tr>',
                      table)
    assert sorted(int(r[0]) for r in rows) == sorted(set(y.tolist()))
    for label, folder, count, cells in rows:
        assert folder == Path(test[int(np.flatnonzero(y == int(label))[0])].path).parent.name
        mine = firsts[y == int(label)]
        assert int(count) == len(mine)
        shown = [float(v) for v in re.findall(r"<td>([\d.]+)</td>", cells)]
        assert shown == [round(100 * float(np.mean(mine < k)), 1) for k in (1, 2, 4, 8)]


def test_page_of_a_revisited_set_ranks_queries_by_ap(model_dir: Path, roxford_root: Path, tmp_path: Path) -> None:
    text = _evaluate(model_dir, "roxford5k", roxford_root, tmp_path / "ox.html", "--report-k", "2")
    n = len(re.findall(r"<h2>\d+\. .*?: AP \(Medium\) ([\d.]+)</h2>", text))
    assert n >= 1
    aps = [float(v) for v in re.findall(r"<h2>\d+\. .*?: AP \(Medium\) ([\d.]+)</h2>", text)]
    assert aps == sorted(aps)
    _self_contained(text, n + 1)
    assert "mAP and mP@k (%), revisited protocol" in text


def test_report_flag_errors_exit_2(model_dir: Path, folder_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    code = main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root",
                 str(folder_root), "--report", str(tmp_path)])
    assert code == 2 and "--report" in capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(model_dir), "--dataset", "folder", "--data-root",
                 str(folder_root), "--report", str(tmp_path / "a.html"), "--report-k", "0"])
    assert code == 2 and "--report-k" in capsys.readouterr().err


def test_landmark_pairs_are_medium_positives_and_unlisted_negatives() -> None:
    from test_evaluation_failures import _landmark_set
    from vitrieval.report.evaluation_page import pair_similarity_sets

    ev = _landmark_set()
    pos, neg = pair_similarity_sets(ev)
    db, q = ev.descriptors[~ev.is_query], ev.descriptors[ev.is_query]
    want_pos, want_neg = [], []
    for i, e in enumerate(ev.gnd):
        ok = set(e["easy"].tolist()) | set(e["hard"].tolist())
        listed = ok | set(e["junk"].tolist())
        want_pos += [float(db[g] @ q[i]) for g in sorted(ok)]
        want_neg += [float(db[g] @ q[i]) for g in range(len(db)) if g not in listed]
    np.testing.assert_allclose(np.sort(pos), np.sort(want_pos), atol=1e-6)
    np.testing.assert_allclose(np.sort(neg), np.sort(want_neg), atol=1e-6)
