"""Cited summaries against the loopback LLM server and the real corpus index."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rag import api
from rag.corpus import paper_url
from rag.retrieve import get_retriever
from rag.settings import Settings
from tests.fake_llm import FakeLLM
from tests.helpers import run_rag

TOPIC = "datasets and benchmarks for medical image segmentation"
MAP_MARK = "In one or two sentences"


def llm_settings(settings: Settings, fake: FakeLLM) -> Settings:
    return Settings(
        index_dir=settings.index_dir,
        openai_api_key="sk-sum-test",
        openai_base_url=fake.base_url,
        llm_model="fake",
        llm_max_retries=0,
    )


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0].rstrip(".")


def summary_llm(body: dict[str, Any]) -> str:
    """Map: the abstract's first sentence with a stray [7]. Reduce: the papers' own lines, cited,
    plus a [99] that names no paper: grounded text, so the overview is kept."""
    prompt = body["messages"][-1]["content"]
    if MAP_MARK in prompt:
        abstract = re.search(r"Abstract: (.*)", prompt).group(1)
        return f"{first_sentence(abstract)} [7]."  # a stray marker the map step must not keep
    lines = re.findall(r"^\[(\d+)\] .*\n(.*)$", prompt, flags=re.M)
    (n0, line0), (n1, line1) = lines[0], lines[1]
    return (
        f"{line0.rstrip('.')} [{n0}]. **Benchmarks** {line1.rstrip('.')} [{n1}][99]. "
        f"**Open problems** {line0.rstrip('.')} [{n0}]."
    )


def test_map_reduce_carries_the_abstracts_and_cites_the_right_titles(
    corpus_settings: Settings, fake_llm: FakeLLM
) -> None:
    fake_llm.default = summary_llm
    fake_llm.delay = 0.3  # requests overlap only if the map step is concurrent
    settings = llm_settings(corpus_settings, fake_llm)
    summary = api.summarize(TOPIC, settings, max_papers=6)

    assert summary.mode == "llm" and 2 <= len(summary.papers) <= 6
    maps = [r for r in fake_llm.chat_requests() if MAP_MARK in r["body"]["messages"][-1]["content"]]
    assert len(maps) == len(summary.papers)
    retriever = get_retriever(settings)
    for paper in summary.papers:
        (full,) = retriever.papers_by_id([paper.paper_id])
        prompt = next(
            m["body"]["messages"][-1]["content"]
            for m in maps
            if f"Title: {paper.title}\n" in m["body"]["messages"][-1]["content"]
        )
        assert f"Abstract: {full.text}" in prompt  # the whole abstract, not a snippet
        assert paper.one_line == first_sentence(full.text) + "."  # stray [7] removed
    assert fake_llm.max_in_flight >= 2

    reduce = fake_llm.chat_requests()[-1]["body"]["messages"]
    for paper in summary.papers:
        assert f"[{paper.n}] {paper.title}\n{paper.one_line}" in reduce[-1]["content"]
    by_n = {p.n: p.title for p in summary.papers}
    assert [(c.n, c.title) for c in summary.citations] == [(1, by_n[1]), (2, by_n[2])]
    assert summary.dropped_citations == [99] and "[99]" not in summary.summary
    refs = summary.summary.split("**References**", 1)[1]
    assert re.findall(r"^\[(\d+)\] (.*?) <(https://\S+)>\s*$", refs, flags=re.M) == [
        ("1", by_n[1], paper_url(by_n[1])),
        ("2", by_n[2], paper_url(by_n[2])),
    ]  # exactly the cited papers, each with its link

    data = summary.to_json()
    assert set(data) >= {"topic", "summary", "citations", "papers", "dropped_citations"}
    assert data["citations"][0] == {
        "n": 1,
        "paper_id": summary.papers[0].paper_id,
        "title": by_n[1],
        "url": paper_url(by_n[1]),
    }
    assert {"n", "paper_id", "title", "one_line"} <= set(data["papers"][0])


def test_extractive_overview_without_an_llm(corpus_settings: Settings) -> None:
    summary = api.summarize(TOPIC, corpus_settings, max_papers=6)
    assert summary.mode == "extractive" and summary.summary.startswith("_Extractive overview")
    assert "Lumbar spine segmentation in MR images: a dataset and a public benchmark" in [
        p.title for p in summary.papers
    ]
    cited = {c.n for c in summary.citations}
    assert cited == {p.n for p in summary.papers}  # one key sentence per paper
    for paper in summary.papers:
        assert f"{paper.one_line} [{paper.n}]" in summary.summary
    assert "**References**" in summary.summary and "Theme 1" not in summary.summary
    headings = re.findall(r"^\*\*(.+?)\*\* (?:\[\d+\])+$", summary.summary, flags=re.M)
    assert headings and all(len(h) > 3 for h in headings)  # named from their papers


def test_an_uncovered_topic_is_refused(corpus_settings: Settings) -> None:
    summary = api.summarize("sourdough bread fermentation and baking", corpus_settings)
    assert summary.papers == [] and summary.citations == []
    assert "does not cover" in summary.summary


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("Pointer Networks", "Pointer Networks"),
        ("pointer network", "Pointer Networks"),  # close, not exact
        (
            "Symbolic discovery of optimisation algorithms",
            "Symbolic Discovery of Optimization Algorithms",
        ),
    ],
)
def test_paper_summary_by_exact_or_near_title(
    corpus_settings: Settings, query: str, title: str
) -> None:
    proc = run_rag("summarize", "--paper", query, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["topic"] == title and data["mode"] == "extractive"
    assert data["citations"] == [
        {"n": 1, "paper_id": data["papers"][0]["paper_id"], "title": title, "url": paper_url(title)}
    ]
    assert "**Method**" in data["summary"] and "**Limitations**" in data["summary"]


def test_paper_summary_through_the_llm(corpus_settings: Settings, fake_llm: FakeLLM) -> None:
    fake_llm.reply(
        "**Problem** Existing sequence models cannot handle output dictionaries whose size "
        "depends on the input [1]. **Method** Pointer networks use attention as a pointer to "
        "select a member of the input sequence as the output [1][2]. **Results** They learn "
        "approximate solutions to convex hulls, Delaunay triangulations and the travelling "
        "salesman problem [1]. **Limitations** None stated [1]."
    )
    summary = api.summarize_paper("Pointer Networks", llm_settings(corpus_settings, fake_llm))
    (request,) = fake_llm.chat_requests()
    assert "Title: Pointer Networks\n" in request["body"]["messages"][-1]["content"]
    assert [c.title for c in summary.citations] == ["Pointer Networks"]
    assert summary.dropped_citations == [2]
    assert summary.summary.endswith(f"[1] Pointer Networks <{paper_url('Pointer Networks')}>")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--paper", "Zymurgy of interstellar quasicrystal bakeries"], "no paper titled"),
        ([], "give a TOPIC or --paper TITLE"),
        (["topic", "--paper", "x"], "give a TOPIC or --paper TITLE"),
    ],
)
def test_summarize_usage_errors(corpus_settings: Settings, args: list[str], message: str) -> None:
    proc = run_rag("summarize", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_summary_says_what_it_considered_and_why_papers_were_left_out(
    corpus_settings: Settings,
) -> None:
    summary = api.summarize(
        "low-precision arithmetic for energy-efficient language models", corpus_settings, 8
    )
    data = summary.to_json()
    assert data["considered"] == len(data["papers"]) + len(data["left_out"]) == 8
    assert data["left_out"], "the topic retrieves papers it should not cover"
    for paper in data["left_out"]:
        assert paper["title"] and re.search(r"scores 0\.\d\d, below the 0\.\d\d", paper["why"])
    assert summary.coverage_note().startswith("Considered 8 papers, covered ")
    proc = run_rag("summarize", "low-precision arithmetic for energy-efficient language models")
    assert proc.returncode == 0 and "Left out: " in proc.stderr
