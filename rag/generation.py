"""Messages -> a bounded reply from a model that may ramble, stall or overflow its context.

Every call has a token budget (`max_tokens`, a setting per call kind) and is streamed, so that
giving up closes the connection and frees the server. A reply that reaches its budget, or starts
repeating itself, is cut and says why (`Generated.truncated`). Prompts are fitted to the model's
context before they are sent (`fit`: fewer items, then shorter ones), and a server that still
refuses one as too long is believed and asked once more with a smaller prompt (`fitted_call`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from rag.errors import ContextTooLong, LLMError, LLMInterrupted
from rag.llm import estimate_tokens
from rag.prompts import printable

if TYPE_CHECKING:
    from rag.llm import LLM, Message

T = TypeVar("T")
MARGIN_TOKENS = 64
"""Room kept free of the context besides the reply: the chat template's role markers and the
error of our token estimate."""
SHORTEST_TEXT = 300  # characters an item is never shortened below
REPEATED_SENTENCE_WORDS = 6  # a sentence this long said twice word for word is a loop
LOOP_WORDS = 15  # a run of words repeated ...
LOOP_TIMES = 3  # ... this many times in a row (a short phrase: more times) is a loop
LONGEST_LOOP = 30  # words in the longest repeated run looked for
LOOP_WINDOW = 3000  # characters at the end of a reply searched for a loop
SEGMENT = re.compile(r"[^.!?\n]+(?:[.!?]+|\n)")
WORD = re.compile(r"\S+")
LIST_MARKER = re.compile(r"(?:^|(?<=\n))[ \t]*(?:\d+[.)]|[-*\u2022])[ \t]*$")


@dataclass
class Generated:
    """A reply, and why it stopped early when it did."""

    text: str
    truncated: str | None = None
    """Why the reply was cut: its token budget ran out, or it began repeating itself."""
    interrupted: str | None = None
    """Why the stream broke off (what arrived before is `text`)."""


def limit_note(what: str, max_tokens: int, setting: str) -> str:
    return f"the {what} reached its {max_tokens}-token limit ({setting}) and was cut short"


REPEATING = "the model began repeating itself; the rest of its reply was cut"


def generate(
    llm: LLM,
    messages: Sequence[Message],
    max_tokens: int,
    *,
    what: str = "reply",
    setting: str = "",
    on_token: Callable[[str], None] | None = None,
) -> Generated:
    """The model's reply to `messages`, at most `max_tokens` long, streamed through `on_token`.

    A reply that repeats itself is stopped there (the connection closed, so the server stops
    generating too). A stream that breaks off after tokens were shown keeps them and says so
    (`interrupted`); one nobody saw is asked once more, then is an `LLMError`."""
    for attempt in range(2):  # a reply that broke off before anyone saw it is asked once more
        retry = False
        guard = RepetitionGuard()
        raw, text, truncated, interrupted = "", "", None, None
        streamed = llm.stream(messages, max_tokens, what=f"the {what}")
        deltas = iter(streamed)
        shown = 0  # characters of `text` passed to `on_token`
        try:
            for delta in deltas:
                raw += delta
                whole = printable(raw)  # the model's text is data: no terminal escapes
                cut = guard.cut(whole)
                if cut is not None:
                    text, truncated = whole[:cut], REPEATING
                    break
                text = whole
                if on_token is not None:
                    shown = _show(on_token, text, shown, guard)
        except LLMInterrupted as exc:
            interrupted, retry = str(exc), exc.retryable and attempt == 0 and on_token is None
        finally:
            deltas.close()  # stops the reading generator, which closes the response
        if on_token is not None and len(text) > shown:
            on_token(text[shown:])
        if interrupted is None or not retry:
            break
    if interrupted is not None and on_token is None:
        raise LLMError(interrupted)  # nothing was shown: the call failed
    if truncated is None and interrupted is None and streamed.finish == "length":
        truncated = limit_note(what, max_tokens, setting)
    return Generated(text.rstrip(), truncated, interrupted)


def _show(on_token: Callable[[str], None], text: str, shown: int, guard: RepetitionGuard) -> int:
    """Pass on what arrived, except an unfinished sentence that so far repeats an earlier one
    (held back until it ends: cut as a repeat, or shown once it says something new)."""
    end = guard.showable(text)
    if end > shown:
        on_token(text[shown:end])
        return end
    return shown


class RepetitionGuard:
    """Finds where a growing reply starts looping: a sentence (or line) of some length said a
    second time word for word, or a run of words repeated several times in a row. Small models
    do both until their budget or context runs out."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._scanned = 0

    def cut(self, text: str) -> int | None:
        """Where `text` should end (the start of the first repeat), or None."""
        end = max(text.rfind(mark, self._scanned) for mark in ".!?\n") + 1
        for found in SEGMENT.finditer(text, self._scanned, max(end, self._scanned)):
            self._scanned = found.end()
            key = _sentence_key(found.group())
            if len(key.split()) < REPEATED_SENTENCE_WORDS:
                continue
            if key in self._seen:
                start = found.start()
                marker = LIST_MARKER.search(text, 0, start)
                return marker.start() if marker else start
            self._seen[key] = found.start()
        return _loop_start(text)

    def showable(self, text: str) -> int:
        """How much of `text` (just passed to `cut`) may be shown: all of it, unless its
        unfinished last sentence begins like a sentence said before."""
        partial = _sentence_key(text[self._scanned :])
        if partial and any(seen.startswith(partial) for seen in self._seen):
            marker = LIST_MARKER.search(text, 0, self._scanned)
            return marker.start() if marker else self._scanned
        return len(text)


def _sentence_key(segment: str) -> str:
    words = re.sub(r"\[[\d,;\s-]*\]|[^\w\s]", " ", segment.casefold()).split()
    while words and words[0].isdigit():  # the number of a list item
        words.pop(0)
    return " ".join(words)


def _loop_start(text: str) -> int | None:
    """Where the second of several back-to-back copies of one run of words starts."""
    offset = max(0, len(text) - LOOP_WINDOW)
    spans = [m.span() for m in WORD.finditer(text, offset)]
    words = [text[a:b].casefold() for a, b in spans]
    for period in range(1, LONGEST_LOOP + 1):
        times = max(LOOP_TIMES, -(-LOOP_WORDS // period))
        if len(words) < period * times:
            continue
        tail = words[-period:]
        if all(words[-period * (i + 1) : len(words) - period * i] == tail for i in range(times)):
            # Walk back to the first copy, then cut after it.
            first = len(words) - period * times
            while first - period >= 0 and words[first - period : first] == tail:
                first -= period
            while first > 0 and words[first - 1] == words[first - 1 + period]:
                first -= 1  # the loop began mid-copy: from where it first repeats
            return spans[first + period][0]
    return None


# --- prompts that fit ---------------------------------------------------------------------------


def room(llm: LLM, max_tokens: int) -> tuple[int, int]:
    """(tokens a prompt may take, tokens the reply may take) within the model's context: the
    reply's budget shrinks to half the context on a model whose context is smaller than it."""
    context = llm.context_tokens
    reply = min(max_tokens, context // 2)
    return context - reply - MARGIN_TOKENS, reply


def message_tokens(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)


@dataclass
class Fitted:
    """A prompt fitted to the context: the messages, how many of the items it holds, and the
    characters each item's text was cut to."""

    messages: list[Message]
    kept: int
    chars: int

    def left_out(self, total: int) -> int:
        return total - self.kept


def fit(build: Callable[[int, int], list[Message]], count: int, chars: int, budget: int) -> Fitted:
    """The prompt `build(kept, chars)` with as many of `count` items (the first ones: the most
    relevant) as fit in `budget` tokens, each item's text cut at `chars`; with one item left and
    still too long, its text is shortened (to no less than `SHORTEST_TEXT` characters)."""
    kept = max(1, count) if count else 0
    messages = build(kept, chars)
    while message_tokens(messages) > budget and kept > 1:
        kept -= 1
        messages = build(kept, chars)
    while message_tokens(messages) > budget and chars > SHORTEST_TEXT:
        chars = max(SHORTEST_TEXT, chars * 2 // 3)
        messages = build(kept, chars)
    return Fitted(messages, kept, chars)


def fitted_call(llm: LLM, attempt: Callable[[], T]) -> T:
    """`attempt()` (which fits its prompt to `llm.context_tokens`); when the server refuses the
    prompt as longer than its context, its limit is learned and the call made once more."""
    try:
        return attempt()
    except ContextTooLong as exc:
        llm.learn_context(exc.limit)
        return attempt()
