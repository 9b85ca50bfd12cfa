"""The URI rules of the Milvus backend (no engine needed): what is stored, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitrieval.index.milvus_backend import (
    MilvusBackendError,
    MilvusUnreachableError,
    connect,
    normalized_uri,
    public_uri,
)
from vitrieval.index.milvus_store import MilvusOptions, full_path, stored_path


def test_public_uri_drops_secrets() -> None:
    assert public_uri("https://alice:s3cret@milvus.example.org:19530/db?token=abc") == \
        "https://milvus.example.org:19530/db"
    assert public_uri("http://localhost:19530") == "http://localhost:19530"
    assert public_uri("/data/catalog.db") == "/data/catalog.db"


def test_local_uri_is_made_absolute_and_must_be_a_db_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalized_uri("cat.db") == str(tmp_path / "cat.db")
    with pytest.raises(MilvusBackendError, match=r"--milvus-uri cat.sqlite: a Milvus Lite file must end in .db"):
        normalized_uri("cat.sqlite")
    with pytest.raises(MilvusUnreachableError, match=r"cannot open Milvus Lite at .*/nowhere/cat.db: the folder"):
        connect(str(tmp_path / "nowhere" / "cat.db"))


def test_options_refuse_unknown_index_types_and_bad_names() -> None:
    with pytest.raises(MilvusBackendError, match="unknown Milvus index type 'HNSW32'"):
        MilvusOptions("x.db", index_type="HNSW32")
    with pytest.raises(MilvusBackendError, match="--collection '9lives'"):
        MilvusOptions("x.db", collection="9lives")
    assert MilvusOptions("x.db").resolved_index_type(100_000) == "FLAT"
    assert MilvusOptions("x.db").resolved_index_type(100_001) == "HNSW"
    assert MilvusOptions("x.db", index_type="IVF_FLAT").resolved_index_type(10) == "IVF_FLAT"


def test_paths_are_stored_relative_to_the_root() -> None:
    assert stored_path("/data/cat/a/1.jpg", "/data/cat") == "a/1.jpg"
    assert stored_path("/elsewhere/1.jpg", "/data/cat") == "/elsewhere/1.jpg"
    assert full_path("a/1.jpg", "/data/cat") == "/data/cat/a/1.jpg"
    assert full_path("/elsewhere/1.jpg", "/data/cat") == "/elsewhere/1.jpg"
    assert stored_path("/x/1.jpg", None) == full_path("/x/1.jpg", None) == "/x/1.jpg"
