"""A service's start (vitrieval.serve.startup): a start that fails at any step leaves no thread of its own running
(the batcher's model thread, the compactor's, the decode pool's) and the index folder unlocked; a started one's
``app.state.close`` stops them all."""

from __future__ import annotations

import threading

import pytest

from index_world import build_world, make_model
from vitrieval.index import Index
from vitrieval.index.journal import JournalWriter
from vitrieval.serve import create_app
from vitrieval.serve.uploads import DecodePool

SERVICE_THREADS = ("vitrieval-batcher", "vitrieval-compactor", "vitrieval-decode")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("serve_startup"))


def _service_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(SERVICE_THREADS)}


def _no_thread(*args, **kwargs) -> None:
    raise RuntimeError("can't start new thread")  # what threading says when a process has no more


def _no_page() -> str:
    raise FileNotFoundError("vitrieval/serve/static/index.html")


@pytest.mark.parametrize("failure, writes", [
    ("another model", False),  # before the batcher: the fingerprint check of the preloaded model
    ("no page", False),  # after the batcher, before: the web page of a broken install
    ("decode pool", False),  # after the batcher
    ("decode pool", True),  # after the batcher, with the folder locked
    ("compact_every", True),  # last: the compactor's settings
])
def test_a_start_that_fails_leaves_no_thread_running_and_the_folder_unlocked(world, tmp_path, monkeypatch, failure,
                                                                            writes):
    import vitrieval.serve.app as app_module

    checkpoint = make_model(tmp_path / "other", seed=1) if failure == "another model" else None
    index = Index.load(world["index_dir"], checkpoint=checkpoint)
    if failure == "no page":
        monkeypatch.setattr(app_module, "_page", _no_page)
    if failure == "decode pool":
        monkeypatch.setattr(DecodePool, "__init__", _no_thread)
    settings = {"compact_every": 0} if failure == "compact_every" else {}
    before = _service_threads()
    with pytest.raises((RuntimeError, FileNotFoundError, ValueError),
                       match="start new thread|index.html|changed since the index was built|max_pending"):
        create_app(index, write_token="a-token" if writes else None, **settings)
    assert _service_threads() - before == set()  # before: the batcher's thread left running (writes off)
    JournalWriter(world["index_dir"]).close()  # the folder's lock is free for another writer


@pytest.mark.parametrize("writes", [False, True])
def test_a_started_service_closes_every_thread_it_started(world, writes):
    before = _service_threads()
    app = create_app(Index.load(world["index_dir"]), write_token="a-token" if writes else None)
    started = {t.name for t in _service_threads() - before}
    assert started == ({"vitrieval-batcher", "vitrieval-compactor"} if writes else {"vitrieval-batcher"})
    app.state.close()
    assert _service_threads() - before == set()
    JournalWriter(world["index_dir"]).close()
