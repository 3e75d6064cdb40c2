"""The coverage gate with and without an LLM (issue 18): refused share of answerable and of
unanswerable questions per question set.

* `extractive`: `--no-llm`; the grey zone (evidence between RAG_MIN_RELEVANCE and
  RAG_CONFIDENT_RELEVANCE) is refused, the closest passages listed.
* `llm, reads faithfully`: a loopback LLM that answers, citing the gold paper, when a gold paper
  is among its sources and otherwise gives the "does not cover" reply: what the grey zone is
  worth with a model that reads its sources well.
* `llm, never refuses`: a loopback LLM that always answers: only the gate refuses.

Usage: python bench/refusal.py [--index-dir DIR]   (default: a throw-away index of the corpus)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SETS = ("dev_questions", "paraphrase_dev", "paraphrase_heldout", "hard_dev", "hard_heldout")


def faithful(gold: dict[str, set[str]]) -> object:
    """Answers only when one of the question's gold papers is a source."""

    def reply(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        question = prompt.rsplit("Question: ", 1)[-1].strip()
        titles = dict(re.findall(r'<source n="(\d+)">\nTitle: (.*)\n', prompt))
        wanted = gold.get(question, set())
        found = [n for n, title in titles.items() if title in wanted]
        if not found:
            return "The collection does not cover this question."
        return f"The paper answers this [{found[0]}]."

    return reply


def main() -> None:
    from rag import api
    from rag.answer import clean_question
    from rag.settings import Settings
    from tests.fake_llm import FakeLLM

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index-dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index_dir or Path(tmp) / "index"
        base = Settings(index_dir=index)
        api.ensure_index(base)
        fake = FakeLLM().start()
        print("| set | mode | false refusals | refused (unanswerable) |\n|---|---|---|---|")
        for name in SETS:
            path = ROOT / "tests" / "data" / f"{name}.jsonl"
            rows = [json.loads(line) for line in path.open()]
            gold = {clean_question(r["question"]): set(r["gold_titles"]) for r in rows}
            llm = Settings(
                index_dir=index, openai_api_key="sk-bench", openai_base_url=fake.base_url
            )
            for mode, settings, reply in (
                ("extractive", base, None),
                ("llm, reads faithfully", llm, faithful(gold)),
                ("llm, never refuses", llm, lambda body: "The paper answers this [1]."),
            ):
                fake.default = reply or fake.default
                run = api.evaluate(path, settings, Path(tmp) / f"{name}-{mode}", no_llm=not reply)
                refusal = run.metrics["modes"][settings.retriever]["refusal"]
                fr, ra = refusal["false_refusal_rate"], refusal["refusal_accuracy"]
                print(f"| {name} | {mode} | {fr:.3f} | {ra:.3f} |")
        fake.stop()


if __name__ == "__main__":
    main()
