"""A question file -> each question retrieved and answered per retriever mode -> scores.

`run_questions` takes what it runs with (retrievers, embedder, LLM) from the entry layer, which
resolves them; `summarise` turns one mode's results into the metrics of `metrics.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag import limits
from rag.claims import grounded
from rag.corpus import normalise_title
from rag.errors import InputError, LLMError
from rag.eval import progress_bar
from rag.eval.metrics import (
    CLAIM_METRICS,
    claim_scores,
    fact_recall,
    mean,
    ndcg_at_k,
    percentile,
    precision_recall,
    recall_at_k,
    reciprocal_rank,
)
from rag.reading import read_text

if TYPE_CHECKING:
    from pathlib import Path

    from rag.claims import Claim
    from rag.embed import Embedder
    from rag.llm import LLM
    from rag.retrieve import Retriever
    from rag.settings import Settings

TYPES = ("single", "title", "multi", "unanswerable")
CUTOFFS = (1, 5, 10)
MAX_CONSECUTIVE_ERRORS = 3  # the LLM endpoint is down, not flaky: stop instead of waiting on it


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
    claims: list[dict[str, Any]] = field(default_factory=list)
    """The answer's claims: text, citations, verdict, support, better source, repair."""
    coverage: dict[str, Any] | None = None
    """The evidence the sources gave the question and the decision (answer, uncertain,
    refuse) it led to before the answer was written."""
    truncated: str | None = None
    """Why the model's answer was cut (its token limit, repetition)."""
    model_answer: str | None = None
    """The model's text when it was not grounded and was replaced (extractive or refusal)."""


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
    scores |= claim_scores(result.claims)
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
    error, claims, coverage, truncated, model_answer = None, [], None, None, None
    try:
        sources = papers[: settings.top_k]
        retriever.attach_texts(sources)
        answer = answer_question(text, sources, settings, embedder, llm)
        reply, mode, refused = answer.answer, answer.mode, answer.refused and not answer.citations
        citations = [s.title for s in answer.citations]
        claims = [claim_record(c) for c in answer.claims]
        coverage = answer.coverage.to_json() if answer.coverage else None
        truncated, model_answer = answer.truncated, answer.model_answer
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
        claims,
        coverage,
        truncated,
        model_answer,
    )
    result.scores = score_result(result, question.facts, k)
    return result


def claim_record(claim: Claim) -> dict[str, Any]:
    """What results.jsonl keeps of a claim."""
    return {
        "text": claim.text,
        "citations": claim.citations,
        "verdict": claim.verdict,
        "support": round(claim.support, 3),
        "evidence": [{"n": e.n, "verdict": e.verdict} for e in claim.evidence],
        "better_source": claim.better_source,
        "repaired_from": claim.repaired_from,
    }


@dataclass
class QuestionRun:
    """Results by retriever mode, in question order, and why the run stopped early (None: it
    ran every question)."""

    results: dict[str, list[Result]]
    stopped: str | None = None
    interrupted: bool = False
    """Stopped by the user (Ctrl-C) rather than by failures."""


def run_questions(
    questions: Sequence[Question],
    retrievers: Mapping[str, Retriever],
    settings: Settings,
    embedder: Embedder,
    llm: LLM | None,
    k: int = limits.EVAL_K,
    progress: bool = False,
) -> QuestionRun:
    """Every question through every retriever (by mode name). A failed answer is recorded
    (`Result.error`) and the run goes on; `MAX_CONSECUTIVE_ERRORS` failures in a row (the
    endpoint is down, not flaky) or Ctrl-C stop it, keeping what was answered."""
    run = QuestionRun({})
    for mode, retriever in retrievers.items():
        results = run.results.setdefault(mode, [])
        failures = 0
        try:
            for question in progress_bar(questions, f"eval {mode}", progress):
                result = answer_one(question, retriever, mode, settings, embedder, llm, k)
                results.append(result)
                failures = failures + 1 if result.error else 0
                if failures >= MAX_CONSECUTIVE_ERRORS:
                    run.stopped = (
                        f"stopped after {failures} failed questions in a row "
                        f"({len(results)} of {len(questions)} run): {result.error}"
                    )
                    return run
        except KeyboardInterrupt:
            run.stopped = f"interrupted ({len(results)} of {len(questions)} questions run)"
            run.interrupted = True
            return run
    return run


def failure_reasons(results: Sequence[Result]) -> dict[str, int]:
    """Why answers failed, each reason with how many questions it failed."""
    reasons: dict[str, int] = {}
    for result in results:
        if result.error:
            reason = result.error if len(result.error) <= 200 else result.error[:199] + "…"
            reasons[reason] = reasons.get(reason, 0) + 1
    return dict(sorted(reasons.items(), key=lambda item: -item[1]))


METRICS = (
    *(f"recall@{c}" for c in CUTOFFS),
    "mrr",
    "ndcg@10",
    "citation_precision",
    "citation_recall",
    "fact_recall",
    *CLAIM_METRICS,
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
            "false_refusal_by_type": {
                qtype: mean(float(r.refused) for r in results if r.type == qtype)
                for qtype in dict.fromkeys(r.type for r in answerable)
            },
            "uncertain_answerable": mean(float(_decision(r) == "uncertain") for r in answerable),
            "uncertain_unanswerable": mean(
                float(_decision(r) == "uncertain") for r in unanswerable
            ),
            "curve": refusal_curve(results),
        },
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "errors": sum(r.error is not None for r in results),
        "failures": failure_reasons(results),
        "recall_curve": recall_curve(answerable, k),
        "claims": claim_totals(results),
        "answers": answer_totals(results),
    }


def answer_totals(results: Sequence[Result]) -> dict[str, int]:
    """What became of the answers: shown (not refused, not failed), shown though not grounded
    in their citations (should be none), model answers replaced for not being grounded, and
    answers cut at their token limit or for repeating."""
    shown = [r for r in results if not r.refused and not r.error]
    return {
        "shown": len(shown),
        "ungrounded_shown": sum(not grounded(c["verdict"] for c in r.claims) for r in shown),
        "replaced": sum(r.model_answer is not None for r in results),
        "truncated": sum(r.truncated is not None for r in results),
    }


def claim_totals(results: Sequence[Result]) -> dict[str, int]:
    """Every claim of every answer counted by verdict, and the repairs."""
    totals = {"claims": 0, "supported": 0, "weak": 0, "unsupported": 0, "uncited": 0}
    totals["repairs"] = 0
    for result in results:
        for claim in result.claims:
            totals["claims"] += 1
            totals[claim["verdict"]] = totals.get(claim["verdict"], 0) + 1
            totals["repairs"] += claim["repaired_from"] is not None
    return totals


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


def question_metrics(
    run: QuestionRun,
    k: int,
    settings: Settings,
    questions_file: Path,
    questions: int,
    no_llm: bool,
) -> dict[str, Any]:
    """What `metrics.json` holds: the run's settings, each mode's metrics over the questions it
    ran, and why the run stopped early (null when it ran them all)."""
    return {
        "questions_file": str(questions_file),
        "questions": questions,
        "questions_run": {mode: len(results) for mode, results in run.results.items()},
        "stopped": run.stopped,
        "k": k,
        "settings": _settings_summary(settings, no_llm),
        "modes": {mode: summarise(results, k) for mode, results in run.results.items()},
    }


def _settings_summary(settings: Settings, no_llm: bool) -> dict[str, Any]:
    llm = None if no_llm or not settings.llm_configured else settings.llm_model
    return {
        "embed_model": settings.embed_model,
        "chunk_tokens": settings.chunk_tokens,
        "top_k": settings.top_k,
        "min_relevance": settings.min_relevance,
        "confident_relevance": settings.confident_relevance,
        "dense_weight": settings.dense_weight,
        "bm25_weight": settings.bm25_weight,
        "llm_model": llm,
    }


REFUSAL_THRESHOLDS = tuple(round(0.30 + 0.02 * i, 2) for i in range(16))


def _decision(result: Result) -> str | None:
    return (result.coverage or {}).get("decision")


def refusal_curve(results: Sequence[Result]) -> list[dict[str, float | None]]:
    """For each refusal threshold: the share of answerable and of unanswerable questions whose
    evidence (best sentence cosine to the question) falls below it, i.e. that a gate there would
    refuse before any answer is written."""
    scored = [(r.type != "unanswerable", r.coverage["evidence"]) for r in results if r.coverage]
    return [
        {
            "threshold": t,
            "answerable": mean(float(e < t) for ok, e in scored if ok),
            "unanswerable": mean(float(e < t) for ok, e in scored if not ok),
        }
        for t in REFUSAL_THRESHOLDS
    ]
