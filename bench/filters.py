"""Filtered search latency and exactness: filters passing 50 %, 1 % and 0.01 % of a collection against the unfiltered
search, on Flat and IVF, through `Searcher` (catalog selection + FAISS selector or exact subset scoring).

    python -m bench.filters --vectors 100000 --json
    python -m bench.filters --vectors 1000000 --kinds ivf --json

Vectors as in bench.search (clustered, 512-d); each image gets a folder (50 % split), a capture date (1 % of them
on one day) and a camera (0.01 % from a rare one). Latency is one query at a time, k=10, p50/p95 over 3 rounds of
100 queries, the cases taking turns on each query, and again (`gc_frozen`) over 3 rounds interleaved with those in
which every object alive is frozen out of the garbage collector's view; recall@10 is against brute force over the
passing images.
"""

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import emit, machine, percentiles
from bench.search import clustered
from server.images.metadata import PhotoMetadata
from server.search.filtered import select_ids
from server.search.filters import ResultOrder, SearchFilter
from server.search.searcher import _hits
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

DIM = 512
QUERIES = 100
ROUNDS = 3  # each query is timed this many times per case


def photo(i: int) -> PhotoMetadata:
    day = "2024-03-01" if i % 100 == 0 else f"2024-{1 + i % 12:02d}-{2 + i % 27:02d}"
    camera = "Leica M11" if i % 10_000 == 7 else "Apple iPhone 15"
    return PhotoMetadata(f"{day}T12:00:00", "exif", f"{day}T12:00:00.000000", None, None, None, camera, 640, 480)


def build(folder: Path, vectors: npt.NDArray[np.float32], kind: str) -> Collection:
    collection = CollectionStore(folder).create("bench", "bench-model", DIM, index_policy=kind)
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            half = "a" if i % 2 else "b"
            writer.add(NewImage(Path(f"/bench/{half}/{i}.jpg"), 1, 1, f"h{i}", 640, 480, photo(i)), vector)
            if i % 50_000 == 49_999:
                writer.commit()
    return collection


def exact(
    vectors: npt.NDArray[np.float32],
    passing: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    query: npt.NDArray[np.float32],
) -> set[int]:
    """The true top-10 ids among `passing` (ids sorted, vectors in id order)."""
    rows = np.searchsorted(ids, passing)
    scores = vectors[rows] @ query
    return set(passing[np.argsort(-scores)[:10]].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--kinds", nargs="+", choices=["flat", "ivf"], default=["flat", "ivf"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    vectors = clustered(args.vectors, DIM, centres, rng)
    queries = clustered(QUERIES, DIM, centres, rng)
    cases = {
        "none": SearchFilter.parse(),
        "50%": SearchFilter.parse(folder=Path("/bench/a")),
        "1%": SearchFilter.parse(taken_after="2024-03-01", taken_before="2024-03-01"),
        "0.01%": SearchFilter.parse(camera="leica"),
    }
    out: dict[str, object] = {"machine": machine(), "vectors": args.vectors, "k": 10}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            collection = build(Path(tmp) / kind, vectors, kind)
            ids, _, stored = collection.all_vectors()
            passing: dict[str, npt.NDArray[np.int64]] = {}
            for name, filters in cases.items():
                where, params = filters.sql(collection.cameras() if filters.camera else None)
                passing[name] = np.sort(select_ids(collection, where, params)) if filters.active else ids
            latencies: dict[str, list[float]] = {name: [] for name in cases}
            frozen: dict[str, list[float]] = {name: [] for name in cases}
            recalls: dict[str, list[float]] = {name: [] for name in cases}
            # The cases take turns on each query, so a slow spell of the machine touches them all alike. Rounds
            # alternate with the objects alive so far frozen out of the garbage collector's view (gc.freeze), so
            # what full collections cost the tail is seen beside it.
            for rep in range(2 * ROUNDS):
                if rep % 2:
                    gc.freeze()
                for query in queries:
                    for name, filters in cases.items():
                        started = time.perf_counter()
                        hits, _ = _hits(collection, query, 10, filters, ResultOrder())
                        (frozen if rep % 2 else latencies)[name].append((time.perf_counter() - started) * 1000)
                        if rep == 0:
                            got = {collection.find_path(h.path).id for h in hits}  # type: ignore[union-attr]
                            want = exact(stored, passing[name], ids, query)
                            recalls[name].append(len(got & want) / min(10, len(passing[name])))
                gc.unfreeze()
            rows: dict[str, object] = {
                name: {
                    "passing": len(passing[name]),
                    **percentiles(latencies[name]),
                    "gc_frozen": percentiles(frozen[name]),
                    "recall_at_10": round(float(np.mean(recalls[name])), 4),
                }
                for name in cases
            }
            out[f"{kind}_gc"] = {"tracked_objects": len(gc.get_objects()), "collections": gc.get_stats()}
            base = rows["none"]["p50_ms"]  # type: ignore[index]
            for name in ("50%", "1%", "0.01%"):
                rows[name]["p50_vs_unfiltered"] = round(rows[name]["p50_ms"] / base, 2)  # type: ignore[index]
            out[kind] = {"index": collection.manifest.index_type, **rows}
            collection.close()
    emit(out, args.json)


if __name__ == "__main__":
    main()
