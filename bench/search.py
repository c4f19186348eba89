"""Single-query search latency through the project's search path: exact Flat against the approximate index the
project chooses at that size, on synthetic clustered unit vectors.

    python -m bench.search --vectors 1000000 --json
    python -m bench.search --vectors 100000 --model PATH --json   # adds text queries end to end

Vectors are drawn around 2,000 random centres with noise larger than the centres (overlapping clusters);
queries are fresh draws from the same distribution. The collection is written through the project's catalog and
writer like a real one. Latency is
`Collection.search` (FAISS search + catalog path lookup), one query at a time, k=10. With --model, `text_query`
times `Searcher.by_text` end to end (tokenise, encode, search, lookup) on the collection's automatic index.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import emit, machine, peak_rss_mb, percentiles
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.faiss_index import AUTO_ANN_THRESHOLD, choose_kind
from server.store.writer import NewImage

QUERIES = 200
WARMUP = 10


NOISE = 1.5  # relative to the cluster centres' scale: clusters overlap, as photo embeddings do


def clustered(
    count: int, dim: int, centres: npt.NDArray[np.float32], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Unit vectors drawn around random cluster centres."""
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        labels = rng.integers(0, len(centres), stop - start)
        out[start:stop] = centres[labels] + rng.standard_normal((stop - start, dim)).astype(np.float32) * NOISE
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def fill(collection: Collection, vectors: npt.NDArray[np.float32]) -> None:
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            writer.add(NewImage(Path(f"/bench/{i // 1000}/{i}.jpg"), 1, 1, f"h{i}", 1, 1), vector)
            if i % 50_000 == 49_999:
                writer.commit()


def timed_search(collection: Collection, queries: npt.NDArray[np.float32]) -> tuple[list[float], list[list[str]]]:
    for query in queries[:WARMUP]:
        collection.search(query[np.newaxis], 10)
    latencies, results = [], []
    for query in queries:
        started = time.perf_counter()
        hits = collection.search(query[np.newaxis], 10)[0]
        latencies.append((time.perf_counter() - started) * 1000)
        results.append([str(path) for path, _ in hits])
    return latencies, results


def index_mb(collection: Collection) -> float:
    import faiss

    return round(len(faiss.serialize_index(collection._index)) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--model", help="local CLIP checkpoint, to also time text queries end to end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    vectors = clustered(args.vectors, args.dim, centres, rng)
    # Queries are new draws from the same clusters, not copies of stored vectors.
    queries = clustered(QUERIES, args.dim, centres, np.random.default_rng(1))
    out: dict[str, object] = {"machine": machine(), "vectors": args.vectors, "dim": args.dim}

    with tempfile.TemporaryDirectory() as folder:
        store = CollectionStore(Path(folder))
        collection = store.create("bench", "bench-synthetic", args.dim, index_policy="flat")
        started = time.perf_counter()
        fill(collection, vectors)
        out["write_seconds"] = round(time.perf_counter() - started, 1)
        flat_ms, exact = timed_search(collection, queries)
        out["flat"] = {**percentiles(flat_ms), "memory_mb": index_mb(collection)}

        kind = choose_kind("auto", args.vectors)
        started = time.perf_counter()
        collection.set_index_policy("ivf")
        with collection.writer():
            pass  # the end of a write builds the index the policy asks for
        build_seconds = time.perf_counter() - started
        ann_ms, approximate = timed_search(collection, queries)
        recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)]))
        out["ann"] = {
            "index_type": "ivf",
            "params": collection.manifest.index_params,
            "build_seconds": round(build_seconds, 1),
            "memory_mb": index_mb(collection),
            **percentiles(ann_ms),
            "recall_at_10": round(recall, 4),
        }
        out["auto_choice"] = {"index_type": kind, "threshold": AUTO_ANN_THRESHOLD}
        out["flat_over_ann_p50"] = round(out["flat"]["p50_ms"] / out["ann"]["p50_ms"], 1)  # type: ignore[index]

        if args.model:
            out["text_query"] = text_latency(collection, store, args.model, kind)
    out["peak_rss_mb"] = peak_rss_mb()
    emit(out, args.json)


def text_latency(collection: Collection, store: CollectionStore, model: str, kind: str) -> dict[str, object]:
    """End-to-end text query on the index 'auto' picks, with the real text tower (any checkpoint of the right dim)."""
    from server.encoders.torch_engine import TransformersEncoder
    from server.search.searcher import Searcher

    collection.set_index_policy(kind)
    with collection.writer():
        pass
    searcher = Searcher(TransformersEncoder(model))
    words = ["a dog on a beach", "red bicycle", "mountains at sunset", "a birthday cake with candles"]
    for text in words:
        searcher.by_text(collection, text, 10)
    latencies = []
    for i in range(QUERIES // 2):
        started = time.perf_counter()
        searcher.by_text(collection, f"{words[i % len(words)]} {i}", 10)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"index_type": collection.manifest.index_type, **percentiles(latencies)}


if __name__ == "__main__":
    main()
