"""What the filters can use in a collection (its sources with their listing dates and paper
counts, its categories, how many papers have a full date), kept in the collection's metadata
by each ingest so the UI never scans millions of chunks to offer them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rag.filters import CollectionFacts, SourceFacts

if TYPE_CHECKING:
    from rag.collection import Collection
    from rag.corpus import Paper


class SeenPapers:
    """The paper ids (or other keys) an ingest has read, as 8-byte hashes in sorted runs
    merged as they grow: some 8 bytes a paper instead of a dictionary entry of about a hundred
    (2.5 million papers: 20 MB, not 250)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def add(self, ids: Sequence[str]) -> list[bool]:
        """Record `ids` (distinct); whether each is read for the first time."""
        keys = self._keys(ids)
        seen = self._seen(keys)
        if not seen.all():
            self.runs.append(np.unique(keys[~seen]))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs.append(np.union1d(self.runs.pop(), last))
        return (~seen).tolist()

    def has(self, ids: Sequence[str]) -> list[bool]:
        """Whether each of `ids` was recorded."""
        return self._seen(self._keys(ids)).tolist()

    @staticmethod
    def _keys(ids: Sequence[str]) -> np.ndarray:
        return np.fromiter(
            (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest()) for i in ids),
            dtype=np.uint64,
            count=len(ids),
        )

    def _seen(self, keys: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            seen |= run[at] == keys
        return seen


@dataclass
class RunFacts:
    """What one ingest read: each source's dates, the categories, papers added with a date,
    and per source the papers written that list it for the first time (so each source's
    count is kept without asking the store)."""

    sources: dict[str, set[str]] = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)
    added_dated: int = 0
    gained: dict[str, int] = field(default_factory=dict)

    def add(
        self, papers: dict[str, Paper], written: dict[str, str], gained: dict[str, int]
    ) -> None:
        for pid, paper in papers.items():
            for listing in paper.listings:
                dates = self.sources.setdefault(listing.source, set())
                if listing.date:
                    dates.add(listing.date)
            self.categories.update(paper.categories)
            self.added_dated += bool(paper.date) and written.get(pid) == "added"
        for source, count in gained.items():
            self.gained[source] = self.gained.get(source, 0) + count


def update_facts(
    store: Collection,
    run: RunFacts,
    papers: int,
    before: tuple[int, int] | None,
    now: tuple[int, int],
) -> None:
    """After an ingest (the store at `before` when it began, at `now` after it): the saved
    facts with this run's papers counted in (each source gains the papers newly listing it),
    its dates and categories added; into an empty index (`before` None), this run's own. They
    are gathered whole from each paper's first chunk when there are none, or they are not
    those of the store the ingest began with (an ingest interrupted since: what it wrote was
    never counted). Saved with the store's stamp, which readers then need not count."""
    saved = None if before is None else store.facts()
    if before is not None and (saved is None or saved.get("generation") != before[0]):
        facts = CollectionFacts.of(store.first_chunk_metadata())
    else:
        facts = CollectionFacts.from_json(saved) if saved else CollectionFacts()
        for name, dates in run.sources.items():
            if name in facts.sources or run.gained.get(name):
                entry = facts.sources.setdefault(name, SourceFacts(name))
                entry.papers += run.gained.get(name, 0)
                entry.dates |= dates
        facts.categories |= run.categories
        facts.dated += run.added_dated
        facts.papers = papers
    # The chunk count too: counting a million chunks cold took Chroma seconds per process.
    store.save_facts({**facts.to_json(), "generation": now[0], "chunks": now[1]})
