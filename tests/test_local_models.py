"""Small local models (issue 16): the loopback server plays each way SmolLM2-class models and
single-slot servers misbehave (an uncited answer, an invented [7], rambling, a `length` finish, a
stall, a context-length 400, a slot kept busy), and each test checks what the user sees."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from rag import api
from rag.answer import Answer
from rag.claims import resolve_citations
from rag.errors import LLMError
from rag.generation import REPEATING, RepetitionGuard, generate
from rag.llm import LEARNED_CONTEXT, LLM
from rag.parts import abstract_parts, split_sentences
from rag.settings import Settings
from tests.fake_llm import CHARS_PER_TOKEN, FakeLLM, Fault, Slow, ramble
from tests.helpers import run_rag, write_jsonl
from tests.test_claims import LION, LMUL, POINTER, FixedRetriever, abstracts, minilm

QUESTION = "How can a language model save energy on multiplications?"
GROUNDED = (
    "L-Mul approximates floating point multiplication with integer addition operations [3]. "
    "Pointer networks use attention as a pointer to select a member of the input sequence [1]."
)


@pytest.fixture(autouse=True)
def forget_learned_contexts() -> None:
    LEARNED_CONTEXT.clear()  # a port can be reused by the next test's server


def echo_first_source(body: dict[str, Any]) -> str:
    """A model that quotes the first sentence of the first abstract it was given, cited [1]; the
    judge's prompt gets a verdict."""
    prompt = body["messages"][-1]["content"]
    if "numbered pair" in prompt:
        return "1: supported"
    found = re.search(r"Abstract: (.*)", prompt)
    if found is None:
        return "What are the limitations of Lion?"
    return re.split(r"(?<=[.!?])\s+", found.group(1))[0].rstrip(".") + " [1]."


def llm_settings(fake: FakeLLM, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "sk-local-000000",
        "openai_base_url": fake.base_url,
        "llm_model": "SmolLM2-135M-Instruct",
        "llm_max_retries": 0,
        "min_relevance": 0.0,  # the refusal gate is not what these tests look at
        **extra,
    }
    return Settings(**values)


def ask(fake: FakeLLM, question: str = QUESTION, no_llm: bool = False, **extra: Any) -> Answer:
    return api.ask(
        question,
        llm_settings(fake, **extra),
        retriever=FixedRetriever([POINTER, LION, LMUL]),
        embedder=minilm(),
        no_llm=no_llm,
    )


# ------------------------------------------------------- answers never presented as cited


def test_an_uncited_invented_answer_is_replaced_by_the_extractive_one(fake_llm: FakeLLM) -> None:
    invented = (
        "L-Mul is a quantisation scheme that uses a technique called LQ-LoRA. "
        "It was trained on the Pile for three weeks."
    )
    fake_llm.reply(invented)
    answer = ask(fake_llm)
    assert answer.mode == "extractive" and answer.model_answer == invented
    assert "not grounded" in (answer.note or "") and answer.citations  # cited quotes instead
    assert "LQ-LoRA" not in answer.answer and re.search(r"\[\d\]", answer.answer)
    data = answer.to_json()
    assert data["model_answer"] == invented and data["mode"] == "extractive"
    assert all(c["verdict"] == "supported" for c in data["claims"])


def test_a_grounded_answer_is_kept(fake_llm: FakeLLM) -> None:
    fake_llm.reply(GROUNDED)
    answer = ask(fake_llm)
    assert answer.mode == "llm" and answer.answer == GROUNDED and answer.model_answer is None
    assert [s.title for s in answer.citations] == [LMUL, POINTER]


def test_an_uncited_answer_the_sources_support_is_recited_not_replaced(fake_llm: FakeLLM) -> None:
    fake_llm.reply(re.sub(r" \[\d\]", "", GROUNDED))
    answer = ask(fake_llm)
    assert answer.mode == "llm" and answer.model_answer is None
    assert [c.citations for c in answer.claims] == [[3], [1]]


def test_a_refusal_replaces_an_ungrounded_answer_when_coverage_is_in_doubt(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.reply("Sourdough needs a hydration of 75 percent and a long cold proof.")
    answer = ask(fake_llm, "What hydration suits a rye sourdough?", min_relevance=0.5)
    if answer.refused:  # the gate refused before the call: nothing to replace
        assert answer.model_answer is None
    else:
        assert answer.mode == "extractive" and "Sourdough" not in answer.answer
        assert answer.model_answer is not None


def test_an_invented_marker_leaves_no_gap_in_the_text() -> None:
    for raw, clean in [
        ("Source [7] discusses L-Mul [1].", "A source discusses L-Mul [1]."),
        (
            "As shown in [7], adders suffice [1].",
            "As shown in one of the sources, adders suffice [1].",
        ),
        ("Adders suffice [7] [1].", "Adders suffice [1]."),
    ]:
        text, _, dropped = resolve_citations(raw, [type("S", (), {"n": 1})()])
        assert text == clean and dropped == [7]
        assert "  " not in text


def test_the_terminal_shows_the_replacement_after_a_streamed_ungrounded_answer(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.default = "Source [7] says the answer is LQ-LoRA, trained on the Pile for weeks."
    result = run_rag("ask", "Which optimiser keeps only the momentum?", env=env_for(fake_llm))
    assert result.returncode == 0, result.stderr
    assert "not grounded" in result.stderr
    replaced = result.stdout.split("LQ-LoRA", 1)[-1]
    assert "Lion" in replaced and re.search(r"\[\d\]", replaced)


# ------------------------------------------------------------------ bounded generation


def test_rambling_is_cut_at_the_first_repeat_and_the_stream_closed(fake_llm: FakeLLM) -> None:
    fake_llm.chunk_delay = 0.002
    fake_llm.reply(GROUNDED + " " + ramble())
    llm = LLM(llm_settings(fake_llm))
    shown: list[str] = []
    started = time.monotonic()
    reply = generate(llm, [{"role": "user", "content": "Go"}], 2000, on_token=shown.append)
    assert time.monotonic() - started < 10
    assert reply.truncated == REPEATING and reply.text.count("LQ-LoRA") == 1
    assert "".join(shown).strip() == reply.text
    deadline = time.monotonic() + 5
    while fake_llm.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_llm.disconnects == 1  # the server saw the client go: it stops generating


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("One two three four five six seven. " * 3, "One two three four five six seven. "),
        ("the loss goes down and " * 12, "the loss goes down and "),
        (
            "1. Lion keeps only the momentum in its memory [1].\n"
            "2. Lion keeps only the momentum in its memory [2].\n",
            None,
        ),
    ],
)
def test_the_repetition_guard(text: str, kept: str | None) -> None:
    guard = RepetitionGuard()
    cut = None
    for end in range(1, len(text) + 1, 7):  # as the text streams in
        cut = guard.cut(text[:end]) if cut is None else cut
    cut = guard.cut(text) if cut is None else cut
    if kept is None:
        assert cut == text.index("2.")  # the same sentence again, only its citation differs
    else:
        assert cut is not None and text[:cut].rstrip() == kept.rstrip()


def test_varied_text_is_never_cut() -> None:
    guard = RepetitionGuard()
    text = " ".join(abstracts().values())[:20_000]
    assert all(guard.cut(text[:end]) is None for end in range(500, len(text), 500))


def test_a_reply_cut_by_its_token_limit_says_so_everywhere(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    long = (
        "Lion is more memory-efficient than Adam as it only keeps track of the momentum [1]. "
        "Its update has the same magnitude for each parameter, calculated through the sign "
        "operation [1]. Lion boosts the accuracy of ViT by up to 2% on ImageNet [1]."
    )
    fake_llm.default = long
    result = run_rag(
        "ask",
        "Which optimiser keeps only the momentum?",
        "--json",
        env={**env_for(fake_llm), "RAG_ANSWER_TOKENS": "40"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "40-token limit (RAG_ANSWER_TOKENS)" in data["truncated"]
    (request,) = [r for r in fake_llm.chat_requests() if "<source" in str(r["body"])]
    assert request["body"]["max_tokens"] == 40
    text = run_rag(
        "ask",
        "Which optimiser keeps only the momentum?",
        env={**env_for(fake_llm), "RAG_ANSWER_TOKENS": "40"},
    )
    assert "40-token limit" in text.stderr


def test_every_kind_of_call_has_its_token_budget(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    budgets = {
        "answer_tokens": 111,
        "rewrite_tokens": 22,
        "summary_map_tokens": 33,
        "summary_reduce_tokens": 144,
        "paper_summary_tokens": 155,
        "verify_tokens": 66,
    }
    settings = llm_settings(fake_llm, verify="llm", **budgets)
    fake_llm.default = echo_first_source
    _, turn = api.chat("Which optimiser keeps only the momentum?", [], settings)
    api.chat("What are its limitations?", [turn], settings)
    api.summarize("optimisers for training neural networks", settings, max_papers=2)
    api.summarize_paper("Pointer Networks", settings)
    seen = [r["body"].get("max_tokens") for r in fake_llm.chat_requests()]
    assert None not in seen and set(seen) == set(budgets.values())


# --------------------------------------------------------------------- prompts that fit


def test_a_context_length_400_is_learned_and_the_prompt_shrunk(fake_llm: FakeLLM) -> None:
    fake_llm.context_tokens = 700  # about 2,800 characters of prompt and reply together
    fake_llm.reply(GROUNDED)
    answer = ask(fake_llm)
    first, second = fake_llm.chat_requests()
    assert len(str(second["body"]["messages"])) < len(str(first["body"]["messages"]))
    assert answer.mode == "llm" and answer.answer == GROUNDED
    assert "left out" in (answer.note or "") or "shortened" in (answer.note or "")
    # Learned for the rest of the process: the next question fits the first time.
    fake_llm.reply(GROUNDED)
    ask(fake_llm)
    assert len(fake_llm.chat_requests()) == 3


@pytest.mark.parametrize("style", ["openai", "llama.cpp"])
def test_a_configured_small_context_is_never_exceeded(
    corpus_settings: Settings, fake_llm: FakeLLM, style: str
) -> None:
    fake_llm.context_tokens = 2048 * 3 // CHARS_PER_TOKEN * CHARS_PER_TOKEN // 3  # ours is tighter
    fake_llm.context_style = style
    fake_llm.default = "The collection does not cover this question."
    result = run_rag(
        "ask",
        "sign-based optimisers that use less memory than Adam",
        "--k",
        "10",
        "--json",
        env={**env_for(fake_llm), "RAG_LLM_CONTEXT_TOKENS": "2048"},
    )
    assert result.returncode == 0, result.stderr
    (request,) = fake_llm.chat_requests()
    assert request["body"]["max_tokens"] <= 1024


def test_a_server_with_a_tiny_context_gets_one_clear_error(fake_llm: FakeLLM) -> None:
    fake_llm.context_tokens = 100
    with pytest.raises(LLMError, match="longer than the model's context"):
        ask(fake_llm)


def test_a_rambling_rewrite_is_capped_before_it_reaches_the_answer_prompt(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.context_tokens = 3000
    fake_llm.reply(GROUNDED, ramble("What does the L-Mul paper say about LQ-LoRA adapters?"))
    fake_llm.reply(GROUNDED)
    using = {"retriever": FixedRetriever([POINTER, LION, LMUL]), "embedder": minilm()}
    settings = llm_settings(fake_llm)
    _, turn = api.chat(QUESTION, [], settings, **using)
    answer, _ = api.chat("And its energy use?", [turn], settings, **using)
    rewrite = fake_llm.chat_requests()[1]["body"]
    assert rewrite["max_tokens"] == Settings().rewrite_tokens
    assert len(answer.question) <= 2000 and answer.answer == GROUNDED
    assert fake_llm.chat_requests()[2]["body"]["max_tokens"] == Settings().answer_tokens


# --------------------------------------------------------------------- slots and stalls


def test_a_timed_out_request_frees_a_single_slot_server(fake_llm: FakeLLM) -> None:
    fake_llm.single_slot()
    fake_llm.reply(Slow(GROUNDED * 20, 0.5), GROUNDED)
    settings = {"llm_timeout": 2.0}
    started = time.monotonic()
    with pytest.raises(LLMError, match="prompt processing included"):
        ask(fake_llm, **settings)
    assert time.monotonic() - started < 6
    answer = ask(fake_llm, **settings)  # the slot was freed when the first client gave up
    assert answer.answer == GROUNDED


# -------------------------------------------------------------------------- eval goes on


def test_eval_records_failures_and_keeps_going(
    corpus_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    questions = few(tmp_path, 4)
    fake_llm.reply(Fault(500), "The collection does not cover this question.", Fault(503))
    fake_llm.default = "The collection does not cover this question."
    out = tmp_path / "out"
    result = run_rag(
        "eval", "--questions", str(questions), "--out", str(out), env=env_for(fake_llm)
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert len(rows) == 4 and sum(1 for r in rows if r.get("error")) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    summary = next(iter(metrics["modes"].values()))
    assert summary["errors"] == 2 and sum(summary["failures"].values()) == 2
    assert "Failures and replaced answers" in (out / "report.md").read_text()


def test_eval_stops_after_failures_in_a_row_and_keeps_what_it_has(
    corpus_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    questions = few(tmp_path, 6)
    fake_llm.reply("The collection does not cover this question.")
    fake_llm.default = Fault(500)
    out = tmp_path / "out"
    result = run_rag(
        "eval", "--questions", str(questions), "--out", str(out), env=env_for(fake_llm)
    )
    assert result.returncode == 1
    assert "partial results in" in result.stderr and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert len(rows) == 4 and not rows[0].get("error") and all(r["error"] for r in rows[1:])
    assert json.loads((out / "metrics.json").read_text())["stopped"]


# ------------------------------------------------------------------------ extractive text


def test_no_llm_by_choice_says_so(fake_llm: FakeLLM) -> None:
    answer = ask(fake_llm, no_llm=True)
    assert answer.mode == "extractive" and "no LLM configured" not in (answer.note or "")
    assert "--no-llm" in (answer.note or "")
    assert not fake_llm.chat_requests()


def test_paper_parts_follow_what_sentences_say_not_single_words() -> None:
    parts = abstract_parts(split_sentences(abstracts()[POINTER]))
    assert any("cannot be trivially addressed" in s for s in parts["problem"])
    assert not any("cannot be trivially" in s for s in parts["method"] + parts["limitations"])
    assert any("not only improve" in s for s in parts["results"])  # "only": not a limitation
    lion = abstract_parts(split_sentences(abstracts()[LION]))
    assert any("we examine the limitations of Lion" in s for s in lion["limitations"])
    assert not any("only keeps track" in s for s in lion["limitations"])
    lmul = abstract_parts(split_sentences(abstracts()[LMUL]))
    assert lmul["problem"] == [split_sentences(abstracts()[LMUL])[0]]


# ---------------------------------------------------------------------------------- helpers


def env_for(fake: FakeLLM) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-local-000000",
        "OPENAI_BASE_URL": fake.base_url,
        "RAG_LLM_MODEL": "SmolLM2-135M-Instruct",
        "RAG_LLM_MAX_RETRIES": "0",
    }


def few(tmp_path: Path, count: int) -> Path:
    from tests.test_evaluate import SAMPLE

    answerable = [q for q in SAMPLE if q["type"] in ("single", "title")][:count]
    return write_jsonl(tmp_path / "questions.jsonl", answerable)
