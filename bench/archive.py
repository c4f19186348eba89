"""An archive's on-disk IVF-PQ index at scale (issue 25), on synthetic vectors: build time by stage, size on disk,
peak RSS while building and while serving, query latency p50/p95 cold (the archive's pages dropped from the page
cache first) and warm, and recall@10 against exact search.

    python -m bench.archive --vectors 1000000 --json
    python -m bench.archive --vectors 10000000 --json     # ~16 GB of temporary disk (--folder: where)

The vectors are what store/ondisk_index.py indexes in a real archive, generated chunk by chunk (never all in memory),
the same on every pass: unit vectors around 20,000 cluster centres that share a common direction (CLIP's image
vectors are anisotropic: two random photos have cosine ~0.5), so that neighbours are neighbours and IVF's lists are
uneven, as they are in a real library. The build runs through the same functions `archive_build` calls
(`ondisk_index.train`, `fill_part`, `merge`, `MappedArchive`, `calibrate_archive`), in this process, parts made one
at a time; shards, catalog and Ray are left out (bench.cluster measures the embedding). Each phase runs in a process
of its own, so each peak RSS is that phase's alone."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import emit, machine, peak_rss_mb, percentiles, proc_status_mb

CHUNK = 100_000
CENTRES = 20_000
QUERIES = 200


def chunk(number: int, size: int, dim: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Vectors of chunk `number` (the same on every call)."""
    centres = _centres(dim, seed)
    rng = np.random.default_rng((seed, number))
    which = rng.integers(0, len(centres), size)
    vectors = centres[which] + rng.standard_normal((size, dim), dtype=np.float32) * np.float32(0.55 / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


_CENTRE_CACHE: dict[tuple[int, int], npt.NDArray[np.float32]] = {}


def _centres(dim: int, seed: int) -> npt.NDArray[np.float32]:
    if (dim, seed) not in _CENTRE_CACHE:
        rng = np.random.default_rng((seed, 1 << 30))
        common = rng.standard_normal(dim).astype(np.float32)
        common /= np.linalg.norm(common)
        spread = rng.standard_normal((CENTRES, dim)).astype(np.float32)
        spread /= np.linalg.norm(spread, axis=1, keepdims=True)
        centres = 0.7 * common + 0.75 * spread
        _CENTRE_CACHE[(dim, seed)] = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    return _CENTRE_CACHE[(dim, seed)]


def chunks(count: int, dim: int) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    for number, start in enumerate(range(0, count, CHUNK)):
        size = min(CHUNK, count - start)
        # Ids as an archive's are: 63 bits of a hash, in no order.
        ids = (np.arange(start, start + size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(1)
        yield ids.astype(np.int64), chunk(number, size, dim)


def queries(dim: int) -> npt.NDArray[np.float32]:
    """Held out: drawn around the same centres, never added."""
    return chunk(1 << 40, QUERIES, dim)


def build(folder: Path, count: int, dim: int) -> dict[str, object]:
    import faiss

    from server.store import ondisk_index
    from server.store.faiss_index import StreamedExact

    times: dict[str, float] = {}
    started = time.perf_counter()
    wanted = min(count, ondisk_index.MAX_TRAINING_VECTORS)
    rng = np.random.default_rng(7)
    picks = []  # a uniform sample: a share of each chunk
    for _, vectors in chunks(count, dim):
        picks.append(vectors[rng.random(len(vectors)) < wanted / count])
    sample = np.concatenate(picks)[:wanted]
    times["sample_s"] = time.perf_counter() - started

    began = time.perf_counter()
    trained = ondisk_index.train(sample, count)
    del sample, picks
    times["train_s"] = time.perf_counter() - began

    began = time.perf_counter()
    serialised = faiss.serialize_index(trained)
    parts = (ondisk_index.fill_part(serialised, ids, vectors) for ids, vectors in _grouped(count, dim, 1))
    ondisk_index.merge(folder, 1, trained, parts, lambda: chunks(count, dim), count)
    times["fill_and_merge_s"] = time.perf_counter() - began

    began = time.perf_counter()
    index = ondisk_index.MappedArchive(folder, 1)
    held = chunk(1 << 41, 1000, dim)
    nprobe, recall = ondisk_index.calibrate_archive(index, held, lambda: chunks(count, dim))
    times["calibrate_s"] = time.perf_counter() - began

    began = time.perf_counter()
    _found_scores, truth = StreamedExact(lambda: chunks(count, dim)).search(queries(dim), 10)
    np.save(folder / "bench-truth.npy", truth)
    times["exact_truth_s"] = time.perf_counter() - began  # not part of a build: the benchmark's own ground truth
    times["build_s"] = sum(v for k, v in times.items() if k != "exact_truth_s")
    return {
        "nlist": int(index.nlist),
        "m": int(trained.pq.M),
        "nbits": int(trained.pq.nbits),
        "nprobe": nprobe,
        "calibrated_recall_at_10": round(recall, 4),
        **{k: round(v, 1) for k, v in times.items()},
        "build_peak_rss_mb": peak_rss_mb(),
    }


def _grouped(count: int, dim: int, per_part: int) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Chunks gathered `per_part` at a time, as a shard of a real archive is one part."""
    ids: list[npt.NDArray[np.int64]] = []
    vectors: list[npt.NDArray[np.float32]] = []
    for chunk_ids, chunk_vectors in chunks(count, dim):
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
        if len(ids) == per_part:
            yield np.concatenate(ids), np.concatenate(vectors)
            ids, vectors = [], []
    if ids:
        yield np.concatenate(ids), np.concatenate(vectors)


def serve(folder: Path, dim: int, nprobe: int) -> dict[str, object]:
    """Cold, then warm: each query timed alone, as a search tool call runs it."""
    from server.store import ondisk_index

    for path in folder.iterdir():  # drop the archive's pages from the page cache (clean pages: no root needed)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    began = time.perf_counter()
    index = ondisk_index.MappedArchive(folder, 1)
    index.nprobe = nprobe
    opened = time.perf_counter() - began
    rss_open = peak_rss_mb()
    asked = queries(dim)
    truth = np.load(folder / "bench-truth.npy")
    result: dict[str, object] = {"open_s": round(opened, 3), "serve_peak_rss_after_open_mb": rss_open}
    for phase in ("cold", "warm"):
        times, found = [], []
        for query in asked:
            began = time.perf_counter()
            _, ids = index.search(query.reshape(1, -1), 10)
            times.append((time.perf_counter() - began) * 1000)
            found.append(ids[0])
        stats = percentiles(times)
        result[f"{phase}_p50_ms"], result[f"{phase}_p95_ms"] = stats["p50_ms"], stats["p95_ms"]
        if phase == "warm":  # the share of FAISS's own search (the rest is reranking)
            alone = []
            for query in asked:
                began = time.perf_counter()
                index.ivf.search(query.reshape(1, -1), max(ondisk_index.RERANK * 10, 64))
                alone.append((time.perf_counter() - began) * 1000)
            result["warm_ivf_only_p50_ms"] = percentiles(alone)["p50_ms"]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        result["recall_at_10"] = round(float(recall), 4)
    result["serve_peak_rss_mb"] = peak_rss_mb()
    # What of that is the archive's mapped files (the page cache's, given back under pressure) and what is the
    # process's own memory.
    result["serve_rss_file_mb"] = proc_status_mb("RssFile")
    result["serve_rss_anon_mb"] = proc_status_mb("RssAnon")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--folder", type=Path, help="Where to build (default: a temporary folder, removed after)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", choices=("build", "serve"), help=argparse.SUPPRESS)
    parser.add_argument("--nprobe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "build":
        print(json.dumps(build(args.folder, args.vectors, args.dim)))
        return
    if args.phase == "serve":
        print(json.dumps(serve(args.folder, args.dim, args.nprobe)))
        return

    with tempfile.TemporaryDirectory(dir=args.folder, prefix="bench-archive-") as temp:
        folder = Path(temp)
        common = [sys.executable, "-m", "bench.archive", "--folder", str(folder), "--vectors", str(args.vectors)]
        common += ["--dim", str(args.dim)]
        built = json.loads(_run([*common, "--phase", "build"]))
        files = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != "bench-truth.npy"}
        served = json.loads(_run([*common, "--phase", "serve", "--nprobe", str(built["nprobe"])]))
    emit(
        {
            "machine": machine(),
            "load_average": os.getloadavg(),
            "vectors": args.vectors,
            "dim": args.dim,
            **built,
            "disk_mb": {name: round(size / 2**20, 1) for name, size in sorted(files.items())},
            "disk_total_mb": round(sum(files.values()) / 2**20, 1),
            **served,
        },
        args.json,
    )


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
