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

    def __init__(
        self, message: str, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class LLMInterrupted(LLMError):
    """The answer stream broke off after some of it was shown; `partial` holds that part."""

    def __init__(self, message: str, partial: str, retryable: bool = False) -> None:
        super().__init__(message, retryable)
        self.partial = partial


class ContextTooLong(LLMError):
    """The server refused a prompt longer than the model's context; `limit` is the context it
    said it has (None when it did not say)."""

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit
