"""Follow-up questions: a chat turn -> the standalone question that retrieval and the answer use.

With an LLM the question is condensed with the history through `prompts/condense.txt`. Without
one, a follow-up ("what about its limitations?") is recognised by its referring words and joined
to the previous question, and the papers cited in the previous answer are kept as sources.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag import prompts
from rag.generation import fit, fitted_call, generate, room

if TYPE_CHECKING:
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
