"""Turning images and texts into unit vectors: the `Encoder` protocol and preprocessing (`protocol`), the torch
engine (`torch_engine`), the ONNX Runtime engine (`onnx_engine`) with its export and quantisation (`onnx_export`),
fast tokenizers (`fast_tokenizers`), the pool of loaded encoders (`pool`), and text in photos read by OCR
(`text_recognition`: the `TextRecognizer` protocol, RapidOCR's PP-OCRv4 on ONNX Runtime). Imports `models` and the
bottom."""
