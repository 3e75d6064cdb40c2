"""Retrieval over the bundled corpus with the real MiniLM (the index is built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag import api
from rag.retrieve import get_retriever
from rag.settings import Settings

QUESTIONS = [
    json.loads(line) for line in (Path(__file__).parent / "data" / "dev_sample.jsonl").open()
]


@pytest.mark.parametrize("q", QUESTIONS, ids=[q["qid"] for q in QUESTIONS])
def test_paraphrased_question_finds_its_papers(corpus_settings: Settings, q: dict) -> None:
    titles = [p.title for p in api.search(q["question"], corpus_settings, k=5)]
    assert len(titles) == len(set(titles)) == 5  # one entry per paper
    if q["type"] == "multi":
        assert set(q["gold_titles"]) <= set(titles)
    else:
        assert titles[0] == q["gold_titles"][0]


def test_snippet_is_the_best_chunk_of_the_paper(corpus_settings: Settings) -> None:
    (top,) = api.search(
        "floating point multiplier approximated by one integer adder", corpus_settings, k=1
    )
    assert top.title == "Addition is All You Need for Energy-efficient Language Models"
    assert "integer adder" in top.snippet and top.relevance is not None and top.relevance > 0.5


def test_extractive_answer_over_the_corpus_cites_the_right_paper(corpus_settings: Settings) -> None:
    answer = api.ask(
        "Which neural architecture uses attention to pick positions of the input sequence "
        "as its outputs?",
        corpus_settings,
        k=5,
    )
    assert answer.mode == "extractive"
    assert "Pointer Networks" in [c.title for c in answer.citations]


@pytest.mark.parametrize(
    ("query", "title_start"),
    [
        ("L-Mul", "Addition is All You Need for Energy-efficient Language Models"),
        ("SINDy-RL", "SINDy-RL"),
    ],
)
def test_acronyms_are_found_lexically(
    corpus_settings: Settings, query: str, title_start: str
) -> None:
    for mode in ("bm25", "hybrid"):
        retriever = get_retriever(corpus_settings, mode=mode)
        assert retriever.search(query, 3)[0].title.startswith(title_start), mode


def test_hybrid_gives_every_paper_its_cosine_relevance(corpus_settings: Settings) -> None:
    papers = get_retriever(corpus_settings, mode="hybrid").search("Lion optimizer", 10)
    titles = [p.title for p in papers]
    assert "Symbolic Discovery of Optimization Algorithms" in titles[:2]
    assert all(p.relevance is not None and -1.0 <= p.relevance <= 1.0 for p in papers)
    assert [p.score for p in papers] == sorted((p.score for p in papers), reverse=True)


def test_bm25_mode_never_refuses_for_lack_of_a_similarity(corpus_settings: Settings) -> None:
    settings = corpus_settings.model_copy(update={"retriever": "bm25"})
    answer = api.ask("How does L-Mul approximate floating point multiplication?", settings)
    assert not answer.refused
    assert (
        answer.citations[0].title == "Addition is All You Need for Energy-efficient Language Models"
    )


def test_default_retriever_meets_the_quality_bar_on_the_dev_questions(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    """A regression guard on the whole dev set (--no-llm): hybrid must keep beating dense and
    keep the targets of issue 3. It guards the method; it was not tuned to pass."""
    metrics = api.evaluate(
        Path(__file__).parent / "data" / "dev_questions.jsonl",
        corpus_settings,
        tmp_path / "eval",
        modes=["dense", "hybrid"],
        no_llm=True,
    ).metrics
    dense, hybrid = metrics["modes"]["dense"], metrics["modes"]["hybrid"]
    single, multi = hybrid["single_and_title"], hybrid["by_type"]["multi"]
    assert single["recall@1"] >= 0.97 and single["mrr"] >= 0.98
    assert multi["recall@5"] >= 0.95 and multi["recall@10"] == 1.0
    assert hybrid["refusal"]["refusal_accuracy"] >= 0.8
    assert hybrid["refusal"]["false_refusal_rate"] <= 0.05
    assert single["mrr"] > dense["single_and_title"]["mrr"]
    assert multi["recall@5"] > dense["by_type"]["multi"]["recall@5"]


def test_exact_search_matches_the_hnsw_index_and_is_exact(corpus_settings: Settings) -> None:
    """Small collections are searched from the in-memory table: the same papers as Chroma's
    HNSW index at the top, and the true nearest chunks (a brute-force check) all the way down."""
    import numpy as np

    from rag.embed import get_embedder

    embedder = get_embedder(corpus_settings)
    exact = get_retriever(corpus_settings, embedder, mode="dense")
    hnsw = get_retriever(
        corpus_settings.model_copy(update={"exact_search_max": 0}), embedder, "dense"
    )
    assert exact.store.table() is not None and hnsw.store.table() is None
    for q in QUESTIONS:
        top = [p.paper_id for p in exact.search(q["question"], 5)]
        assert top[:3] == [p.paper_id for p in hnsw.search(q["question"], 5)][:3]

    table = exact.store.table()
    vector = embedder.embed(["sourdough bread hydration"])[0]
    hits = exact.store.query(vector, 200)
    truth = np.sort(table.matrix @ vector)[::-1][:200]
    assert np.allclose([h.score for h in hits], truth, atol=1e-6)
    assert len({h.chunk_id for h in hits}) == 200


def test_chunk_table_breaks_ties_by_chunk_id() -> None:
    import numpy as np

    from rag.table import ChunkTable

    got = {
        "ids": ["c", "a", "b", "d"],
        "documents": ["C", "A", "B", "D"],
        "metadatas": [{"paper_id": p, "chunk": 0} for p in "cabd"],
        "embeddings": [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
    }
    table = ChunkTable.build((1, 4), got)
    assert [h.chunk_id for h in table.nearest(np.array([1.0, 0.0]), 3)] == ["a", "c", "d"]
    assert [h.chunk_id for h in table.nearest(np.array([1.0, 0.0]), 10)] == ["a", "c", "d", "b"]
    assert table.rows_of["b"] == [1]


def test_a_large_collection_reads_the_texts_of_the_returned_papers_only(
    corpus_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the exact table's size every text or metadata Chroma reads is a random read in
    its SQLite file (a hybrid search over 590,000 chunks took 390 ms reading every
    candidate's; 45 ms reading those of the papers returned): candidates are ranked from ids,
    distances and vectors, and only the papers kept are read, all at once."""
    from chromadb.api.models.Collection import Collection

    from rag.collection import paper_of

    chroma = corpus_settings.model_copy(update={"exact_search_max": 0})
    reads: list[tuple[set[str], list[str] | None]] = []
    for name in ("get", "query"):
        original = getattr(Collection, name)

        def spy(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            reads.append((set(kwargs.get("include") or []), kwargs.get("ids")))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Collection, name, spy)
    for mode in ("dense", "bm25", "hybrid"):
        exact = get_retriever(corpus_settings, mode=mode).search("Lion optimizer", 5)
        reads.clear()
        papers = get_retriever(chroma, mode=mode).search("Lion optimizer", 5)
        assert [p.paper_id for p in papers][:3] == [p.paper_id for p in exact][:3], mode
        assert all(p.text and p.title for p in papers), mode
        assert all(p.relevance is not None for p in papers if mode != "bm25"), mode
        returned = {p.paper_id for p in papers}
        content = [ids for include, ids in reads if include & {"documents", "metadatas"}]
        # None at all where the texts file keeps metadata too (tests/test_texts.py).
        assert all(ids and {paper_of(i) for i in ids} <= returned for ids in content)
