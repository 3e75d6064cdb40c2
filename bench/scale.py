"""Scale: queries over 200,000 chunks, and ingest memory as the input file grows.

* `query`: N synthetic chunks (random unit vectors, 384 dimensions) written through the same
  `Store` code as real ones; then dense queries through Chroma's HNSW index (collections above
  `RAG_EXACT_SEARCH_MAX`) and through the exact in-memory table, p50/p95 over 200 queries.
* `ingest`: a JSON Lines file of N synthetic papers ingested by `rag.api.ingest` in a fresh
  process with a stub embedder (hash-seeded random vectors: the model is not what is measured);
  peak RSS of the process and peak Python heap (tracemalloc), for each N.

Usage: python bench/scale.py [--chunks 200000] [--papers 10000 100000]

The million-paper run (ingest, fresh and warm searches, `rag serve`, an incremental ingest,
against an embedded store or a `chroma run` server) is `bench/million.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rag.embed import Embedder  # noqa: E402 - after the path is set

DIM = 384
WORDS = (
    "model data learning training language neural network attention graph optimisation "
    "retrieval benchmark reasoning agent vision robot policy reward sparse dense token "
    "transformer diffusion scaling evaluation dataset inference memory latency kernel"
).split()


class StubEmbedder(Embedder):
    """Deterministic random unit vectors; whitespace tokens."""

    name = "stub-random-384"
    max_tokens = 254

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed(self, texts: list[str]):  # noqa: ANN201 - numpy
        import numpy as np

        out = np.empty((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            out[row] = rng.standard_normal(DIM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def percentiles(times: list[float]) -> str:
    times = sorted(times)
    p95 = times[int(0.95 * (len(times) - 1))]
    return f"{1000 * statistics.median(times):.1f} / {1000 * p95:.1f} ms"


def bench_query(n_chunks: int, tmp: Path) -> list[tuple[str, str]]:
    import numpy as np

    from rag.chunking import Chunk
    from rag.corpus import Listing, Paper
    from rag.ingest import WRITE_BATCH
    from rag.settings import Settings
    from rag.store import Store

    settings = Settings(index_dir=tmp / "query-index")
    store = Store(settings, StubEmbedder.name)
    store.create()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for first in range(0, n_chunks, WRITE_BATCH):
        count = min(WRITE_BATCH, n_chunks - first)
        chunks = []
        for i in range(first, first + count):
            paper = Paper(f"p{i // 2:07d}", f"Paper {i // 2}", "text", (Listing("synthetic"),))
            chunks.append(Chunk(f"p{i // 2:07d}#{i % 2}", paper, i % 2, 2, f"chunk {i}", "h"))
        vectors = rng.standard_normal((count, DIM)).astype(np.float32)
        store.write(
            [c.chunk_id for c in chunks],
            vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
            [c.text for c in chunks],
            [c.metadata() for c in chunks],
        )
    rows = [
        (f"write {n_chunks:,} chunks through Store.write", f"{time.perf_counter() - start:.0f} s")
    ]
    queries = rng.standard_normal((200, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for label, limit in (("Chroma HNSW", 0), ("exact in-memory table", 10**9)):
        store = Store(settings.model_copy(update={"exact_search_max": limit}), StubEmbedder.name)
        start = time.perf_counter()
        store.query(queries[0], 40)  # opens the index (and loads the table)
        rows.append(
            (f"{label}: first query (opens the index)", f"{time.perf_counter() - start:.2f} s")
        )
        times = []
        for vector in queries:
            start = time.perf_counter()
            with store.one_view():
                hits = store.query(vector, 40)  # 10 papers x CHUNKS_PER_PAPER
            times.append(time.perf_counter() - start)
            assert len(hits) == 40
        rows.append((f"{label}: query p50 / p95, {n_chunks:,} chunks", percentiles(times)))
    return rows


def ingest_child(path: Path, index_dir: Path) -> None:
    """Run in a fresh process: ingest `path`, print peak RSS and peak traced heap (MB)."""
    import resource
    import tracemalloc

    from rag import api
    from rag.settings import Settings

    tracemalloc.start()
    start = time.perf_counter()
    report = api.ingest([path], Settings(index_dir=index_dir), embedder=StubEmbedder())
    elapsed = time.perf_counter() - start
    _, heap = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"papers": report.papers_total, "s": elapsed, "rss": rss, "heap": heap / 2**20})
    )


def bench_ingest(sizes: list[int], tmp: Path) -> list[tuple[str, str]]:
    rows = []
    for n in sizes:
        path = tmp / f"papers-{n}.jsonl"
        rnd = random.Random(n)
        with path.open("w", encoding="utf-8") as out:
            for i in range(n):
                abstract = " ".join(rnd.choices(WORDS, k=120))
                out.write(
                    json.dumps(
                        {"id": f"s{i}", "title": f"Synthetic paper {i}", "abstract": abstract}
                    )
                    + "\n"
                )
        proc = subprocess.run(
            [sys.executable, __file__, "--ingest-child", str(path), str(tmp / f"ingest-{n}")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if proc.returncode:
            raise SystemExit(f"ingest of {n:,} papers failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["papers"] == n, got
        size = path.stat().st_size / 2**20
        rows.append(
            (
                f"ingest {n:,} papers ({size:.0f} MB JSONL), stub embedder",
                f"{got['s']:.0f} s; peak RSS {got['rss']:.0f} MB; "
                f"peak Python heap {got['heap']:.0f} MB",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--papers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ingest-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_child:
        ingest_child(*args.ingest_child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_ingest(args.papers, Path(tmp)) if args.papers else []
        rows += bench_query(args.chunks, Path(tmp)) if args.chunks else []
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
