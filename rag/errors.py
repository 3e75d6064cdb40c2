"""The project's own exceptions: the CLI turns them into one line and an exit code."""

from __future__ import annotations


class RagError(Exception):
    """A runtime failure that is not the user's fault (exit code 1)."""

    exit_code = 1


class InputError(RagError):
    """Bad input from the user: a file, a flag, a question (exit code 2)."""

    exit_code = 2


class IndexMismatchError(RagError):
    """The index was built with settings (embedding model...) that differ from the current ones."""


class LLMError(RagError):
    """The LLM endpoint failed after retries, or answered with something unusable."""
