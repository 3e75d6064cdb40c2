"""`RAG_VERIFY=llm`: the LLM judges whether each cited quote supports its claim.

One call per answer lists every (claim, cited quote) pair; each line of the reply says
supported, partial or not supported, and its judgement replaces the local verdict. A reply it
cannot read, or a failed call, leaves the local verdicts.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from rag import prompts
from rag.claims import plain
from rag.errors import LLMError
from rag.generation import generate

if TYPE_CHECKING:
    from rag.claims import Claim
    from rag.llm import LLM

log = logging.getLogger(__name__)

# What the judge may say, most specific first, and the verdict each phrase gives.
JUDGED_LABELS = (("not supported", "unsupported"), ("partial", "weak"), ("supported", "supported"))
JUDGED_RANK = {"unsupported": 0, "weak": 1, "supported": 2}


class LLMJudge:
    """Judges claims' cited quotes with one LLM call (at most `verify_tokens` long)."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def __call__(self, claims: list[Claim]) -> None:
        pairs = [(c, e) for c in claims for e in c.evidence]
        if not pairs:
            return
        listing = "\n".join(
            f"{k}. Claim: {prompts.as_data(plain(c.text))}\n   Quote: {prompts.as_data(e.quote)}"
            for k, (c, e) in enumerate(pairs, start=1)
        )
        content = prompts.render("verify", pairs=listing)
        budget = self.llm.settings.verify_tokens
        try:
            reply = generate(
                self.llm,
                [{"role": "user", "content": content}],
                budget,
                what="verdicts",
                setting="RAG_VERIFY_TOKENS",
            )
        except LLMError as exc:
            log.warning("the LLM could not judge the citations (%s); local verdicts kept", exc)
            return
        judged = self.parse(reply.text, len(pairs))
        best: dict[int, str] = {}
        for k, (claim, _) in enumerate(pairs, start=1):
            if k in judged:
                old = best.get(id(claim), "unsupported")
                best[id(claim)] = max(old, judged[k], key=JUDGED_RANK.__getitem__)
        for claim in claims:
            if id(claim) in best:
                claim.verdict = best[id(claim)]

    @classmethod
    def parse(cls, reply: str, count: int) -> dict[int, str]:
        """Pair number -> verdict, for the lines of `reply` that say one."""
        judged: dict[int, str] = {}
        for line in reply.splitlines():
            found = re.match(r"\s*(\d{1,4})\s*[:.)-]\s*(.+)", line)
            if not found or not 1 <= int(found.group(1)) <= count:
                continue
            said = found.group(2).strip().lower()
            for phrase, verdict in JUDGED_LABELS:
                if said.startswith(phrase):
                    judged[int(found.group(1))] = verdict
                    break
        return judged
