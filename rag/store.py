"""Chunks with vectors and metadata <-> the Chroma collection.

`Store` opens the collection (embedded under `RAG_INDEX_DIR`, or a Chroma server), checks that
it was built by this tool with the configured model, writes chunks, and answers reads, from
the exact in-memory table (`rag.table`) when the collection is small enough, else from Chroma.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.chroma import CLIENTS, check_files, connect, failure, guarded, guarded_write
from rag.errors import IndexMismatchError, RagError
from rag.filters import Filter
from rag.table import ChunkTable, Hit

if TYPE_CHECKING:
    from rag.settings import Settings

SCHEMA_VERSION = 1
SCHEMA_KEY = "rag_schema"
GENERATION_KEY = "generation"
GET_PAGE = 10_000  # records per Chroma read of the whole collection

WRITING_KEY = "rag_writing"  # collection metadata: an ingest is writing (set at its first write)
CHUNKS_GUESSED = 4  # chunk ids asked for per paper at a time (most papers have 1-3 chunks)
FACTS_KEY = "rag_facts"  # collection metadata: what the filters can use, kept by each ingest


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
        """The client of a Chroma server (an embedded store's client is shared: `CLIENTS`)."""
        self._epoch = -1
        """Which opening of the shared client `_collection` comes from."""
        self._collection: Any = None
        """The checked collection, once `open()` found it."""

    @property
    def location(self) -> str:
        """Where the collection lives, for messages: a server URL or the local directory."""
        if self.settings.chroma_host:
            return f"the Chroma server at {self.settings.chroma_url()}"
        return str(self.settings.index_dir)

    @property
    def embedded(self) -> bool:
        return not self.settings.chroma_host

    @property
    def client(self) -> Any:
        if not self.embedded:
            if self._client is None:
                self._client = connect(self.settings, self.path)
            return self._client
        client, epoch = CLIENTS.get(self.settings, self.path)
        if epoch != self._epoch:  # reopened: handles from the old client are gone
            self._epoch, self._collection = epoch, None
        return client

    @guarded
    def exists(self) -> bool:
        """True when the collection exists (creates nothing); a store directory that is
        damaged (its database missing, empty or overwritten) is an error, never 'missing'."""
        if self.embedded:
            check_files(self.path)
            if not (self.path / "chroma.sqlite3").exists():
                return False
        return self.settings.collection in {c.name for c in self.client.list_collections()}

    @guarded_write
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

    @guarded
    def open(self) -> Any:
        """The collection, checked once: it exists, this tool built it, with this model. An
        embedded store another process has changed since this process last read it is reopened
        first."""
        if self._collection is not None and self.embedded:
            _ = self.client  # a reopened shared client drops the handle of the old one
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
            if self.embedded and CLIENTS.has_read(self.path):
                # This process read the store before: another may have changed it since.
                generation = int(meta.get(GENERATION_KEY, 0))
                saved = None if meta.get(WRITING_KEY) else _saved_count(meta, generation)
                stamp = (generation, saved if saved is not None else int(col.count()))
                if CLIENTS.outdated(self.path, stamp, self._epoch):
                    CLIENTS.reopen(self.path, self._epoch)
                    return self.open()
            self._collection = col
        return self._collection

    @guarded
    def count(self) -> int:
        """Number of chunks."""
        return int(self.open().count())

    @guarded
    def paper_count(self) -> int:
        """Number of papers: as the last ingest counted them (its saved facts, when no write
        came after), else their first chunks counted by id (paged reads with a filter: at
        250,000 papers, minutes)."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        meta = col.metadata or {}
        try:
            saved = json.loads(meta.get(FACTS_KEY) or "null")
            if saved and saved["generation"] == int(meta.get(GENERATION_KEY, 0)):
                return int(saved["papers"])
        except (ValueError, KeyError, TypeError):
            pass
        return sum(len(page["ids"]) for page in self._pages(include=[], where={"chunk": 0}))

    def _pages(self, include: list[str], where: dict[str, Any] | None = None) -> Iterator[Any]:
        """`get` over the whole collection in pages: one unbounded get of more than about
        32,000 records fails inside Chroma ("too many SQL variables")."""
        offset = 0
        while True:
            try:  # a generator is read outside any `guarded` method: its failures too are one line
                page = self.open().get(where=where, include=include, limit=GET_PAGE, offset=offset)
            except RagError:
                raise
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                raise failure(exc, self.location) from None
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

    def _by_paper(self, paper_ids: Sequence[str], include: list[str]) -> dict[str, list[Any]]:
        """Every chunk of these papers, looked up by chunk id (`PAPER#0`, `PAPER#1`, ... as
        `rag.ingest` names them: a key lookup, where a `paper_id` filter over 600,000 chunks
        took Chroma 200 ms): `CHUNKS_GUESSED` ids of each paper at a time, the next ones while
        the last one asked exists. Chunks that an interrupted re-chunk left behind continue
        the run of ids, so they are found too. No metadata is read unless `include` asks."""
        got: dict[str, list[Any]] = {"ids": [], **{name: [] for name in include}}
        start = dict.fromkeys(paper_ids, 0)
        while start:
            asked = [chunk_id(p, i) for p, s in start.items() for i in range(s, s + CHUNKS_GUESSED)]
            page = self.open().get(ids=asked, include=include)
            for name in got:
                got[name].extend(page[name])
            found = set(page["ids"])
            start = {
                p: s + CHUNKS_GUESSED
                for p, s in start.items()
                if chunk_id(p, s + CHUNKS_GUESSED - 1) in found
            }
        return got

    @guarded
    def chunk_states(self, paper_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Metadata (with `id`) of every stored chunk of these papers, by paper id."""
        found = self._by_paper(paper_ids, ["metadatas"])
        states: dict[str, list[dict[str, Any]]] = {}
        for chunk_id, meta in zip(found["ids"], found["metadatas"], strict=True):
            states.setdefault(meta["paper_id"], []).append({"id": chunk_id, **meta})
        return states

    @guarded_write
    def bump_generation(self, writing: bool | None = None) -> None:
        """Mark the collection as changed (before and after an ingest that writes); `writing`
        says whether the ingest is writing from now on (so readers count its chunks anew)."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        meta = dict(col.metadata or {})
        meta[GENERATION_KEY] = int(meta.get(GENERATION_KEY, 0)) + 1
        if writing is not None:
            meta[WRITING_KEY] = writing
        col.modify(metadata=meta)
        if self.embedded:
            CLIENTS.wrote(self.path, meta[GENERATION_KEY])

    @guarded
    def facts(self) -> dict[str, Any] | None:
        """What the filters can use (`CollectionFacts` as JSON), as the last ingest saved it."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        saved = (col.metadata or {}).get(FACTS_KEY)
        try:
            return json.loads(saved) if saved else None
        except ValueError:
            return None

    @guarded_write
    def save_facts(self, facts: dict[str, Any]) -> None:
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        col.modify(metadata={**(col.metadata or {}), FACTS_KEY: json.dumps(facts)})

    def first_chunk_metadata(self) -> Iterator[dict[str, Any]]:
        """Each paper's first chunk's metadata, a page at a time."""
        for page in self._pages(["metadatas"], {"chunk": 0}):
            yield from page["metadatas"]

    def _mark_written(self) -> None:
        # Bumped before the first write, so that even a killed ingest leaves a new generation.
        if not self.written:
            self.written = True
            self.bump_generation(writing=True)

    @guarded_write
    def write(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict[str, Any]]
    ) -> None:
        """Add or replace these chunks."""
        self._mark_written()
        self.open().upsert(ids=ids, embeddings=vectors, documents=texts, metadatas=metadatas)

    @guarded_write
    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        self._mark_written()
        self.open().update(ids=ids, metadatas=metadatas)

    @guarded_write
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
        self._counted: tuple[int, int] | None = None  # the stamp of a generation no one writes
        self._local = threading.local()
        self._table_lock = threading.Lock()

    @guarded
    def stamp(self) -> tuple[int, int]:
        """(generation, chunk count): changes whenever an ingest changes the collection, so
        indexes derived from it (BM25, the in-memory table) know when to rebuild. Reading it
        costs about 1.5 ms; inside `one_view()` the first reading serves the whole block."""
        pinned = getattr(self._local, "stamp", None)
        return pinned if pinned is not None else self._stamp_now()

    def _stamp_now(self) -> tuple[int, int]:
        """Counting a million chunks takes Chroma 40 ms warm, seconds cold: the count of a
        generation that no ingest is writing cannot change, so it is counted once."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        meta = col.metadata or {}
        generation, writing = int(meta.get(GENERATION_KEY, 0)), bool(meta.get(WRITING_KEY))
        counted = self._counted
        if counted is not None and counted[0] == generation and not writing:
            return counted
        saved = _saved_count(meta, generation) if not writing else None
        stamp = (generation, saved if saved is not None else self.count())
        self._counted = None if writing else stamp
        return stamp

    @contextlib.contextmanager
    def one_view(self) -> Iterator[None]:
        """One search sees one state of the collection, read once (per thread). An embedded
        store another process has changed since is reopened first (see `SharedClients`)."""
        if getattr(self._local, "stamp", None) is not None:
            yield  # nested: the outer block's view holds
            return
        stamp = self.stamp()
        if self.embedded and CLIENTS.outdated(self.path, stamp, self._epoch):
            CLIENTS.reopen(self.path, self._epoch)
            stamp = self.stamp()
        with CLIENTS.reading(self.path) if self.embedded else contextlib.nullcontext():
            self._local.stamp = stamp
            try:
                yield
            finally:
                self._local.stamp = None

    @guarded
    def table(self, stamp: tuple[int, int] | None = None) -> ChunkTable | None:
        """The in-memory copy of the collection, current as of `stamp` (read when not given);
        None when the collection is larger than `RAG_EXACT_SEARCH_MAX` chunks."""
        # Read as a search (`one_view`): a reopen waits for the build instead of the build,
        # holding the lock other searches wait on, waiting for the reopen.
        with self.one_view():
            stamp = stamp or self.stamp()
            if stamp[1] > self.settings.exact_search_max:
                return None
            with self._table_lock:
                if self._table is None or self._table.stamp != stamp:
                    saved = self.settings.index_dir / "table" / self.settings.collection
                    self._table = ChunkTable.load(saved, stamp)
                    if self._table is None:
                        got = self._get(None, ["embeddings", "documents", "metadatas"])
                        self._table = ChunkTable.build(stamp, got)
                        if self._stamp_now() == stamp:  # not changed while it was read
                            self._table.save(saved)
                return self._table

    @guarded
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
        found = self._by_paper(paper_ids, ["documents", "metadatas"])
        parts: dict[str, list[Hit]] = {}
        for hit in _hits(found):
            parts.setdefault(hit.metadata["paper_id"], []).append(hit)
        return {pid: sorted(p, key=lambda h: h.metadata["chunk"]) for pid, p in parts.items()}

    @guarded
    def chunk_cosines(
        self, paper_ids: Sequence[str], vector: np.ndarray
    ) -> dict[str, dict[str, float]]:
        """Each chunk's cosine similarity to `vector` (vectors are unit length), by paper id
        then chunk id. Only vectors are read: no text, no metadata."""
        if not paper_ids:
            return {}
        vector = np.asarray(vector, dtype=np.float32)
        table = self.table()
        if table is not None:
            rows_of = table.rows_of
            return {
                pid: {table.ids[r]: float(table.matrix[r] @ vector) for r in rows_of[pid]}
                for pid in paper_ids
                if pid in rows_of
            }
        found = self._by_paper(paper_ids, ["embeddings"])
        sims = np.asarray(found["embeddings"], dtype=np.float32).reshape(-1, len(vector)) @ vector
        cosines: dict[str, dict[str, float]] = {}
        for cid, sim in zip(found["ids"], sims.tolist(), strict=True):
            cosines.setdefault(paper_of(cid), {})[cid] = sim
        return cosines

    @guarded
    def query(
        self, vector: np.ndarray, n: int, filters: Filter | None = None, content: bool = True
    ) -> list[Hit]:
        """The `n` chunks nearest to `vector` among those `filters` admits, best first.
        `content=False` reads no texts and no metadata but the paper id (from the chunk id):
        in a large collection each is a random read in Chroma's SQLite file (200 chunks of
        590,000: 6 ms without, 0.4-1 s with)."""
        table = self.table()
        if table is not None:
            return table.nearest(vector, n, filters)
        n = min(n, self.stamp()[1])
        if n <= 0:
            return []
        res = self.open().query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            where=filters.where() if filters else None,
            include=["documents", "metadatas", "distances"] if content else ["distances"],
        )
        if not content:
            return [
                Hit(cid, 1.0 - float(dist), "", {"paper_id": paper_of(cid)})
                for cid, dist in zip(res["ids"][0], res["distances"][0], strict=True)
            ]
        found = {key: res[key][0] for key in ("ids", "documents", "metadatas", "distances")}
        return [
            Hit(hit.chunk_id, 1.0 - float(dist), hit.text, hit.metadata)
            for hit, dist in zip(_hits(found), found["distances"], strict=True)
        ]

    @guarded
    def admits_any(self, filters: Filter) -> bool:
        """Whether `filters` admit at least one chunk (one id is read, not every match)."""
        table = self.table()
        if table is not None:
            return bool(table.mask(filters).any())
        return bool(self.open().get(where=filters.where(), limit=1, include=[])["ids"])

    @guarded
    def admitted_papers(self, filters: Filter) -> set[str]:
        """Ids of the papers `filters` admits (for rankings made outside Chroma: BM25)."""
        table = self.table()
        if table is not None:
            return {table.metas[r]["paper_id"] for r in np.flatnonzero(table.mask(filters))}
        where = {"$and": [{"chunk": 0}, filters.where()]} if filters else {"chunk": 0}
        return {meta["paper_id"] for meta in self._get(where, ["metadatas"])["metadatas"]}

    @guarded
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

    def chunk_pages(self) -> Iterator[list[Hit]]:
        """Every chunk (text and metadata), a page at a time: what a lexical index built over
        millions of chunks reads without holding them all."""
        table = self.table()
        if table is not None:
            yield [table.hit(r) for r in range(len(table.ids))]
            return
        for page in self._pages(["documents", "metadatas"]):
            yield list(_hits(page))

    @guarded
    def all_chunks(self) -> list[Hit]:
        """Every chunk (text and metadata), for lexical indexes built beside the vectors."""
        table = self.table()
        if table is not None:
            return [table.hit(r) for r in range(len(table.ids))]
        return list(_hits(self._get(None, ["documents", "metadatas"])))


def chunk_id(paper_id: str, i: int) -> str:
    """The id of a paper's `i`th chunk."""
    return f"{paper_id}#{i}"


def paper_of(chunk_id: str) -> str:
    """The paper a chunk id belongs to."""
    return chunk_id.rpartition("#")[0]


def _saved_count(meta: dict[str, Any], generation: int) -> int | None:
    """The chunk count the last ingest saved with its facts, if of this generation."""
    try:
        saved = json.loads(meta.get(FACTS_KEY) or "null")
        return int(saved["chunks"]) if saved["generation"] == generation else None
    except (ValueError, KeyError, TypeError):
        return None


def _hits(found: dict[str, list[Any]]) -> Iterator[Hit]:
    """Records of a Chroma read (ids, documents, metadatas) as hits scored 0."""
    for cid, doc, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True):
        yield Hit(cid, 0.0, doc, meta)


# --- opening a client ----------------------------------------------------------------------
