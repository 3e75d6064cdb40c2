from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rag.corpus import (
    Fields,
    Listing,
    Paper,
    Problem,
    iter_file,
    merge_papers,
    normalise_title,
    paper_id_for,
    parse_csv,
    parse_jsonl,
    parse_listing_page,
)
from rag.errors import InputError

ABSTRACT = (
    "The higher-order correlation clustering problem is an expressive model, and recently, local "
    "search heuristics have been proposed for several applications. Certifying optimality, however, "
    "is NP-hard and practically hampered already by the complexity of the problem statement. Here, "
    "we focus on establishing partial optimality conditions for the special case of complete graphs "
    "and cubic objective functions. In addition, we define and implement algorithms for testing "
    "these conditions and examine their effect numerically, on two datasets."
)
LONG = "word " * 60  # long enough to read as an abstract


@pytest.fixture(scope="module")
def corpus_items() -> list[Paper | Problem]:
    from rag.settings import PROJECT_ROOT

    files = sorted((PROJECT_ROOT / "index" / "corpus").glob("*.txt"))
    return [item for path in files for item in iter_file(path)]


def test_bundled_corpus_has_401_papers_from_484_listings(corpus_items: list) -> None:
    problems = [x for x in corpus_items if isinstance(x, Problem)]
    listings = [x for x in corpus_items if isinstance(x, Paper)]
    papers = merge_papers(listings)
    assert problems == []
    assert len(papers) == 401
    assert len(listings) == 484 == sum(len(p.listings) for p in papers.values())
    per_page = Counter(p.listings[0].source[:3] for p in listings)
    assert per_page == {"000": 66, "001": 232, "002": 60, "003": 73, "004": 53}
    assert Counter(len(p.listings) for p in papers.values()) == {1: 345, 2: 33, 3: 19, 4: 4}


def test_exact_title_abstract_and_dates(corpus_items: list) -> None:
    papers = merge_papers(x for x in corpus_items if isinstance(x, Paper))
    paper = papers[paper_id_for("Partial Optimality in Cubic Correlation Clustering")]
    assert paper.title == "Partial Optimality in Cubic Correlation Clustering"
    assert paper.abstract == ABSTRACT
    assert paper.listings == (Listing("001_09b46fd0036fc2b5.txt", None),)

    relax = papers[
        paper_id_for(
            "Learning to Relax: Setting Solver Parameters Across a Sequence of Linear System Instances"
        )
    ]
    assert [(x.source[:3], x.date) for x in relax.listings] == [
        ("000", "May 8"),
        ("001", None),
        ("002", "Mar 17"),
        ("003", "May 19"),
    ]
    first = next(x for x in corpus_items if isinstance(x, Paper))
    assert (
        first.title
        == "Fast Controlled Generation from Language Models with Adaptive Weighted Rejection Sampling"
    )
    assert first.abstract.startswith("The dominant approach to generating from language models")
    assert first.abstract.endswith("runtime improvements are greater for better models.")
    assert first.listings[0].date == "May 8"
    last = [x for x in corpus_items if isinstance(x, Paper)][-1]
    assert last.title.startswith("G-Rank: Unsupervised Continuous Learn-to-Rank")
    assert last.listings[0].date == "Jul 30"


def test_subscribe_glued_to_first_title(corpus_items: list) -> None:
    page = [
        x for x in corpus_items if isinstance(x, Paper) and x.listings[0].source.startswith("001")
    ]
    assert page[0].title == "Addition is All You Need for Energy-efficient Language Models"
    assert not any("Subscribe" in p.title for p in page)


def test_paper_id_is_stable_and_ignores_case_spacing_punctuation() -> None:
    assert (
        paper_id_for("Addition is All You Need for Energy-efficient Language Models")
        == "c29b02c43b5a"
    )
    assert (
        paper_id_for("addition is all you need  for energy efficient language models.")
        == "c29b02c43b5a"
    )
    assert normalise_title("  Pointer\u00a0Networks! ") == "pointer networks"
    assert paper_id_for("Pointer Networks") != paper_id_for("Pointer Network")


def test_listing_page_problems_name_the_line() -> None:
    text = f"Subscribe\n\nMay 8\n\nA Title\n\n{LONG}\n\nOrphan Title\n\nNext Title\n\n{LONG}\n\nLast Title\n"
    items = list(parse_listing_page(text, "page.txt"))
    papers = [x for x in items if isinstance(x, Paper)]
    problems = [str(x) for x in items if isinstance(x, Problem)]
    assert [p.title for p in papers] == ["A Title", "Next Title"]
    assert papers[0].listings == (Listing("page.txt", "May 8"),)
    assert problems == [
        "page.txt:9: title without an abstract: 'Orphan Title'",
        "page.txt:15: title without an abstract: 'Last Title'",
    ]


def test_listing_page_mixed_newlines_bom_and_controls() -> None:
    text = f"\ufeffA Title\r\n{LONG}\rB\x00 Title\n{LONG}"
    papers = [x for x in parse_listing_page(text, "p.txt") if isinstance(x, Paper)]
    assert [p.title for p in papers] == ["A Title", "B Title"]


def test_beir_jsonl_loads_without_conversion() -> None:
    text = '{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the brain."}\n'
    (paper,) = parse_jsonl(text, "corpus.jsonl")
    assert isinstance(paper, Paper)
    assert (paper.paper_id, paper.title, paper.abstract) == (
        "4983",
        "Microstructural development",
        "Alterations of the brain.",
    )


def test_jsonl_custom_fields_and_bad_records() -> None:
    text = "\n".join(
        [
            '{"name": "Good One", "body": "An abstract.", "key": "k1"}',
            '{"name": "", "body": "No title here."}',
            '{"name": "No Body"}',
            "{not json",
            "[1, 2]",
            "",
            '{"name": "Good Two", "body": "Another abstract."}',
        ]
    )
    items = list(parse_jsonl(text, "mine.jsonl", Fields(title="name", text="body", id="key")))
    papers = [x for x in items if isinstance(x, Paper)]
    problems = [str(x) for x in items if isinstance(x, Problem)]
    assert [(p.paper_id, p.title) for p in papers] == [
        ("k1", "Good One"),
        (paper_id_for("Good Two"), "Good Two"),
    ]
    assert problems[0] == "mine.jsonl:2: record has no title (field name)"
    assert problems[1] == "mine.jsonl:3: record 'No Body' has no abstract (field body)"
    assert problems[2].startswith("mine.jsonl:4: not valid JSON")
    assert problems[3] == "mine.jsonl:5: expected a JSON object with title and text fields"


def test_csv_loader_with_quoted_newlines_and_missing_column() -> None:
    text = 'title,abstract\n"A, title","An abstract\nover two lines."\nOnly Title,\n'
    items = list(parse_csv(text, "p.csv"))
    assert isinstance(items[0], Paper) and items[0].title == "A, title"
    assert items[0].abstract == "An abstract over two lines."
    assert (
        str(items[1])
        == "p.csv:4: record 'Only Title' has no abstract (field abstract/text/summary)"
    )
    with pytest.raises(InputError, match=r"p.csv:1: no title column .*found name, abstract"):
        list(parse_csv("name,abstract\nx,y\n", "p.csv"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "missing.txt: no such file or directory"),
        ("empty.jsonl", b"  \n\n", "empty.jsonl: file is empty"),
        ("blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "blob.txt: looks like a binary file"),
        (
            "latin1.txt",
            "Caf\u00e9 title\n".encode("latin-1"),
            "latin1.txt:1: not UTF-8 text (invalid byte 0xe9)",
        ),
        ("paper.pdf", b"%PDF-1.4", "paper.pdf: unknown file type '.pdf'"),
    ],
)
def test_unreadable_files_raise_input_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(
        InputError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
    ):
        list(iter_file(path))


def test_merge_keeps_every_listing_and_newest_text() -> None:
    a = Paper("x", "T", "old", (Listing("p1", "May 8"),))
    b = Paper("x", "T", "new", (Listing("p2", None),))
    merged = merge_papers([a, b, a])["x"]
    assert merged.abstract == "old"
    assert merged.listings == (Listing("p1", "May 8"), Listing("p2", None))


def test_jsonl_is_streamed_in_constant_memory(tmp_path: Path) -> None:
    """A JSON Lines file is read line by line: memory does not grow with the file."""
    import json
    import tracemalloc

    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(20_000):
            out.write(json.dumps({"id": f"p{i}", "title": f"Paper {i}", "abstract": "x " * 200}))
            out.write("\n")
    assert path.stat().st_size > 8_000_000
    tracemalloc.start()
    try:
        count = sum(1 for item in iter_file(path) if isinstance(item, Paper))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 1_000_000  # the file is 8 MB


def test_a_bad_line_deep_in_a_streamed_file_is_named_after_the_papers_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.jsonl"
    good = b'{"title": "Good paper", "abstract": "Fine text."}\n'
    path.write_bytes(good * 2 + b'{"title": "Caf\xe9", "abstract": "x"}\n' + good)
    items = iter_file(path)
    assert [p.title for p in (next(items), next(items))] == ["Good paper", "Good paper"]
    with pytest.raises(InputError, match=r"mixed.jsonl:3: not UTF-8 text \(invalid byte 0xe9\)"):
        next(items)


def test_streamed_jsonl_counts_lines_as_the_text_parser_does(tmp_path: Path) -> None:
    text = '{"title": "A", "text": "a"}\r\n\r\n{"title": "B"}\r{"title": "C", "text": "c"}\n{x\n'
    path = tmp_path / "lines.jsonl"
    path.write_bytes(text.encode())
    streamed = [
        (i.line, i.message[:20]) if isinstance(i, Problem) else i.title for i in iter_file(path)
    ]
    parsed = [
        (i.line, i.message[:20]) if isinstance(i, Problem) else i.title
        for i in parse_jsonl(text, str(path))
    ]
    assert (
        streamed == parsed == ["A", (3, "record 'B' has no ab"), "C", (5, "not valid JSON (JSON")]
    )
