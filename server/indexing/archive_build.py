"""An archive's shards made a collection the server searches: an IVF-PQ index (`store/ondisk_index.py`) trained once
on a sample of the listed objects' vectors, filled shard by shard by a `Runner` (Ray tasks on the cluster, or this
process), merged on disk, `nprobe` calibrated on held-out vectors against exact search over the shards; then the
catalog's rows (metadata, no vectors) and the manifest, which names the index `ivfpq`.

Order, for readers and crashes: the new generation's index files, then the catalog (rows and generation in one
transaction), then the manifest, then the old generation's files are removed. A crash before the catalog's commit
leaves the previous index served; the next run builds again (the contents' digest in the manifest differs)."""

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.store import ondisk_index
from server.store.archive_catalog import ROW_COLUMNS, generation_of, publish_rows
from server.store.index_files import remove_other_generations
from server.store.manifest import MANIFEST, Manifest, load_manifest, write_manifest
from server.store.shards import ArchiveInfo, ShardStore, vector_matrix

log = logging.getLogger(__name__)

HELD_OUT = 1000  # vectors kept out of training, whose neighbourhoods calibrate nprobe
RETRAIN_GROWTH = 4  # as for a collection's IVF: retrained once the archive is this many times its training size


@dataclass(frozen=True)
class ArchiveIndex:
    """What a build made (or found already made)."""

    built: bool
    vectors: int
    nlist: int
    nprobe: int
    recall_at_10: float
    seconds: float


def build_archive_index(
    store: ShardStore,
    name: str,
    source: str,
    info: ArchiveInfo,
    family: str | None,
    runner: ondisk_index.Runner = ondisk_index.run_here,
    seed: int = 0,
) -> ArchiveIndex | None:
    """Publish the archive in `store.folder` as a searchable collection, unless its index already holds exactly the
    listed objects. None when no listed object has a vector (nothing to search)."""
    import faiss

    started = time.monotonic()
    folder = store.folder
    live = store.live()
    sizes = [len(rows) for _, rows in live]
    count = sum(sizes)
    if count == 0:
        return None
    digest = _digest(store, live)
    manifest = load_manifest(folder, name) if (folder / MANIFEST).exists() else None
    if manifest is not None and manifest.index_params.get("contents") == digest:
        params = manifest.index_params
        return ArchiveIndex(False, count, params["nlist"], params["nprobe"], params["recall_at_10"], 0.0)

    held_out, training = _samples(store, live, sizes, seed)
    trained, trained_on = _trained(folder, manifest, training, count, info.dim, seed)
    del training
    generation = generation_of(folder, name) + 1
    serialised = faiss.serialize_index(trained)
    calls = ((serialised, ids, vectors) for ids, vectors in _chunks(store, live))
    chunks = lambda: _chunks(store, live)  # noqa: E731
    ondisk_index.merge(folder, generation, trained, runner(ondisk_index.fill_part, calls), chunks, count)
    index = ondisk_index.MappedArchive(folder, generation)
    nprobe, recall = ondisk_index.calibrate_archive(index, held_out, chunks, seed)
    if recall < ondisk_index.TARGET_RECALL:
        log.warning("archive %s: recall@10 %.3f at nprobe = nlist, below the target", name, recall)
    published = publish_rows(folder, name, generation, source, _rows(store, live))
    assert published == count == index.ntotal, (published, count, index.ntotal)
    params = {
        "nlist": int(index.nlist),
        "m": int(trained.pq.M),
        "nbits": int(trained.pq.nbits),
        "nprobe": nprobe,
        "recall_at_10": round(recall, 4),
        "target_recall_at_10": ondisk_index.TARGET_RECALL,
        "trained_on": trained_on,
        "contents": digest,
    }
    base = manifest or Manifest.new(info.model, info.dim, model_identity=info.model_identity, precision=info.precision)
    write_manifest(
        folder,
        replace(
            base,
            index_type=ondisk_index.KIND,
            index_policy=ondisk_index.KIND,
            index_params=params,
            family=family or base.family,
            ocr="off",
        ),
    )
    remove_other_generations(folder, generation)
    seconds = round(time.monotonic() - started, 3)
    log.info("archive %s: %d vectors, nlist %d, nprobe %d, recall@10 %.3f", name, count, index.nlist, nprobe, recall)
    return ArchiveIndex(True, count, int(index.nlist), nprobe, round(recall, 4), seconds)


def _digest(store: ShardStore, live: list[tuple[Path, npt.NDArray[np.int64]]]) -> str:
    """What the index holds, named: the shards and their live rows (a shard's name is never reused for other
    contents: shards are only added)."""
    hasher = hashlib.sha256()
    for shard, rows in live:
        hasher.update(shard.name.encode())
        hasher.update(rows.tobytes())
    return hasher.hexdigest()


def _samples(
    store: ShardStore, live: list[tuple[Path, npt.NDArray[np.int64]]], sizes: list[int], seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A uniform sample of the live vectors: the held-out ones (calibration), then the training ones. A small archive
    trains on every vector and calibrates on them too (there are too few to hold any out)."""
    count = sum(sizes)
    held = HELD_OUT if count >= 20 * HELD_OUT else 0
    picked: list[npt.NDArray[np.float32]] = []
    for part, rows in ondisk_index.sample_rows(sizes, held + ondisk_index.MAX_TRAINING_VECTORS, seed):
        shard, live_rows = live[part]
        picked.append(vector_matrix(store.read_rows(shard, live_rows[rows], ["vector"])))
    sample = np.concatenate(picked)
    np.random.default_rng(seed).shuffle(sample)
    if held == 0:
        return sample, sample
    return sample[:held], sample[held:]


def _trained(
    folder: Path, manifest: Manifest | None, training: npt.NDArray[np.float32], count: int, dim: int, seed: int
) -> tuple[Any, int]:
    """The kept trained index, unless the archive has outgrown it; else one trained now (and kept)."""
    kept = ondisk_index.load_trained(folder)
    trained_on = int(manifest.index_params.get("trained_on", 0)) if manifest else 0
    if kept is not None and kept.d == dim and trained_on and count <= RETRAIN_GROWTH * trained_on:
        return kept, trained_on
    trained = ondisk_index.train(training, count, seed)
    ondisk_index.save_trained(folder, trained)
    return trained, count


def _chunks(
    store: ShardStore, live: list[tuple[Path, npt.NDArray[np.int64]]]
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """The live (ids, vectors) of each shard in turn."""
    for shard, rows in live:
        table = store.read_rows(shard, rows, ["id", "vector"])
        yield np.asarray(table.column("id").to_numpy(), dtype=np.int64), vector_matrix(table)


def _rows(store: ShardStore, live: list[tuple[Path, npt.NDArray[np.int64]]]) -> Iterator[dict[str, list[Any]]]:
    for shard, rows in live:
        yield store.read_rows(shard, rows, ROW_COLUMNS).to_pydict()
