"""Calibrates and measures the claim checker on tests/data/claims.jsonl.

For each (claim, cited abstract) triple the features of every span of the abstract are computed
(cosine, content-word overlap, missing numbers: `rag.claims`); a logistic model is fitted on the
dev part (supported against unsupported; partial claims are left out of the fit), the best span
chosen again with the fitted model, and the fit repeated. Reported for each signal alone and
for the combination, on the dev and the held-out part: the share of true citations wrongly
flagged (verdict not `supported`), of wrong-paper citations flagged, of hallucinations, changed
numbers and partial claims flagged, and the three-class accuracy (supported / partial -> weak /
unsupported).

Usage: python bench/claims_calibrate.py [--write]   (--write: print the constants to paste)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data" / "claims.jsonl"
TRUE_FLAG_TARGET = 0.05
SIGNALS = {
    "cosine": [0],
    "overlap": [1],
    "numbers": [2],
    "abstract overlap": [3],
    "names": [4],
    "cosine + overlap + numbers": [0, 1, 2],
    "all five": [0, 1, 2, 3, 4],
    "combined (rag.support.MODEL)": [0, 2, 3, 4],
}


def abstracts() -> dict[str, str]:
    from rag.corpus import iter_file
    from rag.reading import expand_paths
    from rag.settings import Settings

    found: dict[str, str] = {}
    for path in expand_paths([Settings().corpus_dir]):
        for item in iter_file(path):
            if hasattr(item, "abstract"):
                found.setdefault(item.title, item.abstract)
    return found


def span_features(rows: list[dict], bodies: dict[str, str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per triple: the feature rows of every span of its cited abstract, and whether the claim
    states a number the abstract does not."""
    from rag.claims import plain
    from rag.embed import embed_cached, get_embedder
    from rag.settings import Settings
    from rag.support import ClaimText, SourceText

    embedder = get_embedder(Settings())
    vectors = embed_cached(embedder, [plain(r["claim"]) for r in rows])
    texts: dict[str, SourceText] = {}
    out, missing = [], []
    for row, vector in zip(rows, vectors, strict=True):
        title = row["paper_title"]
        if title not in texts:
            texts[title] = SourceText.of(1, bodies[title], embedder)
        claim = ClaimText.of(plain(row["claim"]), vector)
        out.append(texts[title].features(claim))
        missing.append(bool(claim.numbers - texts[title].all_numbers))
    return out, np.asarray(missing)


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Logistic regression by Newton's method: [bias, weights...]."""
    design = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ w))
        grad = design.T @ (p - y) + l2 * w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def chosen(features: list[np.ndarray], columns: list[int]) -> np.ndarray:
    """One feature row per triple: its best span's (`rag.claims.best_span`)."""
    from rag.support import best_span

    return np.asarray([f[best_span(f)][columns] for f in features])


def calibrate(
    features: list[np.ndarray], rows: list[dict], columns: list[int]
) -> tuple[np.ndarray, float, float]:
    """Weights, and the supported and weak thresholds, fitted on the dev part."""
    dev = [i for i, r in enumerate(rows) if r["split"] == "dev" and r["label"] != "partial"]
    y = np.asarray([rows[i]["label"] == "supported" for i in dev], dtype=float)
    w = fit(chosen([features[i] for i in dev], columns), y)
    probs = probability_of(features, columns, w)
    true = np.asarray([probs[i] for i in dev if rows[i]["label"] == "supported"])
    supported_min = float(np.quantile(true, TRUE_FLAG_TARGET * 0.8))  # some room for held-out
    partial = [
        probs[i] for i, r in enumerate(rows) if r["split"] == "dev" and r["kind"] == "partial"
    ]
    wrong = [probs[i] for i in dev if rows[i]["label"] == "unsupported"]
    candidates = np.linspace(0.01, supported_min, 60)
    weak_min = max(
        candidates,
        key=lambda t: np.mean([p >= t for p in partial]) + np.mean([p < t for p in wrong]),
    )
    return w, supported_min, float(weak_min)


def probability_of(features: list[np.ndarray], columns: list[int], w: np.ndarray) -> np.ndarray:
    x = chosen(features, columns)
    return 1 / (1 + np.exp(-(w[0] + x @ w[1:])))


def report(
    rows: list[dict],
    probs: np.ndarray,
    supported_min: float,
    weak_min: float,
    capped: np.ndarray | None = None,
) -> dict:
    """Flag rates and accuracy per part; `capped` triples are weak at best (a number the
    abstract does not state)."""
    capped = np.zeros(len(rows), dtype=bool) if capped is None else capped

    def verdict(p: float, cap: bool) -> str:
        if p >= supported_min and not cap:
            return "supported"
        return "weak" if p >= weak_min else "unsupported"

    out = {}
    for split in ("dev", "heldout"):
        part = [
            (r, verdict(p, cap))
            for r, p, cap in zip(rows, probs, capped, strict=True)
            if r["split"] == split
        ]

        def flagged(kinds: tuple[str, ...], part: list = part) -> float:
            got = [v != "supported" for r, v in part if r["kind"] in kinds]
            return float(np.mean(got)) if got else float("nan")

        wanted = {"supported": "supported", "partial": "weak", "unsupported": "unsupported"}
        out[split] = {
            "true flagged": flagged(("dev_answer", "paraphrase")),
            "wrong paper flagged": flagged(("wrong_paper",)),
            "hallucination flagged": flagged(("hallucination",)),
            "changed number flagged": flagged(("changed_number",)),
            "partial flagged": flagged(("partial",)),
            "accuracy (3 classes)": float(np.mean([wanted[r["label"]] == v for r, v in part])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="print the constants for claims.py")
    args = parser.parse_args()
    rows = [json.loads(line) for line in DATA.open()]
    bodies = abstracts()
    start = time.perf_counter()
    features, missing = span_features(rows, bodies)
    print(f"{len(rows)} triples; features in {time.perf_counter() - start:.1f} s\n")
    columns = [
        "true flagged",
        "wrong paper flagged",
        "hallucination flagged",
        "changed number flagged",
        "partial flagged",
        "accuracy (3 classes)",
    ]
    print("| signals | part | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    fitted = {}
    for name, cols in SIGNALS.items():
        w, supported_min, weak_min = calibrate(features, rows, cols)
        fitted[name] = (w, supported_min, weak_min)
        figures = report(rows, probability_of(features, cols, w), supported_min, weak_min)
        for split, values in figures.items():
            cells = " | ".join(f"{values[c]:.3f}" for c in columns)
            print(f"| {name} | {split} | {cells} |")
    name = "combined (rag.support.MODEL)"
    w, supported_min, weak_min = fitted[name]
    probs = probability_of(features, SIGNALS[name], w)
    for split, values in report(rows, probs, supported_min, weak_min, missing).items():
        cells = " | ".join(f"{values[c]:.3f}" for c in columns)
        print(
            f"| combined, a number the abstract lacks caps at weak (shipped) | {split} | {cells} |"
        )
    print(
        f"\n{name}: weights {np.round(w, 3).tolist()}, supported >= {supported_min:.3f}, "
        f"weak >= {weak_min:.3f}"
    )
    if args.write:
        print(f"WEIGHTS = {tuple(round(float(v), 3) for v in w)}")
        print(f"SUPPORTED_MIN = {supported_min:.3f}\nWEAK_MIN = {weak_min:.3f}")


if __name__ == "__main__":
    main()
