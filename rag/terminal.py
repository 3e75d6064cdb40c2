"""Answers and summaries -> what a terminal shows: the text with a flag after each claim to
check, the re-citations, and each cited paper with the quote that supports it. Text from models
and abstracts reaches the terminal without control sequences (`printable`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from rag.filters import shown_dates
from rag.prompts import printable

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.claims import Claim
    from rag.summarize import Summary

CLOSEST_SHOWN = 3  # passages listed under an unsure refusal


def say(text: str = "", err: bool = False, nl: bool = True) -> None:
    click.echo(printable(text), err=err, nl=nl)


def print_answer(answer: Answer, streamed: bool) -> None:
    """The answer (unless it was streamed) with a flag after each claim to check, its repairs,
    then each cited paper with the quote that supports the claims citing it."""
    from rag.claims import flag, flagged

    if streamed and answer.model_answer is not None:
        say("\n")
        streamed = False  # the model's streamed text was replaced: show what replaced it
    if answer.note:
        say(f"[{answer.note}]\n", err=True)
    if streamed:
        say("\n")
        to_check = [(c, flag(c)) for c in answer.claims if flag(c)]
        if to_check:
            say("Claims to check:")
            for claim, note in to_check:
                say(f"  - {claim.text} {note}")
    else:
        say(flagged(answer.answer, answer.claims))
    print_repairs(answer.claims)
    if answer.citations:
        say("\nSources:")
        for source in answer.citations:
            when = f" ({shown_dates(source.dates)})" if source.dates else ""
            say(f"  [{source.n}] {source.title}{when}  {source.url}")
            if source.quote:
                say(f'      "{shorten(source.quote)}"')
    if answer.refused and answer.uncertain:
        say("\nClosest passages (they may not answer the question):")
        for source in answer.sources[:CLOSEST_SHOWN]:
            say(f"  [{source.n}] {source.title}  {source.url}")
            say(f'      "{shorten(source.question_quote)}"')
    print_dropped(answer.dropped_citations, "sources")
    if answer.truncated:
        say(f"\n[{answer.truncated}]", err=True)


def print_summary(summary: Summary) -> None:
    from rag.claims import flagged

    if summary.note:
        say(f"[{summary.note}]\n", err=True)
    say(flagged(summary.summary, summary.claims))
    if summary.left_out:
        say(f"\n[{summary.coverage_note()}]", err=True)
    print_repairs(summary.claims)
    print_dropped(summary.dropped_citations, "papers")


def print_repairs(claims: Sequence[Claim]) -> None:
    for claim in claims:
        if claim.repaired_from is not None:
            was = "".join(f"[{n}]" for n in claim.repaired_from) or "no citation"
            now = "".join(f"[{n}]" for n in claim.citations)
            say(f"Re-cited ({was} -> {now}, which supports it): {claim.text}", err=True)


def print_dropped(numbers: list[int], what: str) -> None:
    if numbers:
        listed = ", ".join(f"[{n}]" for n in numbers)
        say(f"\nDropped citations (not among the {what}): {listed}", err=True)


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
