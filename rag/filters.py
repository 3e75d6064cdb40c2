"""What a person typed (--since, --category, --source) -> which papers a search or an ingest keeps.

One `Filter` runs three ways with the same rules: as a Chroma `where` clause, over chunk
metadata held in memory (the exact table, BM25), and over papers being read (ingest).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from rag.corpus import Paper
from rag.errors import InputError


def date_number(iso_date: str) -> int:
    """2024-01-15 -> 20240115: Chroma compares numbers, not strings."""
    return int(iso_date[:10].replace("-", ""))


@dataclass(frozen=True)
class Filter:
    """Which papers a search may return, or an ingest may keep: dated on or after `since`
    (YYYY-MM-DD), in any of `categories` (arXiv's, e.g. cs.LG), from any of `sources` (the
    file a paper was read from). Empty parts do not filter; the parts that are set must all
    hold."""

    since: str | None = None
    categories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.since or self.categories or self.sources)

    @classmethod
    def from_text(
        cls,
        since: str | None = None,
        categories: str | Sequence[str] | None = "",
        sources: Sequence[str] | None = (),
    ) -> Filter:
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
        """The Chroma `where` filter (None when nothing is filtered). Chroma compares case, so
        each category is asked for as typed and in the usual spellings (cs.lg: cs.LG)."""
        parts: list[dict[str, Any]] = []
        if self.since:
            parts.append({"date_num": {"$gte": date_number(self.since)}})
        spellings = tuple(dict.fromkeys(s for c in self.categories for s in _spellings(c)))
        for key, values in (("categories", spellings), ("sources", self.sources)):
            alternatives = [{key: {"$contains": v}} for v in values]
            if alternatives:
                parts.append(alternatives[0] if len(alternatives) == 1 else {"$or": alternatives})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}

    def matches(self, meta: dict[str, Any]) -> bool:
        """Whether a chunk with this metadata passes (what `where()` asks of Chroma)."""
        return self._passes(
            meta.get("date_num", 0), meta.get("categories") or (), meta.get("sources") or ()
        )

    def admits(self, paper: Paper) -> bool:
        """Whether a paper being read passes."""
        return self._passes(
            date_number(paper.date) if paper.date else 0,
            paper.categories,
            [listing.source for listing in paper.listings],
        )

    def _passes(self, date_num: int, categories: Collection[str], sources: Collection[str]) -> bool:
        if self.since and date_num < date_number(self.since):
            return False
        if self.categories and not {c.casefold() for c in self.categories} & {
            c.casefold() for c in categories
        }:
            return False
        return not self.sources or bool(set(self.sources) & set(sources))

    def describe(self) -> str:
        parts = [f"since {self.since}"] if self.since else []
        if self.categories:
            parts.append("category " + " or ".join(self.categories))
        if self.sources:
            parts.append("source " + " or ".join(self.sources))
        return ", ".join(parts)


def _spellings(category: str) -> list[str]:
    """A category as typed, and as arXiv spells it (cs.lg: cs.LG; cond-mat.STAT-MECH:
    cond-mat.stat-mech), lower and upper case: the spellings a stored category may have."""
    archive, dot, subject = category.partition(".")
    arxiv = archive.lower() + dot + (subject.upper() if len(subject) <= 2 else subject.lower())
    return list(dict.fromkeys([category, arxiv, category.lower(), category.upper()]))


MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
DATA_FILES = (".jsonl", ".json", ".csv", ".gz")


def date_key(text: str) -> tuple[int, int, int]:
    """A listing date (2024-05-08, or May 8 without a year) as (year, month, day), for order."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", text):
        return int(text[:4]), int(text[5:7]), int(text[8:10])
    found = re.match(r"([A-Za-z]{3})[a-z]*\.? (\d{1,2})", text)
    if found and found[1].lower() in MONTHS:
        return 0, MONTHS.index(found[1].lower()) + 1, int(found[2])
    return 0, 0, 0


def has_year(text: str) -> bool:
    return bool(re.search(r"\b\d{4}\b", text))


def shown_dates(dates: Sequence[str]) -> str:
    """Listing dates for a reader, saying when the page gave no year (May 8 is not a full
    date)."""
    text = ", ".join(sorted(dates, key=date_key))
    return text if all(map(has_year, dates)) else f"{text}, no year on the listing page"


@dataclass
class SourceFacts:
    """One source file of the collection: its papers and their listing dates."""

    name: str
    papers: int = 0
    dates: set[str] = field(default_factory=set)

    def label(self) -> str:
        """A readable name: the user's file name, or for a listing page its date(s)."""
        count = f"{self.papers} paper{'s' * (self.papers != 1)}"
        if PurePath(self.name).suffix.lower() in DATA_FILES or not self.dates:
            kind = self.name if PurePath(self.name).suffix.lower() in DATA_FILES else None
            return f"{kind or 'Listing page without a date'} ({count})"
        dates = sorted(self.dates, key=date_key)
        span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        return f"Listing page of {span} ({count})"


@dataclass
class CollectionFacts:
    """What the filters can use in a collection: its sources, categories and full dates."""

    papers: int = 0
    dated: int = 0
    categories: set[str] = field(default_factory=set)
    sources: dict[str, SourceFacts] = field(default_factory=dict)

    @classmethod
    def of(cls, metadatas: Iterable[dict[str, Any]]) -> CollectionFacts:
        """From chunk metadata (every chunk, or each paper's first)."""
        facts = cls()
        seen: set[str] = set()
        papers: dict[str, set[str]] = {}
        for meta in metadatas:
            pid = meta.get("paper_id", "")
            for source, day in json.loads(meta.get("listings") or "[]"):
                papers.setdefault(source, set()).add(pid)
                entry = facts.sources.setdefault(source, SourceFacts(source))
                if day:
                    entry.dates.add(day)
            if pid in seen:
                continue
            seen.add(pid)
            facts.papers += 1
            facts.dated += "date_num" in meta
            facts.categories.update(meta.get("categories") or ())
        for source, ids in papers.items():
            facts.sources[source].papers = len(ids)
        return facts

    def to_json(self) -> dict[str, Any]:
        return {
            "papers": self.papers,
            "dated": self.dated,
            "categories": sorted(self.categories),
            "sources": {
                s.name: {"papers": s.papers, "dates": sorted(s.dates)}
                for s in self.sources.values()
            },
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> CollectionFacts:
        sources = {
            name: SourceFacts(name, int(s["papers"]), set(s["dates"]))
            for name, s in saved["sources"].items()
        }
        return cls(int(saved["papers"]), int(saved["dated"]), set(saved["categories"]), sources)

    def source_choices(self) -> list[tuple[str, str]]:
        """(readable label, file name) per source, by label; a label two sources share gets
        the file name too."""
        ordered = sorted(
            self.sources.values(),
            key=lambda s: (min(map(date_key, s.dates)) if s.dates else (9999, 0, 0), s.name),
        )
        labels = [s.label() for s in ordered]
        return [
            (f"{label}: {s.name}" if labels.count(label) > 1 else label, s.name)
            for label, s in zip(labels, ordered, strict=True)
        ]

    def undated_listings(self) -> bool:
        """Whether listing dates lack a year (so `since` cannot use them)."""
        return any(not has_year(d) for s in self.sources.values() for d in s.dates)


def nothing_admitted(filters: Filter, papers: int, dated: int) -> str:
    """The one-line reason `filters` admits none of `papers` (`dated`: how many have a full
    date)."""
    line = f"No paper matches the filters ({filters.describe()})"
    if filters.since and dated == 0 and papers:
        return (
            f"{line}: none of the {papers} papers has a full date (listing pages give dates "
            "without a year), so a date filter leaves every one out"
        )
    if filters.since and dated < papers:
        return (
            f"{line}: {papers - dated} of the {papers} papers have no full date (listing "
            "pages give none), which a date filter leaves out"
        )
    if filters.categories and not (filters.since or filters.sources):
        return (
            f"{line}: none of the {papers} papers is in that category (only arXiv records "
            "and files with a categories field give papers categories)"
        )
    return f"{line}: none of the {papers} papers in the collection passes them"
