"""Chroma clients: embedded stores and servers opened with this tool's settings, one client per
embedded store in a process, reopened when another process has changed the store. The only
module that imports chromadb.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IndexMismatchError, RagError

if TYPE_CHECKING:
    from rag.settings import Settings

log = logging.getLogger(__name__)


class SharedClients:
    """One Chroma client per embedded store in this process, reopened when another process
    has changed the store.

    Chroma keeps a store's segments in memory and does not see what another process writes:
    after an ingest in another shell, a running server's reads failed ("Error finding id") or
    missed the new papers. A search that finds the store's stamp moved by a write that was not
    this process's reopens the client (about 80 ms), once for every store of the process;
    searches already reading finish first (`reading`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._clients: dict[Path, tuple[Any, int]] = {}  # path -> (client, epoch)
        self._epochs: dict[Path, int] = {}
        self._seen: dict[Path, tuple[int, int]] = {}  # the last stamp read through the client
        self._local: dict[Path, int] = {}  # the last generation this process wrote
        self._readers: dict[Path, int] = {}
        self._closing: set[Path] = set()

    def get(self, settings: Settings, path: Path) -> tuple[Any, int]:
        with self._cond:
            self._cond.wait_for(lambda: path not in self._closing)
            if path not in self._clients:
                epoch = self._epochs.get(path, -1) + 1
                self._clients[path] = (connect(settings, path), epoch)
                self._epochs[path] = epoch
            return self._clients[path]

    def has_read(self, path: Path) -> bool:
        with self._cond:
            return path in self._seen

    def wrote(self, path: Path, generation: int) -> None:
        with self._cond:
            self._local[path] = generation

    def outdated(self, path: Path, stamp: tuple[int, int], epoch: int) -> bool:
        """Whether `stamp`, read through the client of `epoch`, shows a change made by another
        process since that client last read the store."""
        with self._cond:
            if self._epochs.get(path) != epoch:
                return False  # reopened meanwhile by another search
            seen = self._seen.setdefault(path, stamp)
            if stamp == seen:
                return False
            self._seen[path] = stamp
            return stamp[0] != self._local.get(path)

    def reset(self) -> None:
        """Close every client: the next reads open the stores afresh (for a process that reads
        stores other processes have written outside a search, such as tests)."""
        with self._cond:
            paths = list(self._clients)
        for path in paths:
            self.reopen(path, self._clients[path][1])

    def reopen(self, path: Path, epoch: int) -> None:
        """Close the client of `path` (when it is still the one of `epoch`) once no search is
        reading through it; the next `get` opens a fresh one."""
        with self._cond:
            if path not in self._clients or self._clients[path][1] != epoch:
                return
            self._closing.add(path)
            self._cond.wait_for(lambda: not self._readers.get(path))
            client, _ = self._clients.pop(path)
            self._seen.pop(path, None)
        try:
            client.close()
        except Exception as exc:  # a client that cannot close cleanly is dropped all the same
            log.info("closing the Chroma client of %s: %s", path, exc)
        finally:
            with self._cond:
                self._closing.discard(path)
                self._cond.notify_all()

    @contextlib.contextmanager
    def reading(self, path: Path) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: path not in self._closing)
            self._readers[path] = self._readers.get(path, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[path] -= 1
                self._cond.notify_all()


CLIENTS = SharedClients()


def connect(settings: Settings, path: Path) -> Any:
    """A Chroma client: of the server `settings` names, else of the embedded store at `path`."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if settings.chroma_host:
        return _http_client(settings, chromadb, ChromaSettings)
    database = path / "chroma.sqlite3"
    if _foreign_database(database):
        # Chroma would add its tables to any SQLite file it is pointed at: refuse instead.
        raise IndexMismatchError(
            f"{database} is not a Chroma index (it holds another program's tables); "
            "point RAG_INDEX_DIR at a new directory and run `rag ingest` to build an index"
        )
    try:
        return chromadb.PersistentClient(
            path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
        )
    except Exception as exc:  # chromadb raises bare exceptions for a damaged store
        raise RagError(
            f"cannot open the index at {path} ({exc.__class__.__name__}: {exc}); "
            "move it aside and run `rag ingest` to rebuild it"
        ) from None


def _http_client(settings: Settings, chromadb: Any, chroma_settings: Any) -> Any:
    """A client of a Chroma server (`chroma run`, or a team's deployment): the same API as the
    embedded store, so every method of `Store` serves both."""
    options: dict[str, Any] = {"anonymized_telemetry": False}
    token = settings.chroma_auth_token
    if token is not None:
        options["chroma_client_auth_provider"] = "chromadb.auth.token_authn.TokenAuthClientProvider"
        options["chroma_client_auth_credentials"] = token.get_secret_value()
    try:
        return chromadb.HttpClient(
            host=settings.chroma_host,
            port=settings.chroma_port,
            ssl=settings.chroma_ssl,
            settings=chroma_settings(**options),
        )
    except Exception as exc:  # ValueError when down; auth and HTTP errors vary by version
        raise RagError(
            f"cannot reach the Chroma server at {settings.chroma_url()} ({_one_line(exc)}); "
            f"start it (`chroma run --path DIR --port {settings.chroma_port}`) or unset "
            f"RAG_CHROMA_HOST to use {settings.index_dir / 'chroma'}"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _foreign_database(path: Path) -> bool:
    """True when `path` is an SQLite database that has tables but not Chroma's (read-only)."""
    import sqlite3

    if not path.is_file():
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return False  # not a database at all: Chroma's own error says so
    return bool(tables) and not {"collections", "migrations"} <= tables
