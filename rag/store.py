"""The collection as searches read it (`Store`): one consistent view per search, and reads
answered from the exact in-memory table (`rag.table`) when the collection is small enough,
else from Chroma (`rag.collection`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rag.chroma import CLIENTS, guarded
from rag.collection import (
    GENERATION_KEY,
    WRITING_KEY,
    Collection,
    hits_of,
    paper_of,
    saved_count,
    with_texts,
)
from rag.filters import Filter
from rag.table import ChunkTable, Hit

if TYPE_CHECKING:
    from rag.settings import Settings


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
        saved = saved_count(meta, generation) if not writing else None
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
        parts: dict[str, list[Hit]] = {}
        asked = list(paper_ids)
        beside = self.texts
        if beside is not None:  # read here, Chroma's index is not loaded (`rag.texts`)
            asked = []
            for pid, rows in beside.papers(paper_ids).items():
                if any(meta is None for *_, meta in rows):
                    asked.append(pid)  # written before metadata was kept here
                else:
                    parts[pid] = [Hit(cid, 0.0, text, meta) for cid, text, meta in rows]
        if asked:
            for hit in hits_of(self._by_paper(asked, ["documents", "metadatas"])):
                parts.setdefault(hit.metadata["paper_id"], []).append(hit)
        return {
            pid: sorted(parts[pid], key=lambda h: h.metadata["chunk"])
            for pid in paper_ids
            if pid in parts
        }

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
        beside = self.texts
        include = ["distances", "metadatas", "documents"] if content else ["distances"]
        res = self.open().query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=n,
            where=filters.where() if filters else None,
            include=include[:2] if content and beside else include,
        )
        if not content:
            return [
                Hit(cid, 1.0 - float(dist), "", {"paper_id": paper_of(cid)})
                for cid, dist in zip(res["ids"][0], res["distances"][0], strict=True)
            ]
        found = {key: res[key][0] for key in ("ids", "metadatas", "distances")}
        if beside is None:
            found["documents"] = res["documents"][0]
        else:  # a chunk whose text is gone was deleted by an ingest since Chroma answered
            found = with_texts({**found, "documents": beside.get(found["ids"])})
        return [
            Hit(hit.chunk_id, 1.0 - float(dist), hit.text, hit.metadata)
            for hit, dist in zip(hits_of(found), found["distances"], strict=True)
        ]

    @guarded
    def admits_any(self, filters: Filter) -> bool:
        """Whether `filters` admit at least one chunk (one id is read, not every match)."""
        table = self.table()
        if table is not None:
            return bool(table.mask(filters).any())
        beside = self.texts
        found = beside.admitted(filters, limit=1) if beside is not None else None
        if found is not None:  # from the facets kept beside (`rag.texts`): no Chroma index read
            return bool(found)
        return bool(self.open().get(where=filters.where(), limit=1, include=[])["ids"])

    @guarded
    def admitted_papers(self, filters: Filter) -> set[str]:
        """Ids of the papers `filters` admits (for rankings made outside Chroma: BM25)."""
        table = self.table()
        if table is not None:
            return {table.metas[r]["paper_id"] for r in np.flatnonzero(table.mask(filters))}
        beside = self.texts
        found = beside.admitted(filters) if beside is not None else None
        if found is not None:
            return found
        # Ids only (a paper's first chunk is `PAPER#0`), in one page: read with their metadata
        # in pages of 10,000, a filter admitting a million papers of a server took 5 minutes.
        where = {"$and": [{"chunk": 0}, filters.where()]} if filters else {"chunk": 0}
        return {paper_of(cid) for cid in self._get(where, [])["ids"]}

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

    def chunk_pages(self, vectors: bool = False) -> Iterator[tuple[list[Hit], np.ndarray | None]]:
        """Every chunk (text and metadata), a page at a time, with the page's vectors as one
        matrix when asked: what a lexical index built over millions of chunks reads without
        holding them all."""
        table = self.table()
        if table is not None:
            yield [table.hit(r) for r in range(len(table.ids))], table.matrix if vectors else None
            return
        include = ["documents", "metadatas", *(["embeddings"] if vectors else [])]
        for page in self._pages(include):
            matrix = np.asarray(page["embeddings"], dtype=np.float32) if vectors else None
            yield list(hits_of(page)), matrix

    @guarded
    def all_chunks(self) -> list[Hit]:
        """Every chunk (text and metadata), for lexical indexes built beside the vectors."""
        table = self.table()
        if table is not None:
            return [table.hit(r) for r in range(len(table.ids))]
        return list(hits_of(self._get(None, ["documents", "metadatas"])))
