"""``vitrieval reproduce``: the paper's tables as commands, run resumably, written beside the paper's numbers.

:mod:`~vitrieval.reproduce.paper` (the published numbers), :mod:`~vitrieval.reproduce.rows` (every row: its runs,
commands and where our numbers come from), :mod:`~vitrieval.reproduce.runner` (running rows, resumably),
:mod:`~vitrieval.reproduce.tables` (``table.md`` / ``table.json`` / ``table.html``).
"""
