"""How many candidates each compressed code must keep so that rescoring them finds the exact
nearest chunks (the design of `rag.nearest`), on real MiniLM vectors: a BEIR corpus's chunks
and its queries.

For each query and n, the true n nearest chunks (exact cosine) are ranked by the code's own
score; the rank of the last of them is the pool a rescoring stage needs. Printed: that pool's
50th, 90th and 99th percentile over the queries, as rows and as a share of the collection, for

* sign bits around the mean vector, by Hamming distance (48 bytes a 384-d chunk);
* k-means partitions (IVF) probing 5, 10 and 20 % of the lists, as recall of the n nearest;
* 8-bit integer codes (each dimension scaled by its largest magnitude), by integer product:
  what `rag.nearest` keeps.

With `--segments`, the same pool is measured at scale over an index's saved segments (e.g.
bench/million.py's, 1.7M hash-seeded vectors: flat similarities, the hard case for codes),
against a float32 scan of every vector, for generated queries.

Usage: rag eval --beir DATA/scifact --index-dir /tmp/beir-sf --retriever dense   (builds it)
       python bench/codes.py --index /tmp/beir-sf --queries DATA/scifact/queries.jsonl
       RAG_INDEX_DIR=/tmp/mil1m/index RAG_EMBED_MODEL=hash:384 python bench/codes.py --segments
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np


def load(index: Path, queries: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    from rag.embed import get_embedder
    from rag.settings import Settings

    matrix = np.load(next((index / "table").glob("*/matrix-*.npy"))).astype(np.float32)
    with queries.open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle][:limit]
    return matrix, np.asarray(get_embedder(Settings()).embed(texts), dtype=np.float32)


def pools(
    matrix: np.ndarray, queries: np.ndarray, score: Callable[[np.ndarray], np.ndarray], n: int
) -> np.ndarray:
    """Per query: the rank, by `score`, of the last of the true `n` nearest."""
    worst = []
    for query in queries:
        true = np.argsort(-(matrix @ query), kind="stable")[:n]
        order = np.argsort(-score(query), kind="stable")
        rank = np.empty(len(matrix), dtype=np.int64)
        rank[order] = np.arange(len(matrix))
        worst.append(int(rank[true].max()) + 1)
    return np.array(worst)


def report(name: str, needed: np.ndarray, total: int) -> None:
    p50, p90, p99 = np.percentile(needed, [50, 90, 99])
    print(
        f"| {name} | {p50:.0f} / {p90:.0f} / {p99:.0f} | "
        f"{p50 / total:.2%} / {p90 / total:.2%} / {p99 / total:.2%} |"
    )


def kmeans(x: np.ndarray, k: int, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        assigned = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            members = x[assigned == j]
            if len(members):
                centres[j] = members.mean(axis=0)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres, np.argmax(x @ centres.T, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--segments", action="store_true", help="RAG_INDEX_DIR's segments")
    args = parser.parse_args()
    if args.segments:
        segments_pool(min(args.limit, 20))
        return
    matrix, queries = load(args.index, args.queries, args.limit)
    total = len(matrix)
    print(f"{total:,} chunks, {len(queries)} queries\n")
    print("| code, n nearest | pool needed p50 / p90 / p99 (rows) | as a share |")
    print("|---|---|---|")
    centre = matrix.mean(axis=0)
    bits = np.packbits(matrix - centre > 0, axis=1).view(np.uint64)

    def hamming(query: np.ndarray) -> np.ndarray:
        mine = np.packbits(query - centre > 0).view(np.uint64)
        return -np.bitwise_count(bits ^ mine).sum(axis=1).astype(np.float64)

    scale = np.abs(matrix).max(axis=0) / 127
    codes = np.clip(np.rint(matrix / scale), -127, 127).astype(np.int32)

    def integer(query: np.ndarray) -> np.ndarray:
        weights = query * scale
        return codes @ np.rint(weights / np.abs(weights).max() * 127).astype(np.int32)

    for n in (10, 40, 200):
        report(f"sign bits, {n}", pools(matrix, queries, hamming, n), total)
        report(f"8-bit integers, {n}", pools(matrix, queries, integer, n), total)
    k = max(16, int(np.sqrt(total)))
    centres, lists = kmeans(matrix, k)
    print(f"\n| k-means, {k} lists: probed | rows scanned | recall@10 | recall@200 |")
    print("|---|---|---|---|")
    for share in (0.05, 0.1, 0.2):
        probes = max(1, round(k * share))
        scanned, recall = [], {10: [], 200: []}
        for query in queries:
            rows = np.flatnonzero(np.isin(lists, np.argsort(-(centres @ query))[:probes]))
            scanned.append(len(rows) / total)
            sims = matrix @ query
            for n in recall:
                got = set(rows[np.argsort(-sims[rows])[:n]].tolist())
                recall[n].append(len(got & set(np.argsort(-sims)[:n].tolist())) / n)
        print(
            f"| {probes} of {k} | {np.mean(scanned):.1%} | {np.mean(recall[10]):.3f} | "
            f"{np.mean(recall[200]):.3f} |"
        )


def segments_pool(queries: int) -> None:
    """The pool the 8-bit codes need over the configured index's segments."""
    from rag.retrieve import get_retriever
    from rag.settings import Settings

    retriever = get_retriever(Settings(), mode="dense")
    dense = retriever.segment_vectors()  # type: ignore[attr-defined]
    if dense is None:
        raise SystemExit("the index's segments keep no vectors")
    rows = [s.dense for s in dense.segments]
    total = sum(len(r.vectors) for r in rows)
    needed: dict[int, list[int]] = {10: [], 40: [], 200: []}
    for i in range(queries):
        vector = retriever.query_vector(f"query {i} kamuri tone salo {i * 7}")
        approx = np.concatenate([r.scores(vector) for r in rows])
        exact = np.concatenate([np.asarray(r.vectors) @ vector for r in rows])
        rank = np.empty(total, dtype=np.int64)
        rank[np.argsort(-approx, kind="stable")] = np.arange(total)
        top = np.argsort(-exact, kind="stable")
        for n in needed:
            needed[n].append(int(rank[top[:n]].max()) + 1)
    print(f"{total:,} chunks in {len(rows)} segments, {queries} queries\n")
    print("| n nearest | pool needed p50 / max (rows) |")
    print("|---|---|")
    for n, pools_needed in needed.items():
        print(f"| {n} | {np.median(pools_needed):.0f} / {max(pools_needed)} |")


if __name__ == "__main__":
    main()
