"""Evaluation: question files and BEIR data sets -> metrics and reports.

`metrics` holds the pure metric functions, `questions` runs a question file through retrieval
and the answer step, `beir` scores retrieval on a BEIR data set, `report` writes the files.
Nothing here builds an index or picks an LLM: the entry layer (`rag.api`) passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def progress_bar(items: Sequence[Any], label: str, enabled: bool) -> Iterable[Any]:
    """`items`, behind a progress bar on stderr when `enabled`."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="q", leave=False)
