from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.settings import PROJECT_ROOT, Settings
from tests.fake_llm import FakeLLM

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own index directory, no LLM and no user configuration."""
    for name in list(os.environ):
        if name.startswith(("RAG_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAG_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    return tmp_path / "index"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(index_dir=tmp_path / "index")


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled corpus indexed once with the real model; tests copy it before writing."""
    from rag import api

    index_dir = tmp_path_factory.mktemp("corpus-index")
    report = api.ingest(None, Settings(index_dir=index_dir))
    assert report.papers_total == 401, report
    return index_dir


@pytest.fixture
def corpus_settings(
    corpus_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings over a private copy of the bundled-corpus index."""
    index_dir = tmp_path / "corpus-index"
    shutil.copytree(corpus_index, index_dir)
    monkeypatch.setenv("RAG_INDEX_DIR", str(index_dir))
    return Settings(index_dir=index_dir)


@pytest.fixture
def bundled_corpus() -> Path:
    return PROJECT_ROOT / "index" / "corpus"
