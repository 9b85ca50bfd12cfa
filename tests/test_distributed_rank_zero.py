"""vitrieval.distributed.RankZero and portable_exception, in one process (the group's collectives mocked).

The torchrun end-to-end runs are in ``test_index_distributed.py``; here the other rank's view of a collective is
what rank 0 sent through pickle, so the logic (values shared, failures raised everywhere and marked) runs without
a process group.
"""

from __future__ import annotations

import pickle

import pytest

import vitrieval.distributed as vd
from vitrieval.distributed import RANK0_WAIT_TIMEOUT, DistContext, RankZero, portable_exception


def test_portable_exception_keeps_picklable_errors_and_turns_the_others_into_runtime_errors() -> None:
    assert portable_exception(None) is None
    error = ValueError("needs at least 64 descriptors")
    assert portable_exception(error) is error

    class LocalError(Exception):  # a local class does not pickle
        pass

    out = portable_exception(LocalError("no readable image"))
    assert type(out) is RuntimeError and str(out) == "LocalError: no readable image"
    assert str(pickle.loads(pickle.dumps(out))) == "LocalError: no readable image"


def test_one_process_shares_its_own_value_and_re_raises_its_failure() -> None:
    with RankZero(DistContext()) as rank0:
        assert rank0.group is None
        rank0.check_same("a", "never raised: one process")
        assert rank0.share([1, 3]) == [1, 3]
        error = ValueError("foreign folder")
        with pytest.raises(ValueError, match="foreign folder") as info:
            rank0.share(None, error)
        assert info.value is error and not hasattr(error, "raised_on_rank")


class _FakeGroup:
    """torch.distributed as two ranks see it: rank 0's broadcast payload is what every rank receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, payload: object = None, gathered: list | None = None):
        self.payload, self.gathered, self.calls = payload, gathered, []
        monkeypatch.setattr(vd.dist, "new_group", self.new_group)
        monkeypatch.setattr(vd.dist, "destroy_process_group", lambda group: self.calls.append(("destroy", group)))
        monkeypatch.setattr(vd.dist, "broadcast_object_list", self.broadcast)
        monkeypatch.setattr(vd.dist, "all_gather_object", self.all_gather)

    def new_group(self, backend: str, timeout: object) -> str:
        self.calls.append(("new_group", backend, timeout))
        return "group"

    def broadcast(self, box: list, src: int, group: str) -> None:
        if box[0] is not None:  # rank 0: what it sends
            self.payload = box[0]
        box[0] = pickle.loads(pickle.dumps(self.payload))

    def all_gather(self, out: list, value: str, group: str) -> None:
        out[:] = self.gathered


def test_the_other_rank_gets_rank_zeros_value_or_its_failure_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeGroup(monkeypatch, payload=([0, 2], None))
    with RankZero(DistContext(rank=1, world_size=2)) as rank0:
        assert rank0.share("ignored on rank 1") == [0, 2]
        fake.payload = (None, ValueError("needs at least 64 descriptors"))
        with pytest.raises(ValueError, match="needs at least 64 descriptors") as info:
            rank0.share(None)
        assert info.value.raised_on_rank == 0
    assert fake.calls == [("new_group", "gloo", RANK0_WAIT_TIMEOUT), ("destroy", "group")]


def test_rank_zero_sends_a_portable_copy_and_raises_its_own_failure_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeGroup(monkeypatch)

    class LocalError(Exception):
        pass

    with RankZero(DistContext(rank=0, world_size=2)) as rank0:
        error = LocalError("no readable image")
        with pytest.raises(LocalError) as info:
            rank0.share(None, error)
        assert info.value is error and error.raised_on_rank == 0
        sent = fake.payload[1]
        assert type(sent) is RuntimeError and str(sent) == "LocalError: no readable image"


def test_check_same_raises_on_every_rank_when_the_ranks_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeGroup(monkeypatch, gathered=["abc", "abc"])
    with RankZero(DistContext(rank=1, world_size=2)) as rank0:
        rank0.check_same("abc", "never raised")
    _FakeGroup(monkeypatch, gathered=["abc", "abd"])
    with RankZero(DistContext(rank=0, world_size=2)) as rank0, pytest.raises(ValueError, match="different images"):
        rank0.check_same("abc", "the ranks see different images")
