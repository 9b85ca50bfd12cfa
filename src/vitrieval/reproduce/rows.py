"""Every row of Tables 1-9 as data: the runs that produce it, the commands, and where each of our numbers comes from.

A **row** (one line of a paper table) is made of **jobs**; a job is one run folder ``{out}/runs/<key>`` with its
**steps** (a ``vitrieval`` command each, and the file that marks it done):

- ``train``: ``vitrieval train --preset P [--set k=v ...] --data-root {D} --output {out}/runs/<key>``; done when
  the trainer has written its run tail, ``<run>/eval.json``;
- ``evaluate``: ``vitrieval evaluate --checkpoint <run> --dataset D --data-root {D} [flags] -o
  <run>/eval-<tag>.json`` (or ``--model NAME`` for off-the-shelf features, IRT_O); done when that JSON exists;
- ``cost``: ``vitrieval analyze --cost --preset P --output <run>`` (Table 1: parameters, FLOPs, images/s); done
  when ``<run>/cost.json`` exists.

Sweeps are data: Table 5 is one base preset per backbone and ``--set loss.margin=β --set loss.koleo_weight=λ``,
Table 6 the landmark preset with ``--set loss.koleo_weight=λ``, Table 9's In-Shop and landmark columns the CLS
preset with ``--set model.pooling=...``. PCA rows evaluate the same run with ``--pca 128 --no-save-pca`` (the PCA
is not stored beside the model, so that the full-size evaluation of the same run stays full size).

Placeholders: ``{out}`` (the output folder) and one data root per dataset, ``{sop}``, ``{cub}``, ``{inshop}``,
``{sfm120k}``, ``{roxford5k}``, ``{rparis6k}`` (``{folder}`` for the CPU grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitrieval.reproduce import paper
from vitrieval.reproduce.paper import lambda_label

#: Presets referenced below that are not on main yet, with where they come from. A row using one is listed
#: with its command and marked "preset missing" until the preset ships.
PENDING_PRESETS: dict[str, str] = {}

_LANDMARK_SETS = (("roxford5k", "ROxf"), ("rparis6k", "RPar"))
_CATEGORY = {"sop": ("SOP", (1, 10, 100, 1000)), "cub": ("CUB", (1, 2, 4, 8)), "inshop": ("In-Shop", (1, 10, 20, 30)),
             "folder": ("SOP", (1,))}


@dataclass(frozen=True)
class Step:
    """One command: ``argv`` (after ``vitrieval``, with placeholders), what it is, and the file marking it done."""

    kind: str  # train | evaluate | cost
    argv: tuple[str, ...]
    done: str  # path template of the file that exists once the step has finished


@dataclass(frozen=True)
class Job:
    """One run folder ``{out}/runs/<key>``: trained from ``preset`` (+ ``overrides``), or off-the-shelf ``model``."""

    key: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    dataset: str | None = None  # the training set's data-root placeholder
    model: str | None = None  # IRT_O: timm name, evaluated without training
    trains: bool = True  # False: nothing to train (off-the-shelf features, a cost measurement)

    @property
    def run(self) -> str:
        return f"{{out}}/runs/{self.key}"

    def train_step(self) -> Step:
        argv = ["train", "--preset", str(self.preset)]
        for override in self.overrides:
            argv += ["--set", override]
        argv += ["--data-root", f"{{{self.dataset}}}", "--output", self.run]
        return Step("train", tuple(argv), f"{self.run}/eval.json")


@dataclass(frozen=True)
class Evaluation:
    """``vitrieval evaluate`` of a job on ``dataset`` with extra ``flags``; its JSON is ``<run>/eval-<tag>.json``."""

    dataset: str
    flags: tuple[str, ...] = ()
    tag: str = ""

    def file(self, job: Job) -> str:
        return f"{job.run}/eval-{self.tag or self.dataset}.json"

    def step(self, job: Job) -> Step:
        source = ("--model", str(job.model)) if job.model else ("--checkpoint", job.run)
        argv = ("evaluate", *source, "--dataset", self.dataset, "--data-root", f"{{{self.dataset}}}", *self.flags,
                "-o", self.file(job))
        return Step("evaluate", argv, self.file(job))


@dataclass(frozen=True)
class Source:
    """Where our number for one metric is read: ``file`` (a step's output) at ``keys``, times ``scale``."""

    job: Job
    step: Step
    keys: tuple[str, ...]
    scale: float = 100.0


@dataclass(frozen=True)
class Row:
    """One row of a paper table: its name, the paper's numbers and, per metric, the source of ours."""

    table: int | str
    row: str
    paper: dict[str, float]
    sources: dict[str, Source] = field(default_factory=dict)
    note: str = ""
    grid: tuple[str, float, float] | None = None  # a sweep cell: (backbone, margin β, KoLeo weight λ)

    @property
    def jobs(self) -> list[Job]:
        seen: dict[str, Job] = {}
        for src in self.sources.values():
            seen.setdefault(src.job.key, src.job)
        return list(seen.values())

    @property
    def steps(self) -> list[Step]:
        """Every step in order: per job, its training (if any) then its distinct evaluations."""
        out: list[Step] = []
        for job in self.jobs:
            if job.trains:
                out.append(job.train_step())
            for src in self.sources.values():
                if src.job.key == job.key and src.step not in out:
                    out.append(src.step)
        return out

    @property
    def presets(self) -> list[str]:
        return sorted({j.preset for j in self.jobs if j.preset})

    @property
    def reference(self) -> bool:
        """A row of other work's numbers (nothing to run)."""
        return not self.sources


# -- building blocks -----------------------------------------------------------------------------------------------

def _slug(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key.rsplit('.', 1)[-1]}{value}"


def job(preset: str, dataset: str, *overrides: str) -> Job:
    """A training job; its key is the preset plus its overrides (``sop-irt-l-r50_margin0.3_koleo_weight0.7``)."""
    return Job("_".join([preset, *(_slug(o) for o in overrides)]), preset, tuple(overrides), dataset)


def off_the_shelf(model: str) -> Job:
    return Job(f"irt-o-{model}", model=model, trains=False)


def category(j: Job, dataset: str, ks: tuple[int, ...] | None = None, pca: int | None = None) -> dict[str, Source]:
    """``"<SET> R@K"`` sources for an evaluation of ``j`` on a category-level ``dataset`` (optionally PCA)."""
    name, default = _CATEGORY[dataset]
    flags = ("--pca", str(pca), "--no-save-pca") if pca else ()
    ev = Evaluation(dataset, flags, f"{dataset}-pca{pca}" if pca else dataset)
    step = ev.step(j)
    return {f"{name} R@{k}": Source(j, step, ("recall_at_k", str(k))) for k in (ks or default)}


def landmarks(j: Job, size: int = 224, pca: int | None = None) -> dict[str, Source]:
    """``ROxf M/H``, ``RPar M/H`` sources (revisited mAP) of ``j`` at ``size`` px, optionally PCA fitted on SfM-120k."""
    flags = ["--image-size", str(size)]
    if pca:
        flags += ["--pca", str(pca), "--pca-fit-dataset", "sfm120k", "--pca-fit-root", "{sfm120k}", "--no-save-pca"]
    out: dict[str, Source] = {}
    for dataset, short in _LANDMARK_SETS:
        ev = Evaluation(dataset, tuple(flags), f"{dataset}-{size}" + (f"-pca{pca}" if pca else ""))
        step = ev.step(j)
        out[f"{short} M"] = Source(j, step, ("map", "medium"))
        out[f"{short} H"] = Source(j, step, ("map", "hard"))
    return out


def cost(preset: str, metrics: tuple[str, ...] = ("params (M)", "GFLOPs")) -> dict[str, Source]:
    """Table 1's measurement of a preset's backbone (``vitrieval analyze --cost``)."""
    j = Job(f"cost-{preset}", preset, trains=False)
    step = Step("cost", ("analyze", "--cost", "--preset", preset, "--output", j.run), f"{j.run}/cost.json")
    keys = {"params (M)": ("params_m",), "GFLOPs": ("gflops",), "GFLOPs w/o attention": ("gflops_without_attention",),
            "images/s": ("images_per_s",)}
    return {m: Source(j, step, keys[m], 1.0) for m in metrics}


def _row(table: int, name: str, sources: dict[str, Source], note: str = "") -> Row:
    return Row(table, name, dict(paper.PAPER[table][name]), sources, note)


# -- the tables ----------------------------------------------------------------------------------------------------

def _table1() -> list[Row]:
    presets = {"R50": "table1-r50", "DeiT-S": "table1-deit-s", "DeiT-S†": "table1-deit-s-distilled",
               "R101": "table1-r101", "DeiT-B": "table1-deit-b", "DeiT-B†": "table1-deit-b-distilled"}
    note = ("measured on this machine; top-1 needs ImageNet (paper only); the paper's GFLOPs match a count without "
            "the attention products (GFLOPs w/o attention)")
    metrics = ("params (M)", "GFLOPs", "GFLOPs w/o attention", "images/s")
    return [_row(1, name, cost(p, metrics), note) for name, p in presets.items()]


def _three_sets(method: str, suffix: str = "", pca: int | None = None) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for dataset in ("sop", "cub", "inshop"):
        out.update(category(job(f"{dataset}-irt-{method}-deit-s{suffix}", dataset), dataset, pca=pca))
    return out


def _table2() -> list[Row]:
    distilled = _three_sets("r", "-distilled")
    return [
        _row(2, "IRT_R DeiT-S 384", _three_sets("r")),
        _row(2, "IRT_R DeiT-S .128", _three_sets("r", pca=128), "PCA fitted on the training split"),
        _row(2, "IRT_R DeiT-S† 384", {m: distilled[m] for m in ("SOP R@1", "CUB R@1", "In-Shop R@1")}),
    ]


def _table3() -> list[Row]:
    rows = []
    ots = off_the_shelf("deit_small_patch16_224")
    o = {**{k: v for d in ("sop", "cub", "inshop") for k, v in category(ots, d, (1,)).items()}, **landmarks(ots)}
    rows.append(_row(3, "IRT_O", o, "off-the-shelf ImageNet DeiT-S; add --pretrained-file F offline"))
    for method in ("l", "r"):
        sources = {k: v for d in ("sop", "cub", "inshop")
                   for k, v in category(job(f"{d}-irt-{method}-deit-s", d), d, (1,)).items()}
        sources.update(landmarks(job(f"sfm120k-irt-{method}-deit-s", "sfm120k")))
        rows.append(_row(3, f"IRT_{method.upper()}", sources))
    return rows


def _table4() -> list[Row]:
    presets = {"NSoftmax R50-2048": "sop-nsoftmax-r50", "NSoftmax DeiT-S-384": "sop-nsoftmax-deit-s",
               "SNCA R50-2048": "sop-snca-r50", "SNCA DeiT-S-384": "sop-snca-deit-s",
               "Contrastive R50-2048": "sop-irt-l-r50", "Contrastive DeiT-S-384": "sop-irt-l-deit-s"}
    return [_row(4, name, category(job(p, "sop"), "sop", (1,))) for name, p in presets.items()]


#: Table 5's base preset per backbone (the sweep sets the margin and the KoLeo weight on it).
TABLE5_BASES: dict[str, str] = {"R50": "sop-irt-l-r50", "DeiT-S": "sop-irt-l-deit-s"}


def sweep_rows(table: int | str, base: str, dataset: str, backbone: str, margins: tuple[float, ...],
               weights: tuple[float, ...], paper_backbone: str | None = None) -> list[Row]:
    """Table 5's grid on ``base``: one row per (λ, β), ``--set loss.margin=β --set loss.koleo_weight=λ``.

    ``paper_backbone`` names the Table 5 backbone whose published cell is shown beside ours (default
    ``backbone``); a cell the paper does not have gets no paper number.
    """
    rows = []
    for weight in weights:
        for margin in margins:
            j = job(base, dataset, f"loss.margin={lambda_label(margin)}", f"loss.koleo_weight={lambda_label(weight)}")
            name = paper.table5_row(backbone, margin, weight)
            published = paper.PAPER[5].get(paper.table5_row(paper_backbone or backbone, margin, weight), {})
            rows.append(Row(table, name, dict(published), category(j, dataset, (1,)), grid=(backbone, margin, weight)))
    return rows


def _table5() -> list[Row]:
    return [r for backbone, base in TABLE5_BASES.items()
            for r in sweep_rows(5, base, "sop", backbone, paper.TABLE5_MARGINS, paper.TABLE5_LAMBDAS)]


def _table6() -> list[Row]:
    return [_row(6, f"λ={lambda_label(w)}",
                 landmarks(job("sfm120k-irt-l-deit-s", "sfm120k", f"loss.koleo_weight={lambda_label(w)}")))
            for w in paper.TABLE6_LAMBDAS]


def _table7() -> list[Row]:
    models = {"R50-GeM": "sfm120k-irt-l-r50-gem", "R50-R-MAC": "sfm120k-irt-l-r50-rmac",
              "R101-GeM": "sfm120k-irt-l-r101-gem", "R101-R-MAC": "sfm120k-irt-l-r101-rmac",
              "DeiT-S†-CLS": "sfm120k-irt-l-deit-s-distilled", "DeiT-B†-CLS": "sfm120k-irt-l-deit-b-distilled"}
    dims = {"R50-GeM": "2048", "R50-R-MAC": "2048", "R101-GeM": "2048", "R101-R-MAC": "2048", "DeiT-S†-CLS": "384",
            "DeiT-B†-CLS": "768"}
    at_384 = {"R101-GeM": "sfm120k-irt-l-r101-gem-384", "R101-R-MAC": "sfm120k-irt-l-r101-rmac-384",
              "DeiT-B†-CLS": "sfm120k-irt-l-deit-b-distilled-384"}
    rows = []
    for size, presets in ((224, models), (384, at_384)):
        for pca in (128, None):
            for name, preset in presets.items():
                label = f"{name} {size} {'.128' if pca else dims[name]}"
                rows.append(_row(7, label, landmarks(job(preset, "sfm120k"), size, pca)))
    return rows


def _table8() -> list[Row]:
    rows = []
    for pca, dim in ((128, ".128"), (None, "768")):
        for method in ("l", "r"):
            preset = f"sfm120k-irt-{method}-deit-b-distilled-384"
            sources = {**landmarks(job(preset, "sfm120k"), 384, pca),
                       **cost(preset, ("GFLOPs", "GFLOPs w/o attention"))}
            rows.append(_row(8, f"IRT_{method.upper()} {dim}", sources))
    rows += [Row(8, name, dict(paper.PAPER[8][name]), note="other work's published model: compared with, not run")
             for name in paper.REFERENCE_ROWS[8]]
    return rows


def _table9() -> list[Row]:
    rows = []
    for pool in paper.TABLE9_POOLINGS:
        suffix = "" if pool == "CLS" else f"-{pool.lower()}"
        sets = () if pool == "CLS" else (f"model.pooling={pool.lower()}",)
        sources = {**category(job(f"sop-irt-l-deit-s{suffix}", "sop"), "sop", (1,)),
                   **category(job(f"cub-irt-l-deit-s{suffix}", "cub"), "cub", (1,)),
                   **category(job("inshop-irt-l-deit-s", "inshop", *sets), "inshop", (1,)),
                   **landmarks(job("sfm120k-irt-l-deit-s", "sfm120k", *sets))}
        rows.append(_row(9, pool, sources))
    return rows


def cpu_grid() -> list[Row]:
    """A CPU-sized stand-in for Table 5: ``cpu-tiny`` on a folder dataset, β ∈ {0.3, 0.5} × λ ∈ {0, 0.7}.

    Our R@1 is on the folder's held-out classes; the paper column shows Table 5's DeiT-S cell at the same (β, λ),
    for the machinery, not as a target.
    """
    return sweep_rows("cpu", "cpu-tiny", "folder", "cpu-tiny", (0.3, 0.5), (0.0, 0.7), paper_backbone="DeiT-S")


_BUILDERS = {1: _table1, 2: _table2, 3: _table3, 4: _table4, 5: _table5, 6: _table6, 7: _table7, 8: _table8,
             9: _table9, "cpu": cpu_grid}
TABLES: tuple[int | str, ...] = tuple(_BUILDERS)


def table_rows(table: int | str) -> list[Row]:
    """The rows of ``table`` (1-9, or ``"cpu"`` for the CPU grid), in the paper's order."""
    key: int | str = int(table) if str(table).isdigit() else str(table)
    if key not in _BUILDERS:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(str(t) for t in TABLES)}")
    return _BUILDERS[key]()


def all_rows() -> list[Row]:
    """Every row of Tables 1-9."""
    return [r for t in range(1, 10) for r in table_rows(t)]
