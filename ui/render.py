"""How the chat shows answers, sources and summaries: model and abstract text as text, and the
app's own markup around it (citation chips that link to this answer's source cards, title links,
per-claim evidence)."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from rag.claims import flagged
from rag.filters import shown_dates
from rag.summarize import EXTRACTIVE_OVERVIEW

if TYPE_CHECKING:
    from rag.answer import Answer, Source
    from rag.summarize import Summary

ARXIV_ABS = "https://arxiv.org/abs/"


# Characters that make Markdown (or the HTML inside it) of plain text.
MARKDOWN = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>#|!~{}()"} | {"&": "&amp;"})
URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*:/{0,3}|www\.)[^\s<>]+", re.IGNORECASE)


def as_text(text: str) -> str:
    """Text from a model or an abstract as Markdown that shows it as it is: no HTML, image,
    link, emphasis or heading comes out of it (an injected abstract cannot load a remote image
    or show a 'Verify your account' link); addresses are shown as code, never as links. Line
    breaks and '- ' bullets are kept."""
    lines = []
    for line in text.split("\n"):
        parts, at = [], 0
        for match in URL.finditer(line):
            parts.append(line[at : match.start()].translate(MARKDOWN))
            parts.append(f"`{match.group(0).replace('`', chr(39))}`")
            at = match.end()
        parts.append(line[at:].translate(MARKDOWN))
        lines.append("".join(parts))
    return "\n".join(lines)


STREAMED_MARKER = re.compile(r"\[(-?\d+)\]")


def streaming_text(text: str, most: int) -> str:
    """A reply as it streams in, shown as text: a marker no source can have (0, negative, or
    above the `most` sources asked for) is hidden at once, not only when the answer is done."""

    def known(match: re.Match[str]) -> str:
        number = match.group(1)
        return match.group(0) if len(number) <= 3 and 1 <= int(number) <= most else ""

    return as_text(STREAMED_MARKER.sub(known, text))


def _md(text: str) -> str:
    """`as_text` on one line."""
    return as_text(" ".join(text.split()))


def render_sources(answer: Answer) -> str:
    """The Sources panel: cited papers with their supporting sentence, then the others."""
    lines = ["### Sources"]
    shown = {s.n for s in answer.citations}
    if answer.refused and answer.uncertain:
        closest = answer.sources[:3]
        shown |= {s.n for s in closest}
        lines.append("No retrieved paper clearly answers this. The closest passages:")
        lines += [f"- [{_md(s.title)}]({s.url}): {_md(s.question_quote)}" for s in closest]
    elif not answer.citations:
        lines.append(
            "No retrieved paper supports an answer." if answer.refused else "No citations."
        )
    for source in answer.citations:
        lines += _source_block(source)
    others = [s for s in answer.sources if s.n not in shown]
    if others:
        lines += ["", "### Also retrieved"]
        lines += [f"- [{s.n}] [{_md(s.title)}]({s.url})" for s in others]
    if answer.dropped_citations:
        numbers = ", ".join(f"[{n}]" for n in answer.dropped_citations)
        lines += ["", f"_Dropped citations that name no source: {numbers}_"]
    return "\n".join(lines)


def _source_block(source: Source) -> list[str]:
    when = f" · listed {shown_dates(source.dates)}" if source.dates else ""
    snippet = source.quote or source.snippet[:300]
    return ["", f"**[{source.n}]** {title_link(source)}{when}", "", f"> {_md(snippet)}"]


def link_kind(source: Source) -> str:
    return "arXiv" if source.url.startswith(ARXIV_ABS) else "Hugging Face Papers"


def title_link(source: Source) -> str:
    """The title as a link to the paper (its arXiv page when the id is known, else a Hugging
    Face Papers search), saying which."""
    return f"[{_md(source.title)}]({source.url}) _({link_kind(source)})_"


# A `[n]` marker as `as_text` writes it.
MARKER = re.compile(r"\\\[(\d+)\\\]")
MARKS = {"supported": "✓", "weak": "⚠ weak:", "unsupported": "⚠ not supported:"}


def chat_message(answer: Answer, turn: int) -> str:
    """An answer as its chat bubble: the text, each `[n]` a chip that links to this answer's
    card of source n and shows its title and supporting quote on hover (or a long press), then
    this answer's own sources with the evidence for each claim that cites them."""
    by_n = {s.n: s for s in answer.sources}

    def chip(match: re.Match[str]) -> str:
        source = by_n.get(int(match.group(1)))
        if source is None:
            return match.group(0)
        tip = html.escape(f"{source.title}: {source.quote or source.question_quote}"[:400])
        return f'<a class="cite" href="#a{turn}-s{source.n}" title="{tip}">[{source.n}]</a>'

    text = MARKER.sub(chip, answer_text(answer))
    if not answer.citations:
        return text
    return f"{text}\n\n{answer_sources(answer, turn)}"


def answer_sources(answer: Answer, turn: int) -> str:
    """The sources of one answer, in a fold: each cited paper (title linked) with the passages
    that support the claims citing it, and each claim's verdict; then the papers retrieved but
    not cited."""
    lines = ["<details open><summary>Sources of this answer</summary>", ""]
    for source in answer.citations:
        when = f" · listed {shown_dates(source.dates)}" if source.dates else ""
        lines += [f'<a id="a{turn}-s{source.n}"></a>**[{source.n}]** {title_link(source)}{when}']
        found = [(c, e) for c in answer.claims for e in c.evidence if e.n == source.n]
        for claim, evidence in found:
            quote = f"- {MARKS.get(evidence.verdict, '')} “{_md(evidence.quote)}”"
            said = " ".join(MARKER.sub("", _md(claim.text)).split()).lstrip("-\\ ").rstrip(". ")
            if said not in _md(evidence.quote):  # an extractive claim is its quote
                quote += f" (for: _{said}_)"
            lines.append(quote)
        if not found:
            lines.append(f"- “{_md(source.quote or source.snippet[:300])}”")
        lines.append("")
    others = [s for s in answer.sources if s not in answer.citations]
    if others:
        lines.append("Also retrieved: " + "; ".join(title_link(s) for s in others))
    return "\n".join([*lines, "", "</details>"])


# `**bold**` as `as_text` writes it: the one markup a summary's headings keep (never a link,
# an image or HTML).
BOLD = re.compile(r"\\\*\\\*([^*\n]{1,200}?)\\\*\\\*")


def render_summary(summary: Summary) -> str:
    """The summary shown as text (claims to check flagged), then its references as links."""
    text = BOLD.sub(r"**\1**", as_text(flagged(summary.overview, summary.claims)))
    if summary.mode == "extractive" and summary.citations:
        text = text.replace(as_text(EXTRACTIVE_OVERVIEW), f"_{EXTRACTIVE_OVERVIEW}_", 1)
    if summary.citations:
        refs = [f"\\[{s.n}\\] [{_md(s.title)}]({s.url})" for s in summary.citations]
        text += "\n\n**References**\n\n" + "  \n".join(refs)
    if summary.dropped_citations:
        numbers = ", ".join(f"[{n}]" for n in summary.dropped_citations)
        text += f"\n\n_Dropped citations that name no paper: {numbers}_"
    if summary.left_out:
        used = summary.considered - len(summary.left_out)
        text += f"\n\n_Considered {summary.considered} papers, covered {used}. Left out:_\n"
        text += "\n".join(f"- {_md(p['title'])}: {_md(p['why'])}" for p in summary.left_out)
    return text


def answer_text(answer: Answer) -> str:
    """The answer as the chat shows it: as text, a flag after each claim its citations do not
    support."""
    text = as_text(flagged(answer.answer, answer.claims))
    if answer.model_answer is not None and answer.note:
        text = f"_{as_text(answer.note)}_\n\n{text}"  # why the model's answer was replaced
    elif answer.mode == "extractive" and not answer.refused:
        text = f"_Extractive answer (quoted from the abstracts):_\n\n{text}"
    elif answer.note:
        text += f"\n\n_{as_text(answer.note)}_"
    if answer.truncated:
        text += f"\n\n_({as_text(answer.truncated)})_"
    return text


def api_text(answer: Answer) -> str:
    """What `/chat` returns: the answer (claims to check flagged), then its cited sources by
    number and title."""
    lines = [flagged(answer.answer, answer.claims)]
    if answer.model_answer is not None and answer.note:
        lines.insert(0, f"({answer.note})\n")
    if answer.truncated:
        lines.append(f"\n({answer.truncated})")
    if answer.citations:
        lines += ["", "Sources:"] + [f"[{s.n}] {s.title}" for s in answer.citations]
    return "\n".join(lines)
