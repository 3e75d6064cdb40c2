"""Claim-level attribution (issue 15): the splitter, the support classifier against the held-out
part of the labelled set, citation repair, the number rule, the optional LLM judge, and the
claims in answers, summaries and `rag ask` output (real MiniLM, loopback LLM server)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from rag import api
from rag.claims import Checker, Claim, flagged, split_claims
from rag.corpus import iter_file
from rag.embed import Embedder, get_embedder
from rag.reading import expand_paths
from rag.retrieve import PaperHit
from rag.settings import PROJECT_ROOT, Settings
from tests.fake_llm import FakeLLM
from tests.helpers import run_rag

DATA = Path(__file__).parent / "data"
LMUL = "Addition is All You Need for Energy-efficient Language Models"
LION = "Symbolic Discovery of Optimization Algorithms"
POINTER = "Pointer Networks"
# A supported first claim keeps an answer grounded, so the claim under test stays in it instead of
# the whole answer being replaced by the extractive one (issue 16).
GROUNDED = (
    "Pointer networks use attention as a pointer to select a member of the input sequence [1]. "
)


@cache
def abstracts() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in expand_paths([PROJECT_ROOT / "index" / "corpus"]):
        for item in iter_file(path):
            if hasattr(item, "abstract"):
                found.setdefault(item.title, item.abstract)
    return found


@cache
def minilm() -> Embedder:
    return get_embedder(Settings())


# ---------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "L-Mul replaces multipliers with adders [1]. It saves energy on hardware [1][3].",
            [
                ("L-Mul replaces multipliers with adders [1].", [1]),
                ("It saves energy on hardware [1][3].", [1, 3]),
            ],
        ),
        (
            "- Lion keeps only the momentum in memory [2]\n- Adam keeps two moment estimates [1, 2]",
            [
                ("- Lion keeps only the momentum in memory [2]", [2]),
                ("- Adam keeps two moment estimates [1, 2]", [1, 2]),
            ],
        ),
        (
            "Vinyals et al. introduced pointer networks for sorting [1]. They also solve hulls [1].",
            [
                ("Vinyals et al. introduced pointer networks for sorting [1].", [1]),
                ("They also solve hulls [1].", [1]),
            ],
        ),
        (
            "Several methods, e.g. Lion and Adam, train ViT models well [2]. Accuracy rose 2.5 points.",
            [
                ("Several methods, e.g. Lion and Adam, train ViT models well [2].", [2]),
                ("Accuracy rose 2.5 points.", []),
            ],
        ),
        (
            "It cuts energy by 95% on tensor hardware. [3] The error stays small in practice. [3]",
            [
                ("It cuts energy by 95% on tensor hardware. [3]", [3]),
                ("The error stays small in practice. [3]", [3]),
            ],
        ),
        (
            "Here is what the papers say:\n1. Pointer networks select input positions [1; 2].\n"
            "**Open problems** remain.\n_Extractive answer (no LLM configured)._",
            [("1. Pointer networks select input positions [1; 2].", [1, 2])],
        ),
    ],
)
def test_claims_are_sentences_and_bullets_with_their_markers(
    text: str, expected: list[tuple[str, list[int]]]
) -> None:
    claims = split_claims(text)
    assert [(c.text, c.citations) for c in claims] == expected
    assert all(text[c.start : c.end] == c.text for c in claims)


# ---------------------------------------------------------------- the classifier


def test_flag_rates_on_the_held_out_labelled_set() -> None:
    """The targets of issue 15 on triples never used for calibration: at least 90% of
    wrong-paper citations flagged, at most 5% of true citations flagged."""
    rows = [json.loads(line) for line in (DATA / "claims.jsonl").open()]
    held = [r for r in rows if r["split"] == "heldout"]
    assert len(held) >= 80
    verdicts = []
    for row in held:
        claim = Claim(row["claim"], [1])
        Checker({1: abstracts()[row["paper_title"]]}, minilm()).score([claim], repair=False)
        verdicts.append((row["kind"], claim.verdict))

    def flagged_share(kinds: tuple[str, ...]) -> float:
        got = [v != "supported" for k, v in verdicts if k in kinds]
        return sum(got) / len(got)

    assert flagged_share(("wrong_paper",)) >= 0.90
    assert flagged_share(("dev_answer", "paraphrase")) <= 0.05
    assert flagged_share(("changed_number",)) >= 0.75


# ---------------------------------------------------------------- answers


class FixedRetriever:
    """The same papers, with their whole abstracts, for every query."""

    def __init__(self, titles: list[str]) -> None:
        self.hits = [
            PaperHit(
                f"p{i}",
                title,
                0.6,
                abstracts()[title][:200],
                f"p{i}#0",
                0.6,
                text=abstracts()[title],
            )
            for i, title in enumerate(titles, start=1)
        ]

    def search(self, query: str, k: int) -> list[PaperHit]:
        return [PaperHit(**vars(h)) for h in self.hits[:k]]

    def attach_texts(self, papers: list[PaperHit]) -> None:
        pass

    def restricted(self, filters: Any) -> FixedRetriever:
        return self

    def papers_by_id(self, ids: list[str]) -> list[PaperHit]:
        return [h for h in self.hits if h.paper_id in ids]


def ask(fake: FakeLLM, reply: str, **settings: Any) -> Any:
    fake.reply(reply)
    values: dict[str, Any] = {
        "openai_api_key": "sk-claims",
        "openai_base_url": fake.base_url,
        "llm_max_retries": 0,
        "min_relevance": 0.0,  # the refusal gate is not what these tests look at
        **settings,
    }
    return api.ask(
        "How can a language model save energy on multiplications?",
        Settings(**values),
        retriever=FixedRetriever([POINTER, LION, LMUL]),
        embedder=minilm(),
    )


def test_a_claim_cited_to_the_wrong_paper_is_recited_to_the_one_that_says_it(
    fake_llm: FakeLLM,
) -> None:
    answer = ask(
        fake_llm,
        "L-Mul approximates floating point multiplication with integer addition operations [2].",
    )
    (claim,) = answer.claims
    assert claim.citations == [3] and claim.repaired_from == [2] and claim.verdict == "supported"
    assert answer.answer.endswith("integer addition operations [3].")
    assert [s.title for s in answer.citations] == [LMUL]
    assert answer.repairs == [{"claim": 0, "from": [2], "to": [3]}]
    lmul = answer.sources[2]
    assert "integer addition operations" in lmul.quote and lmul.question_quote


def test_a_claim_no_source_supports_is_flagged_and_never_recited(fake_llm: FakeLLM) -> None:
    text = (
        GROUNDED
        + "The method was validated on Google's Sycamore quantum processor with 53 qubits [3]."
    )
    answer = ask(fake_llm, text)
    claim = answer.claims[1]
    assert claim.verdict == "unsupported" and claim.better_source is None
    assert claim.repaired_from is None and answer.answer == text
    assert "(⚠ not supported by [3])" in flagged(answer.answer, answer.claims)
    assert answer.to_json()["claims_summary"]["unsupported"] == 1


def test_without_repair_a_better_source_is_named_but_not_used(fake_llm: FakeLLM) -> None:
    text = GROUNDED + (
        "Lion keeps track of only the momentum, so it uses less memory than Adam [1]."
    )
    answer = ask(fake_llm, text, citation_repair=False)
    claim = answer.claims[1]
    assert claim.verdict == "unsupported" and claim.better_source == 2
    assert answer.answer == text and answer.repairs == []
    assert "[2] supports it" in flagged(answer.answer, answer.claims)


def test_an_uncited_claim_gets_the_source_that_supports_it(fake_llm: FakeLLM) -> None:
    answer = ask(
        fake_llm,
        "Pointer networks use attention as a pointer to select a member of the input sequence.",
    )
    (claim,) = answer.claims
    assert claim.repaired_from == [] and claim.citations == [1]
    assert answer.answer.endswith("of the input sequence [1].")


def test_a_number_the_abstract_never_states_makes_the_claim_weak(fake_llm: FakeLLM) -> None:
    answer = ask(
        fake_llm,
        GROUNDED + "Applying L-Mul in tensor processing hardware can reduce 60% of the energy cost "
        "of element-wise floating point tensor multiplications [3].",
    )
    claim = answer.claims[1]
    assert claim.verdict == "weak" and claim.evidence[0].missing_numbers == ["60"]
    assert "95% energy cost" in claim.evidence[0].quote
    assert answer.to_json()["claims"][1]["evidence"][0]["missing_numbers"] == ["60"]


def test_the_llm_judge_overrides_local_verdicts_and_a_garbled_reply_changes_nothing(
    fake_llm: FakeLLM,
) -> None:
    claim = GROUNDED + "L-Mul approximates floating point multiplication with integer addition [3]."
    fake_llm.reply(claim, "1: supported\n2: not supported")
    settings = Settings(
        openai_api_key="sk-claims",
        openai_base_url=fake_llm.base_url,
        llm_max_retries=0,
        verify="llm",
    )
    answer = api.ask(
        "How does L-Mul work?",
        settings,
        retriever=FixedRetriever([POINTER, LION, LMUL]),
        embedder=minilm(),
    )
    assert answer.claims[1].verdict == "unsupported"
    judge = fake_llm.chat_requests()[-1]["body"]["messages"][-1]["content"]
    assert "2. Claim: L-Mul approximates" in judge and "Quote:" in judge
    fake_llm.reply(claim, "I think these all look fine to me!")
    answer = api.ask(
        "How does L-Mul work?",
        settings,
        retriever=FixedRetriever([POINTER, LION, LMUL]),
        embedder=minilm(),
    )
    assert answer.claims[1].verdict == "supported"


# ---------------------------------------------------------------- end to end


def lmul_llm(body: dict[str, Any]) -> str:
    """Cites the right source for one claim and Lion's number for another."""
    import re

    prompt = body["messages"][-1]["content"]
    numbers = dict(re.findall(r'<source n="(\d+)">\nTitle: (.*)\n', prompt))
    by_title = {title: n for n, title in numbers.items()}
    right = by_title.get(LMUL, "1")
    wrong = next(n for n in numbers if n != right)
    return (
        f"L-Mul approximates floating point multiplication with integer addition [{right}]. "
        f"It was validated on Google's Sycamore quantum processor with 53 qubits [{wrong}]."
    )


def test_rag_ask_json_and_terminal_show_claims_and_flags(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.default = lmul_llm
    env = {
        "OPENAI_API_KEY": "sk-claims",
        "OPENAI_BASE_URL": fake_llm.base_url,
        "RAG_LLM_MAX_RETRIES": "0",
    }
    question = "How does L-Mul replace floating point multiplication?"
    result = run_rag("ask", question, "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    verdicts = [c["verdict"] for c in data["claims"]]
    assert verdicts == ["supported", "unsupported"]
    assert data["claims_summary"] == {"supported": 1, "weak": 0, "unsupported": 1, "uncited": 0}
    lmul = next(s for s in data["sources"] if s["title"] == LMUL)
    assert "integer addition" in lmul["quote"] and lmul["question_quote"]

    result = run_rag("ask", question, env=env)
    assert result.returncode == 0, result.stderr
    assert "with 53 qubits [" in result.stdout and "(⚠ not supported by [" in result.stdout
    assert f"] {LMUL}" in result.stdout and '"' in result.stdout.split("Sources:")[1]


def test_summaries_check_the_overview_and_each_papers_line(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    summary = api.summarize("medical image segmentation datasets", corpus_settings, 6)
    assert summary.mode == "extractive" and summary.claims
    assert all(c.verdict == "supported" for c in summary.claims)
    data = summary.to_json()
    assert data["claims_summary"]["supported"] == len(summary.claims)
    assert all(p["verdict"] == "supported" and p["evidence"] for p in data["papers"])
