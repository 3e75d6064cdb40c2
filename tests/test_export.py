"""Export: answers as Markdown with numbered references per answer, cited papers as BibTeX,
and the same from `rag ask --format md|bib`."""

from __future__ import annotations

import re
from pathlib import Path

from rag.answer import NOT_COVERED, Answer, Source
from rag.claims import Claim
from rag.export import answer_markdown, bibtex, cited_bibtex, conversation_markdown
from rag.settings import Settings
from tests.helpers import run_rag

LMUL_TITLE = "Addition is All You Need for Energy-efficient Language Models"
LMUL_QUESTION = "How does L-Mul replace floating point multiplication?"
ENTRY = re.compile(r"@misc\{(?P<key>[^,\s]+),\n(?P<body>(?:  \w+ = \{.*\},?\n)+)\}\n")


def source(n: int, title: str, url: str = "", dates: list[str] | None = None) -> Source:
    paper_id = re.sub(r"\W+", "-", title.lower())
    return Source(n, paper_id, title, "snippet", 0.9, dates or [], url=url)


def answer(
    question: str,
    text: str,
    citations: list[Source],
    claims: list[Claim] | None = None,
    note: str | None = None,
    truncated: str | None = None,
) -> Answer:
    found = Answer(question, text, citations, mode="llm", citations=citations, note=note)
    found.claims, found.truncated = claims or [], truncated
    return found


def entries(text: str) -> dict[str, str]:
    """BibTeX entries by key; the whole text must be entries and blank lines."""
    found = {m["key"]: m["body"] for m in ENTRY.finditer(text)}
    assert ENTRY.sub("", text).strip() == "", text
    return found


def test_answer_markdown_numbers_its_references_and_keeps_flags() -> None:
    lion = source(
        2, "Symbolic Discovery of Optimization Algorithms", "https://arxiv.org/abs/2302.06675"
    )
    ptr = source(1, "Pointer [Networks]", "https://example.org/a b", ["May 8"])
    text = "Lion tracks only momentum [2]. Pointer networks sort numbers [1]."
    unsupported = Claim("Pointer networks sort numbers [1].", [1], verdict="unsupported")
    unsupported.start = text.index("Pointer")
    unsupported.end = len(text)
    found = answer(
        "Which optimizer?", text, [lion, ptr], claims=[unsupported], note="Extractive *note*"
    )
    md = answer_markdown(found)
    assert md.startswith("### Q: Which optimizer?\n\n")
    assert "numbers [1]. (⚠ not supported by [1])" in md
    assert "\n*Extractive \\*note\\**\n" in md
    references = md.split("**References**\n\n")[1].splitlines()
    assert references == [
        "- [2] [Symbolic Discovery of Optimization Algorithms](https://arxiv.org/abs/2302.06675)",
        "- [1] [Pointer \\[Networks\\]](https://example.org/a%20b) (May 8, no year on the "
        "listing page)",
    ]
    assert answer_markdown(found, heading="## Turn 1").startswith("## Turn 1\n\n")


def test_a_refusal_has_no_references() -> None:
    cited = source(1, "Pointer Networks", "https://example.org/p")
    refused = answer("Banana bread?", f"{NOT_COVERED}.", [cited], truncated="cut at 600 tokens")
    md = answer_markdown(refused)
    assert NOT_COVERED in md and "*cut at 600 tokens*" in md
    assert "References" not in md and "Pointer Networks" not in md
    assert cited_bibtex([refused]) == ""


def test_conversation_keeps_references_per_answer() -> None:
    first = answer("Q one?", "Lion [1].", [source(1, "Lion paper", "https://example.org/l")])
    second = answer(
        "Q two?", "Pointers [1].", [source(1, "Pointer paper", "https://example.org/p")]
    )
    md = conversation_markdown([first, second])
    assert md.startswith("# Literature assistant conversation\n\n### Q: Q one?")
    one, two = md.split("### Q: Q two?")
    assert "- [1] [Lion paper](https://example.org/l)" in one and "Pointer paper" not in one
    assert "- [1] [Pointer paper](https://example.org/p)" in two and "Lion paper" not in two


def test_bibtex_escapes_titles_and_reads_arxiv_ids() -> None:
    papers = [
        source(1, "Rock & Roll of {Sparse}_Attention 100%", "https://arxiv.org/abs/2410.00907"),
        source(2, "The Pointer Networks", "https://example.org/p", ["2015-06-09"]),
        source(3, "Old Paper", "https://arxiv.org/abs/hep-th/9901001v2"),
    ]
    found = entries(bibtex(papers))
    assert list(found) == ["rock2024", "pointer2015", "old1999"]
    rock = found["rock2024"]
    assert r"title = {{Rock \& Roll of \{Sparse\}\_Attention 100\%}}" in rock
    assert "year = {2024}" in rock and "eprint = {2410.00907}" in rock
    assert "archivePrefix = {arXiv}" in rock and "url = {https://arxiv.org/abs/2410.00907}" in rock
    assert "year = {2015}" in found["pointer2015"] and "eprint" not in found["pointer2015"]
    assert "eprint = {hep-th/9901001v2}" in found["old1999"]


def test_bibtex_keys_are_unique_and_papers_distinct() -> None:
    first = source(1, "Addition is all you need", "https://arxiv.org/abs/2410.00907")
    second = source(2, "Addition makes it cheaper", "https://arxiv.org/abs/2410.12345")
    untitled = source(3, "On the", "https://example.org/x")
    again = answer("Q?", "[1] [2] [3]", [first, second, untitled])
    found = entries(cited_bibtex([again, again]))
    assert list(found) == ["addition2024a", "addition2024b", "on"]


def test_ask_format_md_and_bib(corpus_settings: Settings) -> None:
    md = run_rag("ask", LMUL_QUESTION, "--no-llm", "--format", "md")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith(f"### Q: {LMUL_QUESTION}")
    assert "**References**" in md.stdout and f"[{LMUL_TITLE}](https://" in md.stdout
    bib = run_rag("ask", LMUL_QUESTION, "--no-llm", "--format", "bib")
    assert bib.returncode == 0, bib.stderr
    found = entries(bib.stdout)
    assert found and all("title = {" in e and "url = {" in e for e in found.values())
    assert any(LMUL_TITLE in e for e in found.values())


def test_ask_bib_of_a_refusal_prints_nothing(corpus_settings: Settings) -> None:
    result = run_rag(
        "ask", "What is the best recipe for banana bread?", "--no-llm", "--format", "bib"
    )
    assert result.returncode == 0 and result.stdout == ""
    assert (
        result.stderr.strip().splitlines()[-1]
        == "rag: the answer cites no papers: no BibTeX to print"
    )


def test_format_and_json_conflict_is_a_usage_error() -> None:
    result = run_rag("ask", "Which optimizer?", "--format", "bib", "--json")
    assert result.returncode == 2
    assert "Error: --json and --format bib conflict" in result.stderr
    assert "Traceback" not in result.stderr


def test_listing_dates_without_a_year_say_so_everywhere_they_are_shown() -> None:
    from ui.render import render_sources

    dated = source(1, "Dated", "https://arxiv.org/abs/2401.00001", ["2024-01-05"])
    undated = source(2, "Undated", "https://example.org/u", ["May 8", "Mar 17"])
    found = answer("q?", "Dated says so [1]. Undated too [2].", [dated, undated])
    panel = render_sources(found)
    assert "listed 2024-01-05\n" in panel or "listed 2024-01-05 " in panel
    assert "listed Mar 17, May 8, no year on the listing page" in panel
    assert "(Mar 17, May 8, no year on the listing page)" in answer_markdown(found)


def test_the_ui_download_files_of_old_answers_are_removed(tmp_path, monkeypatch) -> None:
    import os

    import ui.app

    monkeypatch.setattr(ui.app, "EXPORTS", tmp_path / "exports")
    found = answer(
        "q?", "L-Mul adds [1].", [source(1, "L-Mul", "https://arxiv.org/abs/2410.00907")]
    )
    first, bib = ui.app.saved([found])
    assert Path(first).read_text().startswith("# ") and Path(bib).read_text().startswith("@")
    old = Path(first).parent
    os.utime(old, (0, 0))  # an hour and more ago
    second, _ = ui.app.saved([found])
    assert Path(second).exists() and not old.exists()
    assert ui.app.saved([]) == (None, None)
