"""BM25 segments: papers' terms -> a bm25s index (built with NumPy, saved and loaded by
bm25s), and a set of segments scored as one index over the whole collection."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.nearest import DenseRows, nearest

K1, B = 1.5, 0.75  # bm25s's defaults (Lucene's BM25)
DOC_FREQ_KEPT = 100_000  # terms whose document frequency a loaded index keeps


def bm25s_module() -> Any:
    import bm25s

    # bm25s sets its logger to DEBUG on import, which floods any configured root handler.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def idf(df: Any, n: float) -> Any:
    """bm25s's (Lucene's) IDF, for a number or an array of document frequencies."""
    return np.log(1 + (n - df + 0.5) / (df + 0.5))


class Draft:
    """Papers' BM25 terms, gathered as they are read: each term kept as its number in this
    draft's vocabulary (4 bytes a term, not a string object each), so a segment of 50,000
    abstracts takes some 30 MB until it is built. A paper added again replaces its terms.
    Papers given with their chunk vectors (chunk numbers, rows) keep those too: the segment
    then serves dense searches (`rag.nearest`), when every paper had them."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.ids: list[str] = []
        self.docs: list[np.ndarray] = []
        self.rows: dict[str, int] = {}
        self.vectors: list[tuple[np.ndarray, np.ndarray] | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(
        self, paper_id: str, terms: list[str], vectors: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        vocab = self.vocab
        doc = np.fromiter(
            (vocab.setdefault(t, len(vocab)) for t in terms), dtype=np.int32, count=len(terms)
        )
        if vectors is not None:
            vectors = (np.asarray(vectors[0], np.int32), np.asarray(vectors[1], np.float32))
        row = self.rows.get(paper_id)
        if row is None:
            self.rows[paper_id] = len(self.ids)
            self.ids.append(paper_id)
            self.docs.append(doc)
            self.vectors.append(vectors)
        else:
            self.docs[row] = doc
            self.vectors[row] = vectors

    def dense(self) -> DenseRows | None:
        """The papers' chunk vectors, when every paper came with them."""
        parts = self.vectors
        if not parts or any(p is None for p in parts):
            return None
        return DenseRows.of(parts)  # type: ignore[arg-type]

    def model(self) -> Any:
        """A bm25s index of these papers, the scores bm25s itself computes (method "lucene",
        k1 1.5, b 0.75), as one sparse matrix built by NumPy rather than bm25s's per-document
        Python loop (a fifth of the time at 50,000 papers)."""
        n, width = len(self.docs), max(len(self.vocab), 1)
        lengths = np.fromiter((len(d) for d in self.docs), dtype=np.int64, count=n)
        terms = np.concatenate(self.docs) if n else np.zeros(0, dtype=np.int32)
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        pairs, tf = np.unique(rows * width + terms, return_counts=True)
        doc, term = pairs // width, pairs % width
        df = np.bincount(term, minlength=width)
        weights = idf(df.astype(np.float64), n).astype(np.float32)
        norm = K1 * ((1 - B) + B * lengths / max(float(lengths.mean()) if n else 1.0, 1e-9))
        tf = tf.astype(np.float32)
        scores = weights[term] * (tf / (norm[doc] + tf))
        order = np.lexsort((doc, term))
        model = bm25s_module().BM25()
        model.nonoccurrence_array = None  # set by bm25s's own indexing: none for "lucene"
        model.scores = {
            "data": scores[order].astype(np.float32),
            "indices": doc[order].astype(np.int32),
            "indptr": np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
            "num_docs": n,
        }
        model.vocab_dict = dict(self.vocab) or {"\u2205": 0}  # bm25s cannot load an empty one
        return model


@dataclass(eq=False)  # compared by identity: which loaded segment, not its contents
class Segment:
    """A bm25s index over some papers (memory-mapped when loaded; None when only saved, as an
    ingest's new ones); rows of papers that a later segment holds anew are `deleted`."""

    name: str
    ids: list[str]
    model: Any
    deleted: set[int] = field(default_factory=set)
    dense: DenseRows | None = None
    """Its papers' chunk vectors (`rag.nearest`), when it keeps them."""

    def __post_init__(self) -> None:
        self.alive = np.ones(len(self.ids), dtype=bool)
        if self.deleted:
            self.alive[np.fromiter(self.deleted, dtype=np.int64)] = False
        self._live_chunks: np.ndarray | None = None

    def live_chunks(self) -> np.ndarray:
        """Per chunk row of `dense`: whether its paper's row is alive here."""
        if self._live_chunks is None:
            assert self.dense is not None
            self._live_chunks = self.dense.expand(self.alive)
        return self._live_chunks

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


class PaperIds(list):
    """A BM25 index's paper ids in row order, which also finds the live row of given papers
    through a sorted array of their hashes, built on first use (16 bytes a paper, not the
    hundred of a dictionary entry)."""

    def __init__(self, ids: list[str], alive: np.ndarray) -> None:
        super().__init__(ids)
        self.alive = alive
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    def rows(self, paper_ids: list[str]) -> dict[str, int]:
        """paper id -> its live row, for those of `paper_ids` the index holds."""
        if self._index is None:
            keys = np.fromiter((hash(p) for p in self), dtype=np.int64, count=len(self))
            order = np.argsort(keys, kind="stable")
            self._index = (keys[order], order)
        keys, order = self._index
        found: dict[str, int] = {}
        for pid in paper_ids:
            key = hash(pid)
            start, end = np.searchsorted(keys, key), np.searchsorted(keys, key, side="right")
            for row in order[start:end].tolist():
                if self.alive[row] and self[row] == pid:
                    found[pid] = row
        return found


class Lexicon:
    """The BM25 index as of one store state: its segments side by side. A term's weight is the
    bm25s score of its segment rescaled to the IDF over all segments, so a paper scores as in
    one index over the whole collection (the length normalisation stays per segment)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        alive = [s.alive for s in segments]
        self.ids = PaperIds(
            [pid for segment in segments for pid in segment.ids],
            np.concatenate(alive) if alive else np.zeros(0, dtype=bool),
        )
        self.papers = len(self.ids) - sum(len(s.deleted) for s in segments)
        self._doc_freq: dict[str, int] = {}

    def doc_freq(self, term: str) -> int:
        """Live papers holding `term` (a tombstoned row is not counted), kept once counted:
        counting a common term over 350,000 papers takes about a millisecond."""
        df = self._doc_freq.get(term)
        if df is None:
            if len(self._doc_freq) >= DOC_FREQ_KEPT:
                self._doc_freq.clear()
            df = self._doc_freq[term] = sum(
                int(np.count_nonzero(s.alive[found[0]]))
                for s in self.segments
                if (found := s.column(term))
            )
        return df

    def idf(self, df: float, n: float) -> float:
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

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
                if not len(rows):
                    continue
                local = self.idf(len(rows), len(segment.ids))
                out[offset + rows] += values * np.float32(weights[term] / local)
            if segment.deleted:
                out[offset : offset + len(segment.ids)][~segment.alive] = 0.0
            offset += len(segment.ids)
        return out


class DenseLexicon:
    """The chunk vectors of a `Lexicon` whose every segment keeps them: nearest chunks, and
    the vectors of given papers, read from the segments (`rag.nearest`)."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.segments = lexicon.segments
        self.offsets = np.cumsum([0] + [len(s.ids) for s in self.segments])

    @classmethod
    def of(cls, lexicon: Lexicon) -> DenseLexicon | None:
        if not lexicon.segments or any(s.dense is None for s in lexicon.segments):
            return None
        return cls(lexicon)

    def nearest(
        self, vector: np.ndarray, n: int, admitted: np.ndarray | None = None
    ) -> list[tuple[str, int, float]]:
        """The `n` live chunks nearest to `vector`, best first: (paper id, chunk number,
        cosine); `admitted` (per paper row of the lexicon) restricts them."""
        parts = []
        for at, segment in enumerate(self.segments):
            allowed = segment.live_chunks()
            if admitted is not None:
                mine = admitted[self.offsets[at] : self.offsets[at + 1]]
                allowed = allowed & segment.dense.expand(mine)  # type: ignore[union-attr]
            parts.append((segment.dense, allowed))
        found = []
        for part, row, score in nearest(parts, vector, n):  # type: ignore[arg-type]
            rows = self.segments[part].dense
            assert rows is not None
            paper = self.segments[part].ids[int(rows.paper_rows(np.array([row]))[0])]
            found.append((paper, int(rows.chunks[row]), score))
        return found

    def paper_vectors(self, paper_ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(chunk numbers, vectors) of each of these papers the index holds."""
        found = {}
        for pid, row in self.lexicon.ids.rows(paper_ids).items():
            at = int(np.searchsorted(self.offsets, row, side="right")) - 1
            rows = self.segments[at].dense
            assert rows is not None
            span = rows.rows_of(row - int(self.offsets[at]))
            found[pid] = (
                np.asarray(rows.chunks[span]),
                rows.read(np.arange(span.start, span.stop)),
            )
        return found
