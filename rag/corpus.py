"""Files -> `Paper` records.

Four input formats:

* Hugging Face "Daily Papers" listing pages saved as text (`.txt`): page chrome, an optional
  listing date ("May 8"), then alternating title and abstract lines;
* JSON Lines (`.jsonl`, `.ndjson`, `.json`) and CSV (`.csv`, `.tsv`) with configurable title,
  text and id fields, so a BEIR `corpus.jsonl` (`_id`, `title`, `text`) loads as it is;
* the arXiv metadata snapshot (JSON Lines with `id`, `title`, `abstract`, `categories`,
  `update_date`, `authors`), recognised by its fields: papers keep their arXiv id, categories
  and date.

Loaders are generators: they yield `Paper` records and `Problem`s (a bad record: the file and
line, and what is wrong) and raise `InputError` only when a whole file is unreadable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from urllib.parse import quote_plus

from rag.errors import InputError
from rag.reading import (
    CSV_SUFFIXES,
    JSONL_SUFFIXES,
    LISTING_SUFFIXES,
    FilePosition,
    check_file,
    read_text,
    stream_lines,
)

# Lines of page chrome on a Daily Papers listing page, compared after whitespace is collapsed.
CHROME_LINES = frozenset(
    {
        "new",
        "get trending papers in your email inbox!",
        "get trending papers in your email inbox once a day!",
        "subscribe",
        "daily papers",
        "byak and the research community",
    }
)
# "Subscribe" is sometimes glued to the first title of the page ("SubscribeAddition is...").
GLUED_CHROME = re.compile(r"^Subscribe(?=[A-Z0-9])")
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
DATE_LINE = re.compile(rf"^(?:{_MONTHS})[a-z]*\.? \d{{1,2}}(?:, \d{{4}})?$")
# An abstract is a paragraph; a title is a line. Real titles stay under 30 words (the bundled
# corpus: at most 20 words, 147 characters; abstracts at least 74 words, 519 characters).
ABSTRACT_MIN_WORDS = 30
ABSTRACT_MIN_CHARS = 200
# JSON Lines records end at \n (or \r\n). `str.splitlines` also breaks at U+0085, U+2028 and
# U+2029, which a JSON writer may leave unescaped inside strings (`ensure_ascii=False`); the other
# breaks it knows are control characters, which valid JSON never holds raw.
JSONL_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e]")
MESSAGE_TEXT_CHARS = 80  # how much of a title a one-line problem message quotes


@dataclass(frozen=True, order=True)
class Listing:
    """One appearance of a paper on a listing page (`source`), with the page's date if any."""

    source: str
    date: str | None = None


@dataclass
class Paper:
    """A paper: stable id, title, abstract, every listing it was seen on, free-form metadata,
    and what an arXiv record tells of it (id, categories, ISO date of its last version)."""

    paper_id: str
    title: str
    abstract: str
    listings: tuple[Listing, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    arxiv_id: str | None = None
    categories: tuple[str, ...] = ()
    date: str | None = None
    """YYYY-MM-DD, when the source gives one with its year (arXiv's `update_date`)."""

    def merged_with(self, other: Paper) -> Paper:
        """This paper with `other`'s listings added. `other`'s text wins (it comes later),
        unless both are dated and this one is the newer version."""
        newer, older = (self, other) if (other.date or "") < (self.date or "") else (other, self)
        return Paper(
            newer.paper_id,
            newer.title,
            newer.abstract,
            tuple(sorted(set(self.listings) | set(other.listings))),
            {**older.meta, **newer.meta},
            newer.arxiv_id or older.arxiv_id,
            newer.categories or older.categories,
            newer.date or older.date,
        )


@dataclass(frozen=True)
class Problem:
    """A record that could not be read; `str()` gives the one-line message."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Fields:
    """Field names of JSONL/CSV records; `None` means: try the usual names."""

    title: str | None = None
    text: str | None = None
    id: str | None = None

    def title_names(self) -> tuple[str, ...]:
        return (self.title,) if self.title else ("title",)

    def text_names(self) -> tuple[str, ...]:
        return (self.text,) if self.text else ("abstract", "text", "summary")

    def id_names(self) -> tuple[str, ...]:
        return (self.id,) if self.id else ("_id", "id", "paper_id")


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
"""Where one sentence of an abstract ends and the next begins (the space between them)."""


def sentence_spans(text: str) -> list[str]:
    """`text` cut into sentences, each keeping the space that follows it: the pieces join back
    into `text` exactly (what llama-index's splitter expects of a sentence tokenizer)."""
    cuts = [0, *(m.end() for m in SENTENCE_END.finditer(text)), len(text)]
    return [text[a:b] for a, b in pairwise(cuts) if a < b]


def clean_text(text: str) -> str:
    """Normalise Unicode (NFC), drop control characters and collapse whitespace."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if text.isprintable():  # the usual case: no control or format character is left
        return text
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    return " ".join(text.split())


def normalise_title(title: str) -> str:
    """The form of a title that identifies a paper: case, punctuation and spacing ignored."""
    folded = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", folded).split())


def paper_id_for(title: str) -> str:
    """A stable id derived from the normalised title (12 hex digits of its SHA-1)."""
    return hashlib.sha1(normalise_title(title).encode("utf-8")).hexdigest()[:12]


def paper_url(title: str, arxiv_id: str | None = None) -> str:
    """Where a reader finds the paper: its arXiv abstract page when the id is known, else a
    Hugging Face Papers search for its title."""
    if arxiv_id:
        return f"https://arxiv.org/abs/{arxiv_id}"
    return f"https://huggingface.co/papers?q={quote_plus(title)}"


FORMATS = ("listing", "jsonl", "csv", "arxiv")
ARXIV_FIELDS = frozenset({"id", "title", "abstract", "categories"})
ARXIV_ID = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z][a-z.-]*(?:\.[A-Z]{2})?/\d{7})(v\d+)?$")
ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
AUTHORS_CHARS = 500


def detect_format(path: Path) -> str:
    """'listing', 'jsonl', 'csv' or 'arxiv' from the file name, and for JSON Lines from the
    fields of the first record; an `InputError` for anything else."""
    check_file(path)
    suffix = path.suffix.lower()
    if suffix in LISTING_SUFFIXES:
        return "listing"
    if suffix in JSONL_SUFFIXES:
        return "arxiv" if _first_record_fields(path) >= ARXIV_FIELDS else "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise InputError(
        f"{path}: unknown file type '{suffix or '(none)'}'; "
        "expected a listing page (.txt), JSON Lines (.jsonl) or CSV (.csv)"
    )


def _first_record_fields(path: Path) -> set[str]:
    """Keys of the first JSON object of a JSON Lines file (empty when there is none)."""
    try:
        with path.open("rb") as handle:
            for raw in handle:
                if raw.strip():
                    record = json.loads(raw)
                    return set(record) if isinstance(record, dict) else set()
    except (OSError, ValueError, RecursionError):
        pass  # reading the file for real reports what is wrong with it
    return set()


def iter_file(
    path: Path,
    fields: Fields = Fields(),
    fmt: str | None = None,
    position: FilePosition | None = None,
) -> Iterator[Paper | Problem]:
    """Papers and problems of one file, in `fmt` (default: detected).

    JSON Lines (arXiv included) and CSV files are streamed (a few lines in memory at a time,
    whatever the file's size); a listing page, small by nature, is read whole. For JSON Lines,
    `position` starts the reading at a saved place and follows it record by record (resumable
    ingests).
    """
    fmt = fmt or detect_format(path)
    if fmt == "listing":
        yield from parse_listing_page(read_text(path), source=path.name)
    elif fmt in ("jsonl", "arxiv"):
        lines = stream_lines(path, position)
        if fmt == "arxiv":
            yield from parse_arxiv_lines(lines, str(path))
        else:
            yield from parse_jsonl_lines(lines, str(path), fields)
    else:
        yield from parse_csv_lines(
            (line for _, line in stream_lines(path)),
            str(path),
            fields,
            delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
        )


def _looks_like_abstract(line: str) -> bool:
    return len(line) >= ABSTRACT_MIN_CHARS or len(line.split()) >= ABSTRACT_MIN_WORDS


def _page_lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines of a listing page, with chrome removed."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = clean_text(raw)
        if not line or line.casefold() in CHROME_LINES:
            continue
        line = GLUED_CHROME.sub("", line)
        yield number, line


def parse_listing_page(text: str, source: str) -> Iterator[Paper | Problem]:
    """Papers of one Daily Papers listing page; a title with no abstract is a `Problem`."""
    date: str | None = None
    pending: tuple[int, str] | None = None  # a title waiting for its abstract
    for number, line in _page_lines(text):
        if DATE_LINE.match(line):
            date = line
            continue
        if not _looks_like_abstract(line):
            if pending:
                yield Problem(source, pending[0], f"title without an abstract: {pending[1]!r}")
            pending = (number, line)
        elif pending is None:
            yield Problem(source, number, "abstract without a title")
        else:
            title = pending[1]
            yield Paper(paper_id_for(title), title, line, (Listing(source, date),))
            pending = None
    if pending:
        yield Problem(source, pending[0], f"title without an abstract: {pending[1]!r}")


def _brief(text: str) -> str:
    """`text` cut to a length that keeps a one-line message readable."""
    if len(text) > MESSAGE_TEXT_CHARS:
        return text[: MESSAGE_TEXT_CHARS - 3] + "..."
    return text


def _quote(text: str) -> str:
    return repr(_brief(text))


def _first(record: dict[str, object], names: tuple[str, ...]) -> str:
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, (dict, list)):
            return clean_text(str(value))
    return ""


def _record_to_paper(
    record: dict[str, object], where: str, line: int, fields: Fields, source: str
) -> Paper | Problem:
    title = _first(record, fields.title_names())
    text = _first(record, fields.text_names())
    if not title:
        return Problem(where, line, f"record has no title (field {'/'.join(fields.title_names())})")
    if not text:
        return Problem(
            where,
            line,
            f"record {_quote(title)} has no abstract (field {'/'.join(fields.text_names())})",
        )
    paper_id = _first(record, fields.id_names()) or paper_id_for(title)
    return Paper(paper_id, title, text, (Listing(source),))


def parse_jsonl(text: str, where: str, fields: Fields = Fields()) -> Iterator[Paper | Problem]:
    """Papers of a JSON Lines text, one object per line."""
    return parse_jsonl_lines(enumerate(io.StringIO(text, newline=""), start=1), where, fields)


def parse_jsonl_lines(
    lines: Iterable[tuple[int, str]],
    where: str,
    fields: Fields = Fields(),
    to_paper: Callable[..., Paper | Problem] = _record_to_paper,
) -> Iterator[Paper | Problem]:
    """Papers of numbered JSON Lines (a file streamed by `stream_lines`, or a split text);
    `to_paper(record, where, line, fields, source)` makes each record a paper."""
    source = Path(where).name
    number = 0
    for _, physical in lines:
        # \r, \v, \f and the separators below end a record too, as `str.splitlines` would.
        for raw in JSONL_LINE_BREAK.split(_without_line_end(physical)):
            number += 1
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                yield Problem(where, number, f"not valid JSON ({exc.__class__.__name__}: {exc})")
                continue
            except RecursionError:
                yield Problem(where, number, "not valid JSON (nested too deeply)")
                continue
            if not isinstance(record, dict):
                yield Problem(where, number, "expected a JSON object with title and text fields")
                continue
            yield to_paper(record, where, number, fields, source)


def parse_arxiv_lines(lines: Iterable[tuple[int, str]], where: str) -> Iterator[Paper | Problem]:
    """Papers of the arXiv metadata snapshot (JSON Lines): the id without its version, title
    and abstract with line breaks and runs of spaces collapsed, categories, the date of the
    last version (`update_date`) and the authors."""
    return parse_jsonl_lines(lines, where, to_paper=_arxiv_record_to_paper)


def _arxiv_record_to_paper(
    record: dict[str, object], where: str, line: int, fields: Fields, source: str
) -> Paper | Problem:
    paper = _record_to_paper(record, where, line, Fields(id="id"), source)
    if isinstance(paper, Problem):
        return paper
    raw_id = paper.paper_id if "id" in record else ""
    arxiv_id = re.sub(r"v\d+$", "", raw_id) if ARXIV_ID.match(raw_id) else None
    date = _first(record, ("update_date",))[:10]
    authors = _first(record, ("authors",))
    return Paper(
        arxiv_id or paper.paper_id,
        paper.title,
        paper.abstract,
        paper.listings,
        {"authors": authors[:AUTHORS_CHARS]} if authors else {},
        arxiv_id,
        tuple(_first(record, ("categories",)).split()),
        date if ISO_DATE.match(date) else None,
    )


def _without_line_end(line: str) -> str:
    """`line` without its one line ending (\r\n, \n or \r), if it has one."""
    for end in ("\r\n", "\n", "\r"):
        if line.endswith(end):
            return line[: -len(end)]
    return line


def parse_csv(
    text: str, where: str, fields: Fields = Fields(), delimiter: str = ","
) -> Iterator[Paper | Problem]:
    """Papers of a CSV text whose first row names the columns."""
    return parse_csv_lines(io.StringIO(text, newline=""), where, fields, delimiter)


def parse_csv_lines(
    lines: Iterable[str], where: str, fields: Fields = Fields(), delimiter: str = ","
) -> Iterator[Paper | Problem]:
    """Papers of CSV lines (line ends kept) whose first row names the columns."""
    source = Path(where).name
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(lines, delimiter=delimiter)
    try:
        columns = reader.fieldnames or []
    except csv.Error as exc:
        raise InputError(f"{where}:1: malformed CSV header: {exc}") from None
    if not any(name in columns for name in fields.title_names()):
        raise InputError(
            f"{where}:1: no title column (looked for {'/'.join(fields.title_names())}; "
            f"found {_brief(', '.join(clean_text(str(c)) for c in columns)) or 'none'}); "
            "use --title-field"
        )
    try:
        for record in reader:
            yield _record_to_paper(record, where, reader.line_num, fields, source)
    except csv.Error as exc:
        yield Problem(where, reader.line_num, f"malformed CSV: {exc}")


def merge_papers(items: Iterable[Paper]) -> dict[str, Paper]:
    """Papers by id; a paper seen several times keeps every listing."""
    papers: dict[str, Paper] = {}
    for paper in items:
        known = papers.get(paper.paper_id)
        papers[paper.paper_id] = known.merged_with(paper) if known else paper
    return papers
