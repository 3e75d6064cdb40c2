"""A paper <-> the metadata each of its chunks carries in the store: its id, title, listing
pages and dates, arXiv id and categories, and the fields a file added (`meta_*`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rag.corpus import Listing, Paper
from rag.filters import date_number

PAPER_KEYS_OPTIONAL = ("sources", "dates", "arxiv_id", "categories", "date", "date_num")
"""Paper-level metadata keys that are absent when empty (an update must remove them)."""


def paper_metadata(paper: Paper) -> dict[str, Any]:
    """What every chunk of `paper` records of it, besides its own place and hash."""
    meta: dict[str, Any] = {
        "paper_id": paper.paper_id,
        "title": paper.title,
        **listing_metadata(paper.listings),
        **{f"meta_{k}": v for k, v in paper.meta.items()},
    }
    if paper.arxiv_id:
        meta["arxiv_id"] = paper.arxiv_id
    if paper.categories:
        meta["categories"] = list(paper.categories)
    if paper.date:
        meta["date"] = paper.date
        meta["date_num"] = date_number(paper.date)
    return meta


def listing_metadata(listings: Sequence[Listing]) -> dict[str, Any]:
    """Listing pages and dates as Chroma metadata (lists are omitted when empty)."""
    meta: dict[str, Any] = {"listings": json.dumps([[x.source, x.date] for x in listings])}
    sources = sorted({x.source for x in listings})
    dates = sorted({x.date for x in listings if x.date})
    if sources:
        meta["sources"] = sources
    if dates:
        meta["dates"] = dates
    return meta


def listings_from_metadata(meta: dict[str, Any]) -> tuple[Listing, ...]:
    return tuple(Listing(source, date) for source, date in json.loads(meta.get("listings", "[]")))
