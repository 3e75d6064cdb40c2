"""Dense search from the vectors each BM25 segment keeps (rag.nearest): 8-bit codes scanned by an
integer product, candidates ranked by exact cosine; an embedded collection too large for the
exact table is searched without Chroma's HNSW index, which every process would load whole."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from rag import nearest as nearest_module
from rag.filters import Filter
from rag.ingest import ingest_lock, ingest_papers
from rag.lexical import LexicalIndex
from rag.nearest import DenseRows, integer_product, nearest
from rag.retrieve import DenseRetriever, get_retriever
from rag.settings import Settings
from rag.store import Store
from tests.helpers import HashEmbedder, make_paper

WORDS = (
    "glacier ice flow radar satellite ocean salinity current plankton bloom coral reef "
    "sediment core isotope volcano magma seismic fault tremor aquifer drought monsoon cyclone"
).split()


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def clustered(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Unit vectors like sentence embeddings: a large component every vector shares, topics,
    and each text's own part."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim) * 2.0
    topics = rng.normal(size=(n // 50 + 1, dim))
    return unit(common + topics[rng.integers(0, len(topics), n)] + rng.normal(size=(n, dim)))


def exact_top(matrix: np.ndarray, query: np.ndarray, n: int) -> list[int]:
    sims = matrix.astype(np.float32) @ query
    return [int(r) for r in np.lexsort((np.arange(len(sims)), -sims))[:n]]


def rows_of(vectors: np.ndarray, per_paper: int = 1) -> DenseRows:
    return DenseRows.of(
        [
            (np.arange(len(vectors[at : at + per_paper])), vectors[at : at + per_paper])
            for at in range(0, len(vectors), per_paper)
        ]
    )


def test_rows_keep_each_papers_chunks_and_are_saved_and_loaded_memory_mapped(
    tmp_path: Path,
) -> None:
    vectors = clustered(300, dim=100)
    rows = rows_of(vectors, per_paper=3)
    assert rows.paper_rows(np.array([0, 2, 3, 299])).tolist() == [0, 0, 1, 99]
    assert rows.expand(np.array([True, False] * 50))[:7].tolist() == [1, 1, 1, 0, 0, 0, 1]
    rows.save(tmp_path)
    loaded = DenseRows.load(tmp_path, 100)
    assert loaded is not None and isinstance(loaded.vectors, np.memmap)
    np.testing.assert_array_equal(loaded.vectors, vectors.astype(np.float32))
    assert loaded.chunks[rows.rows_of(5)].tolist() == [0, 1, 2]
    wanted = np.array([0, 7, 8, 299])  # read with pread: nothing of the file mapped
    np.testing.assert_array_equal(loaded.read(wanted), vectors[wanted].astype(np.float32))
    np.testing.assert_array_equal(rows.read(wanted), vectors[wanted].astype(np.float32))
    assert loaded.read(np.array([], dtype=np.int64)).shape == (0, 100)
    assert DenseRows.load(tmp_path / "none", 100) is None


def test_the_nearest_chunks_are_found_exactly_across_segments() -> None:
    """The same chunks in the same order as one exact search over all of them (the ranking is
    the same in every process); ties go to the earlier segment and row."""
    vectors = clustered(4_000, seed=2)
    parts = [(rows_of(vectors[at : at + 1000]), np.ones(1000, bool)) for at in range(0, 4000, 1000)]
    for seed in range(5):
        query = clustered(1, seed=100 + seed)[0]
        for n in (1, 10, 200):
            found = nearest(parts, query, n)
            assert [p * 1000 + r for p, r, _ in found] == exact_top(vectors, query, n)
            assert [s for *_, s in found] == sorted((s for *_, s in found), reverse=True)
    twice = [(rows_of(vectors[:10]), np.ones(10, bool))] * 2
    assert [(p, r) for p, r, _ in nearest(twice, vectors[3], 2)] == [(0, 3), (1, 3)]


def test_codes_are_scored_by_an_integer_product_and_in_float32_without_onnx_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(6)
    codes = rng.integers(1, 256, size=(70_000, 384), dtype=np.uint8)
    query = rng.integers(-127, 128, size=384, dtype=np.int8)
    wanted = (codes.astype(np.int64) - 128) @ query.astype(np.int64)
    assert (integer_product(codes, query) == wanted).all()
    assert nearest_module.INTEGER_GRAPH == nearest_module.integer_graph()  # kept serialized
    rows = rows_of(clustered(3_000, seed=9))
    monkeypatch.setattr(nearest_module, "_SESSION", False)  # ONNX Runtime could not start
    assert integer_product(codes, query) is None
    vector = clustered(1, seed=10)[0]
    np.testing.assert_allclose(rows.scores(vector), rows.vectors @ vector, rtol=1e-6)


def test_codes_rank_close_enough_that_rescoring_a_pool_gives_the_exact_nearest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """20,000 vectors, 30 queries, only `OVERSAMPLE * n` candidates rescored: the exact
    nearest chunks, as a search of every float32 vector finds them; the codes are saved and
    loaded with the vectors, and a segment saved without them is searched exactly."""
    monkeypatch.setattr(nearest_module, "MIN_POOL", 0)
    vectors = clustered(20_000, seed=7)
    rows = rows_of(vectors)
    assert rows.codes is not None and rows.codes.dtype == np.uint8
    approx = rows.scores(vectors[0])
    assert np.abs(approx - vectors @ vectors[0]).max() < 0.02
    rows.save(tmp_path)
    loaded = DenseRows.load(tmp_path, 20_000)
    assert loaded is not None and isinstance(loaded.codes, np.memmap)
    allowed = np.ones(20_000, dtype=bool)
    queries = unit(vectors[::667][:30] + np.random.default_rng(8).normal(size=(30, 384)) * 0.3)
    for query in queries:
        for n in (10, 100):
            found = nearest([(loaded, allowed)], query, n)
            assert [r for _, r, _ in found] == exact_top(vectors, query, n)
    (tmp_path / "scale.npy").unlink()  # as saved before codes were kept
    flat = DenseRows.load(tmp_path, 20_000)
    assert flat is not None and flat.codes is None
    found = nearest([(flat, allowed)], queries[0], 10)
    assert [r for _, r, _ in found] == exact_top(vectors, queries[0], 10)


def test_rows_not_allowed_are_never_returned() -> None:
    vectors = clustered(500, seed=4)
    rows = rows_of(vectors)
    allowed = np.zeros(500, dtype=bool)
    allowed[::7] = True
    found = nearest([(rows, allowed)], vectors[0], 1000)
    assert sorted(row for _, row, _ in found) == np.flatnonzero(allowed).tolist()
    assert nearest([(rows, np.zeros(500, dtype=bool))], vectors[0], 5) == []


def synthetic(n: int, seed: int, prefix: str, source: str = "test.txt") -> list:
    rng = random.Random(seed)
    return [
        make_paper(f"{prefix} paper {i}", " ".join(rng.choices(WORDS, k=40)) + ".", source)
        for i in range(n)
    ]


@pytest.fixture
def large(tmp_path: Path) -> Settings:
    """Settings whose collection is above the exact table's size: the large-collection path."""
    return Settings(index_dir=tmp_path / "index", exact_search_max=0)


@pytest.fixture
def chroma_queries(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every query Chroma's HNSW index answers, and every embedding Chroma reads."""
    from chromadb.api.models.Collection import Collection

    asked: list[tuple] = []
    original_query, original_get = Collection.query, Collection.get

    def query(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(("query", kwargs.get("where")))
        return original_query(self, *args, **kwargs)

    def get(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "embeddings" in (kwargs.get("include") or []):
            asked.append(("embeddings", kwargs.get("ids")))
        return original_get(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "query", query)
    monkeypatch.setattr(Collection, "get", get)
    return asked


def ranking(settings: Settings, query: str, mode: str = "dense", k: int = 8, **filters) -> list:
    """(score, paper ids with that score), best first: papers of equal score (the hash
    embedder makes many) may come in another order, and the last score's may differ."""
    retriever = get_retriever(settings, HashEmbedder(), mode=mode)
    if filters:
        retriever = retriever.restricted(Filter(**filters))
    scores: dict[float, set[str]] = {}
    for paper in retriever.search(query, k):
        scores.setdefault(round(paper.score, 4), set()).add(paper.paper_id)
    return sorted(scores.items(), reverse=True)[:-1]


def test_a_large_embedded_collection_is_searched_from_the_segments_not_chroma(
    large: Settings, chroma_queries: list[tuple]
) -> None:
    """The same papers as the exact table, in the same order, and not one query or embedding
    read in Chroma (whose HNSW index a fresh process would load whole to answer it); also for
    the BM25-only candidates of a hybrid search, whose cosines come from the segments."""
    embedder = HashEmbedder()
    ingest_papers(synthetic(300, 1, "Old"), large, embedder)
    exact = large.model_copy(update={"exact_search_max": 100_000})
    queries = ("glacier radar satellite", "coral reef bloom plankton", "magma tremor fault")
    for mode in ("dense", "hybrid"):
        for query in queries:
            wanted = ranking(exact, query, mode)
            chroma_queries.clear()
            assert ranking(large, query, mode) == wanted, (mode, query)
            assert len(wanted) > 1 and chroma_queries == [], (mode, query)
    retriever = get_retriever(large, embedder, mode="hybrid")
    papers = retriever.search("glacier radar satellite", 8)
    assert all(p.relevance is not None and p.text for p in papers)
    assert chroma_queries == []


def test_what_an_ingest_adds_or_rewrites_is_searched_as_it_now_is(
    large: Settings, chroma_queries: list[tuple]
) -> None:
    embedder = HashEmbedder()
    old = synthetic(200, 1, "Old")
    ingest_papers(old, large, embedder)
    before = old[7].abstract
    rewritten = make_paper("Old paper 7", "Quantum annealing of spin glasses on qubits.")
    added = make_paper("New paper", "Tidal turbines harvest marine energy from estuaries.")
    ingest_papers([rewritten, added], large, embedder)
    assert len(LexicalIndex(Store(large, embedder.name)).current().segments) == 2
    dense = get_retriever(large, embedder, mode="dense")
    assert dense.search("tidal turbines marine energy", 1)[0].paper_id == added.paper_id
    assert dense.search("quantum annealing spin glasses", 1)[0].paper_id == old[7].paper_id
    # Its old text's vector lives on in the first segment, tombstoned: never found.
    assert old[7].paper_id not in [p.paper_id for p in dense.search(before, 20)]
    assert chroma_queries == []


def test_filters_restrict_a_search_from_the_segments(
    large: Settings, chroma_queries: list[tuple]
) -> None:
    embedder = HashEmbedder()
    ingest_papers(
        [*synthetic(100, 1, "A", "a.txt"), *synthetic(100, 2, "B", "b.txt")], large, embedder
    )
    exact = large.model_copy(update={"exact_search_max": 100_000})
    for source in ("a.txt", "b.txt"):
        wanted = ranking(exact, "glacier ocean salinity", sources=(source,))
        chroma_queries.clear()
        assert ranking(large, "glacier ocean salinity", sources=(source,)) == wanted
        assert chroma_queries == []
        papers = get_retriever(large, embedder, mode="dense").restricted(Filter(sources=(source,)))
        assert all(source in p.sources for p in papers.search("glacier ocean salinity", 8))


def test_segments_without_vectors_or_mid_ingest_are_searched_through_chroma(
    large: Settings, chroma_queries: list[tuple]
) -> None:
    """An index whose segments were written before they kept vectors, and a search while an
    ingest runs (the segments kept then lag the store), are answered by Chroma, the same."""
    embedder = HashEmbedder()
    ingest_papers(synthetic(120, 1, "Old"), large, embedder)
    query = "volcano seismic tremor"
    from_segments = ranking(large, query)
    assert chroma_queries == []
    for starts in (large.index_dir / "bm25").rglob("starts.npy"):
        starts.unlink()  # as an index saved by an earlier version
    assert ranking(large, query) == from_segments
    assert [kind for kind, _ in chroma_queries] == ["query"]

    chroma_queries.clear()
    ingest_papers(synthetic(120, 1, "Old"), large.model_copy(), embedder)  # unchanged: kept
    held, release = threading.Event(), threading.Event()
    retriever = DenseRetriever(Store(large, embedder.name), embedder)
    assert retriever.segment_vectors() is None  # no vectors saved: none to use

    def ingesting() -> None:
        with ingest_lock(large.index_dir):
            Store(large, embedder.name).bump_generation()
            held.set()
            release.wait(30)

    rebuilt = LexicalIndex(Store(large, embedder.name))
    rebuilt._build(Store(large, embedder.name).stamp())
    # A whole build's vectors are read from the files it wrote, not held in memory.
    assert all(isinstance(s.dense.vectors, np.memmap) for s in rebuilt.current().segments)
    retriever = get_retriever(large, embedder, mode="hybrid")
    assert retriever.dense.segment_vectors() is not None  # rebuilt whole: vectors kept again
    thread = threading.Thread(target=ingesting)
    thread.start()
    try:
        assert held.wait(30)
        chroma_queries.clear()
        assert retriever.dense.segment_vectors() is None  # the index it keeps lags the store
        assert retriever.search(query, 8)
        assert ("query", None) in chroma_queries
        # A process starting mid-ingest builds BM25 for itself, but reads no vectors for it:
        # the store is being written; its dense side is Chroma's.
        chroma_queries.clear()
        fresh = get_retriever(large, embedder, mode="hybrid")
        assert fresh.search(query, 8) and fresh.dense.segment_vectors() is None
        assert ("query", None) in chroma_queries  # not one page of every embedding:
        assert ("embeddings", None) not in chroma_queries  # only candidates' (by id)
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: (folder / "scale.npy").write_bytes(b""),
        lambda folder: np.save(folder / "starts.npy", np.load(folder / "starts.npy")[:-1]),
        lambda folder: np.save(folder / "scale.npy", np.load(folder / "scale.npy")[:-1]),
        lambda folder: np.save(folder / "vectors.npy", np.load(folder / "vectors.npy")[:, :5]),
    ],
    ids=["empty file", "starts short", "scale short", "vectors narrow"],
)
def test_damaged_segment_vectors_are_rebuilt_not_a_traceback(
    large: Settings, chroma_queries: list[tuple], damage: object
) -> None:
    embedder = HashEmbedder()
    ingest_papers(synthetic(120, 1, "Old"), large, embedder)
    query = "volcano seismic tremor"
    before = ranking(large, query, "hybrid")
    (folder,) = {p.parent for p in (large.index_dir / "bm25").rglob("starts.npy")}
    damage(folder)  # type: ignore[operator]
    assert ranking(large, query, "hybrid") == before  # rebuilt whole from the store
    index = LexicalIndex(Store(large, embedder.name))
    assert index.dense() is not None
    assert all(s.dense is not None for s in index.current().segments)
