"""Files -> papers -> chunks -> vectors -> the store: the ingest run.

Incremental and idempotent: each chunk carries its paper's content hash, so an unchanged paper
is skipped without loading the model, a changed one is re-embedded and its stale chunks deleted,
and a paper whose chunks were left half-written by an interrupted run is simply redone. A large
JSON Lines file is checkpointed after every written batch, so an interrupted ingest resumes
where it stopped. One writer per index at a time (`ingest_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.chroma import failure
from rag.chunking import MAX_TITLE_TOKENS, Chunk, Chunker
from rag.collection import Collection, chunk_id
from rag.corpus import (
    Fields,
    Listing,
    Paper,
    Problem,
    detect_format,
    iter_file,
    normalise_title,
)
from rag.errors import InputError, RagError
from rag.facts import RunFacts, SeenPapers, update_facts
from rag.lease import writer_lease
from rag.lexical import LOCK_NAME, LexicalIndex, SegmentWriter
from rag.metadata import PAPER_KEYS_OPTIONAL, listings_from_metadata, paper_metadata
from rag.reading import FilePosition, expand_paths
from rag.store import Store

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.filters import Filter
    from rag.settings import Settings

log = logging.getLogger(__name__)

PAPER_BATCH = 256  # papers compared with the index per round trip
# Far beyond any real abstract (the bundled corpus: at most 2,700 characters): such a record
# is cut and reported, instead of becoming thousands of chunks and a prompt of megabytes.
MAX_ABSTRACT_CHARS = 100_000
LONG_TITLE_CHARS = 500
WRITE_BATCH = 2048  # chunks per Chroma write (below its max batch size)


def content_hash(paper: Paper, settings: Settings) -> str:
    """What decides a paper's chunks: its text and the chunking settings."""
    key = json.dumps([paper.title, paper.abstract, settings.chunk_tokens, settings.chunk_overlap])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


@dataclass
class IngestReport:
    """What an ingest did; `errors` are one-line messages about records that were skipped."""

    papers_read: int = 0
    papers_added: int = 0
    papers_updated: int = 0
    papers_unchanged: int = 0
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    papers_total: int = 0
    papers_filtered: int = 0
    """Records left out by the ingest's filters (--category, --since)."""
    resumed: list[str] = field(default_factory=list)
    """Files taken up where an interrupted ingest stopped ('FILE: line N')."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Records taken, but not as they were: cut, or replacing another with the same id."""

    bm25: str = ""
    """What the ingest did to the BM25 index ("a segment of 1000 papers added", "built whole")."""

    def tally(self, written: dict[str, str], new: list[bool], changed: SeenPapers) -> None:
        """Count one batch's statuses (`new`: whether this run reads each paper for the first
        time; `changed`: the papers this run has changed so far). A paper read again counts
        once: by its first status, or by a later change when it was first unchanged."""
        before = changed.has([pid for pid, first in zip(written, new, strict=True) if not first])
        again = iter(before)
        for state, first in zip(written.values(), new, strict=True):
            if first:
                self.papers_read += 1
            elif next(again) or state == "unchanged":
                continue
            else:
                self.papers_unchanged -= 1  # first read unchanged, now changed
            if state == "added":
                self.papers_added += 1
            elif state == "updated":
                self.papers_updated += 1
            else:
                self.papers_unchanged += 1
        changed.add([pid for pid, state in written.items() if state != "unchanged"])


class Checkpoints:
    """Where the reading of each streamed file got to, saved after every written batch, so an
    interrupted ingest of a large file continues there instead of at its first line.

    A checkpoint is keyed by the file (path, size, modification time), how it is read (format,
    filters) and the collection: any change starts the file afresh. It is removed once the
    file has been read to the end. Papers before it are in the index; papers after it may be
    too (a batch cut short), which the content hashes sort out.
    """

    def __init__(self, settings: Settings) -> None:
        self.dir = settings.index_dir / "ingest-progress"
        self.collection = settings.collection

    def key(self, path: Path, how: str) -> str:
        info = path.stat()
        raw = json.dumps(
            [str(path.resolve()), info.st_size, info.st_mtime_ns, how, self.collection]
        )
        return hashlib.sha1(raw.encode()).hexdigest()[:20]

    def load(self, key: str) -> FilePosition | None:
        try:
            saved = json.loads((self.dir / f"{key}.json").read_text(encoding="utf-8"))
            return FilePosition(int(saved["offset"]), int(saved["line"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, key: str, position: FilePosition) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"offset": position.offset, "line": position.line}))
        tmp.replace(self.dir / f"{key}.json")

    def done(self, key: str) -> None:
        (self.dir / f"{key}.json").unlink(missing_ok=True)


class Reader:
    """The papers of a list of files, read one after the other; bad files and records go to
    the report's errors, records the filter leaves out are counted, and each JSON Lines file
    resumes from its checkpoint and is checkpointed as batches are written."""

    def __init__(
        self,
        files: Sequence[Path],
        fields: Fields,
        fmt: str | None,
        keep: Filter | None,
        checkpoints: Checkpoints,
        report: IngestReport,
    ) -> None:
        self.files, self.fields, self.fmt, self.keep = files, fields, fmt, keep
        self.checkpoints, self.report = checkpoints, report
        self.reading: dict[str, FilePosition] = {}  # checkpoint key -> place in the file
        self.finished: list[str] = []
        self.titles: dict[str, int] = {}  # paper id -> hash of its title, as read this run

    def papers(self) -> Iterator[Paper]:
        for path in self.files:
            try:
                yield from self._file(path)
            except InputError as exc:
                self.report.errors.append(str(exc))

    def _file(self, path: Path) -> Iterator[Paper]:
        fmt = self.fmt or detect_format(path)
        key, position = "", None
        if fmt in ("jsonl", "arxiv") and path.is_file():
            how = json.dumps([fmt, list(vars(self.fields).values()), repr(self.keep)])
            key = self.checkpoints.key(path, how)
            position = self.checkpoints.load(key) or FilePosition()
            if position.line:
                self.report.resumed.append(f"{path}: from line {position.line + 1}")
            self.reading[key] = position
        for item in iter_file(path, self.fields, fmt, position):
            if isinstance(item, Problem):
                self.report.errors.append(str(item))
            elif self.keep and not self.keep.admits(item):
                self.report.papers_filtered += 1
            else:
                yield self._checked(path, item)
        if key:
            self.finished.append(key)

    def _checked(self, path: Path, paper: Paper) -> Paper:
        """`paper`, cut where it is far beyond any real one; a warning for what was changed,
        and for an id seen before in this run with another title."""
        warn = self.report.warnings.append
        name = f"{path}: paper {paper.paper_id!r}"
        if len(paper.abstract) > MAX_ABSTRACT_CHARS:
            warn(
                f"{name}: an abstract of {len(paper.abstract):,} characters is far beyond any "
                f"real one; cut to {MAX_ABSTRACT_CHARS:,}"
            )
            paper = replace(paper, abstract=paper.abstract[:MAX_ABSTRACT_CHARS])
        if len(paper.title) > LONG_TITLE_CHARS:
            warn(
                f"{name}: a title of {len(paper.title):,} characters; only its first "
                f"{MAX_TITLE_TOKENS} word pieces are embedded with each chunk"
            )
        title = hash(normalise_title(paper.title))
        if self.titles.setdefault(paper.paper_id, title) != title:
            warn(
                f"{name} appears again with another title ({paper.title[:80]!r}); the later "
                "record replaces the earlier"
            )
            self.titles[paper.paper_id] = title
        return paper

    def batch_written(self) -> None:
        """Everything read so far is in the index: move the checkpoints up."""
        for key in self.finished:
            self.checkpoints.done(key)
            self.reading.pop(key, None)
        self.finished.clear()
        for key, position in self.reading.items():
            self.checkpoints.save(key, position)


@contextlib.contextmanager
def ingest_lock(index_dir: Path) -> Iterator[None]:
    """One writer per index: a second ingest stops with 'index is busy' instead of interleaving."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        handle = open(index_dir / LOCK_NAME, "w")
    except OSError as exc:
        raise failure(exc, index_dir) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagError(
                f"index is busy: another ingest is writing to {index_dir}; try again when it ends"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest_files(
    paths: Iterable[Path],
    settings: Settings,
    embedder: Embedder,
    fields: Fields | None = None,
    fmt: str | None = None,
    keep: Filter | None = None,
    progress: bool = False,
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Add the papers of `paths` (files or directories) to the index, incrementally.

    `fmt` reads every file in that format (default: detected per file); `keep` leaves out the
    papers it does not admit. An interrupted ingest of a JSON Lines file resumes where its
    last written batch ended. `on_progress(report)` after each written batch (the counts so
    far).
    """
    report = IngestReport()
    files = expand_paths(list(paths), report.errors)  # an empty directory is one error
    reader = Reader(files, fields or Fields(), fmt, keep, Checkpoints(settings), report)
    return ingest_papers(
        reader.papers(),
        settings,
        embedder,
        progress=progress,
        on_batch=reader.batch_written,
        report=report,
        on_progress=on_progress,
    )


def ingest_papers(
    papers: Iterable[Paper],
    settings: Settings,
    embedder: Embedder,
    store: Collection | None = None,
    progress: bool = False,
    on_batch: Callable[[], None] | None = None,
    report: IngestReport | None = None,
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Add or update `papers` in the index; unchanged papers cost no embedding at all.
    `on_batch()` is called after each batch is written (checkpoints are saved there); the
    counts go into `report` (a new one when not given), which is returned."""
    from tqdm import tqdm

    store = store or Collection(settings, embedder.name)
    report = report or IngestReport()
    budget = min(embedder.max_tokens, settings.chunk_tokens)
    chunker = Chunker(embedder.count_tokens, budget, settings.chunk_overlap)
    with ingest_lock(settings.index_dir), writer_lease(store) as lease:
        before = None
        if store.exists():
            store.open()  # the recorded model is checked before anything is read
            before = Store(settings, embedder.name).stamp()
        seen, run = SeenPapers(), RunFacts()
        changed = SeenPapers()  # papers this run added or updated
        lexical = SegmentWriter(LexicalIndex(Store(settings, embedder.name)))
        try:
            with tqdm(desc="embedding", unit="chunk", disable=not progress, leave=False) as bar:
                for batch in _batched(papers, PAPER_BATCH):
                    if lease is not None:
                        lease.check()
                    store.create()  # on the first batch: reading nothing creates no index
                    step = _Batch(store, chunker, embedder, settings, report, bar)
                    written = step.write(batch)
                    first = seen.add(list(written))
                    report.tally(written, first, changed)
                    run.add(batch, written, step.gained)
                    firsts = dict(zip(written, first, strict=True))
                    for pid, (title, texts, vectors) in step.texts().items():
                        lexical.add(pid, title, texts, firsts[pid], vectors)
                    if on_batch is not None:
                        on_batch()
                    if on_progress is not None:
                        on_progress(report)
        except BaseException:
            lexical.discard()
            raise
        saved = store.facts() if store.exists() and before else None
        if saved and before and saved.get("generation") == before[0]:
            report.papers_total = int(saved["papers"]) + report.papers_added  # no recount
        elif before is None:
            report.papers_total = report.papers_added  # into an empty index: all are new
        else:
            report.papers_total = store.paper_count() if store.exists() else 0
        reader = Store(settings, embedder.name)  # counts the chunks once, for both
        if store.written:
            store.bump_generation(writing=False)  # what was derived meanwhile is stale too
            report.bm25 = lexical.finish(before, reader.stamp())
        if store.exists() and (store.written or store.facts() is None):
            update_facts(store, run, report.papers_total, before, reader.stamp())
    return report


def _batched(items: Iterable[Paper], size: int) -> Iterator[dict[str, Paper]]:
    batch: dict[str, Paper] = {}
    for paper in items:
        known = batch.get(paper.paper_id)
        batch[paper.paper_id] = known.merged_with(paper) if known else paper
        if len(batch) >= size:
            yield batch
            batch = {}
    if batch:
        yield batch


@dataclass
class _Batch:
    """One batch of papers compared with what the store holds of them, then written."""

    store: Collection
    chunker: Chunker
    embedder: Embedder
    settings: Settings
    report: IngestReport
    bar: Any
    to_embed: list[Chunk] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    relisted: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Chunk id -> its new metadata, for papers whose text is unchanged."""
    gained: dict[str, int] = field(default_factory=dict)
    """Source -> papers written that list it for the first time."""
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    """Chunk id -> the vector written, for the BM25 segments (which keep them too)."""

    def write(self, batch: dict[str, Paper]) -> dict[str, str]:
        """Each paper's status (added, updated or unchanged), once the batch is written."""
        states = self.store.chunk_states(list(batch))
        status = {pid: self._plan(paper, states.get(pid, [])) for pid, paper in batch.items()}
        if self.relisted:
            self.store.update_metadata(list(self.relisted), list(self.relisted.values()))
        # Similar lengths side by side: the encoder pads each batch to its longest text.
        self.to_embed.sort(key=lambda c: len(c.embed_text))
        for start in range(0, len(self.to_embed), WRITE_BATCH):
            part = self.to_embed[start : start + WRITE_BATCH]
            vectors = self._embed([c.embed_text for c in part])
            self.vectors.update(zip([c.chunk_id for c in part], vectors, strict=True))
            # New chunks are written before stale ones go: a crash in between leaves a paper
            # whose chunks disagree on their hash, which the next ingest redoes.
            self.store.write(
                [c.chunk_id for c in part],
                vectors,
                [c.text for c in part],
                [c.metadata() for c in part],
            )
            self.report.chunks_embedded += len(part)
        if self.stale:
            self.store.delete(self.stale)
            self.report.chunks_deleted += len(self.stale)
        return status

    def texts(self) -> dict[str, tuple[str, list[str], np.ndarray]]:
        """The papers written with new text: (title, abstract chunks in order, their vectors),
        for the BM25 segments."""
        parts: dict[str, list[Chunk]] = {}
        for chunk in self.to_embed:
            parts.setdefault(chunk.paper.paper_id, []).append(chunk)
        out = {}
        for pid, group in parts.items():
            group = sorted(group, key=lambda c: c.index)
            vectors = np.stack([self.vectors[c.chunk_id] for c in group])
            out[pid] = (group[0].paper.title, [c.text for c in group], vectors)
        return out

    def _plan(self, paper: Paper, old: list[dict[str, Any]]) -> str:
        """What to do with one paper, given its stored chunks; its status."""
        if old and old[0].get("date", "") > (paper.date or "\uffff"):
            return "unchanged"  # an older version of a paper already indexed
        known_listings = listings_from_metadata(old[0]) if old else ()
        merged = Paper(paper.paper_id, paper.title, paper.abstract, known_listings).merged_with(
            paper
        )
        wanted = content_hash(paper, self.settings)
        if _is_complete(old, wanted):
            fresh = paper_metadata(merged)
            if all(old[0].get(k) == v for k, v in fresh.items()) and not any(
                k in old[0] and k not in fresh for k in PAPER_KEYS_OPTIONAL
            ):
                return "unchanged"
            # Seen on a new page, or recategorised: recorded, but the text (and so the vector)
            # is unchanged.
            dropped = {k: None for k in PAPER_KEYS_OPTIONAL if k not in fresh}  # None deletes
            for chunk in old:
                meta = {k: v for k, v in chunk.items() if k != "id"}
                self.relisted[chunk["id"]] = {**meta, **dropped, **fresh}
            self._gained(merged, known_listings)
            return "updated"
        texts = self.chunker.split(merged)
        title = self.chunker.title(merged)
        chunks = [
            Chunk(chunk_id(paper.paper_id, i), merged, i, len(texts), t, wanted, title)
            for i, t in enumerate(texts)
        ]
        self.to_embed.extend(chunks)
        new_ids = {c.chunk_id for c in chunks}
        self.stale.extend(c["id"] for c in old if c["id"] not in new_ids)
        self._gained(merged, known_listings)
        return "updated" if old else "added"

    def _gained(self, merged: Paper, known: Sequence[Listing]) -> None:
        """Count the sources a written paper lists now and did not before (listings only
        accumulate): each source's paper count, kept without asking the store."""
        for source in {x.source for x in merged.listings} - {x.source for x in known}:
            self.gained[source] = self.gained.get(source, 0) + 1

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Document vectors, a step at a time so the progress bar moves (a remote encoder: one
        request a step)."""
        step = self.embedder.batch
        parts = []
        for start in range(0, len(texts), step):
            parts.append(self.embedder.embed_documents(texts[start : start + step]))
            self.bar.update(len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _is_complete(chunks: list[dict[str, Any]], wanted_hash: str) -> bool:
    """All chunks of the paper carry the wanted hash and form one complete run 0..n-1."""
    if not chunks or any(c["content_hash"] != wanted_hash for c in chunks):
        return False
    count = chunks[0]["n_chunks"]
    return sorted(c["chunk"] for c in chunks) == list(range(count))
