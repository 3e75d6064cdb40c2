"""Property-based tests of the loaders: whatever text or bytes they are given, they yield
`Paper`s and `Problem`s (a bad record: file and line) or raise `InputError` (a bad file), never
anything else; and what they claim to clean (`clean_text`) is clean."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rag.corpus import (
    ABSTRACT_MIN_CHARS,
    ABSTRACT_MIN_WORDS,
    CHROME_LINES,
    DATE_LINE,
    GLUED_CHROME,
    Listing,
    Paper,
    Problem,
    clean_text,
    iter_file,
    parse_csv,
    parse_jsonl,
    parse_listing_page,
)
from rag.errors import InputError

# The autouse `isolated_env` fixture only sets environment variables: nothing per example.
FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ARABIC = "الشبكات العصبية تتعلم تمثيلات اللغة"
HEBREW = "רשתות עצביות לומדות ייצוגים של שפה"
RTL_MARKS = "\u200f\u200e\u202b\u202c\u2067\u2069\u061c"  # RLM, LRM, RLE, PDF, RLI, PDI, ALM
LONG_LINE = "x" * 100_000
LONG_ABSTRACT = ("word " * 20_000).strip()  # 100k characters

# Pieces that have broken text parsers before: every kind of line break, NUL and other
# controls, a BOM, bidi marks, chrome and date lines of listing pages, fake citations.
NASTY = st.sampled_from(
    [
        "\n",
        "\r\n",
        "\r",
        "\n\n",
        "\x00",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x85",
        "\u2028",
        "\u2029",
        "\ufeff",
        "\t",
        " ",
        *RTL_MARKS,
        ARABIC,
        HEBREW,
        "Subscribe",
        "SubscribeTitle",
        "Daily Papers",
        "May 8",
        "Jul 30, 2024",
        "[1]",
        '"',
        ",",
        "{",
        "}",
        '{"title": ',
        "word " * 40,
    ]
)
NASTY_TEXT = st.lists(st.one_of(st.text(max_size=30), NASTY), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(), NASTY_TEXT)


def is_clean(value: str) -> bool:
    """What `clean_text` promises: no control or format characters, single spaces, trimmed."""
    return (
        "\x00" not in value
        and not any(unicodedata.category(c) in ("Cc", "Cf") for c in value)
        and not any(c.isspace() and c != " " for c in value)
        and "  " not in value
        and value == value.strip()
    )


def check_items(items: list[Paper | Problem], where: str, text: str | None = None) -> None:
    """Every item is a clean paper or a problem that names the file (and a real line)."""
    lines = len(text.splitlines()) if text is not None else None
    for item in items:
        assert isinstance(item, (Paper, Problem)), item
        if isinstance(item, Paper):
            assert item.title and item.abstract and item.paper_id
            assert is_clean(item.title) and is_clean(item.abstract), item
            assert is_clean(item.paper_id), item
        else:
            assert item.path == where
            assert str(item).startswith(where)
            assert "\n" not in str(item) and "\r" not in str(item)
            if item.line is not None and lines is not None:
                assert 1 <= item.line <= max(lines, 1), (item, lines)


# --- clean_text -------------------------------------------------------------------------------


@FAST
@given(ANY_TEXT)
@example("\x00title\x00")
@example("\ufeff" + ARABIC + "\u200f")
@example("a\r\nb\rc\u2028d\x85e")
def test_clean_text_is_clean_and_idempotent(text: str) -> None:
    cleaned = clean_text(text)
    assert is_clean(cleaned)
    assert clean_text(cleaned) == cleaned
    assert unicodedata.is_normalized("NFC", cleaned)


# --- listing pages ----------------------------------------------------------------------------


@FAST
@given(ANY_TEXT)
@example(LONG_LINE)
@example("Title\n" + LONG_ABSTRACT + "\n")
@example("Title\x00One\r\n" + "word " * 40 + "\rSecond\n")
@example("\ufeffSubscribe\nMay 8\n" + HEBREW + "\r\n" + (ARABIC + " ") * 10)
def test_listing_parser_yields_only_papers_and_problems(text: str) -> None:
    items = list(parse_listing_page(text, source="page.txt"))
    check_items(items, "page.txt", text)
    for paper in (x for x in items if isinstance(x, Paper)):
        assert paper.listings[0].source == "page.txt"
        assert (
            len(paper.abstract) >= ABSTRACT_MIN_CHARS
            or len(paper.abstract.split()) >= ABSTRACT_MIN_WORDS
        )


WORD = st.text(
    alphabet=st.one_of(
        st.characters(whitelist_categories=("Lu", "Ll")),
        st.characters(min_codepoint=0x05D0, max_codepoint=0x05EA),  # Hebrew letters
        st.characters(min_codepoint=0x0621, max_codepoint=0x064A),  # Arabic letters
    ),
    min_size=1,
    max_size=10,
)
BIDI = st.sampled_from(["", *RTL_MARKS])


@st.composite
def listing_title(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORD, min_size=1, max_size=8))
    # Bidi marks (format characters) between words: the parser must clean them away.
    title = "".join(draw(BIDI) + w + draw(BIDI) + " " for w in words).strip()
    cleaned = clean_text(title)
    if (
        not cleaned
        or DATE_LINE.match(cleaned)
        or cleaned.casefold() in CHROME_LINES
        or GLUED_CHROME.match(cleaned)
    ):
        # Lines a page reader must treat as chrome or dates: never titles.
        title = "Paper " + title
    return title


LISTING_ABSTRACT = st.lists(WORD, min_size=ABSTRACT_MIN_WORDS, max_size=60).map(" ".join)


@st.composite
def listing_page(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], str | None]:
    """A page with random line breaks, blank and chrome lines; the papers it holds."""
    papers = draw(st.lists(st.tuples(listing_title(), LISTING_ABSTRACT), min_size=1, max_size=6))
    date = draw(st.sampled_from([None, "May 8", "Jul 30, 2024"]))
    lines: list[str] = ["Daily Papers", "Subscribe"] + ([date] if date else [])
    for title, abstract in papers:
        lines += [title, *draw(st.sampled_from([[], [""], ["", "  "]])), abstract]
    breaks = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines)))
    text = "".join(line + brk for line, brk in zip(lines, breaks, strict=False))
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text, papers, date


@FAST
@given(listing_page())
def test_listing_page_round_trip(page: tuple[str, list[tuple[str, str]], str | None]) -> None:
    text, papers, date = page
    items = list(parse_listing_page(text, source="p.txt"))
    assert [x for x in items if isinstance(x, Problem)] == []
    assert [(p.title, p.abstract, p.listings) for p in items] == [
        (clean_text(t), clean_text(a), (Listing("p.txt", date),)) for t, a in papers
    ]


# --- JSON Lines -------------------------------------------------------------------------------

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
JSON_RECORD = st.dictionaries(
    st.sampled_from(["title", "text", "abstract", "_id", "id", "summary", "other"]),
    JSON_VALUE,
)


@st.composite
def jsonl_text(draw: st.DrawFn) -> str:
    lines = draw(
        st.lists(
            st.one_of(
                JSON_RECORD.map(json.dumps),
                JSON_RECORD.map(lambda r: json.dumps(r, ensure_ascii=False)),
                JSON_VALUE.map(json.dumps),
                ANY_TEXT,
            ),
            max_size=8,
        )
    )
    breaks = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines)))
    return "".join(line + brk for line, brk in zip(lines, breaks, strict=False))


@FAST
@given(st.one_of(jsonl_text(), ANY_TEXT))
@example("[" * 100_000)
@example('{"title": ' * 50_000)
@example('{"title": "' + LONG_LINE + '", "text": "short"}')
@example('{"title": "T", "text": "' + LONG_ABSTRACT + '"}')
@example('{"title": 1e999, "text": 12345678901234567890}')
@example('{"title": "T", "text": "' + "9" * 5000 + '"}\n' + "9" * 5000)
def test_jsonl_parser_yields_only_papers_and_problems(text: str) -> None:
    items = list(parse_jsonl(text, "data.jsonl"))
    check_items(items, "data.jsonl", text)


CLEANABLE = ANY_TEXT.filter(lambda s: clean_text(s) != "")


@FAST
@given(
    st.lists(st.tuples(CLEANABLE, CLEANABLE), min_size=1, max_size=5),
    st.booleans(),
    st.sampled_from(["\n", "\r\n"]),
)
@example([("Title\u2028with a line separator", "Text\x85with NEL")], False, "\n")
@example([(ARABIC + "\u200f", HEBREW + "\u2029")], False, "\r\n")
def test_jsonl_round_trip(records: list[tuple[str, str]], ascii_only: bool, newline: str) -> None:
    """Whatever strings a JSON writer puts in a valid JSON Lines file come back, cleaned."""
    text = "".join(
        json.dumps({"title": t, "text": a}, ensure_ascii=ascii_only) + newline for t, a in records
    )
    items = list(parse_jsonl(text, "data.jsonl"))
    assert [x for x in items if isinstance(x, Problem)] == []
    assert [(p.title, p.abstract) for p in items] == [
        (clean_text(t), clean_text(a)) for t, a in records
    ]


# --- CSV --------------------------------------------------------------------------------------


@FAST
@given(
    st.one_of(ANY_TEXT, st.text().map(lambda t: "title,text\n" + t)), st.sampled_from([",", "\t"])
)
@example("title,text\n" + LONG_LINE + "," + LONG_ABSTRACT + "\n", ",")
@example('title,text\n"unterminated,' + "x" * 100, ",")
@example("ti\x00tle,text\nA\x00B,C\x00D\n", ",")
@example("\ufefftitle,text\nA,B\n", ",")
def test_csv_parser_yields_papers_problems_or_input_error(text: str, delimiter: str) -> None:
    try:
        items = list(parse_csv(text, "data.csv", delimiter=delimiter))
    except InputError as exc:
        assert str(exc).startswith("data.csv")
        assert "\n" not in str(exc) and "\r" not in str(exc)
        return
    check_items(items, "data.csv")


@FAST
@given(
    st.lists(st.tuples(CLEANABLE, CLEANABLE), min_size=1, max_size=5),
    # Python's writer quotes a field for the line terminator's characters only: with "\n" a
    # raw "\r" would go unquoted, so that terminator is written with every field quoted.
    st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL), ("\r\n", csv.QUOTE_ALL)]),
    st.sampled_from([",", "\t"]),
)
def test_csv_round_trip(
    rows: list[tuple[str, str]], dialect: tuple[str, int], delimiter: str
) -> None:
    newline, quoting = dialect
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=newline, delimiter=delimiter, quoting=quoting)
    writer.writerow(["title", "text"])
    writer.writerows(rows)
    items = list(parse_csv(buffer.getvalue(), "data.csv", delimiter=delimiter))
    assert [x for x in items if isinstance(x, Problem)] == []
    assert [(p.title, p.abstract) for p in items] == [
        (clean_text(t), clean_text(a)) for t, a in rows
    ]


# --- whole files: read_text + iter_file ---------------------------------------------------------

SUFFIXES = st.sampled_from([".txt", ".jsonl", ".csv", ".tsv", ".TSV", ".JSONL"])
ANY_BYTES = st.one_of(
    st.binary(max_size=2000),
    ANY_TEXT.map(lambda t: t.encode("utf-8")),
    ANY_TEXT.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),
    ANY_TEXT.map(lambda t: t.encode("utf-16")),
    ANY_TEXT.map(lambda t: t.encode("latin-1", errors="replace")),
    jsonl_text().map(lambda t: t.encode("utf-8")),
    # A NUL beyond the binary sniffing window reaches the parsers.
    st.tuples(ANY_TEXT, ANY_TEXT).map(
        lambda p: b"title,text\n" + b"a" * 9000 + p[0].encode() + b"\x00" + p[1].encode()
    ),
)


def read_file(data: bytes, suffix: str) -> list[Paper | Problem] | InputError:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        try:
            items = list(iter_file(path))
        except InputError as exc:
            assert str(exc).startswith(str(path)), exc
            assert "\n" not in str(exc)
            return exc
        check_items(items, str(path) if suffix.lower() != ".txt" else path.name)
        return items


@FAST
@given(ANY_BYTES, SUFFIXES)
@example(b"\x00" * 10, ".jsonl")
@example(b"\xef\xbb\xbf", ".csv")
@example(b"\xef\xbb\xbf\r\n\r\n", ".txt")
@example(b"[" * 100_000, ".jsonl")
@example(LONG_LINE.encode() + b"\n", ".txt")
@example(b"\xff\xfe" + "title".encode("utf-16-le"), ".csv")
def test_iter_file_on_arbitrary_bytes(data: bytes, suffix: str) -> None:
    read_file(data, suffix)


# --- explicit cases ---------------------------------------------------------------------------

ABSTRACT = "We study how sparse mixtures of experts route tokens. " * 5


@pytest.mark.parametrize(
    ("suffix", "body"),
    [
        (".txt", f"May 8\r\nRouting Experts\r\n\r\n{ABSTRACT}\r\n"),
        (".jsonl", json.dumps({"title": "Routing Experts", "text": ABSTRACT}) + "\r\n"),
        (".csv", f'title,text\r\nRouting Experts,"{ABSTRACT}"\r\n'),
    ],
)
def test_bom_changes_nothing(suffix: str, body: str) -> None:
    plain = read_file(body.encode(), suffix)
    with_bom = read_file(b"\xef\xbb\xbf" + body.encode(), suffix)
    assert isinstance(plain, list) and len(plain) == 1 and isinstance(plain[0], Paper)
    assert [(p.title, p.abstract) for p in with_bom] == [(p.title, p.abstract) for p in plain]
    assert plain[0].title == "Routing Experts"


def test_mixed_newlines_and_rtl_titles_in_one_listing_page() -> None:
    text = (
        f"\ufeffDaily Papers\r\nJul 30\r{ARABIC}\u200f\n{ABSTRACT}\r\n"
        f"{HEBREW}\r\r{ABSTRACT}\n\x00Pointer\x00Networks\r\n{ABSTRACT}"
    )
    items = list(parse_listing_page(text, "p.txt"))
    assert [(p.title, p.listings[0].date) for p in items] == [
        (ARABIC, "Jul 30"),
        (HEBREW, "Jul 30"),
        ("Pointer Networks", "Jul 30"),
    ]
    assert all(p.abstract == ABSTRACT.strip() for p in items)


def test_nul_beyond_the_binary_sniff_window_is_cleaned_or_a_problem_with_its_line() -> None:
    good = [json.dumps({"title": f"Paper {i}", "text": ABSTRACT}) for i in range(40)]
    assert len("\n".join(good)) > 8192
    data = ("\n".join(good) + '\n{"title": "Bad\x00", "text": "x"}\n' + good[0]).encode()
    items = read_file(data, ".jsonl")
    assert isinstance(items, list)
    problems = [x for x in items if isinstance(x, Problem)]
    assert [p.line for p in problems] == [41] and "not valid JSON" in problems[0].message
    assert len([x for x in items if isinstance(x, Paper)]) == 41

    page = ("Some Title\n" + ABSTRACT + "\n") * 40 + "Nul\x00Title\n" + ABSTRACT + "\n"
    papers = read_file(page.encode(), ".txt")
    assert isinstance(papers, list) and papers[-1].title == "Nul Title"


def test_deeply_nested_json_is_a_problem_not_a_crash() -> None:
    text = json.dumps({"title": "Fine", "text": ABSTRACT}) + "\n" + "[" * 100_000 + "\n"
    items = list(parse_jsonl(text, "deep.jsonl"))
    assert isinstance(items[0], Paper)
    assert isinstance(items[1], Problem) and items[1].line == 2


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_inside_json_strings_do_not_split_records(separator: str) -> None:
    record = {"title": f"Line{separator}Separated", "text": f"An{separator}abstract."}
    text = json.dumps(record, ensure_ascii=False) + "\n"
    assert [(p.title, p.abstract) for p in parse_jsonl(text, "x.jsonl")] == [
        ("Line Separated", "An abstract.")
    ]


def test_long_lines_are_read_whole_and_problems_stay_short() -> None:
    papers = list(parse_jsonl(json.dumps({"title": "T", "text": LONG_ABSTRACT}), "x.jsonl"))
    assert papers[0].abstract == LONG_ABSTRACT
    [problem] = parse_jsonl(json.dumps({"title": LONG_LINE}), "x.jsonl")
    assert isinstance(problem, Problem) and "has no abstract" in problem.message
    assert len(str(problem)) < 300  # one readable line, not 100k characters
    [page] = parse_listing_page("A Title\n" + LONG_ABSTRACT, "p.txt")
    assert isinstance(page, Paper) and page.abstract == LONG_ABSTRACT


def test_uppercase_tsv_suffix_is_read_as_tab_separated() -> None:
    items = read_file(f"title\ttext\nRouting Experts\t{ABSTRACT}\n".encode(), ".TSV")
    assert isinstance(items, list)
    assert [(p.title, p.abstract) for p in items] == [("Routing Experts", ABSTRACT.strip())]
