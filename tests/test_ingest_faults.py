"""Ingest under faults, in real `rag` processes: SIGKILL in the middle of an ingest, two writers
at once, and index directories that are damaged or belong to someone else.

The subprocesses embed with `RAG_EMBED_MODEL=openai:...` against the loopback OpenAI-compatible
server of `tests/fake_llm.py`, so hundreds of papers embed in a second and the test decides
exactly when a process is stopped: the server holds back the embedding request of a chosen
paper, which the ingest only sends after the previous batch of papers is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag import api
from rag.chroma import CLIENTS
from rag.ingest import LOCK_NAME, PAPER_BATCH, IngestReport, ingest_lock
from rag.settings import Settings
from rag.store import Store
from tests.fake_llm import FakeLLM
from tests.helpers import run_rag, write_jsonl

EMBED_MODEL = "openai:toy-embedding"
N_PAPERS = PAPER_BATCH + 44  # two batches: the kill falls between them
VOCABULARY = (
    "sparse attention experts routing token gradient optimizer momentum pointer network "
    "sequence retrieval corpus benchmark latency memory quantization adapter diffusion image "
    "segmentation graph protein language model training inference scaling law dataset label "
    "noise robust federated privacy reward policy agent planning search tree kernel matrix"
).split()


class GatedLLM(FakeLLM):
    """The fake endpoint, except that an embeddings request carrying a held title waits until
    `release` is set; `held` tells the test that a request is waiting."""

    def __init__(self) -> None:
        self.hold: set[str] = set()
        self.held = threading.Event()
        self.release = threading.Event()
        super().__init__()

    def _handler(self) -> type:
        fake = self
        base = super()._handler()

        class Handler(base):  # type: ignore[misc, valid-type]
            def _embeddings(self, body: dict[str, Any]) -> None:
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                # Chunks are embedded as "title\ntext".
                if any(str(t).split("\n", 1)[0] in fake.hold for t in texts):
                    fake.held.set()
                    fake.release.wait(120)
                super()._embeddings(body)

        return Handler


@pytest.fixture
def gated() -> Iterator[GatedLLM]:
    server = GatedLLM().start()
    yield server
    server.release.set()
    server.stop()


def rag_env(server: FakeLLM, index_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "RAG_INDEX_DIR": str(index_dir),
        "RAG_EMBED_MODEL": EMBED_MODEL,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": server.base_url,
        **extra,
    }


def synthetic_papers(n: int, version: int = 1, long: bool = True) -> list[dict[str, str]]:
    """Distinct titles; abstracts of about 80 words, every eighth one (when `long`) long enough
    for several chunks. Version 2 changes every text, and the chunk counts: long ones become
    short and some short ones long."""
    papers = []
    for i in range(n):
        rng = random.Random(i * 10 + version)
        if version == 1:
            words = 260 if long and i % 8 == 0 else 80
        else:
            words = {0: 40, 4: 330 if long else 70}.get(i % 8, 70)
        abstract = " ".join(rng.choice(VOCABULARY) for _ in range(words))
        title = f"Paper {i:03d} on {rng.choice(VOCABULARY)}"
        papers.append({"_id": f"p{i:03d}", "title": title, "text": abstract + "."})
    return papers


def snapshot(index_dir: Path) -> dict[str, tuple[str, dict[str, Any], list[float]]]:
    """Every chunk: document, metadata, vector (read fresh: other processes wrote it)."""
    CLIENTS.reset()  # no cached view of a store another process changed
    store = Store(Settings(index_dir=index_dir), EMBED_MODEL)
    got = store.get(["documents", "metadatas", "embeddings"])
    rows = zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
    result = {cid: (doc, meta, np.asarray(vec).round(5).tolist()) for cid, doc, meta, vec in rows}
    assert len(result) == len(got["ids"]), "duplicate chunk ids"
    return result


def assert_whole_papers(chunks: dict[str, tuple[str, dict[str, Any], list[float]]]) -> set[str]:
    """No orphans: each paper has exactly chunks 0..n-1, all of one content hash. Its ids."""
    by_paper: dict[str, list[dict[str, Any]]] = {}
    for cid, (_, meta, _) in chunks.items():
        assert cid == f"{meta['paper_id']}#{meta['chunk']}"
        by_paper.setdefault(meta["paper_id"], []).append(meta)
    for pid, metas in by_paper.items():
        assert sorted(m["chunk"] for m in metas) == list(range(metas[0]["n_chunks"])), pid
        assert len({m["content_hash"] for m in metas}) == 1, pid
        assert len({m["n_chunks"] for m in metas}) == 1, pid
    assert max(m[0]["n_chunks"] for m in by_paper.values()) > 1  # orphans were possible
    return set(by_paper)


def start_ingest(server: GatedLLM, corpus: Path, index_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rag", "ingest", str(corpus), "--json"],
        env={**os.environ, **rag_env(server, index_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_held(server: GatedLLM, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Return once the ingest waits for its held embeddings (so batch 1 is written)."""
    deadline = time.monotonic() + timeout
    while not server.held.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(
                f"the ingest never reached the held paper: rc={proc.returncode} {err[-2000:]}"
            )


def kill_when_held(server: GatedLLM, proc: subprocess.Popen[str]) -> None:
    """SIGKILL the ingest in the middle: it has written batch 1 and waits on batch 2."""
    wait_until_held(server, proc)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def ingest_here(server: FakeLLM, corpus: Path, index_dir: Path) -> IngestReport:
    """An ingest in this process (quicker than a fresh one: imports are paid once)."""
    settings = Settings(
        index_dir=index_dir,
        embed_model=EMBED_MODEL,
        openai_api_key="sk-test",
        openai_base_url=server.base_url,
    )
    report = api.ingest([corpus], settings)
    CLIENTS.reset()  # let go of the store: other processes write it
    assert report.errors == []
    return report


def ingest_json(server: FakeLLM, corpus: Path, index_dir: Path) -> dict[str, Any]:
    result = run_rag("ingest", str(corpus), "--json", env=rag_env(server, index_dir))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    stderr = result.stderr.strip()
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


# --- a. kill -9 in the middle of an ingest -------------------------------------------------------


def test_sigkill_mid_ingest_then_rerun_equals_an_uninterrupted_ingest(
    tmp_path: Path, gated: GatedLLM
) -> None:
    papers = synthetic_papers(N_PAPERS)
    corpus = write_jsonl(tmp_path / "papers.jsonl", papers)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    first_batch = {p["_id"] for p in papers[:PAPER_BATCH]}

    gated.hold = {p["title"] for p in papers[PAPER_BATCH:]}
    proc = start_ingest(gated, corpus, killed)
    wait_until_held(gated, proc)

    # While it is held mid-ingest, with batch 1 written: a second writer is turned away, and a
    # reader sees the papers written so far.
    busy = run_rag("ingest", str(corpus), env=rag_env(gated, killed))
    assert busy.returncode == 1 and "index is busy" in one_line_error(busy)
    search = run_rag("search", "sparse attention experts", "--json", env=rag_env(gated, killed))
    assert search.returncode == 0, search.stderr
    found = {r["paper_id"] for r in json.loads(search.stdout)["results"]}
    assert found and found <= first_batch

    kill_when_held(gated, proc)
    gated.hold = set()
    gated.release.set()

    partial = snapshot(killed)
    assert assert_whole_papers(partial) == first_batch  # batch 1 complete, nothing of batch 2

    resumed = ingest_json(gated, corpus, killed)
    # It reads on from the checkpoint of batch 1 (its last record is read again, to be safe)
    # and embeds nothing of batch 1 again.
    assert resumed["resumed"] == [f"{corpus}: from line {PAPER_BATCH}"]
    assert resumed["papers_unchanged"] == 1
    assert resumed["papers_added"] == N_PAPERS - PAPER_BATCH
    assert resumed["papers_total"] == N_PAPERS and resumed["errors"] == []

    full = ingest_here(gated, corpus, reference)
    assert full.papers_added == N_PAPERS
    assert resumed["chunks_embedded"] == full.chunks_embedded - len(partial)
    assert 0 < len(partial) < full.chunks_embedded  # the kill really was mid-ingest

    after, expected = snapshot(killed), snapshot(reference)
    assert assert_whole_papers(after) == {p["_id"] for p in papers}
    assert after == expected  # same ids, documents, metadata (hashes) and vectors

    # The vector index survived the kill: each chunk finds itself.
    store = Store(Settings(index_dir=killed), EMBED_MODEL)
    for cid in sorted(after)[:: max(1, len(after) // 25)]:
        vector = np.asarray(after[cid][2], dtype=np.float32)
        hits = store.query(vector / np.linalg.norm(vector), 5)
        assert cid in [h.chunk_id for h in hits], cid


def test_sigkill_mid_update_then_rerun_equals_a_fresh_ingest_of_the_new_text(
    tmp_path: Path, gated: GatedLLM
) -> None:
    """Changed abstracts (with other chunk counts) replace the old ones even across a kill: no
    stale chunk of the old text survives, no paper mixes old and new chunks."""
    old, new = synthetic_papers(N_PAPERS, 1), synthetic_papers(N_PAPERS, 2)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = write_jsonl(tmp_path / "v1" / "papers.jsonl", old)
    v2 = write_jsonl(tmp_path / "v2" / "papers.jsonl", new)
    index, reference = tmp_path / "index-a", tmp_path / "reference"
    assert ingest_here(gated, v1, index).papers_added == N_PAPERS
    old_hashes = content_hashes(snapshot(index))

    gated.hold = {p["title"] for p in new[PAPER_BATCH:]}
    kill_when_held(gated, start_ingest(gated, v2, index))
    gated.hold = set()
    gated.release.set()

    # Killed between batches: batch 1 has its new text, batch 2 still the old one.
    partial = snapshot(index)
    assert assert_whole_papers(partial) == {p["_id"] for p in old}
    hashes = content_hashes(partial)
    changed = [p["_id"] for p in new if hashes[p["_id"]] != old_hashes[p["_id"]]]
    assert changed == [p["_id"] for p in new[:PAPER_BATCH]]

    resumed = ingest_json(gated, v2, index)
    assert resumed["resumed"] == [f"{v2}: from line {PAPER_BATCH}"]
    assert resumed["papers_updated"] == N_PAPERS - PAPER_BATCH
    assert resumed["papers_unchanged"] == 1  # the checkpointed batch's last record, read again
    assert resumed["chunks_deleted"] > 0

    ingest_here(gated, v2, reference)
    after = snapshot(index)
    assert assert_whole_papers(after) == {p["_id"] for p in new}
    assert after == snapshot(reference)


def content_hashes(chunks: dict[str, tuple[str, dict[str, Any], list[float]]]) -> dict[str, str]:
    return {meta["paper_id"]: meta["content_hash"] for _, meta, _ in chunks.values()}


# --- b. two writers at once ----------------------------------------------------------------------


def test_second_ingest_is_told_busy_while_the_lock_is_held_and_search_still_works(
    tmp_path: Path, gated: GatedLLM
) -> None:
    index = tmp_path / "index"
    papers = synthetic_papers(20, long=False)
    ingest_here(gated, write_jsonl(tmp_path / "a.jsonl", papers[:10]), index)
    more = write_jsonl(tmp_path / "b.jsonl", papers[10:])
    before = snapshot(index)

    with ingest_lock(index):
        busy = run_rag("ingest", str(more), env=rag_env(gated, index))
        assert busy.returncode == 1
        line = one_line_error(busy)
        assert line.startswith("rag: error: index is busy") and str(index) in line
        search = run_rag("search", papers[3]["title"], "--json", env=rag_env(gated, index))
        assert search.returncode == 0, search.stderr
        assert json.loads(search.stdout)["results"][0]["paper_id"] == papers[3]["_id"]
    assert snapshot(index) == before

    # The lock was the only obstacle.
    assert ingest_json(gated, more, index)["papers_added"] == 10


# --- c. damaged or foreign index directories -----------------------------------------------------


def sqlite_content(path: Path, scratch: Path) -> str:
    """An SQLite file's data. Chroma adds a row to its `acquire_write` table whenever a client
    opens the store, even to read it: that row is no change to the index."""
    copy = scratch / "copy.sqlite3"
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        lines = [
            line for line in db.iterdump() if not line.startswith('INSERT INTO "acquire_write"')
        ]
    finally:
        db.close()
        copy.unlink()
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fingerprint(directory: Path, scratch: Path) -> dict[str, str]:
    """A hash of every file under `directory` (but the ingest lock, ours to rewrite)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name == LOCK_NAME:
            continue
        data = path.read_bytes()
        name = path.relative_to(directory).as_posix()
        found[name] = hashlib.sha256(data).hexdigest()
        if data.startswith(b"SQLite format 3\x00"):
            with contextlib.suppress(sqlite3.DatabaseError):  # a damaged one: its bytes
                found[name] = sqlite_content(path, scratch)
    return found


def garbage_files(index: Path, server: FakeLLM, tmp_path: Path) -> dict[str, str]:
    rng = random.Random(7)
    (index / "chroma").mkdir(parents=True)
    (index / "chroma" / "chroma.sqlite3").write_bytes(rng.randbytes(64 * 1024))
    (index / "chroma" / "0f3c-segment").mkdir()
    (index / "chroma" / "0f3c-segment" / "data_level0.bin").write_bytes(rng.randbytes(4096))
    (index / "notes.txt").write_text("someone's notes\n")
    (index / "bm25").mkdir()
    (index / "bm25" / "papers.json").write_bytes(rng.randbytes(300))
    return {}


def another_apps_database(index: Path, server: FakeLLM, tmp_path: Path) -> dict[str, str]:
    """A valid SQLite database, not Chroma's, where the store's database would be."""
    (index / "chroma").mkdir(parents=True)
    db = sqlite3.connect(index / "chroma" / "chroma.sqlite3")
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices (total) VALUES (12.5), (99.0)")
    db.commit()
    db.close()
    return {}


def another_tools_collection(index: Path, server: FakeLLM, tmp_path: Path) -> dict[str, str]:
    import chromadb

    client = chromadb.PersistentClient(path=str(index / "chroma"))
    theirs = client.create_collection("papers", metadata={"owner": "another tool"})
    theirs.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["theirs", "too"])
    client.close()
    return {}


def another_embedding_model(index: Path, server: FakeLLM, tmp_path: Path) -> dict[str, str]:
    """Built by this tool with the toy model; used with the default MiniLM."""
    ingest_here(server, write_jsonl(tmp_path / "built.jsonl", synthetic_papers(5)), index)
    return {"RAG_EMBED_MODEL": "all-MiniLM-L6-v2"}


def damaged_database(how: str) -> Any:
    """A store built by this tool, then its database emptied, cut, overwritten or deleted."""

    def setup(index: Path, server: FakeLLM, tmp_path: Path) -> dict[str, str]:
        ingest_here(server, write_jsonl(tmp_path / "built.jsonl", synthetic_papers(40)), index)
        database = index / "chroma" / "chroma.sqlite3"
        size = database.stat().st_size
        if how == "empty":
            database.write_bytes(b"")
        elif how == "cut":
            with open(database, "r+b") as handle:
                handle.truncate(size // 2)
        elif how == "overwritten":
            with open(database, "r+b") as handle:
                handle.seek(size // 4)
                handle.write(random.Random(3).randbytes(size // 2))
        else:
            database.unlink()
        return {}

    return setup


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (garbage_files, "cannot open the index"),
        (another_apps_database, "not a Chroma index"),
        (another_tools_collection, "was not built by this tool"),
        (another_embedding_model, "built with embedding model 'openai:toy-embedding'"),
        (damaged_database("empty"), "chroma.sqlite3 is empty"),
        (damaged_database("cut"), "malformed"),
        (damaged_database("overwritten"), "malformed"),
        (damaged_database("deleted"), "chroma.sqlite3 is missing"),
    ],
    ids=[
        "garbage-files",
        "another-apps-sqlite",
        "another-tools-collection",
        "another-model",
        "database-emptied",
        "database-cut",
        "pages-overwritten",
        "database-deleted",
    ],
)
def test_damaged_or_foreign_index_is_refused_in_one_line_and_left_untouched(
    tmp_path: Path, gated: GatedLLM, setup: Any, message: str
) -> None:
    index = tmp_path / "index"
    env = {
        **rag_env(gated, index),
        # Were the index taken for missing, a search would build one from here: keep it small.
        "RAG_CORPUS_DIR": str(tmp_path / "no-corpus"),
    }
    env.update(setup(index, gated, tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    corpus = write_jsonl(tmp_path / "new.jsonl", synthetic_papers(3, version=2, long=False))
    before = fingerprint(index, scratch)
    assert before

    for args in (["search", "x"], ["ingest", str(corpus)], ["ask", "what is x?", "--no-llm"]):
        result = run_rag(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line_error(result)
        assert line.startswith("rag: error: ") and message in line, line
        assert "RAG_INDEX_DIR" in line or "rag ingest" in line, line  # says how to rebuild
        assert fingerprint(index, scratch) == before, args
