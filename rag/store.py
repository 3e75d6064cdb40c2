"""Chunks with vectors and metadata <-> the Chroma collection (the only module importing chromadb).

`Store` opens the collection (embedded under `RAG_INDEX_DIR`, or a Chroma server), checks that
it was built by this tool with the configured model, writes chunks, and answers reads, from
the exact in-memory table (`rag.table`) when the collection is small enough, else from Chroma.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.corpus import Listing, Paper
from rag.errors import IndexMismatchError, RagError
from rag.filters import Filter, date_number
from rag.table import ChunkTable, Hit

if TYPE_CHECKING:
    from rag.settings import Settings

SCHEMA_VERSION = 1
SCHEMA_KEY = "rag_schema"
GENERATION_KEY = "generation"
GET_PAGE = 10_000  # records per Chroma read of the whole collection

PAPER_KEYS_OPTIONAL = ("sources", "dates", "arxiv_id", "categories", "date", "date_num")
"""Paper-level metadata keys that are absent when empty (an update must remove them)."""


def paper_metadata(paper: Paper) -> dict[str, Any]:
    """What every chunk of `paper` records of it, besides its own place and hash."""
    meta: dict[str, Any] = {
        "paper_id": paper.paper_id,
        "title": paper.title,
        **listing_metadata(paper.listings),
        **{f"meta_{k}": v for k, v in paper.meta.items()},
    }
    if paper.arxiv_id:
        meta["arxiv_id"] = paper.arxiv_id
    if paper.categories:
        meta["categories"] = list(paper.categories)
    if paper.date:
        meta["date"] = paper.date
        meta["date_num"] = date_number(paper.date)
    return meta


def listing_metadata(listings: Sequence[Listing]) -> dict[str, Any]:
    """Listing pages and dates as Chroma metadata (lists are omitted when empty)."""
    meta: dict[str, Any] = {"listings": json.dumps([[x.source, x.date] for x in listings])}
    sources = sorted({x.source for x in listings})
    dates = sorted({x.date for x in listings if x.date})
    if sources:
        meta["sources"] = sources
    if dates:
        meta["dates"] = dates
    return meta


def listings_from_metadata(meta: dict[str, Any]) -> tuple[Listing, ...]:
    return tuple(Listing(source, date) for source, date in json.loads(meta.get("listings", "[]")))


class Collection:
    """The Chroma collection of chunks and the index settings recorded with it: opening and
    checking it, reading it page by page, writing to it.

    `embedder_name` is the model whose vectors will be written or queried: opening a collection
    built by another model is an `IndexMismatchError`, never a silent mix of vector spaces.
    """

    def __init__(self, settings: Settings, embedder_name: str) -> None:
        self.settings = settings
        self.embedder_name = embedder_name
        self.path = settings.index_dir / "chroma"
        self.written = False
        """True once this object has written anything."""
        self._client: Any = None
        self._collection: Any = None
        """The checked collection, once `open()` found it."""

    @property
    def location(self) -> str:
        """Where the collection lives, for messages: a server URL or the local directory."""
        if self.settings.chroma_host:
            return f"the Chroma server at {self.settings.chroma_url()}"
        return str(self.settings.index_dir)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect(self.settings, self.path)
        return self._client

    def exists(self) -> bool:
        """True when the collection exists (creates nothing)."""
        if not self.settings.chroma_host and not (self.path / "chroma.sqlite3").exists():
            return False
        return self.settings.collection in {c.name for c in self.client.list_collections()}

    def create(self) -> None:
        """Create the collection if it does not exist yet."""
        if not self.exists():
            self.client.create_collection(
                self.settings.collection,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={
                    SCHEMA_KEY: SCHEMA_VERSION,
                    "embed_model": self.embedder_name,
                    "chunk_tokens": self.settings.chunk_tokens,
                    "chunk_overlap": self.settings.chunk_overlap,
                },
            )
            self._collection = None

    def open(self) -> Any:
        """The collection, checked once: it exists, this tool built it, with this model."""
        if self._collection is None:
            name = self.settings.collection
            if not self.exists():
                raise RagError(f"no index at {self.location}: run `rag ingest` first")
            col = self.client.get_collection(name, embedding_function=None)
            meta = col.metadata or {}
            if meta.get(SCHEMA_KEY) != SCHEMA_VERSION:
                raise IndexMismatchError(
                    f"collection {name!r} in {self.location} was not built by this tool "
                    "(or by an incompatible version); point RAG_INDEX_DIR at a new directory "
                    "and run `rag ingest` to build a fresh index"
                )
            if meta.get("embed_model") != self.embedder_name:
                raise IndexMismatchError(
                    f"the index was built with embedding model {meta.get('embed_model')!r} but "
                    f"{self.embedder_name!r} is configured; set RAG_EMBED_MODEL="
                    f"{meta.get('embed_model')} or point RAG_INDEX_DIR at a new directory and "
                    "run `rag ingest`"
                )
            self._collection = col
        return self._collection

    def count(self) -> int:
        """Number of chunks."""
        return int(self.open().count())

    def paper_count(self) -> int:
        """Number of papers: their first chunks, counted by id only (no texts or metadata are
        loaded, so it stays cheap for a collection of millions of chunks)."""
        return sum(len(page["ids"]) for page in self._pages(include=[], where={"chunk": 0}))

    def _pages(self, include: list[str], where: dict[str, Any] | None = None) -> Iterator[Any]:
        """`get` over the whole collection in pages: one unbounded get of more than about
        32,000 records fails inside Chroma ("too many SQL variables")."""
        offset = 0
        while True:
            page = self.open().get(where=where, include=include, limit=GET_PAGE, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def _get(self, where: dict[str, Any] | None, include: list[str]) -> dict[str, list[Any]]:
        """Every record `where` selects (ids and `include`), gathered page by page."""
        got: dict[str, list[Any]] = {"ids": [], **{name: [] for name in include}}
        for page in self._pages(include, where):
            for name in got:
                got[name].extend(page[name])
        return got

    # --- writes ----------------------------------------------------------------------------

    def chunk_states(self, paper_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Metadata (with `id`) of every stored chunk of these papers, by paper id."""
        found = self.open().get(where={"paper_id": {"$in": paper_ids}}, include=["metadatas"])
        states: dict[str, list[dict[str, Any]]] = {}
        for chunk_id, meta in zip(found["ids"], found["metadatas"], strict=True):
            states.setdefault(meta["paper_id"], []).append({"id": chunk_id, **meta})
        return states

    def bump_generation(self) -> None:
        """Mark the collection as changed (before and after an ingest that writes)."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        meta = dict(col.metadata or {})
        meta[GENERATION_KEY] = int(meta.get(GENERATION_KEY, 0)) + 1
        col.modify(metadata=meta)

    def _mark_written(self) -> None:
        # Bumped before the first write, so that even a killed ingest leaves a new generation.
        if not self.written:
            self.written = True
            self.bump_generation()

    def write(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict[str, Any]]
    ) -> None:
        """Add or replace these chunks."""
        self._mark_written()
        self.open().upsert(ids=ids, embeddings=vectors, documents=texts, metadatas=metadatas)

    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        self._mark_written()
        self.open().update(ids=ids, metadatas=metadatas)

    def delete(self, ids: list[str]) -> None:
        self._mark_written()
        self.open().delete(ids=ids)


class Store(Collection):
    """The collection as searches read it: one consistent view per search (`one_view`), and
    every read answered from the exact in-memory table (`rag.table`) when the collection has
    at most `RAG_EXACT_SEARCH_MAX` chunks, else from Chroma."""

    def __init__(self, settings: Settings, embedder_name: str) -> None:
        super().__init__(settings, embedder_name)
        self._table: ChunkTable | None = None
        self._local = threading.local()
        self._table_lock = threading.Lock()

    def stamp(self) -> tuple[int, int]:
        """(generation, chunk count): changes whenever an ingest changes the collection, so
        indexes derived from it (BM25, the in-memory table) know when to rebuild. Reading it
        costs about 1.5 ms; inside `one_view()` the first reading serves the whole block."""
        pinned = getattr(self._local, "stamp", None)
        if pinned is not None:
            return pinned
        meta = self.client.get_collection(self.settings.collection).metadata or {}
        return int(meta.get(GENERATION_KEY, 0)), self.count()

    @contextlib.contextmanager
    def one_view(self) -> Iterator[None]:
        """One search sees one state of the collection, read once (per thread)."""
        if getattr(self._local, "stamp", None) is not None:
            yield  # nested: the outer block's view holds
            return
        self._local.stamp = self.stamp()
        try:
            yield
        finally:
            self._local.stamp = None

    def table(self, stamp: tuple[int, int] | None = None) -> ChunkTable | None:
        """The in-memory copy of the collection, current as of `stamp` (read when not given);
        None when the collection is larger than `RAG_EXACT_SEARCH_MAX` chunks."""
        stamp = stamp or self.stamp()
        if stamp[1] > self.settings.exact_search_max:
            return None
        with self._table_lock:
            if self._table is None or self._table.stamp != stamp:
                got = self._get(None, ["embeddings", "documents", "metadatas"])
                self._table = ChunkTable.build(stamp, got)
            return self._table

    def paper_chunks(self, paper_ids: Sequence[str]) -> dict[str, list[Hit]]:
        """Every chunk of these papers (text and metadata), in order, by paper id."""
        if not paper_ids:
            return {}
        table = self.table()
        if table is not None:
            rows_of = table.rows_of
            return {
                pid: [table.hit(r) for r in rows_of[pid]] for pid in paper_ids if pid in rows_of
            }
        found = self._get({"paper_id": {"$in": list(paper_ids)}}, ["documents", "metadatas"])
        parts: dict[str, list[Hit]] = {}
        for hit in _hits(found):
            parts.setdefault(hit.metadata["paper_id"], []).append(hit)
        return {pid: sorted(p, key=lambda h: h.metadata["chunk"]) for pid, p in parts.items()}

    def best_cosines(self, paper_ids: Sequence[str], vector: np.ndarray) -> dict[str, float]:
        """Each paper's best chunk cosine similarity to `vector` (vectors are unit length)."""
        if not paper_ids:
            return {}
        vector = np.asarray(vector, dtype=np.float32)
        table = self.table()
        if table is not None:
            rows_of = table.rows_of
            return {
                pid: float((table.matrix[rows_of[pid]] @ vector).max())
                for pid in paper_ids
                if pid in rows_of
            }
        found = self._get({"paper_id": {"$in": list(paper_ids)}}, ["embeddings", "metadatas"])
        best: dict[str, float] = {}
        sims = np.asarray(found["embeddings"], dtype=np.float32).reshape(-1, len(vector)) @ vector
        for sim, meta in zip(sims.tolist(), found["metadatas"], strict=True):
            best[meta["paper_id"]] = max(sim, best.get(meta["paper_id"], -1.0))
        return best

    def query(self, vector: np.ndarray, n: int, filters: Filter | None = None) -> list[Hit]:
        """The `n` chunks nearest to `vector` among those `filters` admits, best first."""
        table = self.table()
        if table is not None:
            return table.nearest(vector, n, filters)
        n = min(n, self.count())
        if n <= 0:
            return []
        res = self.open().query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            where=filters.where() if filters else None,
            include=["documents", "metadatas", "distances"],
        )
        found = {key: res[key][0] for key in ("ids", "documents", "metadatas", "distances")}
        return [
            Hit(hit.chunk_id, 1.0 - float(dist), hit.text, hit.metadata)
            for hit, dist in zip(_hits(found), found["distances"], strict=True)
        ]

    def admitted_papers(self, filters: Filter) -> set[str]:
        """Ids of the papers `filters` admits (for rankings made outside Chroma: BM25)."""
        table = self.table()
        if table is not None:
            return {table.metas[r]["paper_id"] for r in np.flatnonzero(table.mask(filters))}
        where = {"$and": [{"chunk": 0}, filters.where()]} if filters else {"chunk": 0}
        return {meta["paper_id"] for meta in self._get(where, ["metadatas"])["metadatas"]}

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of these chunks, by chunk id."""
        if not ids:
            return {}
        table = self.table()
        if table is not None:
            rows = {cid: table.row(cid) for cid in ids}
            return {cid: table.matrix[row] for cid, row in rows.items() if row is not None}
        got = self.open().get(ids=ids, include=["embeddings"])
        return {
            cid: np.asarray(v, dtype=np.float32)
            for cid, v in zip(got["ids"], got["embeddings"], strict=True)
        }

    def all_chunks(self) -> list[Hit]:
        """Every chunk (text and metadata), for lexical indexes built beside the vectors."""
        table = self.table()
        if table is not None:
            return [table.hit(r) for r in range(len(table.ids))]
        return list(_hits(self._get(None, ["documents", "metadatas"])))


def _hits(found: dict[str, list[Any]]) -> Iterator[Hit]:
    """Records of a Chroma read (ids, documents, metadatas) as hits scored 0."""
    for cid, doc, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True):
        yield Hit(cid, 0.0, doc, meta)


# --- opening a client ----------------------------------------------------------------------


def connect(settings: Settings, path: Path) -> Any:
    """A Chroma client: of the server `settings` names, else of the embedded store at `path`."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if settings.chroma_host:
        return _http_client(settings, chromadb, ChromaSettings)
    database = path / "chroma.sqlite3"
    if _foreign_database(database):
        # Chroma would add its tables to any SQLite file it is pointed at: refuse instead.
        raise IndexMismatchError(
            f"{database} is not a Chroma index (it holds another program's tables); "
            "point RAG_INDEX_DIR at a new directory and run `rag ingest` to build an index"
        )
    try:
        return chromadb.PersistentClient(
            path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
        )
    except Exception as exc:  # chromadb raises bare exceptions for a damaged store
        raise RagError(
            f"cannot open the index at {path} ({exc.__class__.__name__}: {exc}); "
            "move it aside and run `rag ingest` to rebuild it"
        ) from None


def _http_client(settings: Settings, chromadb: Any, chroma_settings: Any) -> Any:
    """A client of a Chroma server (`chroma run`, or a team's deployment): the same API as the
    embedded store, so every method of `Store` serves both."""
    options: dict[str, Any] = {"anonymized_telemetry": False}
    token = settings.chroma_auth_token
    if token is not None:
        options["chroma_client_auth_provider"] = "chromadb.auth.token_authn.TokenAuthClientProvider"
        options["chroma_client_auth_credentials"] = token.get_secret_value()
    try:
        return chromadb.HttpClient(
            host=settings.chroma_host,
            port=settings.chroma_port,
            ssl=settings.chroma_ssl,
            settings=chroma_settings(**options),
        )
    except Exception as exc:  # ValueError when down; auth and HTTP errors vary by version
        raise RagError(
            f"cannot reach the Chroma server at {settings.chroma_url()} ({_one_line(exc)}); "
            f"start it (`chroma run --path DIR --port {settings.chroma_port}`) or unset "
            f"RAG_CHROMA_HOST to use {settings.index_dir / 'chroma'}"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _foreign_database(path: Path) -> bool:
    """True when `path` is an SQLite database that has tables but not Chroma's (read-only)."""
    import sqlite3

    if not path.is_file():
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return False  # not a database at all: Chroma's own error says so
    return bool(tables) and not {"collections", "migrations"} <= tables
