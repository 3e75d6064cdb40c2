"""One writer per collection across machines that share a Chroma server.

The local ingest lock is a file: it keeps two ingests on one machine apart, not two machines
writing to one server. Chroma has no locks, so the lease is a record in the server's
`rag-locks` collection: added when absent and read back (the add that landed first owns it),
renewed while the ingest runs, removed when it ends; a record not renewed for `LEASE_S` belongs
to a writer that died and is taken over. Every time is the server's own clock (its heartbeat),
so machines whose clocks disagree still agree on which lease is stale.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rag.chroma import guarded_write
from rag.errors import RagError

if TYPE_CHECKING:
    from rag.collection import Collection

LOCKS = "rag-locks"
LEASE_S = 120.0  # a lease not renewed for this long is a dead writer's
RENEW_S = LEASE_S / 4


class Lease:
    """The lease on `collection`'s name in its server (see the module)."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.location = collection.location  # for `guarded` messages
        self.key = f"ingest:{collection.settings.collection}"
        self.owner = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self.lost = ""  # who holds the lease now, once a renewal found it taken over

    def _locks(self) -> Any:
        return self.collection.client.get_or_create_collection(LOCKS, embedding_function=None)

    def now(self) -> float:
        """The server's clock, in seconds."""
        return self.collection.client.heartbeat() / 1e9

    def _holder(self, locks: Any) -> dict[str, Any] | None:
        found = locks.get(ids=[self.key], include=["metadatas"])
        return found["metadatas"][0] if found["ids"] else None

    @guarded_write
    def acquire(self) -> None:
        locks = self._locks()
        holder = self._holder(locks)
        if holder is not None and self.now() - float(holder["renewed"]) > LEASE_S:
            # Its writer died. Only that very lease is removed (one renewed meanwhile stays).
            seen = {"$and": [{"owner": holder["owner"]}, {"renewed": holder["renewed"]}]}
            locks.delete(ids=[self.key], where=seen)
            holder = self._holder(locks)
        if holder is None:
            # Chroma ignores an add whose id exists: reading back says whose add landed.
            locks.add(
                ids=[self.key],
                embeddings=[[1.0, 0.0]],
                metadatas=[{"owner": self.owner, "renewed": self.now()}],
            )
            holder = self._holder(locks)
        if holder is None or holder["owner"] != self.owner:
            who = holder["owner"] if holder else "another writer"
            raise RagError(
                f"index is busy: another ingest ({who}) is writing to the collection "
                f"{self.collection.settings.collection!r} on {self.collection.location}; try "
                "again when it ends"
            )

    @guarded_write
    def renew(self) -> None:
        locks = self._locks()
        holder = self._holder(locks)
        if holder is not None and holder["owner"] == self.owner:
            renewed = {"owner": self.owner, "renewed": self.now()}
            locks.update(ids=[self.key], metadatas=[renewed])
        else:  # not renewed in time (a paused machine), and taken over by another writer
            self.lost = holder["owner"] if holder else "another writer"

    def check(self) -> None:
        """Stop the ingest once its lease is another writer's: two writers would interleave."""
        if self.lost:
            raise RagError(
                f"ingest stopped: it did not renew its lease on the collection "
                f"{self.collection.settings.collection!r} within {LEASE_S:.0f} s and another "
                f"ingest ({self.lost}) took it over; what was written is kept: run the ingest "
                "again once that one ends"
            )

    @guarded_write
    def release(self) -> None:
        self._locks().delete(ids=[self.key], where={"owner": self.owner})


def writing_elsewhere(collection: Collection) -> bool:
    """Whether an ingest on any machine holds a live lease on `collection` (for readers: the
    store they see is half-written). Always False for an embedded store (its file lock says)."""
    if collection.embedded:
        return False
    try:
        locks = collection.client.get_collection(LOCKS, embedding_function=None)
        lease = Lease(collection)
        holder = lease._holder(locks)
        return holder is not None and lease.now() - float(holder["renewed"]) <= LEASE_S
    except Exception:  # no lease was ever taken, or the server is down: nothing known
        return False


@contextlib.contextmanager
def writer_lease(collection: Collection) -> Iterator[Lease | None]:
    """Hold the lease while the block runs, which is given it (None for an embedded store:
    its file lock is enough)."""
    if collection.embedded:
        yield None
        return
    lease = Lease(collection)
    lease.acquire()
    stop = threading.Event()

    def renewing() -> None:
        while not stop.wait(RENEW_S):
            with contextlib.suppress(RagError):
                lease.renew()

    thread = threading.Thread(target=renewing, daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(RagError):
            lease.release()
