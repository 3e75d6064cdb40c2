"""Hardening, round two (issue 19): each case reproduced from outside (a subprocess, a real
file, a loopback server), checking the one-line message, the exit code and that nothing in the
index was lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.helpers import run_rag, serving, write_jsonl

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
    with serving(env, tmp_path) as (url, _):
        client = Client(url, verbose=False, analytics_enabled=False)
        before = client.predict("Which optimiser keeps only the momentum?", api_name="/chat_json")
        assert before["citations"][0]["title"] == FIRST[0]["title"]

        added = run_rag("ingest", str(write_jsonl(tmp_path / "five.jsonl", FIVE)), env=env)
        assert added.returncode == 0, added.stderr

        after = client.predict("Do zebra stripes keep biting flies away?", api_name="/chat_json")
        assert after["citations"] and after["citations"][0]["title"].startswith("Zebra Stripe")
        again = client.predict("Which optimiser keeps only the momentum?", api_name="/chat_json")
        assert again["citations"][0]["title"] == FIRST[0]["title"]
    assert "Error finding id" not in (tmp_path / "serve.log").read_text()


def small_index(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    index = tmp_path / "index"
    env = {"RAG_INDEX_DIR": str(index)}
    built = run_rag("ingest", str(write_jsonl(tmp_path / "first.jsonl", FIRST)), env=env)
    assert built.returncode == 0, built.stderr
    return index, env


def test_a_search_opening_its_client_while_a_reopen_waits_for_it_does_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by bench/soak.py: a search already reading (a registered reader) that opens the
    collection lazily waited for a reopen, which waited for the search: every chat hung."""
    import threading
    import time

    from rag import chroma
    from rag.settings import Settings

    class Client:
        def close(self) -> None:
            pass

    monkeypatch.setattr(chroma, "connect", lambda settings, path: Client())
    clients, path, settings = chroma.SharedClients(), Path("/store"), Settings()
    _, epoch = clients.get(settings, path)
    reading, done = threading.Event(), threading.Event()

    def search() -> None:
        with clients.reading(path):
            reading.set()
            time.sleep(0.3)  # another search starts the reopen meanwhile
            clients.get(settings, path)  # as Collection.open does inside a search
        done.set()

    threading.Thread(target=search, daemon=True).start()
    reading.wait(5)
    closer = threading.Thread(target=clients.reopen, args=(path, epoch), daemon=True)
    closer.start()
    assert done.wait(5), "the search waited for the reopen that waited for it"
    closer.join(5)
    assert not closer.is_alive()
    assert clients.get(settings, path)[1] == epoch + 1  # the next search gets a fresh client

    # A search that finds the store changed while it reads (Collection.open does) must not
    # wait for itself to stop reading.
    _, epoch = clients.get(settings, path)
    finished = threading.Event()

    def changed_under_a_search() -> None:
        with clients.reading(path):
            clients.reopen(path, epoch)
        finished.set()

    threading.Thread(target=changed_under_a_search, daemon=True).start()
    assert finished.wait(5), "a reading search waited for itself"


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
    assert (
        last.startswith("rag: error: ")
        and "5 s time-out (RAG_LLM_TIMEOUT, counted from the request" in last
    )


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


# ---------------------------------------------------------------- inputs


def test_a_named_pipe_is_refused_at_once_alone_or_in_a_directory(tmp_path: Path) -> None:
    """A FIFO named .jsonl hung the ingest forever (holding the ingest lock)."""
    pipe = tmp_path / "feed.jsonl"
    os.mkfifo(pipe)
    (tmp_path / "good").mkdir()
    write_jsonl(tmp_path / "good" / "papers.jsonl", FIRST)
    os.mkfifo(tmp_path / "good" / "more.jsonl")
    alone = run_rag("ingest", str(pipe), timeout=60)
    assert alone.returncode == 2 and "named pipe (FIFO), not a regular file" in alone.stderr
    inside = run_rag("ingest", str(tmp_path / "good"), "--json", timeout=60)
    assert inside.returncode == 0, inside.stderr
    report = json.loads(inside.stdout)
    assert report["papers_added"] == 2 and any("named pipe" in e for e in report["errors"])


def test_an_empty_directory_among_the_inputs_is_reported_and_the_rest_ingested(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty").mkdir()
    good = write_jsonl(tmp_path / "good.jsonl", FIRST)
    result = run_rag("ingest", str(good), str(tmp_path / "empty"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["papers_added"] == 2
    assert report["errors"] == [
        f"{tmp_path / 'empty'}: directory holds no .txt, .jsonl or .csv files"
    ]


def test_runaway_records_are_cut_and_reported_and_duplicate_ids_named(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    """A 5 MB abstract would be thousands of chunks and a prompt of megabytes; a 10,000
    character title would leave each chunk only the title; an id given twice with two titles
    silently kept the second."""
    huge = "Caching makes repeated queries cheap. " * 140_000  # about 5 MB
    title = "Runaway " * 1250  # 10,000 characters
    records = [
        {"id": "big", "title": "A Very Long Abstract on Caching", "abstract": huge},
        {
            "id": "long",
            "title": title,
            "abstract": "Zebra stripes deter biting flies in the field.",
        },
        {"id": "twice", "title": "First Title of Twice", "abstract": FIRST[0]["abstract"]},
        {"id": "twice", "title": "Second Title of Twice", "abstract": FIRST[1]["abstract"]},
    ]
    env = {"RAG_INDEX_DIR": str(tmp_path / "index")}
    result = run_rag("ingest", str(write_jsonl(tmp_path / "odd.jsonl", records)), "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    warnings = "\n".join(report["warnings"])
    size = len(huge.strip())
    assert f"'big': an abstract of {size:,} characters is far beyond any real one" in warnings
    assert f"'long': a title of {len(title.strip()):,} characters" in warnings
    assert "'twice' appears again with another title ('Second Title of Twice')" in warnings
    assert report["chunks_embedded"] < 200  # not 5,000 chunks

    found = run_rag("search", "zebra stripes biting flies", "--json", env=env)
    assert json.loads(found.stdout)["results"][0]["paper_id"] == "long"  # found by its abstract

    fake_llm.reply("Caching makes repeated queries cheap [1].")
    asked = run_rag(
        "ask", "What makes repeated queries cheap?", "--json", env={**env, **llm_env(fake_llm)}
    )
    assert asked.returncode == 0, asked.stderr
    prompt = fake_llm.chat_requests()[-1]["body"]["messages"][-1]["content"]
    assert len(prompt) < 50_000 and "[abstract cut:" in prompt


# ---------------------------------------------------------------- what models send back


def test_giant_and_negative_markers_are_dropped_like_unknown_ones(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    _, env = small_index(tmp_path)
    fake_llm.reply(
        "The sign-based optimiser keeps only the momentum, so it uses less memory than AdamW [1]["
        + "9" * 5000
        + "][-1]."
    )
    env = {**env, **llm_env(fake_llm), "RAG_ANSWER_TOKENS": "2000"}  # room for 5,000 digits
    result = run_rag("ask", "sign momentum optimisers", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert -1 in data["dropped_citations"] and "[-1]" not in data["answer"]
    assert "999" not in data["answer"] and data["answer"].endswith("AdamW [1].")
    assert "Traceback" not in result.stderr


def test_terminal_control_sequences_from_a_model_never_reach_the_terminal(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    _, env = small_index(tmp_path)
    nasty = (
        "\x1b[2J\x1b[H"  # clear the screen
        "\x1b]0;pwned\x07"  # retitle the window
        "\x1b]52;c;ZWNobyBoaQ==\x07"  # write the clipboard (OSC 52)
        "The sign-based optimiser keeps only the momentum, so it uses less memory than AdamW [1].\x9b31m\r"
    )
    fake_llm.reply(nasty)
    result = run_rag("ask", "sign momentum optimisers", env={**env, **llm_env(fake_llm)})
    assert result.returncode == 0, result.stderr
    assert (
        "The sign-based optimiser keeps only the momentum, so it uses less memory than AdamW [1]."
        in result.stdout
    )
    for sequence in ("\x1b", "\x07", "\x9b", "\r"):
        assert sequence not in result.stdout and sequence not in result.stderr


# ---------------------------------------------------------------- small things


def test_a_symbolic_link_loop_and_a_utf16_file_say_what_they_are(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    result = run_rag("ingest", str(loop))
    assert result.returncode == 2 and "symbolic link loop" in result.stderr
    utf16 = tmp_path / "papers.jsonl"
    utf16.write_text(json.dumps(FIRST[0]) + "\n", encoding="utf-16")
    result = run_rag("ingest", str(utf16))
    assert (
        result.returncode == 2
        and "UTF-16 text (byte-order mark); convert it to UTF-8" in result.stderr
    )


def test_a_search_of_an_empty_collection_says_it_is_empty(tmp_path: Path) -> None:
    from rag.settings import Settings
    from rag.store import Store

    index, env = small_index(tmp_path)
    store = Store(Settings(index_dir=index), "all-MiniLM-L6-v2")
    store.delete(store.open().get()["ids"])
    result = run_rag("search", "anything", env=env)
    assert result.returncode == 0 and "The index is empty" in result.stdout


def test_the_chat_api_gives_the_message_the_chat_shows(tmp_path: Path, fake_llm: FakeLLM) -> None:
    from gradio_client import Client

    from tests.fake_llm import Fault

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "first.jsonl", FIRST)
    fake_llm.default = Fault(400, body='{"error": {"message": "model not loaded"}}')
    env = {
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus),
        **llm_env(fake_llm),
    }
    with serving(env, tmp_path) as (url, _):
        client = Client(url, verbose=False, analytics_enabled=False)
        with pytest.raises(Exception, match=r"HTTP 400\): model not loaded") as info:
            client.predict("Which optimiser keeps only the momentum?", api_name="/chat")
        assert "upstream Gradio app has raised an exception" not in str(info.value)
        cli = run_rag("ask", "Which optimiser keeps only the momentum?", env=env)
        (line,) = cli.stderr.strip().splitlines()  # the same failure, the same words
        assert cli.returncode != 0 and line.removeprefix("rag: error: ") == str(info.value)
