"""Peak memory of a collection's opens and index changes at N vectors, each in a fresh process: a normal open, an
open whose index file is missing or behind the catalog (rebuilt from it), a Flat→IVF conversion, an open of the IVF
index it made, and a retrain of that index (as when a collection has grown past 4× the size its index was trained
at; the manifest is told it was trained on N/8).

    python -m bench.memory --vectors 1000000 --json

The collection holds N synthetic 512-d unit vectors (clustered as in bench.search); its vectors alone are N × 2 KB.
Peaks are each child's VmHWM (bench.common.peak_rss_mb): ru_maxrss would carry this parent's own peak.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, machine, peak_rss_mb
from bench.search import clustered
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

DIM = 512
STEPS = ("open", "stale", "convert", "open_ivf", "retrain")


def child(folder: Path, step: str) -> None:
    """One step in this fresh process; prints its seconds and peak RSS."""
    started = time.perf_counter()
    if step == "stale":
        for stored in folder.glob("bench/index.*.faiss"):
            stored.unlink()  # as after a crash between a commit and its index file
    if step == "retrain":
        manifest = folder / "bench" / "manifest.json"
        data = json.loads(manifest.read_text(encoding="utf-8"))
        data["index_params"]["trained_on"] = data["index_params"]["trained_on"] // 8
        manifest.write_text(json.dumps(data), encoding="utf-8")
    collection = CollectionStore(folder).open("bench", "bench-model")
    _ = collection.ntotal
    trained_on = collection.manifest.index_params.get("trained_on")
    if step in ("convert", "retrain"):
        collection.set_index_policy("ivf")
        with collection.writer():
            pass  # the end of a write switches the index to what the policy asks for, or retrains it
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak, 1),
                "kind": collection.manifest.index_type,
                "trained_on": [trained_on, collection.manifest.index_params.get("trained_on")],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.child)
        return
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        collection = CollectionStore(Path(tmp)).create("bench", "bench-model", DIM, index_policy="flat")
        chunk = 50_000
        for start in range(0, args.vectors, chunk):
            count = min(chunk, args.vectors - start)
            vectors = clustered(count, DIM, rng.standard_normal((200, DIM)).astype(np.float32), rng)
            with collection.writer() as writer:
                for i, vector in enumerate(vectors, start=start):
                    writer.add(NewImage(Path(f"/bench/{i}.jpg"), 1, 1, f"h{i}", 640, 480), vector)
        collection.close()
        steps = {}
        for step in STEPS:
            command = [sys.executable, "-m", "bench.memory", "--child", step, "--folder", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            steps[step] = json.loads(done.stdout.strip().splitlines()[-1])
    result: dict[str, object] = {
        "machine": machine(),
        "vectors": args.vectors,
        "vectors_mb": args.vectors * DIM * 4 / 1e6,
    }
    result.update(steps)
    emit(result, args.json)


if __name__ == "__main__":
    main()
