"""LLM endpoint faults through the real `openai` client and our retry code: a loopback
OpenAI-compatible server injects 429 (Retry-After), 5xx, non-JSON replies, time-outs, a refused
connection and a stream that breaks off mid-answer."""

from __future__ import annotations

import itertools
import socket
import time

import pytest

from rag import api
from rag.errors import LLMError
from rag.settings import Settings
from tests.fake_llm import Cut, FakeLLM, Fault
from tests.helpers import HashEmbedder, run_rag
from tests.test_answer import HITS, FixedRetriever

KEY = "sk-faults-SECRET-9876"


def settings_for(base_url: str, **extra: object) -> Settings:
    values: dict = {
        "openai_api_key": KEY,
        "openai_base_url": base_url,
        "llm_model": "m",
        "min_relevance": 0.0,
        "llm_max_retries": 3,
        "llm_timeout": 20.0,
        **extra,
    }
    return Settings(**values)


def ask(settings: Settings, stream: bool = False) -> api.Answer:
    tokens: list[str] = []
    return api.ask(
        "Which network uses attention as a pointer?",
        settings,
        retriever=FixedRetriever(HITS),
        embedder=HashEmbedder(),
        on_token=tokens.append if stream else None,
    )


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(500), Fault(503)],
        [Fault(502), Fault(429, headers={"Retry-After": "0"})],
        [Fault(200, body="<html>upstream proxy error</html>"), Fault(500)],  # not JSON
    ],
)
def test_two_failures_then_success_is_one_answer_after_three_requests(
    fake_llm: FakeLLM, faults: list[Fault]
) -> None:
    fake_llm.reply(*faults, "Pointer networks use attention as a pointer [1].")
    answer = ask(settings_for(fake_llm.base_url))
    assert answer.answer == "Pointer networks use attention as a pointer [1]."
    assert [c.title for c in answer.citations] == ["Pointer Networks"]
    assert len(fake_llm.chat_requests()) == 3


def test_retry_after_is_honoured(fake_llm: FakeLLM) -> None:
    fake_llm.reply(
        Fault(429, headers={"Retry-After": "1"}), "Pointer networks use attention as a pointer [1]."
    )
    ask(settings_for(fake_llm.base_url))
    first, second = fake_llm.chat_requests()
    assert second["time"] - first["time"] >= 1.0


def test_backoff_grows_between_retries(fake_llm: FakeLLM) -> None:
    fake_llm.reply(
        Fault(503), Fault(503), Fault(503), "Pointer networks use attention as a pointer [1]."
    )
    ask(settings_for(fake_llm.base_url))
    times = [r["time"] for r in fake_llm.chat_requests()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3 and gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 2.0


def test_giving_up_says_what_happened_then_the_setting(fake_llm: FakeLLM) -> None:
    fake_llm.default = Fault(503)
    with pytest.raises(LLMError) as info:
        ask(settings_for(fake_llm.base_url, llm_max_retries=1))
    message = str(info.value)
    assert (
        "gave up after 2 attempts; the number of retries is set by RAG_LLM_MAX_RETRIES" in message
    )
    assert "no retries left" not in message


def test_client_errors_are_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.reply(Fault(400, body='{"error": {"message": "bad request"}}'))
    with pytest.raises(LLMError, match=r"HTTP 400\): bad request"):
        ask(settings_for(fake_llm.base_url))
    assert len(fake_llm.chat_requests()) == 1


def test_a_server_that_always_fails_gives_the_message_within_the_timeout(fake_llm: FakeLLM) -> None:
    fake_llm.default = Fault(503)
    settings = settings_for(fake_llm.base_url, llm_timeout=3.0, llm_max_retries=50)
    start = time.monotonic()
    plain = r"HTTP 503.*the 3 s allowed for it ran out; set by RAG_LLM_TIMEOUT"
    with pytest.raises(LLMError, match=plain) as info:
        ask(settings)
    assert time.monotonic() - start < 3.0 + 1.0  # the deadline holds, retries included
    assert len(fake_llm.chat_requests()) >= 2 and KEY not in str(info.value)


def test_a_slow_server_times_out_within_the_deadline(fake_llm: FakeLLM) -> None:
    fake_llm.delay = 5.0
    settings = settings_for(fake_llm.base_url, llm_timeout=1.5)
    start = time.monotonic()
    with pytest.raises(LLMError, match="timed out"):
        ask(settings)
    assert time.monotonic() - start < 1.5 + 1.0


def test_connection_refused_is_one_readable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    settings = settings_for(f"http://127.0.0.1:{port}/v1", llm_max_retries=1)
    with pytest.raises(LLMError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1.*running\?"):
        ask(settings)


def test_a_stream_cut_mid_answer_keeps_the_text_and_says_it_was_interrupted(
    fake_llm: FakeLLM,
) -> None:
    fake_llm.reply(Cut("Pointer networks use attention [1] to sel"))
    answer = ask(settings_for(fake_llm.base_url), stream=True)
    assert answer.interrupted and "answer interrupted" in answer.interrupted
    assert answer.answer.startswith("Pointer networks use attention [1] to sel")
    assert answer.answer.rstrip().endswith("]") and "interrupted" in answer.answer
    assert [c.title for c in answer.citations] == ["Pointer Networks"]
    assert len(fake_llm.chat_requests()) == 1  # shown tokens are never silently re-asked


def test_a_stream_that_fails_before_any_token_is_retried(fake_llm: FakeLLM) -> None:
    fake_llm.reply(Cut(""), "Pointer networks use attention as a pointer [1].")
    answer = ask(settings_for(fake_llm.base_url), stream=True)
    assert (
        answer.interrupted is None
        and answer.answer == "Pointer networks use attention as a pointer [1]."
    )
    assert len(fake_llm.chat_requests()) == 2


def test_cli_llm_failure_is_one_line_exit_1_without_the_key(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.default = Fault(500)
    env = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": fake_llm.base_url,
        "RAG_LLM_MAX_RETRIES": "1",
        "RAG_LLM_TIMEOUT": "10",
    }
    proc = run_rag("ask", "How does L-Mul replace multiplication?", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rag: error: ") and "HTTP 500" in lines[0]
    assert KEY not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
