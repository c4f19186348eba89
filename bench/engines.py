"""The ONNX Runtime engine against torch, and int8 against fp32, in one run: a whole `clipsearch search` process on
a collection of N images (wall time and peak RSS, the engines in alternation; int8 searches an int8 collection of the
same vectors), the text query end to end in a warm process, the vision tower's speed (model only), the one-time
export and quantisation, and fidelity (cosine of each engine's vectors: ONNX fp32 against torch, int8 against fp32).

    python -m bench.engines --model DIR --vectors 100000 --json

The collections hold N synthetic unit vectors recorded under the model's identity (the search scans them as it
would real ones); the checkpoint should be the random-weight ViT-B/32 of `bench.checkpoint` (the real cost)."""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, machine, percentiles, whole_process
from bench.search import clustered, fill
from server.encoders.onnx_engine import OnnxEncoder
from server.encoders.onnx_export import read_export
from server.encoders.protocol import Encoder
from server.encoders.torch_engine import TransformersEncoder
from server.search.searcher import Searcher
from server.store.collection_store import CollectionStore

RUNS = 5
SEARCH = "import sys; from server.cli.main import main; sys.exit(main(sys.argv[1:]))"
VARIANTS = {  # name -> the search command's options
    "onnx": ["--engine", "onnx"],
    "torch": ["--engine", "torch"],
    "int8": ["-c", "int8"],  # an int8 collection: ONNX Runtime's int8 towers whatever the engine
}


def search_process(variant: str, env: dict[str, str]) -> tuple[float, float]:
    command = [sys.executable, "-c", SEARCH, "search", "a dog on a beach at sunset", "-k", "10", *VARIANTS[variant]]
    return whole_process(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint folder (bench.checkpoint writes ViT-B/32)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        cache, index_dir = Path(tmp) / "cache", Path(tmp) / "index"
        env = {**os.environ, "CLIPSEARCH_CACHE": str(cache), "CLIPSEARCH_INDEX_DIR": str(index_dir)}
        os.environ.update(CLIPSEARCH_CACHE=str(cache))
        torch_encoder = TransformersEncoder(model)
        onnx_encoder = OnnxEncoder(TransformersEncoder(model), cache=cache / "onnx", strict=True)
        int8_encoder = OnnxEncoder(TransformersEncoder(model), cache=cache / "onnx", precision="int8")
        started = time.perf_counter()
        dim = onnx_encoder.dim  # exports now
        export_s = time.perf_counter() - started
        started = time.perf_counter()
        int8_encoder.encode_texts(["quantises now"])
        quantise_s = time.perf_counter() - started
        int8_export = read_export(int8_encoder.folder)

        store = CollectionStore(index_dir)
        rng = np.random.default_rng(0)
        vectors = clustered(args.vectors, dim, rng.standard_normal((200, dim)).astype(np.float32), rng)
        identity = onnx_encoder.model_identity
        collection = store.create("default", model, dim, index_policy="flat", identity=identity)
        fill(collection, vectors)
        fill(store.create("int8", model, dim, index_policy="flat", identity=identity, precision="int8"), vectors)

        whole: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for name in VARIANTS:  # once each, untimed: the OS file cache holds every engine's files
            search_process(name, env)
        for _ in range(RUNS):
            for name in VARIANTS:
                whole[name].append(search_process(name, env))

        encoders: dict[str, Encoder] = {"onnx": onnx_encoder, "torch": torch_encoder, "int8": int8_encoder}
        words = ["a dog on a beach", "red bicycle", "mountains at sunset", "a birthday cake with candles"]
        query_ms = {}
        for name, encoder in encoders.items():
            searcher = Searcher(encoder)
            searcher.by_text(collection, "warm up", 10)
            latencies = []
            for i in range(40):
                began = time.perf_counter()
                searcher.by_text(collection, f"{words[i % len(words)]} {i}", 10)
                latencies.append((time.perf_counter() - began) * 1000)
            query_ms[name] = percentiles(latencies)

        images = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
        vision, embedded = {}, {}
        for name, encoder in encoders.items():
            encoder.encode_pixels(images[:32])
            began = time.perf_counter()
            embedded[name] = encoder.encode_pixels(images)
            vision[name] = round(len(images) / (time.perf_counter() - began), 1)
        texts = [f"{words[i % len(words)]} number {i}" for i in range(256)]
        text_vectors = {name: encoder.encode_texts(texts) for name, encoder in encoders.items()}

    def cosine(a: str, b: str) -> dict[str, float]:
        return {
            "texts": float((text_vectors[a] * text_vectors[b]).sum(axis=1).min()),
            "images": float((embedded[a] * embedded[b]).sum(axis=1).min()),
        }

    def summary(engine: str) -> dict[str, float]:
        seconds = [s for s, _ in whole[engine]]
        return {
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            "peak_rss_mb": round(max(r for _, r in whole[engine]), 1),
        }

    searches = {name: summary(name) for name in VARIANTS}
    emit(
        {
            "benchmark": "engines",
            "machine": machine(),
            "vectors": args.vectors,
            "export_s": round(export_s, 1),
            "int8_quantise_s": round(quantise_s, 1),
            "int8_check_min_cosine": int8_export.min_cosine if int8_export else None,
            "cli_search": {
                **searches,
                "onnx_vs_torch": round(searches["onnx"]["median_s"] / searches["torch"]["median_s"], 3),
                "int8_vs_torch": round(searches["int8"]["median_s"] / searches["torch"]["median_s"], 3),
            },
            "text_query_end_to_end": query_ms,
            "vision_images_per_s": vision,
            "vision_int8_vs_onnx": round(vision["int8"] / vision["onnx"], 2),
            "fidelity_min_cosine": {"onnx_vs_torch": cosine("onnx", "torch"), "int8_vs_onnx": cosine("int8", "onnx")},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
