"""Queries -> ranked papers.

Retrievers rank chunks; `to_papers` turns a chunk ranking into a paper ranking (one entry per
paper, its best chunk as the snippet), which is what every caller sees.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.index import Hit, Store

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.settings import Settings

CHUNKS_PER_PAPER = 4  # chunks fetched per wanted paper, so that k distinct papers come back
RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al., 2009)
# A word, or a hyphenated compound ("bi-level", "L-Mul"), which also counts joined ("bilevel").
TOKEN = re.compile(r"\w+(?:-\w+)+|\w+")


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
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "paper_id": self.paper_id,
            "title": self.title,
            "score": round(self.score, 4),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "snippet": self.snippet,
            "dates": self.dates,
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
            paper.text = join_chunks(chunks[paper.paper_id])


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[PaperHit]:
        """The `k` best papers for `query`, best first."""
        ...

    def attach_texts(self, papers: Sequence[PaperHit]) -> None:
        """Fill in the whole abstract of each paper (`PaperHit.text`)."""
        ...


class StoreRetriever:
    """What every retriever over our store shares."""

    store: Store

    def attach_texts(self, papers: Sequence[PaperHit]) -> None:
        attach_texts(self.store, papers)


def to_papers(hits: Sequence[Hit], k: int) -> list[PaperHit]:
    """Best-first chunk hits -> best-first papers, each paper once with its best chunk."""
    papers: dict[str, PaperHit] = {}
    for hit in hits:
        pid = hit.metadata["paper_id"]
        if pid not in papers:
            papers[pid] = PaperHit.from_hit(hit)
            if len(papers) == k:
                break
    return list(papers.values())


class DenseRetriever(StoreRetriever):
    """Nearest chunks by cosine similarity in Chroma."""

    def __init__(self, store: Store, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    def query_vector(self, query: str) -> np.ndarray:
        self.store.col  # noqa: B018 - a model mismatch is reported before any embedding call
        return self.embedder.embed([query])[0]

    def search(self, query: str, k: int) -> list[PaperHit]:
        return self.search_vector(self.query_vector(query), k)

    def search_vector(self, vector: np.ndarray, k: int) -> list[PaperHit]:
        return to_papers(self.store.query(vector, k * CHUNKS_PER_PAPER), k)


def tokenize(text: str) -> list[str]:
    """BM25 terms: lower-cased, English stop words removed, Snowball-stemmed.

    A hyphenated compound gives its parts and the joined word, so "bi-level", "bilevel" and
    "Bi-Level" meet; single letters are kept ("L-Mul" -> l, mul, lmul). Stemming lets
    "optimizers" match "optimization" (both "optim"), as Lucene's English analyzer does.
    """
    stop, stemmer = _analyzer()
    words: list[str] = []
    for token in TOKEN.findall(text.lower()):
        if "-" in token:
            parts = [p for p in token.split("-") if p]
            words.extend(p for p in parts if p not in stop)
            words.append("".join(parts))
        elif token not in stop:
            words.append(token)
    return stemmer.stemWords(words)


@cache
def _analyzer() -> tuple[frozenset[str], Any]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN), Stemmer.Stemmer("english")


class BM25Retriever(StoreRetriever):
    """Lexical BM25 (bm25s) over whole papers: the title and every chunk of the abstract.

    Paper-level documents score better than chunk-level ones (a term in another chunk of the
    same abstract still counts), and the ranking is per paper anyway. Built from the store when
    first used, so it always agrees with the vectors (the bundled corpus: about 0.1 s).
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @cached_property
    def _index(self) -> tuple[Any, list[list[Hit]]]:
        import bm25s

        # bm25s sets its logger to DEBUG on import, which floods any configured root handler.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        papers: dict[str, list[Hit]] = {}
        for chunk in self.store.all_chunks():
            papers.setdefault(chunk.metadata["paper_id"], []).append(chunk)
        groups = [sorted(g, key=lambda c: c.metadata["chunk"]) for g in papers.values()]
        model = bm25s.BM25()
        if groups:
            docs = [
                tokenize(" ".join([g[0].metadata["title"], *(c.text for c in g)])) for g in groups
            ]
            model.index(docs, show_progress=False)
        return model, groups

    def search(self, query: str, k: int) -> list[PaperHit]:
        model, groups = self._index
        vocab = getattr(model, "vocab_dict", None) or {}
        tokens = [t for t in tokenize(query) if t in vocab]
        if not tokens or not groups:
            return []
        ids, scores = model.retrieve([tokens], k=min(k, len(groups)), show_progress=False)
        wanted = set(tokens)
        hits = []
        for i, score in zip(ids[0], scores[0], strict=True):
            if score <= 0:
                break
            # The snippet: the chunk that shares the most query terms.
            best = max(groups[i], key=lambda c: len(wanted & set(tokenize(c.text))))
            hit = PaperHit.from_hit(Hit(best.chunk_id, float(score), best.text, best.metadata))
            hit.relevance = None  # a BM25 score is no similarity
            hits.append(hit)
        return hits


class HybridRetriever(StoreRetriever):
    """Dense and BM25 paper rankings fused by reciprocal rank fusion.

    Each side ranks `depth` papers; a paper's fused score is the sum over the sides of
    weight / (RRF_K + rank). Titles, acronyms and rare terms come from BM25, paraphrases from
    the dense side. Every returned paper gets its true cosine `relevance`, also when only BM25
    found it, so refusal thresholds keep working.
    """

    def __init__(
        self,
        dense: DenseRetriever,
        bm25: BM25Retriever,
        dense_weight: float = 1.0,
        bm25_weight: float = 1.0,
        depth: int = 50,
    ) -> None:
        self.dense = dense
        self.bm25 = bm25
        self.store = dense.store
        self.weights = (dense_weight, bm25_weight)
        self.depth = depth

    def search(self, query: str, k: int) -> list[PaperHit]:
        vector = self.dense.query_vector(query)
        depth = max(self.depth, k)
        dense = self.dense.search_vector(vector, depth)
        lexical = self.bm25.search(query, depth)
        fused: dict[str, float] = {}
        for weight, ranking in zip(self.weights, (dense, lexical), strict=True):
            for rank, paper in enumerate(ranking, start=1):
                fused[paper.paper_id] = fused.get(paper.paper_id, 0.0) + weight / (RRF_K + rank)
        by_id = {p.paper_id: p for p in lexical} | {p.paper_id: p for p in dense}
        best = sorted(fused, key=lambda pid: (-fused[pid], pid))[:k]
        papers = [by_id[pid] for pid in best]
        lexical_only = [p for p in papers if p.paper_id not in {d.paper_id for d in dense}]
        vectors = self.dense.store.vectors([p.chunk_id for p in lexical_only])
        for paper in papers:
            if paper.chunk_id in vectors:
                paper.relevance = float(vectors[paper.chunk_id] @ vector)
            paper.score = fused[paper.paper_id]
        return papers


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
        store.col  # noqa: B018 - same checks as the other modes
        return BM25Retriever(store)
    return HybridRetriever(
        DenseRetriever(store, embedder),
        BM25Retriever(store),
        settings.dense_weight,
        settings.bm25_weight,
    )
