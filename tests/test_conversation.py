"""Follow-up questions: recognised, condensed (by the LLM or without one), papers kept."""

from __future__ import annotations

import pytest

from rag import api
from rag.conversation import Turn, condense, is_follow_up, pinned_papers
from rag.llm import LLM
from rag.settings import Settings
from tests.fake_llm import FakeLLM

LION = "Symbolic Discovery of Optimization Algorithms"


@pytest.mark.parametrize(
    ("question", "follow_up"),
    [
        ("what about its limitations?", True),
        ("And the memory cost?", True),
        ("How does the second one compare?", True),
        ("Which papers study the Lion optimizer and its memory use compared with AdamW?", False),
        ("How does L-Mul replace floating point multiplication in language models?", False),
    ],
)
def test_follow_ups_are_recognised(question: str, follow_up: bool) -> None:
    assert is_follow_up(question) is follow_up


def test_without_an_llm_a_follow_up_joins_the_previous_question() -> None:
    history = [Turn("Which optimizer did program search discover?", "Lion [1].", "", ["p2"])]
    assert condense("what about its limitations?", history, None) == (
        "Which optimizer did program search discover? what about its limitations?"
    )
    assert pinned_papers("what about its limitations?", history) == ["p2"]
    standalone = "Which papers use reinforcement learning for chip placement?"
    assert condense(standalone, history, None) == standalone
    assert pinned_papers(standalone, history) == []


def test_with_an_llm_the_question_is_condensed_with_the_history(fake_llm: FakeLLM) -> None:
    fake_llm.reply("What are the limitations of the Lion optimizer?")
    settings = Settings(openai_api_key="sk-x", openai_base_url=fake_llm.base_url)
    history = [Turn("Which optimizer did program search find?", "Lion [1].", "", ["p2"])]
    got = condense("what about its limitations?", history, LLM(settings))
    assert got == "What are the limitations of the Lion optimizer?"
    (request,) = fake_llm.chat_requests()
    prompt = request["body"]["messages"][0]["content"]
    assert "User: Which optimizer did program search find?" in prompt
    assert (
        "Assistant: Lion [1]." in prompt and "Last message: what about its limitations?" in prompt
    )


def test_follow_up_over_the_corpus_keeps_the_paper(corpus_settings: Settings) -> None:
    first, turn = api.chat(
        "Which optimizer was discovered by symbolic program search, and how does it compare "
        "with AdamW?",
        [],
        corpus_settings,
        no_llm=True,
    )
    assert LION in [s.title for s in first.citations]
    second, _ = api.chat("what about its limitations?", [turn], corpus_settings, no_llm=True)
    assert second.sources[0].title == LION
    assert LION in [s.title for s in second.citations]
    # Issue 17: the kept paper answers the new question, not the previous one again.
    assert second.answer != first.answer
    assert "we examine the limitations of Lion" in second.answer
    assert {s.title for s in second.sources} <= {s.title for s in first.citations}


def test_suggested_questions_are_read_from_a_rambling_reply() -> None:
    from rag.conversation import suggested_questions

    reply = (
        "Here are some follow-up questions:\n"
        "1. What are the limits of L-Mul in practice? [1]\n"
        "* **How does Lion compare with AdamW on memory?** [2]\n"
        "- Why?\n"
        "2) What are the limits of L-Mul in practice?\n"
        "Q3: Which benchmarks does the pointer network use?\n"
        "4. What else do the authors propose here?"
    )
    assert suggested_questions(reply, "What is L-Mul?") == [
        "What are the limits of L-Mul in practice?",
        "How does Lion compare with AdamW on memory?",
        "Which benchmarks does the pointer network use?",
    ]
    assert suggested_questions("No questions, sorry.", "x") == []


def test_without_an_llm_follow_ups_come_from_the_cited_titles() -> None:
    from rag.answer import Answer, Source
    from rag.conversation import suggest_follow_ups

    cited = [
        Source(1, "a", "Addition is All You Need: Energy-efficient Models", "s", 0.9, []),
        Source(2, "b", "Symbolic Discovery of Optimization Algorithms", "s", 0.8, []),
    ]
    found = Answer(
        "What is L-Mul?", "L-Mul adds [1]. Lion [2].", cited, mode="llm", citations=cited
    )
    assert suggest_follow_ups(found, None) == [
        "What are the limitations of Addition is All You Need?",
        "What results does Addition is All You Need report?",
        "How does Addition is All You Need compare with Symbolic Discovery of Optimization "
        "Algorithms?",
    ]
    found.answer = "The collection does not cover this question."
    assert suggest_follow_ups(found, None) == []
