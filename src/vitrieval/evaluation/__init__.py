"""Evaluation: a model and a benchmark to the paper's metrics.

==================  ====================================================================================
module              one idea
==================  ====================================================================================
``protocol``        the protocols: category-level Recall@K / MAP@R, revisited mAP; :func:`evaluate_model`
``pca_fit``         PCA / learned-whitening options and what they are fitted on (:class:`PCAOptions`)
``rerank_variants`` the αQE / DBA variants of each protocol (``--rerank``)
``distractors``     revisited mAP with a distractor set (+R1M) in bounded memory
``format``          the printed result table
==================  ====================================================================================
"""

from __future__ import annotations

from vitrieval.evaluation.pca_fit import PCAOptions
from vitrieval.evaluation.protocol import ExtractionOptions, evaluate_model, recall_on_table

__all__ = ["ExtractionOptions", "PCAOptions", "evaluate_model", "recall_on_table"]
