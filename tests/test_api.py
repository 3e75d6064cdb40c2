"""The entry layer's contract: keyword-only collaborators, per-request assistants that keep what
they were given, and a first run that reads its input before it builds anything."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from rag import api
from rag.llm import LLM
from rag.settings import PROJECT_ROOT, Settings
from tests.helpers import HashEmbedder, run_rag


def test_collaborators_after_k_are_keywords_only(settings: Settings) -> None:
    """An old positional call (`summarize(topic, settings, 8, True)` meaning no_llm) fails
    loudly instead of passing True as a callback or a filter."""
    with pytest.raises(TypeError):
        api.summarize("topic", settings, 8, True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        api.ask("question?", settings, 5, True)  # type: ignore[misc]


def test_adjusted_keeps_the_given_llm_and_the_answer_mode(settings: Settings) -> None:
    embedder = HashEmbedder()
    given = LLM(settings, model="given")
    assistant = api.Assistant(settings, llm=given, embedder=embedder)
    assert assistant.adjusted(no_llm=False).llm is given
    assert assistant.adjusted(top_k=3).llm is given
    assert assistant.adjusted(no_llm=True).llm is None
    extractive = api.Assistant(settings, no_llm=True, llm=given, embedder=embedder)
    assert extractive.adjusted(llm_model="other").llm is None  # still extractive
    other = assistant.adjusted(llm_model="other")
    assert other.llm is not None and other.llm.model == "other"
    assert other.settings.llm_model == "other" and assistant.settings.llm_model != "other"
    assert other.embedder is embedder


def test_eval_reads_its_questions_before_a_first_run_builds_the_index(tmp_path: Path) -> None:
    result = run_rag("eval", "--questions", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr
    assert "building it from the bundled corpus" not in result.stderr
    assert not (tmp_path / "index" / "chroma").exists()


def test_every_package_is_installed() -> None:
    """A wheel holds what `packages.find` includes: every package under rag/ and ui/."""
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        ".".join(init.parent.relative_to(PROJECT_ROOT).parts)
        for top in ("rag", "ui")
        for init in (PROJECT_ROOT / top).rglob("__init__.py")
    }
    missing = [p for p in packages if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert packages >= {"rag", "rag.encoders", "rag.eval", "ui"} and not missing
