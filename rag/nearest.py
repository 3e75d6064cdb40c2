"""Chunk vectors kept in each BM25 segment -> the nearest chunks, without Chroma's HNSW index.

Chroma searches a large embedded collection through its HNSW index, which every process loads
whole before its first query (6.8 s and 2.7 GB at 1.2M chunks: most of a fresh `rag search`).
Each BM25 segment (`rag.segments`) also keeps the vectors of its papers' chunks, loaded
memory-mapped, so a process reads what a query touches:

* codes: each vector as 8-bit integers (every dimension scaled by its largest magnitude in the
  segment), scanned whole by one integer matrix-vector product in ONNX Runtime (`MatMulInteger`:
  57 ms for 1.7M chunks here, a quarter of the bytes and a third of the time of NumPy's float32
  product);
* vectors: float32, read only for the `pool` candidates with the highest code scores, which are
  ranked by their exact cosine.

The codes' ranking is close to exact (on SciFact's MiniLM vectors the true 200 nearest of
10,029 chunks were always among the code's 213 best), so with `OVERSAMPLE` times the chunks
wanted rescored the result is the exact search's, and the same in every process. Sign-bit codes
and k-means partitions were measured and left out: they needed 3 % and 20 % of the collection
rescored for 9 claims in 10 to keep their 10 nearest chunks (bench/README.md).

Files of a segment's folder: `vectors.npy` (chunks x dims, float32), `codes.npy` (chunks x
dims, uint8: the integer plus 128), `scale.npy` (each dimension's step), `chunks.npy` (each
row's chunk number, int32), `starts.npy` (paper row -> its first chunk row, papers + 1).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
FILES = ("vectors", "chunks", "starts")
CODE_FILES = ("codes", "scale")
OVERSAMPLE = 4  # chunks rescored exactly per chunk wanted
MIN_POOL = 200  # and never fewer (bench/README.md: the pool each n needs)
ZERO = 128  # the codes' zero point


@dataclass(eq=False)
class DenseRows:
    """The chunk vectors of one segment's papers, paper row by paper row."""

    vectors: np.ndarray
    chunks: np.ndarray
    starts: np.ndarray
    codes: np.ndarray | None = None
    scale: np.ndarray | None = None
    fd: int | None = None
    """The saved vectors file, open (read with `pread` by `read`)."""

    @classmethod
    def of(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> DenseRows:
        """From each paper's (chunk numbers, vectors), in paper-row order."""
        counts = np.fromiter((len(c) for c, _ in parts), dtype=np.int64, count=len(parts))
        vectors = np.ascontiguousarray(np.concatenate([v for _, v in parts]), dtype=np.float32)
        scale = np.abs(vectors).max(axis=0) / 127
        scale[scale == 0] = 1.0
        codes = np.clip(np.rint(vectors / scale), -127, 127) + ZERO
        return cls(
            vectors,
            np.concatenate([c for c, _ in parts]).astype(np.int32),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            codes.astype(np.uint8),
            scale.astype(np.float32),
        )

    def save(self, folder: Path) -> None:
        for name in (*FILES, *CODE_FILES):
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, papers: int) -> DenseRows | None:
        """The rows of `papers` papers saved in `folder` (memory-mapped), or None when it
        keeps none (written before segments kept vectors, or through a Chroma server); a
        ValueError when they are damaged."""
        if not (folder / "starts.npy").exists():
            return None
        rows = cls(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in FILES))
        if (folder / "scale.npy").exists():
            rows.codes = np.load(folder / "codes.npy", mmap_mode="r")
            rows.scale = np.load(folder / "scale.npy")
        starts, vectors = rows.starts, rows.vectors
        intact = (
            vectors.ndim == 2
            and vectors.dtype == np.float32
            and rows.chunks.shape == (len(vectors),)
            and starts.shape == (papers + 1,)
            and starts[0] == 0
            and starts[-1] == len(vectors)
            and bool((np.diff(starts) >= 0).all())
        )
        if intact and rows.codes is not None:
            intact = rows.codes.shape == vectors.shape and rows.codes.dtype == np.uint8
            intact = intact and rows.scale is not None and rows.scale.shape == vectors.shape[1:]
        if not intact:
            raise ValueError(f"damaged vectors in {folder}")
        # Opened now: read by `read` after a whole build renames the folder, as the map is.
        rows.fd = os.open(folder / "vectors.npy", os.O_RDONLY)
        weakref.finalize(rows, os.close, rows.fd)
        return rows

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """Every chunk's approximate cosine to `vector`, from the codes; exact, from the
        float32 vectors, without codes or where ONNX Runtime cannot run."""
        if self.codes is not None and self.scale is not None:
            weights = vector * self.scale
            step = float(np.abs(weights).max()) / 127 or 1.0
            products = integer_product(self.codes, np.rint(weights / step).astype(np.int8))
            if products is not None:
                return products.astype(np.float32) * np.float32(step)
        return np.asarray(self.vectors @ vector)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of these chunk rows (ascending). From a saved segment they are
        read with `pread`, not through the memory map: the kernel maps page-cache folios whole
        on a fault, and 4,000 rows read through the map of 1.7M chunks took 1.6 GB of resident
        pages into the process, against 6 MB read."""
        vectors, fd = self.vectors, self.fd
        if fd is None or not isinstance(vectors, np.memmap) or not len(rows):
            return np.asarray(vectors[rows], dtype=np.float32)
        width = vectors.shape[1] * vectors.itemsize
        start = vectors.offset
        data = b"".join([os.pread(fd, width, start + int(r) * width) for r in rows])
        return np.frombuffer(data, dtype=np.float32).reshape(len(rows), vectors.shape[1])

    def rows_of(self, paper_row: int) -> slice:
        return slice(int(self.starts[paper_row]), int(self.starts[paper_row + 1]))

    def paper_rows(self, rows: np.ndarray) -> np.ndarray:
        """The paper row of each chunk row."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def expand(self, per_paper: np.ndarray) -> np.ndarray:
        """A per-paper array as a per-chunk one."""
        return np.repeat(per_paper, np.diff(self.starts))


def nearest(
    parts: Sequence[tuple[DenseRows, np.ndarray]], vector: np.ndarray, n: int
) -> list[tuple[int, int, float]]:
    """The `n` chunks nearest to `vector` among those each (rows, allowed) admits (a per-chunk
    mask): (part, row, cosine), best first, ties to the earlier part and row. Candidates are
    the `max(OVERSAMPLE * n, MIN_POOL)` best by code, ranked by their exact cosine."""
    vector = np.asarray(vector, dtype=np.float32)
    scores = [np.where(allowed, rows.scores(vector), -np.inf) for rows, allowed in parts]
    allowed = sum(int(a.sum()) for _, a in parts)
    n = min(n, allowed)
    if n <= 0:
        return []
    offsets = np.cumsum([0] + [len(s) for s in scores])
    approx = np.concatenate(scores)
    pool = min(allowed, max(OVERSAMPLE * n, MIN_POOL))
    chosen = np.argpartition(-approx, pool - 1)[:pool] if pool < len(approx) else None
    chosen = np.flatnonzero(approx > -np.inf) if chosen is None else np.sort(chosen)
    part_of = np.searchsorted(offsets, chosen, side="right") - 1
    sims = np.empty(len(chosen), dtype=np.float32)
    for part in np.unique(part_of).tolist():
        at = part_of == part
        sims[at] = parts[part][0].read(chosen[at] - offsets[part]) @ vector
    top = np.lexsort((chosen, -sims))[:n]
    return [(int(part_of[i]), int(chosen[i] - offsets[part_of[i]]), float(sims[i])) for i in top]


_SESSION: Any = None  # the ONNX Runtime session; False once it failed
_SESSION_LOCK = threading.Lock()


def integer_product(codes: np.ndarray, query: np.ndarray) -> np.ndarray | None:
    """(codes - 128) @ query as int32, codes uint8 (rows x dims), query int8 (dims), by ONNX
    Runtime's `MatMulInteger`, whose kernels multiply 8-bit integers natively; None where it
    cannot run (NumPy has no fast integer product: the float32 vectors are scanned instead)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            try:
                _SESSION = _integer_session()
            except Exception as exc:  # any failure to start: float32 from now on
                log.info("no integer products (%s); vectors are scanned in float32", exc)
                _SESSION = False
    if _SESSION is False:
        return None
    try:
        out = _SESSION.run(None, {"codes": np.asarray(codes), "query": query[:, None]})[0]
    except Exception as exc:
        log.info("integer product failed (%s); scanned in float32", exc)
        return None
    return np.asarray(out).reshape(-1)


def _integer_session() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(INTEGER_GRAPH, options, providers=["CPUExecutionProvider"])


def integer_graph() -> bytes:
    """The ONNX graph of `integer_product`: scores = MatMulInteger(codes, query, zero point
    128). Kept serialized as `INTEGER_GRAPH` (importing onnx to build it takes 0.7 s of a
    fresh search); a test checks the two agree."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["codes", "query", "zero"], ["scores"])],
        "codes",
        [
            helper.make_tensor_value_info("codes", TensorProto.UINT8, ["rows", "dims"]),
            helper.make_tensor_value_info("query", TensorProto.INT8, ["dims", 1]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, ["rows", 1])],
        [helper.make_tensor("zero", TensorProto.UINT8, [], [ZERO])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="rag"
    )
    model.ir_version = 8
    return model.SerializeToString()


INTEGER_GRAPH = (
    b'\x08\x08\x12\x03rag:\x9e\x01\n+\n\x05codes\n\x05query\n\x04zero\x12\x06scores"\r'
    b"MatMulInteger\x12\x05codes*\x0c\x10\x02*\x02\x80\x01B\x04zeroZ\x1f\n\x05codes\x12\x16\n"
    b"\x14\x08\x02\x12\x10\n\x06\x12\x04rows\n\x06\x12\x04dimsZ\x1b\n\x05query\x12\x12\n\x10\x08"
    b"\x03\x12\x0c\n\x06\x12\x04dims\n\x02\x08\x01b\x1c\n\x06scores\x12\x12\n\x10\x08\x06\x12"
    b"\x0c\n\x06\x12\x04rows\n\x02\x08\x01B\x04\n\x00\x10\r"
)
