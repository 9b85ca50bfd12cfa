"""Batched inference (vitrieval.serve.batching): concurrent queries share forward passes, and each answer is the
unbatched one (scores within 1e-6, the same ids)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from index_world import build_world, good_images
from ranking import assert_same_ranking
from vitrieval.serve import create_app
from vitrieval.serve.batching import Batcher


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("batching"))


def test_queued_tensors_are_embedded_in_batches_equal_to_one_at_a_time(world):
    index = world["index"]
    tensors = [index.prepare(str(p)) for p in good_images(world)[:12]]
    sizes: list[int] = []

    def embed(batch: list[torch.Tensor]) -> np.ndarray:
        sizes.append(len(batch))
        return index.embed_prepared(batch)

    batcher = Batcher(embed, max_batch=4, max_wait_ms=500)
    with batcher.incoming():  # more requests on their way: batches wait for them (within max_wait_ms)
        futures = [batcher.submit(t) for t in tensors]
    batched = np.stack([f.result(timeout=60) for f in futures])
    batcher.close()
    assert sizes == [4, 4, 4] and batcher.batches == 3 and batcher.images == 12
    alone = np.concatenate([index.embed_prepared([t]) for t in tensors])
    assert np.abs(batched - alone).max() <= 1e-6


def test_a_failing_forward_pass_fails_its_requests_only():
    calls = []

    def embed(batch: list[torch.Tensor]) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return torch.stack(batch).flatten(1).numpy()

    batcher = Batcher(embed, max_batch=2, max_wait_ms=300)
    with batcher.incoming():
        first = [batcher.submit(torch.zeros(1, 2, 2)) for _ in range(2)]
    for f in first:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=30)
    assert batcher.submit(torch.ones(1, 2, 2)).result(timeout=30).tolist() == [1.0] * 4
    batcher.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(np.stack, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(np.stack, max_wait_ms=-1)


def _concurrent_answers(app, queries: list[bytes], sizes: list[int] | None = None) -> list[list[dict]]:
    """Every query posted at once, from threads of its own. With ``sizes``, the first forward pass is held until
    every query has reached the batcher (taken into that pass or queued), and each pass's size is recorded: what
    several waiting requests make of a batch, independent of how the threads happen to be scheduled."""
    barrier = threading.Barrier(len(queries))
    with TestClient(app) as client:
        if sizes is not None:
            batcher = app.state.batcher
            real = batcher.embed_batch

            def held_first(batch: list) -> np.ndarray:
                if not sizes:
                    for _ in range(6000):  # a hang guard (60 s), not a speed bound
                        if len(batch) + batcher.queued == len(queries):
                            break
                        time.sleep(0.01)
                sizes.append(len(batch))
                return real(batch)

            batcher.embed_batch = held_first

        def one(data: bytes) -> list[dict]:
            barrier.wait(timeout=60)
            r = client.post("/search?k=8", files={"file": ("q.png", data, "image/png")})
            assert r.status_code == 200, r.text
            return r.json()["results"]

        with ThreadPoolExecutor(len(queries)) as pool:
            return list(pool.map(one, queries))


def test_concurrent_searches_are_batched_and_answer_as_unbatched(world):
    """While one forward pass runs, the requests that arrive wait in the queue and the next pass takes them all
    (up to max_batch); every answer is the unbatched one."""
    queries = [p.read_bytes() for p in good_images(world)[:8]]
    batched_app = create_app(world["index"], max_batch=8, max_wait_ms=0)
    unbatched_app = create_app(world["index"], max_batch=1)
    sizes: list[int] = []
    batched = _concurrent_answers(batched_app, queries, sizes)
    unbatched = _concurrent_answers(unbatched_app, queries)
    assert sum(sizes) == 8 and len(sizes) <= 2 and max(sizes) > 1  # the first pass, then everything queued behind it
    assert batched_app.state.batcher.batches == len(sizes)
    assert unbatched_app.state.batcher.batches == 8
    # descriptors within 1e-6 (the first test), and the answer rounds scores to 6 decimals (one more 1e-6)
    for got, want in zip(batched, unbatched):
        assert_same_ranking(got, want, score_tol=1e-6 + 1e-6)
    direct = world["index"].search([str(p) for p in good_images(world)[:8]], k=8)  # and as Index.search
    for got, want in zip(unbatched, direct):
        assert [h["id"] for h in got][:1] == [want[0].id]
    batched_app.state.close()
    unbatched_app.state.close()


def test_a_lone_request_does_not_wait():
    """Nobody else announced (no :meth:`Batcher.incoming` held): the batch is formed at once, never after
    max_wait_ms, here eleven days, so a wait would end in the 60 s hang guard."""
    batcher = Batcher(lambda b: torch.stack(b).flatten(1).numpy(), max_batch=8, max_wait_ms=1e9)
    assert batcher.submit(torch.ones(1, 1, 1)).result(timeout=60).tolist() == [1.0]
    assert batcher.batches == 1
    batcher.close()
