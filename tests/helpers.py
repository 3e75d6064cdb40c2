"""Small deterministic stand-ins and runners shared by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rag.corpus import Listing, Paper, paper_id_for
from rag.embed import Embedder


class HashEmbedder(Embedder):
    """A tiny deterministic bag-of-words encoder: fast unit tests of the store and chunking."""

    name = "test-hash"
    max_tokens = 64
    dim = 64

    def __init__(self) -> None:
        self.calls = 0
        self.texts_embedded = 0

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def make_paper(
    title: str, abstract: str, source: str = "test.txt", date: str | None = None
) -> Paper:
    return Paper(paper_id_for(title), title, abstract, (Listing(source, date),))


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_rag(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`rag ARGS...` in a fresh process, with the test's environment (isolated index)."""
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait until `url` answers, failing early if the process serving it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {timeout} s")


@contextlib.contextmanager
def serving(env: dict[str, str], cwd: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`rag serve ARGS...` on a free loopback port, with none of this process's RAG_/OPENAI_
    settings but `env`'s; its output goes to `cwd/serve.log`. Yields the URL and the process,
    once the page answers."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    port = free_port()
    log = (cwd / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port), *args],
        env={**inherited, **env},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, server)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
