"""The ONNX Runtime engine against torch, in one run: a whole `clipsearch search` process on a collection of N
images (wall time and peak RSS, each engine in alternation), the text query end to end in a warm process, the
vision tower's speed (model only), the one-time export, and fidelity (cosine of each engine's vectors).

    python -m bench.engines --model DIR --vectors 100000 --json

The collection holds N synthetic unit vectors recorded under the model's identity (the search scans them as it
would real ones); the checkpoint should be the random-weight ViT-B/32 of `bench.checkpoint` (the real cost)."""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, machine, percentiles
from bench.search import clustered, fill
from server.collection import CollectionStore
from server.encoder import TransformersEncoder
from server.onnx_engine import OnnxEncoder
from server.search import Searcher

RUNS = 5
SEARCH = "import sys; from server.cli import main; sys.exit(main(sys.argv[1:]))"


LAUNCHER = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)


def whole_process(engine: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `clipsearch search` process, started from a small launcher (a child's peak
    RSS would otherwise start from this big process's, inherited at fork)."""
    command = [sys.executable, "-c", SEARCH, "search", "a dog on a beach at sunset", "-k", "10", "--engine", engine]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"search with --engine {engine} failed: {done.stderr}")
    return seconds, int(done.stdout.split()[-1]) / 1024


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
        started = time.perf_counter()
        dim = onnx_encoder.dim  # exports now
        export_s = time.perf_counter() - started

        store = CollectionStore(index_dir)
        collection = store.create("default", model, dim, index_policy="flat", identity=onnx_encoder.model_identity)
        rng = np.random.default_rng(0)
        fill(collection, clustered(args.vectors, dim, rng.standard_normal((200, dim)).astype(np.float32), rng))

        whole: dict[str, list[tuple[float, float]]] = {"onnx": [], "torch": []}
        for engine in ("onnx", "torch"):  # once each, untimed: the OS file cache holds both engines' files
            whole_process(engine, env)
        for _ in range(RUNS):
            for engine in ("onnx", "torch"):
                whole[engine].append(whole_process(engine, env))

        words = ["a dog on a beach", "red bicycle", "mountains at sunset", "a birthday cake with candles"]
        query_ms = {}
        for name, encoder in (("onnx", onnx_encoder), ("torch", torch_encoder)):
            searcher = Searcher(encoder)
            searcher.by_text(collection, "warm up", 10)
            latencies = []
            for i in range(40):
                began = time.perf_counter()
                searcher.by_text(collection, f"{words[i % len(words)]} {i}", 10)
                latencies.append((time.perf_counter() - began) * 1000)
            query_ms[name] = percentiles(latencies)

        images = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
        vision, vectors = {}, {}
        for name, encoder in (("onnx", onnx_encoder), ("torch", torch_encoder)):
            encoder.encode_pixels(images[:32])
            began = time.perf_counter()
            vectors[name] = encoder.encode_pixels(images)
            vision[name] = round(len(images) / (time.perf_counter() - began), 1)
        texts = [f"{words[i % len(words)]} number {i}" for i in range(256)]
        text_cos = (onnx_encoder.encode_texts(texts) * torch_encoder.encode_texts(texts)).sum(axis=1)
        image_cos = (vectors["onnx"] * vectors["torch"]).sum(axis=1)

    def summary(engine: str) -> dict[str, float]:
        seconds = [s for s, _ in whole[engine]]
        return {
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            "peak_rss_mb": round(max(r for _, r in whole[engine]), 1),
        }

    onnx_s, torch_s = summary("onnx"), summary("torch")
    emit(
        {
            "benchmark": "engines",
            "machine": machine(),
            "vectors": args.vectors,
            "export_s": round(export_s, 1),
            "cli_search": {
                "onnx": onnx_s,
                "torch": torch_s,
                "ratio": round(onnx_s["median_s"] / torch_s["median_s"], 3),
            },
            "text_query_end_to_end": query_ms,
            "vision_images_per_s": vision,
            "fidelity_min_cosine": {"texts": float(text_cos.min()), "images": float(image_cos.min())},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
