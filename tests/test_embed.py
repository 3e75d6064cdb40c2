from __future__ import annotations

import numpy as np
import pytest

from rag.embed import MiniLMEmbedder, bundled_minilm_path

TEXTS = [
    "Pointer Networks\nWe introduce a new neural architecture to learn the conditional probability.",
    "short query",
    "L-Mul approximates floating point multiplication with integer addition. "
    * 30,  # truncated at 256
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "numpy"])
def test_minilm_matches_sentence_transformers(backend: str) -> None:
    st = pytest.importorskip("sentence_transformers")
    ours = MiniLMEmbedder(bundled_minilm_path(), batch_size=2, backend=backend).embed(TEXTS)
    model = st.SentenceTransformer(str(bundled_minilm_path()), device="cpu")
    theirs = model.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("backend", ["onnx", "numpy"])
def test_vectors_are_unit_length_and_order_independent(backend: str) -> None:
    embedder = MiniLMEmbedder(bundled_minilm_path(), batch_size=2, backend=backend)
    vectors = embedder.embed(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reversed_vectors = embedder.embed(TEXTS[::-1])[::-1]
    assert np.abs(vectors - reversed_vectors).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)


def test_onnx_graph_is_built_once_into_the_cache_or_in_memory(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag import onnx_encoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = MiniLMEmbedder(bundled_minilm_path()).embed(["graph cache"])
    (cached,) = (tmp_path / "cache" / "rag-assistant" / "onnx").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    again = MiniLMEmbedder(bundled_minilm_path()).embed(["graph cache"])
    assert cached.stat().st_mtime_ns == stamp and np.array_equal(first, again)

    # A cache that cannot be written: the graph is built in memory, same vectors.
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert onnx_encoder.cache_dir().parent.parent == blocked
    in_memory = MiniLMEmbedder(bundled_minilm_path()).embed(["graph cache"])
    assert np.abs(in_memory - first).max() < 1e-6


def test_int8_documents_are_close_to_float_and_queries_stay_float() -> None:
    embedder = MiniLMEmbedder(bundled_minilm_path(), int8_documents=True)
    floats = MiniLMEmbedder(bundled_minilm_path()).embed(TEXTS)
    docs = embedder.embed_documents(TEXTS)
    assert np.array_equal(embedder.embed(TEXTS), floats)  # queries: the float model
    cosines = (docs * floats).sum(axis=1)
    assert not np.array_equal(docs, floats) and cosines.min() > 0.98


def test_ingest_embeds_documents_through_embed_documents(tmp_path) -> None:
    from rag.corpus import Listing, Paper
    from rag.index import ingest_papers
    from rag.settings import Settings

    calls: list[str] = []

    class Recording(MiniLMEmbedder):
        def embed(self, texts):
            calls.append("embed")
            return super().embed(texts)

        def embed_documents(self, texts):
            calls.append("documents")
            return super().embed(texts)

    embedder = Recording(bundled_minilm_path())
    paper = Paper("p1", "A title", "An abstract about things.", (Listing("x"),))
    ingest_papers([paper], Settings(index_dir=tmp_path / "ix"), embedder)
    assert calls == ["documents"]
