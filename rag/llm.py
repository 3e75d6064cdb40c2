"""Messages -> replies (and texts -> embeddings) through the OpenAI API: the only module that
imports `openai`.

Works with any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp) through
`OPENAI_BASE_URL`. Failures become one readable `LLMError`; the API key never appears in it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

from rag.errors import LLMError, LLMInterrupted
from rag.settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]
PLACEHOLDER_KEY = "not-needed"  # local servers (Ollama, llama.cpp) accept any key
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_CAP = 8.0
T = TypeVar("T")


def _client(settings: Settings) -> Any:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return _shared_client(key or PLACEHOLDER_KEY, settings.openai_base_url, settings.llm_timeout)


@functools.lru_cache(maxsize=16)
def _shared_client(key: str, base_url: str | None, timeout: float) -> Any:
    """One client (and connection pool) per endpoint: building one costs ~30 ms of CPU."""
    from openai import OpenAI

    # Retries are ours (`with_retries`): bounded by one deadline for the whole call.
    return OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)


def redact(text: str, settings: Settings) -> str:
    """`text` with the API key (if any) masked."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return text.replace(key, "***") if len(key) >= 4 else text


def _retry_after(exc: Any) -> float | None:
    """Seconds the server asked us to wait (Retry-After), if it said."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@contextlib.contextmanager
def _errors(settings: Settings, what: str) -> Iterator[None]:
    """Turn the openai package's (and httpx's) exceptions into one readable, key-free
    `LLMError`, marked retryable for time-outs, connection failures, 429, 5xx and bad replies."""
    import httpx
    import openai

    where = settings.openai_base_url or "the OpenAI API"
    try:
        yield
    except openai.APITimeoutError:
        raise LLMError(f"{what} timed out at {where}", retryable=True) from None
    except (openai.APIConnectionError, httpx.TransportError):
        raise LLMError(f"cannot reach {where} for {what}; is the server running?", True) from None
    except openai.AuthenticationError:
        raise LLMError(f"{where} rejected the API key (HTTP 401); check OPENAI_API_KEY") from None
    except openai.NotFoundError as exc:
        raise LLMError(
            redact(
                f"{where} answered 404 for {what}: {_detail(exc)}; check RAG_LLM_MODEL", settings
            )
        ) from None
    except openai.RateLimitError as exc:
        raise LLMError(
            f"{where} is rate limiting {what} (HTTP 429)", True, _retry_after(exc)
        ) from None
    except openai.APIStatusError as exc:
        retryable = exc.status_code in RETRYABLE_STATUS
        raise LLMError(
            redact(f"{where} failed {what} (HTTP {exc.status_code}): {_detail(exc)}", settings),
            retryable,
            _retry_after(exc),
        ) from None
    except (openai.APIError, ValueError) as exc:
        message = redact(f"{where} sent an unusable reply to {what}: {exc}", settings)
        raise LLMError(message[:300], retryable=True) from None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:200]
    return str(getattr(exc, "message", exc))[:200]


def with_retries(settings: Settings, what: str, attempt: Callable[[float], T]) -> T:
    """`attempt(seconds_left)` until it succeeds, retrying retryable failures with exponential
    back-off and jitter (or the server's Retry-After), at most `llm_max_retries` times and
    never past the `llm_timeout` deadline; then one readable `LLMError`."""
    deadline = time.monotonic() + settings.llm_timeout
    tries = settings.llm_max_retries + 1
    for number in range(1, tries + 1):
        left = deadline - time.monotonic()
        try:
            with _errors(settings, what):
                return attempt(left)
        except LLMError as exc:
            if not exc.retryable or number == tries:
                raise _final(exc, number, settings) from None
            wait = exc.retry_after
            if wait is None:
                wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (number - 1))
                wait *= 1 + random.random() / 2  # jitter: clients that failed together spread out
            if time.monotonic() + wait >= deadline:
                raise _final(exc, number, settings, out_of_time=True) from None
            log.info("%s; retrying in %.1f s (attempt %d of %d)", exc, wait, number + 1, tries)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _final(exc: LLMError, attempts: int, settings: Settings, out_of_time: bool = False) -> LLMError:
    if not exc.retryable:
        return exc
    why = (
        f"the {settings.llm_timeout:g} s time-out (RAG_LLM_TIMEOUT) ran out"
        if out_of_time
        else ("no retries left (RAG_LLM_MAX_RETRIES)")
    )
    plural = "s" if attempts > 1 else ""
    return LLMError(f"{exc} (gave up after {attempts} attempt{plural}: {why})")


class LLM:
    """Chat completions, streamed or not, with bounded retries under one deadline."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        self.settings = settings
        self.model = model or settings.llm_model

    @cached_property
    def client(self) -> Any:
        return _client(self.settings)

    def _create(self, messages: Sequence[Message], timeout: float, stream: bool) -> Any:
        return self.client.chat.completions.create(
            model=self.model,
            messages=list(messages),
            temperature=self.settings.llm_temperature,
            stream=stream,
            timeout=max(timeout, 0.1),
        )

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """Text deltas of the reply as they arrive.

        Failures before the first token are retried like any request. A stream that breaks
        off (or ends without a finish) after tokens were shown raises `LLMInterrupted`, so a
        truncated answer is never passed off as complete.
        """

        def first(timeout: float) -> tuple[Any, Any, list[str], bool]:
            events = iter(self._create(messages, timeout, stream=True))
            for event in events:
                text, finished = _delta(event)
                if text or finished:
                    return events, event, [text] if text else [], finished
            raise ValueError("the stream ended without an answer")

        events, _, head, finished = with_retries(self.settings, "the answer", lambda t: first(t))
        shown = "".join(head)
        yield from head
        try:
            with _errors(self.settings, "the answer"):
                for event in [] if finished else events:
                    text, finished = _delta(event)
                    if text:
                        shown += text
                        yield text
                    if finished:
                        break
        except LLMError as exc:
            raise LLMInterrupted(f"answer interrupted: {exc}", shown) from None
        if not finished:
            raise LLMInterrupted(
                "answer interrupted: the stream ended before the answer did", shown
            )

    def complete(self, messages: Sequence[Message]) -> str:
        """The whole reply."""

        def once(timeout: float) -> str:
            response = self._create(messages, timeout, stream=False)
            if not getattr(response, "choices", None):
                raise ValueError("the reply holds no choices")
            return response.choices[0].message.content or ""

        return with_retries(self.settings, "the answer", once)


def _delta(event: Any) -> tuple[str, bool]:
    """(text, finished) of one stream event."""
    if not getattr(event, "choices", None):
        return "", False
    choice = event.choices[0]
    return (choice.delta.content or "") if choice.delta else "", bool(choice.finish_reason)


def embeddings(settings: Settings, model: str, texts: Sequence[str]) -> list[list[float]]:
    """One embeddings request for `texts` (vectors in input order); a rate limit (429) or a
    server error is retried after the server's Retry-After (else with back-off), within
    `llm_timeout`."""

    def once(timeout: float) -> Any:
        return _client(settings).embeddings.create(
            model=model, input=list(texts), timeout=max(timeout, 0.1)
        )

    response = with_retries(settings, "embeddings", once)
    return [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
