"""``vitrieval analyze``: the paper's descriptor figures from real checkpoints, and Table 1's cost measurement.

:mod:`~vitrieval.analyze.descriptors` (PCA energy, pair-similarity histograms and their overlap: pure numpy),
:mod:`~vitrieval.analyze.models` (test descriptors of each model, ``analysis.json`` and ``analysis.html``),
:mod:`~vitrieval.analyze.cost` (parameters, FLOPs and images/s of a backbone on this machine),
:mod:`~vitrieval.analyze.gradient_noise` (Fig 4's γ of one batch, logged by the P × K trainer with
``train.log_gradient_noise``).
"""
