"""A claim and an abstract -> the abstract's passage closest to the claim and the probability
that it supports the claim.

An abstract is cut into spans: its sentences and each pair of adjacent sentences. A claim is
compared with a span by four signals, combined by a logistic model fitted on a labelled set
(`bench/claims_calibrate.py`, `tests/data/claims.jsonl`, figures in bench/README.md):

* the cosine similarity of the claim and the span (the MiniLM sentence vectors the answer step
  has already computed; a two-sentence span takes the normalised mean of its sentences'),
* the share of the claim's numbers missing from the span ("80%" where the abstract says 95%),
* the share of the claim's content words (stemmed, stop words removed) found in the abstract,
* the share of the claim's names (acronyms, datasets, models) the abstract never mentions.

A claim stating a number its abstract never states is `weak` at best.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.corpus import SENTENCE_END
from rag.embed import embed_cached

if TYPE_CHECKING:
    from rag.embed import Embedder

FEATURES = ("cosine", "overlap", "missing numbers", "abstract overlap", "missing names")
MODEL = (0, 2, 3, 4)
"""The features the support model weighs (span overlap only picks the evidence span)."""
# The logistic model over `MODEL`'s features, fitted by `python bench/claims_calibrate.py` on
# the dev part of tests/data/claims.jsonl (bias first).
WEIGHTS = (-8.048, 3.918, -5.449, 9.854, -1.314)
SUPPORTED_MIN = 0.170
"""Support probability from which a citation supports its claim."""
WEAK_MIN = 0.146
"""Support probability from which a citation gives a claim some support (`weak`)."""
SHORT_SENTENCE = 20  # characters: abstract sentences shorter than this join their neighbour
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}


@dataclass
class Evidence:
    """The best span of one cited source for one claim, and its support probability."""

    n: int
    quote: str
    score: float
    missing_numbers: list[str] = field(default_factory=list)
    """Numbers of the claim the abstract never states (the verdict is then weak at best)."""

    @property
    def verdict(self) -> str:
        found = verdict(self.score)
        return "weak" if found == "supported" and self.missing_numbers else found

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"n": self.n, "quote": self.quote, "score": round(self.score, 3)}
        if self.missing_numbers:
            data["missing_numbers"] = self.missing_numbers
        return data


def numbers_in(text: str) -> set[str]:
    """The numbers a text states, normalised ("1,000" -> 1000, "95.0" -> 95, "two" -> 2)."""
    found = set()
    for raw in NUMBER.findall(text):
        value = raw.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", raw) else raw
        value = value.replace(",", ".")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        found.add(value)
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in NUMBER_WORDS:
            found.add(NUMBER_WORDS[word])
    return found


def content_words(text: str) -> set[str]:
    """Stemmed content words (BM25's analyser)."""
    from rag.lexical import tokenize

    return set(tokenize(text))


Weights = Sequence[float] | None


def probabilities(features: np.ndarray, weights: Weights = None) -> np.ndarray:
    """Support probabilities of feature rows (all `FEATURES`; the model weighs `MODEL`'s)."""
    w = np.asarray(weights if weights is not None else WEIGHTS, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(w[0] + features[..., list(MODEL)] @ w[1:])))


def names_in(text: str) -> set[str]:
    """Name-like words, lower-cased: acronyms and mixed-case or alphanumeric names (ImageNet,
    GPT-4, CIFAR-10) and capitalised words inside a sentence. An invented dataset or model
    shows up as a name the cited abstract never mentions."""
    found = set()
    for i, word in enumerate(re.findall(r"[A-Za-z][\w-]*", text)):
        has_digit = any(ch.isdigit() for ch in word)
        capitals = sum(ch.isupper() for ch in word)
        if capitals >= 2 or (has_digit and capitals) or (i > 0 and word[0].isupper()):
            found.add(word.lower())
    return found


@dataclass
class ClaimText:
    """What is compared of a claim: its vector, content words, numbers and names."""

    vector: np.ndarray
    words: set[str]
    numbers: set[str]
    names: set[str]

    @classmethod
    def of(cls, prose: str, vector: np.ndarray) -> ClaimText:
        return cls(vector, content_words(prose), numbers_in(prose), names_in(prose))


@dataclass
class SourceText:
    """One source's abstract cut into spans (sentences, and pairs of adjacent ones), with the
    span vectors, content words and numbers, and the abstract's words and names, computed once
    per answer."""

    n: int
    spans: list[str]
    vectors: np.ndarray
    words: list[set[str]]
    numbers: list[set[str]]
    all_words: set[str]
    all_names: set[str]
    all_numbers: set[str]

    @classmethod
    def of(cls, n: int, body: str, embedder: Embedder) -> SourceText:
        spans, rows = spans_of(body, embedder)
        words = [content_words(s) for s in spans]
        lowered = {w.lower() for w in re.findall(r"[A-Za-z][\w-]*", body)}
        return cls(
            n,
            spans,
            rows,
            words,
            [numbers_in(s) for s in spans],
            set().union(*words),
            lowered,
            numbers_in(body),
        )

    def features(self, claim: ClaimText) -> np.ndarray:
        """Per span, the `FEATURES`: cosine to the claim, share of the claim's content words
        the span holds, share of its numbers the span lacks, share of its content words the
        whole abstract holds, share of its names the abstract lacks."""
        rows = np.zeros((len(self.spans), len(FEATURES)), dtype=np.float64)
        rows[:, 0] = self.vectors @ claim.vector
        words, numbers, names = claim.words, claim.numbers, claim.names
        for i in range(len(self.spans)):
            rows[i, 1] = len(words & self.words[i]) / len(words) if words else 0.0
            rows[i, 2] = len(numbers - self.numbers[i]) / len(numbers) if numbers else 0.0
        rows[:, 3] = len(words & self.all_words) / len(words) if words else 0.0
        rows[:, 4] = len(names - self.all_names) / len(names) if names else 0.0
        return rows

    def best(self, claim: ClaimText, weights: Weights = None) -> Evidence:
        """The span closest to the claim (cosine plus word overlap) as its evidence, and the
        support probability the abstract gives the claim through it."""
        rows = self.features(claim)
        at = best_span(rows)
        missing = sorted(claim.numbers - self.all_numbers)
        score = float(probabilities(rows[at], weights))
        return Evidence(self.n, self.spans[at], score, missing)


def best_span(rows: np.ndarray) -> int:
    """The span a claim is checked against: the most similar in meaning and words."""
    return int(np.argmax(rows[:, 0] + rows[:, 1]))


def spans_of(body: str, embedder: Embedder) -> tuple[list[str], np.ndarray]:
    """An abstract's spans, its sentences then each pair of adjacent sentences, and their unit
    vectors (a pair's: the normalised sum of its sentences'; the sentences embedded through the
    process-wide cache, so a question and its answer's claims share them)."""
    sentences = abstract_sentences(body)
    vectors = embed_cached(embedder, sentences)
    pairs = vectors[:-1] + vectors[1:]
    pairs /= np.maximum(np.linalg.norm(pairs, axis=1, keepdims=True), 1e-12)
    spans = sentences + [f"{a} {b}" for a, b in pairwise(sentences)]
    return spans, np.concatenate([vectors, pairs]) if len(pairs) else vectors


def abstract_sentences(body: str) -> list[str]:
    """An abstract's sentences (very short ones joined to the next), at least one."""
    sentences: list[str] = []
    carry = ""
    for part in SENTENCE_END.split(body):
        part = f"{carry} {part}".strip() if carry else part.strip()
        if len(part) <= SHORT_SENTENCE:
            carry = part
            continue
        sentences.append(part)
        carry = ""
    if carry and sentences:
        sentences[-1] = f"{sentences[-1]} {carry}"
    elif carry:
        sentences.append(carry)
    return sentences or [body.strip() or "(empty)"]


def verdict(score: float) -> str:
    if score >= SUPPORTED_MIN:
        return "supported"
    return "weak" if score >= WEAK_MIN else "unsupported"
