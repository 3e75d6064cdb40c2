"""The app's side panels: the filters (with what each can do in this collection, and bad
values reported next to them) and adding papers by upload."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from rag.api import Assistant, ingest
from rag.errors import RagError
from rag.filters import CollectionFacts, Filter
from ui.background import in_background
from ui.render import as_text

UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".txt", ".html", ".htm", ".md"]
SHOWN_ERRORS = 20


@dataclass
class Filters:
    """The filter controls: their values go to every search; `error` shows a bad value."""

    accordion: gr.Accordion
    since: gr.Textbox
    categories: gr.Textbox
    sources: gr.Dropdown
    notes: gr.Markdown
    error: gr.Markdown

    @property
    def inputs(self) -> list[Any]:
        return [self.since, self.categories, self.sources]


def filter_notes(facts: CollectionFacts) -> str:
    """What the filters cannot do in this collection, and why."""
    notes = []
    if facts.papers and not facts.dated:
        notes.append(
            "No date filter: none of these papers has a full date (listing pages give dates "
            "without a year)."
        )
    if facts.papers and not facts.categories:
        notes.append(
            "No category filter: none of these papers has arXiv categories (only arXiv "
            "records and files with a categories field give them)."
        )
    return "\n".join(f"- _{note}_" for note in notes)


def since_info(facts: CollectionFacts) -> str:
    info = "Papers dated on or after this day."
    if facts.dated < facts.papers:
        info += f" {facts.papers - facts.dated} of {facts.papers} papers have no full date:"
        info += " a date leaves them out."
    return info


def category_info(facts: CollectionFacts) -> str:
    common = sorted(facts.categories)[:4]
    return "Any of these (any case), separated by spaces" + (
        f"; in this collection: {', '.join(common)}" if common else ""
    )


def filter_updates(facts: CollectionFacts) -> tuple[Any, ...]:
    """Updates of (since, categories, sources, notes) after the collection changed."""
    return (
        gr.Textbox(visible=facts.dated > 0 or not facts.papers, info=since_info(facts)),
        gr.Textbox(visible=bool(facts.categories), info=category_info(facts)),
        gr.Dropdown(choices=facts.source_choices(), visible=bool(facts.sources)),
        gr.Markdown(filter_notes(facts)),
    )


def filters_panel(facts: CollectionFacts) -> Filters:
    """The filter accordion, showing only the filters this collection can use."""
    with gr.Accordion(
        "Filters: which papers may be searched and cited", open=False, elem_id="filters"
    ) as accordion:
        with gr.Row():
            since = gr.Textbox(
                label="Since (YYYY-MM-DD)",
                placeholder="e.g. 2024-01-01",
                elem_id="filter-since",
                info=since_info(facts),
                visible=facts.dated > 0 or not facts.papers,
            )
            categories = gr.Textbox(
                label="arXiv categories",
                placeholder=" ".join(sorted(facts.categories)[:2]) or "e.g. cs.LG",
                elem_id="filter-category",
                info=category_info(facts),
                visible=bool(facts.categories),
            )
            sources = gr.Dropdown(
                facts.source_choices(),
                value=[],
                multiselect=True,
                label="Source files (any of)",
                info="Where the papers were read from.",
                elem_id="filter-source",
                visible=bool(facts.sources),
            )
        notes = gr.Markdown(filter_notes(facts), elem_id="filter-notes")
        error = gr.Markdown("", visible=False, elem_id="filter-error")
    return Filters(accordion, since, categories, sources, notes, error)


def checked_filters(assistant: Assistant, since: str, categories: str, sources: Sequence[str]):  # noqa: ANN201 - Filter
    """The filter typed in, checked: a bad date, or filters that leave no paper, are an
    `InputError` (shown next to the fields)."""
    filters = Filter.from_text(since, categories, sources or [])
    if filters:
        assistant.retriever(filters)  # says why, when the filters leave no paper
    return filters


def filter_error(filters: Filters, message: str | None) -> dict[Any, Any]:
    """Updates showing `message` next to the filter fields, their fold opened (none: the
    message hidden)."""
    if not message:
        return {filters.error: gr.Markdown("", visible=False)}
    shown = gr.Markdown(f"⚠️ {as_text(message)}", visible=True)
    return {filters.error: shown, filters.accordion: gr.Accordion(open=True)}


def wire_filter_checks(filters: Filters, assistant: Assistant) -> None:
    """Check the filters as they are typed (on leaving a field), not only when asking."""

    def check(since: str, categories: str, sources: list[str]) -> dict[Any, Any]:
        try:
            checked_filters(assistant, since, categories, sources)
        except RagError as exc:
            return filter_error(filters, str(exc))
        return filter_error(filters, None)

    out = [filters.error, filters.accordion]
    for field in (filters.since, filters.categories):
        field.blur(check, filters.inputs, out, api_visibility="private")
        field.submit(check, filters.inputs, out, api_visibility="private")
    filters.sources.change(check, filters.inputs, out, api_visibility="private")


def upload_progress(report: Any) -> str:
    return (
        f"_Adding papers: {report.papers_read:,} read, {report.chunks_embedded:,} passages "
        "embedded…_"
    )


def upload_result(report: Any, paths: Sequence[str]) -> str:
    """Counts, then each skipped record (named by the file's own name, not the upload's
    temporary path)."""
    names = [Path(p).name for p in paths]
    folders = {str(Path(p).parent) + "/" for p in paths}

    def named(line: str) -> str:
        for folder in folders:
            line = line.replace(folder, "")
        return as_text(line)

    lines = [
        f"**Added from {', '.join(names)}**: {report.papers_added:,} new papers, "
        f"{report.papers_updated:,} updated, {report.papers_unchanged:,} already in the "
        f"collection ({report.papers_read:,} read); the collection has "
        f"{report.papers_total:,} papers."
    ]
    if report.errors:
        count = len(report.errors)
        lines += ["", f"**{count} record{'s' * (count != 1)} skipped:**"]
        lines += [f"- {named(e)}" for e in report.errors[:SHOWN_ERRORS]]
        if len(report.errors) > SHOWN_ERRORS:
            lines.append(f"- … and {len(report.errors) - SHOWN_ERRORS} more")
    if report.warnings:
        lines += ["", f"{len(report.warnings)} taken with a warning, first: "]
        lines[-1] += named(report.warnings[0])
    return "\n".join(lines)


def upload_panel(assistant: Assistant, filters: Filters, picker: gr.Dropdown) -> None:
    """The "Add papers" tab: files read by the same loaders as `rag ingest`, with progress,
    counts and each skipped record; the filters and the paper picker are refreshed after."""
    gr.Markdown(
        "Add papers to the collection: JSON Lines or CSV files (a title and an abstract per "
        "record, as `rag ingest` reads them) or saved listing pages. Papers already there are "
        "updated, not repeated."
    )
    files = gr.File(
        file_count="multiple",
        file_types=UPLOAD_TYPES,
        label="Files to add",
        elem_id="upload",
    )
    add = gr.Button("Add to the collection", variant="primary", elem_id="add-papers")
    status = gr.Markdown("", elem_id="upload-status")

    def add_papers(paths: list[str] | None) -> Iterator[tuple[Any, ...]]:
        keep = (gr.skip(),) * 5
        if not paths:
            yield "Choose one or more files first.", *keep
            return
        names = [Path(p).name for p in paths]
        yield f"_Reading {', '.join(names)}…_", *keep

        def work(emit: Any) -> Any:
            try:
                return ingest(
                    [Path(p) for p in paths],
                    assistant.settings,
                    embedder=assistant.embedder,
                    on_progress=lambda report: emit(upload_progress(report)),
                )
            finally:
                assistant.embedder.release_document_encoder()  # queries need only float32

        for item in in_background(work):
            if isinstance(item, RagError):
                yield f"⚠️ {as_text(str(item))}", *keep
            elif isinstance(item, str):
                yield item, *keep
            else:
                facts = assistant.collection_facts()
                titles = gr.Dropdown(choices=assistant.paper_titles())
                yield upload_result(item, paths), *filter_updates(facts), titles

    targets = [status, filters.since, filters.categories, filters.sources, filters.notes, picker]
    add.click(add_papers, files, targets, api_visibility="private", concurrency_limit=1)
