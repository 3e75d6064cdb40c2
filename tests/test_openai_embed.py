"""Issue 8: OpenAI embeddings for large ingests, against the loopback `/v1/embeddings`: batched
requests, rate limits honoured, and a content-hash cache so no text is paid for twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag import api
from rag.embed import CachedEmbedder, get_embedder
from rag.settings import Settings
from rag.store import Store
from tests.fake_llm import FakeLLM, Fault
from tests.helpers import write_jsonl

MODEL = "openai:toy-embedding"


def openai_settings(index_dir: Path, fake: FakeLLM, **more: object) -> Settings:
    return Settings(
        index_dir=index_dir,
        embed_model=MODEL,
        openai_api_key="sk-embed-test",
        openai_base_url=fake.base_url,
        llm_max_retries=2,
        **more,
    )


def papers(n: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"p{i}",
            "title": f"Paper {i} about topic {i % 7}",
            "text": f"Finding {i} on topic {i % 7}. " * 4,
        }
        for i in range(n)
    ]


def embedded_texts(fake: FakeLLM) -> list[str]:
    return [t for r in fake.embedding_requests() for t in r["body"]["input"]]


def test_ingest_batches_requests_and_a_reingest_after_a_rebuild_pays_nothing(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    corpus = write_jsonl(tmp_path / "papers.jsonl", papers(300))
    settings = openai_settings(tmp_path / "index", fake_llm)
    report = api.ingest([corpus], settings)
    assert report.papers_added == 300 and report.chunks_embedded == 300
    sizes = [len(r["body"]["input"]) for r in fake_llm.embedding_requests()]
    assert sizes == [256, 44]  # batched: two requests for 300 texts
    assert len(set(embedded_texts(fake_llm))) == 300
    before = Store(settings, MODEL).vectors([f"p{i}#0" for i in range(300)])

    # A new collection, built from nothing: every text comes from the cache, none from the API.
    rebuilt = settings.model_copy(update={"collection": "papers-rebuilt"})
    requests = len(fake_llm.embedding_requests())
    report = api.ingest([corpus], rebuilt)
    assert report.papers_added == 300 and len(fake_llm.embedding_requests()) == requests
    after = Store(rebuilt, MODEL).vectors(list(before))
    assert all(np.array_equal(before[c], after[c]) for c in before)

    # A changed paper costs one text; a repeated query is embedded once.
    changed = papers(300)
    changed[5]["text"] = "A rewritten abstract about something else entirely. " * 3
    write_jsonl(corpus, changed)
    sent = len(embedded_texts(fake_llm))
    api.ingest([corpus], settings)
    assert embedded_texts(fake_llm)[sent:] == [
        f"Paper 5 about topic 5\n{changed[5]['text']}".strip()
    ]
    api.search("topic 3 findings", settings)
    api.search("topic 3 findings", settings)
    assert embedded_texts(fake_llm)[sent + 1 :] == ["topic 3 findings"]


def test_rate_limit_is_waited_out_then_the_ingest_completes(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.embedding_faults.extend(
        [Fault(429, '{"error": {"message": "Rate limit reached"}}', {"Retry-After": "0.2"})] * 2
    )
    corpus = write_jsonl(tmp_path / "papers.jsonl", papers(10))
    report = api.ingest([corpus], openai_settings(tmp_path / "index", fake_llm))
    assert report.papers_added == 10 and report.errors == []
    times = [r["time"] for r in fake_llm.embedding_requests()]
    assert len(times) == 3 and times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.2


def test_rate_limit_that_persists_is_one_clear_error_and_keeps_the_index(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    settings = openai_settings(tmp_path / "index", fake_llm)
    api.ingest([write_jsonl(tmp_path / "a.jsonl", papers(3))], settings)
    fake_llm.embedding_faults.extend([Fault(429, headers={"Retry-After": "0"})] * 3)
    from rag.errors import LLMError

    with pytest.raises(LLMError, match=r"429|rate limit"):
        api.ingest([write_jsonl(tmp_path / "b.jsonl", papers(6)[3:])], settings)
    assert Store(settings, MODEL).paper_count() == 3


def test_requests_stay_under_the_token_budget(tmp_path: Path, fake_llm: FakeLLM) -> None:
    embedder = get_embedder(openai_settings(tmp_path / "index", fake_llm, embed_cache=False))
    assert not isinstance(embedder, CachedEmbedder)
    embedder.batch_tokens = 1000  # type: ignore[attr-defined]
    texts = [f"text {i} " + "word " * 200 for i in range(10)]  # about 340 tokens each
    vectors = embedder.embed(texts)
    assert vectors.shape[0] == 10
    assert [len(r["body"]["input"]) for r in fake_llm.embedding_requests()] == [2] * 5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
