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
    from rag.encoders import onnx_encoder

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
    embedder = MiniLMEmbedder(bundled_minilm_path(), document_precision="int8")
    floats = MiniLMEmbedder(bundled_minilm_path()).embed(TEXTS)
    docs = embedder.embed_documents(TEXTS)
    assert np.array_equal(embedder.embed(TEXTS), floats)  # queries: the float model
    cosines = (docs * floats).sum(axis=1)
    assert not np.array_equal(docs, floats) and cosines.min() > 0.98


MIXED = [*TEXTS, "a", "Attention is all you need. " * 7, "Sparse mixture of experts " * 11]


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_documents_are_within_cosine_1e4_of_float(
    fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from rag.encoders import torch_encoder

    if not fused:  # the plain-linear path, for a torch without oneDNN's fused ops
        monkeypatch.setattr(torch_encoder, "_fused_linear_ops", lambda torch: False)
    elif not torch_encoder._fused_linear_ops(torch):
        pytest.skip("oneDNN has no bfloat16 inner product on this CPU (no AVX512-BF16 or AMX)")
    embedder = MiniLMEmbedder(bundled_minilm_path(), batch_size=3, document_precision="bfloat16")
    floats = MiniLMEmbedder(bundled_minilm_path(), batch_size=3).embed(MIXED)
    docs = embedder.embed_documents(MIXED)
    assert embedder._encoders["bfloat16"].fused is fused
    assert np.array_equal(embedder.embed(MIXED), floats)  # queries: the float32 graph
    assert docs.dtype == np.float32 and np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    cosines = (docs * floats).sum(axis=1)
    assert not np.array_equal(docs, floats) and cosines.min() > 0.9999
    # Padding (to the batch's longest text, then to a multiple of 16) changes nothing.
    alone = np.concatenate([embedder.embed_documents([t]) for t in MIXED])
    assert ((alone * docs).sum(axis=1)).min() > 0.99999


def test_bf16_falls_back_to_float32_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    embedder = MiniLMEmbedder(bundled_minilm_path(), document_precision="bfloat16")
    floats = MiniLMEmbedder(bundled_minilm_path()).embed(TEXTS)
    assert np.array_equal(embedder.embed_documents(TEXTS), floats)


def test_cpu_bf16_is_read_from_cpu_flags(tmp_path) -> None:
    from rag.encoders.torch_encoder import cpu_has_bf16

    def cpuinfo(flags: str) -> str:
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n")
        return str(path)

    assert cpu_has_bf16(cpuinfo("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"))
    assert cpu_has_bf16(cpuinfo("fpu avx512f amx_bf16 amx_tile"))
    assert not cpu_has_bf16(cpuinfo("fpu sse2 avx2 avx512f avx512_vnni"))
    assert not cpu_has_bf16(cpuinfo("fpu avx512_bf16x"))  # whole flags only
    assert not cpu_has_bf16(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("setting", "native", "backend", "expected"),
    [
        ("auto", True, "onnx", "bfloat16"),
        ("auto", False, "onnx", "float32"),
        ("auto", True, "numpy", "float32"),
        ("float32", True, "onnx", "float32"),
        ("int8", True, "onnx", "int8"),
        ("bfloat16", False, "onnx", "bfloat16"),
    ],
)
def test_document_precision_auto_takes_bf16_only_where_native(
    setting: str, native: bool, backend: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.embed import get_embedder
    from rag.encoders import torch_encoder
    from rag.settings import Settings

    monkeypatch.setattr(torch_encoder, "available", lambda: native)
    settings = Settings(embed_document_precision=setting, embed_backend=backend)
    assert get_embedder(settings).document_precision == expected


def test_ingest_embeds_documents_through_embed_documents(tmp_path) -> None:
    from rag.corpus import Listing, Paper
    from rag.ingest import ingest_papers
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


def test_a_first_start_build_frees_the_document_encoder(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rag serve` builds a missing index in-process, then answers with the query graph only:
    the bfloat16 torch weights used for the build are not kept for the server's lifetime."""
    pytest.importorskip("torch")
    from rag import api
    from rag.embed import get_embedder
    from rag.encoders import torch_encoder
    from rag.settings import Settings
    from rag.store import Store
    from tests.helpers import write_jsonl

    built: list[object] = []
    original = torch_encoder.Bf16Encoder.__init__

    def spy(self, *args, **kwargs) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch_encoder.Bf16Encoder, "__init__", spy)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(
        corpus / "papers.jsonl",
        [
            {
                "title": "Pointer Networks",
                "abstract": "We introduce a new neural architecture. " * 3,
            },
            {"title": "L-Mul", "abstract": "Floating point multiplication by integer addition."},
        ],
    )
    settings = Settings(
        index_dir=tmp_path / "ix", corpus_dir=corpus, embed_document_precision="bfloat16"
    )
    embedder = get_embedder(settings)
    api.ensure_index(settings, embedder)
    assert Store(settings, embedder.name).paper_count() == 2 and len(built) == 1
    assert not {"bfloat16", "int8", "weights"} & embedder.loaded()
    hits = api.search("integer addition for multiplication", settings)
    assert hits[0].title == "L-Mul"
    api.ensure_index(settings, embedder)  # built already: nothing loaded again
    assert len(built) == 1 and "bfloat16" not in embedder.loaded()


def test_the_hash_embedder_needs_no_model_and_says_what_is_wrong_with_its_size() -> None:
    from rag.embed import get_embedder
    from rag.errors import InputError
    from rag.settings import Settings

    embedder = get_embedder(Settings(embed_model="hash:384"))
    vectors = embedder.embed(["a glacier", "a glacier", "sea ice"])
    assert embedder.name == "hash-384" and vectors.shape == (3, 384)
    assert np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    for bad in ("hash:x", "hash:1", "hash:99999"):
        with pytest.raises(InputError, match="hash:DIM"):
            get_embedder(Settings(embed_model=bad))


def test_the_embedding_device_is_chosen_by_a_probe_and_cuda_without_a_gpu_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RAG_EMBED_DEVICE on a machine without a GPU, and (with a fake probe) with one: auto
    picks cuda only when torch sees a GPU; documents and queries then share one float16 pass
    with large batches; cpu never probes."""
    from rag.embed import GPU_BATCH, embed_device, get_embedder
    from rag.encoders import torch_encoder
    from rag.errors import InputError
    from rag.settings import Settings

    monkeypatch.setattr(torch_encoder, "gpu_present", lambda: False)
    assert embed_device("auto") == "cpu" and embed_device("cpu") == "cpu"
    with pytest.raises(InputError, match="RAG_EMBED_DEVICE=cuda, but torch sees no GPU"):
        embed_device("cuda")
    assert get_embedder(Settings(embed_device="auto")).device == "cpu"

    monkeypatch.setattr(torch_encoder, "gpu_present", lambda: True)
    assert embed_device("auto") == "cuda" and embed_device("cuda") == "cuda"
    monkeypatch.setattr(torch_encoder, "gpu_present", lambda: pytest.fail("cpu never probes"))
    assert embed_device("cpu") == "cpu"

    monkeypatch.setattr(torch_encoder, "gpu_present", lambda: True)
    built = []

    class FakeGpuEncoder:
        def __init__(self, weights, config, threads, device, dtype) -> None:
            built.append((device, dtype))

        def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return np.ones((ids.shape[0], 384), dtype=np.float32) / np.sqrt(384)

    monkeypatch.setattr(torch_encoder, "Bf16Encoder", FakeGpuEncoder)
    embedder = get_embedder(Settings(embed_device="auto"))
    assert embedder.device == "cuda" and embedder.batch_size == GPU_BATCH
    embedder.embed_documents(["a glacier paper"] * 3)
    embedder.embed(["glacier?"])
    assert built == [("cuda", "float16")]  # one encoder for documents and queries


def test_the_gpu_forward_pass_runs_on_the_cpu_in_float16_close_to_float32() -> None:
    """The device-generic torch pass (what cuda runs), here on the CPU in float16 and float32,
    against the ONNX float32 vectors."""
    pytest.importorskip("torch")
    from rag.embed import MiniLMEmbedder, bundled_minilm_path
    from rag.encoders import bert
    from rag.encoders.torch_encoder import Bf16Encoder

    reference = MiniLMEmbedder(bundled_minilm_path())
    texts = ["Lion is a sign-based optimizer.", "Glacier flow from satellite radar."]
    expected = reference.embed(texts)
    encodings = [reference.tokenizer.encode(t).ids for t in texts]
    for dtype, close in (("float32", 0.99999), ("float16", 0.999)):
        encoder = Bf16Encoder(reference._weights(), reference.config, 2, "cpu", dtype)
        got = encoder(*bert.pad_batch(encodings))
        assert (np.sum(got * expected, axis=1) > close).all(), dtype
