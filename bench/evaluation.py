"""Time `evaluate_retrieval` on a synthetic labelled collection (no model: stored vectors, seeded clusters).

python -m bench.evaluation --images 10000 --labels 100 --json
"""

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import emit, machine
from server.encoders.protocol import normalize
from server.evaluation.evaluate import evaluate
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage


class LabelTextEncoder:
    """Text side only: a label's query maps to its cluster centre plus noise; images are never re-embedded."""

    model_name = "bench-synthetic"
    input_size = 224

    def __init__(self, centres: dict[str, npt.NDArray[np.float32]]) -> None:
        self.centres = centres
        self.dim = next(iter(centres.values())).shape[0]

    def preprocess(self, image: object) -> npt.NDArray[np.float32]:
        raise NotImplementedError("the benchmark never decodes images")

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise NotImplementedError("the benchmark never embeds images")

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(1)
        rows = [self.centres[t.rsplit(" ", 1)[-1]] + rng.normal(0, 0.05, self.dim) for t in texts]
        return normalize(np.asarray(rows))


def build(folder: Path, images: int, labels: int, dim: int) -> tuple[CollectionStore, LabelTextEncoder]:
    rng = np.random.default_rng(0)
    centres = {f"label{i}": rng.normal(0, 1, dim).astype(np.float32) for i in range(labels)}
    names = list(centres)
    store = CollectionStore(folder)
    collection = store.create("bench", LabelTextEncoder.model_name, dim)
    with collection.writer() as writer:
        writer.record_folder(Path("/bench"))
        for i in range(images):
            label = names[i % labels]
            vector = normalize((centres[label] + rng.normal(0, 3.0, dim)).astype(np.float32)[np.newaxis])[0]
            writer.add(NewImage(Path(f"/bench/{label}/{i}.jpg"), 1, 1, f"h{i}", 1, 1), vector)
    collection.close()
    return store, LabelTextEncoder(centres)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store, encoder = build(Path(tmp), args.images, args.labels, args.dim)
        build_seconds = time.perf_counter() - started
        collection = store.open("bench", encoder.model_name)
        started = time.perf_counter()
        result = evaluate(collection, encoder, ks=(1, 3, 5, 10))
        seconds = time.perf_counter() - started
    report = result.report
    out = {
        "machine": machine(),
        "images": args.images,
        "labels": args.labels,
        "image_queries": report.image_to_image.queries,
        "text_queries": report.text_to_image.queries,
        "evaluate_seconds": round(seconds, 2),
        "build_seconds": round(build_seconds, 2),
        "image_to_image_map": report.image_to_image.map,
        "text_to_image_map": report.text_to_image.map,
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
