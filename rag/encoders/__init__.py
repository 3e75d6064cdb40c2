"""BERT forward passes for the bundled MiniLM: token ids -> unit vectors.

`bert` reads the model's config and weights (one loader for every pass); `numpy_encoder` is the
reference implementation, `onnx_encoder` the float32 (and int8) ONNX Runtime graph written from
the same weights, `torch_encoder` the bfloat16 pass for documents on CPUs that have it natively.
Each encoder is called with padded token ids and an attention mask and returns unit vectors.
"""
