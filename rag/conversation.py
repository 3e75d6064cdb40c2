"""Follow-up questions: a chat turn -> the standalone question that retrieval and the answer use.

With an LLM the question is condensed with the history through `prompts/condense.txt`. Without
one, a follow-up ("what about its limitations?") is recognised by its referring words and joined
to the previous question, and the papers cited in the previous answer are kept as sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag import prompts
from rag.generation import fit, fitted_call, generate, room

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.generation import Generated
    from rag.llm import LLM

HISTORY_TURNS = 3  # earlier turns shown to the condensing LLM
MAX_TURN_CHARS = 600
MAX_REWRITE_CHARS = 2000  # a standalone question is capped like a typed one
# Words that point back into the conversation; a question using them is not standalone.
REFERRING = re.compile(
    r"\b(it|its|it's|they|them|their|theirs|this|that|these|those|the (?:paper|papers|method|"
    r"approach|model|authors?|first|second|third|last|former|latter|same)|above|previous|"
    r"mentioned|also|else|more|further|another|other)\b",
    re.IGNORECASE,
)
OPENERS = re.compile(r"^\s*(and|but|so|what about|how about|why|also|then)\b", re.IGNORECASE)
SHORT = 10  # words: a question this short that uses a referring word leans on context


@dataclass
class Turn:
    """One exchange: the question as asked, its standalone form, the papers the answer cited."""

    question: str
    answer: str
    standalone: str = ""
    cited_ids: list[str] = field(default_factory=list)


def is_follow_up(question: str) -> bool:
    words = question.split()
    return (
        bool(OPENERS.search(question))
        or (bool(REFERRING.search(question)) and len(words) <= SHORT)
        or len(words) < 4
    )


def condense(question: str, history: Sequence[Turn], llm: LLM | None) -> str:
    """The standalone form of `question` given the earlier turns (oldest first)."""
    if not history or not is_follow_up(question):
        return question
    previous = history[-1].standalone or history[-1].question
    joined = f"{previous} {question}"[-MAX_REWRITE_CHARS:]
    if llm is None:
        return joined
    turns = history[-HISTORY_TURNS:]

    def build(kept: int, chars: int) -> list[dict[str, str]]:
        lines = []
        for turn in turns[len(turns) - kept :]:
            lines.append(f"User: {turn.question[:chars]}")
            lines.append(f"Assistant: {turn.answer[:chars]}")
        content = prompts.render("condense", history="\n".join(lines), question=question)
        return [{"role": "user", "content": content}]

    def attempt() -> Generated:
        budget, max_tokens = room(llm, llm.settings.rewrite_tokens)
        fitted = fit(build, len(turns), MAX_TURN_CHARS, budget)
        return generate(
            llm, fitted.messages, max_tokens, what="rewrite", setting="RAG_REWRITE_TOKENS"
        )

    reply = fitted_call(llm, attempt)
    if reply.truncated:
        # A rewrite that rambled to its limit is no question: the follow-up joined to the
        # previous question serves retrieval better.
        return joined
    return rewritten_question(reply.text) or joined


PREAMBLE = re.compile(
    r"^(?:sure|okay|ok|here(?: is|'s)|the|standalone|rewritten|reformulated)\b[^:\n]{0,60}:\s*",
    re.IGNORECASE,
)


def rewritten_question(reply: str) -> str:
    """The question in a rewrite reply: its first line that says something, without a
    preamble ("Standalone question:") or quotes, capped like a question typed in."""
    for line in reply.splitlines():
        line = PREAMBLE.sub("", line.strip()).strip().strip("\"'`*").strip()
        if line and not line.endswith(":"):
            return line[:MAX_REWRITE_CHARS]
    return ""


def pinned_papers(question: str, history: Sequence[Turn]) -> list[str]:
    """Paper ids a follow-up keeps from the previous answer (empty for a new question)."""
    if not history or not is_follow_up(question):
        return []
    return list(history[-1].cited_ids)


def short_title(title: str) -> str:
    """A paper's name for a question: the part before a colon (a title's short name), whole
    up to 12 words."""
    head = title.split(":", 1)[0].strip()
    words = head.split()
    return " ".join(words[:12]) + (" …" if len(words) > 12 else "")


def template_follow_ups(answer: Answer) -> list[str]:
    """Questions to ask next about the papers an answer cites (none after a refusal)."""
    if answer.refused or not answer.citations:
        return []
    first = short_title(answer.citations[0].title)
    asked = [
        f"What are the limitations of {first}?",
        f"What results does {first} report?",
        f"How does {first} compare with {short_title(answer.citations[1].title)}?"
        if len(answer.citations) > 1
        else f"Which other papers address the problem {first} addresses?",
    ]
    return [q for q in asked if q.lower() != answer.question.strip().lower()]


FOLLOW_UPS = 3
LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)]|Q\d?[:.])\s*")
CITATION_MARK = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def suggested_questions(reply: str, asked: str) -> list[str]:
    """The questions in a model's reply: one per line, list marks, citation marks and quotes
    taken off; only lines that are questions of 4 to 30 words, none the question asked."""
    found: list[str] = []
    for line in reply.splitlines():
        line = CITATION_MARK.sub("", LIST_MARK.sub("", line)).strip().strip("\"'`*").strip()
        words = len(line.split())
        if not line.endswith("?") or not 4 <= words <= 30:
            continue
        if line.lower() in {q.lower() for q in found} | {asked.strip().lower()}:
            continue
        found.append(line)
    return found[:FOLLOW_UPS]


def suggest_follow_ups(
    answer: Answer, llm: LLM | None, on_token: Callable[[str], None] | None = None
) -> list[str]:
    """Questions to ask next: written by the LLM from the answer and its cited papers when
    there is one (`RAG_FOLLOW_UP_TOKENS`), else, or when its reply holds no usable question,
    from templates over the cited titles."""
    templates = template_follow_ups(answer)
    if llm is None or not templates:
        return templates
    papers = "\n".join(f"- {s.title}" for s in answer.citations)
    content = prompts.render(
        "follow_ups",
        question=answer.question[:MAX_TURN_CHARS],
        papers=papers,
        answer=answer.answer[: 2 * MAX_TURN_CHARS],
    )
    tokens = llm.settings.follow_up_tokens
    reply = generate(
        llm,
        [{"role": "user", "content": content}],
        tokens,
        what="follow-up suggestions",
        setting="RAG_FOLLOW_UP_TOKENS",
        on_token=on_token,  # lets a caller stop it (raising there closes the stream)
    )
    return suggested_questions(reply.text, answer.question) or templates
