"""Text -> BM25 terms, and a store's BM25 index (bm25s): built from the store, saved beside it,
loaded by every later process, rebuilt when the store changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import threading
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


class LexicalIndex:
    """BM25 (bm25s) over a store's whole papers: the title and every chunk of the abstract.

    The index is derived from the store and saved beside it (`<index>/bm25/<collection>/`)
    with the store's stamp; a search first checks the stamp (about a millisecond), so after
    any ingest, here or in another process, the next search rebuilds it (the bundled corpus:
    about 1 s) and every later process just loads it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._model: Any = None
        self._paper_ids: list[str] = []
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.store.settings.index_dir / "bm25" / self.store.settings.collection

    def current(self) -> tuple[Any, list[str]]:
        """The model and its paper ids, as of the store's stamp (loaded or rebuilt)."""
        stamp = self.store.stamp()
        with self._lock:
            if stamp != self._stamp:
                loaded = self._load(stamp)
                self._model, self._paper_ids = loaded or self._build(stamp)
                self._stamp = stamp
            return self._model, self._paper_ids

    def _load(self, stamp: tuple[int, int]) -> tuple[Any, list[str]] | None:
        bm25s = _bm25s()
        try:
            saved = json.loads((self.path / "papers.json").read_text(encoding="utf-8"))
            if tuple(saved["stamp"]) != stamp or saved["tokenizer"] != TOKENIZER_VERSION:
                return None
            return bm25s.BM25.load(str(self.path / "model")), list(saved["paper_ids"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing, stale or damaged: rebuild

    def _build(self, stamp: tuple[int, int]) -> tuple[Any, list[str]]:
        bm25s = _bm25s()
        papers: dict[str, list[Hit]] = {}
        for chunk in self.store.all_chunks():
            papers.setdefault(chunk.metadata["paper_id"], []).append(chunk)
        ids = sorted(papers)
        model = bm25s.BM25()
        if ids:
            docs = []
            for pid in ids:
                group = sorted(papers[pid], key=lambda c: c.metadata["chunk"])
                docs.append(
                    tokenize(" ".join([group[0].metadata["title"], *(c.text for c in group)]))
                )
            model.index(docs, show_progress=False)
            self._save(model, ids, stamp)
        return model, ids

    def _save(self, model: Any, ids: list[str], stamp: tuple[int, int]) -> None:
        """Written to a new directory then renamed over the old one: readers never see half."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            model.save(str(tmp / "model"))
            record = {"stamp": list(stamp), "tokenizer": TOKENIZER_VERSION, "paper_ids": ids}
            (tmp / "papers.json").write_text(json.dumps(record), encoding="utf-8")
            old = self.path.with_name(f".{self.path.name}.{os.getpid()}.old")
            if self.path.exists():
                self.path.rename(old)
            tmp.rename(self.path)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:  # a read-only index still answers, from memory
            log.info("BM25 index not saved (%s); it is rebuilt per process", exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def scores(self, query: str) -> tuple[list[str], np.ndarray]:
        """Every paper's BM25 score for `query`: (paper ids, scores in the same order)."""
        model, ids = self.current()
        vocab = getattr(model, "vocab_dict", None) or {}
        tokens = [t for t in tokenize(query) if t in vocab]
        if not tokens or not ids:
            return ids, np.zeros(len(ids), dtype=np.float32)
        return ids, np.asarray(model.get_scores(tokens), dtype=np.float32)

    def query_weight(self, query: str) -> float:
        """The BM25 score of an imagined paper holding each content term of `query` once, at
        the average length: the sum of the terms' IDF, terms no paper holds counted too, the
        question's own words (`QUESTION_WORDS`) left out. A real paper's score over it says how
        much of the query's subject it matches word for word."""
        model, ids = self.current()
        if not ids:
            return 0.0  # an empty collection: nothing to match
        counts = self._doc_freqs(model)
        vocab = getattr(model, "vocab_dict", None) or {}
        total = 0.0
        for term in set(tokenize(query)) - _question_terms():
            at = vocab.get(term)
            df = int(counts[at]) if at is not None and at < len(counts) else 0
            total += math.log(1 + (len(ids) - df + 0.5) / (df + 0.5))  # bm25s's (Lucene's) IDF
        return total

    @staticmethod
    def _doc_freqs(model: Any) -> np.ndarray:
        """Papers holding each vocabulary term: the lengths of the term columns of bm25s's
        score matrix (cached on the model)."""
        counts = getattr(model, "_rag_doc_freqs", None)
        if counts is None:
            counts = np.diff(np.asarray(model.scores["indptr"]))
            model._rag_doc_freqs = counts
        return counts
