"""Prompt templates, loaded by name from `prompts/` and rendered strictly."""

from __future__ import annotations

import re
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


def as_data(text: str) -> str:
    """Text from a paper or a model made unable to close or open the prompts' delimiters
    (`</source>`, `<sources>`)."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


# Terminal control sequences (CSI colours and cursor moves, OSC window titles and clipboard
# writes, other escapes) and control characters but tab and newline, C1 ones included.
CONTROL = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.?)"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: str) -> str:
    """`text` without terminal control sequences: a model's reply or an abstract must not
    clear the screen, retitle the window or write to the clipboard (OSC 52)."""
    return CONTROL.sub("", text)
