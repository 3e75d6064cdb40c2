"""How long a topic summary takes against a loopback LLM with an injected delay per call.

Usage: python bench/summarize.py [DELAY_S]   (default 1.0; needs the built index)

With 8 papers a summary is 8 map calls and 1 reduce call. Run one at a time they cost 9 x the
delay; run concurrently (RAG_LLM_CONCURRENCY, default 8) they should cost about 2 x the delay.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag import api
from rag.embed import get_embedder
from rag.retrieve import get_retriever
from rag.settings import Settings
from tests.fake_llm import FakeLLM

TOPIC = "optimizers and learning rates for training large language models"


def main() -> None:
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    fake = FakeLLM().start()
    fake.delay = delay
    fake.default = "A contribution [1]."
    base = Settings()
    embedder = get_embedder(base)
    retriever = get_retriever(base, embedder)
    api.summarize(TOPIC, base, 8, no_llm=True, retriever=retriever, embedder=embedder)  # warm-up
    print(f"| LLM calls at once | papers | LLM calls | wall time (delay {delay:g} s per call) |")
    print("|---|---|---|---|")
    for concurrency in (1, 8):
        settings = Settings(
            openai_api_key="sk-bench",
            openai_base_url=fake.base_url,
            llm_model="fake",
            llm_concurrency=concurrency,
            summary_min_relevance=0.0,
        )
        before = len(fake.chat_requests())
        start = time.perf_counter()
        summary = api.summarize(TOPIC, settings, 8, retriever=retriever, embedder=embedder)
        wall = time.perf_counter() - start
        calls = len(fake.chat_requests()) - before
        print(f"| {concurrency} | {len(summary.papers)} | {calls} | {wall:.2f} s |")
    fake.stop()


if __name__ == "__main__":
    main()
