"""What claim checking adds to an answer: 8 claims over 8 sources, local verifier (no LLM judge).

The sources are eight papers of the bundled corpus, the claims eight hand-written claims of
tests/data/claims.jsonl about them (one cited to the wrong paper, so that repair runs too). As in
a real answer, the abstracts' sentences were already embedded by the evidence step
(`weigh_evidence`), so the check embeds only the claims; the "cold" row embeds the sentences too.

Usage: python bench/claims_cost.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = 30


def main() -> None:
    import rag.embed
    from rag.answer import Source, attribute, weigh_evidence
    from rag.embed import get_embedder
    from rag.settings import Settings
    from tests.test_claims import abstracts

    rows = [json.loads(line) for line in (ROOT / "tests/data/claims.jsonl").open()]
    picked: dict[str, str] = {}
    for row in rows:
        if row["kind"] == "paraphrase" and row["paper_title"] not in picked:
            picked[row["paper_title"]] = row["claim"]
        if len(picked) == 8:
            break
    titles = list(picked)
    sources = [
        Source(n, f"p{n}", title, "", None, text=abstracts()[title])
        for n, title in enumerate(titles, start=1)
    ]
    claims = [f"{claim.rstrip('.')} [{n}]." for n, claim in enumerate(picked.values(), start=1)]
    claims[0] = claims[0].replace("[1]", "[2]")  # one wrong citation: repair runs
    text = " ".join(claims)
    settings = Settings()
    embedder = get_embedder(settings)
    embedder.embed(["warm-up"])

    def timed(cold: bool) -> float:
        if cold:
            rag.embed.clear_cache()
        else:
            weigh_evidence("a question", sources, embedder)  # what the answer step has done
            rag.embed.clear_cache()
            weigh_evidence("a question", sources, embedder)
        start = time.perf_counter()
        _, found = attribute(text, sources, embedder, settings)
        elapsed = time.perf_counter() - start
        assert len(found) == 8, found
        return elapsed

    print("| claim check, 8 claims over 8 sources | p50 | p95 |\n|---|---|---|")
    for label, cold in (
        ("sentences already embedded (as in an answer)", False),
        ("cold: sentences embedded too", True),
    ):
        times = sorted(timed(cold) for _ in range(RUNS))
        p95 = times[int(0.95 * (len(times) - 1))]
        print(f"| {label} | {1000 * statistics.median(times):.1f} ms | {1000 * p95:.1f} ms |")


if __name__ == "__main__":
    main()
