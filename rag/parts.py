"""The parts of an abstract (problem, method, results, limitations) told by what its sentences
say, for one-paper summaries without an LLM; and names for groups of papers, from their titles."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.answer import quoted, split_sentences

if TYPE_CHECKING:
    from rag.answer import Source

# Cue phrases of the parts of an abstract. A sentence is labelled by what it says it does
# ("we propose", "outperforms"), not by a word that can appear anywhere ("only").
PROBLEM_CUES = re.compile(
    r"\b(challeng\w*|problem\w*|bottleneck\w*|remains?|lack\w*|suffer\w*|costly|expensive|"
    r"difficult\w*|limited|struggl\w*|however|yet|despite|existing|prior|current(?:ly)?)\b",
    re.IGNORECASE,
)
METHOD_CUES = re.compile(
    r"\b(we (?:propose|present|introduce|develop|design|describe|build|train|study|formulate|"
    r"use|leverage|adopt|show how)|(?:this|our) (?:paper|work|study) (?:proposes|presents|"
    r"introduces)|in this (?:paper|work|study)|"
    r"(?:our|the proposed) (?:method|approach|model|framework|system|technique)|"
    r"called|dubbed|named|consists of|based on)\b",
    re.IGNORECASE,
)
RESULT_CUES = re.compile(
    r"\b(outperform\w*|achiev\w*|improv\w*|surpass\w*|results? (?:show|demonstrate|indicate)|"
    r"experiments? (?:show|demonstrate)|we (?:show|find|demonstrate|observe)|state[- ]of[- ]the[- ]"
    r"art|reduc\w*|speed\w*|gain\w*|accuracy|faster|better)\b|\d+(?:\.\d+)?\s*(?:%|x\b|\u00d7)",
    re.IGNORECASE,
)
LIMITATION_PHRASES = (
    r"limitation\w*",
    "future work",
    r"left (?:for|to) future",
    r"remains? (?:an )?open",
    "does not",
    "do not",
    "cannot",
    r"fails? to",
    r"not (?:yet )?(?:address|handle|cover)",
    "restricted to",
    "at the cost of",
    r"trade-?off",
    "caveat",
)
LIMITATION_CUES = re.compile(r"\b(" + "|".join(LIMITATION_PHRASES) + r")\b", re.IGNORECASE)


OWN_WORK = re.compile(r"\b(we|our|us)\b", re.IGNORECASE)


def abstract_parts(sentences: Sequence[str]) -> dict[str, list[str]]:
    """An abstract's sentences by part: the problem is what comes before the first sentence
    that says what the paper does, and what existing work cannot do when it is said after it;
    results are sentences that report outcomes; limitations are sentences after the results (or
    in the last third) that state one."""
    method_at = next((i for i, s in enumerate(sentences) if METHOD_CUES.search(s)), None)
    if method_at is None:  # no cue: the usual order, problem first
        method_at = 1 if len(sentences) > 1 else 0
    parts: dict[str, list[str]] = {"problem": [], "method": [], "results": [], "limitations": []}
    late = max(method_at + 1, (2 * len(sentences)) // 3)
    for i, sentence in enumerate(sentences):
        if i < method_at:
            parts["problem"].append(sentence)
        elif (
            method_at < i
            and not parts["results"]
            and not OWN_WORK.search(sentence)
            and (PROBLEM_CUES.search(sentence) or LIMITATION_CUES.search(sentence))
        ):  # what existing approaches cannot do, said after "we introduce"
            parts["problem"].append(sentence)
        elif (parts["results"] or i >= late) and LIMITATION_CUES.search(sentence):
            parts["limitations"].append(sentence)
        elif i > method_at and RESULT_CUES.search(sentence):
            parts["results"].append(sentence)
        elif i == method_at or not parts["results"]:
            parts["method"].append(sentence)
        else:
            parts["results"].append(sentence)
    if not parts["problem"] and method_at == 0 and PROBLEM_CUES.search(sentences[0]):
        parts["problem"], parts["method"] = parts["method"][:1], parts["method"][1:]
    return parts


def extractive_paper(source: Source) -> str:
    """A one-paper summary from the abstract's own sentences, labelled by part."""
    sentences = [quoted(s) for s in split_sentences(source.body) or [source.body]]
    parts = abstract_parts(sentences)
    lines = ["_Extractive summary: sentences of the abstract._"]
    for label, key, most, none in (
        ("Problem", "problem", 2, ""),
        ("Method", "method", 2, ""),
        ("Results", "results", 3, "_The abstract reports no results._"),
        ("Limitations", "limitations", 2, "_The abstract states none._"),
    ):
        chosen = parts[key][:most]
        if chosen:
            lines.append(f"**{label}** " + " ".join(chosen) + " [1]")
        elif none:
            lines.append(f"**{label}** {none}")
    return "\n\n".join(lines)


THEME_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")
TITLE_FILLER = frozenset(
    "the and for with from via into towards toward using use based are all you need what how "
    "why when can does not new large model models language learning neural network networks "
    "paper study approach method efficient".split()
)


def theme_name(titles: Sequence[str], topic: str) -> str:
    """A theme named from its papers: the words their titles share (most first), beyond the
    topic's own; a theme of one paper is its shortened title."""
    if len(titles) == 1:
        words = titles[0].split()
        return " ".join(words[:8]) + (" …" if len(words) > 8 else "")
    known = {w.lower() for w in THEME_WORD.findall(topic)} | TITLE_FILLER
    counts: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for title in titles:
        for word in dict.fromkeys(w for w in THEME_WORD.findall(title)):
            if word.lower() in known or word.lower().removesuffix("s") in known:
                continue
            key = word.lower()[:6]  # "Quantized" and "Quantization" are one theme word
            counts[key] = counts.get(key, 0) + 1
            spelled.setdefault(key, word if any(c.isupper() for c in word[1:]) else word.lower())
    shared = [w for w, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c > 1][:3]
    chosen = shared or [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:2]
    name = ", ".join(spelled[w] for w in chosen) or "Other papers"
    return name[0].upper() + name[1:]
