"""Papers -> chunks -> embeddings -> the Chroma collection.

`Store` is the only code that touches `chromadb`. `ingest_papers` is incremental and idempotent:
each chunk carries its paper's content hash, so an unchanged paper is skipped without loading
the model, a changed one is re-embedded and its stale chunks deleted, and a paper whose chunks
were left half-written by an interrupted run is simply redone.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.corpus import FilePosition, Listing, Paper, sentence_spans
from rag.errors import IndexMismatchError, InputError, RagError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.embed import Embedder

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_KEY = "rag_schema"
GENERATION_KEY = "generation"
LOCK_NAME = ".ingest.lock"
PAPER_BATCH = 256  # papers compared with the index per round trip
WRITE_BATCH = 2048  # chunks per Chroma write (below its max batch size)
MASKS_KEPT = 64  # filters whose row masks the in-memory table keeps
PROGRESS_STEP = 64  # texts embedded between progress-bar updates
GET_PAGE = 10_000  # records per Chroma read of the whole collection


@dataclass(frozen=True)
class Chunk:
    """One embedded piece of a paper: `text` is the abstract part, the title is embedded too."""

    chunk_id: str
    paper: Paper
    index: int
    count: int
    text: str
    content_hash: str

    @property
    def embed_text(self) -> str:
        return f"{self.paper.title}\n{self.text}"

    def metadata(self) -> dict[str, Any]:
        return {
            "chunk": self.index,
            "n_chunks": self.count,
            "content_hash": self.content_hash,
            **paper_metadata(self.paper),
        }


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


PAPER_KEYS_OPTIONAL = ("sources", "dates", "arxiv_id", "categories", "date", "date_num")
"""Paper-level metadata keys that are absent when empty (an update must remove them)."""


def date_number(iso_date: str) -> int:
    """2024-01-15 -> 20240115: Chroma compares numbers, not strings."""
    return int(iso_date[:10].replace("-", ""))


@dataclass(frozen=True)
class Filter:
    """Which papers a search may return, or an ingest may keep: dated on or after `since`
    (YYYY-MM-DD), in any of `categories` (arXiv's, e.g. cs.LG), from any of `sources` (the
    file a paper was read from). Empty parts do not filter; the parts that are set must all
    hold. The same rules run as a Chroma `where` filter, over metadata in memory, and over
    papers being read."""

    since: str | None = None
    categories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.since or self.categories or self.sources)

    @classmethod
    def from_text(
        cls, since: str | None = None, categories: str | Sequence[str] | None = "",
        sources: Sequence[str] | None = (),
    ) -> Filter:  # fmt: skip
        """A filter from what a person typed: a date (blank: none), categories separated by
        spaces or commas; an `InputError` for a date that is not YYYY-MM-DD."""
        from datetime import date

        since = (since or "").strip() or None
        if since:
            try:
                since = date.fromisoformat(since).isoformat()
            except ValueError:
                raise InputError(f"{since!r} is not a date like 2024-01-31") from None
        if not isinstance(categories, str):
            categories = " ".join(categories or ())
        names = tuple(dict.fromkeys(categories.replace(",", " ").split()))
        kept = (s.strip() for s in sources or () if s and s.strip())
        return cls(since, names, tuple(dict.fromkeys(kept)))

    def where(self) -> dict[str, Any] | None:
        """The Chroma `where` filter (None when nothing is filtered)."""
        parts: list[dict[str, Any]] = []
        if self.since:
            parts.append({"date_num": {"$gte": date_number(self.since)}})
        for key, values in (("categories", self.categories), ("sources", self.sources)):
            alternatives = [{key: {"$contains": v}} for v in values]
            if alternatives:
                parts.append(alternatives[0] if len(alternatives) == 1 else {"$or": alternatives})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}

    def matches(self, meta: dict[str, Any]) -> bool:
        """Whether a chunk with this metadata passes (what `where()` asks of Chroma)."""
        if self.since and meta.get("date_num", 0) < date_number(self.since):
            return False
        if self.categories and not set(self.categories) & set(meta.get("categories") or ()):
            return False
        return not self.sources or bool(set(self.sources) & set(meta.get("sources") or ()))

    def admits(self, paper: Paper) -> bool:
        """Whether a paper being read passes."""
        return self.matches(paper_metadata(paper))

    def describe(self) -> str:
        parts = [f"since {self.since}"] if self.since else []
        if self.categories:
            parts.append("category " + " or ".join(self.categories))
        if self.sources:
            parts.append("source " + " or ".join(self.sources))
        return ", ".join(parts)


@dataclass(frozen=True)
class Hit:
    """A chunk returned by a query, with its cosine similarity to the query."""

    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]


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
        rows_of: dict[str, list[int]] = {}
        for row, meta in enumerate(metas):
            rows_of.setdefault(meta["paper_id"], []).append(row)
        for rows in rows_of.values():
            rows.sort(key=lambda r: metas[r]["chunk"])
        return cls(stamp, ids, docs, metas, np.ascontiguousarray(matrix), rows_of)

    masks: dict[Filter, np.ndarray] = field(default_factory=dict)
    """Rows each filter admits, computed once per filter."""

    def hit(self, row: int, score: float = 0.0) -> Hit:
        return Hit(self.ids[row], score, self.docs[row], self.metas[row])

    def mask(self, filters: Filter) -> np.ndarray:
        if filters not in self.masks:
            if len(self.masks) >= MASKS_KEPT:  # many distinct filters (a long-running server)
                self.masks.clear()
            self.masks[filters] = np.fromiter(
                (filters.matches(m) for m in self.metas), dtype=bool, count=len(self.metas)
            )
        return self.masks[filters]

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


@dataclass
class IngestReport:
    """What an ingest did; `errors` are one-line messages about records that were skipped."""

    papers_read: int = 0
    papers_added: int = 0
    papers_updated: int = 0
    papers_unchanged: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    papers_total: int = 0
    papers_filtered: int = 0
    """Records left out by the ingest's filters (--category, --since)."""
    resumed: list[str] = field(default_factory=list)
    """Files taken up where an interrupted ingest stopped ('FILE: line N')."""
    errors: list[str] = field(default_factory=list)

    def count(self, status: dict[str, str]) -> None:
        """Fill the paper counts from each paper's status in this run."""
        values = list(status.values())
        self.papers_read = len(values)
        self.papers_added = values.count("added")
        self.papers_updated = values.count("updated")
        self.papers_unchanged = values.count("unchanged")


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

    def split(self, paper: Paper) -> list[str]:
        title_tokens = self.count_tokens(paper.title) + 1  # the newline between title and text
        budget = max(32, self.max_tokens - title_tokens)
        if self.count_tokens(paper.abstract) <= budget:
            return [paper.abstract]
        return [t for t in self._splitter(budget).split_text(paper.abstract) if t.strip()]


def content_hash(paper: Paper, settings: Settings) -> str:
    """What decides a paper's chunks: its text and the chunking settings."""
    key = json.dumps([paper.title, paper.abstract, settings.chunk_tokens, settings.chunk_overlap])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


class Checkpoints:
    """Where the reading of each streamed file got to, saved after every written batch, so an
    interrupted ingest of a large file continues there instead of at its first line.

    A checkpoint is keyed by the file (path, size, modification time), how it is read (format,
    filters) and the collection: any change starts the file afresh. It is removed once the
    file has been read to the end. Papers before it are in the index; papers after it may be
    too (a batch cut short), which the content hashes sort out.
    """

    def __init__(self, settings: Settings) -> None:
        self.dir = settings.index_dir / "ingest-progress"
        self.collection = settings.collection

    def key(self, path: Path, how: str) -> str:
        info = path.stat()
        raw = json.dumps(
            [str(path.resolve()), info.st_size, info.st_mtime_ns, how, self.collection]
        )
        return hashlib.sha1(raw.encode()).hexdigest()[:20]

    def load(self, key: str) -> FilePosition | None:
        try:
            saved = json.loads((self.dir / f"{key}.json").read_text(encoding="utf-8"))
            return FilePosition(int(saved["offset"]), int(saved["line"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, key: str, position: FilePosition) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"offset": position.offset, "line": position.line}))
        tmp.replace(self.dir / f"{key}.json")

    def done(self, key: str) -> None:
        (self.dir / f"{key}.json").unlink(missing_ok=True)


@contextlib.contextmanager
def ingest_lock(index_dir: Path) -> Iterator[None]:
    """One writer per index: a second ingest stops with 'index is busy' instead of interleaving."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagError(
                f"index is busy: another ingest is writing to {index_dir}; try again when it ends"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Store:
    """The Chroma collection of chunks, and the index settings recorded with it.

    `embedder_name` is the model whose vectors will be written or queried: opening a collection
    built by another model is an `IndexMismatchError`, never a silent mix of vector spaces.
    """

    def __init__(self, settings: Settings, embedder_name: str) -> None:
        self.settings = settings
        self.embedder_name = embedder_name
        self.path = settings.index_dir / "chroma"
        self._table: ChunkTable | None = None
        self._local = threading.local()
        self._table_lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the collection lives, for messages: a server URL or the local directory."""
        if self.settings.chroma_host:
            return f"the Chroma server at {self.settings.chroma_url()}"
        return str(self.settings.index_dir)

    @cached_property
    def client(self) -> Any:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        if self.settings.chroma_host:
            return self._http_client(chromadb, ChromaSettings)
        database = self.path / "chroma.sqlite3"
        if _foreign_database(database):
            # Chroma would add its tables to any SQLite file it is pointed at: refuse instead.
            raise IndexMismatchError(
                f"{database} is not a Chroma index (it holds another program's tables); "
                "point RAG_INDEX_DIR at a new directory and run `rag ingest` to build an index"
            )
        try:
            return chromadb.PersistentClient(
                path=str(self.path), settings=ChromaSettings(anonymized_telemetry=False)
            )
        except Exception as exc:  # chromadb raises bare exceptions for a damaged store
            raise RagError(
                f"cannot open the index at {self.path} ({exc.__class__.__name__}: {exc}); "
                "move it aside and run `rag ingest` to rebuild it"
            ) from None

    def _http_client(self, chromadb: Any, chroma_settings: Any) -> Any:
        """A client of a Chroma server (`chroma run`, or a team's deployment): the same API as
        the embedded store, so every other method serves both."""
        options: dict[str, Any] = {"anonymized_telemetry": False}
        token = self.settings.chroma_auth_token
        if token is not None:
            options["chroma_client_auth_provider"] = (
                "chromadb.auth.token_authn.TokenAuthClientProvider"
            )
            options["chroma_client_auth_credentials"] = token.get_secret_value()
        try:
            return chromadb.HttpClient(
                host=self.settings.chroma_host,
                port=self.settings.chroma_port,
                ssl=self.settings.chroma_ssl,
                settings=chroma_settings(**options),
            )
        except Exception as exc:  # ValueError when down; auth and HTTP errors vary by version
            raise RagError(
                f"cannot reach the Chroma server at {self.settings.chroma_url()} "
                f"({_one_line(exc)}); start it (`chroma run --path DIR --port "
                f"{self.settings.chroma_port}`) or unset RAG_CHROMA_HOST to use {self.path}"
            ) from None

    def exists(self) -> bool:
        """True when the collection exists (creates nothing)."""
        if not self.settings.chroma_host and not (self.path / "chroma.sqlite3").exists():
            return False
        return self.settings.collection in {c.name for c in self.client.list_collections()}

    def _expected_metadata(self) -> dict[str, Any]:
        return {
            SCHEMA_KEY: SCHEMA_VERSION,
            "embed_model": self.embedder_name,
            "chunk_tokens": self.settings.chunk_tokens,
            "chunk_overlap": self.settings.chunk_overlap,
        }

    def create(self) -> None:
        """Create the collection if it does not exist yet."""
        if not self.exists():
            self.client.create_collection(
                self.settings.collection,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata=self._expected_metadata(),
            )
            self.__dict__.pop("col", None)

    @cached_property
    def col(self) -> Any:
        name = self.settings.collection
        if not self.exists():
            raise RagError(f"no index at {self.location}: run `rag ingest` first")
        col = self.client.get_collection(name, embedding_function=None)
        meta = col.metadata or {}
        if meta.get(SCHEMA_KEY) != SCHEMA_VERSION:
            raise IndexMismatchError(
                f"collection {name!r} in {self.location} was not built by this tool "
                "(or by an incompatible version); point RAG_INDEX_DIR at a new directory and "
                "run `rag ingest` to build a fresh index"
            )
        if meta.get("embed_model") != self.embedder_name:
            raise IndexMismatchError(
                f"the index was built with embedding model {meta.get('embed_model')!r} but "
                f"{self.embedder_name!r} is configured; set RAG_EMBED_MODEL="
                f"{meta.get('embed_model')} or point RAG_INDEX_DIR at a new directory and "
                "run `rag ingest`"
            )
        return col

    def count(self) -> int:
        """Number of chunks."""
        return int(self.col.count())

    def paper_count(self) -> int:
        """Number of papers: their first chunks, counted by id only (no texts or metadata are
        loaded, so it stays cheap for a collection of millions of chunks)."""
        return sum(len(page["ids"]) for page in self._pages(include=[], where={"chunk": 0}))

    def _pages(self, include: list[str], where: dict[str, Any] | None = None) -> Iterator[Any]:
        """`col.get` over the whole collection in pages: one unbounded get of more than about
        32,000 records fails inside Chroma ("too many SQL variables")."""
        offset = 0
        while True:
            page = self.col.get(where=where, include=include, limit=GET_PAGE, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def _get_all(self, include: list[str]) -> dict[str, list[Any]]:
        """Every record of the collection (ids and `include`), gathered page by page."""
        got: dict[str, list[Any]] = {"ids": [], **{name: [] for name in include}}
        for page in self._pages(include):
            for name in got:
                got[name].extend(page[name])
        return got

    def chunk_states(self, paper_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Metadata (with `id`) of every stored chunk of these papers, by paper id."""
        found = self.col.get(where={"paper_id": {"$in": paper_ids}}, include=["metadatas"])
        states: dict[str, list[dict[str, Any]]] = {}
        for chunk_id, meta in zip(found["ids"], found["metadatas"], strict=True):
            states.setdefault(meta["paper_id"], []).append({"id": chunk_id, **meta})
        return states

    def paper_chunks(self, paper_ids: Sequence[str]) -> dict[str, list[Hit]]:
        """Every chunk of these papers (text and metadata), in order, by paper id."""
        if not paper_ids:
            return {}
        table = self.table()
        if table is not None:
            return {
                pid: [table.hit(r) for r in table.rows_of[pid]]
                for pid in paper_ids
                if pid in table.rows_of
            }
        found = self.col.get(
            where={"paper_id": {"$in": list(paper_ids)}}, include=["documents", "metadatas"]
        )
        parts: dict[str, list[Hit]] = {}
        for cid, doc, meta in zip(
            found["ids"], found["documents"], found["metadatas"], strict=True
        ):
            parts.setdefault(meta["paper_id"], []).append(Hit(cid, 0.0, doc, meta))
        return {pid: sorted(p, key=lambda h: h.metadata["chunk"]) for pid, p in parts.items()}

    def best_cosines(self, paper_ids: Sequence[str], vector: np.ndarray) -> dict[str, float]:
        """Each paper's best chunk cosine similarity to `vector` (vectors are unit length)."""
        if not paper_ids:
            return {}
        table = self.table()
        if table is not None:
            vector = np.asarray(vector, dtype=np.float32)
            return {
                pid: float((table.matrix[table.rows_of[pid]] @ vector).max())
                for pid in paper_ids
                if pid in table.rows_of
            }
        found = self.col.get(
            where={"paper_id": {"$in": list(paper_ids)}}, include=["embeddings", "metadatas"]
        )
        best: dict[str, float] = {}
        sims = np.asarray(found["embeddings"], dtype=np.float32) @ vector
        for sim, meta in zip(sims.tolist(), found["metadatas"], strict=True):
            best[meta["paper_id"]] = max(sim, best.get(meta["paper_id"], -1.0))
        return best

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
                got = self._get_all(["embeddings", "documents", "metadatas"])
                self._table = ChunkTable.build(stamp, got)
            return self._table

    def bump_generation(self) -> None:
        """Mark the collection as changed (before and after an ingest that writes)."""
        col = self.client.get_collection(self.settings.collection, embedding_function=None)
        meta = dict(col.metadata or {})
        meta[GENERATION_KEY] = int(meta.get(GENERATION_KEY, 0)) + 1
        col.modify(metadata=meta)

    def write(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        self._mark_changed()
        self.col.upsert(
            ids=[c.chunk_id for c in chunks],
            embeddings=vectors,
            documents=[c.text for c in chunks],
            metadatas=[c.metadata() for c in chunks],
        )

    def update_metadata(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        self._mark_changed()
        self.col.update(ids=ids, metadatas=metadatas)

    def delete(self, ids: list[str]) -> None:
        self._mark_changed()
        self.col.delete(ids=ids)

    changed = False
    """True once this `Store` has written anything."""

    def _mark_changed(self) -> None:
        # Bumped before the first write, so that even a killed ingest leaves a new generation.
        if not self.changed:
            self.changed = True
            self.bump_generation()

    def query(self, vector: np.ndarray, n: int, filters: Filter | None = None) -> list[Hit]:
        """The `n` chunks nearest to `vector` among those `filters` admits, best first."""
        table = self.table()
        if table is not None:
            return table.nearest(vector, n, filters)
        n = min(n, self.count())
        if n <= 0:
            return []
        res = self.col.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            where=filters.where() if filters else None,
            include=["documents", "metadatas", "distances"],
        )
        return [
            Hit(cid, 1.0 - float(dist), doc, meta)
            for cid, dist, doc, meta in zip(
                res["ids"][0],
                res["distances"][0],
                res["documents"][0],
                res["metadatas"][0],
                strict=True,
            )
        ]

    def admitted_papers(self, filters: Filter) -> set[str]:
        """Ids of the papers `filters` admits (for rankings made outside Chroma: BM25)."""
        table = self.table()
        if table is not None:
            return {table.metas[r]["paper_id"] for r in np.flatnonzero(table.mask(filters))}
        where = {"$and": [{"chunk": 0}, filters.where()]} if filters else {"chunk": 0}
        pages = self._pages(["metadatas"], where)
        return {meta["paper_id"] for page in pages for meta in page["metadatas"]}

    def vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of these chunks, by chunk id."""
        if not ids:
            return {}
        table = self.table()
        if table is not None:
            rows = {cid: _index(table.ids, cid) for cid in ids}
            return {cid: table.matrix[row] for cid, row in rows.items() if row is not None}
        got = self.col.get(ids=ids, include=["embeddings"])
        return {
            cid: np.asarray(v, dtype=np.float32)
            for cid, v in zip(got["ids"], got["embeddings"], strict=True)
        }

    def all_chunks(self) -> list[Hit]:
        """Every chunk (text and metadata), for lexical indexes built beside the vectors."""
        table = self.table()
        if table is not None:
            return [table.hit(r) for r in range(len(table.ids))]
        res = self._get_all(["documents", "metadatas"])
        return [
            Hit(cid, 0.0, doc, meta)
            for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        ]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _index(ids: list[str], wanted: str) -> int | None:
    """Row of `wanted` in the sorted `ids`, or None."""
    at = bisect.bisect_left(ids, wanted)
    return at if at < len(ids) and ids[at] == wanted else None


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


def _is_complete(chunks: list[dict[str, Any]], wanted_hash: str) -> bool:
    """All chunks of the paper carry the wanted hash and form one complete run 0..n-1."""
    if not chunks or any(c["content_hash"] != wanted_hash for c in chunks):
        return False
    count = chunks[0]["n_chunks"]
    return sorted(c["chunk"] for c in chunks) == list(range(count))


def _batched(items: Iterable[Paper], size: int) -> Iterator[dict[str, Paper]]:
    batch: dict[str, Paper] = {}
    for paper in items:
        known = batch.get(paper.paper_id)
        batch[paper.paper_id] = known.merged_with(paper) if known else paper
        if len(batch) >= size:
            yield batch
            batch = {}
    if batch:
        yield batch


def ingest_papers(
    papers: Iterable[Paper],
    settings: Settings,
    embedder: Embedder,
    store: Store | None = None,
    progress: bool = False,
    on_batch: Callable[[], None] | None = None,
) -> IngestReport:
    """Add or update `papers` in the index; unchanged papers cost no embedding at all.
    `on_batch()` is called after each batch is written (checkpoints are saved there)."""
    from tqdm import tqdm

    store = store or Store(settings, embedder.name)
    report = IngestReport()
    budget = min(embedder.max_tokens, settings.chunk_tokens)
    chunker = Chunker(embedder.count_tokens, budget, settings.chunk_overlap)
    with ingest_lock(settings.index_dir):
        if store.exists():
            store.col  # noqa: B018 - checks the recorded model before anything is read
        # A paper seen in several batches (several pages) is counted once, by its first status.
        status: dict[str, str] = {}
        with tqdm(desc="embedding", unit="chunk", disable=not progress, leave=False) as bar:
            for batch in _batched(papers, PAPER_BATCH):
                store.create()  # on the first batch: reading nothing creates no index
                for pid, state in _ingest_batch(
                    batch, store, chunker, embedder, settings, report, bar
                ).items():
                    if status.get(pid, "unchanged") == "unchanged":
                        status[pid] = state
                if on_batch is not None:
                    on_batch()
        report.count(status)
        report.papers_total = store.paper_count() if store.exists() else 0
        if store.changed:
            store.bump_generation()  # whatever was derived during the ingest is stale too
    return report


def _ingest_batch(
    batch: dict[str, Paper],
    store: Store,
    chunker: Chunker,
    embedder: Embedder,
    settings: Settings,
    report: IngestReport,
    bar: Any,
) -> dict[str, str]:
    """Write one batch; returns each paper's status: added, updated or unchanged."""
    status: dict[str, str] = {}
    states = store.chunk_states(list(batch))
    to_embed: list[Chunk] = []
    stale: list[str] = []
    relisted_ids: list[str] = []
    relisted_meta: list[dict[str, Any]] = []
    for paper_id, paper in batch.items():
        old = states.get(paper_id, [])
        if old and old[0].get("date", "") > (paper.date or "\uffff"):
            status[paper_id] = "unchanged"  # an older version of a paper already indexed
            continue
        known_listings = listings_from_metadata(old[0]) if old else ()
        merged = Paper(paper_id, paper.title, paper.abstract, known_listings).merged_with(paper)
        wanted = content_hash(paper, settings)
        if _is_complete(old, wanted):
            fresh = paper_metadata(merged)
            if any(old[0].get(k) != v for k, v in fresh.items()) or any(
                k in old[0] and k not in fresh for k in PAPER_KEYS_OPTIONAL
            ):
                # Seen on a new page, or recategorised: recorded, but the text (and so the
                # vector) is unchanged.
                dropped = {k: None for k in PAPER_KEYS_OPTIONAL if k not in fresh}  # None deletes
                for c in old:
                    relisted_ids.append(c["id"])
                    relisted_meta.append({**_strip_id(c), **dropped, **fresh})
                status[paper_id] = "updated"
            else:
                status[paper_id] = "unchanged"
            continue
        texts = chunker.split(merged)
        chunks = [
            Chunk(f"{paper_id}#{i}", merged, i, len(texts), t, wanted) for i, t in enumerate(texts)
        ]
        to_embed.extend(chunks)
        new_ids = {c.chunk_id for c in chunks}
        stale.extend(c["id"] for c in old if c["id"] not in new_ids)
        status[paper_id] = "updated" if old else "added"
    if relisted_ids:
        store.update_metadata(relisted_ids, relisted_meta)
    # Similar lengths side by side: the encoder pads each batch to its longest text.
    to_embed.sort(key=lambda c: len(c.embed_text))
    for start in range(0, len(to_embed), WRITE_BATCH):
        part = to_embed[start : start + WRITE_BATCH]
        vectors = _embed_with_progress(embedder, [c.embed_text for c in part], bar)
        # New chunks are written before stale ones go: a crash in between leaves a paper whose
        # chunks disagree on their hash, which the next ingest redoes.
        store.write(part, vectors)
        report.chunks_embedded += len(part)
    if stale:
        store.delete(stale)
        report.chunks_deleted += len(stale)
    return status


def _strip_id(chunk_state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in chunk_state.items() if k != "id"}


def _embed_with_progress(embedder: Embedder, texts: list[str], bar: Any) -> np.ndarray:
    from rag.embed import embed_documents

    step = getattr(embedder, "batch", PROGRESS_STEP)  # a remote encoder: one request a step
    parts = []
    for start in range(0, len(texts), step):
        parts.append(embed_documents(embedder, texts[start : start + step]))
        bar.update(len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
