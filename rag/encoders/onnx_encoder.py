"""A BERT sentence encoder as an ONNX graph, built from a sentence-transformers directory.

No exporter, no torch, no download: the graph is written op by op from the safetensors weights
(the same forward pass as `rag.encoders.numpy_encoder`, mean pooling and L2 norm included) and
cached on disk. ONNX Runtime, already installed with chromadb, runs it about 3x faster than
NumPy on two cores, with the same vectors (to 1e-6).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.encoders.bert import load_config, load_weights

log = logging.getLogger(__name__)
GRAPH_VERSION = 1  # bump when the graph changes: cached models are then rebuilt
OPSET = 17  # LayerNormalization is a standard op from 17 on


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rag-assistant" / "onnx"


def model_file(model_dir: Path, int8: bool = False) -> Path:
    """Where the graph of this model is cached: keyed by the weights' path, size and mtime."""
    weights = model_dir / "model.safetensors"
    info = weights.stat()
    key = hashlib.sha1(
        f"{weights.resolve()}|{info.st_size}|{info.st_mtime_ns}|{GRAPH_VERSION}".encode()
    ).hexdigest()[:16]
    return cache_dir() / f"{model_dir.name}-{key}{'-int8' if int8 else ''}.onnx"


def build(model_dir: Path, int8: bool = False) -> Path:
    """The cached graph file, written first when missing (about a second, once).

    `int8`: the MatMul weights quantised to int8 per output channel (ONNX Runtime's dynamic
    quantisation; activations are quantised on the fly). About 1.7x faster on CPUs with VNNI;
    its vectors stay within cosine 0.99 of the float ones.
    """
    target = model_file(model_dir, int8)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                str(build(model_dir)),
                str(tmp),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                extra_options={"MatMulConstBOnly": True},
            )
        else:
            import onnx

            onnx.save(_graph(model_dir), str(tmp))
        tmp.replace(target)  # atomic: a concurrent builder never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _graph(model_dir: Path) -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    config = load_config(model_dir)
    layers, heads, hidden = config.layers, config.heads, config.hidden
    eps, dim = config.eps, config.head_dim
    raw = load_weights(model_dir)
    inits: list[Any] = []
    nodes: list[Any] = []
    count = [0]

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        count[0] += 1
        out = f"{op.lower()}_{count[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        w = const(prefix + ".weight", raw[prefix + ".weight"].T)
        b = const(prefix + ".bias", raw[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, w]), b])

    def layer_norm(x: str, prefix: str) -> str:
        g = const(prefix + ".weight", raw[prefix + ".weight"])
        b = const(prefix + ".bias", raw[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    split_heads = const("split_heads", np.array([0, 0, heads, dim], dtype=np.int64))
    merge_heads = const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(dim), dtype=np.float32))
    one = const("one", np.array(1.0, dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    inv_sqrt2 = const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), dtype=np.float32))
    neg = const("neg", np.array(-1e9, dtype=np.float32))

    # Embeddings: word + position + token type 0, then LayerNorm.
    word = node("Gather", [const("word", raw["embeddings.word_embeddings.weight"]), "input_ids"])
    length = node("Shape", ["input_ids"], start=1, end=2)  # [L], one-dimensional
    zero = const("zero_1d", np.array([0], dtype=np.int64))
    pos_table = const("pos", raw["embeddings.position_embeddings.weight"])
    pos = node("Slice", [pos_table, zero, length, zero])  # the first L position vectors
    token_type = const("type", raw["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(node("Add", [node("Add", [word, pos]), token_type]), "embeddings.LayerNorm")

    mask = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # [B, L]
    bias = node("Mul", [node("Sub", [one, mask]), neg])
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], dtype=np.int64))])

    for i in range(layers):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        q = node("Transpose", [node("Reshape", [q, split_heads])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), bias])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_heads])
        attn = linear(ctx, p + "attention.output.dense")
        x = layer_norm(node("Add", [attn, x]), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        gelu = node("Add", [node("Erf", [node("Mul", [h, inv_sqrt2])]), one])
        h = node("Mul", [node("Mul", [h, gelu]), half])
        x = layer_norm(node("Add", [linear(h, p + "output.dense"), x]), p + "output.LayerNorm")

    # Mean pooling over real tokens, then unit length.
    weights = node("Unsqueeze", [mask, const("axis2", np.array([2], dtype=np.int64))])
    axis1 = const("axes1", np.array([1], dtype=np.int64))
    summed = node("ReduceSum", [node("Mul", [x, weights]), axis1], keepdims=0)
    counts = node("ReduceSum", [weights, axis1], keepdims=0)
    pooled = node("Div", [summed, counts])
    norm = node("ReduceL2", [pooled], axes=[1], keepdims=1)  # axes is an attribute until opset 18
    norm = node("Max", [norm, const("tiny", np.array(1e-12, dtype=np.float32))])
    nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"]))

    graph = helper.make_graph(
        nodes,
        "sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class OnnxEncoder:
    """An ONNX Runtime session of the model, from the cache (built into it when missing, or in
    memory when the cache directory cannot be written), called like every encoder."""

    def __init__(self, model_dir: Path, threads: int, int8: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            source: Any = str(build(model_dir, int8))
        except OSError as exc:
            if int8:
                raise  # quantisation works on files only; the caller falls back to float
            log.info("ONNX model not cached (%s); building it in memory", exc)
            source = _graph(model_dir).SerializeToString()
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (vectors,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return vectors
