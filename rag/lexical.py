"""Text -> BM25 terms, and a store's BM25 index (bm25s): built from the store, saved beside it,
loaded by every later process, rebuilt when the store changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import uuid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.filters import Filter
from rag.lease import writing_elsewhere
from rag.nearest import DenseRows
from rag.segments import DenseLexicon, Draft, Lexicon, PaperIds, Segment, bm25s_module
from rag.table import MaskCache

if TYPE_CHECKING:
    from rag.store import Store
    from rag.table import Hit
    from rag.texts import ChunkTexts

log = logging.getLogger(__name__)
TOKENIZER_VERSION = 2  # bump when `tokenize` changes: saved BM25 indexes are then rebuilt
# A word, or a hyphenated compound ("bi-level", "L-Mul"), which also counts joined ("bilevel").
TOKEN = re.compile(r"\w+(?:-\w+)+|\w+")
# Words of the question, not of its subject: left out of a query's content when its lexical
# match is measured ("Which papers study ...", "How does it deal with ...").
QUESTION_WORDS = """what which how why when where who whom whose whether does do did doing done can
could should would may might must shall its any some all each every other others there here
about between than more most less least also very much many few same own just only both either
neither paper papers study studies studied work works approach approaches method methods propose
proposes proposed collection deal deals dealt address addresses literature research compare
compared comparison find finds found show shows shown describe discuss explore investigate use
uses used using different differ difference variant variants way ways kind kinds type types
thing things get make made say says said know known exist exists existing""".split()
# A word, or a hyphenated compound ("bi-level", "L-Mul"), which also counts joined ("bilevel").


def tokenize(text: str) -> list[str]:
    """BM25 terms: lower-cased, English stop words removed, Snowball-stemmed.

    A hyphenated compound gives its parts and the joined word, so "bi-level", "bilevel" and
    "Bi-Level" meet; single letters are kept ("L-Mul" -> l, mul, lmul). Stemming lets
    "optimizers" match "optimization" (both "optim"), as Lucene's English analyzer does.
    """
    stop, stemmer = _analyzer()
    words: list[str] = []
    for token in TOKEN.findall(text.lower()):
        if "-" in token:
            parts = [p for p in token.split("-") if p]
            words.extend(p for p in parts if p not in stop)
            words.append("".join(parts))
        elif token not in stop:
            words.append(token)
    return stemmer.stemWords(words)


@cache
def _question_terms() -> frozenset[str]:
    return frozenset(tokenize(" ".join(QUESTION_WORDS)))


@cache
def _analyzer() -> tuple[frozenset[str], Any]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN), Stemmer.Stemmer("english")


SEGMENT_PAPERS = 50_000  # papers per segment of a whole build: bounds the memory it takes
SMALL_SEGMENTS = 8  # segments added by ingests (each under a tenth of that) before a merge
FORMAT = 2
LOCK_NAME = ".ingest.lock"  # held by an ingest (rag.ingest.ingest_lock)


def paper_terms(title: str, texts: list[str]) -> list[str]:
    """A paper's BM25 document: its title and every chunk of its abstract."""
    return tokenize(" ".join([title, *texts]))


class LexicalIndex:
    """BM25 (bm25s) over a store's whole papers: the title and every chunk of the abstract.

    The index is derived from the store and saved beside it (`<index>/bm25/<collection>/`)
    with the store's stamp, as segments of at most `SEGMENT_PAPERS` papers (built a segment at
    a time, loaded memory-mapped). An ingest adds the papers it changed as a new segment
    (`extend`), so a thousand new papers in a million cost a thousand; a search whose saved
    index is stale (another writer, an older version) rebuilds it whole, except while an
    ingest is running, when it keeps the index it has.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lexicon = Lexicon([])
        self._stamp: tuple[int, int] | None = None
        self._kept: tuple[int, int] | None = None  # a stamp seen mid-ingest, index kept
        self._lock = threading.Lock()
        self._dense: DenseLexicon | None = None
        self._masks = MaskCache()

    @property
    def keeps_vectors(self) -> bool:
        """Whether segments keep their chunk vectors: an embedded store's do (its searches
        then need no HNSW index); a Chroma server holds its own index warm."""
        return self.store.embedded

    @property
    def path(self) -> Path:
        return self.store.settings.index_dir / "bm25" / self.store.settings.collection

    def current(self) -> Lexicon:
        """The index as of the store's stamp (loaded or rebuilt)."""
        stamp = self.store.stamp()
        with self._lock:
            if stamp in (self._stamp, self._kept):
                return self._lexicon
            loaded = self._load(stamp)
            ingesting = loaded is None and self._ingesting()
            if ingesting and self._stamp is not None:
                self._kept = stamp  # the ingest saves the new index when it ends
                return self._lexicon
            # Mid-ingest (a first search of this process) the build is this process's only:
            # published, it could cover a half-written store or race the ingest's own.
            self._lexicon = loaded or self._build(stamp, publish=not ingesting)
            self._stamp, self._kept = stamp, None
            return self._lexicon

    def dense(self, build: bool = True) -> DenseLexicon | None:
        """The chunk vectors of the index as of the store's stamp, when its every segment keeps
        them; None otherwise, and mid-ingest, when the index kept lags the store. Without
        `build`, an index that would have to be rebuilt is not: None."""
        stamp = self.store.stamp()
        if not build and stamp != self._stamp:
            with self._lock:
                loaded = self._load(stamp)
                if loaded is None:
                    return None
                self._lexicon, self._stamp, self._kept = loaded, stamp, None
        lexicon = self.current()
        with self._lock:
            if self._stamp != stamp or self._lexicon is not lexicon:
                return None
            if self._dense is None or self._dense.lexicon is not lexicon:
                self._dense = DenseLexicon.of(lexicon)
            return self._dense

    def admitted(self, filters: Filter, ids: list[str]) -> np.ndarray:
        """Which of `ids` (the index's papers) `filters` admits, kept per store state."""

        def compute() -> np.ndarray:
            admitted = self.store.admitted_papers(filters)
            return np.fromiter((pid in admitted for pid in ids), dtype=bool, count=len(ids))

        # Keyed on the id list too: during an ingest one stamp can go with two BM25 indexes.
        return self._masks.get((self.store.stamp(), id(ids), len(ids), filters), compute)

    def _ingesting(self) -> bool:
        """Whether an ingest holds this index's lock (here or in another process), or the
        lease of its collection in a shared Chroma server (on another machine)."""
        if writing_elsewhere(self.store):
            return True
        try:
            with (self.store.settings.index_dir / LOCK_NAME).open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def _record(self) -> dict[str, Any] | None:
        try:
            saved = json.loads((self.path / "papers.json").read_text(encoding="utf-8"))
            ok = saved.get("format") == FORMAT and saved.get("tokenizer") == TOKENIZER_VERSION
            return saved if ok and len(saved["stamp"]) == 2 else None
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return None  # missing or damaged: rebuilt

    def _load(self, stamp: tuple[int, int]) -> Lexicon | None:
        bm25s = bm25s_module()
        saved = self._record()
        if saved is None or tuple(saved["stamp"]) != stamp:
            return None
        try:
            return Lexicon(
                [
                    Segment(
                        s["dir"],
                        list(s["paper_ids"]),
                        bm25s.BM25.load(str(self.path / s["dir"]), mmap=True, show_progress=False),
                        set(s["deleted"]),
                        DenseRows.load(self.path / s["dir"], len(s["paper_ids"])),
                    )
                    for s in saved["segments"]
                ]
            )
        except (OSError, ValueError, KeyError, TypeError, EOFError, IndexError):
            return None  # damaged, or a segment removed by a merge meanwhile: rebuild

    def _build(self, stamp: tuple[int, int], publish: bool = True) -> Lexicon:
        """The whole index from the store, a segment of `SEGMENT_PAPERS` papers at a time
        (a paper is complete once all its `n_chunks` chunks are read); saved when `publish`
        and the store did not change meanwhile."""
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        segments: list[Segment] = []
        pending: dict[str, list[Hit]] = {}
        ready: dict[str, list[Hit]] = {}
        # Vectors for a published build only: one kept by this process alone (mid-ingest) is
        # of a store being written; its dense searches go to Chroma.
        vectors: dict[str, np.ndarray] | None = {} if self.keeps_vectors and publish else None
        copies = lacking_metadata(self.store) if vectors is not None else None
        for page, matrix in self.store.chunk_pages(vectors=vectors is not None):
            if copies is not None:  # an index written before the texts file kept metadata
                copies = fill_metadata(copies, page)
            for at, chunk in enumerate(page):
                parts = pending.setdefault(chunk.metadata["paper_id"], [])
                parts.append(chunk)
                if vectors is not None and matrix is not None:
                    vectors[chunk.chunk_id] = matrix[at]
                if len(parts) >= int(chunk.metadata.get("n_chunks", 1)):
                    ready[chunk.metadata["paper_id"]] = pending.pop(chunk.metadata["paper_id"])
            if len(ready) >= SEGMENT_PAPERS:
                segments.append(self._save(draft_of(ready, vectors), tmp))
                ready = {}
        flushed = {pid for segment in segments for pid in segment.ids}
        for pid, parts in pending.items():  # cut short by an interrupted ingest: what there is
            if pid not in flushed:
                ready.setdefault(pid, []).extend(parts)
        if ready:
            segments.append(self._save(draft_of(ready, vectors), tmp))
        lexicon = Lexicon([s for s in segments if s.ids])
        if publish and self.store.stamp() == stamp:
            self._publish(tmp, lexicon, stamp, whole=True)
            if copies is not None:  # every page's metadata and facets were copied
                with contextlib.suppress(sqlite3.Error, OSError):
                    copies.mark_facets_complete()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return lexicon

    def _save(self, draft: Draft, folder: Path) -> Segment:
        """`draft` built and saved in `folder` under a new name (kept in memory when the
        index cannot be written: it still answers, and is rebuilt per process)."""
        model = draft.model()
        dense = draft.dense()
        name = f"seg-{uuid.uuid4().hex[:12]}"
        try:
            model.save(str(folder / name), show_progress=False)
            mapped = None  # the vectors mapped from their files, not held in memory
            if dense is not None:
                dense.save(folder / name)
                mapped = DenseRows.load(folder / name, len(draft.ids))
        except (OSError, ValueError) as exc:
            log.info("BM25 segment not saved (%s); it is rebuilt per process", exc)
            return Segment("", draft.ids, model, dense=dense)
        return Segment(name, draft.ids, model, dense=mapped)

    def _publish(self, folder: Path, lexicon: Lexicon, stamp: tuple[int, int], whole: bool) -> None:
        """Write the record; a whole build's new directory is renamed over the old one, so
        readers never see half of either."""
        record = {
            "format": FORMAT,
            "stamp": list(stamp),
            "tokenizer": TOKENIZER_VERSION,
            "segments": [s.record() for s in lexicon.segments],
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp_record = folder / f".papers.{uuid.uuid4().hex}.json"
            tmp_record.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp_record, folder / "papers.json")
            if whole:
                old = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.old")
                if self.path.exists():
                    self.path.rename(old)
                folder.rename(self.path)
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            log.info("BM25 index not saved (%s); it is rebuilt per process", exc)
            if whole:
                shutil.rmtree(folder, ignore_errors=True)

    def scores(self, query: str) -> tuple[PaperIds, np.ndarray]:
        """Every paper's BM25 score for `query`: (paper ids, scores in the same order)."""
        lexicon = self.current()
        terms = tokenize(query)
        if not terms or not lexicon.ids:
            return lexicon.ids, np.zeros(len(lexicon.ids), dtype=np.float32)
        return lexicon.ids, lexicon.scores(terms)

    def query_weight(self, query: str) -> float:
        """The BM25 score of an imagined paper holding each content term of `query` once, at
        the average length: the sum of the terms' IDF, terms no paper holds counted too, the
        question's own words (`QUESTION_WORDS`) left out. A real paper's score over it says how
        much of the query's subject it matches word for word."""
        lexicon = self.current()
        if not lexicon.papers:
            return 0.0  # an empty collection: nothing to match
        terms = set(tokenize(query)) - _question_terms()
        return sum(lexicon.idf(lexicon.doc_freq(t), lexicon.papers) for t in terms)


class SegmentWriter:
    """The BM25 index of what an ingest writes, built from the texts as they are written
    (nothing is read back from the store): a segment is saved every `SEGMENT_PAPERS` papers,
    unlisted until `finish` adds the new segments to the index saved before the ingest, the
    older rows of the papers they hold tombstoned."""

    def __init__(self, index: LexicalIndex) -> None:
        self.index = index
        self.draft = Draft()
        self.segments: list[Segment] = []
        self.again: set[str] = set()  # papers written a second time in this run
        self.vectors = index.keeps_vectors

    def add(
        self,
        paper_id: str,
        title: str,
        texts: list[str],
        first: bool,
        vectors: np.ndarray | None = None,
    ) -> None:
        """A paper written with new text (`first`: the first time this run reads it), with
        its chunks' vectors in order."""
        if not first and paper_id not in self.draft.rows:
            self.again.add(paper_id)
        dense = None
        if self.vectors and vectors is not None:
            dense = (np.arange(len(vectors)), vectors)
        self.draft.add(paper_id, paper_terms(title, texts), dense)
        if len(self.draft) >= SEGMENT_PAPERS:
            self._flush()

    def _flush(self) -> None:
        if len(self.draft):
            with contextlib.suppress(OSError):  # unwritable: `_save` keeps it in memory
                self.index.path.mkdir(parents=True, exist_ok=True)
            segment = self.index._save(self.draft, self.index.path)
            # Kept in memory only when it could not be saved; otherwise loaded when searched.
            kept = segment if not segment.name else Segment(segment.name, segment.ids, None)
            self.segments.append(kept)
            self.draft = Draft()

    def discard(self) -> None:
        """An ingest that failed: its unlisted segments are removed."""
        for segment in self.segments:
            if segment.name:
                shutil.rmtree(self.index.path / segment.name, ignore_errors=True)
        self.segments, self.draft = [], Draft()

    def finish(self, before: tuple[int, int] | None, after: tuple[int, int]) -> str:
        """The ingest took the store from stamp `before` (None: it was empty) to `after`:
        list the new segments beside the index saved at `before`, or build the index whole
        from the store when there is none at `before` or a quarter of its rows would be dead.
        Says what was done."""
        self._flush()
        index, new = self.index, self.segments
        current = Lexicon([]) if before is None else index._load(before)
        if current is None or any(not s.name for s in new):
            self.discard()
            index._build(after)
            return "built whole"
        written = {pid for segment in new for pid in segment.ids}
        for segment in current.segments:
            segment.deleted.update(row for row, pid in enumerate(segment.ids) if pid in written)
        latest: set[str] = set()  # a paper written twice in this run: its last row lives
        for segment in reversed(new):
            for row, pid in enumerate(segment.ids):
                if pid not in self.again:
                    continue
                if pid in latest:
                    segment.deleted.add(row)
                latest.add(pid)
        everything = [*current.segments, *new]
        rows = sum(len(s.ids) for s in everything)
        if sum(len(s.deleted) for s in everything) > rows // 4 and current.segments:
            self.discard()
            index._build(after)  # a quarter of the rows are dead
            return "built whole"
        small = [s for s in everything if len(s.ids) < SEGMENT_PAPERS // 10]
        kept = everything
        if len(small) >= SMALL_SEGMENTS:  # merged into one, read back from the store
            kept = [s for s in everything if s not in small]
            live = sorted({p for s in small for row, p in enumerate(s.ids) if row not in s.deleted})
            papers: dict[str, list[Hit]] = {}
            vectors: dict[str, np.ndarray] | None = {} if self.vectors else None
            for start in range(0, len(live), 1000):
                some = index.store.paper_chunks(live[start : start + 1000])
                papers.update(some)
                if vectors is not None:
                    ids = [c.chunk_id for chunks in some.values() for c in chunks]
                    vectors.update(index.store.vectors(ids))
            if papers:  # none left alive: no empty segment
                kept.append(index._save(draft_of(papers, vectors), index.path))
        index._publish(index.path, Lexicon(kept), after, whole=False)
        listed = {s.name for s in kept}
        for folder in index.path.glob("seg-*"):  # merged, or left by an interrupted ingest
            if folder.name not in listed:
                shutil.rmtree(folder, ignore_errors=True)
        if not new:
            return "kept (no paper's text changed)"
        added = sum(len(s.ids) - len(s.deleted) for s in new)
        what = "a segment" if len(new) == 1 else f"{len(new)} segments"
        merged = f", {len(small)} small segments merged" if kept is not everything else ""
        return f"{what} of {added} papers added{merged}"


def draft_of(papers: dict[str, list[Hit]], vectors: dict[str, np.ndarray] | None) -> Draft:
    """A draft of these papers, with their chunk vectors (by chunk id) when `vectors` holds
    them all (each is taken out of `vectors` once used)."""
    draft = Draft()
    for pid in sorted(papers):
        group = sorted(papers[pid], key=lambda c: c.metadata["chunk"])
        dense = None
        if vectors is not None and all(c.chunk_id in vectors for c in group):
            dense = (
                np.array([c.metadata["chunk"] for c in group]),
                np.stack([vectors.pop(c.chunk_id) for c in group]),
            )
        draft.add(pid, paper_terms(group[0].metadata["title"], [c.text for c in group]), dense)
    return draft


def fill_metadata(copies: ChunkTexts, page: list[Hit]) -> ChunkTexts | None:
    """Copy a page's metadata into the texts file where it has none (`rag.texts`); None
    from the first page it cannot write (a read-only index): the copies are not needed to
    search, only to search without opening Chroma's index."""
    try:
        copies.put_metadata([h.chunk_id for h in page], [h.metadata for h in page], missing=True)
    except (sqlite3.Error, OSError) as exc:
        log.info("metadata not copied beside the texts (%s)", exc)
        return None
    return copies


def lacking_metadata(store: Store) -> ChunkTexts | None:
    """The store's texts file, when some of its chunks have no copy of their metadata or
    some papers no facets."""
    copies = store.texts
    if copies is None or (copies.facets_complete() and not copies.lacks_metadata()):
        return None
    return copies
