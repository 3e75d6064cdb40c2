"""A collection's chunks in memory -> exact nearest-neighbour search and filter masks.

`Hit` is what every chunk search returns. `ChunkTable` holds a whole (small) collection:
vectors as one matrix, rows in chunk-id order, so a query is one matrix-vector product and
the ranking is the same in every process. `MaskCache` keeps which rows a filter admits.
"""

from __future__ import annotations

import bisect
import json
import logging
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.filters import Filter

log = logging.getLogger(__name__)
MASKS_KEPT = 64  # filters whose masks are kept (a long-running server meets many)
SAVED_FORMAT = 1


@dataclass(frozen=True)
class Hit:
    """A chunk returned by a query, with its cosine similarity to the query."""

    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]


class MaskCache:
    """Boolean masks by key (a filter, with the store state it was computed for), the
    `size` most recently used kept: the one policy of every filter cache."""

    def __init__(self, size: int = MASKS_KEPT) -> None:
        self.size = size
        self._masks: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        mask = compute()
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > self.size:
                self._masks.popitem(last=False)
        return mask


@dataclass
class ChunkTable:
    """Every chunk of a collection in memory: vectors as one matrix, rows in chunk-id order.

    Small collections (`RAG_EXACT_SEARCH_MAX`) are searched exactly from it: a query is one
    matrix-vector product (well under a millisecond for the bundled corpus), and the ranking
    is the same in every process, which an approximate (HNSW) index does not promise.
    """

    stamp: tuple[int, int]
    ids: list[str]
    docs: list[str]
    metas: list[dict[str, Any]]
    matrix: np.ndarray
    rows_of: dict[str, list[int]]
    """Paper id -> its rows, in chunk order."""
    masks: MaskCache = field(default_factory=MaskCache)
    """Rows each filter admits."""

    @classmethod
    def build(cls, stamp: tuple[int, int], got: dict[str, Any]) -> ChunkTable:
        order = sorted(range(len(got["ids"])), key=got["ids"].__getitem__)
        ids = [got["ids"][i] for i in order]
        docs = [got["documents"][i] for i in order]
        metas = [got["metadatas"][i] for i in order]
        matrix = (
            np.asarray(got["embeddings"], dtype=np.float32)[order]
            if order
            else np.zeros((0, 0), dtype=np.float32)
        )
        return cls(stamp, ids, docs, metas, np.ascontiguousarray(matrix), _rows_of(metas))

    def save(self, folder: Path) -> None:
        """Kept in `folder` for the next process, which loads it several times faster than
        Chroma returns every chunk (a fresh `rag search`'s largest cost); written to a new
        directory renamed into place. An index that cannot be written keeps none."""
        tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
        name = "matrix-{}-{}.npy".format(*self.stamp)  # rows and vectors of one state
        try:
            tmp.mkdir(parents=True)
            np.save(tmp / name, self.matrix)
            saved = {"format": SAVED_FORMAT, "stamp": list(self.stamp), "matrix": name}
            rows = {"ids": self.ids, "docs": self.docs, "metas": self.metas}
            (tmp / "rows.json").write_text(json.dumps({**saved, **rows}), encoding="utf-8")
            old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.old")
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            log.info("chunk table not saved (%s); each process reads it from the store", exc)
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, stamp: tuple[int, int]) -> ChunkTable | None:
        """The table saved in `folder` when it is of the store state `stamp`, else None."""
        try:
            saved = json.loads((folder / "rows.json").read_text(encoding="utf-8"))
            if saved.get("format") != SAVED_FORMAT or tuple(saved["stamp"]) != tuple(stamp):
                return None
            ids, docs, metas = saved["ids"], saved["docs"], saved["metas"]
            matrix = np.load(folder / Path(saved["matrix"]).name, allow_pickle=False)
            if not len(ids) == len(docs) == len(metas) == len(matrix):
                return None
            return cls(stamp, ids, docs, metas, matrix, _rows_of(metas))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # none saved, another state's, or damaged: read from the store

    def hit(self, row: int, score: float = 0.0) -> Hit:
        return Hit(self.ids[row], score, self.docs[row], self.metas[row])

    def row(self, chunk_id: str) -> int | None:
        """Row of a chunk id, or None."""
        at = bisect.bisect_left(self.ids, chunk_id)
        return at if at < len(self.ids) and self.ids[at] == chunk_id else None

    def mask(self, filters: Filter) -> np.ndarray:
        return self.masks.get(
            filters,
            lambda: np.fromiter(
                (filters.matches(m) for m in self.metas), dtype=bool, count=len(self.metas)
            ),
        )

    def nearest(self, vector: np.ndarray, n: int, filters: Filter | None = None) -> list[Hit]:
        """The `n` rows nearest to `vector` (among those `filters` admits), best first; ties go
        to the smaller chunk id."""
        if n <= 0 or not self.ids:
            return []
        sims = self.matrix @ np.asarray(vector, dtype=np.float32)
        if filters:
            admitted = self.mask(filters)
            n = min(n, int(admitted.sum()))
            if n == 0:
                return []
            sims = np.where(admitted, sims, -np.inf)
        n = min(n, len(sims))
        top = np.argpartition(-sims, n - 1)[:n] if n < len(sims) else np.arange(len(sims))
        top = top[np.lexsort((top, -sims[top]))]
        return [self.hit(int(r), float(sims[r])) for r in top]


def _rows_of(metas: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Paper id -> its rows, in chunk order."""
    rows_of: dict[str, list[int]] = {}
    for row, meta in enumerate(metas):
        rows_of.setdefault(meta["paper_id"], []).append(row)
    for rows in rows_of.values():
        rows.sort(key=lambda r: metas[r]["chunk"])
    return rows_of
