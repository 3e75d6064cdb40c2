"""Builds tests/data/claims.jsonl: (claim, cited paper, label) triples for the citation checker.

Sources (see tests/data/CLAIMS.md):
* `dev_answer`: the sentences of the `answer` of every single/title dev question, cited to its
  gold paper (supported);
* the hand-written claims of tests/data/claims_handwritten.jsonl: paraphrases (supported),
  partial claims (partial), hallucinations and changed numbers (unsupported);
* `wrong_paper`: every supported claim cited instead to the paper that retrieval ranks first for
  it among the others (the same neighbourhood: topically close, but it does not say the claim).

Questions are split by a hash of their id: 30% held out (never used for calibration).

Usage: python bench/claims_set.py   (builds a throw-away index of the bundled corpus)
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data"


def split_of(qid: str) -> str:
    return "heldout" if int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 10 < 3 else "dev"


def main() -> None:
    from rag import api
    from rag.claims import split_claims
    from rag.settings import Settings

    questions = [json.loads(line) for line in (DATA / "dev_questions.jsonl").open()]
    gold = {q["qid"]: q["gold_titles"][0] for q in questions if q["type"] in ("single", "title")}
    rows: list[dict[str, str]] = []
    for q in questions:
        if q["qid"] in gold:
            for claim in split_claims(q["answer"]):
                rows.append(
                    {
                        "qid": q["qid"],
                        "paper_title": gold[q["qid"]],
                        "claim": claim.text,
                        "label": "supported",
                        "kind": "dev_answer",
                    }
                )
    handwritten = [json.loads(line) for line in (DATA / "claims_handwritten.jsonl").open()]
    rows += handwritten
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(index_dir=Path(tmp) / "index")
        api.ingest(None, settings)
        assistant = api.Assistant(settings, no_llm=True)
        for row in [r for r in rows if r["label"] == "supported"]:
            hits = assistant.search(row["claim"], 5)
            other = next(h.title for h in hits if h.title != row["paper_title"])
            rows.append(
                {**row, "paper_title": other, "label": "unsupported", "kind": "wrong_paper"}
            )
    with (DATA / "claims.jsonl").open("w", encoding="utf-8") as out:
        for number, row in enumerate(rows, start=1):
            record = {"id": f"c{number:04d}", "split": split_of(row["qid"]), **row}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (split_of(row["qid"]), row["kind"])
        counts[key] = counts.get(key, 0) + 1
    print("| split | kind | triples |\n|---|---|---|")
    for (split, kind), count in sorted(counts.items()):
        print(f"| {split} | {kind} | {count} |")


if __name__ == "__main__":
    main()
