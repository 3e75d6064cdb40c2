"""A paper -> the texts that are embedded: sentence-aware chunks of its abstract, each with its
title, measured in the embedding model's own tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rag.corpus import Paper, sentence_spans
from rag.metadata import paper_metadata

MAX_TITLE_TOKENS = 64  # of a title embedded with each chunk: a quarter of MiniLM's window


@dataclass(frozen=True)
class Chunk:
    """One embedded piece of a paper: `text` is the abstract part, the title is embedded too."""

    chunk_id: str
    paper: Paper
    index: int
    count: int
    text: str
    content_hash: str
    embed_title: str = ""
    """The title as embedded with the chunk (empty: the whole title); cut when very long."""

    @property
    def embed_text(self) -> str:
        return f"{self.embed_title or self.paper.title}\n{self.text}"

    def metadata(self) -> dict[str, Any]:
        return {
            "chunk": self.index,
            "n_chunks": self.count,
            "content_hash": self.content_hash,
            **paper_metadata(self.paper),
        }


class Chunker:
    """Sentence-aware splitting (llama-index) measured in the embedding model's own tokens.

    The title is embedded with every chunk, so each abstract chunk gets the model's window minus
    the title's tokens: no chunk is ever truncated by the encoder.
    """

    def __init__(self, count_tokens: Callable[[str], int], max_tokens: int, overlap: int) -> None:
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap = overlap
        self._splitters: dict[int, Any] = {}

    def _splitter(self, budget: int) -> Any:
        if budget not in self._splitters:
            from llama_index.core.node_parser import SentenceSplitter

            self._splitters[budget] = SentenceSplitter(
                chunk_size=budget,
                chunk_overlap=min(self.overlap, budget // 4),
                tokenizer=lambda text: [0] * self.count_tokens(text),
                # A regex instead of NLTK's punkt: loading NLTK (and the SciPy it pulls in)
                # took 1.6 s of every ingest, for sentence ends that abstracts mark plainly.
                chunking_tokenizer_fn=sentence_spans,
            )
        return self._splitters[budget]

    def title(self, paper: Paper) -> str:
        """The title as embedded with each chunk: whole, or its first words up to
        `MAX_TITLE_TOKENS`, so that a runaway title cannot crowd out the abstract."""
        if self.count_tokens(paper.title) <= MAX_TITLE_TOKENS:
            return paper.title
        words = paper.title.split()
        low, high = 0, len(words)  # the most words that fit
        while low < high:
            middle = (low + high + 1) // 2
            if self.count_tokens(" ".join(words[:middle])) <= MAX_TITLE_TOKENS:
                low = middle
            else:
                high = middle - 1
        return " ".join(words[:low]) or paper.title[: MAX_TITLE_TOKENS * 2]

    def split(self, paper: Paper) -> list[str]:
        title_tokens = self.count_tokens(self.title(paper)) + 1  # and the newline after it
        budget = max(32, self.max_tokens - title_tokens)
        if self.count_tokens(paper.abstract) <= budget:
            return [paper.abstract]
        return [t for t in self._splitter(budget).split_text(paper.abstract) if t.strip()]
