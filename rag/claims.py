"""An answer's text and its sources -> claims, each with the evidence its citations give it.

An answer (or a summary) is cut into claims: sentences and bullet items, each keeping its `[n]`
markers. For each claim and each source it cites, the sentence or two adjacent sentences of
that abstract closest to it (in meaning and words) are its evidence, scored by a support
probability from four signals combined by a logistic model fitted on a labelled set
(`bench/claims_calibrate.py`, `tests/data/claims.jsonl`, figures in bench/README.md):

* the cosine similarity of the claim and the span (the MiniLM sentence vectors the answer step
  has already computed; a two-sentence span takes the normalised mean of its sentences'),
* the share of the claim's numbers missing from the span ("80%" where the abstract says 95%),
* the share of the claim's content words (stemmed, stop words removed) found in the abstract,
* the share of the claim's names (acronyms, datasets, models) the abstract never mentions.

A claim stating a number its abstract never states is `weak` at best.

Verdicts: `supported`, `weak` (some support), `unsupported` (the cited source does not say it),
`uncited` (a factual sentence with no marker). When another retrieved source supports an
unsupported or uncited claim clearly better, it is named (`better_source`) and, with citation
repair on, the claim is re-cited to it; a claim no source supports is flagged, never re-cited.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.corpus import SENTENCE_END
from rag.embed import embed_cached

if TYPE_CHECKING:
    from rag.embed import Embedder

CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
"""A citation marker: [1], [1, 2], [1; 3]."""

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
BETTER_MIN = 0.5
"""Support another source must give a claim to be named its better source: the typical support
of a true citation (the median true pair of the labelled set scores above 0.9, the 95th
percentile of wrong-paper pairs 0.16)."""
BETTER_MARGIN = 0.25
"""How much more support than the cited sources a better source must give."""

VERDICTS = ("supported", "weak", "unsupported", "uncited")
MIN_CLAIM_WORDS = 4  # shorter segments ("Sources:", "In short,") are not claims
SHORT_SENTENCE = 20  # characters: abstract sentences shorter than this join their neighbour

# Words before a full stop that do not end a sentence.
ABBREVIATIONS = frozenset(
    "al e.g eg i.e ie vs etc fig figs eq eqs cf approx resp no nos dr mr ms prof st sec ch "
    "vol pp ref refs tab jan feb mar apr jun jul aug sep sept oct nov dec inc ltd co".split()
)
# A sentence end: . ! or ? (and closing quotes or brackets), then any citation markers, then
# space before something that can start a sentence.
BOUNDARY = re.compile(
    r"(?<=[.!?])([\"')\]]*(?:\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\])*)\s+"
    r"(?=[\"'(]?[A-Z0-9*_]|\[(?!\s*\d))"
)
BULLET = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+")
MARKUP = re.compile(r"\*\*([^*]+)\*\*|__([^_]+)__|[*_`#>]")
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


@dataclass
class Claim:
    """A sentence or bullet item of an answer, with the source numbers it cites."""

    text: str
    citations: list[int]
    evidence: list[Evidence] = field(default_factory=list)
    verdict: str = "uncited"
    better_source: int | None = None
    repaired_from: list[int] | None = None
    """The citations before repair re-cited the claim (None: not repaired)."""
    start: int = 0
    end: int = 0
    """Where the claim stands in the text it was cut from."""

    @property
    def support(self) -> float:
        """The best support any cited source gives (0 without citations)."""
        return max((e.score for e in self.evidence), default=0.0)

    def judged(self) -> str:
        """The verdict its evidence gives it: the best of its citations'."""
        if not self.evidence:
            return "uncited"
        return max((e.verdict for e in self.evidence), key=VERDICTS[::-1].index)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "citations": self.citations,
            "evidence": [e.to_json() for e in self.evidence],
            "verdict": self.verdict,
            "better_source": self.better_source,
            "repaired_from": self.repaired_from,
        }


def citation_numbers(text: str) -> list[int]:
    """The numbers `text` cites, each once, in order of first citation."""
    found = (int(x) for m in CITATION.finditer(text) for x in re.findall(r"\d+", m.group(1)))
    return list(dict.fromkeys(found))


def plain(text: str) -> str:
    """A claim as prose: no citation markers, Markdown emphasis or bullet."""
    text = CITATION.sub(" ", BULLET.sub("", text))
    text = MARKUP.sub(lambda m: m.group(1) or m.group(2) or " ", text)
    return re.sub(r"\s+([.,;:!?])", r"\1", " ".join(text.split()))


def split_claims(text: str) -> list[Claim]:
    """The claims of `text`: each bullet item and each sentence of a paragraph, with its
    citation markers (a marker after the full stop belongs to the sentence before it).
    Segments too short to state anything, headings and lines ending in a colon are left out."""
    claims = []
    offset = 0
    for line in text.splitlines(keepends=True):
        for start, end in _sentences(line):
            segment = line[start:end].strip()
            if _is_claim(segment):
                at = offset + start + (len(line[start:end]) - len(line[start:end].lstrip()))
                claims.append(Claim(segment, citation_numbers(segment), start=at))
                claims[-1].end = at + len(segment)
        offset += len(line)
    return claims


def _sentences(line: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in BOUNDARY.finditer(line):
        cut = match.start() + len(match.group(1))  # the markers stay with the sentence
        if _abbreviation_before(line, match.start()) or re.fullmatch(
            r"\s*\d{1,2}\.", line[start : match.start()]
        ):
            continue  # "et al.", "e.g.", or the number of a list item ("1.")
        spans.append((start, cut))
        start = cut
    spans.append((start, len(line)))
    return [(a, b) for a, b in spans if line[a:b].strip()]


def _abbreviation_before(text: str, stop: int) -> bool:
    """Whether the full stop ending at `stop` closes an abbreviation or an initial."""
    if stop == 0 or text[stop - 1] != ".":
        return False
    word = re.search(r"([\w.]+)\.$", text[:stop])
    if not word:
        return False
    token = word.group(1).lower()
    return token in ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _is_claim(segment: str) -> bool:
    prose = plain(segment)
    if not prose or prose.endswith(":") or len(prose.split()) < MIN_CLAIM_WORDS:
        return False
    if segment.startswith("[") and segment.endswith("]") and not CITATION.fullmatch(segment):
        return False  # a note of ours in brackets ("[answer interrupted: ...]")
    unlabelled = re.sub(r"^\*\*[^*]+\*\*\s*", "", segment.strip())
    if re.fullmatch(r"_[^_].*_", unlabelled):
        return False  # a note of ours in italics ("_Extractive overview ..._")
    return not re.match(r"^(sources|references)\b", prose, re.IGNORECASE)


# --- support scores ----------------------------------------------------------------------------


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
    from rag.retrieve import tokenize

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
        sentences = abstract_sentences(body)
        vectors = embed_cached(embedder, sentences)
        spans, rows = list(sentences), list(vectors)
        for i in range(len(sentences) - 1):
            spans.append(f"{sentences[i]} {sentences[i + 1]}")
            mean = vectors[i] + vectors[i + 1]
            rows.append(mean / (np.linalg.norm(mean) or 1.0))
        words = [content_words(s) for s in spans]
        lowered = {w.lower() for w in re.findall(r"[A-Za-z][\w-]*", body)}
        return cls(
            n,
            spans,
            np.asarray(rows),
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


@dataclass
class Checker:
    """Scores claims against numbered sources (bodies by source number)."""

    bodies: dict[int, str]
    embedder: Embedder
    _texts: dict[int, SourceText] = field(default_factory=dict)

    def source(self, n: int) -> SourceText:
        if n not in self._texts:
            self._texts[n] = SourceText.of(n, self.bodies[n], self.embedder)
        return self._texts[n]

    def score(self, claims: Sequence[Claim], repair: bool = True) -> None:
        """Evidence, verdict and better source of each claim; re-cited when `repair`."""
        if not claims:
            return
        proses = [plain(c.text) for c in claims]
        vectors = embed_cached(self.embedder, proses)
        for claim, prose, vector in zip(claims, proses, vectors, strict=True):
            text = ClaimText.of(prose, vector)
            known = [n for n in claim.citations if n in self.bodies]
            claim.evidence = [self.source(n).best(text) for n in known]
            claim.verdict = claim.judged()
            if claim.verdict in ("unsupported", "uncited"):
                claim.better_source = self._better(claim, text)
                if repair and claim.better_source is not None:
                    self._recite(claim, claim.better_source, text)

    def _better(self, claim: Claim, text: ClaimText) -> int | None:
        others = [n for n in self.bodies if n not in claim.citations]
        scored = [self.source(n).best(text) for n in others]
        best = max(scored, key=lambda e: e.score, default=None)
        if best is None or best.verdict != "supported" or best.score < BETTER_MIN:
            return None
        return best.n if best.score - claim.support >= BETTER_MARGIN else None

    def _recite(self, claim: Claim, n: int, text: ClaimText) -> None:
        claim.repaired_from = list(claim.citations)
        claim.text = recite(claim.text, n)
        claim.citations = [n]
        claim.evidence = [self.source(n).best(text)]
        claim.verdict = claim.judged()


def recite(text: str, n: int) -> str:
    """`text` citing [n] instead of its markers (or in addition to none, before its final
    punctuation)."""
    if CITATION.search(text):
        first = True

        def swap(_: re.Match[str]) -> str:
            nonlocal first
            keep, first = first, False
            return f"[{n}]" if keep else ""

        return re.sub(r"\s+([.,;:!?])", r"\1", CITATION.sub(swap, text)).rstrip()
    stripped = text.rstrip()
    if stripped and stripped[-1] in ".!?":
        return f"{stripped[:-1]} [{n}]{stripped[-1]}"
    return f"{stripped} [{n}]"


def check_text(
    text: str,
    bodies: dict[int, str],
    embedder: Embedder,
    repair: bool = True,
    judge: Callable[[list[Claim]], None] | None = None,
) -> tuple[str, list[Claim]]:
    """The claims of `text` scored against `bodies` (source number -> abstract); with `repair`,
    the text with re-cited claims rewritten. `judge` may revise verdicts afterwards (an LLM)."""
    claims = split_claims(text)
    Checker(bodies, embedder).score(claims, repair)
    if judge is not None:
        judge(claims)
    if not any(c.repaired_from is not None for c in claims):
        return text, claims
    return rewrite(text, claims), claims


def rewrite(text: str, claims: Sequence[Claim]) -> str:
    """`text` with each claim's span replaced by the claim's (possibly re-cited) text; the
    claims' offsets then point into the new text."""
    out, at, length = [], 0, 0
    for claim in sorted(claims, key=lambda c: c.start):
        out.append(text[at : claim.start])
        length += claim.start - at
        at = claim.end
        claim.start, claim.end = length, length + len(claim.text)
        out.append(claim.text)
        length += len(claim.text)
    out.append(text[at:])
    return "".join(out)


FLAGS = {
    "weak": "⚠ weakly supported by {cited}",
    "unsupported": "⚠ not supported by {cited}",
    "uncited": "⚠ no citation",
}


def flag(claim: Claim) -> str:
    """A short note for a claim the reader should check ("" when it is supported)."""
    if claim.verdict not in FLAGS:
        return ""
    cited = ", ".join(f"[{n}]" for n in claim.citations) or "its sources"
    note = FLAGS[claim.verdict].format(cited=cited)
    if claim.better_source is not None and claim.repaired_from is None:
        note += f"; [{claim.better_source}] supports it"
    return f"({note})"


def flagged(text: str, claims: Sequence[Claim]) -> str:
    """`text` with a flag after each claim that is not supported."""
    out, at = [], 0
    for claim in sorted(claims, key=lambda c: c.start):
        note = flag(claim)
        if note and text[claim.start : claim.end] == claim.text:
            out.append(text[at : claim.end])
            out.append(f" {note}")
            at = claim.end
    out.append(text[at:])
    return "".join(out)


def tally(claims: Sequence[Claim]) -> dict[str, int]:
    """How many claims got each verdict."""
    counts = dict.fromkeys(VERDICTS, 0)
    for claim in claims:
        counts[claim.verdict] = counts.get(claim.verdict, 0) + 1
    return counts
