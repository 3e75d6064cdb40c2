"""The `rag` command: a thin shell over `rag.api`. Heavy imports live inside the commands."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from rag import limits

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.api import Assistant
    from rag.filters import Filter
    from rag.settings import Settings

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str, code: int) -> NoReturn:
    from rag.terminal import printable

    click.echo(f"rag: error: {printable(' '.join(message.split()))}", err=True)
    sys.exit(code)


class RagGroup(click.Group):
    """Turns the project's errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        from rag.errors import RagError

        try:
            return super().invoke(ctx)
        except RagError as exc:
            fail(str(exc), exc.exit_code)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            fail(f"invalid settings ({problems})", 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)


def load_settings(**overrides: Any) -> Settings:
    from rag.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def ready(settings: Settings, text: str, no_llm: bool = False) -> Assistant:
    """The assistant over the index; a first run builds the index from the bundled corpus,
    once `text` (the question, query or topic) is known not to be empty."""
    from rag import api
    from rag.answer import clean_question

    clean_question(text)
    assistant = api.Assistant(settings, no_llm=no_llm)
    api.ensure_index(settings, assistant.embedder, progress=sys.stderr.isatty())
    return assistant


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _iso_date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from rag.errors import InputError
    from rag.filters import Filter

    try:
        return Filter.from_text(since=value).since
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def _names(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Repeated options, each of which may also hold several names ("cs.LG cs.CL")."""
    return tuple(dict.fromkeys(n for v in values for n in v.replace(",", " ").split()))


def count_option(maximum: int, *names: str, default: int | None = None, help: str) -> Any:
    """A whole-number option from 1 to `maximum` (`-k/--k` unless `names` are given)."""
    return click.option(
        *(names or ("-k", "--k", "k")),
        type=click.IntRange(1, maximum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def filter_options(ingest: bool = False) -> Any:
    """--since and --category (and --source, at query time), handed to the command as one
    `filters` argument (a `rag.filters.Filter`)."""
    doing = "Keep" if ingest else "Search"
    options = [
        click.option(
            "--since",
            callback=_iso_date,
            metavar="YYYY-MM-DD",
            help=f"{doing} only papers dated on or after this day (arXiv update_date; papers "
            "without a dated version are left out).",
        ),
        click.option(
            "--category",
            "categories",
            multiple=True,
            callback=_names,
            help=f"{doing} only papers in this arXiv category, e.g. cs.LG (repeat for any of "
            "several).",
        ),
    ]
    if not ingest:
        options.append(
            click.option(
                "--source",
                "sources",
                multiple=True,
                callback=_names,
                help="Search only papers read from this file, e.g. papers.jsonl (repeat for "
                "any of several).",
            ),
        )

    def decorate(command: Any) -> Any:
        @functools.wraps(command)  # with the options already attached to `command`
        def wrapper(
            *args: Any,
            since: str | None,
            categories: tuple[str, ...],
            sources: tuple[str, ...] = (),
            **kwargs: Any,
        ) -> Any:
            from rag.filters import Filter

            return command(*args, filters=Filter(since, categories, sources), **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@click.group(cls=RagGroup, context_settings=CONTEXT)
@click.version_option(package_name="rag", prog_name="rag")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
def main(verbose: bool) -> None:
    """A literature assistant: cited answers over research-paper abstracts.

    \b
    Example:
      rag ask "Which papers study the Lion optimizer?"
    """
    # Our own messages at WARNING (INFO with -v); third-party libraries only when they fail.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="rag: %(message)s")
    logging.getLogger("rag").setLevel(logging.INFO if verbose else logging.WARNING)


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--title-field", help="JSONL/CSV field holding the title (default: title).")
@click.option(
    "--text-field", help="JSONL/CSV field holding the abstract (default: abstract or text)."
)
@click.option(
    "--id-field",
    help="JSONL/CSV field holding a paper id (default: _id or id, else derived from the title).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "listing", "jsonl", "csv", "arxiv"]),
    default="auto",
    show_default=True,
    help="How to read the files (auto: by suffix; JSON Lines with arXiv's fields is arxiv).",
)
@filter_options(ingest=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def ingest(
    paths: tuple[Path, ...],
    title_field: str | None,
    text_field: str | None,
    id_field: str | None,
    fmt: str,
    filters: Filter,
    as_json: bool,
) -> None:
    """Add papers to the index (default: the bundled corpus). Unchanged papers are skipped.

    \b
    Reads Daily Papers listing pages (.txt), JSON Lines (.jsonl), CSV (.csv) and the arXiv
    metadata snapshot (streamed: any size). An interrupted ingest of a JSON Lines file
    continues where it stopped when run again.
    Examples:
      rag ingest my_papers.jsonl --title-field title --text-field text
      rag ingest arxiv-metadata-oai-snapshot.json --category cs.LG --since 2024-01-01
    """
    from dataclasses import asdict

    from rag import api
    from rag.corpus import Fields
    from rag.terminal import say

    settings = load_settings()
    fields = Fields(title_field, text_field, id_field)
    report = api.ingest(
        list(paths),
        settings,
        fields,
        progress=sys.stderr.isatty(),
        fmt=None if fmt == "auto" else fmt,
        keep=filters or None,
    )
    nothing_read = report.papers_read == 0 and bool(report.errors)
    if as_json:
        emit_json(asdict(report))
    elif not nothing_read:
        for problem in [*report.errors, *report.warnings]:
            say(f"rag: warning: {problem}", err=True)
        for resumed in report.resumed:
            click.echo(f"rag: resumed {resumed} (where the last ingest stopped)", err=True)
        if report.papers_filtered:
            click.echo(f"{report.papers_filtered} papers left out ({filters.describe()})")
        click.echo(
            f"{report.papers_read} papers read: {report.papers_added} added, "
            f"{report.papers_updated} updated, {report.papers_unchanged} unchanged; "
            f"{report.chunks_embedded} chunks embedded, {report.chunks_deleted} removed; "
            f"{report.papers_total} papers in the index"
        )
    if nothing_read:
        more = f" (and {len(report.errors) - 1} more problems)" if len(report.errors) > 1 else ""
        fail(f"nothing could be read: {report.errors[0]}{more}", 2)


@main.command(context_settings=CONTEXT)
@click.argument("query")
@count_option(limits.MAX_RESULTS, help=f"Number of papers (default {limits.TOP_K}, or RAG_TOP_K).")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def search(query: str, k: int | None, filters: Filter, as_json: bool) -> None:
    """Find the papers that best match QUERY.

    \b
    Example:
      rag search "multiplication-free attention" --k 3 --json
    """
    from rag.terminal import say

    assistant = ready(load_settings(), query)
    papers = assistant.search(query, k, filters=filters)
    if as_json:
        results = [{"rank": i, **p.to_json()} for i, p in enumerate(papers, start=1)]
        emit_json({"query": query, "results": results})
        return
    if not papers:
        empty = assistant.chunk_count() == 0
        say("The index is empty: add papers with `rag ingest`." if empty else "No paper matches.")
    for i, paper in enumerate(papers, start=1):
        say(f"{i:>2}. {paper.title}  ({paper.score:.3f})")
        say(f"    {paper.url}")
        say(f"    {paper.snippet[:200]}...")


@main.command(context_settings=CONTEXT)
@click.argument("question")
@count_option(
    limits.MAX_SOURCES, help=f"Papers given as sources (default {limits.TOP_K}, or RAG_TOP_K)."
)
@click.option("--no-llm", is_flag=True, help="Answer extractively, without the LLM.")
@click.option("--model", help="Chat model name (overrides RAG_LLM_MODEL).")
@filter_options()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "md", "bib"]),
    help="text (default), json (as --json), md (Markdown) or bib (BibTeX of the cited papers).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ask(
    question: str,
    k: int | None,
    no_llm: bool,
    model: str | None,
    filters: Filter,
    fmt: str | None,
    as_json: bool,
) -> None:
    """Answer QUESTION from the collection, citing the papers used.

    \b
    Example:
      rag ask "How does L-Mul replace floating point multiplication?" --format md
    """
    from rag.terminal import printable

    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} conflict: give one of them")
    fmt = "json" if as_json else fmt or "text"
    assistant = ready(load_settings(llm_model=model), question, no_llm)
    streamed: list[str] = []

    def show(token: str) -> None:
        streamed.append(token)
        click.echo(printable(token), nl=False)

    live = fmt == "text" and sys.stdout.isatty()
    answer = assistant.ask(question, k, on_token=show if live else None, filters=filters)
    print_answer_as(answer, fmt, streamed=bool(streamed))
    if answer.interrupted:
        fail(answer.interrupted, 1)  # what was shown is incomplete: say so, and exit non-zero


def print_answer_as(answer: Answer, fmt: str, streamed: bool) -> None:
    """`answer` as text (after the `streamed` part), JSON, Markdown or its papers' BibTeX."""
    from rag.export import answer_markdown, cited_bibtex
    from rag.terminal import print_answer, say

    if fmt == "text":
        print_answer(answer, streamed)
    elif fmt == "json":
        emit_json(answer.to_json())
    elif fmt == "md":
        say(answer_markdown(answer), nl=False)
    elif entries := cited_bibtex([answer]):
        say(entries, nl=False)
    else:
        say("rag: the answer cites no papers: no BibTeX to print", err=True)


MODES = ("dense", "bm25", "hybrid")


@main.command("eval", context_settings=CONTEXT)
@click.option(
    "--questions", type=click.Path(path_type=Path), help="JSONL questions with gold titles."
)
@click.option("--beir", type=click.Path(path_type=Path), help="A BEIR data set directory instead.")
@click.option(
    "--index-dir",
    type=click.Path(path_type=Path),
    help="Index for the BEIR corpus (default: beir-NAME beside RAG_INDEX_DIR); reused.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("eval-results"),
    show_default=True,
    help="Directory for results.jsonl, metrics.json, report.md and the plot.",
)
@count_option(
    limits.MAX_RESULTS, default=limits.EVAL_K, help="Papers retrieved and scored per question."
)
@click.option("--no-llm", is_flag=True, help="Answer extractively, without the LLM.")
@click.option(
    "--retriever",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    help="Retriever mode; repeat to compare several (default: RAG_RETRIEVER).",
)
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json.")
def evaluate(
    questions: Path | None,
    beir: Path | None,
    index_dir: Path | None,
    out: Path,
    k: int,
    no_llm: bool,
    modes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Score answers on a question file, or retrieval on a BEIR data set.

    \b
    Examples:
      rag eval --questions dev_questions.jsonl --no-llm --retriever dense --retriever hybrid
      rag eval --beir data/scifact --out scifact-results
    """
    from rag import api

    if (questions is None) == (beir is None):
        raise click.UsageError("give exactly one of --questions FILE and --beir DIR")
    if beir is not None and len(modes) > 1:
        raise click.UsageError("--beir scores one retriever mode at a time")
    settings = load_settings()
    progress = sys.stderr.isatty()
    if beir is not None:
        run = api.evaluate_beir(
            beir, settings, out, index_dir, modes[0] if modes else None, progress=progress
        )
    else:
        run = api.evaluate(
            questions, settings, out, modes, k, no_llm, progress=progress, build_index=True
        )
    if as_json:
        emit_json(run.metrics)
    else:
        click.echo(run.summary)
        click.echo(f"\nWrote {out}/: results.jsonl, metrics.json, report.md")
    if run.stopped:
        fail(f"eval {run.stopped}; partial results in {out}/", 130 if run.interrupted else 1)


@main.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--mcp", is_flag=True, help="Also serve search, ask, summarize as MCP tools.")
def serve(host: str, port: int, mcp: bool) -> None:
    """Start the chat UI (builds the index first if there is none).

    \b
    Example:
      rag serve --port 7861        # then open http://127.0.0.1:7861
    Set RAG_UI_AUTH=user:password to require a login.
    """
    from rag import api
    from rag.errors import RagError

    settings = load_settings()
    assistant = api.Assistant(settings)
    api.ensure_index(settings, assistant.embedder, progress=True)
    try:
        from ui.app import launch
    except ImportError as exc:
        raise RagError(
            f"the UI needs gradio ({exc.name} missing): pip install -e '.[ui]'"
        ) from None
    click.echo(f"rag: serving on http://{host}:{port} (Ctrl+C stops)", err=True)
    launch(settings, host, port, assistant=assistant, mcp=mcp)


@main.command(context_settings=CONTEXT)
@click.argument("topic", required=False)
@click.option("--paper", help="Summarise one paper instead, by title (a close one will do) or id.")
@count_option(
    limits.MAX_SUMMARY_PAPERS,
    "--max-papers",
    default=limits.SUMMARY_PAPERS,
    help="Most papers an overview covers (weak matches are dropped).",
)
@click.option("--no-llm", is_flag=True, help="Extractive summary, without the LLM.")
@click.option("--model", help="Chat model name (overrides RAG_LLM_MODEL).")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def summarize(
    topic: str | None,
    paper: str | None,
    max_papers: int,
    no_llm: bool,
    model: str | None,
    filters: Filter,
    as_json: bool,
) -> None:
    """Summarise what the collection says about TOPIC, citing every finding.

    \b
    Examples:
      rag summarize "mixture of experts" --max-papers 6
      rag summarize --paper "Pointer Networks"
    """
    if (topic is None) == (paper is None):
        raise click.UsageError("give a TOPIC or --paper TITLE (one of them)")
    assistant = ready(load_settings(llm_model=model), paper or topic or "", no_llm)
    if paper is not None:
        summary = assistant.summarize_paper(paper, filters=filters)
    else:
        bar = None
        if sys.stderr.isatty() and assistant.llm is not None:
            from tqdm import tqdm

            bar = tqdm(total=max_papers, desc="summarising papers", unit="paper", leave=False)

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        summary = assistant.summarize(
            topic or "", max_papers, on_progress=progress, filters=filters
        )
        if bar is not None:
            bar.close()
    if as_json:
        emit_json(summary.to_json())
        return
    from rag.terminal import print_summary

    print_summary(summary)
