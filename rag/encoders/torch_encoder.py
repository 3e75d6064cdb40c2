"""The MiniLM forward pass in bfloat16, through torch (oneDNN), for texts going into the index.

On CPUs that multiply bfloat16 natively (AVX512-BF16 or AMX: recent AMD EPYC and Intel Xeon),
the matrix products run at twice the float32 rate, so documents embed 1.5x to 1.7x faster than
with the float32 ONNX graph (the whole ingest about 1.3x). Products accumulate in float32 (as
does the softmax of the attention kernel); layer norms and pooling run in float32. The vectors
stay within cosine 0.9999 of the float32 ones, and the dev evaluation is identical (see
bench/README.md). Queries keep the float32 ONNX graph: it starts in a fraction of torch's
import time.

Used only when torch is installed and the CPU has native bfloat16: `available()` decides that
without importing torch.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from rag.encoders.bert import BertConfig

log = logging.getLogger(__name__)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bfloat16 arithmetic
# Batches are padded to a multiple of this many tokens: oneDNN builds (and keeps) kernels for
# each shape it meets, and one shape per token count grew the ingest's memory by 600 MB.
LENGTH_STEP = 16


@cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bfloat16 natively (else oneDNN emulates it, slower than
    float32). Linux only: elsewhere the answer is no and float32 is used."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_FLAGS)
    except OSError:
        pass
    return False


def available() -> bool:
    """torch is installed and the CPU has native bfloat16 (checked without importing torch)."""
    return cpu_has_bf16() and importlib.util.find_spec("torch") is not None


def gpu_present() -> bool:
    """Whether this machine has a GPU torch can use: a driver first (no torch import on the
    many machines without one), then torch's own answer."""
    if not any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidia0")):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class Bf16Encoder:
    """BERT (mean pooling, L2 norm) over padded token ids, weights in bfloat16 on the CPU, or
    in `dtype` on `device` (a GPU: "cuda", float16).

    `weights` are the float32 arrays of `bert.packed_weights` (QKV fused and pre-transposed to
    [in, out])."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        config: BertConfig,
        threads: int,
        device: str = "cpu",
        dtype: str = "bfloat16",
    ) -> None:
        import torch
        import torch.nn.functional

        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = device
        self.dtype = getattr(torch, dtype)
        self.torch, self.F = torch, torch.nn.functional
        self.layers, self.heads, self.eps = config.layers, config.heads, config.eps
        self.hidden = config.hidden
        f32 = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in weights.items()}
        bf16 = self.dtype
        self.w: dict[str, Any] = {}
        for key, value in f32.items():
            name = key.rsplit(".", 1)[-1]
            if name in ("qkv", "ao", "in", "out"):  # [in, out] -> [out, in], as linear takes it
                self.w[key] = value.T.contiguous().to(bf16)
            elif name in ("qkv_b", "ao_b", "in_b", "out_b"):
                self.w[key] = value.to(bf16)
            else:  # embeddings and layer-norm parameters stay float32
                self.w[key] = value
        self.fused = device == "cpu" and self.dtype == torch.bfloat16 and _fused_linear_ops(torch)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Unit vectors of a batch: token ids and attention mask (1 = real token), padded."""
        torch = self.torch
        length = ids.shape[1]
        padded = min(-(-length // LENGTH_STEP) * LENGTH_STEP, self.w["pos"].shape[0])
        if padded > length:
            extra = ((0, 0), (0, padded - length))
            ids, mask = np.pad(ids, extra), np.pad(mask, extra)
        with torch.inference_mode():
            ids_t = torch.from_numpy(ids).to(self.device)
            mask_t = torch.from_numpy(mask).to(self.device)
            return self._forward(ids_t, mask_t).float().cpu().numpy()

    def _linear(self, x: Any, key: str, act: str = "none", residual: Any = None) -> Any:
        """x @ W + b, then GELU (act="gelu") or plus `residual`, fused by oneDNN when it can."""
        F = self.F
        w, b = self.w[key], self.w[key + "_b"]
        if self.fused:
            ops = self.torch.ops.mkldnn
            if residual is not None:
                return ops._linear_pointwise.binary(x, residual, w, b, "add")
            return ops._linear_pointwise(x, w, b, act, [], "none")
        y = F.linear(x, w, b)
        if act == "gelu":
            return F.gelu(y)
        return y if residual is None else y + residual

    def _norm(self, x: Any, key: str) -> Any:
        F = self.F
        w, b = self.w[key + "_g"], self.w[key + "_b"]
        return F.layer_norm(x.float(), (self.hidden,), w, b, self.eps).to(self.dtype)

    def _forward(self, ids: Any, mask: Any) -> Any:
        F = self.F
        torch, w = self.torch, self.w
        size, length = ids.shape
        heads, dim = self.heads, self.hidden // self.heads
        x = w["word"][ids] + w["pos"][:length] + w["type"]
        x = F.layer_norm(x, (self.hidden,), w["ln_g"], w["ln_b"], self.eps)
        x = x.to(self.dtype).reshape(size * length, self.hidden)
        keep = mask.bool()
        attend = None if bool(keep.all()) else keep[:, None, None, :]
        for i in range(self.layers):
            qkv = self._linear(x, f"{i}.qkv").view(size, length, 3, heads, dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
            ctx = ctx.transpose(1, 2).reshape(size * length, self.hidden)
            x = self._norm(self._linear(ctx, f"{i}.ao", residual=x), f"{i}.ln1")
            h = self._linear(x, f"{i}.in", act="gelu")
            x = self._norm(self._linear(h, f"{i}.out", residual=x), f"{i}.ln2")
        x = x.float().reshape(size, length, self.hidden)
        weights = mask.to(torch.float32)[:, :, None]
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return F.normalize(pooled, dim=1)


def _fused_linear_ops(torch: Any) -> bool:
    """oneDNN's linear with a fused GELU or residual add (one pass over the output instead of
    two). Private ops: checked once on tiny inputs, and plain linear is used when absent."""
    try:
        ops = torch.ops.mkldnn
        x = torch.ones(2, 4, dtype=torch.bfloat16)
        w = torch.ones(3, 4, dtype=torch.bfloat16)
        b = torch.zeros(3, dtype=torch.bfloat16)
        gelu = ops._linear_pointwise(x, w, b, "gelu", [], "none").float()
        added = ops._linear_pointwise.binary(x, torch.ones(2, 3).bfloat16(), w, b, "add").float()
        return bool(torch.allclose(gelu, torch.full((2, 3), 4.0), atol=0.05)) and bool(
            torch.allclose(added, torch.full((2, 3), 5.0))
        )
    except (AttributeError, RuntimeError) as exc:
        log.info("oneDNN fused linear unavailable (%s); plain linear", exc)
        return False
