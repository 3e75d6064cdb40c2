"""Answers -> documents to keep: a conversation as Markdown, each answer with its own numbered
reference list, and the papers the answers cite as BibTeX entries."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.claims import flagged
from rag.corpus import ARXIV_ID
from rag.filters import shown_dates

if TYPE_CHECKING:
    from rag.answer import Answer, Source

ARXIV_ABS = "https://arxiv.org/abs/"
YEAR = re.compile(r"\b(?:19|20)\d{2}\b")
BIBTEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
BIBTEX_SPECIAL_CHARS = re.compile(r"[\\{}&%$#_~^]")
# What would end a Markdown link's text, or its address, too early.
LINK_TEXT_SPECIAL = re.compile(r"([\\\[\]])")
URL_UNSAFE = re.compile(r"[\s()<>{}\\]")
# Words a citation key skips to reach the first one that names the paper.
MINOR_WORDS = frozenset(
    "a an the on of in for to and or with is are as at by from via towards toward".split()
)
KEY_STEM_CHARS = 20


def answer_markdown(answer: Answer, heading: str | None = None) -> str:
    """`answer` as Markdown: the question as a heading (or `heading`), the text with a flag after
    each claim to check, the note in italics, then the cited papers, numbered as the text cites
    them (a refusal cites none)."""
    parts = [
        heading or f"### Q: {one_line(answer.question)}",
        flagged(answer.answer, answer.claims),
    ]
    parts += [emphasis(note) for note in (answer.note, answer.truncated) if note]
    if answer.citations and not answer.refused:
        parts.append("**References**\n\n" + "\n".join(reference(s) for s in answer.citations))
    return "\n\n".join(parts) + "\n"


def conversation_markdown(
    answers: Sequence[Answer], title: str = "Literature assistant conversation"
) -> str:
    """The answers of a conversation as one Markdown document, each with its own references."""
    return "\n".join([f"# {one_line(title)}\n", *(answer_markdown(a) for a in answers)])


def reference(source: Source) -> str:
    """One line of a reference list: `[n]`, the title linked to the paper, the listing dates."""
    title = LINK_TEXT_SPECIAL.sub(r"\\\1", one_line(source.title))
    linked = f"[{title}]({safe_url(source.url)})" if source.url else title
    when = f" ({shown_dates(source.dates)})" if source.dates else ""
    return f"- [{source.n}] {linked}{when}"


def safe_url(url: str) -> str:
    """`url` with what would end a Markdown link or a BibTeX field percent-encoded."""
    return URL_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), url)


def one_line(text: str) -> str:
    return " ".join(text.split())


def emphasis(text: str) -> str:
    """`text` on one line in Markdown italics."""
    return "*" + one_line(text).replace("*", r"\*") + "*"


def cited_bibtex(answers: Sequence[Answer]) -> str:
    """The BibTeX of every paper the `answers` cite ("" when they cite none)."""
    return bibtex([s for a in answers if not a.refused for s in a.citations])


def bibtex(sources: Sequence[Source]) -> str:
    """One `@misc` entry per distinct paper of `sources` (by paper id), in order of first
    appearance, each under a citation key unique among them ("" for no sources)."""
    papers: dict[str, Source] = {}
    for source in sources:
        papers.setdefault(source.paper_id, source)
    distinct = list(papers.values())
    keys = citation_keys(distinct)
    return "\n".join(entry(key, source) for key, source in zip(keys, distinct, strict=True))


def entry(key: str, source: Source) -> str:
    """The BibTeX entry of one paper: the title braced to keep its capitals, the year and
    eprint when known, its url."""
    fields = [("title", f"{{{bibtex_text(source.title)}}}")]
    if year := paper_year(source):
        fields.append(("year", year))
    if eprint := arxiv_id(source.url):
        fields += [("eprint", eprint), ("archivePrefix", "arXiv")]
    if source.url:
        fields.append(("url", safe_url(source.url)))
    if source.dates:
        fields.append(("note", bibtex_text(f"Listed {shown_dates(source.dates)}")))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@misc{{{key},\n{body}\n}}\n"


def bibtex_text(text: str) -> str:
    """`text` on one line with BibTeX's and LaTeX's special characters escaped."""
    return BIBTEX_SPECIAL_CHARS.sub(lambda m: BIBTEX_SPECIAL[m.group()], one_line(text))


def arxiv_id(url: str) -> str | None:
    """The arXiv id of an arXiv abstract page's url, else None."""
    identifier = url.removeprefix(ARXIV_ABS)
    return identifier if url.startswith(ARXIV_ABS) and ARXIV_ID.match(identifier) else None


def paper_year(source: Source) -> str:
    """The year of the paper: from its arXiv id (YYMM.NNNNN, or archive/YYMMNNN before 2007),
    else the first dated listing; "" when neither tells."""
    if identifier := arxiv_id(source.url):
        yy = int(identifier.rsplit("/", 1)[-1][:2])
        old_style = "/" in identifier and yy >= 91  # arXiv began in 1991
        return str((1900 if old_style else 2000) + yy)
    found = (YEAR.search(date) for date in source.dates)
    return next((m.group() for m in found if m), "")


def citation_keys(sources: Sequence[Source]) -> list[str]:
    """A key per source: the first significant word of its title and its year (`addition2024`),
    with a, b, ... appended where several papers would share one."""
    stems = [key_stem(s.title) + paper_year(s) for s in sources]
    shared = Counter(stems)
    suffixes: Counter[str] = Counter()
    keys: list[str] = []
    for stem in stems:
        key = stem if shared[stem] == 1 else ""
        while not key or key in keys:
            key = stem + letters(suffixes[stem])
            suffixes[stem] += 1
        keys.append(key)
    return keys


def key_stem(title: str) -> str:
    """The first word of `title` that is not a minor word, as lowercase ASCII letters and
    digits ("L-Mul:" gives "lmul"); "paper" when the title has no such word."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = [re.sub(r"[^a-z0-9]", "", w) for w in ascii_title.casefold().split()]
    words = [w for w in words if w]
    stem = next((w for w in words if w not in MINOR_WORDS), words[0] if words else "paper")
    return stem[:KEY_STEM_CHARS]


def letters(number: int) -> str:
    """a, b, ..., z, aa, ab, ... for 0, 1, ..., 25, 26, 27, ..."""
    out = ""
    number += 1
    while number:
        number, rest = divmod(number - 1, 26)
        out = chr(ord("a") + rest) + out
    return out
