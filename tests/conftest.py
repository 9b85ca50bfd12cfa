"""Shared fixtures: small generated datasets and tiny models, so tests run on 2 CPU cores in minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_test_process():
    """Small models run faster on one thread than on two contended ones (and CI has 2 cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def products_64(tmp_path_factory) -> Path:
    """80 generated product identities x 6 views at 64 px (first 40 identities train, last 40 held out)."""
    from vitrieval.data.synthetic import generate_products

    return generate_products(tmp_path_factory.mktemp("products") / "p", 80, 6, size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def products_32(tmp_path_factory) -> Path:
    """16 identities x 5 views at 32 px: enough for fast mechanics tests (resume, CLI)."""
    from vitrieval.data.synthetic import generate_products

    return generate_products(tmp_path_factory.mktemp("products") / "p", 16, 5, size=32, seed=1, progress=False)
