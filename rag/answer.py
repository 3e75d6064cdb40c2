"""Question + retrieved papers -> an answer whose every citation is a real source.

The LLM sees numbered, delimited sources and cites them as `[n]`; `resolve_citations` keeps
only numbers that are sources and reports the rest. Without an LLM the answer is extractive:
the sentence of each top paper closest to the question, cited the same way. Either way the
answer is then checked claim by claim (`rag.claims`): each claim gets the evidence its
citations give it and a verdict, and a claim another source supports clearly better is
re-cited to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rag import prompts
from rag.claims import (
    CITATION,
    Claim,
    check_text,
    citation_numbers,
    grounded,
    resolve_citations,
    tally,
)
from rag.corpus import SENTENCE_END
from rag.embed import embed_cached
from rag.errors import InputError
from rag.generation import fit, fitted_call, generate, room
from rag.judge import LLMJudge
from rag.prompts import as_data
from rag.support import spans_of

if TYPE_CHECKING:
    from rag.embed import Embedder
    from rag.generation import Generated
    from rag.llm import LLM
    from rag.retrieve import PaperHit
    from rag.settings import Settings

log = logging.getLogger(__name__)

# The one refusal phrase: the prompt asks for it, `is_refusal` looks for it.
NOT_COVERED = "The collection does not cover this question"
EXTRACTIVE_NOTE = (
    "Extractive answer: quoted from the most relevant abstracts, no LLM configured. "
    "For written answers set OPENAI_API_KEY (and OPENAI_BASE_URL for a local "
    "OpenAI-compatible server such as Ollama) and RAG_LLM_MODEL."
)
CHOSEN_EXTRACTIVE_NOTE = "Extractive answer (--no-llm): quoted from the most relevant abstracts."
UNGROUNDED_NOTE = (
    "The model's answer was not grounded in the sources (too few of its claims are supported "
    "by the papers they cite), so this is the extractive answer: the closest passages, quoted. "
    "The model's text is kept as model_answer in JSON."
)
UNGROUNDED_REFUSAL_NOTE = (
    "The sources only come close to this question, and the model's answer was not grounded in "
    "them; the closest passages are listed. The model's text is kept as model_answer in JSON."
)
MAX_QUESTION_CHARS = 2000
EXTRACTIVE_PAPERS = 3
EXTRACTIVE_MARGIN = 0.12  # papers this far below the best one are not quoted


@dataclass
class Source:
    """A retrieved paper as numbered for the LLM."""

    n: int
    paper_id: str
    title: str
    snippet: str
    score: float | None
    """Cosine similarity of the snippet to the question (None when the retriever has none)."""
    dates: list[str] = field(default_factory=list)
    text: str = ""
    """The whole abstract when known (what the LLM reads), else empty: the snippet stands in."""
    quote: str = ""
    """What the reader is shown as this source's support: the evidence for the claims that
    cite it (set by `attribute`), else `question_quote`."""
    question_quote: str = ""
    """The sentence of the abstract closest to the question (set by `weigh_evidence`)."""
    evidence: float | None = None
    """Cosine similarity of `question_quote` to the question."""
    url: str = ""
    """Where the paper can be read (arXiv abstract page, else a Hugging Face Papers search)."""

    @property
    def body(self) -> str:
        return self.text or self.snippet

    def citation_json(self) -> dict[str, Any]:
        """How a cited paper appears in JSON output."""
        return {"n": self.n, "paper_id": self.paper_id, "title": self.title, "url": self.url}


@dataclass(kw_only=True)
class Cited:
    """What answers and summaries share: how they were written, the sources their `[n]`
    markers cite (in order of first citation), the markers dropped because they named no
    source, and a note for the reader."""

    mode: str  # "llm" or "extractive"
    citations: list[Source]
    dropped_citations: list[int] = field(default_factory=list)
    note: str | None = None
    claims: list[Claim] = field(default_factory=list)
    """The text's claims with their evidence and verdicts (set by `attribute`)."""

    @property
    def cited_json(self) -> list[dict[str, Any]]:
        return [s.citation_json() for s in self.citations]

    @property
    def claims_summary(self) -> dict[str, int]:
        """How many claims got each verdict."""
        return tally(self.claims)

    @property
    def repairs(self) -> list[dict[str, Any]]:
        """Claims re-cited to a source that supports them better: which, from what, to what."""
        return [
            {"claim": i, "from": c.repaired_from, "to": c.citations}
            for i, c in enumerate(self.claims)
            if c.repaired_from is not None
        ]

    def claims_json(self) -> dict[str, Any]:
        return {
            "claims": [c.to_json() for c in self.claims],
            "claims_summary": self.claims_summary,
            "repairs": self.repairs,
        }


@dataclass(frozen=True)
class Coverage:
    """Whether the collection covers a question, judged before any answer is written: the best
    cosine of a sentence of the sources to the question, and the decision it gives."""

    evidence: float
    decision: str  # "answer", "uncertain" (the LLM decides; extractive: refused) or "refuse"

    @classmethod
    def of(cls, evidence: float, settings: Settings) -> Coverage:
        if evidence < settings.min_relevance:
            return cls(evidence, "refuse")
        if evidence < settings.confident_relevance:
            return cls(evidence, "uncertain")
        return cls(evidence, "answer")

    def to_json(self) -> dict[str, Any]:
        return {"evidence": round(self.evidence, 4), "decision": self.decision}


@dataclass
class Answer(Cited):
    question: str
    answer: str
    sources: list[Source]
    interrupted: str | None = None
    """Why the answer stopped early (the LLM stream broke off), else None."""
    coverage: Coverage | None = None
    """The evidence the sources give the question, and what it decided."""
    truncated: str | None = None
    """Why the model's answer was cut (its token limit, or it began repeating itself)."""
    model_answer: str | None = None
    """The model's own text when it was not grounded and the extractive answer (or the
    refusal) replaced it."""

    @property
    def refused(self) -> bool:
        return is_refusal(self.answer)

    @property
    def uncertain(self) -> bool:
        """The sources came close to the question without clearly covering it."""
        return self.coverage is not None and self.coverage.decision == "uncertain"

    def to_json(self) -> dict[str, Any]:
        sources = [
            {
                **s.citation_json(),
                "snippet": s.snippet,
                "quote": s.quote,
                "question_quote": s.question_quote,
                "evidence": None if s.evidence is None else round(s.evidence, 4),
            }
            for s in self.sources
        ]
        return {
            "question": self.question,
            "answer": self.answer,
            "mode": self.mode,
            "citations": self.cited_json,
            "sources": sources,
            "dropped_citations": self.dropped_citations,
            "note": self.note,
            "interrupted": self.interrupted,
            "truncated": self.truncated,
            "model_answer": self.model_answer,
            "coverage": None if self.coverage is None else self.coverage.to_json(),
            **self.claims_json(),
        }


def clean_question(question: str) -> str:
    """The question without control characters, cut to a sane length; empty is an error."""
    text = " ".join("".join(c if c.isprintable() else " " for c in question).split())
    if not text:
        raise InputError("the question is empty")
    return text[:MAX_QUESTION_CHARS]


def is_refusal(text: str) -> bool:
    return NOT_COVERED.casefold() in " ".join(text.split()).casefold()


def number_sources(papers: Sequence[PaperHit]) -> list[Source]:
    return [
        Source(i, p.paper_id, p.title, p.snippet, p.relevance, list(p.dates), p.text, url=p.url)
        for i, p in enumerate(papers, start=1)
    ]


def quoted(text: str) -> str:
    """Abstract text for an answer: its own `[n]` markers become `(n)`, never citations."""
    return CITATION.sub(lambda m: f"({m.group(1)})", text)


def format_sources(sources: Sequence[Source], limit: int) -> str:
    """The sources as the prompt gives them, each text cut at `limit` characters (with a note):
    one runaway record cannot fill a prompt."""
    return "\n".join(
        prompts.render(
            "source", n=s.n, title=as_data(s.title[:500]), text=as_data(capped(s.body, limit))
        )
        for s in sources
    )


def capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [abstract cut: {len(text) - limit:,} more characters]"


def build_messages(question: str, sources: Sequence[Source], chars: int) -> list[dict[str, str]]:
    """The answer prompt over `sources`, each text cut at `chars` characters."""
    return [
        {"role": "system", "content": prompts.render("answer_system", refusal=NOT_COVERED)},
        {
            "role": "user",
            "content": prompts.render(
                "answer_user",
                sources=format_sources(sources, chars),
                question=question,
            ),
        },
    ]


def refusal(
    question: str,
    sources: list[Source],
    mode: str,
    note: str | None = None,
    dropped: Sequence[int] = (),
) -> Answer:
    text = f"{NOT_COVERED}."
    return Answer(
        question, text, sources, mode=mode, citations=[], note=note, dropped_citations=list(dropped)
    )


def llm_answer(
    question: str,
    sources: list[Source],
    llm: LLM,
    settings: Settings,
    on_token: Callable[[str], None] | None = None,
) -> Answer:
    """The LLM's answer over as many of `sources` as fit its context (the best ones), at most
    `answer_tokens` long, streamed through `on_token` when given."""

    def attempt() -> tuple[int, int, Generated]:
        budget, max_tokens = room(llm, settings.answer_tokens)
        fitted = fit(
            lambda kept, chars: build_messages(question, sources[:kept], chars),
            len(sources),
            settings.source_chars,
            budget,
        )
        reply = generate(
            llm,
            fitted.messages,
            max_tokens,
            what="answer",
            setting="RAG_ANSWER_TOKENS",
            on_token=on_token,
        )
        return fitted.kept, fitted.chars, reply

    kept, chars, reply = fitted_call(llm, attempt)
    text, cited, dropped = resolve_citations(reply.text, sources[:kept])
    note = fitting_note(len(sources), kept, chars < settings.source_chars, llm.context_tokens)
    if not reply.interrupted and (is_refusal(text) or not text):
        return refusal(question, sources, "llm", note=note, dropped=dropped)
    if reply.interrupted:
        text = f"{text}\n\n[{reply.interrupted}]"
    answer = Answer(
        question,
        text,
        sources,
        reply.interrupted,
        mode="llm",
        citations=cited,
        dropped_citations=dropped,
        note=note,
    )
    answer.truncated = reply.truncated
    return answer


def fitting_note(total: int, kept: int, shortened: bool, context: int) -> str | None:
    """What the model did not read of the sources, to fit its context."""
    where = f"to fit the model's {context:,}-token context (RAG_LLM_CONTEXT_TOKENS)"
    if kept < total:
        read = f"[1]-[{kept}]" if kept > 1 else "[1]"
        return f"The model read sources {read} of {total}; the others were left out {where}."
    if shortened:
        return f"The sources' texts were shortened {where}."
    return None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if len(s.strip()) > 20]


def weigh_evidence(question: str, sources: Sequence[Source], embedder: Embedder) -> float:
    """Set each source's passage closest to the question (`question_quote`, `evidence`): a
    sentence, or two adjacent ones; the best evidence overall.

    A question the collection answers nearly always has a passage that says much the same
    thing; a question it does not cover has only topical neighbours. The best passage
    separates the two where whole-abstract similarity does not, and letting a passage be two
    sentences helps a question in other words than the paper's, whose parts the abstract
    states in neighbouring sentences (bench/README.md, issue 18).
    """
    if not sources:
        return 0.0
    query = embed_cached(embedder, [question])[0]
    for source in sources:
        spans, vectors = spans_of(source.body, embedder)
        scores = vectors @ query
        best = int(np.argmax(scores))
        source.question_quote, source.evidence = spans[best], float(scores[best])
        source.quote = source.question_quote
    return max(s.evidence for s in sources if s.evidence is not None)


def extractive_note(settings: Settings) -> str:
    """Why an answer is extractive: no LLM is configured, or the user asked for none."""
    return CHOSEN_EXTRACTIVE_NOTE if settings.llm_configured else EXTRACTIVE_NOTE


def extractive_answer(question: str, sources: list[Source], note: str | None) -> Answer:
    """The closest passage of each of the top papers, quoted and cited (after
    `weigh_evidence`)."""
    best = max(s.evidence or 0.0 for s in sources)
    chosen = [
        s for s in sources[:EXTRACTIVE_PAPERS] if (s.evidence or 0.0) >= best - EXTRACTIVE_MARGIN
    ]
    text = "\n".join(f"- {quoted(s.question_quote)} [{s.n}]" for s in chosen)
    return Answer(question, text, sources, mode="extractive", citations=chosen, note=note)


def attribute(
    text: str,
    sources: Sequence[Source],
    embedder: Embedder,
    settings: Settings,
    llm: LLM | None = None,
) -> tuple[str, list[Claim]]:
    """Check `text` claim by claim against the `sources` it cites: its claims, and the text
    with claims re-cited where another source supports them clearly better (under
    `citation_repair`). Each source's `quote` becomes the best evidence it gives the claims
    that cite it. With `RAG_VERIFY=llm` and an LLM, the LLM judges each cited quote too."""
    bodies = {s.n: s.body for s in sources}
    judge = LLMJudge(llm) if settings.verify == "llm" and llm is not None else None
    text, claims = check_text(text, bodies, embedder, settings.citation_repair, judge)
    for source in sources:
        found = [e for c in claims for e in c.evidence if e.n == source.n]
        best = max(found, key=lambda e: e.score, default=None)
        source.quote = best.quote if best is not None else source.question_quote or source.quote
    return text, claims


def answer_question(
    question: str,
    papers: Sequence[PaperHit],
    settings: Settings,
    embedder: Embedder,
    llm: LLM | None = None,
    on_token: Callable[[str], None] | None = None,
    focus: str | None = None,
) -> Answer:
    """Answer from already retrieved `papers`; `llm=None` gives the extractive answer, quoting
    the passages closest to `focus` when given (a follow-up's own words) else to `question`.

    Both modes first weigh the evidence (`Coverage`): when no passage of the sources comes
    close enough to the question (`settings.min_relevance`), the answer is the refusal, and the
    LLM is not called. Between that and `settings.confident_relevance` the LLM reads the
    sources and decides (its "does not cover" reply is the refusal); without an LLM the
    question is refused, the closest passages kept in the sources.
    """
    sources = number_sources(papers)
    mode = "llm" if llm is not None else "extractive"
    note = None if llm is not None else extractive_note(settings)
    evidence = weigh_evidence(question, sources, embedder) if sources else 0.0
    coverage = Coverage.of(evidence, settings)
    if coverage.decision == "refuse" or (coverage.decision == "uncertain" and llm is None):
        # Unsure without an LLM to read the sources: refused, the closest passages still
        # listed among the sources for the reader to judge.
        answer = refusal(question, sources, mode, note)
        answer.coverage = coverage
        return answer
    if llm is None:
        if focus:
            weigh_evidence(focus, sources, embedder)
        answer = extractive_answer(question, sources, note)
    else:
        answer = llm_answer(question, sources, llm, settings, on_token)
    answer.coverage = coverage
    if answer.refused:
        return answer
    checked(answer, embedder, settings, llm)
    backed = grounded(c.verdict for c in answer.claims)
    if llm is not None and not answer.interrupted and not backed:
        return replace_ungrounded(answer, settings, embedder)
    return answer


def checked(answer: Answer, embedder: Embedder, settings: Settings, llm: LLM | None) -> None:
    """`answer` checked claim by claim (`attribute`), its citations those of the checked text."""
    sources = answer.sources
    answer.answer, answer.claims = attribute(answer.answer, sources, embedder, settings, llm)
    by_n = {s.n: s for s in sources}
    answer.citations = [by_n[n] for n in citation_numbers(answer.answer) if n in by_n]


def replace_ungrounded(answer: Answer, settings: Settings, embedder: Embedder) -> Answer:
    """The extractive answer in place of a model's answer its sources do not back (refused
    when the sources only came close to the question); the model's text kept aside."""
    question, sources = answer.question, answer.sources
    if answer.uncertain:
        fallback = refusal(question, sources, "llm", UNGROUNDED_REFUSAL_NOTE)
    else:
        fallback = extractive_answer(question, sources, UNGROUNDED_NOTE)
        checked(fallback, embedder, settings, None)
    fallback.coverage, fallback.model_answer = answer.coverage, answer.answer
    fallback.dropped_citations = answer.dropped_citations
    log.info("the model's answer was not grounded; replaced by the %s answer", fallback.mode)
    return fallback
