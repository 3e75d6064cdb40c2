"""Filters over a million papers' facets (`rag.texts`): the table a filtered search reads
instead of Chroma's metadata in an embedded collection above the exact table.

Writes `--papers` first chunks through `ChunkTexts.put` (short texts; metadata with the
categories and dates of `bench/million.py`'s corpus and one source file), then times
`ChunkTexts.admitted` per filter (all admitted ids, and the first one only, as
`Store.admits_any` asks) in a fresh connection, and reports the facets table's size.

Usage: python bench/facets.py [--papers 1000000] [--dir /tmp/facets]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.million import DAYS, FIRST_DAY, categories
from rag.filters import Filter, date_number
from rag.texts import ChunkTexts

FILTERS = (
    Filter.from_text(categories="cs.lg"),
    Filter.from_text(categories="q-fin.ST"),
    Filter.from_text(since="2024-01-01"),
    Filter.from_text(categories="cs.CL stat.ML", since="2020-01-01"),
    Filter.from_text(sources=["arxiv-metadata.jsonl"]),
)


def write(path: Path, papers: int) -> float:
    texts = ChunkTexts(path)
    texts.create()
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for first in range(0, papers, 50_000):
        n = min(50_000, papers - first)
        subjects = categories(rng, n)
        days = FIRST_DAY + rng.integers(0, DAYS, n).astype("timedelta64[D]")
        ids = [f"z{first + i:08d}#0" for i in range(n)]
        metas = [
            {
                "paper_id": cid[:-2],
                "chunk": 0,
                "categories": subjects[i],
                "date_num": date_number(str(days[i])),
                "sources": ["arxiv-metadata.jsonl"],
            }
            for i, cid in enumerate(ids)
        ]
        texts.put(ids, ["An abstract."] * n, metas)
    texts.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/facets"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    path = args.dir / "texts.sqlite3"
    print(f"wrote {args.papers:,} papers' first chunks in {write(path, args.papers):.0f} s")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*) FROM facets").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        try:
            used = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'facets'").fetchone()
            table = f"{used[0] / 2**20:.0f} MB"
        except sqlite3.Error:
            table = f"(dbstat not compiled in; {size}-byte pages)"
    print(f"facets table: {rows:,} rows, {table}")
    print("| filter | papers admitted | all ids | first id only |\n|---|---|---|---|")
    for filters in FILTERS:
        texts = ChunkTexts(path)  # a fresh connection, as a fresh process has
        start = time.perf_counter()
        found = texts.admitted(filters)
        every = time.perf_counter() - start
        start = time.perf_counter()
        texts.admitted(filters, limit=1)
        first = time.perf_counter() - start
        assert found is not None
        print(f"| {filters.describe()} | {len(found):,} | {every:.2f} s | {1000 * first:.1f} ms |")
        texts.close()


if __name__ == "__main__":
    main()
