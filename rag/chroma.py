"""Chroma clients: embedded stores and servers opened with this tool's settings, one client per
embedded store in a process, reopened when another process has changed the store. The only
module that imports chromadb.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rag.errors import IndexMismatchError, RagError

if TYPE_CHECKING:
    from rag.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self._mine = threading.local()  # the stores this thread is reading (`reading` depth)

    def _reading_here(self, path: Path) -> bool:
        return getattr(self._mine, "depth", {}).get(path, 0) > 0

    def get(self, settings: Settings, path: Path) -> tuple[Any, int]:
        with self._cond:
            # A search already reading keeps its client: the reopen waits for it to finish,
            # so waiting here for the reopen would wait for ourselves.
            self._cond.wait_for(lambda: path not in self._closing or self._reading_here(path))
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
        reading through it; the next `get` opens a fresh one. A search that is itself reading
        keeps its client (it would wait for itself): a later search reopens."""
        with self._cond:
            if self._reading_here(path):
                return
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
        depth = self._mine.__dict__.setdefault("depth", {})
        with self._cond:
            self._cond.wait_for(lambda: path not in self._closing or self._reading_here(path))
            self._readers[path] = self._readers.get(path, 0) + 1
            depth[path] = depth.get(path, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[path] -= 1
                depth[path] -= 1
                self._cond.notify_all()


CLIENTS = SharedClients()


def connect(settings: Settings, path: Path) -> Any:
    """A Chroma client: of the server `settings` names, else of the embedded store at `path`
    (a private copy of it when the store cannot be written: Chroma writes even to read)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if settings.chroma_host:
        return _http_client(settings, chromadb, ChromaSettings)
    check_files(path)
    if path.is_dir() and not _writable(path):
        path = _read_only_copy(path)
    try:
        with _panic_output_held():
            return chromadb.PersistentClient(
                path=str(path), settings=ChromaSettings(anonymized_telemetry=False)
            )
    except BaseException as exc:  # chromadb raises bare exceptions (and Rust panics)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise failure(exc, path, "opening the index at") from None


@contextlib.contextmanager
def _panic_output_held() -> Iterator[None]:
    """Hold what is written to the process's stderr while Chroma opens a store: a damaged
    store makes its Rust core panic, which prints a backtrace before Python sees the error
    (reported in one line instead). Written through when the store opens."""
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        opened = False
        try:
            yield
            opened = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if opened:
                held.seek(0)
                os.write(2, held.read())


def check_files(path: Path) -> None:
    """Refuse a store directory whose database is missing, empty, not SQLite or another
    program's: Chroma would start a new store over it (losing what was there) or add its
    tables to a stranger's file."""
    database = path / "chroma.sqlite3"
    if not database.exists():
        if path.is_dir() and any(path.iterdir()):
            raise RagError(
                f"the index at {path} is damaged: chroma.sqlite3 is missing beside its other "
                "files; restore it, or move the directory aside and run `rag ingest` to build "
                "a new index"
            )
        return
    with open(database, "rb") as head:
        header = head.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        what = "empty" if not header else "not an SQLite database"
        raise RagError(
            f"cannot open the index at {path}: chroma.sqlite3 is {what} (truncated or "
            "overwritten); restore it, or move the directory aside and run `rag ingest` to "
            "build a new index"
        )
    if _foreign_database(database):
        # Chroma would add its tables to any SQLite file it is pointed at: refuse instead.
        raise IndexMismatchError(
            f"{database} is not a Chroma index (it holds another program's tables); "
            "point RAG_INDEX_DIR at a new directory and run `rag ingest` to build an index"
        )


SQLITE_HEADER = b"SQLite format 3\x00"
# How SQLite, Chroma's core and the OS say that a write did not fit.
DISK_FULL = ("disk is full", "file too large", "disk i/o error", "no space left")


SERVER = "the Chroma server at "
UNREACHABLE = ("connection refused", "could not connect", "server disconnected", "timed out")


def server_down(exc: BaseException) -> bool:
    """Whether `exc` says the Chroma server could not be reached (refused, reset, timed out)."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    if kinds & {"TransportError", "ConnectionError", "TimeoutError", "TimeoutException"}:
        return True
    return any(sign in _one_line(exc).lower() for sign in UNREACHABLE)


def failure(exc: BaseException, where: Path | str, doing: str = "reading the index at") -> RagError:
    """One line for what went wrong with a store: a server that does not answer, a full disk,
    a read-only index, or damage."""
    if str(where).startswith(SERVER) and server_down(exc):
        return RagError(
            f"{where} is not answering (stopped, restarting or unreachable); nothing in the "
            "index was changed: try again once it is back"
        )
    text = _one_line(exc)
    errno = getattr(exc, "errno", None)
    lowered = text.lower()
    if errno in (28, 27, 5) or any(sign in lowered for sign in DISK_FULL):
        return RagError(
            f"the disk is full (or failing): could not write to the index at {where}; what it "
            "held before is kept, and the next ingest completes it once there is room"
        )
    if "database is locked" in lowered:
        return RagError(
            f"the index at {where} is busy: another process held it locked for over a minute "
            "(a long ingest write); nothing was changed, try again"
        )
    if errno == 30 or "readonly database" in lowered or "read-only file system" in lowered:
        return RagError(
            f"the index at {where} is read-only: cannot write to it (searching it works; "
            "ingest into a writable copy)"
        )
    return RagError(
        f"{doing} {where} failed: {text}; if it is damaged, restore a backup or move it aside "
        "and run `rag ingest` to build a new index"
    )


def guarded(method: Callable[..., T], doing: str = "reading the index at") -> Callable[..., T]:
    """A store method whose failures (Chroma's errors, a Rust panic in its core, SQLite and
    disk errors) become one `RagError` line naming the store (`self.location`)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except RagError:
            raise
        except BaseException as exc:  # pyo3's PanicException is a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            log.info("store failure in %s", method.__name__, exc_info=True)
            raise failure(exc, self.location, doing) from None

    return call


def guarded_write(method: Callable[..., T]) -> Callable[..., T]:
    """`guarded`, for a method that writes."""
    return guarded(method, "writing to the index at")


def _writable(path: Path) -> bool:
    database = path / "chroma.sqlite3"
    return os.access(path, os.W_OK) and (not database.exists() or os.access(database, os.W_OK))


def _read_only_copy(path: Path) -> Path:
    """A private copy of a store that cannot be written (a shared, mounted or backed-up one),
    removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="rag-read-only-")) / "chroma"
    # Not the chunk texts beside the collection: they are read from where they are.
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("rag-texts-*"))
    atexit.register(shutil.rmtree, copy.parent, ignore_errors=True)
    log.info("%s is read-only: searching a private copy at %s", path, copy)
    return copy


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
