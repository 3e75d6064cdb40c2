"""Chunk texts kept beside an embedded Chroma collection, one copy each, by chunk id.

Chroma's SQLite file keeps each document four times (its metadata row, the index of metadata
strings, a full-text index's content and its trigrams): about 180 KB written per chunk, an
index four times the size it needs, and an ingest that slows as that file outgrows the page
cache. This tool never searches Chroma's full text, so an embedded collection created from
this version on keeps its texts here instead (`rag_texts` in its metadata says so): one row a
chunk in a plain SQLite table, read only for the papers a search returns. A server's
collection, which other machines read too, and an index built before keep theirs in Chroma.

Each row keeps a copy of its chunk's metadata too (JSON; Chroma keeps the original, which its
filters read): any read of an embedded Chroma collection, even a count, first loads its whole
HNSW index (3.4 s and 3.3 GB at 1.7M chunks), so a search that ranks from the BM25 segments
reads the papers it returns from here and never opens Chroma's index. Rows written before
this copy was kept have none (NULL) until a whole BM25 build fills it in (`fill_metadata`).

What the filters read of each paper (its first chunk's date, categories and sources) is kept
once more in a small `facets` table, written in the same transactions: a filtered search of a
million papers reads 60 MB there (well under a second) instead of Chroma's index and
metadata. A file is trusted for filters only once every paper's facets are in it
(`PRAGMA user_version`): from its creation, or from the whole build that filled them in.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.filters import Filter, date_number

IDS_PER_STATEMENT = 500  # ids bound in one `IN (...)`: well under SQLite's variable limit
FIRST = "#0"  # how a paper's first chunk's id ends (`rag.collection.chunk_id`): its facets row
SEP = "\x1f"  # around each value of a facets column (a unit separator: in no name or category)
FACETS = (
    "CREATE TABLE IF NOT EXISTS facets (paper_id TEXT PRIMARY KEY, date_num INTEGER NOT NULL, "
    "categories TEXT NOT NULL, sources TEXT NOT NULL) WITHOUT ROWID"
)
FACETS_COMPLETE = 1  # the file's user_version once every paper has its facets row


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
        self._meta = "NULL"  # what rows read as metadata: "meta" once the column exists

    def create(self) -> None:
        """Make the file and its table (nothing when they exist)."""
        with self._connection() as db, db:
            new = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'texts'").fetchone()
            db.execute(
                "CREATE TABLE IF NOT EXISTS texts "
                "(id TEXT PRIMARY KEY, text TEXT NOT NULL, meta TEXT)"
            )
            self._add_meta_column(db)
            self._meta = "meta"
            db.execute(FACETS)
            if new:  # nothing written yet: every paper will have its facets
                db.execute(f"PRAGMA user_version = {FACETS_COMPLETE}")

    def check(self) -> None:
        """A store whose collection keeps its texts here, with the file gone, is damaged."""
        if not self.path.is_file():
            raise RagError(
                f"the index at {self.path.parent.parent} is damaged: {self.path.name} (the "
                f"chunk texts) is missing from {self.path.parent}; restore it, or move the "
                "directory aside and run `rag ingest` to build a new index"
            )

    def put(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
    ) -> None:
        """Add or replace the texts (and metadata) of these chunks, in one transaction."""
        metas = [_dumps(m) for m in metadatas] if metadatas is not None else [None] * len(ids)
        with self._connection() as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO texts (id, text, meta) VALUES (?, ?, ?)",
                zip(ids, texts, metas, strict=True),
            )
            keep_facets(db, ids, metadatas or [None] * len(ids))

    def put_metadata(
        self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]], missing: bool = False
    ) -> None:
        """Set the metadata of these chunks (of those with none, when `missing`); a key whose
        value is None is left out, as Chroma's update deletes it."""
        condition = " AND meta IS NULL" if missing else ""
        with self._connection() as db, db:
            db.executemany(
                f"UPDATE texts SET meta = ? WHERE id = ?{condition}",
                ((_dumps(m), cid) for cid, m in zip(ids, metadatas, strict=True)),
            )
            keep_facets(db, ids, metadatas)

    def lacks_metadata(self) -> bool:
        """Whether some chunk has no metadata here (written before it was kept)."""
        with self._connection() as db:
            if self._meta != "meta":
                return True
            return (
                db.execute("SELECT 1 FROM texts WHERE meta IS NULL LIMIT 1").fetchone() is not None
            )

    def papers(self, paper_ids: Sequence[str]) -> dict[str, list[tuple[str, str, Any]]]:
        """Every chunk of these papers kept here: (chunk id, text, metadata or None), by paper
        id, read through the primary key (a paper's chunks are `PAPER#0`, `PAPER#1`, ...)."""
        found: dict[str, list[tuple[str, str, Any]]] = {}
        with self._connection() as db:
            for pid in dict.fromkeys(paper_ids):
                rows = db.execute(
                    f"SELECT id, text, {self._meta} FROM texts WHERE id >= ? AND id < ?",
                    (f"{pid}#", f"{pid}$"),  # "$" follows "#": every "PAPER#..." id
                )
                for cid, text, saved in rows:
                    if cid.rpartition("#")[0] == pid:
                        found.setdefault(pid, []).append(
                            (cid, text, None if saved is None else json.loads(saved))
                        )
        return found

    def get(self, ids: Sequence[str]) -> list[str | None]:
        """The texts of these chunks, in the same order (None for an id without one)."""
        return [row[0] if row is not None else None for row in self.rows(ids)]

    def rows(self, ids: Sequence[str]) -> list[tuple[str, str | None] | None]:
        """(text, metadata as saved) of these chunks, in order (None: no row), for `restore`."""
        found: dict[str, tuple[str, str | None]] = {}
        with self._connection() as db:
            for start in range(0, len(ids), IDS_PER_STATEMENT):
                part = list(ids[start : start + IDS_PER_STATEMENT])
                marks = ",".join("?" * len(part))
                query = f"SELECT id, text, {self._meta} FROM texts WHERE id IN ({marks})"
                found.update((cid, (text, m)) for cid, text, m in db.execute(query, part))
        return [found.get(cid) for cid in ids]

    def restore(self, ids: Sequence[str], rows: Sequence[tuple[str, str | None] | None]) -> None:
        """Put back what `rows` returned for these ids (None: no row)."""
        with self._connection() as db, db:
            pairs = list(zip(ids, rows, strict=True))
            db.executemany("DELETE FROM texts WHERE id = ?", ((c,) for c, r in pairs if r is None))
            db.executemany(
                "INSERT OR REPLACE INTO texts (id, text, meta) VALUES (?, ?, ?)",
                ((c, *r) for c, r in pairs if r is not None),
            )
            drop_facets(db, [c for c, r in pairs if r is None])
            kept = [(c, r) for c, r in pairs if r is not None and c.endswith(FIRST)]
            keep_facets(
                db,
                [c for c, _ in kept],
                [None if m is None else json.loads(m) for _, (_, m) in kept],
            )

    def delete(self, ids: Sequence[str]) -> None:
        with self._connection() as db, db:
            db.executemany("DELETE FROM texts WHERE id = ?", ((cid,) for cid in ids))
            drop_facets(db, ids)

    def facets_complete(self) -> bool:
        """Whether every paper's facets are kept here (see the module)."""
        with self._connection() as db:
            with contextlib.suppress(sqlite3.Error):
                (version,) = db.execute("PRAGMA user_version").fetchone()
                tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'facets'")
                return version == FACETS_COMPLETE and tables.fetchone() is not None
            return False

    def mark_facets_complete(self) -> None:
        """Every paper's facets were written (a whole build filled them in)."""
        with self._connection() as db, db:
            db.execute(f"PRAGMA user_version = {FACETS_COMPLETE}")

    def admitted(self, filters: Filter, limit: int | None = None) -> set[str] | None:
        """Ids of the papers `filters` admits (at most `limit`), read from the facets with the
        rules of `Filter.matches`; None when the facets are not complete or cannot be read
        (Chroma's metadata then answers)."""
        query, values = facets_query(filters, limit)
        try:
            if not self.facets_complete():
                return None
            with self._connection() as db:
                return {paper for (paper,) in db.execute(query, values)}
        except sqlite3.Error:
            return None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
                with contextlib.suppress(sqlite3.Error):  # read-only, or no table yet
                    tables = self._db.execute("SELECT name FROM sqlite_master").fetchall()
                    if ("texts",) in tables:
                        with self._db:
                            self._add_meta_column(self._db)
                            self._db.execute(FACETS)  # empty, and not complete, until filled
                with contextlib.suppress(sqlite3.Error):
                    self._meta = "meta" if self._has_meta_column(self._db) else "NULL"
            yield self._db

    def _has_meta_column(self, db: sqlite3.Connection) -> bool:
        return any(row[1] == "meta" for row in db.execute("PRAGMA table_info(texts)"))

    def _add_meta_column(self, db: sqlite3.Connection) -> None:
        """A file written before metadata was kept gains the column (its rows: NULL)."""
        if not self._has_meta_column(db):
            db.execute("ALTER TABLE texts ADD COLUMN meta TEXT")

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


def keep_facets(
    db: sqlite3.Connection, ids: Sequence[str], metadatas: Sequence[dict[str, Any] | None]
) -> None:
    """The facets of the papers whose first chunks these are; one without metadata has none,
    and the file's facets are then no longer complete."""
    rows, lacking = [], []
    for cid, meta in zip(ids, metadatas, strict=True):
        if cid.endswith(FIRST):
            if meta is None:
                lacking.append(cid)
            else:
                rows.append((cid[: -len(FIRST)], *facets_of(meta)))
    db.executemany("INSERT OR REPLACE INTO facets VALUES (?, ?, ?, ?)", rows)
    if lacking:
        drop_facets(db, lacking)
        db.execute("PRAGMA user_version = 0")


def drop_facets(db: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Remove the facets of the papers whose first chunks these are (other ids: nothing)."""
    db.executemany(
        "DELETE FROM facets WHERE paper_id = ?",
        ((cid[: -len(FIRST)],) for cid in ids if cid.endswith(FIRST)),
    )


def facets_query(filters: Filter, limit: int | None) -> tuple[str, list[Any]]:
    """The facets query for the papers `filters` admits, by the rules of `Filter.matches`."""
    clauses, values = [], []
    if filters.since:
        clauses.append("date_num >= ?")
        values.append(date_number(filters.since))
    folded = [c.casefold() for c in filters.categories]
    for column, wanted in (("categories", folded), ("sources", list(filters.sources))):
        if wanted:
            clauses.append("(" + " OR ".join([f"instr({column}, ?) > 0"] * len(wanted)) + ")")
            values.extend(f"{SEP}{value}{SEP}" for value in wanted)
    query = "SELECT paper_id FROM facets"
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    return query, values


def facets_of(meta: dict[str, Any]) -> tuple[int, str, str]:
    """(date number, categories, sources) as the facets table keeps them: categories
    case-folded (`Filter.matches` compares them so), each value between `SEP`s."""
    categories = [str(c).casefold() for c in meta.get("categories") or ()]
    sources = [str(s) for s in meta.get("sources") or ()]
    return (
        int(meta.get("date_num") or 0),
        SEP + SEP.join(categories) + SEP,
        SEP + SEP.join(sources) + SEP,
    )


def _dumps(metadata: dict[str, Any] | None) -> str | None:
    if metadata is None:
        return None
    return json.dumps({k: v for k, v in metadata.items() if v is not None}, ensure_ascii=False)
