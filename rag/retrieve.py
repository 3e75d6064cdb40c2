"""Queries -> ranked papers.

Retrievers rank chunks; `to_papers` turns a chunk ranking into a paper ranking (one entry per
paper, its best chunk as the snippet), which is what every caller sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rag.index import Hit, Store

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.settings import Settings

CHUNKS_PER_PAPER = 4  # chunks fetched per wanted paper, so that k distinct papers come back


@dataclass
class PaperHit:
    """A paper in a ranking: its score is its best chunk's."""

    paper_id: str
    title: str
    score: float
    snippet: str
    chunk_id: str
    dates: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hit(cls, hit: Hit) -> PaperHit:
        meta = hit.metadata
        return cls(
            paper_id=meta["paper_id"],
            title=meta["title"],
            score=hit.score,
            snippet=hit.text,
            chunk_id=hit.chunk_id,
            dates=list(meta.get("dates") or []),
            sources=list(meta.get("sources") or []),
            metadata={k: v for k, v in meta.items() if k.startswith("meta_")},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "paper_id": self.paper_id,
            "title": self.title,
            "score": round(self.score, 4),
            "snippet": self.snippet,
            "dates": self.dates,
        }


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[PaperHit]:
        """The `k` best papers for `query`, best first."""
        ...


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


class DenseRetriever:
    """Nearest chunks by cosine similarity in Chroma."""

    def __init__(self, store: Store, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    def search(self, query: str, k: int) -> list[PaperHit]:
        self.store.col  # noqa: B018 - a model mismatch is reported before any embedding call
        vector = self.embedder.embed([query])[0]
        return to_papers(self.store.query(vector, k * CHUNKS_PER_PAPER), k)


def get_retriever(settings: Settings, embedder: Embedder | None = None) -> Retriever:
    """The configured retriever over the configured index."""
    from rag.embed import get_embedder

    embedder = embedder or get_embedder(settings)
    return DenseRetriever(Store(settings, embedder.name), embedder)

