"""Chroma client/server mode: a real `chroma run` server on a free loopback port, driven through
the `rag` command exactly as the embedded store is."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_rag

CHROMA = Path(sys.executable).parent / "chroma"
FILLER = (
    "The method is evaluated on standard benchmarks against strong baselines, and the "
    "results show consistent gains across settings, with an analysis of where it helps most."
)
FIRST_PAGE = f"""Subscribe
May 8
Photonic Crystal Lasers for Quantum Dot Emission
We study photonic crystal cavities that enhance quantum dot emission at room temperature. {FILLER}
Gradient Clipping Stabilises Deep Reinforcement Learning
We show that clipping gradients stabilises the training of deep reinforcement learning agents. {FILLER}
"""
SECOND_PAGE = f"""May 9
Coral Reef Bleaching Forecasts from Satellite Data
We forecast coral reef bleaching events from satellite sea surface temperature records. {FILLER}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(path: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError("chroma run exited") from None
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("chroma run did not start")


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    if not CHROMA.exists():
        pytest.skip("the chroma command is not installed")
    port = free_port()
    server = start_server(tmp_path / "server-data", port)
    yield server, port
    server.terminate()
    server.wait(timeout=30)


def test_ingest_search_ask_and_reingest_against_a_chroma_server(
    chroma_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, port = chroma_server
    side = tmp_path / "side"
    monkeypatch.setenv("RAG_INDEX_DIR", str(side))
    monkeypatch.setenv("RAG_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("RAG_CHROMA_PORT", str(port))
    first = tmp_path / "first.txt"
    first.write_text(FIRST_PAGE, encoding="utf-8")
    second = tmp_path / "second.txt"
    second.write_text(SECOND_PAGE, encoding="utf-8")

    done = run_rag("ingest", str(first))
    assert done.returncode == 0, done.stderr
    assert "2 added" in done.stdout and "2 papers in the index" in done.stdout
    assert not (side / "chroma" / "chroma.sqlite3").exists()  # the vectors live on the server
    assert (tmp_path / "server-data" / "chroma.sqlite3").exists()
    # Its texts too: every machine sharing the server reads them there (not from a file here).
    import chromadb

    texts = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection("papers")
    assert all(texts.get(include=["documents"])["documents"])
    # The server holds its vector index warm: the BM25 segments here keep no second copy.
    assert list((side / "bm25").rglob("seg-*")) and not list((side / "bm25").rglob("vectors.npy"))

    found = run_rag("search", "quantum dot light emission in cavities", "--json", "-k", "2")
    assert found.returncode == 0, found.stderr
    titles = [r["title"] for r in json.loads(found.stdout)["results"]]
    assert titles[0] == "Photonic Crystal Lasers for Quantum Dot Emission"

    asked = run_rag(
        "ask", "Does gradient clipping stabilise deep RL training?", "--no-llm", "--json"
    )
    assert asked.returncode == 0, asked.stderr
    cited = [c["title"] for c in json.loads(asked.stdout)["citations"]]
    assert cited == ["Gradient Clipping Stabilises Deep Reinforcement Learning"]

    again = run_rag("ingest", str(first), str(second))
    assert again.returncode == 0, again.stderr
    assert "1 added, 0 updated, 2 unchanged" in again.stdout
    assert "1 chunks embedded" in again.stdout and "3 papers in the index" in again.stdout
    coral = run_rag("search", "bleaching of reefs seen from space", "--json", "-k", "1")
    assert json.loads(coral.stdout)["results"][0]["title"].startswith("Coral Reef Bleaching")

    # The server goes down: one line naming it, exit 1, no traceback.
    server.terminate()
    server.wait(timeout=30)
    down = run_rag("search", "quantum dots", "--json")
    assert down.returncode == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in down.stderr
    assert f"cannot reach the Chroma server at http://127.0.0.1:{port}" in lines[0]


def test_a_server_that_is_not_running_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "side"))
    monkeypatch.setenv("RAG_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("RAG_CHROMA_PORT", str(port))
    page = tmp_path / "page.txt"
    page.write_text(FIRST_PAGE, encoding="utf-8")
    for args in (("ingest", str(page)), ("search", "lasers"), ("ask", "lasers?", "--no-llm")):
        proc = run_rag(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert f"cannot reach the Chroma server at http://127.0.0.1:{port}" in proc.stderr


def test_a_chroma_server_that_dies_under_a_running_assistant_is_one_plain_line_then_recovers(
    tmp_path: Path,
) -> None:
    """`rag serve` keeps one Assistant: when its Chroma server stops, a search says so in one
    plain sentence (not Chroma's or httpx's text), and works again once the server is back."""
    if not CHROMA.exists():
        pytest.skip("the chroma command is not installed")
    from rag.api import Assistant
    from rag.errors import RagError
    from rag.settings import Settings
    from tests.helpers import HashEmbedder

    port = free_port()
    data = tmp_path / "server-data"
    server = start_server(data, port)
    page = tmp_path / "page.txt"
    page.write_text(FIRST_PAGE + SECOND_PAGE, encoding="utf-8")
    settings = Settings(
        index_dir=tmp_path / "side", chroma_host="127.0.0.1", chroma_port=port, retriever="dense"
    )
    from rag import api

    embedder = HashEmbedder()
    api.ingest([page], settings, embedder=embedder)
    assistant = Assistant(settings, embedder=embedder)
    assert assistant.search("coral reef bleaching", 1)[0].title.startswith("Coral Reef")
    server.terminate()
    server.wait(timeout=30)
    try:
        with pytest.raises(RagError) as failed:
            assistant.search("coral reef bleaching", 1)
        message = str(failed.value)
        assert message.startswith(f"the Chroma server at http://127.0.0.1:{port} is not answering")
        assert "\n" not in message and "httpx" not in message and "Connect" not in message
        server = start_server(data, port)  # back, same data
        assert assistant.search("coral reef bleaching", 1)[0].title.startswith("Coral Reef")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_machines_sharing_a_chroma_server_ingest_one_at_a_time(
    chroma_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local lock file cannot see another machine: two ingests into one server collection
    (each with its own local index directory, as on two machines) take turns through a lease
    kept in the server; a lease its writer stopped renewing is taken over."""
    from rag import api, lease
    from rag.collection import Collection
    from rag.errors import RagError
    from rag.settings import Settings
    from tests.helpers import HashEmbedder

    _, port = chroma_server
    page = tmp_path / "page.txt"
    page.write_text(FIRST_PAGE + SECOND_PAGE, encoding="utf-8")

    def machine(name: str) -> Settings:
        return Settings(index_dir=tmp_path / name, chroma_host="127.0.0.1", chroma_port=port)

    embedder = HashEmbedder()
    with lease.writer_lease(Collection(machine("a"), embedder.name)):
        with pytest.raises(RagError, match=r"^index is busy: another ingest \(.* pid \d+"):
            api.ingest([page], machine("b"), embedder=embedder)
    assert api.ingest([page], machine("b"), embedder=embedder).papers_added == 3

    stale = lease.Lease(Collection(machine("a"), embedder.name))
    stale.acquire()  # and never renewed nor released: its machine went down
    with pytest.raises(RagError, match="index is busy"):
        api.ingest([page], machine("b"), embedder=embedder)
    monkeypatch.setattr(lease, "LEASE_S", 0.0)
    time.sleep(0.05)
    assert api.ingest([page], machine("b"), embedder=embedder).papers_unchanged == 3


def test_an_ingest_whose_lease_was_taken_over_stops_and_keeps_what_it_wrote(
    chroma_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer paused past the lease (a sleeping laptop) finds on waking that another took
    the collection over: it stops at its next batch instead of writing beside the other."""
    from rag import lease
    from rag.collection import Collection
    from rag.errors import RagError
    from rag.ingest import ingest_papers
    from rag.settings import Settings
    from rag.store import Store
    from tests.helpers import HashEmbedder, make_paper

    _, port = chroma_server

    def machine(name: str) -> Settings:
        return Settings(index_dir=tmp_path / name, chroma_host="127.0.0.1", chroma_port=port)

    embedder = HashEmbedder()
    monkeypatch.setattr(lease, "RENEW_S", 0.05)

    def papers() -> Iterator:
        for i in range(300):
            if i == 256:  # the first batch is written; machine a stalls, b takes over
                monkeypatch.setattr(lease, "LEASE_S", 0.0)
                taker = lease.Lease(Collection(machine("b"), embedder.name))
                for _ in range(100):  # a renewal may land between b's look and its take
                    try:
                        taker.acquire()
                        break
                    except RagError:
                        time.sleep(0.01)
                time.sleep(0.5)  # a's next renewal finds the lease taken
            yield make_paper(f"Paper {i} on glaciers", f"Glacier number {i} is measured.")

    with pytest.raises(RagError, match=r"^ingest stopped: .* another ingest \(.* pid \d+"):
        ingest_papers(papers(), machine("a"), embedder)
    assert Store(machine("a"), embedder.name).count() == 256  # the written batch is kept


def test_a_search_keeps_its_bm25_while_another_machine_ingests(
    chroma_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local lock file cannot see an ingest on another machine: its lease in the server
    tells a reader not to rebuild BM25 from a half-written collection."""
    from rag import lease
    from rag.collection import Collection
    from rag.ingest import ingest_papers
    from rag.lexical import LexicalIndex
    from rag.settings import Settings
    from rag.store import Store
    from tests.helpers import HashEmbedder, make_paper

    _, port = chroma_server

    def machine(name: str) -> Settings:
        return Settings(index_dir=tmp_path / name, chroma_host="127.0.0.1", chroma_port=port)

    embedder = HashEmbedder()
    ingest_papers([make_paper("Glacier flow", "Glaciers flow.")], machine("a"), embedder)
    reader = LexicalIndex(Store(machine("a"), embedder.name))
    assert reader.current().papers == 1
    with lease.writer_lease(Collection(machine("b"), embedder.name)):
        Store(machine("b"), embedder.name).bump_generation()  # b's ingest has begun writing
        monkeypatch.setattr(LexicalIndex, "_build", lambda *a, **k: pytest.fail("rebuilt"))
        assert reader.current().papers == 1
    monkeypatch.undo()
    assert reader.current().papers == 1  # b is done: rebuilt from the collection


def test_a_machine_whose_clock_runs_ahead_does_not_take_a_live_lease(
    chroma_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Leases are timed by the server's clock: a machine 1,000 s ahead of the writer's does
    not mistake a live lease for a dead writer's."""
    from rag import api, lease
    from rag.collection import Collection
    from rag.errors import RagError
    from rag.settings import Settings
    from tests.helpers import HashEmbedder

    _, port = chroma_server
    page = tmp_path / "page.txt"
    page.write_text(FIRST_PAGE, encoding="utf-8")

    def machine(name: str) -> Settings:
        return Settings(index_dir=tmp_path / name, chroma_host="127.0.0.1", chroma_port=port)

    embedder = HashEmbedder()
    with lease.writer_lease(Collection(machine("a"), embedder.name)):
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 1000.0)  # b's clock runs ahead
        with pytest.raises(RagError, match="index is busy"):
            api.ingest([page], machine("b"), embedder=embedder)
