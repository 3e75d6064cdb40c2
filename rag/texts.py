"""Chunk texts kept beside an embedded Chroma collection, one copy each, by chunk id.

Chroma's SQLite file keeps each document four times (its metadata row, the index of metadata
strings, a full-text index's content and its trigrams): about 180 KB written per chunk, an
index four times the size it needs, and an ingest that slows as that file outgrows the page
cache. This tool never searches Chroma's full text, so an embedded collection created from
this version on keeps its texts here instead (`rag_texts` in its metadata says so): one row a
chunk in a plain SQLite table, read only for the papers a search returns. A server's
collection, which other machines read too, and an index built before keep theirs in Chroma.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from rag.errors import RagError

IDS_PER_STATEMENT = 500  # ids bound in one `IN (...)`: well under SQLite's variable limit


def texts_path(chroma_dir: Path, collection: str) -> Path:
    """Where the texts of `collection` live: inside the store's directory, so that moving,
    copying or removing the store takes them along."""
    return chroma_dir / f"rag-texts-{collection}.sqlite3"


class ChunkTexts:
    """Texts by chunk id in one SQLite file, shared by the threads of a process (one
    connection, one lock) and by processes (SQLite's own locking: a reader waits out a
    writer's commit instead of failing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def create(self) -> None:
        """Make the file and its table (nothing when they exist)."""
        with self._connection() as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS texts (id TEXT PRIMARY KEY, text TEXT NOT NULL)")

    def check(self) -> None:
        """A store whose collection keeps its texts here, with the file gone, is damaged."""
        if not self.path.is_file():
            raise RagError(
                f"the index at {self.path.parent.parent} is damaged: {self.path.name} (the "
                f"chunk texts) is missing from {self.path.parent}; restore it, or move the "
                "directory aside and run `rag ingest` to build a new index"
            )

    def put(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Add or replace the texts of these chunks, in one transaction."""
        with self._connection() as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO texts VALUES (?, ?)", zip(ids, texts, strict=True)
            )

    def get(self, ids: Sequence[str]) -> list[str | None]:
        """The texts of these chunks, in the same order (None for an id without one)."""
        found: dict[str, str] = {}
        with self._connection() as db:
            for start in range(0, len(ids), IDS_PER_STATEMENT):
                part = list(ids[start : start + IDS_PER_STATEMENT])
                marks = ",".join("?" * len(part))
                found.update(db.execute(f"SELECT id, text FROM texts WHERE id IN ({marks})", part))
        return [found.get(cid) for cid in ids]

    def restore(self, ids: Sequence[str], texts: Sequence[str | None]) -> None:
        """Put back what `get` returned for these ids (None: no text)."""
        with self._connection() as db, db:
            pairs = list(zip(ids, texts, strict=True))
            db.executemany("DELETE FROM texts WHERE id = ?", ((c,) for c, t in pairs if t is None))
            db.executemany(
                "INSERT OR REPLACE INTO texts VALUES (?, ?)",
                ((c, t) for c, t in pairs if t is not None),
            )

    def delete(self, ids: Sequence[str]) -> None:
        with self._connection() as db, db:
            db.executemany("DELETE FROM texts WHERE id = ?", ((cid,) for cid in ids))

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            yield self._db

    def _connect(self) -> sqlite3.Connection:
        """A connection that writes when the file (or, before it exists, its directory) can be
        written, else a read-only one (a store on a read-only mount is still searchable)."""
        target = self.path if self.path.exists() else self.path.parent
        if os.access(target, os.W_OK) and os.access(self.path.parent, os.W_OK):
            return sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
