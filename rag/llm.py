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
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

from rag.errors import ContextTooLong, LLMError, LLMInterrupted
from rag.settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]
PLACEHOLDER_KEY = "not-needed"  # local servers (Ollama, llama.cpp) accept any key
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_CAP = 8.0
T = TypeVar("T")
# How servers say a prompt is longer than the context (OpenAI, vLLM, llama.cpp and its Python
# server); the number they give is the context, when they give one.
CONTEXT_ERROR = re.compile(
    r"maximum context length|context (?:window|size|length)|exceeds? .*context|n_ctx",
    re.IGNORECASE,
)
CONTEXT_NUMBER = re.compile(
    r"(?:maximum context length is|context window of|context size of|n_ctx\W{0,3})\s*(\d{3,7})",
    re.IGNORECASE,
)
# (base URL, model) -> the context its server said it has.
LEARNED_CONTEXT: dict[tuple[str | None, str], int] = {}
KEY_PREFIX = 8  # characters of the key that, starting it, are masked wherever they appear
SECRET_LIKE = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{6,}")


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
    """`text` with the API key masked: the whole key, any part of it of 8 characters or more
    that starts it (an error body cut short, a key echoed in part), and anything shaped like
    a secret key (`sk-...`)."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if len(key) >= 4:
        text = text.replace(key, "***")
        for size in range(len(key) - 1, KEY_PREFIX - 1, -1):
            if key[:size] in text:
                text = text.replace(key[:size], "***")
    return SECRET_LIKE.sub("***", text)


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters (after redaction, never before)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        detail = one_line(redact(_detail(exc), settings), 200)
        raise LLMError(f"{where} answered 404 for {what}: {detail}; check RAG_LLM_MODEL") from None
    except openai.RateLimitError as exc:
        raise LLMError(
            f"{where} is rate limiting {what} (HTTP 429)", True, _retry_after(exc)
        ) from None
    except openai.APIStatusError as exc:
        retryable = exc.status_code in RETRYABLE_STATUS
        detail = one_line(redact(_detail(exc), settings), 200)
        if exc.status_code in (400, 413) and CONTEXT_ERROR.search(_detail(exc) + str(exc.body)):
            raise ContextTooLong(
                f"{where} refused {what}: the prompt is longer than the model's context ({detail})",
                _context_limit(_detail(exc) + " " + str(exc.body)),
            ) from None
        raise LLMError(
            f"{where} failed {what} (HTTP {exc.status_code}): {detail}",
            retryable,
            _retry_after(exc),
        ) from None
    except (openai.APIError, ValueError) as exc:
        message = redact(f"{where} sent an unusable reply to {what}: {exc}", settings)
        raise LLMError(one_line(message), retryable=True) from None


def _detail(exc: Any) -> str:
    """What the server said (whole: it is redacted, then cut)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return str(getattr(exc, "message", exc))


def with_retries(
    settings: Settings, what: str, attempt: Callable[[float], T], deadline: float | None = None
) -> T:
    """`attempt(seconds_left)` until it succeeds, retrying retryable failures with exponential
    back-off and jitter (or the server's Retry-After), at most `llm_max_retries` times and
    never past the deadline (default: `llm_timeout` from now); then one readable `LLMError`."""
    deadline = deadline or time.monotonic() + settings.llm_timeout
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
        f"the {settings.llm_timeout:g} s allowed for it ran out; set by RAG_LLM_TIMEOUT"
        if out_of_time
        else "the number of retries is set by RAG_LLM_MAX_RETRIES"
    )
    plural = "s" if attempts > 1 else ""
    return LLMError(f"{exc} (gave up after {attempts} attempt{plural}; {why})")


class Streamed:
    """The text of a reply as it arrives (iterate it); `finish` once it has ended."""

    def __init__(self, deltas: Generator[str, None, str | None]) -> None:
        self._deltas = deltas
        self.finish: str | None = None

    def __iter__(self) -> Iterator[str]:
        self.finish = yield from self._deltas


class _Watchdog:
    """Closes a call's response when its deadline passes: a server that sends a token every few
    seconds, or trickles the bytes of a reply, cannot outlast `RAG_LLM_TIMEOUT` (a read
    timeout only bounds the wait for each piece). Closing also frees a single-slot server."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._timers: list[threading.Timer] = []

    def arm(self, response: Any) -> None:
        def fire() -> None:
            self.fired = True
            with contextlib.suppress(Exception):
                response.close()

        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), fire)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()


class LLM:
    """Chat completions, always streamed (so that giving up closes the connection), with
    bounded retries under one deadline per call."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        self.settings = settings
        self.model = model or settings.llm_model

    @cached_property
    def client(self) -> Any:
        return _client(self.settings)

    def _create(self, messages: Sequence[Message], timeout: float, max_tokens: int | None) -> Any:
        options: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
        return self.client.chat.completions.create(
            model=self.model,
            messages=list(messages),
            temperature=self.settings.llm_temperature,
            stream=True,
            timeout=max(timeout, 0.1),
            **options,
        )

    @property
    def context_tokens(self) -> int:
        """The model's context: what its server said it is, else `llm_context_tokens`."""
        learned = LEARNED_CONTEXT.get((self.settings.openai_base_url, self.model))
        return learned or self.settings.llm_context_tokens

    def learn_context(self, limit: int | None) -> None:
        """After a prompt was refused as too long: believe the context the server said it has
        when that is less than assumed, else (our estimate was short, or it did not say)
        assume three quarters of it, for the rest of the process."""
        key = (self.settings.openai_base_url, self.model)
        current = self.context_tokens
        smaller = limit if limit is not None and limit < current else current * 3 // 4
        LEARNED_CONTEXT[key] = max(256, smaller)
        log.warning(
            "%s said the prompt was longer than the model's context: assuming %d tokens "
            "(RAG_LLM_CONTEXT_TOKENS)",
            self.settings.openai_base_url or "the OpenAI API",
            LEARNED_CONTEXT[key],
        )

    def _late(self) -> str:
        where = self.settings.openai_base_url or "the OpenAI API"
        return (
            f"{where} took longer than the {self.settings.llm_timeout:g} s time-out "
            "(RAG_LLM_TIMEOUT, counted from the request: prompt processing included)"
        )

    def stream(
        self, messages: Sequence[Message], max_tokens: int | None = None, what: str = "the answer"
    ) -> Streamed:
        """Text deltas of the reply as they arrive (`finish` set at the end).

        Failures before the first token are retried like any request. A stream that breaks
        off (or ends without a finish, or runs past the deadline) after tokens were shown
        raises `LLMInterrupted`, so a truncated answer is never passed off as complete.
        """
        return Streamed(self._deltas(messages, max_tokens, what))

    def _deltas(
        self, messages: Sequence[Message], max_tokens: int | None, what: str
    ) -> Generator[str, None, str | None]:
        watch = _Watchdog(time.monotonic() + self.settings.llm_timeout)
        opened: list[Any] = []
        noun = what.removeprefix("the ")

        def first(timeout: float) -> tuple[Any, str, str | None]:
            response = self._create(messages, timeout, max_tokens)
            opened.append(response)
            watch.arm(response)
            for text, finish in self._events(response, watch):
                if text or finish:
                    return response, text, finish
            raise ValueError("the stream ended without an answer")

        try:
            response, shown, finish = with_retries(self.settings, what, first, watch.deadline)
            if shown:
                yield shown
            rest = [] if finish else self._events(response, watch)
            try:
                with _errors(self.settings, what):
                    for text, reason in rest:
                        if text:
                            shown += text
                            yield text
                        if reason:
                            finish = reason
                            break
            except LLMError as exc:
                raise LLMInterrupted(f"{noun} interrupted: {exc}", shown, exc.retryable) from None
            if not finish:
                raise LLMInterrupted(
                    f"{noun} interrupted: the stream ended before the {noun} did", shown, True
                )
            return finish
        finally:
            watch.stop()
            for response in opened:  # a reader that stopped early frees the server too
                with contextlib.suppress(Exception):
                    response.close()

    def _events(self, response: Any, watch: _Watchdog) -> Iterator[tuple[str, str | None]]:
        """(text, finish reason) of each event; the deadline's time-out when the watchdog
        closed the response."""
        try:
            for event in response:
                yield _delta(event)
        except Exception:
            if watch.fired:
                raise LLMError(self._late()) from None
            raise
        if watch.fired:
            raise LLMError(self._late())


def _context_limit(text: str) -> int | None:
    found = CONTEXT_NUMBER.search(text)
    return int(found.group(1)) if found else None


def estimate_tokens(text: str) -> int:
    """Tokens of `text` for a tokenizer we cannot see: an upper estimate (English runs about
    four characters a token; three leaves room for numbers, names and other scripts)."""
    return len(text) // 3 + 1


def _delta(event: Any) -> tuple[str, str | None]:
    """(text, finish reason or None) of one stream event."""
    if not getattr(event, "choices", None):
        return "", None
    choice = event.choices[0]
    return (choice.delta.content or "") if choice.delta else "", choice.finish_reason or None


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
