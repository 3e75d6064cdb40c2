"""Results and metrics -> files: results.jsonl, metrics.json, report.md and the Recall@k plot.

The Markdown report opens with the summary `rag eval` prints (`question_summary`,
`beir_report`), then the tables per question type and the worst questions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rag.eval.questions import Result

log = logging.getLogger(__name__)
PLOT = "recall_at_k.png"
CLAIMS_PLOT = "claims.png"
REFUSAL_PLOT = "refusal_curve.png"


def write_question_run(
    out: Path, runs: Mapping[str, Sequence[Result]], metrics: Mapping[str, Any]
) -> str:
    """results.jsonl, metrics.json, report.md and the recall plot into `out`; the report's
    summary (what `rag eval` prints)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as fh:
        for results in runs.values():
            for r in results:
                fh.write(json.dumps(_result_json(r), ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plotted = plot_recall({m: v["recall_curve"] for m, v in metrics["modes"].items()}, out / PLOT)
    if plotted:
        plot_claims({m: v["claims"] for m, v in metrics["modes"].items()}, out / CLAIMS_PLOT)
        plot_refusal(
            {m: v["refusal"]["curve"] for m, v in metrics["modes"].items()},
            metrics["settings"],
            out / REFUSAL_PLOT,
        )
    (out / "report.md").write_text(question_report(metrics, runs, plotted), encoding="utf-8")
    return question_summary(metrics, plotted)


def _result_json(r: Result) -> dict[str, Any]:
    data = asdict(r)
    data["scores"] = {name: _round(value) for name, value in r.scores.items()}
    if data["error"] is None:
        del data["error"]
    return data


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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


def plot_claims(totals: Mapping[str, Mapping[str, int]], path: Path) -> None:
    """A PNG of each mode's claims by verdict (stacked shares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdicts = ("supported", "weak", "unsupported", "uncited")
    colours = ("#2e7d32", "#f9a825", "#c62828", "#757575")
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(totals)), dpi=100)
    for row, counts in enumerate(totals.values()):
        left = 0.0
        for verdict, colour in zip(verdicts, colours, strict=True):
            share = counts[verdict] / counts["claims"] if counts["claims"] else 0.0
            ax.barh(row, share, left=left, color=colour, label=verdict if row == 0 else None)
            left += share
    ax.set_yticks(range(len(totals)), list(totals))
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of claims")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def plot_refusal(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], settings: Mapping[str, Any], path: Path
) -> None:
    """A PNG of the refused share of answerable and unanswerable questions against the refusal
    threshold, one pair of lines per mode; the configured threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for mode, curve in curves.items():
        x = [p["threshold"] for p in curve]
        for key, style in (("answerable", "-"), ("unanswerable", "--")):
            y = [p[key] for p in curve]
            if any(v is not None for v in y):
                ax.plot(
                    x,
                    [v if v is not None else float("nan") for v in y],
                    style,
                    marker="o",
                    markersize=3,
                    label=f"{mode}: {key}",
                )
    ax.axvline(settings["min_relevance"], color="grey", linewidth=1, linestyle=":")
    ax.set_xlabel("refusal threshold (best sentence cosine to the question)")
    ax.set_ylabel("share refused")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_beir_run(out: Path, rows: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """results.jsonl, metrics.json and report.md into `out`; the report (what `rag eval`
    prints)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    report = beir_report(metrics)
    (out / "report.md").write_text(report, encoding="utf-8")
    return report.rstrip()


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
    ("claim R", "claim_recall"),
    ("claim P", "claim_precision"),
    ("uncited", "uncited_rate"),
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
    lines = [question_summary(metrics, plotted)]
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
        lines += ["", "The failed answers' messages are under `error` in results.jsonl."]
    return "\n".join(lines) + "\n"


def question_summary(metrics: Mapping[str, Any], plotted: bool) -> str:
    """The report's opening: what was run, and one summary row per retriever mode."""
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
    lines += _table(header, [_summary_row(mode, m) for mode, m in metrics["modes"].items()])
    if plotted:
        lines += ["", f"![Recall@k against k]({PLOT})"]
    lines += ["", *claims_table(metrics)]
    if plotted:
        lines += ["", f"![Claims by verdict]({CLAIMS_PLOT})"]
    lines += ["", *refusal_table(metrics)]
    if plotted:
        lines += ["", f"![Refused share against the threshold]({REFUSAL_PLOT})"]
    lines += failure_lines(metrics)
    return "\n".join(lines)


def failure_lines(metrics: Mapping[str, Any]) -> list[str]:
    """What became of the model's answers (replaced, cut) and why questions failed, and why
    the run stopped early: nothing when every answer came through."""
    lines: list[str] = []
    for mode, m in metrics["modes"].items():
        answers = m.get("answers") or {}
        if answers.get("replaced") or answers.get("truncated") or answers.get("ungrounded_shown"):
            lines.append(
                f"- {mode}: {answers['shown']} answers shown, {answers['ungrounded_shown']} of "
                f"them not grounded in their citations; {answers['replaced']} model answers "
                f"replaced by the extractive answer (not grounded); {answers['truncated']} cut "
                "at their token limit or for repeating."
            )
        run = metrics.get("questions_run", {}).get(mode, metrics["questions"])
        if m["errors"]:
            lines.append(f"- {mode}: {m['errors']} of {run} questions failed:")
            lines += [f"  - {n}: {reason}" for reason, n in m.get("failures", {}).items()]
    if metrics.get("stopped"):
        lines.append(f"- The run {metrics['stopped']}: the figures cover the questions run.")
    return ["", "## Failures and replaced answers", "", *lines] if lines else []


def refusal_table(metrics: Mapping[str, Any]) -> list[str]:
    """False refusals per question type, and the answers given under the uncertainty note."""
    lines = [
        "Refusals: false refusals per type of answerable question; uncertain: answered between "
        "the refusal and the confidence thresholds (the LLM decided, or an extractive answer "
        "said its quotes may not answer the question).",
        "",
    ]
    types = list(
        dict.fromkeys(
            t for m in metrics["modes"].values() for t in m["refusal"]["false_refusal_by_type"]
        )
    )
    header = ["retriever", *(f"false ref. {t}" for t in types)]
    header += ["uncertain (answerable)", "uncertain (unanswerable)"]
    rows = []
    for mode, m in metrics["modes"].items():
        r = m["refusal"]
        by_type = [_fmt(r["false_refusal_by_type"].get(t)) for t in types]
        rows.append(
            [mode, *by_type, _fmt(r["uncertain_answerable"]), _fmt(r["uncertain_unanswerable"])]
        )
    return lines + _table(header, rows)


def claims_table(metrics: Mapping[str, Any]) -> list[str]:
    """Claims of all answers by verdict, and citation recall and precision (ALCE's sense,
    answerable questions)."""
    lines = [
        "Claims: every sentence or bullet of the answers, checked against the sources it "
        "cites; claim R / P: share of claims their citations support, share of citations that "
        "support their claim (answerable questions); as cited: supported before repair.",
        "",
    ]
    header = ["retriever", "claims", "supported", "weak", "unsupported", "uncited", "repairs"]
    header += ["claim R", "claim P", "as cited"]
    rows = []
    for mode, m in metrics["modes"].items():
        c, o = m["claims"], m["overall"]
        counts = [str(c[key]) for key in header[1:7]]
        shares = [o["claim_recall"], o["claim_precision"], o["claims_supported_as_cited"]]
        rows.append([mode, *counts, *(_fmt(v) for v in shares)])
    return lines + _table(header, rows)


def _summary_row(mode: str, m: Mapping[str, Any]) -> list[str]:
    st, multi = m["single_and_title"], m["by_type"].get("multi", {})
    o, r, lat = m["overall"], m["refusal"], m["latency_s"]
    values = [
        st.get("recall@1"),
        st.get("mrr"),
        multi.get("recall@5"),
        multi.get("recall@10"),
        o["ndcg@10"],
        o["citation_precision"],
        o["citation_recall"],
        o["fact_recall"],
        r["refusal_accuracy"],
        r["false_refusal_rate"],
    ]
    return [mode, *(_fmt(v) for v in values), _fmt(lat["p50"], 2), _fmt(lat["p95"], 2)]


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
