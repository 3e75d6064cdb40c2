"""Evaluation: questions with gold papers -> per-question results, metrics and a report.

The metric functions are pure and take ranked lists of keys (normalised titles or corpus ids):
a key that appears twice counts once, at its first rank, and the repeat wastes its slot, as it
would waste a source given to the LLM. `run_questions` scores the assistant on a question file;
`run_beir` scores retrieval on a BEIR data set, comparable with published BEIR tables.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.corpus import normalise_title, read_text
from rag.errors import InputError, LLMError

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.llm import LLM
    from rag.retrieve import Retriever
    from rag.settings import Settings

log = logging.getLogger(__name__)

TYPES = ("single", "title", "multi", "unanswerable")
CUTOFFS = (1, 5, 10)
MAX_CONSECUTIVE_ERRORS = 3  # the LLM endpoint is down, not flaky: stop instead of waiting on it
PLOT = "recall_at_k.png"
# Published BEIR figures quoted in reports, so the numbers have a reference point.
BEIR_BASELINES = {
    "scifact": {"BM25 (BEIR paper)": 0.665, "all-MiniLM-L6-v2 (dense)": 0.645},
}


# ---------------------------------------------------------------- metrics


def first_ranks(retrieved: Sequence[str]) -> dict[str, int]:
    """1-based rank of each key's first occurrence."""
    ranks: dict[str, int] = {}
    for rank, key in enumerate(retrieved, start=1):
        ranks.setdefault(key, rank)
    return ranks


def recall_at_k(retrieved: Sequence[str], gold: Collection[str], k: int) -> float | None:
    """Share of the gold keys among the first `k` retrieved; None when there is no gold."""
    if not gold:
        return None
    ranks = first_ranks(retrieved[:k])
    return sum(key in ranks for key in set(gold)) / len(set(gold))


def reciprocal_rank(retrieved: Sequence[str], gold: Collection[str]) -> float | None:
    """1 / rank of the first gold key (0 when none is retrieved); None when there is no gold."""
    if not gold:
        return None
    ranks = first_ranks(retrieved)
    found = [ranks[key] for key in gold if key in ranks]
    return 1.0 / min(found) if found else 0.0


def ndcg_at_k(
    retrieved: Sequence[str], gold: Collection[str] | Mapping[str, float], k: int
) -> float | None:
    """nDCG@k with linear gains (graded when `gold` maps keys to grades, as in BEIR qrels).

    DCG = sum of gain / log2(rank + 1) over the first k ranks, where a repeated key gains
    nothing; divided by the DCG of the ideal ranking. None when there is no gold.
    """
    grades = dict(gold) if isinstance(gold, Mapping) else dict.fromkeys(gold, 1.0)
    grades = {key: g for key, g in grades.items() if g > 0}
    if not grades:
        return None
    seen: set[str] = set()
    dcg = 0.0
    for rank, key in enumerate(retrieved[:k], start=1):
        if key in grades and key not in seen:
            dcg += grades[key] / math.log2(rank + 1)
        seen.add(key)
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg


def precision_recall(
    cited: Collection[str], gold: Collection[str]
) -> tuple[float | None, float | None]:
    """Citation precision (None when nothing is cited) and recall (None when there is no gold)."""
    cited, gold = set(cited), set(gold)
    precision = len(cited & gold) / len(cited) if cited else None
    recall = len(cited & gold) / len(gold) if gold else None
    return precision, recall


def fact_recall(answer: str, facts: Sequence[str]) -> float | None:
    """Share of `facts` found in `answer`, ignoring case and spacing; None without facts."""
    if not facts:
        return None
    text = " ".join(answer.split()).casefold()
    return sum(" ".join(f.split()).casefold() in text for f in facts) / len(facts)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Keys best first; equal scores are ordered by key, so ties never depend on dict order."""
    return sorted(scores, key=lambda key: (-scores[key], key))


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ---------------------------------------------------------------- question files


@dataclass
class Question:
    qid: str
    type: str
    question: str
    gold_titles: list[str] = field(default_factory=list)
    answer: str = ""
    facts: list[str] = field(default_factory=list)


def load_questions(path: Path) -> list[Question]:
    """Questions of a JSONL file; a malformed line is an `InputError` naming file and line."""
    questions: list[Question] = []
    seen: set[str] = set()
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"{where}: not valid JSON ({exc})") from None
        question = _question(record, where)
        if question.qid in seen:
            raise InputError(f"{where}: duplicate qid {question.qid!r}")
        seen.add(question.qid)
        questions.append(question)
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def _question(record: object, where: str) -> Question:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object")
    for name in ("qid", "type", "question"):
        if not isinstance(record.get(name), str | int) or not str(record[name]).strip():
            raise InputError(f"{where}: missing or empty field {name!r}")
    lists = {name: record.get(name) or [] for name in ("gold_titles", "facts")}
    for name, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: field {name!r} must be a list of strings")
    qtype = str(record["type"])
    if qtype != "unanswerable" and not lists["gold_titles"]:
        raise InputError(f"{where}: a {qtype!r} question needs gold_titles")
    return Question(
        str(record["qid"]),
        qtype,
        str(record["question"]),
        lists["gold_titles"],
        str(record.get("answer") or ""),
        lists["facts"],
    )


# ---------------------------------------------------------------- running questions


@dataclass
class Result:
    """One question answered by one retriever mode, with its scores."""

    qid: str
    type: str
    question: str
    retriever: str
    retrieved: list[str]
    answer: str
    citations: list[str]
    mode: str
    latency_s: float
    gold_titles: list[str]
    refused: bool
    scores: dict[str, float | None]
    error: str | None = None


def score_result(result: Result, facts: Sequence[str], k: int) -> dict[str, float | None]:
    """The per-question metrics of a result (titles compared in normalised form)."""
    retrieved = [normalise_title(t) for t in result.retrieved]
    gold = {normalise_title(t) for t in result.gold_titles}
    cited = {normalise_title(t) for t in result.citations}
    scores: dict[str, float | None] = {
        f"recall@{c}": recall_at_k(retrieved, gold, c) for c in CUTOFFS
    }
    scores["mrr"] = reciprocal_rank(retrieved, gold)
    scores["ndcg@10"] = ndcg_at_k(retrieved, gold, 10)
    scores["citation_precision"], scores["citation_recall"] = (
        precision_recall(cited, gold) if gold else (None, None)
    )
    scores["fact_recall"] = fact_recall(result.answer, facts)
    return scores


def answer_one(
    question: Question,
    retriever: Retriever,
    mode_name: str,
    settings: Settings,
    embedder: Embedder,
    llm: LLM | None,
    k: int,
) -> Result:
    """Retrieve and answer one question, timing both; an LLM failure is kept in `error`."""
    from rag.answer import answer_question, clean_question

    start = time.perf_counter()
    text = clean_question(question.question)
    papers = retriever.search(text, max(k, settings.top_k))
    error = None
    try:
        sources = papers[: settings.top_k]
        retriever.attach_texts(sources)
        answer = answer_question(text, sources, settings, embedder, llm)
        reply, mode, refused = answer.answer, answer.mode, answer.refused and not answer.citations
        citations = [s.title for s in answer.citations]
    except LLMError as exc:
        reply, mode, refused, citations, error = "", "error", False, [], str(exc)
    latency = time.perf_counter() - start
    result = Result(
        question.qid,
        question.type,
        question.question,
        mode_name,
        [p.title for p in papers[:k]],
        reply,
        citations,
        mode,
        round(latency, 4),
        question.gold_titles,
        refused,
        {},
        error,
    )
    result.scores = score_result(result, question.facts, k)
    return result


def run_questions(
    questions: Sequence[Question],
    settings: Settings,
    modes: Sequence[str],
    k: int = 10,
    no_llm: bool = False,
    llm: LLM | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> dict[str, list[Result]]:
    """Every question through every retriever mode: results by mode, in question order."""
    from rag import api
    from rag.embed import get_embedder
    from rag.retrieve import get_retriever

    embedder = embedder or get_embedder(settings)
    api.ensure_index(settings, embedder, progress=progress)
    llm = api.configured_llm(settings, no_llm, llm)
    runs: dict[str, list[Result]] = {}
    for mode in modes:
        retriever = get_retriever(settings, embedder, mode)
        results: list[Result] = []
        failures = 0
        for question in _progress(questions, f"eval {mode}", progress):
            result = answer_one(question, retriever, mode, settings, embedder, llm, k)
            failures = failures + 1 if result.error else 0
            if failures >= MAX_CONSECUTIVE_ERRORS:
                raise LLMError(
                    f"giving up after {failures} failed questions in a row: {result.error}"
                )
            results.append(result)
        runs[mode] = results
    return runs


def _progress(items: Sequence[Any], label: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="q", leave=False)


# ---------------------------------------------------------------- summarising


METRICS = (
    *(f"recall@{c}" for c in CUTOFFS),
    "mrr",
    "ndcg@10",
    "citation_precision",
    "citation_recall",
    "fact_recall",
)


def summarise(results: Sequence[Result], k: int) -> dict[str, Any]:
    """Metrics of one mode's results: overall, per question type, refusal, latency, curve."""
    answerable = [r for r in results if r.type != "unanswerable"]
    unanswerable = [r for r in results if r.type == "unanswerable"]
    by_type = {
        qtype: _averages([r for r in results if r.type == qtype])
        for qtype in [*TYPES, *sorted({r.type for r in results} - set(TYPES))]
        if any(r.type == qtype for r in results)
    }
    latencies = [r.latency_s for r in results]
    return {
        "overall": _averages(answerable),
        "by_type": by_type,
        "single_and_title": _averages([r for r in results if r.type in ("single", "title")]),
        "refusal": {
            "unanswerable": len(unanswerable),
            "refusal_accuracy": mean(float(r.refused) for r in unanswerable),
            "answerable": len(answerable),
            "false_refusal_rate": mean(float(r.refused) for r in answerable),
        },
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "errors": sum(r.error is not None for r in results),
        "recall_curve": recall_curve(answerable, k),
    }


def _averages(results: Sequence[Result]) -> dict[str, Any]:
    out: dict[str, Any] = {"questions": len(results)}
    for name in METRICS:
        out[name] = mean(r.scores.get(name) for r in results)
    return out


def recall_curve(results: Sequence[Result], k: int) -> list[float | None]:
    """Mean Recall@i for i = 1..k over questions with gold papers."""
    keyed = [
        ([normalise_title(t) for t in r.retrieved], {normalise_title(t) for t in r.gold_titles})
        for r in results
        if r.gold_titles
    ]
    return [mean(recall_at_k(got, gold, i) for got, gold in keyed) for i in range(1, k + 1)]


# ---------------------------------------------------------------- writing


def write_question_run(
    out: Path,
    runs: Mapping[str, Sequence[Result]],
    k: int,
    settings: Settings,
    questions_file: Path,
    no_llm: bool,
) -> dict[str, Any]:
    """results.jsonl, metrics.json, report.md and the recall plot into `out`; the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as fh:
        for results in runs.values():
            for r in results:
                fh.write(json.dumps(_result_json(r), ensure_ascii=False) + "\n")
    metrics = {
        "questions_file": str(questions_file),
        "questions": len(next(iter(runs.values()), [])),
        "k": k,
        "settings": _settings_summary(settings, no_llm),
        "modes": {mode: summarise(results, k) for mode, results in runs.items()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plotted = plot_recall({m: v["recall_curve"] for m, v in metrics["modes"].items()}, out / PLOT)
    (out / "report.md").write_text(question_report(metrics, runs, plotted), encoding="utf-8")
    return metrics


def _result_json(r: Result) -> dict[str, Any]:
    data = asdict(r)
    data["scores"] = {name: _round(value) for name, value in r.scores.items()}
    if data["error"] is None:
        del data["error"]
    return data


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _settings_summary(settings: Settings, no_llm: bool) -> dict[str, Any]:
    llm = None if no_llm or not settings.llm_configured else settings.llm_model
    return {
        "embed_model": settings.embed_model,
        "chunk_tokens": settings.chunk_tokens,
        "top_k": settings.top_k,
        "min_relevance": settings.min_relevance,
        "dense_weight": settings.dense_weight,
        "bm25_weight": settings.bm25_weight,
        "llm_model": llm,
    }


def plot_recall(curves: Mapping[str, Sequence[float | None]], path: Path) -> bool:
    """A PNG of Recall@k against k, one line per mode; False (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no plot: matplotlib is not installed (pip install 'rag[eval]')")
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for mode, curve in curves.items():
        points = [(i, v) for i, v in enumerate(curve, start=1) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
    ax.set_xlabel("k (papers retrieved)")
    ax.set_ylabel("Recall@k (answerable questions)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


# ---------------------------------------------------------------- BEIR


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


def run_beir(
    data: BeirSet,
    settings: Settings,
    mode: str,
    embedder: Embedder | None = None,
    progress: bool = False,
    on_ingest: Callable[[Any], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest the corpus (incrementally) and rank 100 documents per query: rows and metrics."""
    from rag import api
    from rag.embed import get_embedder
    from rag.retrieve import get_retriever

    embedder = embedder or get_embedder(settings)
    start = time.perf_counter()
    report = api.ingest([data.corpus], settings, embedder=embedder, progress=progress)
    if report.papers_read == 0:
        raise InputError(
            f"{data.corpus}: no documents could be read ({'; '.join(report.errors[:1])})"
        )
    if on_ingest:
        on_ingest(report)
    ingest_s = time.perf_counter() - start
    retriever = get_retriever(settings, embedder, mode)
    rows, latencies = [], []
    for query_id in _progress(sorted(data.queries, key=_natural), f"beir {mode}", progress):
        t0 = time.perf_counter()
        hits = retriever.search(data.queries[query_id], 100)
        latencies.append(time.perf_counter() - t0)
        rows.append({"query_id": query_id, "retrieved_ids": [h.paper_id for h in hits]})
    ndcg = [ndcg_at_k(r["retrieved_ids"], data.qrels[r["query_id"]], 10) for r in rows]
    recall = [
        recall_at_k(r["retrieved_ids"], _relevant(data.qrels[r["query_id"]]), 100) for r in rows
    ]
    metrics = {
        "dataset": data.name,
        "queries": len(rows),
        "documents": report.papers_total,
        "retriever": mode,
        "embed_model": settings.embed_model,
        "ndcg@10": mean(ndcg),
        "recall@100": mean(recall),
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "ingest_s": round(ingest_s, 2),
        "chunks_embedded": report.chunks_embedded,
        "published": BEIR_BASELINES.get(data.name.lower(), {}),
    }
    return rows, metrics


def _relevant(grades: Mapping[str, float]) -> set[str]:
    return {doc for doc, grade in grades.items() if grade > 0}


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def write_beir_run(out: Path, rows: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(beir_report(metrics), encoding="utf-8")


# ---------------------------------------------------------------- reports

WORST = 10
COLUMNS = (
    ("R@1", "recall@1"),
    ("R@5", "recall@5"),
    ("R@10", "recall@10"),
    ("MRR", "mrr"),
    ("nDCG@10", "ndcg@10"),
    ("cit. P", "citation_precision"),
    ("cit. R", "citation_recall"),
    ("facts", "fact_recall"),
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def question_report(
    metrics: Mapping[str, Any], runs: Mapping[str, Sequence[Result]], plotted: bool
) -> str:
    """The Markdown report of a question run: summary per mode, per type, worst questions."""
    s = metrics["settings"]
    lines = [
        "# Evaluation report",
        "",
        f"{metrics['questions']} questions from `{metrics['questions_file']}`; "
        f"{metrics['k']} papers retrieved per question; answers by "
        f"{'LLM ' + s['llm_model'] if s['llm_model'] else 'the extractive mode (no LLM)'}; "
        f"embeddings {s['embed_model']}.",
        "",
        "## Summary",
        "",
        "s+t: single-paper and title questions; multi: multi-paper questions; nDCG@10, "
        "citation precision/recall and fact recall over all answerable questions; refusals "
        "of unanswerable questions, false refusals of answerable ones.",
        "",
    ]
    header = [
        "retriever",
        "R@1 s+t",
        "MRR s+t",
        "R@5 multi",
        "R@10 multi",
        "nDCG@10",
        "cit. P",
        "cit. R",
        "facts",
        "refused (unans.)",
        "false refusals",
        "p50 s",
        "p95 s",
    ]
    rows = []
    for mode, m in metrics["modes"].items():
        st, multi = m["single_and_title"], m["by_type"].get("multi", {})
        o, r, lat = m["overall"], m["refusal"], m["latency_s"]
        rows.append([
            mode, _fmt(st.get("recall@1")), _fmt(st.get("mrr")), _fmt(multi.get("recall@5")),
            _fmt(multi.get("recall@10")), _fmt(o["ndcg@10"]), _fmt(o["citation_precision"]),
            _fmt(o["citation_recall"]), _fmt(o["fact_recall"]), _fmt(r["refusal_accuracy"]),
            _fmt(r["false_refusal_rate"]), _fmt(lat["p50"], 2), _fmt(lat["p95"], 2),
        ])  # fmt: skip
    lines += _table(header, rows)
    if plotted:
        lines += ["", f"![Recall@k against k]({PLOT})"]
    for mode, m in metrics["modes"].items():
        lines += ["", f"## {mode}: by question type", ""]
        groups = {"single + title": m["single_and_title"], **m["by_type"]}
        lines += _table(
            ["type", "n", *(c[0] for c in COLUMNS)],
            (
                [name, str(g["questions"]), *(_fmt(g[key]) for _, key in COLUMNS)]
                for name, g in groups.items()
            ),
        )
        lines += ["", f"### {mode}: worst questions", ""]
        lines += _worst(runs[mode])
    if any(m["errors"] for m in metrics["modes"].values()):
        lines += ["", "Some answers failed (LLM errors): see `error` in results.jsonl."]
    return "\n".join(lines) + "\n"


def _worst(results: Sequence[Result]) -> list[str]:
    """Wrongly answered unanswerable questions, then answerable ones by reciprocal rank, recall."""

    def badness(r: Result) -> tuple[float, float, float]:
        if r.type == "unanswerable":
            return (0.0 if not r.refused else 2.0, 0.0, 0.0)
        return (
            r.scores.get("mrr") or 0.0,
            r.scores.get("recall@10") or 0.0,
            r.scores.get("recall@5") or 0.0,
        )

    bad = [r for r in results if badness(r) < (1.0, 1.0, 1.0)]
    bad.sort(key=lambda r: (*badness(r), r.qid))
    if not bad:
        return [
            "None: every answerable question has its gold papers first, every unanswerable "
            "one is refused."
        ]
    rows = []
    for r in bad[:WORST]:
        if r.type == "unanswerable":
            what = "answered, should be refused"
        else:
            what = f"MRR {_fmt(r.scores.get('mrr'), 2)}, R@10 {_fmt(r.scores.get('recall@10'), 2)}"
        top = r.retrieved[0] if r.retrieved else "-"
        rows.append([r.qid, r.type, what, _cell(r.question, 90), _cell(top, 60)])
    return _table(["qid", "type", "problem", "question", "first retrieved"], rows)


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def beir_report(metrics: Mapping[str, Any]) -> str:
    lines = [
        f"# BEIR {metrics['dataset']}",
        "",
        f"{metrics['queries']} test queries over {metrics['documents']} documents; retriever "
        f"`{metrics['retriever']}`, embeddings {metrics['embed_model']}.",
        "",
    ]
    rows = [["this run", _fmt(metrics["ndcg@10"]), _fmt(metrics["recall@100"])]]
    rows += [[name, _fmt(value), "-"] for name, value in metrics["published"].items()]
    lines += _table(["system", "nDCG@10", "Recall@100"], rows)
    lat = metrics["latency_s"]
    lines += [
        "",
        f"Query latency p50 {_fmt(lat['p50'] * 1000, 1)} ms, p95 "
        f"{_fmt(lat['p95'] * 1000, 1)} ms; ingest {metrics['ingest_s']} s "
        f"({metrics['chunks_embedded']} chunks embedded in this run).",
    ]
    return "\n".join(lines) + "\n"
