"""The entry layer: what the CLI, the UI and scripts call.

It resolves what every stage below takes as arguments (the settings, the embedder, the
retriever, the LLM) and is the one place that decides to ingest: `ingest` and `ensure_index`
(a first run builds the bundled corpus). Queries never build an index: on a missing one they
stop with a message saying to run `rag ingest`.

`Assistant` holds what queries share; the module functions (`search`, `ask`, `chat`,
`summarize`, `summarize_paper`) build one per call from `settings` and the optional
collaborators of `Using`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from rag import limits
from rag.errors import InputError

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.conversation import Turn
    from rag.corpus import Fields
    from rag.embed import Embedder
    from rag.filters import CollectionFacts, Filter
    from rag.ingest import IngestReport
    from rag.llm import LLM
    from rag.retrieve import PaperHit, Retriever
    from rag.settings import Settings
    from rag.store import Store
    from rag.summarize import Summary

log = logging.getLogger(__name__)


class Using(TypedDict, total=False):
    """Collaborators a caller may pass instead of the configured ones."""

    no_llm: bool
    """Answer extractively even when an LLM is configured."""
    llm: LLM | None
    retriever: Retriever | None
    """Used for the configured retriever mode (`settings.retriever`)."""
    embedder: Embedder | None


class Assistant:
    """What every query shares: the settings, the embedder, one retriever per mode (built on
    first use) and the LLM (None: extractive answers). The UI keeps one for the life of the
    server; `adjusted()` gives a request its own settings with the rest shared."""

    def __init__(self, settings: Settings, **using: Unpack[Using]) -> None:
        from rag.embed import get_embedder

        self.settings = settings
        self.embedder = using.get("embedder") or get_embedder(settings)
        self.no_llm = using.get("no_llm", False)
        self._llm = configured_llm(settings, False, using.get("llm"))
        given = using.get("retriever")
        self._retrievers: dict[str, Retriever] = {settings.retriever: given} if given else {}
        self._lock = threading.Lock()
        self._admitting: set[tuple[Any, Filter]] = set()  # (store state, filters) known to admit

    @property
    def llm(self) -> LLM | None:
        """The LLM answers are written by; None: extractive answers."""
        return None if self.no_llm else self._llm

    def adjusted(
        self,
        *,
        no_llm: bool | None = None,
        top_k: int | None = None,
        retriever: str | None = None,
        llm_model: str | None = None,
    ) -> Assistant:
        """This assistant for one request: another number of sources, retriever mode, chat
        model or answer mode (None keeps it); the embedder and retrievers are shared."""
        clone = copy.copy(self)
        update = {"top_k": top_k, "retriever": retriever, "llm_model": llm_model}
        clone.settings = self.settings.model_copy(
            update={k: v for k, v in update.items() if v is not None}
        )
        if no_llm is not None:
            clone.no_llm = no_llm
        if llm_model is not None and llm_model != self.settings.llm_model:
            from rag.llm import LLM

            clone._llm = LLM(clone.settings) if self._llm is not None else None
        return clone

    def retriever(self, filters: Filter | None = None, mode: str | None = None) -> Retriever:
        """The retriever of `mode` (default: the configured one), restricted to `filters`."""
        from rag.retrieve import get_retriever

        mode = mode or self.settings.retriever
        with self._lock:
            if mode not in self._retrievers:
                self._retrievers[mode] = get_retriever(self.settings, self.embedder, mode)
            retriever = self._retrievers[mode]
        if not filters:
            return retriever
        store = getattr(retriever, "store", None)
        if store is not None:
            check_admits(store, filters, self._admitting)
        return retriever.restricted(filters)

    def search(
        self, query: str, k: int | None = None, *, filters: Filter | None = None
    ) -> list[PaperHit]:
        """The best papers for `query`, best first (only papers that `filters` admits)."""
        from rag.answer import clean_question

        return self.retriever(filters).search(clean_question(query), k or self.settings.top_k)

    def ask(
        self,
        question: str,
        k: int | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
        filters: Filter | None = None,
    ) -> Answer:
        """A cited answer to `question`: from the LLM when there is one, else extractive. Only
        papers that `filters` admits are retrieved, and so cited."""
        answer, _ = self.chat(question, [], k, on_token=on_token, filters=filters)
        return answer

    def chat(
        self,
        message: str,
        history: Sequence[Turn],
        k: int | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
        filters: Filter | None = None,
    ) -> tuple[Answer, Turn]:
        """One chat turn: `message` read in the light of `history` (oldest first), answered
        with citations; returns the answer and the turn to append to the history."""
        from rag.answer import answer_question, clean_question
        from rag.conversation import Turn, condense, pinned_papers

        question = clean_question(message)
        k = k or self.settings.top_k
        retriever = self.retriever(filters)
        standalone = condense(question, history, self.llm)
        papers = retriever.search(standalone, k)
        pins = [] if self.llm is not None else pinned_papers(question, history)
        if pins:  # the follow-up is about the papers just cited
            papers = retriever.papers_by_id(pins)[:k] or papers
        retriever.attach_texts(papers)
        # Without an LLM, the kept papers are quoted for the follow-up's own words ("its
        # limitations"), not for the previous question again.
        answer = answer_question(
            standalone,
            papers,
            self.settings,
            self.embedder,
            self.llm,
            on_token,
            focus=question if pins else None,
        )
        answer.question = question
        turn = Turn(question, answer.answer, standalone, [s.paper_id for s in answer.citations])
        return answer, turn

    def follow_ups(
        self, answer: Answer, on_token: Callable[[str], None] | None = None
    ) -> list[str]:
        """Up to three questions to ask next about the papers `answer` cites: the LLM's when
        there is one (templates when it fails or says nothing usable), else templates.
        `on_token` sees the reply stream (an exception raised there stops it)."""
        from rag.conversation import suggest_follow_ups, template_follow_ups
        from rag.errors import LLMError

        try:
            return suggest_follow_ups(answer, self.llm, on_token)
        except LLMError as exc:
            log.info("follow-up suggestions from templates: %s", exc)
            return template_follow_ups(answer)

    def summarize(
        self,
        topic: str,
        max_papers: int = limits.SUMMARY_PAPERS,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        filters: Filter | None = None,
    ) -> Summary:
        """A cited overview of what the collection (the part `filters` admits) says about
        `topic`; `on_progress(done, total)` as the per-paper LLM calls finish."""
        from rag.answer import clean_question
        from rag.summarize import summarize_topic

        return summarize_topic(
            clean_question(topic),
            self.settings,
            self.retriever(filters),
            self.embedder,
            self.llm,
            max_papers,
            on_progress,
        )

    def summarize_paper(self, query: str, *, filters: Filter | None = None) -> Summary:
        """A cited summary of one paper, named by id or (close) title, among those `filters`
        admits."""
        from rag.answer import clean_question
        from rag.summarize import summarize_paper

        return summarize_paper(
            clean_question(query), self.settings, self.retriever(filters), self.embedder, self.llm
        )

    def paper_count(self) -> int:
        """Papers in the collection."""
        from rag.store import Store

        return Store(self.settings, self.embedder.name).paper_count()

    def chunk_count(self) -> int:
        """Chunks in the collection (0: empty; cheap at any size)."""
        from rag.store import Store

        store = Store(self.settings, self.embedder.name)
        return store.stamp()[1] if store.exists() else 0

    def collection_facts(self) -> CollectionFacts:
        """What filters can use: the source files (readable names), categories, how many
        papers have a full date: as the last ingest saved them (an index from an older version:
        scanned, or empty above `ui_scan_max_chunks`)."""
        from rag.filters import CollectionFacts
        from rag.store import Store

        store = Store(self.settings, self.embedder.name)
        saved = store.facts() if store.exists() else None
        if saved is not None:  # kept by every ingest: no scan, at any size
            try:
                return CollectionFacts.from_json(saved)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.info("the saved filter facts are damaged; scanning the store instead")
        return CollectionFacts.of(c.metadata for c in self._scan())

    def paper_titles(self) -> list[str]:
        """Paper titles for a picker, at most `ui_max_titles` (none for a collection above four
        times that many chunks: type a title instead)."""
        limit = self.settings.ui_max_titles
        chunks = self._scan(4 * limit)
        return sorted({c.metadata["title"] for c in chunks})[:limit]

    def _scan(self, max_chunks: int | None = None) -> list[Any]:
        from rag.store import Store

        store = Store(self.settings, self.embedder.name)
        limit = self.settings.ui_scan_max_chunks
        if max_chunks is not None:
            limit = min(limit, max_chunks)
        if limit <= 0 or not store.exists() or store.stamp()[1] > limit:
            return []
        return store.all_chunks()


def check_admits(store: Store, filters: Filter, known: set[tuple[Any, Filter]]) -> None:
    """An `InputError` saying why, when `filters` leave no paper of the collection (a date
    filter over listing pages, whose dates have no year, leaves out every one); `known`: the
    (store state, filters) already found to admit some."""
    from rag.filters import Filter, nothing_admitted

    if not store.exists() or store.stamp()[1] == 0:
        return
    key = (store.stamp(), filters)
    if key in known:
        return
    if not store.admits_any(filters):
        dated = len(store.admitted_papers(Filter(since="0001-01-01")))
        raise InputError(nothing_admitted(filters, store.paper_count(), dated))
    if len(known) > 64:
        known.clear()
    known.add(key)


def configured_llm(settings: Settings, no_llm: bool = False, llm: LLM | None = None) -> LLM | None:
    """The LLM a call uses: none with `no_llm`, else the given one, else the configured one."""
    if no_llm:
        return None
    if llm is None and settings.llm_configured:
        from rag.llm import LLM

        llm = LLM(settings)
    return llm


def search(
    query: str,
    settings: Settings,
    k: int | None = None,
    *,
    filters: Filter | None = None,
    **using: Unpack[Using],
) -> list[PaperHit]:
    """`Assistant.search` with the configured (or given) collaborators."""
    return Assistant(settings, **using).search(query, k, filters=filters)


def ask(
    question: str,
    settings: Settings,
    k: int | None = None,
    *,
    on_token: Callable[[str], None] | None = None,
    filters: Filter | None = None,
    **using: Unpack[Using],
) -> Answer:
    """`Assistant.ask` with the configured (or given) collaborators."""
    return Assistant(settings, **using).ask(question, k, on_token=on_token, filters=filters)


def chat(
    message: str,
    history: Sequence[Turn],
    settings: Settings,
    k: int | None = None,
    *,
    on_token: Callable[[str], None] | None = None,
    filters: Filter | None = None,
    **using: Unpack[Using],
) -> tuple[Answer, Turn]:
    """`Assistant.chat` with the configured (or given) collaborators."""
    assistant = Assistant(settings, **using)
    return assistant.chat(message, history, k, on_token=on_token, filters=filters)


def summarize(
    topic: str,
    settings: Settings,
    max_papers: int = limits.SUMMARY_PAPERS,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    filters: Filter | None = None,
    **using: Unpack[Using],
) -> Summary:
    """`Assistant.summarize` with the configured (or given) collaborators."""
    assistant = Assistant(settings, **using)
    return assistant.summarize(topic, max_papers, on_progress=on_progress, filters=filters)


def summarize_paper(
    query: str, settings: Settings, *, filters: Filter | None = None, **using: Unpack[Using]
) -> Summary:
    """`Assistant.summarize_paper` with the configured (or given) collaborators."""
    return Assistant(settings, **using).summarize_paper(query, filters=filters)


# --- ingest: the only entry that writes ------------------------------------------------------


def ingest(
    paths: Iterable[Path] | None,
    settings: Settings,
    fields: Fields | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
    fmt: str | None = None,
    keep: Filter | None = None,
    on_progress: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Add the papers of `paths` (default: the bundled corpus) to the index, incrementally.

    `fmt` reads every file in that format (default: detected per file); `keep` leaves out the
    papers it does not admit. An interrupted ingest of a JSON Lines file resumes where its
    last written batch ended. `on_progress(report)` after each written batch.
    """
    from rag.embed import get_embedder
    from rag.ingest import ingest_files

    files = list(paths) if paths else [settings.corpus_dir]
    embedder = embedder or get_embedder(settings)
    return ingest_files(files, settings, embedder, fields, fmt, keep, progress, on_progress)


def ensure_index(
    settings: Settings, embedder: Embedder | None = None, progress: bool = False
) -> bool:
    """Build the index from the bundled corpus when there is none (a first run); whether it
    was built. The document encoder is freed afterwards: a server goes on with queries only."""
    from rag.embed import get_embedder
    from rag.store import Store

    embedder = embedder or get_embedder(settings)
    if Store(settings, embedder.name).exists():
        return False
    log.warning("no index yet: building it from the bundled corpus (%s)", settings.corpus_dir)
    ingest(None, settings, embedder=embedder, progress=progress)
    embedder.release_document_encoder()
    return True


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """What `rag eval` wrote: the metrics (metrics.json) and the report's summary (what the
    command prints)."""

    metrics: dict[str, Any]
    summary: str
    interrupted: bool = False
    """The user stopped the run (Ctrl-C); what was answered is written all the same."""

    @property
    def stopped(self) -> str | None:
        """Why the run stopped before its last question (None: it ran them all)."""
        return self.metrics.get("stopped")


def evaluate(
    questions_file: Path,
    settings: Settings,
    out: Path,
    modes: Sequence[str] = (),
    k: int = limits.EVAL_K,
    no_llm: bool = False,
    llm: LLM | None = None,
    progress: bool = False,
    build_index: bool = False,
) -> EvalRun:
    """Score the assistant on a question file; writes results, metrics and a report to `out`,
    partial ones too when the run stops early (`EvalRun.stopped`). `build_index`: a first run,
    which may build the bundled corpus once the file is read."""
    from rag.eval.questions import load_questions, question_metrics, run_questions
    from rag.eval.report import write_question_run

    questions = load_questions(questions_file)
    assistant = Assistant(settings, no_llm=no_llm, llm=llm)
    if build_index:
        ensure_index(settings, assistant.embedder, progress=progress)
    retrievers = {mode: assistant.retriever(mode=mode) for mode in modes or [settings.retriever]}
    run = run_questions(
        questions, retrievers, settings, assistant.embedder, assistant.llm, k, progress
    )
    metrics = question_metrics(run, k, settings, questions_file, len(questions), no_llm)
    return EvalRun(metrics, write_question_run(out, run.results, metrics), run.interrupted)


def evaluate_beir(
    data_dir: Path,
    settings: Settings,
    out: Path,
    index_dir: Path | None = None,
    mode: str | None = None,
    progress: bool = False,
) -> EvalRun:
    """Score retrieval on a BEIR data set, ingested (incrementally) into its own index."""
    from rag.eval.beir import Ingested, load_beir, run_beir
    from rag.eval.report import write_beir_run

    data = load_beir(data_dir)
    index_dir = index_dir or settings.index_dir.parent / f"beir-{data.name}"
    assistant = Assistant(settings.model_copy(update={"index_dir": index_dir}), no_llm=True)
    start = time.perf_counter()
    report = ingest(
        [data.corpus], assistant.settings, embedder=assistant.embedder, progress=progress
    )
    if report.papers_read == 0:
        raise InputError(
            f"{data.corpus}: no documents could be read ({'; '.join(report.errors[:1])})"
        )
    ingested = Ingested(
        report.papers_total,
        settings.embed_model,
        time.perf_counter() - start,
        report.chunks_embedded,
    )
    mode = mode or settings.retriever
    rows, metrics = run_beir(data, assistant.retriever(mode=mode), mode, ingested, progress)
    metrics["index_dir"] = str(index_dir)
    return EvalRun(metrics, write_beir_run(out, rows, metrics))
