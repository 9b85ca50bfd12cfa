"""index/descriptor_cache under torchrun: 2 CPU ranks (gloo) resume a one-process extraction and cache exactly the
one-process descriptors; every rank gets them.

The test process makes 15 images (+1 unreadable) and a tiny model, extracts them in one go into cache ``a`` and
interrupts an extraction into cache ``b`` after its first shard (of 4); then ``python -m torch.distributed.run
--nproc_per_node 2 tests/test_index_descriptor_cache_distributed.py WORKDIR`` finishes ``b`` (both ranks embed the
3 missing shards together, rank 0 writes) and each rank saves what it got. About 20 s on two busy cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from torchrun_launch import launch, torchrun

OPTIONS = dict(batch_size=3, num_workers=0, amp="off", resize="square", output="normalized", progress=False)
SHARD_SIZE = 4
TIMEOUT = 180


def _worker(work: Path) -> None:
    import logging

    from vitrieval.distributed import DistContext
    from vitrieval.embed import ExtractionOptions
    from vitrieval.index.descriptor_cache import cached_descriptors
    from vitrieval.model import load

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = DistContext.from_env()
    encoder = load(work / "model", device="cpu")
    got = cached_descriptors(encoder, encoder.fingerprint(), work / "images", work / "b",
                             ExtractionOptions(**OPTIONS), shard_size=SHARD_SIZE, distributed=ctx)
    np.save(work / f"rank{ctx.rank}.npy", np.asarray(got.descriptors))
    (work / f"rank{ctx.rank}.json").write_text(json.dumps({"paths": got.paths, "embedded": got.embedded}))
    ctx.barrier()
    ctx.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import vitrieval.index.build as build_module
    from index_world import COLOURS, make_images, make_model
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.index.descriptor_cache import cached_descriptors
    from vitrieval.model import load

    work = tmp_path_factory.mktemp("dcache_dist").resolve()
    make_images(work / "images", COLOURS[:3], corrupt=1)
    encoder = load(make_model(work / "model"), device="cpu")
    options = ExtractionOptions(**OPTIONS)
    one_go = cached_descriptors(encoder, encoder.fingerprint(), work / "images", work / "a", options,
                                shard_size=SHARD_SIZE)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted after the first shard")
        return extract(*args, **kwargs)

    build_module_extract = build_module.extract
    build_module.extract = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            cached_descriptors(encoder, encoder.fingerprint(), work / "images", work / "b", options,
                               shard_size=SHARD_SIZE)
    finally:
        build_module.extract = build_module_extract
    output = launch(torchrun([str(Path(__file__).resolve()), str(work)]), work, work / "launch.log", TIMEOUT)
    return {"work": work, "one_go": one_go, "output": output}


def test_two_ranks_resume_and_cache_the_one_process_descriptors(world: dict) -> None:
    work, one_go = world["work"], world["one_go"]
    assert world["output"].count("reusing") == 1  # shard 0 from the interrupted run; shards 1-3 embedded
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(work / f"rank{rank}.npy"), np.asarray(one_go.descriptors))
        meta = json.loads((work / f"rank{rank}.json").read_text())
        assert meta == {"paths": one_go.paths, "embedded": True}
    (folder,) = (work / "b").iterdir()
    np.testing.assert_array_equal(np.load(folder / "descriptors.npy"), np.asarray(one_go.descriptors))


if __name__ == "__main__":  # python tests/test_index_descriptor_cache_distributed.py WORKDIR (under torchrun)
    _worker(Path(sys.argv[1]))
