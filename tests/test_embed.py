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
def test_numpy_minilm_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    ours = MiniLMEmbedder(bundled_minilm_path(), batch_size=2).embed(TEXTS)
    model = st.SentenceTransformer(str(bundled_minilm_path()), device="cpu")
    theirs = model.encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


def test_vectors_are_unit_length_and_order_independent() -> None:
    embedder = MiniLMEmbedder(bundled_minilm_path(), batch_size=2)
    vectors = embedder.embed(TEXTS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reversed_vectors = embedder.embed(TEXTS[::-1])[::-1]
    assert np.abs(vectors - reversed_vectors).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)
