"""The layout: modules import only downwards in the pipeline, only the entry layer ingests,
the CLI and the UI reach the data through the entry layer, and queries never build an index."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rag.settings import PROJECT_ROOT

# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS: list[set[str]] = [
    {"rag", "rag.settings", "rag.errors", "rag.limits"},
    {"rag.prompts", "rag.llm"},  # templates, and the one module that talks to an LLM endpoint
    {"rag.generation"},
    {"rag.reading"},
    {"rag.corpus"},
    {"rag.filters"},
    {"rag.metadata"},
    {
        "rag.encoders",
        "rag.encoders.bert",
        "rag.encoders.numpy_encoder",
        "rag.encoders.onnx_encoder",
        "rag.encoders.torch_encoder",
    },
    {"rag.embed"},
    {"rag.table", "rag.texts", "rag.nearest"},
    {"rag.chroma"},
    {"rag.collection"},
    {"rag.store", "rag.segments"},
    {"rag.lexical", "rag.chunking", "rag.lease", "rag.facts"},
    {"rag.ingest", "rag.retrieve"},
    {"rag.support"},
    {"rag.claims"},
    {"rag.judge"},
    {"rag.conversation", "rag.answer"},
    {"rag.parts"},
    {"rag.summarize"},
    {"rag.eval", "rag.eval.metrics", "rag.eval.questions", "rag.eval.beir", "rag.eval.report"},
    {"rag.api"},
    {"rag.terminal", "rag.export"},  # what the shells show and save
    {"ui.background"},  # the UI's work beside an event
    {"rag.cli", "rag.__main__", "ui", "ui.app", "ui.render", "ui.tools", "ui.panels"},
]
# What the shells (CLI, UI) may import: the entry layer, and plain types and settings.
SHELL_MAY_IMPORT = {
    "rag",
    "rag.api",
    "rag.settings",
    "rag.errors",
    "rag.limits",
    "rag.filters",
    "rag.corpus",
    "rag.conversation",
    "rag.answer",
    "rag.summarize",
    "rag.claims",
    "rag.terminal",
    "rag.export",
    "rag.cli",
    "ui.app",  # `rag serve` starts the UI
    "ui.render",  # the UI's own view of answers
    "ui.tools",  # and its parts
    "ui.panels",
    "ui.background",
}
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 200  # not counting declared fields (`Settings`: one per variable, documented)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    files = [*(PROJECT_ROOT / "rag").rglob("*.py"), *(PROJECT_ROOT / "ui").rglob("*.py")]
    return {module_name(path): path for path in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def layer_of(name: str) -> int:
    for number, layer in enumerate(LAYERS):
        if name in layer:
            return number
    raise AssertionError(f"{name} is in no layer: add it to LAYERS where it belongs")


def test_every_module_imports_only_its_own_layer_or_lower_ones() -> None:
    files = package_files()
    wrong = [
        f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
        for name, path in files.items()
        for other in imports_of(path, set(files))
        if layer_of(other) > layer_of(name)
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_entry_layer_ingests() -> None:
    files = package_files()
    importers = {
        name for name, path in files.items() if "rag.ingest" in imports_of(path, set(files))
    }
    assert importers == {"rag.api"}


def test_the_cli_and_the_ui_reach_the_data_through_the_entry_layer() -> None:
    files = package_files()
    for shell in ("rag.cli", "ui.app", "ui.tools", "ui.panels", "ui.background"):
        outside = imports_of(files[shell], set(files)) - SHELL_MAY_IMPORT
        assert not outside, f"{shell} imports {sorted(outside)}"


def test_modules_and_classes_stay_small() -> None:
    too_long = []
    for name, path in package_files().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = sum(
                    (stmt.end_lineno or stmt.lineno) - stmt.lineno + 1
                    for stmt in node.body
                    if not isinstance(stmt, ast.AnnAssign | ast.Expr)
                )
                if size > MAX_CLASS_LINES:
                    too_long.append(f"class {name}.{node.name}: {size} lines of code")
    assert not too_long, "\n".join(too_long)


def test_a_query_on_a_missing_index_says_so_and_builds_nothing(tmp_path: Path) -> None:
    """Only the entry points that decide to (a first CLI run, `rag serve`) build the bundled
    corpus; the library's query functions stop with the message instead."""
    from rag import api
    from rag.errors import RagError
    from rag.settings import Settings
    from tests.helpers import HashEmbedder

    settings = Settings(index_dir=tmp_path / "index")
    for query in (
        lambda: api.search("anything", settings, embedder=HashEmbedder()),
        lambda: api.ask("anything at all?", settings, embedder=HashEmbedder()),
        lambda: api.summarize("anything", settings, embedder=HashEmbedder()),
    ):
        with pytest.raises(RagError, match=r"no index at .*run `rag ingest` first"):
            query()
    assert not (tmp_path / "index" / "chroma" / "chroma.sqlite3").exists()
