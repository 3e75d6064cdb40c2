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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import prompts
from rag.answer import (
    NOT_COVERED,
    Cited,
    Source,
    attribute,
    capped,
    number_sources,
    quoted,
    split_sentences,
    weigh_evidence,
)
from rag.claims import CITATION, Checker, Claim, citation_numbers, grounded, resolve_citations
from rag.corpus import normalise_title
from rag.embed import embed_cached
from rag.errors import InputError
from rag.generation import fit, fitted_call, generate, room
from rag.parts import extractive_paper, theme_name
from rag.prompts import as_data
from rag.support import Evidence

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.generation import Generated
    from rag.llm import LLM
    from rag.retrieve import Retriever
    from rag.settings import Settings

RELATIVE_MARGIN = 0.20  # a paper this far below the best evidence is not on the topic
GROUP_SIMILARITY = 0.55  # extractive themes: a key sentence joins a theme this close to it
NEAR_TITLE = 0.85  # difflib ratio at which a title is taken as meant
CANDIDATE_TITLE = 0.40  # below this a title is not even offered as a candidate
EXTRACTIVE_OVERVIEW = "Extractive overview: the key sentence of each paper, grouped by similarity."
EXTRACTIVE_LABEL = f"_{EXTRACTIVE_OVERVIEW}_"
NO_LLM_NOTE = (
    "No LLM configured, so the summary quotes the abstracts. For written summaries set "
    "OPENAI_API_KEY (and OPENAI_BASE_URL for a local server) and RAG_LLM_MODEL."
)
CHOSEN_NOTE = "Extractive summary (--no-llm): sentences quoted from the abstracts."
UNGROUNDED_NOTE = (
    "The model's summary was not grounded in the papers (too few of its claims are supported "
    "by the papers they cite), so this is the extractive summary. The model's text is kept as "
    "model_summary in JSON."
)
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
    model_summary: str | None = None
    """The model's text when it was not grounded and the extractive summary replaced it."""
    considered: int = 0
    """Papers the search returned for the topic (covered and left out)."""
    left_out: list[dict[str, Any]] = field(default_factory=list)
    """Papers retrieved but not covered: title, paper_id, evidence, and why."""

    def coverage_note(self) -> str:
        """How many papers were considered and why each one left out was."""
        if not self.left_out:
            return ""
        reasons = "; ".join(f"{p['title']}: {p['why']}" for p in self.left_out)
        used = self.considered - len(self.left_out)
        return f"Considered {self.considered} papers, covered {used}. Left out: {reasons}."

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "summary": self.summary,
            "mode": self.mode,
            "citations": self.cited_json,
            "papers": [p.to_json() for p in self.papers],
            "dropped_citations": self.dropped_citations,
            "note": self.note,
            "model_summary": self.model_summary,
            "considered": self.considered,
            "left_out": self.left_out,
            **self.claims_json(),
        }


def select_papers(
    topic: str, settings: Settings, retriever: Retriever, embedder: Embedder, max_papers: int
) -> tuple[list[Source], list[dict[str, Any]]]:
    """Up to `max_papers` papers on `topic` numbered from 1, and those retrieved but left out
    (weak matches), each with why: its best passage's evidence and the bar it missed."""
    papers = retriever.search(topic, max_papers)
    retriever.attach_texts(papers)
    sources = number_sources(papers)
    if not sources:
        return [], []
    best = weigh_evidence(topic, sources, embedder)
    floor = max(settings.summary_min_relevance, best - RELATIVE_MARGIN)
    kept = [s for s in sources if (s.evidence or 0.0) >= floor]
    left_out = [
        {
            "title": s.title,
            "paper_id": s.paper_id,
            "evidence": round(s.evidence or 0.0, 3),
            "why": (
                f"its closest passage scores {s.evidence or 0.0:.2f}, below the "
                + (
                    f"{settings.summary_min_relevance:.2f} a paper needs "
                    "(RAG_SUMMARY_MIN_RELEVANCE)"
                    if floor == settings.summary_min_relevance
                    else f"{floor:.2f} that is {RELATIVE_MARGIN:.2f} under the best paper's "
                    f"{best:.2f}"
                )
            ),
        }
        for s in sources
        if s not in kept
    ]
    for n, source in enumerate(kept, start=1):
        source.n = n
    return kept, left_out


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

        budget = (settings.summary_map_tokens, "RAG_SUMMARY_MAP_TOKENS")
        reply = paper_call(llm, settings, source, "summary_map", "paper line", budget, topic=topic)
        text = " ".join(reply.text.split())
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
    papers = [
        SummaryPaper(s.n, s.paper_id, s.title, line) for s, line in zip(sources, lines, strict=True)
    ]
    # A line its paper does not back is replaced by the paper's own key sentence before the
    # overview is written from the lines.
    check_lines(papers, sources, writing.embedder)
    for paper, source in zip(papers, sources, strict=True):
        if paper.verdict == "unsupported" or not paper.one_line:
            paper.one_line = quoted(source.question_quote)

    def build(kept: int, chars: int) -> list[dict[str, str]]:
        listing = "\n".join(
            f"[{s.n}] {as_data(s.title[:500])}\n{as_data(p.one_line[:chars])}"
            for s, p in zip(sources[:kept], papers, strict=False)
        )
        user = prompts.render("summary_reduce", topic=topic, papers=listing)
        return [
            {"role": "system", "content": prompts.render("summary_system")},
            {"role": "user", "content": user},
        ]

    def attempt() -> tuple[int, Generated]:
        budget, max_tokens = room(llm, settings.summary_reduce_tokens)
        fitted = fit(build, len(sources), settings.source_chars, budget)
        what, setting = "overview", "RAG_SUMMARY_REDUCE_TOKENS"
        return fitted.kept, generate(llm, fitted.messages, max_tokens, what=what, setting=setting)

    kept, reply = fitted_call(llm, attempt)
    text, _, dropped = resolve_citations(reply.text, sources[:kept])
    summary = finished(topic, text, papers, writing, dropped)
    summary.note = reply.truncated
    return summary if grounded(c.verdict for c in summary.claims) else ungrounded(summary, writing)


def ungrounded(summary: Summary, writing: Writing) -> Summary:
    """The extractive summary in place of a model's summary its papers do not back."""
    fallback = extractive_overview(
        summary.topic, Writing(writing.sources, writing.settings, writing.embedder, None)
    )
    fallback.note, fallback.model_summary = UNGROUNDED_NOTE, summary.overview
    return fallback


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
    for group in groups:
        cites = "".join(f"[{sources[i].n}]" for i in group)
        name = theme_name([sources[i].title for i in group], topic)
        parts.append(
            f"**{name}** {cites}\n\n"
            + "\n".join(f"- {quoted(sources[i].question_quote)} [{sources[i].n}]" for i in group)
        )
    papers = [SummaryPaper(s.n, s.paper_id, s.title, quoted(s.question_quote)) for s in sources]
    summary = finished(topic, "\n\n".join(parts), papers, writing)
    summary.note = extractive_note(writing.settings)
    return summary


def extractive_note(settings: Settings) -> str:
    """Why a summary is extractive: no LLM is configured, or the user asked for none."""
    return CHOSEN_NOTE if settings.llm_configured else NO_LLM_NOTE


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
    sources, left_out = select_papers(topic, settings, retriever, embedder, max_papers)
    if not sources:
        mode = "llm" if llm else "extractive"
        refused = f"{NOT_COVERED}."
        summary = Summary(topic, refused, [], refused, mode=mode, citations=[])
    else:
        writing = Writing(sources, settings, embedder, llm)
        if llm is None:
            summary = extractive_overview(topic, writing)
        else:
            summary = llm_overview(topic, writing, llm, on_progress)
    summary.considered, summary.left_out = len(sources) + len(left_out), left_out
    return summary


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


def paper_call(
    llm: LLM,
    settings: Settings,
    source: Source,
    template: str,
    what: str,
    budget: tuple[int, str],
    **fields: str,
) -> Generated:
    """The model's reply to a one-paper prompt (title and abstract), the abstract shortened to
    fit the model's context, within the token budget `(tokens, setting that sets it)`."""

    def build(_: int, chars: int) -> list[dict[str, str]]:
        title, abstract = as_data(source.title[:500]), as_data(capped(source.body, chars))
        content = prompts.render(template, title=title, abstract=abstract, **fields)
        return [{"role": "user", "content": content}]

    def attempt() -> Generated:
        prompt_room, max_tokens = room(llm, budget[0])
        fitted = fit(build, 1, settings.source_chars, prompt_room)
        return generate(llm, fitted.messages, max_tokens, what=what, setting=budget[1])

    return fitted_call(llm, attempt)


def summarize_paper(
    query: str, settings: Settings, retriever: Retriever, embedder: Embedder, llm: LLM | None
) -> Summary:
    source = find_paper(query, retriever)
    source.n = 1
    one_line = (split_sentences(source.body) or [source.body])[0]
    papers = [SummaryPaper(1, source.paper_id, source.title, one_line)]
    writing = Writing([source], settings, embedder, llm)
    if llm is None:
        summary = finished(source.title, extractive_paper(source), papers, writing)
        summary.note = extractive_note(settings)
        return summary

    budget = (settings.paper_summary_tokens, "RAG_PAPER_SUMMARY_TOKENS")
    reply = paper_call(llm, settings, source, "summary_paper", "summary", budget)
    text, _, dropped = resolve_citations(reply.text, [source])
    summary = finished(source.title, text, papers, writing, dropped)
    summary.note = reply.truncated
    if grounded(c.verdict for c in summary.claims):
        return summary
    plain = Writing([source], settings, embedder, None)
    fallback = finished(source.title, extractive_paper(source), papers, plain)
    fallback.note, fallback.model_summary = UNGROUNDED_NOTE, summary.overview
    return fallback
