"""Prompt templates, loaded by name from `prompts/` and rendered strictly."""

from __future__ import annotations

import string
from functools import cache
from pathlib import Path

from rag.errors import RagError
from rag.settings import PROJECT_ROOT

PROMPTS_DIR = PROJECT_ROOT / "prompts"


@cache
def load(name: str, directory: Path = PROMPTS_DIR) -> string.Template:
    """The template `prompts/NAME.txt`."""
    path = directory / f"{name}.txt"
    try:
        return string.Template(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RagError(f"prompt template {name!r} is missing ({path}: {exc.strerror})") from None


def render(name: str, **values: object) -> str:
    """Template `name` with `$variables` filled in; a missing variable is an error naming it."""
    template = load(name)
    try:
        return template.substitute({k: str(v) for k, v in values.items()}).strip()
    except KeyError as exc:
        raise RagError(f"prompt template {name!r} needs a value for ${exc.args[0]}") from None
    except ValueError as exc:
        raise RagError(f"prompt template {name!r} is malformed: {exc}") from None
