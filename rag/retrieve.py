"""Queries -> ranked papers.

Retrievers rank papers (a dense one by its nearest chunk) from ids and scores alone; `paper_hits`
then reads the texts and metadata of the papers kept, all at once, which is what every caller
sees: in a large collection each text read is a random read in Chroma's SQLite file.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self

import numpy as np

from rag.collection import chunk_id
from rag.corpus import paper_url
from rag.filters import Filter
from rag.lexical import LexicalIndex, tokenize
from rag.segments import DenseLexicon, PaperIds
from rag.store import Store
from rag.table import Hit

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.settings import Settings

CHUNKS_PER_PAPER = 4  # chunks fetched per wanted paper, so that k distinct papers come back
log = logging.getLogger(__name__)
RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al., 2009)
# The BM25 side keeps its full weight when the best BM25 paper holds at least this share of a
# query's content (by IDF), and loses it in proportion below (bench/README.md, issue 18).
LEXICAL_FULL_MATCH = 0.3


@dataclass
class PaperHit:
    """A paper in a ranking: its score is its best chunk's."""

    paper_id: str
    title: str
    score: float
    snippet: str
    chunk_id: str
    relevance: float | None = None
    """Cosine similarity of the snippet chunk to the query (None: not computed, BM25 only)."""
    dates: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    """The whole abstract, rebuilt from its chunks (set by `attach_texts`)."""
    arxiv_id: str | None = None
    categories: list[str] = field(default_factory=list)
    date: str | None = None

    @classmethod
    def from_hit(cls, hit: Hit) -> PaperHit:
        meta = hit.metadata
        return cls(
            paper_id=meta["paper_id"],
            title=meta["title"],
            score=hit.score,
            snippet=hit.text,
            chunk_id=hit.chunk_id,
            relevance=hit.score,
            dates=list(meta.get("dates") or []),
            sources=list(meta.get("sources") or []),
            metadata={k: v for k, v in meta.items() if k.startswith("meta_")},
            arxiv_id=meta.get("arxiv_id"),
            categories=list(meta.get("categories") or []),
            date=meta.get("date"),
        )

    @property
    def url(self) -> str:
        return paper_url(self.title, self.arxiv_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "paper_id": self.paper_id,
            "title": self.title,
            "url": self.url,
            "score": round(self.score, 4),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "snippet": self.snippet,
            "dates": self.dates,
            "date": self.date,
            "categories": self.categories,
            "sources": self.sources,
        }


def join_chunks(chunks: Sequence[str]) -> str:
    """An abstract rebuilt from its chunks in order, each overlap kept once."""
    text = ""
    for chunk in chunks:
        head = chunk[:40]
        at = text.rfind(head) if head else -1
        if at >= 0 and chunk.startswith(text[at:]):
            text = text[:at] + chunk
        else:
            text = f"{text} {chunk}" if text else chunk
    return text


def attach_texts(store: Store, papers: Sequence[PaperHit]) -> None:
    """Give each paper its whole abstract (answers quote and cite whole abstracts)."""
    chunks = store.paper_chunks([p.paper_id for p in papers if not p.text])
    for paper in papers:
        if paper.paper_id in chunks:
            paper.text = join_chunks([c.text for c in chunks[paper.paper_id]])


class Retriever(Protocol):
    filters: Filter
    """Papers outside these filters are never returned (see `restricted`)."""

    def search(self, query: str, k: int) -> list[PaperHit]:
        """The `k` best papers for `query`, best first."""
        ...

    def restricted(self, filters: Filter) -> Retriever:
        """This retriever, returning only papers that `filters` admits (caches shared)."""
        ...

    def attach_texts(self, papers: Sequence[PaperHit]) -> None:
        """Fill in the whole abstract of each paper (`PaperHit.text`)."""
        ...

    def papers_by_id(self, paper_ids: Sequence[str]) -> list[PaperHit]:
        """These papers, in the given order (a follow-up keeps the papers it refers to)."""
        ...


class StoreRetriever:
    """What every retriever over our store shares."""

    store: Store
    filters: Filter = Filter()

    def restricted(self, filters: Filter) -> Self:
        """A shallow copy: the store, the loaded BM25 index and the encoder are shared."""
        clone = copy.copy(self)
        clone.filters = filters
        return clone

    def attach_texts(self, papers: Sequence[PaperHit]) -> None:
        with self.store.one_view():
            attach_texts(self.store, papers)

    def papers_by_id(self, paper_ids: Sequence[str]) -> list[PaperHit]:
        """These papers (those still in the index and admitted by the filters), in the given
        order, with their texts."""
        with self.store.one_view():
            chunks = self.store.paper_chunks(paper_ids)
            admitted = self.store.admitted_papers(self.filters) if self.filters else None
        papers = []
        for pid in paper_ids:
            if pid in chunks and (admitted is None or pid in admitted):
                paper = PaperHit.from_hit(chunks[pid][0])
                paper.relevance = None
                paper.text = join_chunks([c.text for c in chunks[pid]])
                papers.append(paper)
        return papers


def paper_hits(
    store: Store,
    ranking: Sequence[tuple[str, float]],
    snippets: dict[str, str] | None = None,
    query: str = "",
) -> list[PaperHit]:
    """Ranked (paper id, score) pairs -> papers with their whole texts, every paper's chunks
    read at once. A paper's snippet is the chunk `snippets` names (the dense side's nearest),
    else the chunk sharing most terms with `query`; papers deleted since are left out."""
    chunks = store.paper_chunks([pid for pid, _ in ranking])
    snippets = snippets or {}
    wanted = set(tokenize(query))
    papers = []
    for pid, score in ranking:
        parts = chunks.get(pid)
        if not parts:
            continue  # deleted since the stamp was read
        best = next((c for c in parts if c.chunk_id == snippets.get(pid)), None) or max(
            parts, key=lambda c: len(wanted & set(tokenize(c.text)))
        )
        paper = PaperHit.from_hit(Hit(best.chunk_id, score, best.text, best.metadata))
        paper.relevance = None
        paper.text = join_chunks([c.text for c in parts])
        papers.append(paper)
    return papers


class DenseRetriever(StoreRetriever):
    """Nearest chunks by cosine similarity: exactly from the in-memory table (a small
    collection); from the chunk vectors the BM25 segments keep (`rag.nearest`: 8-bit codes,
    exact rescoring; an embedded collection, whose HNSW index each process would otherwise
    load whole); else from Chroma's HNSW index (a server's, an index whose segments keep no
    vectors, or mid-ingest)."""

    def __init__(self, store: Store, embedder: Embedder, index: LexicalIndex | None = None) -> None:
        self.store = store
        self.embedder = embedder
        # Given (a hybrid's, which builds it anyway), a stale BM25 index is rebuilt for its
        # vectors; a dense search alone uses a saved one only.
        self.index = index or LexicalIndex(store)
        self.build = index is not None

    def segment_vectors(self) -> DenseLexicon | None:
        """The segments' vectors, when a search should use them."""
        if not self.store.embedded or self.store.table() is not None:
            return None
        return self.index.dense(build=self.build)

    def query_vector(self, query: str) -> np.ndarray:
        from rag.embed import embed_cached

        self.store.open()  # a model mismatch is reported before any embedding call
        return embed_cached(self.embedder, [query])[0]

    def search(self, query: str, k: int) -> list[PaperHit]:
        vector = self.query_vector(query)
        with self.store.one_view():
            return self.search_vector(vector, k, self.filters)

    def candidates(
        self, vector: np.ndarray, k: int, filters: Filter | None = None
    ) -> dict[str, Hit]:
        """The `k` papers nearest to `vector`, best first, each with its nearest chunk's id and
        cosine (no text: only the papers a search keeps are read)."""
        best: dict[str, Hit] = {}
        for hit in self.nearest_chunks(vector, k * CHUNKS_PER_PAPER, filters):
            if best.setdefault(hit.metadata["paper_id"], hit) is hit and len(best) == k:
                break
        return best

    def nearest_chunks(self, vector: np.ndarray, n: int, filters: Filter | None) -> list[Hit]:
        """The `n` chunks nearest to `vector`, best first, without text."""
        dense = self.segment_vectors()
        if dense is None:
            return self.store.query(vector, n, filters, content=False)
        ids = dense.lexicon.ids
        admitted = self.index.admitted(filters, ids) if filters else None
        return [
            Hit(chunk_id(pid, number), score, "", {"paper_id": pid})
            for pid, number, score in dense.nearest(vector, n, admitted)
        ]

    def chunk_cosines(
        self, paper_ids: Sequence[str], vector: np.ndarray
    ) -> dict[str, dict[str, float]]:
        """Each chunk's cosine similarity to `vector`, by paper id then chunk id."""
        dense = self.segment_vectors() if paper_ids else None
        if dense is None:
            return self.store.chunk_cosines(paper_ids, vector)
        vector = np.asarray(vector, dtype=np.float32)
        return {
            pid: {
                chunk_id(pid, int(n)): float(s)
                for n, s in zip(numbers, matrix @ vector, strict=True)
            }
            for pid, (numbers, matrix) in dense.paper_vectors(list(paper_ids)).items()
        }

    def search_vector(
        self, vector: np.ndarray, k: int, filters: Filter | None = None
    ) -> list[PaperHit]:
        best = self.candidates(vector, k, filters)
        ranking = [(pid, hit.score) for pid, hit in best.items()]
        papers = paper_hits(self.store, ranking, {pid: h.chunk_id for pid, h in best.items()})
        for paper in papers:
            paper.relevance = paper.score
        return papers


class BM25Retriever(StoreRetriever):
    """Lexical BM25 over whole papers (`rag.lexical.LexicalIndex`): paper-level documents score
    better than chunk-level ones (a term in another chunk of the same abstract still counts),
    and the ranking is per paper anyway."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = LexicalIndex(store)

    def rank(self, query: str, k: int, filters: Filter | None = None) -> list[tuple[str, float]]:
        """The `k` best (paper id, BM25 score) pairs; papers sharing no term are left out."""
        ids, scores = self.scores(query, filters)
        return [(ids[i], float(scores[i])) for i in best_rows(scores, k)]

    def scores(self, query: str, filters: Filter | None = None) -> tuple[PaperIds, np.ndarray]:
        """Every paper's BM25 score for `query`: (paper ids, scores in the same order). Papers
        that `filters` excludes score 0, which no ranking keeps."""
        ids, scores = self.index.scores(query)
        if filters and ids:
            scores[~self.index.admitted(filters, ids)] = 0.0
        return ids, scores

    def search(self, query: str, k: int) -> list[PaperHit]:
        # Each with the chunk sharing most query terms as snippet; no relevance (a BM25 score
        # is no similarity).
        with self.store.one_view():
            return paper_hits(self.store, self.rank(query, k, self.filters), query=query)


class HybridRetriever(StoreRetriever):
    """Dense and BM25 scores fused per paper.

    The candidates are each side's `depth` best papers. `fusion="convex"` (the default) scores a
    candidate by dense_weight * cosine / best cosine + bm25_weight * bm25 / best bm25, using
    each paper's exact score on both sides (its best chunk's cosine, its BM25 score);
    `fusion="rrf"` sums weight / (60 + rank) instead. Titles, acronyms and rare terms come from
    BM25, paraphrases from the dense side. Every returned paper has its true cosine
    `relevance`, also when only BM25 found it.
    """

    def __init__(
        self,
        dense: DenseRetriever,
        bm25: BM25Retriever,
        dense_weight: float = 0.6,
        bm25_weight: float = 0.5,
        fusion: str = "convex",
        depth: int = 50,
    ) -> None:
        self.dense = dense
        self.bm25 = bm25
        self.store = dense.store
        self.weights = (dense_weight, bm25_weight)
        self.fusion = fusion
        self.depth = depth

    def search(self, query: str, k: int) -> list[PaperHit]:
        vector = self.dense.query_vector(query)
        with self.store.one_view():
            return self._search(query, vector, k)

    def _search(self, query: str, vector: np.ndarray, k: int) -> list[PaperHit]:
        depth = max(self.depth, k)
        dense = self.dense.candidates(vector, depth, self.filters)
        ids, bm25 = self.bm25.scores(query, self.filters)
        lexical = {ids[i]: float(bm25[i]) for i in best_rows(bm25, depth)}
        cosines: dict[str, dict[str, float]] = {}
        if self.fusion == "convex":
            # Each candidate's BM25 score (a dense one's too), not a dictionary of every paper.
            rows = ids.rows([pid for pid in dense if pid not in lexical]) if len(bm25) else {}
            scored = lexical | {pid: float(bm25[row]) for pid, row in rows.items()}
            cosines = self.dense.chunk_cosines([p for p in lexical if p not in dense], vector)
            cosine = {pid: hit.score for pid, hit in dense.items()}
            cosine |= {pid: max(chunks.values()) for pid, chunks in cosines.items()}
            top_bm25 = float(bm25.max()) if len(bm25) else 0.0
            fused = self._convex(query, cosine, scored, top_bm25)
        else:
            fused = self._rrf(list(dense), list(lexical))
        best = sorted(fused, key=lambda pid: (-fused[pid], pid))[:k]
        lexical_only = [pid for pid in best if pid not in dense and pid not in cosines]
        cosines |= self.dense.chunk_cosines(lexical_only, vector)
        snippets = {pid: dense[pid].chunk_id for pid in best if pid in dense}
        papers = paper_hits(self.store, [(pid, fused[pid]) for pid in best], snippets, query)
        for paper in papers:
            pid = paper.paper_id
            if pid in dense:  # the snippet is its nearest chunk
                paper.relevance = dense[pid].score
            else:
                paper.relevance = cosines.get(pid, {}).get(paper.chunk_id)
        return papers

    def _convex(
        self, query: str, cosine: dict[str, float], bm25: dict[str, float], top_bm25: float
    ) -> dict[str, float]:
        """Each candidate's fused score from its best cosine and its BM25 score (`cosine` has
        every candidate; `bm25` every one BM25 scored)."""
        top_cos = max([c for c in cosine.values() if c > 0], default=1.0)
        top_bm25 = top_bm25 or 1.0
        wd, wb = self.weights
        wb *= self.lexical_strength(query, top_bm25)
        return {
            pid: wd * max(cosine.get(pid, 0.0), 0.0) / top_cos + wb * bm25.get(pid, 0.0) / top_bm25
            for pid in cosine.keys() | bm25.keys()
        }

    def lexical_strength(self, query: str, top_bm25: float) -> float:
        """How much the BM25 side may weigh for `query`, 0 to 1: 1 when the best BM25 paper
        matches at least `LEXICAL_FULL_MATCH` of the query's content (a title, an acronym, a
        question in the papers' words), less in proportion below: a question in other words
        than the papers' matches little, its best BM25 paper is mostly chance, and the dense
        side then decides."""
        weight = self.bm25.index.query_weight(query)
        if weight <= 0:
            return 1.0  # nothing but question words: BM25 is as good as it gets
        return min(1.0, top_bm25 / (weight * LEXICAL_FULL_MATCH))

    def _rrf(self, dense: list[str], lexical: list[str]) -> dict[str, float]:
        fused: dict[str, float] = {}
        for weight, ranking in zip(self.weights, (dense, lexical), strict=True):
            for rank, pid in enumerate(ranking, start=1):
                fused[pid] = fused.get(pid, 0.0) + weight / (RRF_K + rank)
        return fused


def best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the `k` highest positive scores, best first, ties to the lower row: the same
    as a stable sort of them all, without sorting a million scores per query."""
    rows = np.flatnonzero(scores > 0)
    if len(rows) > k:
        kth = np.partition(scores[rows], len(rows) - k)[len(rows) - k]
        rows = rows[scores[rows] >= kth]  # the k best and any tied with the last
    return rows[np.argsort(-scores[rows], kind="stable")][:k]


def get_retriever(
    settings: Settings, embedder: Embedder | None = None, mode: str | None = None
) -> Retriever:
    """The configured (or named) retriever over the configured index."""
    from rag.embed import get_embedder

    mode = mode or settings.retriever
    embedder = embedder or get_embedder(settings)
    store = Store(settings, embedder.name)
    if mode == "dense":
        return DenseRetriever(store, embedder)
    if mode == "bm25":
        store.open()  # the same checks as the other modes
        return BM25Retriever(store)
    bm25 = BM25Retriever(store)
    return HybridRetriever(
        DenseRetriever(store, embedder, bm25.index),
        bm25,
        settings.dense_weight,
        settings.bm25_weight,
        settings.fusion,
    )
