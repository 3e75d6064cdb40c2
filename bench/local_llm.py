"""Dev questions against any OpenAI-compatible endpoint: LLM mode and --no-llm side by side.

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=x RAG_LLM_MODEL=smollm2 \\
        python bench/local_llm.py [--questions FILE] [--limit N] [--out DIR]

Runs `rag eval` twice over the same questions (the model configured by the environment, then
extractive) and prints one table: citation recall, the share of claims their citations support,
fact recall, refusal accuracy, latency, and what became of the model's answers (replaced for not
being grounded, cut at their token limit, failed, and ungrounded answers still shown: the target
is 0). Each run's results.jsonl, metrics.json and report.md are kept under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag import api
from rag.errors import RagError
from rag.settings import PROJECT_ROOT, Settings

DEV = PROJECT_ROOT.parent / "shared" / "eval" / "dev_questions.jsonl"


def sample(path: Path, limit: int | None, into: Path) -> Path:
    """The first `limit` questions of each type (all when None), in file order."""
    rows = [json.loads(line) for line in path.open() if line.strip()]
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for row in rows:
            if seen.get(row["type"], 0) < limit:
                kept.append(row)
                seen[row["type"]] = seen.get(row["type"], 0) + 1
        rows = kept
    into.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return into


def row(name: str, metrics: dict[str, Any], wall: float) -> list[str]:
    (mode,) = metrics["modes"].values()
    overall, claims, answers = mode["overall"], mode["claims"], mode["answers"]
    supported = claims["supported"] / claims["claims"] if claims["claims"] else None
    ran = sum(metrics["questions_run"].values())

    def f(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    return [
        name,
        f"{ran}/{metrics['questions']}",
        f(overall.get("citation_recall")),
        f(supported),
        f(overall.get("fact_recall")),
        f(mode["refusal"]["refusal_accuracy"]),
        f(mode["refusal"]["false_refusal_rate"]),
        f(mode["latency_s"]["p50"], 2),
        f(mode["latency_s"]["p95"], 2),
        str(answers["replaced"]),
        str(answers["truncated"]),
        str(mode["errors"]),
        str(answers["ungrounded_shown"]),
        f"{wall:.0f}",
    ]


HEADER = [
    "mode",
    "questions",
    "citation recall",
    "supported claims",
    "fact recall",
    "refusal acc.",
    "false refusals",
    "p50 s",
    "p95 s",
    "replaced",
    "truncated",
    "failed",
    "ungrounded shown",
    "wall s",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=Path, default=DEV)
    parser.add_argument("--limit", type=int, default=None, help="questions per type (default all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    if not settings.llm_configured:
        print("set OPENAI_BASE_URL / OPENAI_API_KEY / RAG_LLM_MODEL first", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="local-llm-"))
    out.mkdir(parents=True, exist_ok=True)
    questions = sample(args.questions, args.limit, out / "questions.jsonl")
    rows = []

    for name, no_llm in ((f"LLM ({settings.llm_model})", False), ("--no-llm", True)):
        started = time.perf_counter()
        try:
            where = out / ("extractive" if no_llm else "llm")
            run = api.evaluate(questions, settings, where, k=args.k, no_llm=no_llm)
        except RagError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        rows.append(row(name, run.metrics, time.perf_counter() - started))
    print(f"endpoint: {settings.openai_base_url}  model: {settings.llm_model}  k: {args.k}")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nruns kept in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
