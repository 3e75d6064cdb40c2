from __future__ import annotations

import pytest

from rag import api, prompts
from rag.answer import NOT_COVERED, Source, is_refusal, resolve_citations
from rag.errors import InputError, LLMError, RagError
from rag.retrieve import PaperHit
from rag.settings import Settings
from tests.fake_llm import FakeLLM, Fault
from tests.helpers import HashEmbedder


class FixedRetriever:
    """Returns the same papers for every query: isolates the answer step."""

    def __init__(self, hits: list[PaperHit]) -> None:
        self.hits = hits
        self.queries: list[str] = []

    def search(self, query: str, k: int) -> list[PaperHit]:
        self.queries.append(query)
        return self.hits[:k]

    def attach_texts(self, papers: list[PaperHit]) -> None:
        pass  # the snippets stand in for abstracts


HITS = [
    PaperHit(
        "p1",
        "Pointer Networks",
        0.71,
        "Pointer networks use attention as a pointer to select input positions.",
        "p1#0",
        0.71,
        ["May 8"],
    ),
    PaperHit(
        "p2",
        "Symbolic Discovery of Optimization Algorithms",
        0.55,
        "We discover Lion, a sign-based optimizer. It uses less memory than Adam.",
        "p2#0",
        0.55,
    ),
    PaperHit(
        "p3",
        "Addition is All You Need for Energy-efficient Language Models",
        0.52,
        "L-Mul approximates floating point multiplication with integer addition.",
        "p3#0",
        0.52,
    ),
]


# A reply the sources support: an ungrounded one is replaced by the extractive answer (issue 16).
GOOD = "Pointer networks use attention as a pointer to select input positions [1]."


def llm_settings(fake: FakeLLM, **extra: object) -> Settings:
    values: dict = {
        "openai_api_key": "sk-test-123456",
        "openai_base_url": fake.base_url,
        "llm_model": "test-model",
        "llm_max_retries": 0,
        "min_relevance": 0.0,  # the toy hash embedder is no judge of evidence
        **extra,
    }
    return Settings(**values)


def sources(n: int) -> list[Source]:
    return [Source(i, f"p{i}", f"T{i}", "", 0.5) for i in range(1, n + 1)]


@pytest.mark.parametrize(
    ("text", "cleaned", "cited", "dropped"),
    [
        ("A [1]. B [2].", "A [1]. B [2].", [1, 2], []),
        ("A [2][1] and [2].", "A [2][1] and [2].", [2, 1], []),
        ("A [1, 3].", "A [1][3].", [1, 3], []),
        ("A [7]. B [1].", "A. B [1].", [1], [7]),
        ("A [1; 9] [9] [0].", "A [1].", [1], [9, 0]),
        ("No citations.", "No citations.", [], []),
        ("See [arXiv] and [1a].", "See [arXiv] and [1a].", [], []),
    ],
)
def test_resolve_citations(text: str, cleaned: str, cited: list[int], dropped: list[int]) -> None:
    got_text, got_cited, got_dropped = resolve_citations(text, sources(3))
    assert got_text == cleaned
    assert [s.n for s in got_cited] == cited
    assert got_dropped == dropped


def test_prompts_render_strictly() -> None:
    system = prompts.render("answer_system", refusal=NOT_COVERED)
    assert NOT_COVERED in system and "$" not in system
    with pytest.raises(
        RagError, match=r"prompt template 'answer_user' needs a value for \$question"
    ):
        prompts.render("answer_user", sources="x")


def test_llm_answer_maps_numbers_to_titles_and_drops_unknown(
    settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.reply("Pointer networks point at inputs [1]; Lion is sign-based [2]. Also [4].")
    answer = api.ask(
        "Which networks point at inputs?",
        llm_settings(fake_llm),
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
    )
    assert answer.mode == "llm"
    assert answer.answer == "Pointer networks point at inputs [1]; Lion is sign-based [2]. Also."
    assert [(c.n, c.title) for c in answer.citations] == [
        (1, "Pointer Networks"),
        (2, "Symbolic Discovery of Optimization Algorithms"),
    ]
    assert answer.dropped_citations == [4]
    (request,) = fake_llm.chat_requests()
    body = request["body"]
    assert body["model"] == "test-model" and body.get("stream") is True  # every call streams
    assert request["headers"]["authorization"] == "Bearer sk-test-123456"
    user = body["messages"][1]["content"]
    assert '<source n="1">\nTitle: Pointer Networks' in user and '<source n="3">' in user
    assert "Question: Which networks point at inputs?" in user
    assert "data, not instructions" in body["messages"][0]["content"]


def test_llm_answer_streams_tokens(fake_llm: FakeLLM) -> None:
    fake_llm.reply("L-Mul replaces multiplication with addition [3].")
    tokens: list[str] = []
    answer = api.ask(
        "How does L-Mul work?",
        llm_settings(fake_llm),
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
        on_token=tokens.append,
    )
    assert len(tokens) > 5 and "".join(tokens) == "L-Mul replaces multiplication with addition [3]."
    assert [c.title for c in answer.citations] == [
        "Addition is All You Need for Energy-efficient Language Models"
    ]
    assert fake_llm.chat_requests()[0]["body"]["stream"] is True


def test_llm_refusal_has_no_citations(fake_llm: FakeLLM) -> None:
    fake_llm.reply(f"{NOT_COVERED}. [1]")
    answer = api.ask(
        "What is the boiling point of tea?",
        llm_settings(fake_llm),
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
    )
    assert answer.refused and answer.citations == [] and answer.mode == "llm"


def test_weak_retrieval_is_refused_without_calling_the_llm(fake_llm: FakeLLM) -> None:
    weak = [PaperHit("p1", "Pointer Networks", 0.05, "Pointer networks.", "p1#0", 0.05)]
    answer = api.ask(
        "Recipe for sourdough bread?",
        llm_settings(fake_llm, min_relevance=0.5),
        retriever=FixedRetriever(weak),
        embedder=HashEmbedder(),
    )
    assert answer.refused and answer.citations == []
    assert answer.answer == f"{NOT_COVERED}."
    assert fake_llm.chat_requests() == []


def test_extractive_answer_without_a_key(settings: Settings) -> None:
    assert not settings.llm_configured
    answer = api.ask(
        "Which network uses attention to select input positions?",
        settings,
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
    )
    assert answer.mode == "extractive"
    assert "OPENAI_API_KEY" in (answer.note or "")
    assert answer.answer.startswith(
        "- Pointer networks use attention as a pointer to select input positions. [1]"
    )
    assert all(f"[{c.n}]" in answer.answer for c in answer.citations)
    assert answer.citations[0].title == "Pointer Networks"


def test_no_llm_flag_wins_over_a_configured_llm(fake_llm: FakeLLM) -> None:
    answer = api.ask(
        "L-Mul?",
        llm_settings(fake_llm),
        no_llm=True,
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
    )
    assert answer.mode == "extractive" and fake_llm.chat_requests() == []


def test_server_error_becomes_one_readable_llm_error(fake_llm: FakeLLM) -> None:
    fake_llm.reply(Fault(500))
    with pytest.raises(
        LLMError, match=r"failed the answer \(HTTP 500\).*gave up after 1 attempt"
    ) as info:
        api.ask(
            "L-Mul?",
            llm_settings(fake_llm),
            retriever=FixedRetriever(HITS),
            embedder=HashEmbedder(),
        )
    assert "sk-test-123456" not in str(info.value)


def test_retries_then_succeeds(fake_llm: FakeLLM) -> None:
    fake_llm.reply(Fault(503), Fault(503), GOOD)
    answer = api.ask(
        "Pointer?",
        llm_settings(fake_llm, llm_max_retries=2),
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
    )
    assert answer.answer == GOOD and len(fake_llm.chat_requests()) == 3


@pytest.mark.parametrize("question", ["", "   ", "\x00\x07\n"])
def test_empty_question_is_input_error(settings: Settings, question: str) -> None:
    with pytest.raises(InputError, match="the question is empty"):
        api.ask(question, settings, retriever=FixedRetriever(HITS), embedder=HashEmbedder())


def test_is_refusal_tolerates_spacing_and_case() -> None:
    assert is_refusal("the collection   does not cover this question.")
    assert not is_refusal("The collection covers it [1].")


def test_a_100_kb_question_with_control_characters_is_cleaned_and_cut(fake_llm: FakeLLM) -> None:
    fake_llm.reply(GOOD)
    question = "Which network uses attention\x00 as a\x1b[31m pointer? " + "x" * 100_000
    answer = api.ask(
        question, llm_settings(fake_llm), retriever=FixedRetriever(HITS), embedder=HashEmbedder()
    )
    assert answer.answer == GOOD
    (request,) = fake_llm.chat_requests()
    sent = request["body"]["messages"][-1]["content"].split("Question: ", 1)[1]
    assert len(sent) <= 2000 and "\x00" not in sent and "\x1b" not in sent
    assert sent.startswith("Which network uses attention as a [31m pointer?")


def test_cli_rejects_an_empty_question_in_one_line(tmp_path) -> None:
    from tests.helpers import run_rag

    proc = run_rag("ask", "  \x07 ", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "rag: error: the question is empty"
