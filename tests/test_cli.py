"""The `rag` command in real subprocesses: the CLI contract other scripts rely on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from rag.settings import DEFAULT_MODEL, Settings
from rag.store import Store
from tests.fake_llm import FakeLLM
from tests.helpers import run_rag, write_jsonl

PAPERS = [
    {
        "_id": "ptr",
        "title": "Pointer Networks",
        "text": "We introduce a neural architecture to learn the conditional probability of an output "
        "sequence with elements that are discrete tokens corresponding to positions in an input "
        "sequence. It uses attention as a pointer to select a member of the input sequence as the output.",
    },
    {
        "_id": "lion",
        "title": "Symbolic Discovery of Optimization Algorithms",
        "text": "We present a method to formulate algorithm discovery as program search, and apply it to "
        "discover optimization algorithms for deep neural network training. It discovers Lion, a "
        "simple and effective optimization algorithm that only keeps track of the momentum.",
    },
    {
        "_id": "lmul",
        "title": "Addition is All You Need for Energy-efficient Language Models",
        "text": "We find that a floating point multiplier can be approximated by one integer adder with "
        "high precision. We propose the linear-complexity multiplication L-Mul algorithm that "
        "approximates floating point number multiplication with integer addition operations.",
    },
]


@pytest.fixture
def small_index(tmp_path: Path, isolated_env: Path) -> Path:
    """Three papers indexed with the real model through the CLI."""
    corpus = write_jsonl(tmp_path / "small.jsonl", PAPERS)
    result = run_rag("ingest", str(corpus), "--json")
    assert result.returncode == 0, result.stderr
    return corpus


def chunk_count(index_dir: Path) -> int:
    return Store(Settings(index_dir=index_dir), DEFAULT_MODEL).count()


def one_line_error(result: object) -> str:
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_help_is_instant_and_lists_commands() -> None:
    result = run_rag("--help")
    assert result.returncode == 0
    for command in ("ingest", "search", "ask"):
        assert command in result.stdout
    assert run_rag("ask", "-h").returncode == 0


def test_ingest_json_report_and_idempotence(tmp_path: Path, small_index: Path) -> None:
    again = run_rag("ingest", str(small_index), "--json")
    report = json.loads(again.stdout)
    assert again.returncode == 0
    assert report["papers_total"] == 3 and report["papers_added"] == 0
    assert report["papers_updated"] == 0 and report["chunks_embedded"] == 0
    assert report["errors"] == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "missing.jsonl: no such file or directory"),
        ("empty.txt", b"", "empty.txt: file is empty"),
        ("binary.jsonl", b"\x00\x01\x02\xff" * 50, "binary.jsonl: looks like a binary file"),
        ("latin1.txt", "Caf\xe9 Paper\n".encode("latin-1"), "latin1.txt:1: not UTF-8 text"),
        (
            "titles.txt",
            b"Only A Title\n\nAnother Title\n",
            "titles.txt:1: title without an abstract",
        ),
        (
            "untitled.jsonl",
            b'{"text": "An abstract without any title."}\n',
            "untitled.jsonl:1: record has no title",
        ),
        ("notes.docx", b"PK\x03\x04", "notes.docx: unknown file type"),
    ],
)
def test_bad_input_exit_2_one_line_and_index_unchanged(
    tmp_path: Path,
    isolated_env: Path,
    small_index: Path,
    name: str,
    content: bytes | None,
    message: str,
) -> None:
    before = chunk_count(isolated_env)
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_rag("ingest", str(path))
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("rag: error: nothing could be read") and message in line
    assert chunk_count(isolated_env) == before


def test_good_records_of_other_files_are_still_ingested(tmp_path: Path, isolated_env: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [*PAPERS[:2], {"_id": "x", "title": "No text"}])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    result = run_rag("ingest", str(good), str(bad), "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["papers_added"] == 2
    assert any("good.jsonl:3: record 'No text' has no abstract" in e for e in report["errors"])
    assert any("bad.txt" in e for e in report["errors"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--bogus"], "No such option '--bogus'"),
        (["search", "x", "--k", "0"], "Invalid value for '-k' / '--k'"),
        (["ask"], "Missing argument 'QUESTION'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    result = run_rag(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_search_json_contract(small_index: Path) -> None:
    result = run_rag(
        "search", "integer adder instead of a floating point multiplier", "--k", "2", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["query"] == "integer adder instead of a floating point multiplier"
    assert [r["rank"] for r in data["results"]] == [1, 2]
    top = data["results"][0]
    assert {"rank", "paper_id", "title", "score", "snippet"} <= set(top)
    assert (top["paper_id"], top["title"]) == (
        "lmul",
        "Addition is All You Need for Energy-efficient Language Models",
    )
    assert data["results"][0]["score"] >= data["results"][1]["score"]


def test_ask_json_with_llm(small_index: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reply("Lion keeps only momentum [2]; pointers select inputs [1]. See also [9].")
    env = {"OPENAI_API_KEY": "sk-cli-secret-42", "OPENAI_BASE_URL": fake_llm.base_url}
    result = run_rag(
        "ask", "Which optimizer keeps track of only the momentum?", "--k", "3", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "llm"
    by_n = {s["n"]: s["title"] for s in data["sources"]}
    assert [(c["n"], c["title"]) for c in data["citations"]] == [(2, by_n[2]), (1, by_n[1])]
    assert data["dropped_citations"] == [9] and "[9]" not in data["answer"]
    assert by_n[1] == "Symbolic Discovery of Optimization Algorithms"
    assert "sk-cli-secret-42" not in result.stdout + result.stderr


def test_ask_extractive_without_key(small_index: Path) -> None:
    result = run_rag(
        "ask", "Which architecture uses attention as a pointer to input positions?", "--json"
    )
    data = json.loads(result.stdout)
    assert result.returncode == 0
    assert data["mode"] == "extractive" and "OPENAI_API_KEY" in data["note"]
    assert data["citations"][0]["title"] == "Pointer Networks"
    plain = run_rag("ask", "Which architecture uses attention as a pointer to input positions?")
    assert "Extractive answer" in plain.stderr and "[1] Pointer Networks" in plain.stdout


def test_unreachable_llm_exit_1_one_line(small_index: Path) -> None:
    env = {
        "OPENAI_API_KEY": "sk-unreachable-77",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "RAG_LLM_MAX_RETRIES": "0",
    }
    result = run_rag("ask", "Which optimizer keeps track of only the momentum?", env=env)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "cannot reach" in line and "sk-unreachable-77" not in line


def test_other_embedding_model_is_refused(small_index: Path) -> None:
    result = run_rag("search", "pointer", env={"RAG_EMBED_MODEL": "openai:text-embedding-3-small"})
    assert result.returncode == 1
    assert "built with embedding model 'all-MiniLM-L6-v2'" in one_line_error(result)


def test_bad_setting_is_a_usage_error() -> None:
    result = run_rag("search", "pointer", env={"RAG_TOP_K": "lots"})
    assert result.returncode == 2
    assert "invalid settings (top_k:" in one_line_error(result)


def test_first_use_builds_the_index(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "papers.jsonl", PAPERS)
    result = run_rag(
        "search", "program search for optimizers", "--json", env={"RAG_CORPUS_DIR": str(corpus)}
    )
    assert result.returncode == 0, result.stderr
    assert "building it from the bundled corpus" in result.stderr
    assert json.loads(result.stdout)["results"][0]["paper_id"] == "lion"


def test_a_date_filter_over_listing_pages_says_why_it_leaves_every_paper_out(
    corpus_settings: Settings,
) -> None:
    """Listing pages give dates without a year: `--since` admits none of the bundled papers,
    and the one-line message says that is why (not just "no paper matches")."""
    found = run_rag("search", "floating point multiplication", "--since", "2024-01-01")
    assert found.returncode == 2 and "Traceback" not in found.stderr
    assert found.stderr.count("\n") == 1, found.stderr
    assert "none of the 401 papers has a full date" in found.stderr
    assert "listing pages give dates without a year" in found.stderr
    category = run_rag("ask", "What is L-Mul?", "--category", "cs.LG", "--no-llm")
    assert category.returncode == 2 and "none of the 401 papers is in that category" in (
        category.stderr
    )
