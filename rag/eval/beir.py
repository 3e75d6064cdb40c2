"""A BEIR data set -> document rankings -> nDCG@10 and Recall@100, as in the BEIR tables.

The corpus is ingested by the entry layer (into its own, reused index); `run_beir` ranks 100
documents per judged query with the retriever it is given, and scores them with graded
judgements.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import InputError
from rag.eval import progress_bar
from rag.eval.metrics import mean, ndcg_at_k, percentile, recall_at_k
from rag.reading import read_text

if TYPE_CHECKING:
    from rag.retrieve import Retriever

# Published BEIR figures quoted in reports, so the numbers have a reference point.
BEIR_BASELINES = {
    "scifact": {"BM25 (BEIR paper)": 0.665, "all-MiniLM-L6-v2 (dense)": 0.645},
}
DEPTH = 100  # documents ranked per query (Recall@100)


@dataclass
class BeirSet:
    name: str
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]


def load_beir(data_dir: Path, split: str = "test") -> BeirSet:
    """A BEIR-format data set: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a directory (expected a BEIR data set)")
    corpus, queries_path = data_dir / "corpus.jsonl", data_dir / "queries.jsonl"
    qrels_path = data_dir / "qrels" / f"{split}.tsv"
    for path in (corpus, queries_path, qrels_path):
        if not path.is_file():
            raise InputError(
                f"{path}: missing (a BEIR data set has corpus.jsonl, queries.jsonl, qrels/)"
            )
    qrels = _load_qrels(qrels_path)
    queries = _load_queries(queries_path)
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise InputError(f"{qrels_path}: queries not in queries.jsonl: {', '.join(unknown[:5])}")
    return BeirSet(data_dir.resolve().name, corpus, {q: queries[q] for q in qrels}, qrels)


def _load_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            queries[str(record["_id"])] = str(record["text"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected a JSON object with _id and text") from None
    return queries


def _load_qrels(path: Path) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    rows = csv.reader(read_text(path).splitlines(), delimiter="\t")
    for number, row in enumerate(rows, start=1):
        if number == 1 and row and not row[-1].lstrip("-").isdigit():
            continue  # the header line
        if not row:
            continue
        try:
            query_id, doc_id, grade = row[0], row[1], float(row[2])
        except (IndexError, ValueError):
            raise InputError(f"{path}:{number}: expected query-id, corpus-id, score") from None
        qrels.setdefault(query_id, {})[doc_id] = grade
    if not qrels:
        raise InputError(f"{path}: no relevance judgements")
    return qrels


@dataclass(frozen=True)
class Ingested:
    """What the ingest of the corpus did, for the report."""

    documents: int
    embed_model: str
    seconds: float
    chunks_embedded: int


def run_beir(
    data: BeirSet, retriever: Retriever, mode: str, ingested: Ingested, progress: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rank `DEPTH` documents per judged query: rows (query id, ranked ids) and metrics."""
    rows, latencies = [], []
    for query_id in progress_bar(sorted(data.queries, key=_natural), f"beir {mode}", progress):
        t0 = time.perf_counter()
        hits = retriever.search(data.queries[query_id], DEPTH)
        latencies.append(time.perf_counter() - t0)
        rows.append({"query_id": query_id, "retrieved_ids": [h.paper_id for h in hits]})
    ndcg = [ndcg_at_k(r["retrieved_ids"], data.qrels[r["query_id"]], 10) for r in rows]
    recall = [
        recall_at_k(r["retrieved_ids"], _relevant(data.qrels[r["query_id"]]), DEPTH) for r in rows
    ]
    metrics = {
        "dataset": data.name,
        "queries": len(rows),
        "documents": ingested.documents,
        "retriever": mode,
        "embed_model": ingested.embed_model,
        "ndcg@10": mean(ndcg),
        "recall@100": mean(recall),
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "ingest_s": round(ingested.seconds, 2),
        "chunks_embedded": ingested.chunks_embedded,
        "published": BEIR_BASELINES.get(data.name.lower(), {}),
    }
    return rows, metrics


def _relevant(grades: Mapping[str, float]) -> set[str]:
    return {doc for doc, grade in grades.items() if grade > 0}


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)
