"""An answer's text and its sources -> claims, each with the evidence its citations give it.

An answer (or a summary) is cut into claims: sentences and bullet items, each keeping its `[n]`
markers. For each claim and each source it cites, the abstract's closest passage is its
evidence, with a support probability (`rag.support`). Verdicts: `supported`, `weak` (some
support), `unsupported` (the cited source does not say it), `uncited` (a factual sentence with
no marker). When another retrieved source supports an unsupported or uncited claim clearly
better, it is named (`better_source`) and, with citation repair on, the claim is re-cited to
it; a claim no source supports is flagged, never re-cited.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rag.embed import embed_cached
from rag.support import ClaimText, Evidence, SourceText

if TYPE_CHECKING:
    from rag.embed import Embedder

CITATION = re.compile(r"\[\s*(-?\d{1,9}(?:\s*[,;]\s*-?\d{1,9})*)\s*\]")
"""A citation marker: [1], [1, 2], [1; 3]; [-1] is one too (no source has that number). A
longer run of digits is no marker (and no crash: Python will not convert 5,000 digits)."""
MARKER_NUMBER = re.compile(r"-?\d+")


class Numbered(Protocol):
    n: int


S = TypeVar("S", bound=Numbered)

BETTER_MIN = 0.5
"""Support another source must give a claim to be named its better source: the typical support
of a true citation (the median true pair of the labelled set scores above 0.9, the 95th
percentile of wrong-paper pairs 0.16)."""
BETTER_MARGIN = 0.25
"""How much more support than the cited sources a better source must give."""

VERDICTS = ("supported", "weak", "unsupported", "uncited")
MIN_CLAIM_WORDS = 4  # shorter segments ("Sources:", "In short,") are not claims

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
    found = (int(x) for m in CITATION.finditer(text) for x in MARKER_NUMBER.findall(m.group(1)))
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
        # A bullet item is one claim, whatever its sentences (a quoted passage, say); a
        # paragraph is cut into sentences.
        bullet = BULLET.match(line) and line.strip()
        for start, end in [(0, len(line))] if bullet else _sentences(line):
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


# A marker used as a name ("Source [7] shows", "as reported in [7]"): when it names no source,
# dropping it alone would leave "Source  shows"; the words become a neutral stand-in instead.
NOUN_STANDINS = {
    "source": "a source",
    "paper": "a paper",
    "study": "a study",
    "work": "a work",
    "article": "an article",
    "reference": "a reference",
    "ref": "a reference",
    "sources": "some sources",
    "papers": "some papers",
    "studies": "some studies",
    "works": "some works",
}
NAMED_BY_MARKER = re.compile(
    r"\b("
    + "|".join(NOUN_STANDINS)
    + r"|in|by|from|see|to|of|per)\s*"
    + r"(\[\s*-?\d{1,9}(?:\s*[,;]\s*-?\d{1,9})*\s*\])",
    re.IGNORECASE,
)


GIANT_MARKER = re.compile(r"\[\s*-?\d{10,}(?:\s*[,;]\s*-?\d+)*\s*\]")


def resolve_citations(text: str, sources: Sequence[S]) -> tuple[str, list[S], list[int]]:
    """Keep `[n]` markers that name a source, drop the others from the text and report them.

    Returns the cleaned text, the cited sources in order of first citation, and the dropped
    numbers (each once, in order of appearance).
    """
    by_n = {s.n: s for s in sources}
    cited: dict[int, S] = {}
    dropped: list[int] = []

    def fix(match: re.Match[str]) -> str:
        numbers = [int(x) for x in MARKER_NUMBER.findall(match.group(1))]
        keep = [n for n in numbers if n in by_n]
        for n in numbers:
            if n in by_n:
                cited.setdefault(n, by_n[n])
            elif n not in dropped:
                dropped.append(n)
        return "".join(f"[{n}]" for n in keep)

    def unnamed(match: re.Match[str]) -> str:
        numbers = [int(x) for x in MARKER_NUMBER.findall(match.group(2))]
        if any(n in by_n for n in numbers):
            return match.group(0)
        dropped.extend(n for n in numbers if n not in dropped)
        word = match.group(1)
        if word.lower() in NOUN_STANDINS:
            standin = NOUN_STANDINS[word.lower()]
            return standin[0].upper() + standin[1:] if word[0].isupper() else standin
        return f"{word} one of the sources"

    cleaned = GIANT_MARKER.sub("", text)  # no source has a ten-digit number
    cleaned = NAMED_BY_MARKER.sub(unnamed, cleaned)
    cleaned = CITATION.sub(fix, cleaned)
    cleaned = re.sub(r"[ \t]+([.,;:])", r"\1", cleaned)
    cleaned = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", cleaned).strip()
    return cleaned, list(cited.values()), dropped


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


def grounded(verdicts: Iterable[str]) -> bool:
    """Whether a text's citations carry it, from its claims' verdicts: some claim is supported
    by a paper it cites, and at least half its claims have support (supported or weak). A
    model that cites nothing, cites the wrong papers or invents its facts is not grounded."""
    found = list(verdicts)
    supported = found.count("supported")
    return supported > 0 and 2 * (supported + found.count("weak")) >= len(found)


def tally(claims: Sequence[Claim]) -> dict[str, int]:
    """How many claims got each verdict."""
    counts = dict.fromkeys(VERDICTS, 0)
    for claim in claims:
        counts[claim.verdict] = counts.get(claim.verdict, 0) + 1
    return counts
