"""Hardening, round two (issue 19): each case reproduced from outside (a subprocess, a real
file, a loopback server), checking the one-line message, the exit code and that nothing in the
index was lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.helpers import free_port, run_rag, wait_http, write_jsonl

FIRST = [
    {
        "title": "Lion: Sign Momentum Optimiser",
        "abstract": (
            "We discover a sign-based optimiser by program search that keeps only the momentum, so it "
            "uses less memory than AdamW while training vision transformers to higher accuracy."
        ),
    },
    {
        "title": "Pointer Networks for Sorting",
        "abstract": (
            "We introduce a neural architecture that uses attention as a pointer to select members of "
            "the input sequence, learning to sort numbers and compute planar convex hulls."
        ),
    },
]
FIVE = [
    {
        "title": f"Zebra Stripe Study {i}",
        "abstract": (
            f"We measure how zebra stripes deter biting flies in field trial number {i}, finding that "
            "striped coats reduce landings by horseflies compared with plain coats."
        ),
    }
    for i in range(5)
]


@pytest.mark.parametrize("exact_search_max", ["50000", "0"])  # the in-memory table; HNSW
def test_a_running_server_sees_and_cites_papers_another_process_ingests(
    tmp_path: Path, exact_search_max: str
) -> None:
    from gradio_client import Client

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "first.jsonl", FIRST)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus),
        "RAG_EXACT_SEARCH_MAX": exact_search_max,
        "RAG_MIN_RELEVANCE": "0.3",
    }
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, server)
        client = Client(url, verbose=False, analytics_enabled=False)
        before = client.predict("Which optimiser keeps only the momentum?", api_name="/chat_json")
        assert before["citations"][0]["title"] == FIRST[0]["title"]

        added = run_rag("ingest", str(write_jsonl(tmp_path / "five.jsonl", FIVE)), env=env)
        assert added.returncode == 0, added.stderr

        after = client.predict("Do zebra stripes keep biting flies away?", api_name="/chat_json")
        assert after["citations"] and after["citations"][0]["title"].startswith("Zebra Stripe")
        again = client.predict("Which optimiser keeps only the momentum?", api_name="/chat_json")
        assert again["citations"][0]["title"] == FIRST[0]["title"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert "Error finding id" not in (tmp_path / "serve.log").read_text()


def small_index(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    index = tmp_path / "index"
    env = {"RAG_INDEX_DIR": str(index)}
    built = run_rag("ingest", str(write_jsonl(tmp_path / "first.jsonl", FIRST)), env=env)
    assert built.returncode == 0, built.stderr
    return index, env


def test_a_read_only_index_answers_and_an_ingest_says_it_cannot_write(tmp_path: Path) -> None:
    """A shared, mounted or backed-up copy: queries work (Chroma writes even to read, so a
    private copy is searched) and an ingest says where it cannot write, in one line."""
    index, _ = small_index(tmp_path)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    bind = subprocess.run(["mount", "--bind", str(index), str(mounted)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip("a read-only bind mount needs root here")
    try:
        remount = ["mount", "-o", "remount,ro,bind", str(mounted)]
        assert subprocess.run(remount, capture_output=True).returncode == 0
        env = {"RAG_INDEX_DIR": str(mounted)}
        found = run_rag("search", "Which optimiser keeps only the momentum?", "--json", env=env)
        assert found.returncode == 0, found.stderr
        assert FIRST[0]["title"] in found.stdout
        added = run_rag("ingest", str(write_jsonl(tmp_path / "five.jsonl", FIVE)), env=env)
        assert added.returncode == 1
        lines = added.stderr.strip().splitlines()
        assert lines == [
            f"rag: error: the index at {mounted} is read-only: cannot write to it "
            "(searching it works; ingest into a writable copy)"
        ]
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)


def test_a_full_disk_during_an_ingest_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    """The file size limit stands in for a full disk: the database cannot grow."""
    import json
    import resource
    import signal

    index, env = small_index(tmp_path)
    big = [
        {"title": f"Caching Paper {i}", "abstract": "Caching results of expensive queries. " * 40}
        for i in range(300)
    ]

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = (index / "chroma" / "chroma.sqlite3").stat().st_size + 200_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    result = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", str(write_jsonl(tmp_path / "big.jsonl", big))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        preexec_fn=limited,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("rag: error: the disk is full") and str(index) in line
    found = run_rag("search", "Which optimiser keeps only the momentum?", "--json", env=env)
    assert found.returncode == 0, found.stderr
    titles = [r["title"] for r in json.loads(found.stdout)["results"]]
    assert FIRST[0]["title"] in titles


# ---------------------------------------------------------------- the LLM's deadline and key

SLOW_KEY = "sk-hardening-LEAKY-KEY-123456"


def llm_env(fake: FakeLLM, **more: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": SLOW_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "RAG_LLM_MAX_RETRIES": "0",
        "RAG_MIN_RELEVANCE": "0",
        "RAG_CONFIDENT_RELEVANCE": "0",
        **more,
    }


@pytest.mark.parametrize("command", ["ask", "summarize"])
def test_a_reply_trickling_tokens_stops_at_the_deadline(
    tmp_path: Path, fake_llm: FakeLLM, command: str
) -> None:
    """A token every 3 s: each read is quick, the whole reply would take minutes. `ask` streams
    (the answer is shown, then cut); `summarize` reads whole replies (they fail)."""
    _, env = small_index(tmp_path)
    fake_llm.default = "Lion keeps only the momentum [1]. " * 40
    fake_llm.chunk_size, fake_llm.chunk_delay = 4, 3.0
    start = time.monotonic()
    result = run_rag(
        command, "sign momentum optimisers", env={**env, **llm_env(fake_llm, RAG_LLM_TIMEOUT="5")}
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1 and elapsed < 5 + 8  # the deadline, plus start-up
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rag: error: ") and "5 s time-out (RAG_LLM_TIMEOUT)" in last


def test_a_key_echoed_in_an_error_body_is_masked_before_the_body_is_cut(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    from tests.fake_llm import Fault

    _, env = small_index(tmp_path)
    body = '{"error": {"message": "' + "x" * 186 + f' Incorrect API key: {SLOW_KEY}"}}}}'
    fake_llm.default = Fault(400, body=body)
    result = run_rag("ask", "sign momentum optimisers", env={**env, **llm_env(fake_llm)})
    assert result.returncode == 1 and "HTTP 400" in result.stderr
    for start in range(len(SLOW_KEY) - 7):
        assert SLOW_KEY[start : start + 8] not in result.stderr
