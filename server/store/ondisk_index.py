"""An archive's index (`ivfpq`): IVF-PQ trained once on a sample of its vectors, filled part by part (one part per
shard, made wherever the caller runs it: Ray tasks on a cluster), merged on disk into one file of inverted lists
(FAISS's `contrib.ondisk.merge_ondisk`) and opened memory-mapped, read-only: a process holds the coarse quantiser and
the PQ codebooks, and the lists stay in the page cache. PQ's codes order close neighbours only roughly, so the
`RERANK`·k best by code are scored again exactly against float16 copies of their vectors, memory-mapped too (a
query reads a few hundred of them): what is returned is ordered by (nearly) the true cosine. `nprobe` is calibrated
on held-out vectors against exact search over the shards, to recall@10 of `TARGET_RECALL`.

Files, in the archive's folder, per generation: `index.<g>.faiss` (the quantiser, codebooks and the lists' offsets),
`lists.<g>.ivfdata` (codes and ids), `vectors.<g>.f16.npy` (the float16 vectors, in the order they were added) and
`ids.<g>.npy` (the ids sorted, and the row of each, for lookups), found beside each other wherever the
folder is moved; the trained, empty index is kept as `ivfpq_trained.faiss` so a grown archive is filled again
without training. FAISS prints its notes on these files to the C stdout: they are sent to stderr here, where
`--json` output and the stdio protocol cannot meet them."""

import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.atomic_files import write_atomically
from server.store.faiss_index import Chunks, StreamedExact, calibrate, nlist_for

log = logging.getLogger(__name__)

KIND = "ivfpq"
TARGET_RECALL = 0.9  # the figure for an archive; a Flat or IVF collection aims at faiss_index.TARGET_RECALL
TRAINED_FILE = "ivfpq_trained.faiss"
MAX_TRAINING_VECTORS = 200_000
DIMS_PER_SUBQUANTIZER = 2  # 512-d CLIP vectors as 256 one-byte codes: a quarter of fp32, recall@10 >= 0.9 reachable


def index_file(folder: Path, generation: int) -> Path:
    return folder / f"index.{generation}.faiss"


def lists_file(folder: Path, generation: int) -> Path:
    return folder / f"lists.{generation}.ivfdata"


def vectors_file(folder: Path, generation: int) -> Path:
    return folder / f"vectors.{generation}.f16.npy"


def ids_file(folder: Path, generation: int) -> Path:
    return folder / f"ids.{generation}.npy"


RERANK = 8  # candidates by code per result, scored exactly


@dataclass(frozen=True)
class Shape:
    """An IVF-PQ index's shape: lists, subquantizers and bits per code."""

    nlist: int
    m: int
    nbits: int


def shape_for(count: int, dim: int, training: int) -> Shape:
    """autofaiss's rules, roughly: about 4·sqrt(n) lists with >= 39 training vectors each (`nlist_for`); a
    subquantizer per `DIMS_PER_SUBQUANTIZER` dimensions; 8-bit codes, fewer when there are fewer than 256 vectors
    to train on (a small archive; fewer bits still, as FAISS asks for 39 vectors a centroid, ordered its candidates
    too roughly for reranking to find an image's own vector first, on 90 images)."""
    m = dim // DIMS_PER_SUBQUANTIZER
    while dim % m:
        m -= 1
    nbits = int(min(8, max(1, math.floor(math.log2(max(training, 2))))))
    return Shape(nlist_for(count), m, nbits)


def train(sample: npt.NDArray[np.float32], count: int, seed: int = 0) -> Any:
    """An empty IVF-PQ index (inner product) trained on `sample`, shaped for `count` vectors."""
    import faiss

    dim = sample.shape[1]
    shape = shape_for(count, dim, len(sample))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, shape.nlist, shape.m, shape.nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.max_points_per_centroid = 64  # k-means on at most 64 vectors a list (FAISS samples them)
    index.pq.cp.seed = seed
    # 64 points per code centroid, 15 rounds: PQ's subquantizers train 4-6x faster than at FAISS's defaults (256,
    # 25), which took 40-150 s for 256 subquantizers on 2 cores, for codes that are reranked anyway.
    index.pq.cp.niter = 15
    index.pq.cp.max_points_per_centroid = 64
    # A small archive's shape is chosen small on purpose (`shape_for`): no warning per subquantizer about it.
    index.cp.min_points_per_centroid = 1
    index.pq.cp.min_points_per_centroid = 1
    if len(sample) < 2**shape.nbits:  # k-means needs as many points as centroids: an archive of one image
        sample = np.resize(sample, (2**shape.nbits, dim))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def save_trained(folder: Path, trained: Any) -> None:
    import faiss

    write_atomically(folder / TRAINED_FILE, faiss.serialize_index(trained).tobytes())


def load_trained(folder: Path) -> Any | None:
    import faiss

    path = folder / TRAINED_FILE
    return faiss.read_index(str(path)) if path.is_file() else None


def fill_part(trained: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> bytes:
    """One part: the trained index (serialised) with `vectors` added under `ids`, serialised. Pure, so it can run
    in a Ray task on any node."""
    import faiss

    index = faiss.deserialize_index(trained)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return bytes(faiss.serialize_index(index))


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """FAISS's C printf notes (a file resized, a lists file found in a moved folder) sent to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def merge(
    folder: Path,
    generation: int,
    trained: Any,
    parts: Iterable[bytes],
    chunks: Chunks,
    count: int,
) -> None:
    """Merge the parts into `lists.<generation>.ivfdata` and write `index.<generation>.faiss` beside it, and the
    float16 vectors `chunks` yields (`count` of them, the same ids) for reranking. The parts wait in a temporary
    folder inside `folder` (on the same disk), memory-mapped while merged."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    _write_vectors(folder, generation, chunks, count, trained.d)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".parts-") as temp:
        names = []
        for number, part in enumerate(parts):  # the parts come as their tasks finish: not yet in the redirection
            name = Path(temp) / f"part-{number:06d}.faiss"
            name.write_bytes(part)
            names.append(str(name))
        target = faiss.clone_index(trained)
        lists = lists_file(folder, generation)
        with contextlib.suppress(FileNotFoundError):
            lists.unlink()  # a previous attempt at this generation that crashed
        written = index_file(folder, generation)
        with native_stdout_to_stderr():
            merge_ondisk(target, names, str(lists))
            faiss.write_index(target, f"{written}.tmp")
    Path(f"{written}.tmp").replace(written)


def _write_vectors(folder: Path, generation: int, chunks: Chunks, count: int, dim: int) -> None:
    """`vectors.<g>.f16.npy` (streamed) and `ids.<g>.npy` (the ids sorted, and the row of each)."""
    vectors = np.lib.format.open_memmap(vectors_file(folder, generation), "w+", np.float16, (count, dim))
    ids = np.empty(count, dtype=np.int64)
    row = 0
    for chunk_ids, chunk in chunks():
        vectors[row : row + len(chunk_ids)] = chunk
        ids[row : row + len(chunk_ids)] = chunk_ids
        row += len(chunk_ids)
    assert row == count, (row, count)
    vectors.flush()
    del vectors
    order = np.argsort(ids, kind="stable")
    np.save(ids_file(folder, generation), np.stack([ids[order], order]))


class MappedArchive:
    """An archive's index as a collection uses one (`search`, `ntotal`, `nprobe`, `nlist`, `d`): FAISS's IVF-PQ over
    memory-mapped lists, its best candidates reranked against the memory-mapped float16 vectors."""

    def __init__(self, folder: Path, generation: int) -> None:
        import faiss

        with native_stdout_to_stderr():
            self.ivf = faiss.read_index(
                str(index_file(folder, generation)), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
            )
        self.vectors = np.load(vectors_file(folder, generation), mmap_mode="r")
        lookup = np.load(ids_file(folder, generation), mmap_mode="r")
        self.sorted_ids, self.order = lookup[0], lookup[1]
        if not (len(self.vectors) == len(self.sorted_ids) == self.ivf.ntotal):
            raise ValueError(f"{len(self.vectors)} vectors, {len(self.sorted_ids)} ids, {self.ivf.ntotal} indexed")
        self.d = int(self.ivf.d)
        self.nlist = int(self.ivf.nlist)

    @property
    def ntotal(self) -> int:
        return int(self.ivf.ntotal)

    @property
    def nprobe(self) -> int:
        return int(self.ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.ivf.nprobe = int(value)

    def rows_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The rows of `ids` in the vectors file; KeyError for an id the archive does not hold."""
        ids = np.asarray(ids, dtype=np.int64)
        # A binary search through the map reads only the pages it touches (log2 n of them per id).
        found = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        missing = np.asarray(self.sorted_ids[found]) != ids
        if missing.any():
            raise KeyError(int(ids[missing][0]))
        return np.asarray(self.order[found], dtype=np.int64)

    def reconstruct_batch(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The (float16-stored) vectors of `ids`, as float32."""
        return np.asarray(self.vectors[self.rows_of(ids)], dtype=np.float32)

    def search(
        self, queries: npt.NDArray[np.float32], k: int, params: Any = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        depth = min(self.ntotal, max(RERANK * k, 64))
        # One query (a tool call's) scans its lists on every core, several are shared out among them: 1.4-1.7x
        # faster for one query on 2 cores at nprobe 256 (300,000 vectors). Searches run under the collection's lock,
        # so setting it per call races with no other search.
        self.ivf.parallel_mode = 1 if len(queries) == 1 else 0
        _, candidates = self.ivf.search(np.ascontiguousarray(queries, dtype=np.float32), depth, params=params)
        scores_out = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids_out = np.full((len(queries), k), -1, dtype=np.int64)
        for q, (query, found) in enumerate(zip(queries, candidates, strict=True)):
            found = found[found >= 0]
            if not len(found):
                continue
            rows = self.rows_of(found)
            ordered = np.argsort(rows)  # the map read in file order
            vectors = np.asarray(self.vectors[rows[ordered]], dtype=np.float32)
            scores = vectors @ query.astype(np.float32)
            ranked = np.lexsort((found[ordered], -scores))[:k]
            scores_out[q, : len(ranked)] = scores[ranked]
            ids_out[q, : len(ranked)] = found[ordered][ranked]
        return scores_out, ids_out


def calibrate_archive(
    index: Any, held_out: npt.NDArray[np.float32], chunks: Chunks, seed: int = 0
) -> tuple[int, float]:
    """The smallest power-of-two nprobe reaching recall@10 of TARGET_RECALL against exact search over `chunks` (the
    shards), on queries near held-out vectors and between them; and the recall it reaches."""
    rng = np.random.default_rng(seed)
    return calibrate(index, held_out, None, rng, StreamedExact(chunks), TARGET_RECALL)


def sample_rows(sizes: list[int], wanted: int, seed: int = 0) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    """Which rows of each of the parts sized `sizes` to take for a uniform sample of `wanted` of them: (part,
    sorted row numbers) per part that has any."""
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(total, min(total, wanted), replace=False))
    start = 0
    for part, size in enumerate(sizes):
        lo, hi = np.searchsorted(picked, [start, start + size])
        if hi > lo:
            yield part, picked[lo:hi] - start
        start += size


Runner = Callable[[Callable[..., bytes], Iterable[tuple[Any, ...]]], Iterator[bytes]]
"""Runs `fill_part` over argument tuples, yielding results in order: in this process, or as Ray tasks."""


def run_here(fn: Callable[..., bytes], calls: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
    for args in calls:
        yield fn(*args)
