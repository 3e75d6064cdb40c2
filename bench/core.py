"""Core timings on this machine: ingest, re-ingest, cold CLI calls, warm retrieval.

Usage: python bench/core.py [--questions FILE]   (builds a throw-away index under a temp dir)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(*args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rag", *args], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--questions", type=Path, default=ROOT.parent / "shared/eval/dev_questions.jsonl"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAG_INDEX_DIR": tmp, "HF_HUB_OFFLINE": "1"}
        rows = [
            ("rag --help (fresh process)", timed("--help", env=env)),
            ("full ingest of the bundled corpus (fresh process)", timed("ingest", env=env)),
            ("re-ingest, nothing changed (fresh process)", timed("ingest", env=env)),
            (
                "rag search QUERY --json (fresh process)",
                timed("search", "L-Mul energy", "--json", env=env),
            ),
            (
                "rag ask QUESTION --no-llm --json (fresh process)",
                timed("ask", "What is L-Mul?", "--no-llm", "--json", env=env),
            ),
        ]
        from rag.retrieve import get_retriever
        from rag.settings import Settings

        questions = [json.loads(line)["question"] for line in args.questions.open()]
        import rag.embed

        for mode in ("dense", "bm25", "hybrid"):
            retriever = get_retriever(Settings(index_dir=Path(tmp)), mode=mode)
            retriever.search("warm-up", 10)
            rag.embed.clear_cache()  # every mode embeds its queries itself
            times = []
            for q in questions:
                start = time.perf_counter()
                retriever.search(q, 10)
                times.append(time.perf_counter() - start)
            times.sort()
            p95 = times[int(0.95 * (len(times) - 1))]
            rows.append(
                (
                    f"warm {mode} retrieval, k=10: p50 / p95 (ms)",
                    f"{1000 * statistics.median(times):.1f} / {1000 * p95:.1f}",
                )
            )
    print(f"| {'measure':<55} | value |\n|{'-' * 57}|-------|")
    for name, value in rows:
        shown = f"{value:.2f} s" if isinstance(value, float) else value
        print(f"| {name:<55} | {shown} |")


if __name__ == "__main__":
    main()
