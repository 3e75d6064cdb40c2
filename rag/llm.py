"""The LLM (and OpenAI embeddings) behind the OpenAI API: the only module that imports `openai`.

Works with any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, llama.cpp) through
`OPENAI_BASE_URL`. Failures become one readable `LLMError`; the API key never appears in it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from rag.errors import LLMError
from rag.settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]
PLACEHOLDER_KEY = "not-needed"  # local servers (Ollama, llama.cpp) accept any key


def _client(settings: Settings) -> Any:
    from openai import OpenAI

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return OpenAI(
        api_key=key or PLACEHOLDER_KEY,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
    )


def redact(text: str, settings: Settings) -> str:
    """`text` with the API key (if any) masked."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return text.replace(key, "***") if len(key) >= 4 else text


@contextlib.contextmanager
def _errors(settings: Settings, what: str) -> Iterator[None]:
    """Turn the openai package's exceptions into one readable, key-free `LLMError`."""
    import openai

    where = settings.openai_base_url or "the OpenAI API"
    retries = f"after {settings.llm_max_retries} retries"
    try:
        yield
    except openai.APITimeoutError:
        raise LLMError(
            f"{what} timed out ({settings.llm_timeout:g}s, {retries}) at {where}"
        ) from None
    except openai.APIConnectionError:
        raise LLMError(
            f"cannot reach {where} for {what} ({retries}); is the server running?"
        ) from None
    except openai.AuthenticationError:
        raise LLMError(f"{where} rejected the API key (HTTP 401); check OPENAI_API_KEY") from None
    except openai.NotFoundError as exc:
        raise LLMError(
            redact(
                f"{where} answered 404 for {what}: {_detail(exc)}; check RAG_LLM_MODEL", settings
            )
        ) from None
    except openai.RateLimitError:
        raise LLMError(
            f"{where} is rate limiting {what} (HTTP 429, {retries}); try later"
        ) from None
    except openai.APIStatusError as exc:
        raise LLMError(
            redact(
                f"{where} failed {what} (HTTP {exc.status_code}, {retries}): {_detail(exc)}",
                settings,
            )
        ) from None
    except (openai.APIError, ValueError) as exc:
        raise LLMError(
            redact(f"{where} sent an unusable reply to {what}: {exc}", settings)
        ) from None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:200]
    return str(getattr(exc, "message", exc))[:200]


class LLM:
    """Chat completions, streamed or not, with the client's retries and time-outs."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        self.settings = settings
        self.model = model or settings.llm_model

    @cached_property
    def client(self) -> Any:
        return _client(self.settings)

    def stream(self, messages: Sequence[Message]) -> Iterator[str]:
        """Text deltas of the reply as they arrive."""
        with _errors(self.settings, "the answer"):
            response = self.client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                temperature=self.settings.llm_temperature,
                stream=True,
            )
            for event in response:
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content

    def complete(self, messages: Sequence[Message]) -> str:
        """The whole reply."""
        with _errors(self.settings, "the answer"):
            response = self.client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                temperature=self.settings.llm_temperature,
            )
            if not response.choices:
                raise LLMError("the LLM returned no choices")
            return response.choices[0].message.content or ""


class OpenAIEmbedder:
    """Embeddings from the OpenAI API (`RAG_EMBED_MODEL=openai:text-embedding-3-small`)."""

    max_tokens = 8000
    batch = 256

    def __init__(self, model: str, settings: Settings) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.settings = settings

    @cached_property
    def client(self) -> Any:
        return _client(self.settings)

    def count_tokens(self, text: str) -> int:
        # An upper estimate (about 4 characters a token): chunks stay far below the window.
        return len(text) // 3 + 1

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        with _errors(self.settings, "embeddings"):
            for start in range(0, len(texts), self.batch):
                part = list(texts[start : start + self.batch])
                response = self.client.embeddings.create(model=self.model, input=part)
                rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        vectors = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True) if len(rows) else 1.0
        return vectors / np.maximum(norms, 1e-12)
