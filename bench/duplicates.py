"""find_duplicates at scale: synthetic 512-d vectors with planted duplicate groups, time, peak memory against the
index's own size, and precision/recall of the planted groups.

    python -m bench.duplicates --vectors 100000 --json
    python -m bench.duplicates --vectors 1000000 --kind ivf --json

Peak memory is measured in two fresh processes: one that only opens the collection (its index's own memory), one that
opens it and finds the duplicates. Every image gets a random 64-bit perceptual hash; a planted group (2-6 members)
shares its vector up to small noise (cosine ≈ 0.98-0.99) and its hash up to a few flipped bits, as re-encoded copies and
bursts do. 1 % of the images are in planted groups, plus a few exact copies (same content hash). The background vectors
are clustered as in bench.search, so near neighbours exist everywhere without being duplicates.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import emit, machine, peak_rss_mb
from bench.search import clustered
from server.images.fingerprint import Perceptual
from server.library.duplicate_tasks import DuplicateTasks, Running
from server.library.duplicates import DuplicateQuery, page_of
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

DIM = 512
MAX_PAGE = 1000


def plant(count: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], list[int], list[int], list[str]]:
    """Vectors, hashes, group labels (-1: none) and content hashes with groups planted in them."""
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    vectors = clustered(count, DIM, centres, rng)
    hashes = rng.integers(-(2**63), 2**63 - 1, count, dtype=np.int64).tolist()
    labels = [-1] * count
    contents = [f"h{i}" for i in range(count)]
    position, group = 0, 0
    planted_images = count // 100
    order = rng.permutation(count)
    while position < planted_images:
        size = int(rng.integers(2, 7))
        members = order[position : position + size].tolist()
        position += size
        base = members[0]
        for member in members:
            labels[member] = group
        for member in members[1:]:
            noise = rng.normal(0, 0.006, DIM).astype(np.float32)
            vector = vectors[base] + noise
            vectors[member] = vector / np.linalg.norm(vector)
            flips = rng.choice(64, int(rng.integers(0, 8)), replace=False)
            value = hashes[base] & ((1 << 64) - 1)
            for bit in flips.tolist():
                value ^= 1 << bit
            hashes[member] = value - (1 << 64) if value >= 1 << 63 else value
            if rng.random() < 0.2:  # an exact copy: same file content
                contents[member] = contents[base]
                vectors[member] = vectors[base]
                hashes[member] = hashes[base]
        group += 1
    return vectors, hashes, labels, contents


def child(folder: Path, search: bool) -> None:
    """In a fresh process: open the collection (its index loads), optionally find its duplicates; print the peak RSS
    (and the groups found, as sets of image numbers)."""
    collection = CollectionStore(folder).open("bench", "bench-model")
    _ = collection.ntotal
    result: dict[str, object] = {}
    if search:
        tasks = DuplicateTasks()  # as the service keeps them: computed once, remembered per commit
        started = time.perf_counter()
        groups: list[list[int]] = []
        found = tasks.groups(collection, DuplicateQuery(max_groups=MAX_PAGE))
        assert not isinstance(found, Running)
        report = page_of(collection, found, DuplicateQuery(max_groups=MAX_PAGE))
        result["seconds"] = round(time.perf_counter() - started, 2)
        offset = 0
        while True:
            groups += [sorted(int(Path(m.path).stem) for m in g.members) for g in report.groups]
            offset += MAX_PAGE
            if offset >= report.groups_total:
                break
            report = page_of(collection, found, DuplicateQuery(max_groups=MAX_PAGE, offset=offset))
        started = time.perf_counter()
        again = tasks.groups(collection, DuplicateQuery())
        assert not isinstance(again, Running)
        page_of(collection, again, DuplicateQuery())
        result["second_call_seconds"] = round(time.perf_counter() - started, 3)
        result["groups"] = groups
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--kind", choices=["flat", "ivf"], default="flat")
    parser.add_argument("--child", choices=["open", "search"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.child == "search")
        return
    rng = np.random.default_rng(0)
    vectors, hashes, labels, contents = plant(args.vectors, rng)
    with tempfile.TemporaryDirectory() as tmp:
        collection = CollectionStore(Path(tmp)).create("bench", "bench-model", DIM, index_policy=args.kind)
        with collection.writer() as writer:
            for i, vector in enumerate(vectors):
                image = NewImage(Path(f"/bench/{i}.jpg"), 1, 1, contents[i], 640, 480, None, Perceptual(hashes[i], 99))
                writer.add(image, vector)
                if i % 50_000 == 49_999:
                    writer.commit()
        kind = collection.manifest.index_type
        collection.close()
        runs = {}
        for mode in ("open", "search"):
            command = [sys.executable, "-m", "bench.duplicates", "--child", mode, "--folder", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    planted: dict[int, set[int]] = {}
    for i, label in enumerate(labels):
        if label >= 0:
            planted.setdefault(label, set()).add(i)
    truth = {frozenset(members) for members in planted.values()}
    found = {frozenset(group) for group in runs["search"]["groups"]}  # type: ignore[union-attr]
    emit(
        {
            "machine": machine(),
            "vectors": args.vectors,
            "index": kind,
            "planted_groups": len(truth),
            "found_groups": len(found),
            "group_precision": round(len(found & truth) / max(len(found), 1), 4),
            "group_recall": round(len(found & truth) / max(len(truth), 1), 4),
            "seconds": runs["search"]["seconds"],
            "second_call_seconds": runs["search"]["second_call_seconds"],
            "index_mb": round(args.vectors * DIM * 4 / 1e6, 1),
            "peak_rss_mb_open_only": runs["open"]["peak_rss_mb"],
            "peak_rss_mb_open_and_search": runs["search"]["peak_rss_mb"],
            "peak_ratio": round(runs["search"]["peak_rss_mb"] / runs["open"]["peak_rss_mb"], 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
