"""A sentence-transformers BERT directory -> its configuration and float32 weights.

The one loader of `config.json`, `sentence_bert_config.json` and `model.safetensors` for every
forward pass (NumPy, ONNX, torch), and the padding all of them take their batches in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_WINDOW = 256  # word pieces, when sentence_bert_config.json does not say
# Short names of each layer's projections and layer norms in the packed weights.
PROJECTIONS = (
    ("ao", "attention.output.dense"),
    ("in", "intermediate.dense"),
    ("out", "output.dense"),
)
NORMS = (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm"))


@dataclass(frozen=True)
class BertConfig:
    layers: int
    heads: int
    hidden: int
    eps: float
    window: int
    """The model's window in word pieces, [CLS] and [SEP] included."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def load_config(model_dir: Path) -> BertConfig:
    config = json.loads((model_dir / "config.json").read_text())
    st_config = model_dir / "sentence_bert_config.json"
    window = (
        json.loads(st_config.read_text()).get("max_seq_length", DEFAULT_WINDOW)
        if st_config.exists()
        else DEFAULT_WINDOW
    )
    return BertConfig(
        layers=int(config["num_hidden_layers"]),
        heads=int(config["num_attention_heads"]),
        hidden=int(config["hidden_size"]),
        eps=float(config.get("layer_norm_eps", 1e-12)),
        window=int(window),
    )


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The safetensors weights as float32, named without the `bert.` prefix."""
    from safetensors.numpy import load_file

    raw = load_file(str(model_dir / "model.safetensors"))
    return {k.removeprefix("bert."): v.astype(np.float32) for k, v in raw.items()}


def packed_weights(raw: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The weights as the NumPy and torch passes take them: one fused, pre-transposed QKV
    projection per layer (one matrix product instead of three), every projection as [in, out]."""
    w = {
        "word": raw["embeddings.word_embeddings.weight"],
        "pos": raw["embeddings.position_embeddings.weight"],
        "type": raw["embeddings.token_type_embeddings.weight"][0],
        "ln_g": raw["embeddings.LayerNorm.weight"],
        "ln_b": raw["embeddings.LayerNorm.bias"],
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        qkv = [raw[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
        w[f"{i}.qkv"] = np.ascontiguousarray(np.concatenate(qkv).T)
        w[f"{i}.qkv_b"] = np.concatenate(
            [raw[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
        )
        for short, name in PROJECTIONS:
            w[f"{i}.{short}"] = np.ascontiguousarray(raw[p + name + ".weight"].T)
            w[f"{i}.{short}_b"] = raw[p + name + ".bias"]
        for short, name in NORMS:
            w[f"{i}.{short}_g"] = raw[p + name + ".weight"]
            w[f"{i}.{short}_b"] = raw[p + name + ".bias"]
    return w


def pad_batch(batch_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 to the longest, and the attention mask (1 = real token)."""
    size, length = len(batch_ids), max(len(ids) for ids in batch_ids)
    ids = np.zeros((size, length), dtype=np.int64)
    mask = np.zeros((size, length), dtype=np.int64)
    for row, seq in enumerate(batch_ids):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask
