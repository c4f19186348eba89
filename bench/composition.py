"""Composed queries against plain ones, through `Searcher` with a real encoder over a collection of synthetic vectors:
a text query alone; the query with 7 more terms (5 texts, 2 images already in the collection: 8 terms in all), every
text new; the same as a step of a refinement (the assistant adds one new text to terms it asked before, which the
encoder's text cache holds); and with one more image that is not in the collection (it has to be embedded). Every
query's texts are new to the encoder (a round number is appended) unless the case says otherwise.

    python -m bench.checkpoint /tmp/clip-vitb32 && python -m bench.composition --model /tmp/clip-vitb32 --json

The cases take turns on each query, so a slow spell of the machine touches them all alike.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, machine, make_photos, percentiles
from server.encoders.protocol import normalize
from server.encoders.torch_engine import TransformersEncoder
from server.search.composition import Extras
from server.search.searcher import Searcher
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

QUERIES = ["a dog on a beach", "a red bicycle", "mountains at sunrise", "a birthday cake", "a city street at night"]
MORE_TEXTS = ("2:sunset", "people", "0.5:water", "a photo", "colourful")
CASES = (
    "plain (1 term)",
    "composed (8 terms, all texts new)",
    "refinement (8 terms, 1 text new)",
    "composed + 1 image to embed (9 terms, texts new)",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (e.g. from bench.checkpoint)")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    encoder = TransformersEncoder(args.model)
    searcher = Searcher(encoder)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp) / "photos", 3, size=(640, 480))
        indexed, outside = photos[:2], photos[2]
        collection = CollectionStore(Path(tmp) / "index").create("bench", args.model, encoder.dim, "flat")
        with collection.writer() as writer:
            for photo in indexed:  # the image terms the collection holds: their stored vectors are reused
                info = photo.stat()
                vector = searcher.image_vector(collection, photo)
                writer.add(NewImage(photo, info.st_size, info.st_mtime_ns, photo.name, 640, 480), vector)
            filler = normalize(rng.standard_normal((args.vectors, encoder.dim)).astype(np.float32))
            for i, vector in enumerate(filler):
                writer.add(NewImage(Path(f"/bench/{i}.jpg"), 1, 1, f"h{i}", 640, 480), vector)
        images = tuple(map(str, indexed))
        searcher.by_text(collection, "warm up", 10)  # the model loads here, not in a timed call
        timings: dict[str, list[float]] = {name: [] for name in CASES}
        for round_ in range(args.rounds):
            for number, query in enumerate(QUERIES):
                tag = f" {round_}.{number}"  # makes every text of this query new to the encoder's cache
                fresh = tuple(t + tag for t in MORE_TEXTS)
                searcher.by_text(collection, query, 10, extras=Extras(fresh[:4]))  # asked before the refinement
                cases = {
                    CASES[0]: (query + tag, None),
                    CASES[1]: (query + tag + " new", Extras(tuple(t + " new" for t in fresh), (), images)),
                    CASES[2]: (query, Extras(fresh, (), images)),
                    CASES[3]: (
                        query + tag + " more",
                        Extras(tuple(t + " more" for t in fresh), (), images, (str(outside),)),
                    ),
                }
                for name, (text, extras) in cases.items():
                    started = time.perf_counter()
                    searcher.by_text(collection, text, 10, extras=extras)
                    timings[name].append((time.perf_counter() - started) * 1000)
        collection.close()
    rows = {name: percentiles(samples) for name, samples in timings.items()}
    base = rows[CASES[0]]["p50_ms"]
    for row in rows.values():
        row["p50_vs_plain"] = round(row["p50_ms"] / base, 2)
    emit({"machine": machine(), "vectors": args.vectors, "index": "flat", "cases": rows}, args.json)


if __name__ == "__main__":
    main()
