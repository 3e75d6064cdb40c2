"""Chunk vectors kept in each BM25 segment -> the nearest chunks, exactly, without Chroma's HNSW
index.

Chroma searches a large embedded collection through its HNSW index, which every process loads
whole before its first query (6.8 s and 2.7 GB at 1.2M chunks: most of a fresh `rag search`).
Each BM25 segment (`rag.segments`) also keeps the vectors of its papers' chunks as one float32
matrix, loaded memory-mapped: a query is one matrix-vector product per segment, read at memory
speed from the page cache (about 100 ms for 1.7M chunks here), exact, and the same in every
process. Compressed codes were measured and left out (bench/README.md): on SciFact's MiniLM
vectors, sign-bit codes had to keep 2.7 % of the collection for a claim's 10 nearest chunks to
survive in 9 of 10 claims, and NumPy has no fast half-precision or int8 product.

Files of a segment's folder: `vectors.npy` (chunks x dims, float32), `chunks.npy` (each row's
chunk number, int32), `starts.npy` (paper row -> its first chunk row, papers + 1 entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILES = ("vectors", "chunks", "starts")


@dataclass(eq=False)
class DenseRows:
    """The chunk vectors of one segment's papers, paper row by paper row."""

    vectors: np.ndarray
    chunks: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> DenseRows:
        """From each paper's (chunk numbers, vectors), in paper-row order."""
        counts = np.fromiter((len(c) for c, _ in parts), dtype=np.int64, count=len(parts))
        return cls(
            np.ascontiguousarray(np.concatenate([v for _, v in parts]), dtype=np.float32),
            np.concatenate([c for c, _ in parts]).astype(np.int32),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )

    def save(self, folder: Path) -> None:
        for name in FILES:
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> DenseRows | None:
        """The rows saved in `folder` (memory-mapped), or None when it keeps none (written
        before segments kept vectors, or through a Chroma server)."""
        if not (folder / "starts.npy").exists():
            return None
        rows = cls(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in FILES))
        if len(rows.chunks) != len(rows.vectors) or rows.starts[-1] != len(rows.vectors):
            raise ValueError(f"damaged vectors in {folder}")
        return rows

    def rows_of(self, paper_row: int) -> slice:
        return slice(int(self.starts[paper_row]), int(self.starts[paper_row + 1]))

    def paper_rows(self, rows: np.ndarray) -> np.ndarray:
        """The paper row of each chunk row."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def expand(self, per_paper: np.ndarray) -> np.ndarray:
        """A per-paper array as a per-chunk one."""
        return np.repeat(per_paper, np.diff(self.starts))


def nearest(
    parts: Sequence[tuple[DenseRows, np.ndarray]], vector: np.ndarray, n: int
) -> list[tuple[int, int, float]]:
    """The `n` chunks nearest to `vector` among those each (rows, allowed) admits (a per-chunk
    mask): (part, row, cosine), best first, ties to the earlier part and row."""
    vector = np.asarray(vector, dtype=np.float32)
    scores = [np.where(allowed, rows.vectors @ vector, -np.inf) for rows, allowed in parts]
    n = min(n, sum(int(allowed.sum()) for _, allowed in parts))
    if n <= 0:
        return []
    offsets = np.cumsum([0] + [len(s) for s in scores])
    sims = np.concatenate(scores)
    top = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
    top = top[np.lexsort((top, -sims[top]))]
    part_of = np.searchsorted(offsets, top, side="right") - 1
    return [
        (int(p), int(row - offsets[p]), float(sims[row]))
        for p, row in zip(part_of, top, strict=True)
    ]
