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


Reply = str | Fault | Cut | Callable[[dict[str, Any]], str]


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

    def _next(self, body: dict[str, Any]) -> str | Fault | Cut:
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
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._handle(body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _handle(self, body: dict[str, Any]) -> None:
                if fake.delay:
                    time.sleep(fake.delay)
                if self.path.endswith("/embeddings"):
                    return self._embeddings(body)
                reply = fake._next(body)
                if isinstance(reply, Fault):
                    return self._send(reply.status, reply.body.encode(), reply.headers)
                if isinstance(reply, Cut):
                    return self._stream(body, reply.text, cut=True)
                if body.get("stream"):
                    return self._stream(body, reply)
                return self._json(_completion(body, reply))

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

            def _stream(self, body: dict[str, Any], text: str, cut: bool = False) -> None:
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
                    if fake.chunk_delay:
                        time.sleep(fake.chunk_delay)
                if cut:
                    self.close_connection = True
                    self.connection.shutdown(2)  # mid-answer, as a crashed server would
                    return
                final = _chunk(body, {}, finish="stop")
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


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
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
