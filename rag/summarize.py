"""Cited summaries: a topic overview (map over papers, reduce into themes) or one paper's summary.

The overview retrieves more papers than an answer does, keeps those whose abstracts really
speak to the topic (sentence evidence, as for answers), summarises each paper's contribution
concurrently (map), then writes intro, themes and open problems citing `[n]` (reduce). As for
answers, citation numbers that name no paper are dropped and reported, and the reference list
holds exactly the cited papers. Without an LLM the overview is extractive.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import prompts
from rag.answer import (
    NOT_COVERED,
    Cited,
    Source,
    as_data,
    attribute,
    capped,
    number_sources,
    quoted,
    resolve_citations,
    split_sentences,
    weigh_evidence,
)
from rag.claims import CITATION, Checker, Claim, citation_numbers
from rag.corpus import normalise_title
from rag.embed import embed_cached
from rag.errors import InputError
from rag.support import Evidence

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.llm import LLM
    from rag.retrieve import Retriever
    from rag.settings import Settings

RELATIVE_MARGIN = 0.20  # a paper this far below the best evidence is not on the topic
GROUP_SIMILARITY = 0.55  # extractive themes: a key sentence joins a theme this close to it
NEAR_TITLE = 0.85  # difflib ratio at which a title is taken as meant
CANDIDATE_TITLE = 0.40  # below this a title is not even offered as a candidate
EXTRACTIVE_OVERVIEW = (
    "Extractive overview (no LLM configured): the key sentence of each paper, grouped by "
    "similarity."
)
EXTRACTIVE_LABEL = f"_{EXTRACTIVE_OVERVIEW}_"
Progress = Callable[[int, int], None]


@dataclass
class SummaryPaper:
    n: int
    paper_id: str
    title: str
    one_line: str
    """What the paper contributes to the topic (the LLM's line, or its key sentence)."""
    evidence: Evidence | None = None
    """The paper's span closest to `one_line`, and the support it gives it."""
    verdict: str = "supported"

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in ("n", "paper_id", "title", "one_line")}
        data["verdict"] = self.verdict
        data["evidence"] = None if self.evidence is None else self.evidence.to_json()
        return data


@dataclass
class Summary(Cited):
    topic: str
    summary: str
    """The overview, then the reference list of the cited papers."""
    papers: list[SummaryPaper]
    overview: str = ""
    """The overview alone (what the claims' offsets point into)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "summary": self.summary,
            "mode": self.mode,
            "citations": self.cited_json,
            "papers": [p.to_json() for p in self.papers],
            "dropped_citations": self.dropped_citations,
            "note": self.note,
            **self.claims_json(),
        }


def select_papers(
    topic: str, settings: Settings, retriever: Retriever, embedder: Embedder, max_papers: int
) -> list[Source]:
    """Up to `max_papers` papers on `topic`, weak matches dropped, numbered from 1."""
    papers = retriever.search(topic, max_papers)
    retriever.attach_texts(papers)
    sources = number_sources(papers)
    if not sources:
        return []
    best = weigh_evidence(topic, sources, embedder)
    floor = max(settings.summary_min_relevance, best - RELATIVE_MARGIN)
    kept = [s for s in sources if (s.evidence or 0.0) >= floor]
    for n, source in enumerate(kept, start=1):
        source.n = n
    return kept


def references(cited: Sequence[Source]) -> str:
    lines = [f"[{s.n}] {s.title} <{s.url}>" for s in sorted(cited, key=lambda s: s.n)]
    return "**References**\n\n" + "  \n".join(lines)  # Markdown line breaks between entries


@dataclass
class Writing:
    """What a summary is written with: the sources it may cite, the settings, the embedder
    that checks its claims, the LLM (None: extractive)."""

    sources: list[Source]
    settings: Settings
    embedder: Embedder
    llm: LLM | None = None


def finished(
    topic: str,
    text: str,
    papers: list[SummaryPaper],
    writing: Writing,
    dropped: Sequence[int] = (),
) -> Summary:
    """The summary: `text` checked claim by claim (and re-cited where another paper supports a
    claim clearly better), each paper's line checked against the paper, then the reference
    list of exactly the cited papers."""
    sources, llm = writing.sources, writing.llm
    text, claims = attribute(text, sources, writing.embedder, writing.settings, llm)
    check_lines(papers, sources, writing.embedder)
    by_n = {s.n: s for s in sources}
    cited = [by_n[n] for n in citation_numbers(text) if n in by_n]
    body = f"{text}\n\n{references(cited)}" if cited else text
    mode = "llm" if llm is not None else "extractive"
    summary = Summary(
        topic, body, papers, text, mode=mode, citations=cited, dropped_citations=list(dropped)
    )
    summary.claims = claims
    return summary


def check_lines(papers: list[SummaryPaper], sources: Sequence[Source], embedder: Embedder) -> None:
    """Each paper's line against its own abstract: its evidence and verdict."""
    bodies = {s.n: s.body for s in sources}
    claims = [Claim(p.one_line, [p.n]) for p in papers if p.n in bodies]
    Checker(bodies, embedder).score(claims, repair=False)
    for paper, claim in zip([p for p in papers if p.n in bodies], claims, strict=True):
        paper.evidence = claim.evidence[0] if claim.evidence else None
        paper.verdict = claim.verdict


def map_papers(
    topic: str,
    sources: Sequence[Source],
    llm: LLM,
    settings: Settings,
    on_progress: Progress | None,
) -> list[str]:
    """Each paper's contribution to `topic`, one LLM call per paper, `llm_concurrency` at a time."""
    done = 0

    def one(source: Source) -> str:
        nonlocal done
        content = prompts.render(
            "summary_map",
            topic=topic,
            title=as_data(source.title[:500]),
            abstract=as_data(capped(source.body, settings.source_chars)),
        )
        text = " ".join(llm.complete([{"role": "user", "content": content}]).split())
        done += 1
        if on_progress:
            on_progress(done, len(sources))
        text = CITATION.sub("", text)  # no stray markers
        return re.sub(r"\s+([.,;:])", r"\1", text).strip()

    with ThreadPoolExecutor(
        max_workers=max(1, min(settings.llm_concurrency, len(sources)))
    ) as pool:
        return list(pool.map(one, sources))


def llm_overview(topic: str, writing: Writing, llm: LLM, on_progress: Progress | None) -> Summary:
    sources, settings = writing.sources, writing.settings
    lines = map_papers(topic, sources, llm, settings, on_progress)
    listing = "\n".join(
        f"[{s.n}] {as_data(s.title)}\n{as_data(line)}"
        for s, line in zip(sources, lines, strict=True)
    )
    messages = [
        {"role": "system", "content": prompts.render("summary_system")},
        {"role": "user", "content": prompts.render("summary_reduce", topic=topic, papers=listing)},
    ]
    text, _, dropped = resolve_citations(llm.complete(messages), sources)
    papers = [
        SummaryPaper(s.n, s.paper_id, s.title, line) for s, line in zip(sources, lines, strict=True)
    ]
    return finished(topic, text, papers, writing, dropped)


def extractive_overview(topic: str, writing: Writing) -> Summary:
    """The key sentence of each paper (closest to the topic), grouped by similarity."""
    sources = writing.sources
    vectors = embed_cached(writing.embedder, [s.question_quote or s.body for s in sources])
    groups: list[list[int]] = []
    for i in range(len(sources)):
        for group in groups:
            centroid = vectors[group].mean(axis=0)
            if float(vectors[i] @ centroid / (np.linalg.norm(centroid) or 1.0)) >= GROUP_SIMILARITY:
                group.append(i)
                break
        else:
            groups.append([i])
    parts = [EXTRACTIVE_LABEL]
    for number, group in enumerate(groups, start=1):
        cites = "".join(f"[{sources[i].n}]" for i in group)
        parts.append(
            f"**Theme {number}** {cites}\n\n"
            + "\n".join(f"- {quoted(sources[i].question_quote)} [{sources[i].n}]" for i in group)
        )
    papers = [SummaryPaper(s.n, s.paper_id, s.title, quoted(s.question_quote)) for s in sources]
    return finished(topic, "\n\n".join(parts), papers, writing)


def summarize_topic(
    topic: str,
    settings: Settings,
    retriever: Retriever,
    embedder: Embedder,
    llm: LLM | None,
    max_papers: int,
    on_progress: Progress | None = None,
) -> Summary:
    """The cited overview of `topic`; the refusal when no paper speaks to it."""
    sources = select_papers(topic, settings, retriever, embedder, max_papers)
    if not sources:
        mode = "llm" if llm else "extractive"
        refused = f"{NOT_COVERED}."
        return Summary(topic, refused, [], refused, mode=mode, citations=[])
    writing = Writing(sources, settings, embedder, llm)
    if llm is None:
        return extractive_overview(topic, writing)
    return llm_overview(topic, writing, llm, on_progress)


# ---------------------------------------------------------------- one paper


def find_paper(query: str, retriever: Retriever) -> Source:
    """The paper named by id or title; a close title is accepted, else candidates are listed."""
    by_id = retriever.papers_by_id([query.strip()])
    if by_id:
        return number_sources(by_id)[0]
    wanted = normalise_title(query)
    candidates = retriever.search(query, 10)
    scored = sorted(
        (
            (difflib.SequenceMatcher(None, wanted, normalise_title(p.title)).ratio(), p)
            for p in candidates
        ),
        key=lambda pair: -pair[0],
    )
    if scored and scored[0][0] >= NEAR_TITLE:
        paper = scored[0][1]
        retriever.attach_texts([paper])
        return number_sources([paper])[0]
    close = [p.title for ratio, p in scored[:3] if ratio >= CANDIDATE_TITLE]
    if close:
        raise InputError(f"no paper titled {query!r}; closest: " + "; ".join(close))
    raise InputError(f"no paper titled {query!r} (and no id) in the collection")


LIMITATION = re.compile(
    r"\b(however|limit\w*|fail\w*|cannot|can't|only|struggl\w*|drawback\w*|future work)\b", re.I
)
NUMBER = re.compile(r"\d")


def extractive_paper(source: Source) -> str:
    sentences = [quoted(s) for s in split_sentences(source.body) or [source.body]]
    results = [s for s in sentences[1:] if NUMBER.search(s)][:3]
    limits = [s for s in sentences if LIMITATION.search(s)][:2]
    method = next((s for s in sentences[1:] if s not in results), "")
    parts = [
        "_Extractive summary (no LLM configured): sentences of the abstract._",
        f"**Problem** {sentences[0]} [1]",
        f"**Method** {method} [1]" if method else "",
        "**Results** "
        + (" ".join(results) + " [1]" if results else "_The abstract gives no numbers._"),
        "**Limitations** "
        + (" ".join(limits) + " [1]" if limits else "_The abstract states none._"),
    ]
    return "\n\n".join(p for p in parts if p)


def summarize_paper(
    query: str, settings: Settings, retriever: Retriever, embedder: Embedder, llm: LLM | None
) -> Summary:
    source = find_paper(query, retriever)
    source.n = 1
    if llm is None:
        text, dropped = extractive_paper(source), []
    else:
        content = prompts.render(
            "summary_paper",
            title=as_data(source.title[:500]),
            abstract=as_data(capped(source.body, settings.source_chars)),
        )
        messages = [{"role": "user", "content": content}]
        text, _, dropped = resolve_citations(llm.complete(messages), [source])
    one_line = (split_sentences(source.body) or [source.body])[0]
    papers = [SummaryPaper(1, source.paper_id, source.title, one_line)]
    writing = Writing([source], settings, embedder, llm)
    return finished(source.title, text, papers, writing, dropped)
