"""Work done beside a Gradio event: an answer, a summary, an upload, streamed as it goes."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from rag.errors import RagError

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The reader stopped the answer (Stop, Clear, or a closed page)."""


def in_background(work: Any) -> Iterator[Any]:
    """Run `work(emit)` in a thread; yield what it emits, then its result or its `RagError`.
    Closing this generator (Gradio does when the event is cancelled) makes the next `emit`
    raise, which ends the LLM stream and closes its connection."""
    items: queue.Queue[Any] = queue.Queue()
    done = object()
    stop = threading.Event()

    def emit(item: Any) -> None:
        if stop.is_set():
            raise Stopped
        items.put(item)

    def run() -> None:
        try:
            items.put(work(emit))
        except Stopped:
            pass
        except RagError as exc:
            items.put(exc)
        except Exception as exc:  # a bug must end in a message, never a chat stuck waiting
            log.exception("answering failed")
            items.put(RagError(f"something went wrong ({exc.__class__.__name__}); see the log"))
        finally:
            items.put(done)

    threading.Thread(target=run, daemon=True).start()
    try:
        while (item := items.get()) is not done:
            yield item
    finally:
        stop.set()
