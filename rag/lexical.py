"""Text -> BM25 terms, and a store's BM25 index (bm25s): built from the store, saved beside it,
loaded by every later process, rebuilt when the store changes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rag.store import Store
    from rag.table import Hit

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


def _bm25s() -> Any:
    import bm25s

    # bm25s sets its logger to DEBUG on import, which floods any configured root handler.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


SEGMENT_PAPERS = 50_000  # papers per segment of a whole build: bounds the memory it takes
SMALL_SEGMENTS = 8  # segments added by ingests (each under a tenth of that) before a merge
FORMAT = 2
LOCK_NAME = ".ingest.lock"  # held by an ingest (rag.ingest.ingest_lock)


@dataclass(eq=False)  # compared by identity: which loaded segment, not its contents
class Segment:
    """A bm25s index over some papers (memory-mapped when loaded); rows of papers that a later
    segment holds anew are `deleted`."""

    name: str
    ids: list[str]
    model: Any
    deleted: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.alive = np.ones(len(self.ids), dtype=bool)
        if self.deleted:
            self.alive[np.fromiter(self.deleted, dtype=np.int64)] = False

    def column(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, bm25s scores) of the papers holding `term`."""
        at = (getattr(self.model, "vocab_dict", None) or {}).get(term)
        if at is None:
            return None
        scores = self.model.scores
        start, end = int(scores["indptr"][at]), int(scores["indptr"][at + 1])
        return np.asarray(scores["indices"][start:end]), np.asarray(scores["data"][start:end])

    def record(self) -> dict[str, Any]:
        return {"dir": self.name, "paper_ids": self.ids, "deleted": sorted(self.deleted)}


class Lexicon:
    """The BM25 index as of one store state: its segments side by side. A term's weight is the
    bm25s score of its segment rescaled to the IDF over all segments, so a paper scores as in
    one index over the whole collection (the length normalisation stays per segment)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.ids = [pid for segment in segments for pid in segment.ids]
        self.papers = len(self.ids) - sum(len(s.deleted) for s in segments)

    def doc_freq(self, term: str) -> int:
        """Live papers holding `term` (a tombstoned row is not counted)."""
        return sum(
            int(np.count_nonzero(s.alive[found[0]]))
            for s in self.segments
            if (found := s.column(term))
        )

    def idf(self, df: float, n: float) -> float:
        return math.log(1 + (n - df + 0.5) / (df + 0.5))  # bm25s's (Lucene's) IDF

    def scores(self, terms: list[str]) -> np.ndarray:
        out = np.zeros(len(self.ids), dtype=np.float32)
        weights = {t: self.idf(self.doc_freq(t), self.papers) for t in set(terms)}
        offset = 0
        for segment in self.segments:
            for term in terms:
                found = segment.column(term)
                if found is None:
                    continue
                rows, values = found
                local = self.idf(len(rows), len(segment.ids))
                out[offset + rows] += values * np.float32(weights[term] / local)
            if segment.deleted:
                out[offset : offset + len(segment.ids)][~segment.alive] = 0.0
            offset += len(segment.ids)
        return out


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

    def _ingesting(self) -> bool:
        """Whether an ingest holds this index's lock (here or in another process)."""
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
        bm25s = _bm25s()
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
                    )
                    for s in saved["segments"]
                ]
            )
        except (OSError, ValueError, KeyError, TypeError):
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
        for page in self.store.chunk_pages():
            for chunk in page:
                parts = pending.setdefault(chunk.metadata["paper_id"], [])
                parts.append(chunk)
                if len(parts) >= int(chunk.metadata.get("n_chunks", 1)):
                    ready[chunk.metadata["paper_id"]] = pending.pop(chunk.metadata["paper_id"])
            if len(ready) >= SEGMENT_PAPERS:
                segments.append(self._segment(ready, tmp))
                ready = {}
        flushed = {pid for segment in segments for pid in segment.ids}
        for pid, parts in pending.items():  # cut short by an interrupted ingest: what there is
            if pid not in flushed:
                ready.setdefault(pid, []).extend(parts)
        if ready:
            segments.append(self._segment(ready, tmp))
        lexicon = Lexicon([s for s in segments if s.ids])
        if publish and self.store.stamp() == stamp:
            self._publish(tmp, lexicon, stamp, whole=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return lexicon

    def _segment(self, papers: dict[str, list[Hit]], folder: Path) -> Segment:
        bm25s = _bm25s()
        ids = sorted(papers)
        docs = []
        for pid in ids:
            group = sorted(papers[pid], key=lambda c: c.metadata["chunk"])
            docs.append(tokenize(" ".join([group[0].metadata["title"], *(c.text for c in group)])))
        model = bm25s.BM25()
        if not any(docs):  # no paper has a term: an empty vocabulary breaks bm25s
            docs[0] = ["\u2205"]
        model.index(docs, show_progress=False)
        name = f"seg-{uuid.uuid4().hex[:12]}"
        try:
            model.save(str(folder / name))
        except OSError as exc:  # a read-only index still answers, from memory
            log.info("BM25 segment not saved (%s); it is rebuilt per process", exc)
        return Segment(name, ids, model)

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

    def extend(
        self, changed: set[str] | None, before: tuple[int, int] | None, after: tuple[int, int]
    ) -> str:
        """After an ingest (under its lock) that changed the papers `changed` (None: too many
        to list), taking the store from stamp `before` to `after`: add them as a segment to
        the index saved at `before`, or build the index whole when there is none, it is not at
        `before`, or most of it changed. Says what was done."""
        current = self._load(before) if changed is not None and before is not None else None
        if current is None:  # none saved, or not at `before`: whole
            self._build(after)
            return "built whole"
        tombstones = sum(len(s.deleted) for s in current.segments) + len(changed)
        if len(changed) > current.papers // 4 or tombstones > len(current.ids) // 4:
            self._build(after)  # most of it changed, or a quarter of its rows are dead
            return "built whole"
        small = [s for s in current.segments if len(s.ids) < SEGMENT_PAPERS // 10]
        kept = current.segments
        wanted = set(changed)
        if len(small) >= SMALL_SEGMENTS:  # merge the small ones with the new papers
            kept = [s for s in current.segments if s not in small]
            for s in small:
                wanted.update(pid for row, pid in enumerate(s.ids) if row not in s.deleted)
        for segment in kept:
            segment.deleted.update(row for row, pid in enumerate(segment.ids) if pid in changed)
        papers: dict[str, list[Hit]] = {}
        listed = sorted(wanted)
        for start in range(0, len(listed), 1000):
            papers.update(self.store.paper_chunks(listed[start : start + 1000]))
        fresh = sorted(papers)
        segments = [
            *kept,
            *(
                self._segment({p: papers[p] for p in fresh[i : i + SEGMENT_PAPERS]}, self.path)
                for i in range(0, len(fresh), SEGMENT_PAPERS)
            ),
        ]
        self._publish(self.path, Lexicon(segments), after, whole=False)
        for s in current.segments:
            if s not in kept:
                shutil.rmtree(self.path / s.name, ignore_errors=True)
        merged = (
            f", {len(small)} small segments merged into it" if kept is not current.segments else ""
        )
        return f"a segment of {len(papers)} papers added{merged}"

    def scores(self, query: str) -> tuple[list[str], np.ndarray]:
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
