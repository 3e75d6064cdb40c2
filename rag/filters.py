"""What a person typed (--since, --category, --source) -> which papers a search or an ingest keeps.

One `Filter` runs three ways with the same rules: as a Chroma `where` clause, over chunk
metadata held in memory (the exact table, BM25), and over papers being read (ingest).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
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
        if self.categories and not set(self.categories) & set(categories):
            return False
        return not self.sources or bool(set(self.sources) & set(sources))

    def describe(self) -> str:
        parts = [f"since {self.since}"] if self.since else []
        if self.categories:
            parts.append("category " + " or ".join(self.categories))
        if self.sources:
            parts.append("source " + " or ".join(self.sources))
        return ", ".join(parts)
