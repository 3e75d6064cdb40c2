"""Work done beside a Gradio event: an answer, a summary, an upload, streamed as it goes."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rag.errors import RagError

log = logging.getLogger(__name__)
# Yielded when the work has emitted nothing for IDLE_S (with `idle`): a search emits nothing
# for seconds on a busy machine, and a Stop is seen only between two items.
IDLE = object()
IDLE_S = 0.2


class Stopped(Exception):
    """The reader stopped the answer (Stop, Clear, or a closed page)."""


class Stop(threading.Event):
    """One running answer's stop: `reason` is "stop" (the Stop button) or "clear"."""

    reason = ""


class Answering:
    """The answers one browser tab has running (a `gr.State` per tab), so that Stop and Clear
    end those, and only those.

    Gradio's own `cancels` ends an event by cancelling every running event of its handler in
    the session when its cancel request arrives, and on a busy server that can be after the
    reader's next question has begun: that question was then ended with no answer and no
    error ("Searching…" for ever). Here Stop only sets the stops of the answers running when
    it is pressed; each answer ends at its next item and its event completes as any other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Stop] = set()

    def __deepcopy__(self, memo: dict[int, Any]) -> Answering:
        return self  # Gradio copies a tab's state when it creates it: one registry a tab

    @contextmanager
    def running(self) -> Iterator[Stop]:
        stop = Stop()
        with self._lock:
            self._running.add(stop)
        try:
            yield stop
        finally:
            with self._lock:
                self._running.discard(stop)

    def stop(self, reason: str = "stop") -> None:
        with self._lock:
            for stop in self._running:
                stop.reason = reason
                stop.set()


def in_background(work: Any, idle: bool = False, stop: Stop | None = None) -> Iterator[Any]:
    """Run `work(emit)` in a thread; yield what it emits, then its result or its `RagError`
    (and `IDLE` after each IDLE_S of silence when `idle`). Once `stop` is set, or this
    generator is closed (Gradio does when the page goes), it yields nothing more and the next
    `emit` raises, which ends the LLM stream and closes its connection."""
    items: queue.Queue[Any] = queue.Queue()
    done = object()
    stop = stop if stop is not None else Stop()

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
        while not stop.is_set():
            try:
                item = items.get(timeout=IDLE_S if idle else None)
            except queue.Empty:
                yield IDLE
                continue
            if item is done or stop.is_set():
                break
            yield item
    finally:
        stop.set()
