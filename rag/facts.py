"""What the filters can use in a collection (its sources with their listing dates and paper
counts, its categories, how many papers have a full date), kept in the collection's metadata
by each ingest so the UI never scans millions of chunks to offer them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.filters import CollectionFacts, SourceFacts

if TYPE_CHECKING:
    from rag.corpus import Paper
    from rag.store import Collection


@dataclass
class RunFacts:
    """What one ingest read: each source's dates, the categories, papers added with a date."""

    sources: dict[str, set[str]] = field(default_factory=dict)
    categories: set[str] = field(default_factory=set)
    added_dated: int = 0

    def add(self, papers: dict[str, Paper], written: dict[str, str]) -> None:
        for pid, paper in papers.items():
            for listing in paper.listings:
                dates = self.sources.setdefault(listing.source, set())
                if listing.date:
                    dates.add(listing.date)
            self.categories.update(paper.categories)
            self.added_dated += bool(paper.date) and written.get(pid) == "added"


def update_facts(
    store: Collection,
    run: RunFacts,
    papers: int,
    before: tuple[int, int] | None,
    generation: int,
) -> None:
    """After an ingest (the store at `before` when it began, at `generation` now): the saved
    facts with this run's sources recounted (the store is asked how many papers each holds),
    its dates and categories added. They are gathered whole from each paper's first chunk
    when there are none, or they are not those of the store the ingest began with (an ingest
    interrupted since: what it wrote was never counted)."""
    saved = store.facts()
    if saved is None or before is None or saved.get("generation") != before[0]:
        facts = CollectionFacts.of(store.first_chunk_metadata())
    else:
        facts = CollectionFacts.from_json(saved)
        for name, dates in run.sources.items():
            entry = facts.sources.setdefault(name, SourceFacts(name))
            entry.papers = store.count_papers({"sources": {"$contains": name}})
            entry.dates |= dates
        facts.categories |= run.categories
        facts.dated += run.added_dated
        facts.papers = papers
    store.save_facts({**facts.to_json(), "generation": generation})
