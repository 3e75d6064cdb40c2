"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests: scripted replies, recorded requests,
streaming (server-sent events) and injected faults. The real `openai` client talks to it."""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """An injected failure: an HTTP status (with optional headers and body) or a raw behaviour."""

    status: int = 500
    body: str = '{"error": {"message": "injected failure"}}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Cut:
    """A stream that sends `text` and then breaks off: no finish event, connection dropped."""

    text: str


@dataclass
class Slow:
    """A streamed reply sent slowly: `delay` seconds between deltas (a model on a weak CPU)."""

    text: str
    delay: float


Reply = str | Fault | Cut | Slow | Callable[[dict[str, Any]], str]
CHARS_PER_TOKEN = 4  # how this server counts tokens: prompts, `max_tokens`, its context
CONTEXT_ERRORS = {
    # What real servers answer (HTTP 400) to a prompt longer than their context.
    "openai": "This model's maximum context length is {limit} tokens. However, your messages "
    "resulted in {used} tokens. Please reduce the length of the messages.",
    "llama.cpp": "the request exceeds the available context size, try increasing it: request "
    "({used} tokens) exceed context window of {limit} tokens",
}


def ramble(sentence: str = "L-Mul uses a technique called LQ-LoRA to train the adapters.") -> str:
    """What a small local model does: one invented sentence, over and over, until its budget or
    context runs out."""
    return " ".join([sentence] * 400)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client that gave up is expected


class FakeLLM:
    """Queue replies with `reply()`; read what clients sent in `requests`."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.embedding_faults: deque[Fault] = deque()  # answered before any embedding
        self.default: Reply = "I have no scripted reply."
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self.chunk_size = 4  # characters per streamed delta
        self.chunk_delay = 0.0  # seconds between streamed deltas
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at once (concurrency, not timing)
        self.context_tokens: int | None = None  # prompt + max_tokens beyond it: HTTP 400
        self.context_style = "openai"  # which server's wording the 400 uses
        self.slots: threading.Semaphore | None = None  # see single_slot()
        self.disconnects = 0  # streams the client closed before the end
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def single_slot(self) -> None:
        """Serve one request at a time, as llama.cpp's server with one slot does: the next
        request waits until the one before it ends or its client goes away."""
        self.slots = threading.Semaphore(1)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def embedding_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/embeddings")]

    def start(self) -> FakeLLM:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _context_error(self, body: dict[str, Any]) -> str | None:
        if self.context_tokens is None or "messages" not in body:
            return None
        prompt = sum(len(m.get("content") or "") for m in body["messages"]) // CHARS_PER_TOKEN
        used = prompt + int(body.get("max_tokens") or 0)
        if used <= self.context_tokens:
            return None
        message = CONTEXT_ERRORS[self.context_style].format(limit=self.context_tokens, used=used)
        return json.dumps({"error": {"message": message, "type": "invalid_request_error"}})

    def _next(self, body: dict[str, Any]) -> str | Fault | Cut | Slow:
        with self._lock:
            reply = self.replies.popleft() if self.replies else self.default
        return reply(body) if callable(reply) else reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(
                        {
                            "path": self.path,
                            "time": time.monotonic(),
                            "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                if fake.slots is not None:
                    fake.slots.acquire()
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._handle(body)
                except (BrokenPipeError, ConnectionResetError):
                    with fake._lock:
                        fake.disconnects += 1
                finally:
                    with fake._lock:
                        fake.in_flight -= 1
                    if fake.slots is not None:
                        fake.slots.release()

            def _handle(self, body: dict[str, Any]) -> None:
                if fake.delay:
                    time.sleep(fake.delay)
                if self.path.endswith("/embeddings"):
                    return self._embeddings(body)
                too_long = fake._context_error(body)
                if too_long is not None:
                    return self._send(400, too_long.encode())
                reply = fake._next(body)
                if isinstance(reply, Fault):
                    return self._send(reply.status, reply.body.encode(), reply.headers)
                if isinstance(reply, Cut):
                    return self._stream(body, reply.text, cut=True)
                delay = fake.chunk_delay
                if isinstance(reply, Slow):
                    reply, delay = reply.text, reply.delay
                reply, finish = _budgeted(body, reply)
                if body.get("stream"):
                    return self._stream(body, reply, finish=finish, delay=delay)
                return self._json(_completion(body, reply, finish))

            def _send(
                self, status: int, data: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _json(self, payload: dict[str, Any]) -> None:
                self._send(200, json.dumps(payload).encode())

            def _stream(
                self,
                body: dict[str, Any],
                text: str,
                cut: bool = False,
                finish: str = "stop",
                delay: float | None = None,
            ) -> None:
                delay = fake.chunk_delay if delay is None else delay
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                step = fake.chunk_size
                for start in range(0, len(text), step):
                    event = _chunk(body, {"content": text[start : start + step]})
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if delay:
                        time.sleep(delay)
                if cut:
                    self.close_connection = True
                    self.connection.shutdown(2)  # mid-answer, as a crashed server would
                    return
                final = _chunk(body, {}, finish=finish)
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _embeddings(self, body: dict[str, Any]) -> None:
                with fake._lock:
                    fault = fake.embedding_faults.popleft() if fake.embedding_faults else None
                if fault is not None:
                    return self._send(fault.status, fault.body.encode(), fault.headers)
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [
                    {"object": "embedding", "index": i, "embedding": _toy_vector(text)}
                    for i, text in enumerate(inputs)
                ]
                self._json(
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model"),
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    }
                )

        return Handler


def _budgeted(body: dict[str, Any], text: str) -> tuple[str, str]:
    """The reply cut at the request's `max_tokens`, and why it ended (as a real server)."""
    limit = body.get("max_tokens")
    if limit is not None and len(text) > int(limit) * CHARS_PER_TOKEN:
        return text[: int(limit) * CHARS_PER_TOKEN], "length"
    return text, "stop"


def _completion(body: dict[str, Any], text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(
    body: dict[str, Any], delta: dict[str, str], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _toy_vector(text: str, dim: int = 16) -> list[float]:
    vector = [0.0] * dim
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % dim] += 1.0
    return vector
