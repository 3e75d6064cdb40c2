"""Ranked keys and gold keys -> retrieval and citation metrics: pure functions.

Keys are normalised titles or corpus ids. A key that appears twice in a ranking counts once,
at its first rank, and the repeat wastes its slot, as it would waste a source given to the LLM.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any


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


def claim_scores(claims: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Citation quality of one answer's claims, in the sense of ALCE (Gao et al., 2023):

    * `claim_recall`: share of claims their citations support (an uncited claim is not);
    * `claim_precision`: share of citations that support their claim at least in part (a
      citation that gives its claim no support is not needed);
    * `claims_supported_as_cited`: share of claims supported by the citations the answer
      first gave them (before any repair);
    * `uncited_rate`: share of claims with no citation;
    * `repairs`: how many claims were re-cited.

    Each claim is a mapping with `verdict`, `repaired_from` (None unless re-cited) and
    `evidence` (one mapping with `verdict` per citation). Shares are None without claims
    (precision: without citations).
    """
    if not claims:
        return dict.fromkeys(CLAIM_METRICS[:-1]) | {"repairs": 0.0}
    total = len(claims)
    supported = [c["verdict"] == "supported" for c in claims]
    citations = [e["verdict"] != "unsupported" for c in claims for e in c["evidence"]]
    as_cited = [s and c["repaired_from"] is None for s, c in zip(supported, claims, strict=True)]
    return {
        "claim_recall": sum(supported) / total,
        "claim_precision": sum(citations) / len(citations) if citations else None,
        "claims_supported_as_cited": sum(as_cited) / total,
        "uncited_rate": sum(c["verdict"] == "uncited" for c in claims) / total,
        "repairs": float(sum(c["repaired_from"] is not None for c in claims)),
    }


CLAIM_METRICS = (
    "claim_recall",
    "claim_precision",
    "claims_supported_as_cited",
    "uncited_rate",
    "repairs",
)
