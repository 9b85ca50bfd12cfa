"""POST /search?rerank=aqe through FastAPI's TestClient: the answer of Index.search(rerank=...), bad values 422."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, make_images, make_model
from vitrieval.index import Index
from vitrieval.rerank import RerankOptions
from vitrieval.serve import create_app


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve_rerank")
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:4])
    index = Index.build(model, root / "images", root / "cat.idx", factory="Flat", num_workers=0, progress=False)
    return {"images": images, "index": index, "client": TestClient(create_app(index, max_k=20))}


def _post(served: dict, query: str) -> object:
    return served["client"].post(f"/search?{query}", files={"file": ("q.png", served["images"][3].read_bytes(),
                                                                      "image/png")})


def test_rerank_aqe_answers_as_the_library(served: dict) -> None:
    index = served["index"]
    for query, options in (("k=5&rerank=aqe", RerankOptions(("aqe",))),
                           ("k=5&rerank=AQE&rerank_n=4&rerank_alpha=0", RerankOptions(("aqe",), 4, 0.0))):
        r = _post(served, query)
        assert r.status_code == 200, r.text
        want = index.search([served["images"][3]], k=5, rerank=options)[0]
        got = r.json()["results"]
        assert [h["id"] for h in got] == [h.id for h in want]
        assert [h["score"] for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    plain = _post(served, "k=5").json()["results"]
    expanded = _post(served, "k=5&rerank=aqe&rerank_n=4&rerank_alpha=0").json()["results"]
    assert abs(plain[0]["score"] - expanded[0]["score"]) > 1e-4  # the option reaches the search
    assert _post(served, "k=5&rerank=none").json()["results"] == plain


@pytest.mark.parametrize(("query", "message"), [
    ("rerank=dba", "DBA is not a query option"),
    ("rerank=bogus", "rerank must be none or aqe"),
    ("rerank=aqe&rerank_n=0", "greater than or equal to 1"),
    ("rerank=aqe&rerank_alpha=-1", "greater than or equal to 0"),
    ("rerank=aqe&rerank_n=x", "valid integer"),
])
def test_bad_rerank_values_are_422_with_a_message(served: dict, query: str, message: str) -> None:
    r = _post(served, query)
    assert r.status_code == 422
    assert message in r.text
