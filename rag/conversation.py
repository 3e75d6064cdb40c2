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

if TYPE_CHECKING:
    from rag.llm import LLM

HISTORY_TURNS = 3  # earlier turns shown to the condensing LLM
MAX_TURN_CHARS = 600
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
    if llm is None:
        previous = history[-1].standalone or history[-1].question
        return f"{previous} {question}"
    lines = []
    for turn in history[-HISTORY_TURNS:]:
        lines.append(f"User: {turn.question[:MAX_TURN_CHARS]}")
        lines.append(f"Assistant: {turn.answer[:MAX_TURN_CHARS]}")
    messages = [
        {
            "role": "user",
            "content": prompts.render("condense", history="\n".join(lines), question=question),
        }
    ]
    rewritten = " ".join(llm.complete(messages).split())
    return rewritten or question


def pinned_papers(question: str, history: Sequence[Turn]) -> list[str]:
    """Paper ids a follow-up keeps from the previous answer (empty for a new question)."""
    if not history or not is_follow_up(question):
        return []
    return list(history[-1].cited_ids)
