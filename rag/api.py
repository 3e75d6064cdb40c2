"""The entry layer: what the CLI, the UI and scripts call. Each function takes `settings`
explicitly, and collaborators (retriever, LLM, embedder) that callers may swap."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.corpus import Fields, FilePosition, Paper, Problem, detect_format, expand_paths, iter_file
from rag.errors import InputError

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.conversation import Turn
    from rag.embed import Embedder
    from rag.index import Checkpoints, Filter, IngestReport
    from rag.llm import LLM
    from rag.retrieve import PaperHit, Retriever
    from rag.settings import Settings
    from rag.summarize import Summary

log = logging.getLogger(__name__)


class _Reader:
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
            key = self.checkpoints.key(path, json.dumps([fmt, list(vars(self.fields).values()),
                                                         repr(self.keep)]))  # fmt: skip
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
                yield item
        if key:
            self.finished.append(key)

    def batch_written(self) -> None:
        """Everything read so far is in the index: move the checkpoints up."""
        for key in self.finished:
            self.checkpoints.done(key)
            self.reading.pop(key, None)
        self.finished.clear()
        for key, position in self.reading.items():
            self.checkpoints.save(key, position)


def ingest(
    paths: Iterable[Path] | None,
    settings: Settings,
    fields: Fields | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
    fmt: str | None = None,
    keep: Filter | None = None,
) -> IngestReport:
    """Add the papers of `paths` (default: the bundled corpus) to the index, incrementally.

    `fmt` reads every file in that format (default: detected per file); `keep` leaves out the
    papers it does not admit. An interrupted ingest of a JSON Lines file resumes where its
    last written batch ended.
    """
    from rag.embed import get_embedder
    from rag.index import Checkpoints, IngestReport, ingest_papers

    report = IngestReport()
    try:
        files = expand_paths(list(paths) if paths else [settings.corpus_dir])
    except InputError as exc:
        report.errors.append(str(exc))
        files = []
    embedder = embedder or get_embedder(settings)
    reader = _Reader(files, fields or Fields(), fmt, keep, Checkpoints(settings), report)
    done = ingest_papers(
        reader.papers(), settings, embedder, progress=progress, on_batch=reader.batch_written
    )
    done.errors, done.papers_filtered = report.errors, report.papers_filtered
    done.resumed = report.resumed
    return done


def ensure_index(settings: Settings, embedder: Embedder, progress: bool = False) -> None:
    """Build the index from the bundled corpus on first use."""
    from rag.index import Store

    if not Store(settings, embedder.name).exists():
        log.warning("no index yet: building it from the bundled corpus (%s)", settings.corpus_dir)
        ingest(None, settings, embedder=embedder, progress=progress)
        release = getattr(embedder, "release_document_encoder", None)
        if release is not None:  # a server goes on with the query encoder only
            release()


def search(
    query: str,
    settings: Settings,
    k: int | None = None,
    retriever: Retriever | None = None,
    filters: Filter | None = None,
) -> list[PaperHit]:
    """The best papers for `query`, best first (only papers that `filters` admits)."""
    from rag.answer import clean_question

    query = clean_question(query)
    retriever, _, _ = _collaborators(settings, True, None, retriever, None, filters)
    return retriever.search(query, k or settings.top_k)


def ask(
    question: str,
    settings: Settings,
    k: int | None = None,
    no_llm: bool = False,
    llm: LLM | None = None,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    on_token: Callable[[str], None] | None = None,
    filters: Filter | None = None,
) -> Answer:
    """A cited answer to `question`: from the LLM when one is configured, else extractive.
    Only papers that `filters` admits are retrieved, and so cited."""
    answer, _ = chat(question, [], settings, k, no_llm, llm, retriever, embedder, on_token, filters)
    return answer


def chat(
    message: str,
    history: Sequence[Turn],
    settings: Settings,
    k: int | None = None,
    no_llm: bool = False,
    llm: LLM | None = None,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    on_token: Callable[[str], None] | None = None,
    filters: Filter | None = None,
) -> tuple[Answer, Turn]:
    """One chat turn: `message` read in the light of `history` (oldest first), answered with
    citations; returns the answer and the turn to append to the history."""
    from rag.answer import answer_question, clean_question
    from rag.conversation import Turn, condense, pinned_papers

    question = clean_question(message)
    k = k or settings.top_k
    retriever, embedder, llm = _collaborators(settings, no_llm, llm, retriever, embedder, filters)
    standalone = condense(question, history, llm)
    papers = retriever.search(standalone, k)
    pins = [] if llm is not None else pinned_papers(question, history)
    if pins:
        kept = retriever.papers_by_id(pins)[:k]
        papers = kept + [p for p in papers if p.paper_id not in pins][: k - len(kept)]
    retriever.attach_texts(papers)
    answer = answer_question(standalone, papers, settings, embedder, llm, on_token)
    answer.question = question
    turn = Turn(question, answer.answer, standalone, [s.paper_id for s in answer.citations])
    return answer, turn


def summarize(
    topic: str,
    settings: Settings,
    max_papers: int = 8,
    no_llm: bool = False,
    llm: LLM | None = None,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    filters: Filter | None = None,
) -> Summary:
    """A cited overview of what the collection (the part `filters` admits) says about `topic`."""
    from rag.answer import clean_question
    from rag.summarize import summarize_topic

    topic = clean_question(topic)
    retriever, embedder, llm = _collaborators(settings, no_llm, llm, retriever, embedder, filters)
    return summarize_topic(topic, settings, retriever, embedder, llm, max_papers, on_progress)


def summarize_paper(
    query: str,
    settings: Settings,
    no_llm: bool = False,
    llm: LLM | None = None,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    filters: Filter | None = None,
) -> Summary:
    """A cited summary of one paper, named by id or (close) title, among those `filters`
    admits."""
    from rag.answer import clean_question
    from rag.summarize import summarize_paper as summarize_one

    query = clean_question(query)
    retriever, _, llm = _collaborators(settings, no_llm, llm, retriever, embedder, filters)
    return summarize_one(query, settings, retriever, llm)


def _collaborators(
    settings: Settings,
    no_llm: bool,
    llm: LLM | None,
    retriever: Retriever | None,
    embedder: Embedder | None,
    filters: Filter | None = None,
) -> tuple[Retriever, Embedder, LLM | None]:
    """The retriever (restricted to `filters`), embedder and LLM a call uses: the given ones,
    else the configured ones."""
    from rag.embed import get_embedder
    from rag.retrieve import get_retriever

    embedder = embedder or get_embedder(settings)
    if retriever is None:
        ensure_index(settings, embedder)
        retriever = get_retriever(settings, embedder)
    if filters:
        retriever = retriever.restricted(filters)
    return retriever, embedder, configured_llm(settings, no_llm, llm)


def configured_llm(settings: Settings, no_llm: bool = False, llm: LLM | None = None) -> LLM | None:
    """The LLM a call uses: none with `no_llm`, else the given one, else the configured one."""
    if no_llm:
        return None
    if llm is None and settings.llm_configured:
        from rag.llm import LLM

        llm = LLM(settings)
    return llm


def evaluate(
    questions_file: Path,
    settings: Settings,
    out: Path,
    modes: Sequence[str] = (),
    k: int = 10,
    no_llm: bool = False,
    llm: LLM | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the assistant on a question file; writes results, metrics and a report to `out`."""
    from rag.evaluate import load_questions, run_questions, write_question_run

    questions = load_questions(questions_file)
    modes = list(dict.fromkeys(modes)) or [settings.retriever]
    runs = run_questions(questions, settings, modes, k, no_llm, llm, progress=progress)
    return write_question_run(out, runs, k, settings, questions_file, no_llm)


def evaluate_beir(
    data_dir: Path,
    settings: Settings,
    out: Path,
    index_dir: Path | None = None,
    mode: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score retrieval on a BEIR data set, ingested into its own (reused) index."""
    from rag.evaluate import load_beir, run_beir, write_beir_run

    data = load_beir(data_dir)
    index_dir = index_dir or settings.index_dir.parent / f"beir-{data.name}"
    beir_settings = settings.model_copy(update={"index_dir": index_dir})
    rows, metrics = run_beir(data, beir_settings, mode or settings.retriever, progress=progress)
    metrics["index_dir"] = str(index_dir)
    write_beir_run(out, rows, metrics)
    return metrics
