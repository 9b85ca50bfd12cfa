"""Report figures and the self-contained HTML page."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrieval.report import (
    explained_energy,
    pair_similarities,
    pca_energy,
    retrieval_grid,
    similarity_histograms,
    training_curves,
    write_report,
)
from vitrieval.report.figures import _DPI, CORRECT_RGB, QUERY_RGB, WRONG_RGB, _grid_layout

CHROMIUM = Path("/usr/bin/chromium")


def _decode(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    img.load()
    return img.convert("RGB")


def _solid(colour: tuple[int, int, int], size: int = 40) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 30) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def test_retrieval_grid_borders_are_green_and_red_where_expected(tmp_path) -> None:
    n_q, k = 3, 8
    rng = np.random.default_rng(0)
    correct = rng.random((n_q, k)) < 0.5
    correct[0, 0], correct[0, 1] = True, False
    queries = [_solid((200, 200, 200)), tmp_path / "q.png", np.full((30, 50, 3), 90, dtype=np.uint8)]
    _solid((120, 120, 255)).save(queries[1])
    neighbours = [[_solid((255, 255, 255), 30 + j) for j in range(k)] for _ in range(n_q)]
    png = retrieval_grid(queries, neighbours, correct, scores=rng.random((n_q, k)), title="test grid")
    img = _decode(png)
    (w_in, h_in), rects = _grid_layout(n_q, k)
    assert img.size == (round(w_in * _DPI), round(h_in * _DPI))
    width, height = img.size
    for r in range(n_q):
        for c in range(k + 1):
            left, bottom, w, h = rects[r][c]
            x = int(left * width) + 2  # inside the left border, half way down
            y = int((1 - bottom - h / 2) * height)
            expected = QUERY_RGB if c == 0 else (CORRECT_RGB if correct[r, c - 1] else WRONG_RGB)
            assert _close(img.getpixel((x, y)), expected), (r, c, img.getpixel((x, y)), expected)
            # the thumbnail centre is the image itself (white neighbours), not border
            if c > 0:
                cx = int((left + w / 2) * width)
                assert _close(img.getpixel((cx, y)), (255, 255, 255)), (r, c)


def test_retrieval_grid_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        retrieval_grid([_solid((0, 0, 0))], [[_solid((0, 0, 0))] * 3], np.ones((1, 2), bool))


def test_pair_similarities_counts_and_values() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    # 3 + 1 positive pairs, C(6, 2) - 4 = 11 negative pairs
    desc = np.eye(6)[:, :4] * 3.0  # rows 4 and 5 are zero: similarity 0 with everything (no NaN)
    desc[1] = [2.0, 0.0, 0.0, 0.0]  # same direction as row 0 -> cosine 1
    pos, neg = pair_similarities(desc, labels)
    assert len(pos) == 4 and len(neg) == 11
    assert sorted(np.round(pos, 6).tolist()) == [0.0, 0.0, 0.0, 1.0]
    assert np.all(np.isfinite(neg)) and np.allclose(neg, 0.0)
    pos, neg = pair_similarities(desc, labels, max_pairs=5)
    assert len(pos) == 4 and len(neg) == 5  # positives are never subsampled


def test_pair_similarities_sampling_is_distinct_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(40), 5)  # 200 items: 400 positive pairs, 19,500 negative pairs
    desc = rng.normal(size=(200, 16))
    pos, neg = pair_similarities(desc, labels, max_pairs=1000, seed=3)
    assert len(pos) == 40 * 10 and len(neg) == 1000
    assert len(np.unique(neg)) == 1000  # distinct pairs (continuous values: no ties)
    pos2, neg2 = pair_similarities(desc, labels, max_pairs=1000, seed=3)
    assert np.array_equal(neg, neg2) and np.array_equal(pos, pos2)
    _, all_neg = pair_similarities(desc, labels, max_pairs=10**6)
    assert len(all_neg) == 19_500 and np.all(np.isin(np.round(neg, 9), np.round(all_neg, 9)))
    assert -1.0 <= neg.min() and neg.max() <= 1.0


def test_similarity_histograms_png() -> None:
    rng = np.random.default_rng(0)
    variants = {name: (np.clip(rng.normal(m, 0.1, 500), -1, 1), np.clip(rng.normal(0, 0.2, 2000), -1, 1))
                for name, m in (("IRT_O", 0.3), ("IRT_L", 0.6), ("IRT_R", 0.7))}
    img = _decode(similarity_histograms(variants))
    assert img.width == 1200 and 250 <= img.height <= 500  # one panel per variant, 4 in wide each


def test_pca_energy_png_and_values() -> None:
    rng = np.random.default_rng(0)
    collapsed = rng.normal(size=(300, 32)) * np.exp(-np.arange(32) / 2)
    spread = rng.normal(size=(300, 32))
    e = explained_energy(collapsed)
    assert e.shape == (32,) and np.all(np.diff(e) >= -1e-12) and abs(e[-1] - 1) < 1e-9
    assert e[2] > explained_energy(spread)[2]
    assert explained_energy(rng.normal(size=(10, 32))).shape == (10,)
    img = _decode(pca_energy({"IRT_L": collapsed, "IRT_R": spread}))
    assert img.size == (640, 400)


def test_training_curves_png_with_missing_keys() -> None:
    rows = [{"iteration": i, "loss": 1.0 / (1 + i), "loss_contrastive": 0.8 / (1 + i)} for i in range(0, 100, 10)]
    rows += [{"iteration": 50, "recall@1": 0.4}, {"iteration": 100, "recall@1": 0.5, "loss_koleo": -0.2},
             {"iteration": 60, "loss": float("nan")}]
    img = _decode(training_curves({"IRT_L": rows, "IRT_R": [{"iteration": 0, "loss_memory": 0.3}]}))
    assert img.size == (1100, 400)
    assert _decode(training_curves({})).size == (1100, 400)  # empty input still gives a (labelled) figure


def _example_sections() -> list[tuple[str, str, bytes]]:
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(60, 16))
    labels = np.repeat(np.arange(12), 5)
    grid = retrieval_grid([_solid((0, 0, 200))], [[_solid((0, 200, 0))] * 8], np.array([[True] * 4 + [False] * 4]),
                          scores=np.linspace(0.9, 0.2, 8)[None])
    return [
        ("Retrieval examples", "Green = same class, red = different <b>.", grid),
        ("Similarity histograms", "Paper Fig. 5.", similarity_histograms({"IRT_O": pair_similarities(desc, labels)})),
        ("PCA energy", "Paper Figs. 2-3.", pca_energy({"IRT_O": desc})),
    ]


def test_write_report_is_self_contained(tmp_path) -> None:
    table = {"IRT_O": {"1": 0.512, "10": 0.801, "2": 0.6},
             "IRT_L": {"1": 0.734, "2": 0.8, "10": 0.901},
             "IRT_R": {"1": 0.751, "2": 0.8, "10": 0.899}}
    sections = _example_sections()
    out = write_report(tmp_path / "r.html", "Report <test> & co", table, sections, notes=["a note", "x < y"])
    text = out.read_text(encoding="utf-8")
    assert text.count('<img src="data:image/png;base64,') == len(sections)
    # values in percent, one decimal, ordered R@1, R@2, R@10, best per column bold (ties both bold)
    assert re.search(r"R@1</th><th>R@2</th><th>R@10</th>", text)
    for v in ("51.2", "60.0", "80.1", "73.4", "90.1", "75.1", "89.9"):
        assert f">{v}<" in text, v
    assert "<b>75.1</b>" in text and "<b>90.1</b>" in text and text.count("<b>80.0</b>") == 2
    assert "<b>73.4</b>" not in text and "<b>89.9</b>" not in text
    # escaped text, no external resources, no scripts
    assert "Report &lt;test&gt; &amp; co" in text and "x &lt; y" in text and "&lt;b&gt;." in text
    assert "http" not in text.lower() and "<script" not in text.lower() and "<link" not in text.lower()
    assert "@import" not in text and "url(" not in text
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind
    # every embedded image decodes
    import base64

    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        _decode(base64.b64decode(b64))


def test_write_report_rejects_non_png(tmp_path) -> None:
    with pytest.raises(ValueError):
        write_report(tmp_path / "r.html", "t", {}, [("h", "c", b"GIF89a")])


def test_recall_values_already_in_percent(tmp_path) -> None:
    text = write_report(tmp_path / "r.html", "t", {"a": {"1": 51.2}, "b": {"1": 60.0, "2": 70.0}}, []).read_text()
    assert "<b>60.0</b>" in text and ">51.2<" in text and "&ndash;" in text


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    html_path = write_report(tmp_path / "report.html", "Render check", {"IRT_O": {"1": 0.5}}, _example_sections())
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--screenshot={shot}", "--window-size=1200,2400", html_path.as_uri()],
                   check=True, timeout=120, capture_output=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    small = np.asarray(img.resize((60, 120))).reshape(-1, 3)
    assert len(np.unique(small, axis=0)) > 20  # not a blank page


def test_runs_report_of_category_runs_and_bad_folders(tmp_path) -> None:
    """A category-level run (no tuple statistics): recall table + curves; bad input names the file."""
    import json

    from vitrieval.report.runs import write_runs_report

    run = tmp_path / "sop"
    run.mkdir()
    rows = [{"iteration": i, "loss": 2.0 / i, "loss_contrastive": 1.5 / i, "lr": 3e-5} for i in range(1, 6)]
    rows.append({"iteration": 5, "recall@1": 0.42})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"iterations": 5, "recall_at_k": {"1": 0.42, "10": 0.8}}))
    page = write_runs_report([run], tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Mined hard negatives" not in page
    assert "42.0" in page and "80.0" in page and "finished, 5 iterations" in page
    with pytest.raises(FileNotFoundError, match="metrics.jsonl is missing"):
        write_runs_report([tmp_path / "nothing"], tmp_path / "x.html")
    with pytest.raises(ValueError, match="one distinct name per run"):
        write_runs_report([run, run], tmp_path / "x.html")
    (run / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl: not JSON lines"):
        write_runs_report([run], tmp_path / "x.html")


def test_runs_report_plots_gradient_noise_of_two_real_runs(products_32, tmp_path) -> None:
    """Two small runs at β 0.1 and 0.3 with train.log_gradient_noise: the report gains Fig 4's two figures, and each
    run's mean γ (read back through run_gammas) is the mean of the values in its metrics.jsonl."""
    import json

    from vitrieval.config import apply_overrides
    from vitrieval.presets import load_preset
    from vitrieval.report.gradient_noise import run_gammas
    from vitrieval.report.runs import _read_run, write_runs_report
    from vitrieval.training import train

    runs = []
    for margin in (0.1, 0.3):
        cfg = apply_overrides(load_preset("cpu-tiny"), [
            f"data.root={products_32}", "model.image_size=32", "model.depth=1", "model.embed_dim=32",
            "model.num_heads=2", "train.batch_size=16", "train.iterations=4", "train.log_every=2",
            "train.eval_every=0", "data.num_workers=0", "train.amp=off", f"loss.margin={margin}",
            "train.log_gradient_noise=true"])
        runs.append(train(cfg, tmp_path / f"beta{margin}", progress=False).output_dir)
    page = write_runs_report(runs, tmp_path / "r.html").read_text()
    assert "Gradient noise vs margin (Fig 4)" in page and "Gradient noise per step" in page
    assert page.count("data:image/png;base64,") == 4  # training curves, γ per step, γ vs β, learning rate
    data = {r.name: _read_run(r) for r in runs}
    gammas = run_gammas({k: d["rows"] for k, d in data.items()}, {k: d["config"] for k, d in data.items()})
    assert [(g.run, g.margin, g.koleo_weight, g.steps) for g in gammas] == [("beta0.1", 0.1, 0.0, 2),
                                                                           ("beta0.3", 0.3, 0.0, 2)]
    for g, run in zip(gammas, runs):
        logged = [json.loads(line)["grad_noise_nuclear"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if "grad_noise_nuclear" in line]
        assert len(logged) == 2 and g.mean_gamma == pytest.approx(sum(logged) / 2)
        assert f"{g.run}: mean γ {g.mean_gamma:.4f} over 2 logged step(s)" in page


def test_runs_report_names_each_runs_data_and_initialisation_and_splits_tables_by_data(tmp_path) -> None:
    """A run trained from model.pretrained_file is not "random init"; runs on ORL and COIL-20 are not in one Recall
    table: one table per data set, each named, and a note that says why."""
    import html
    import json
    import re

    import yaml

    from vitrieval.report.runs import write_runs_report

    def run(name: str, root: str, model: dict, recall: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "loss": 1.0}) + "\n")
        (folder / "eval.json").write_text(json.dumps({"iterations": 1, "recall_at_k": recall}))
        config = {"name": name, "model": {"name": "deit_tiny_patch16_224", "image_size": 64, **model},
                  "data": {"dataset": "folder", "root": root}, "train": {"iterations": 1}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        return folder

    runs = [run("orl_pre", "/data/orl_faces", {"pretrained": True, "pretrained_file": "/w/deit_t.safetensors"},
                {"1": 0.9}),
            run("orl_rand", "/data/orl_faces", {"pretrained": False}, {"1": 0.5}),
            run("coil_hub", "/data/coil20", {"pretrained": True}, {"1": 0.7})]
    page = html.unescape(write_runs_report(runs, tmp_path / "r.html").read_text())
    tables = re.findall(r"<h2>Recall@K \(%\) (.*?)</h2>\s*<table.*?</table>", page, re.S)
    assert tables == ["on folder data in /data/orl_faces", "on folder data in /data/coil20"]
    orl, coil = re.findall(r"<h2>Recall@K \(%\) .*?</h2>\s*(<table.*?</table>)", page, re.S)
    assert "orl_pre" in orl and "orl_rand" in orl and "coil_hub" not in orl
    assert "coil_hub" in coil and "orl_" not in coil
    assert "trained and evaluated on 2 different data sets" in page
    assert "orl_pre on folder data in /data/orl_faces: deit_tiny_patch16_224 at 64 px, cls pooling, initialised " \
           "from /w/deit_t.safetensors" in page
    assert "orl_rand on folder data in /data/orl_faces: deit_tiny_patch16_224 at 64 px, cls pooling, random init" \
        in page
    assert "coil_hub on folder data in /data/coil20: deit_tiny_patch16_224 at 64 px, cls pooling, timm's " \
           "pretrained weights" in page
    one = html.unescape(write_runs_report(runs[:2], tmp_path / "one.html").read_text())
    assert re.findall(r"<h2>Recall@K \(%\) (.*?)</h2>", one) == ["on folder data in /data/orl_faces"]
    assert "different data sets" not in one
