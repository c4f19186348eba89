"""Turning images and texts into unit vectors: the `Encoder` protocol and preprocessing (`protocol`), the torch
engine (`torch_engine`), the ONNX Runtime engine (`onnx_engine`) with its export and quantisation (`onnx_export`),
fast tokenizers (`fast_tokenizers`) and the pool of loaded encoders (`pool`). Imports `models` and the bottom."""
