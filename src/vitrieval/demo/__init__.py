"""``vitrieval demo``: the paper's protocol offline on a CPU in minutes: data, pretraining the encoder by
classification on separate generated identities (the stand-in for ImageNet), fine-tuning IRT_L / IRT_R from it,
evaluation against IRT_O (the pretrained encoder as is) and a raw-pixel baseline, a self-contained HTML report, and
a searchable index.

Output folder::

    OUT/data/products/      the generated "products" (default data; reused by a rerun with the same settings)
    OUT/data/table.csv      the exact train / test split every step used (absolute paths, split column)
    OUT/data/pretrain/      the generated pretraining identities (none of them a fine-tuning or test identity),
                            listed in OUT/data/pretrain_table.csv
    OUT/pretrain/           the pretraining run (classification, loss.objective=nsoftmax) and its backbone's
                            weights, backbone.safetensors: the model.pretrained_file of every run below
    OUT/irt_o/model/        the pretrained encoder as is (IRT_O: the initial weights IRT_L and IRT_R start from)
    OUT/irt_l/, OUT/irt_r/  the two training runs (model/, metrics.jsonl, train.log, eval.json, ...)
    OUT/index/              a Flat faiss index of the test images, embedded by IRT_R (``vitrieval search`` /
                            ``vitrieval serve --index OUT/index``)
    OUT/report.html         Recall@K table and figures, one self-contained file
    OUT/results.json        Recall@K of every variant, what IRT_O was pretrained on ("pretrained"), timings
                            (wall and CPU seconds) and the data description
    OUT/demo.log            the log of the whole demo (training logs included)
    OUT/.vitrieval-demo.json  the folders above the demo wrote and every file in them: a rerun replaces such a
                            folder, and refuses (naming it, before any work) one holding anything else

Everything is evaluated with the deep-metric-learning protocol: the classes of the test split were never seen
in training, and every test image queries all the *other* test images (leave-one-out Recall@K).

Modules: :mod:`~vitrieval.demo.run` (the orchestration, :func:`run_demo`), :mod:`~vitrieval.demo.data` (the
generated products or a user's folder, and the pretraining identities), :mod:`~vitrieval.demo.pretrain` (the
pretraining run and its weights file), :mod:`~vitrieval.demo.baseline` (raw pixels), :mod:`~vitrieval.demo.report`
(the table, figures and HTML report), :mod:`~vitrieval.demo.variants` (what is compared, and each run's config).
"""

from __future__ import annotations

from vitrieval.demo.data import folder_table, prepare_data
from vitrieval.demo.report import format_table
from vitrieval.demo.run import run_demo
from vitrieval.demo.variants import KOLEO_WEIGHT, LABELS, VARIANTS

__all__ = ["KOLEO_WEIGHT", "LABELS", "VARIANTS", "folder_table", "format_table", "prepare_data", "run_demo"]
