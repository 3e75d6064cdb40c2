"""Answers and summaries -> what a terminal shows: the text with a flag after each claim to
check, the re-citations, and each cited paper with the quote that supports it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from rag.claims import Claim, flag, flagged

CLOSEST_SHOWN = 3  # passages listed under an unsure refusal

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.summarize import Summary


def print_answer(answer: Answer, streamed: bool) -> None:
    """The answer (unless it was streamed) with a flag after each claim to check, its repairs,
    then each cited paper with the quote that supports the claims citing it."""
    if answer.note:
        click.echo(f"[{answer.note}]\n", err=True)
    if streamed:
        click.echo("\n")
        to_check = [(c, flag(c)) for c in answer.claims if flag(c)]
        if to_check:
            click.echo("Claims to check:")
            for claim, note in to_check:
                click.echo(f"  - {claim.text} {note}")
    else:
        click.echo(flagged(answer.answer, answer.claims))
    print_repairs(answer.claims)
    if answer.citations:
        click.echo("\nSources:")
        for source in answer.citations:
            when = f" ({', '.join(source.dates)})" if source.dates else ""
            click.echo(f"  [{source.n}] {source.title}{when}  {source.url}")
            if source.quote:
                click.echo(f'      "{shorten(source.quote)}"')
    if answer.refused and answer.uncertain:
        click.echo("\nClosest passages (they may not answer the question):")
        for source in answer.sources[:CLOSEST_SHOWN]:
            click.echo(f"  [{source.n}] {source.title}  {source.url}")
            click.echo(f'      "{shorten(source.question_quote)}"')
    print_dropped(answer.dropped_citations, "sources")


def print_repairs(claims: Sequence[Claim]) -> None:
    for claim in claims:
        if claim.repaired_from is not None:
            was = "".join(f"[{n}]" for n in claim.repaired_from) or "no citation"
            now = "".join(f"[{n}]" for n in claim.citations)
            click.echo(f"Re-cited ({was} -> {now}, which supports it): {claim.text}", err=True)


def print_dropped(numbers: list[int], what: str) -> None:
    if numbers:
        listed = ", ".join(f"[{n}]" for n in numbers)
        click.echo(f"\nDropped citations (not among the {what}): {listed}", err=True)


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_summary(summary: Summary) -> None:
    click.echo(flagged(summary.summary, summary.claims))
    print_repairs(summary.claims)
    print_dropped(summary.dropped_citations, "papers")
