"""The Chroma collection of chunks: opening and checking it, reading it page by page or by
paper, writing to it. Embedded collections keep their texts beside them (`rag.texts`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.chroma import CLIENTS, check_files, connect, failure, guarded, guarded_write
from rag.errors import IndexMismatchError, RagError
from rag.table import Hit
from rag.texts import ChunkTexts, texts_path

if TYPE_CHECKING:
    from rag.settings import Settings

SCHEMA_VERSION = 1
SCHEMA_KEY = "rag_schema"
GENERATION_KEY = "generation"
GET_PAGE = 10_000  # records per Chroma read of the whole collection
# Ids per read when nothing else is read: Chroma pages by offset, each page scanning the ones
# before it again (a million ids through a server: 121 s for the first 550,000 in pages of
# 10,000, 25 s in pages of 100,000, 7 s in one), and ids alone never hit its variable limit.
IDS_PAGE = 5_000_000

WRITING_KEY = "rag_writing"  # collection metadata: an ingest is writing (set at its first write)
CHUNKS_GUESSED = 4  # chunk ids asked for per paper at a time (most papers have 1-3 chunks)
FACTS_KEY = "rag_facts"  # collection metadata: what the filters can use, kept by each ingest
TEXTS_KEY = "rag_texts"  # collection metadata: "beside" when chunk texts are kept in `rag.texts`


class OpenedCollection:
    """The Chroma collection of chunks and the index settings recorded with it: finding,
    creating, opening and checking it.

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
        self._texts: ChunkTexts | None = None
        """Where its chunk texts are, when not in Chroma (set by `open()`)."""

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
            meta = {
                SCHEMA_KEY: SCHEMA_VERSION,
                "embed_model": self.embedder_name,
                "chunk_tokens": self.settings.chunk_tokens,
                "chunk_overlap": self.settings.chunk_overlap,
            }
            if self.embedded:  # a server's collection is read by other machines: texts in it
                _ = self.client  # Chroma's database first: a store directory without it is damaged
                ChunkTexts(texts_path(self.path, self.settings.collection)).create()
                meta[TEXTS_KEY] = "beside"
            self.client.create_collection(
                self.settings.collection,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata=meta,
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
                saved = None if meta.get(WRITING_KEY) else saved_count(meta, generation)
                stamp = (generation, saved if saved is not None else int(col.count()))
                if CLIENTS.outdated(self.path, stamp, self._epoch):
                    CLIENTS.reopen(self.path, self._epoch)
                    return self.open()
            self._open_texts(meta.get(TEXTS_KEY) == "beside")
            self._collection = col
        return self._collection

    def _open_texts(self, beside: bool) -> None:
        """Find the texts file anew at each opening of the collection (the store may have
        been moved aside and rebuilt meanwhile)."""
        if self._texts is not None:
            self._texts.close()
            self._texts = None
        if beside and not self.embedded:
            raise RagError(
                f"collection {self.settings.collection!r} in {self.location} was built as an "
                "embedded index, whose chunk texts live in a file beside it, not in the "
                "server: ingest into the server to build an index it can serve"
            )
        if beside:
            self._texts = ChunkTexts(texts_path(self.path, self.settings.collection))
            self._texts.check()

    @property
    def texts(self) -> ChunkTexts | None:
        """The chunk texts kept beside the collection (None: they are in Chroma)."""
        self.open()
        return self._texts


class Collection(OpenedCollection):
    """The chunks of the collection and the facts kept with them: reading them page by page
    or by paper, writing them."""

    def get(self, include: list[str], **kwargs: Any) -> dict[str, Any]:
        """Chroma's `get`, the texts read from beside the collection when they are kept there
        (a record whose text is gone, deleted by an ingest since Chroma answered, is left
        out)."""
        texts = self.texts if "documents" in include else None
        if texts is None:
            return self.open().get(include=include, **kwargs)
        got = self.open().get(include=[name for name in include if name != "documents"], **kwargs)
        got["documents"] = texts.get(got["ids"])
        return with_texts(got)

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
        32,000 records with their metadata fails inside Chroma ("too many SQL variables")."""
        offset, size = 0, GET_PAGE if include else IDS_PAGE
        while True:
            try:  # a generator is read outside any `guarded` method: its failures too are one line
                page = self.get(include, where=where, limit=size, offset=offset)
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
        the last one asked exists, and, when metadata is read, up to the `n_chunks` each chunk
        found names (an ingest killed mid-paper can leave its chunks with gaps between them:
        they name their version's count)."""
        got: dict[str, list[Any]] = {"ids": [], **{name: [] for name in include}}
        asked = [chunk_id(pid, i) for pid in paper_ids for i in range(CHUNKS_GUESSED)]
        seen = set(asked)
        while asked:
            page = self.get(include, ids=asked)
            for name in got:
                got[name].extend(page[name])
            wanted = [
                chunk_id(paper_of(cid), i)
                for cid in page["ids"]
                if (last := chunk_number(cid)) % CHUNKS_GUESSED == CHUNKS_GUESSED - 1
                for i in range(last + 1, last + 1 + CHUNKS_GUESSED)
            ]
            wanted += [
                chunk_id(meta["paper_id"], i)
                for meta in (page["metadatas"] if "metadatas" in include else [])
                for i in range(int(meta.get("n_chunks", 1)))
            ]
            asked = [cid for cid in dict.fromkeys(wanted) if cid not in seen]
            seen.update(asked)
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
        beside = self.texts
        if beside is None:
            self.open().upsert(ids=ids, embeddings=vectors, documents=texts, metadatas=metadatas)
            return
        # Texts first (a text whose vector is not written yet is never read); the ones they
        # replace are put back if Chroma's write fails, so a failed write changes nothing.
        before = beside.rows(ids)
        beside.put(ids, texts, metadatas)
        try:
            self.open().upsert(ids=ids, embeddings=vectors, metadatas=metadatas)
        except BaseException:
            with contextlib.suppress(Exception):
                beside.restore(ids, before)
            raise

    @guarded_write
    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Set these chunks' whole metadata (a key set to None is deleted): the copy beside
        first, put back if Chroma's write fails, as in `write`."""
        self._mark_written()
        beside = self.texts
        before = beside.rows(ids) if beside is not None else None
        if beside is not None:
            beside.put_metadata(ids, metadatas)
        try:
            self.open().update(ids=ids, metadatas=metadatas)
        except BaseException:
            if beside is not None and before is not None:
                with contextlib.suppress(Exception):
                    beside.restore(ids, before)
            raise

    @guarded_write
    def delete(self, ids: list[str]) -> None:
        self._mark_written()
        self.open().delete(ids=ids)
        if self.texts is not None:
            self.texts.delete(ids)


def chunk_id(paper_id: str, i: int) -> str:
    """The id of a paper's `i`th chunk."""
    return f"{paper_id}#{i}"


def paper_of(chunk_id: str) -> str:
    """The paper a chunk id belongs to."""
    return chunk_id.rpartition("#")[0]


def chunk_number(chunk_id: str) -> int:
    """A chunk's place in its paper, from its id."""
    return int(chunk_id.rpartition("#")[2])


def with_texts(got: dict[str, Any]) -> dict[str, Any]:
    """A read's records that have a text (`documents` None: deleted since Chroma answered)."""
    keep = [i for i, text in enumerate(got["documents"]) if text is not None]
    if len(keep) == len(got["ids"]):
        return got
    records = ("ids", "documents", "metadatas", "embeddings", "distances")
    return {
        name: [values[i] for i in keep] if name in records and values is not None else values
        for name, values in got.items()
    }


def saved_count(meta: dict[str, Any], generation: int) -> int | None:
    """The chunk count the last ingest saved with its facts, if of this generation."""
    try:
        saved = json.loads(meta.get(FACTS_KEY) or "null")
        return int(saved["chunks"]) if saved["generation"] == generation else None
    except (ValueError, KeyError, TypeError):
        return None


def hits_of(found: dict[str, list[Any]]) -> Iterator[Hit]:
    """Records of a Chroma read (ids, documents, metadatas) as hits scored 0."""
    for cid, doc, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True):
        yield Hit(cid, 0.0, doc, meta)
