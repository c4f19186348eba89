"""Named collections on disk: manifest, SQLite catalog (the truth, vectors included) and a FAISS index built from it.

Layout of `<index_dir>/<name>/`: `manifest.json` (`manifest.py`: format version, model, precision, dimension, index),
`catalog.sqlite` (WAL; one row per image with its vector; a generation counter bumped by every commit),
`index.<generation>.faiss` (the FAISS index matching that generation) and `write.lock`.

A commit is one SQLite transaction. The FAISS file is written afterwards (temp file, fsync, rename) under the
committed generation's name, so after a crash the newest catalog state either has its index file or the index is
rebuilt from the catalog's vectors on open (`index_files.py`): catalog rows and FAISS ids always agree. Writes go
through `store/writer.py`; other modules read the catalog for their own purposes through `Collection.query`.
"""

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.atomic_files import write_atomically
from server.errors import CollectionBusy, CollectionMismatch, InvalidArgument
from server.limits import INDEX_TYPES, OCR_POLICIES
from server.store.catalog import (
    ENTRY_COLUMNS,
    CatalogEntry,
    all_vectors,
    entry_of,
    vector_chunks,
    vectors_by_id,
)
from server.store.faiss_index import (
    MAX_TRAINING_VECTORS,
    IndexSpec,
    apply_params,
    build_ivf_from,
    choose_kind,
    enable_lookup,
    exact_among,
    list_centroids,
    new_flat,
    probe_params,
    selection_params,
    stored_lists,
)
from server.store.frames import FrameCache, FrameIndex, video_hits
from server.store.hits import Hit, Keep, hit_rows, kept
from server.store.index_files import load_index, mapped_index, save_index, try_save_index
from server.store.manifest import SCHEMA_VERSION, Manifest, load_manifest, write_manifest
from server.store.ondisk_index import KIND as ARCHIVE_KIND
from server.store.schema import connect, path_key, prepare_catalog, under_folder
from server.store.writer import CollectionWriter

log = logging.getLogger(__name__)

RETRAIN_GROWTH = 4  # an IVF index is retrained once the collection is this many times its training size


@dataclass(frozen=True)
class StoredLists:
    """What `Collection.stored_lists` yields: the (ids, vectors) views, the IVF centroids (None for Flat) and the
    token naming this state of the index."""

    token: tuple[int, int]
    lists: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
    centroids: npt.NDArray[np.float32] | None


def is_being_written(folder: Path) -> bool:
    """Whether some indexing run (in any process) holds the write lock of the collection in `folder`."""
    from filelock import FileLock, Timeout

    if not (folder / "write.lock").exists():
        return False
    lock = FileLock(str(folder / "write.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


class Collection:
    """One open collection. Thread-safe: searches and commits take the same lock, so readers never see a half."""

    def __init__(
        self,
        name: str,
        folder: Path,
        manifest: Manifest,
        model_identity: str | None = None,
        family: str | None = None,
    ) -> None:
        self.name = name
        self.folder = folder
        self.manifest = manifest
        self._model_identity = model_identity  # of the model in use; recorded by the first write if missing
        self._family = family  # likewise
        self._lock = threading.RLock()
        self._cameras: tuple[int, list[str]] | None = None  # (generation, distinct camera names)
        self._conn = connect(folder / "catalog.sqlite")
        # Only a new or older catalog is written on open; writing every time would wait on a running indexer.
        prepare_catalog(self._conn, name)
        self.generation = -1
        self._index: Any = None
        self._index_serial = 0  # bumped whenever `_index` is replaced (a load, a conversion): see `stored_lists`
        self._stored: StoredLists | None = None  # the views `stored_lists` made last, with their token
        self._frames = FrameCache(self.query)  # the videos' frames, per generation
        self._load_index()

    # --- reading -------------------------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    @property
    def ntotal(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def entries_under(self, folder: Path, recursive: bool = True) -> dict[Path, CatalogEntry]:
        """Catalogued images whose path lies under `folder` (directly, when not recursive)."""
        clause, bounds = under_folder(folder)
        with self._lock:
            rows = self._conn.execute(f"SELECT {ENTRY_COLUMNS} FROM images WHERE {clause}", bounds).fetchall()
        entries = (entry_of(row) for row in rows)
        return {e.path: e for e in entries if recursive or e.path.parent == folder}

    def holds_images_under(self, folder: Path) -> bool:
        """Whether any catalogued image lies under `folder`, at any depth."""
        clause, bounds = under_folder(folder)
        with self._lock:
            return self._conn.execute(f"SELECT 1 FROM images WHERE {clause} LIMIT 1", bounds).fetchone() is not None

    def find_path(self, path: Path) -> CatalogEntry | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {ENTRY_COLUMNS} FROM images WHERE path = ?", (path_key(path),)).fetchone()
        return entry_of(row) if row else None

    def find_hash(self, content_hash: str) -> list[CatalogEntry]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM images WHERE hash = ? ORDER BY id", (content_hash,)
            ).fetchall()
        return [entry_of(row) for row in rows]

    def indexed_folders(self) -> list[Path]:
        """Folders that indexing runs were pointed at, outermost first."""
        with self._lock:
            rows = self._conn.execute("SELECT path FROM folders").fetchall()
        return sorted((Path(os.fsdecode(r[0])) for r in rows), key=lambda p: (len(p.parts), str(p)))

    def known_hashes(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT hash FROM images")}

    @property
    def is_archive(self) -> bool:
        """Built on a cluster (`clipsearch cluster index`): read-only here, its vectors in the index's files."""
        return self.manifest.index_type == ARCHIVE_KIND

    def vectors_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The stored vectors of `ids`, in that order."""
        if self.is_archive:
            with self._lock:
                return self._index.reconstruct_batch(np.asarray(ids, dtype=np.int64))
        return vectors_by_id(self.query, ids, self.manifest.dim)

    def vector(self, image_id: int) -> npt.NDArray[np.float32]:
        if self.is_archive:
            return self.vectors_of(np.asarray([image_id]))[0]
        with self._lock:
            row = self._conn.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise KeyError(image_id)
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def all_vectors(self) -> tuple[npt.NDArray[np.int64], list[Path], npt.NDArray[np.float32]]:
        """Every image's id, path and vector, in id order, from one consistent snapshot."""
        self._refuse_on_archive("reading every vector at once (evaluation, comparison)")
        with self._lock:
            return all_vectors(self._conn, self.manifest.dim)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the catalog (for the modules that read it for their own purposes: filtered
        search, duplicates, comparison), under the collection's lock."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def search(self, queries: npt.NDArray[np.float32], k: int) -> list[list[tuple[Path, float]]]:
        """Top-k (path, cosine) per query, best first (`search_hits` without the metadata)."""
        return [[(hit.path, hit.score) for hit in self.search_hits(query, k)] for query in queries]

    def cameras(self) -> list[str]:
        """The distinct camera names in the collection (few), remembered until the next commit."""
        with self._lock:
            self.refresh_if_stale()
            cached = self._cameras
            if cached is None or cached[0] != self.generation:
                rows = self._conn.execute("SELECT DISTINCT camera FROM images WHERE camera IS NOT NULL").fetchall()
                cached = (self.generation, [r[0] for r in rows])
                self._cameras = cached
            return list(cached[1])

    def search_hits(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        ids: npt.NDArray[np.int64] | None = None,
        where: str | None = None,
        params: Sequence[Any] = (),
        keep: Keep | None = None,
        widen: float = 1.0,
    ) -> list[Hit]:
        """The top-k images for one query vector, best first, with their metadata; with `ids`, only among those,
        exactly on a Flat index (every id is scored) and on IVF for small subsets; on IVF for larger subsets the
        probed clusters are widened in proportion to how few images pass. With `where` (and `keep`, called with
        each row's latitude and longitude), only the top-k that match it are returned, so possibly fewer than k.
        `widen` multiplies IVF's nprobe (a deeper search needs more clusters for the same recall)."""
        vector = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        with self._lock:
            self.refresh_if_stale()
            total = int(self._index.ntotal)
            if ids is None:
                k = min(k, total)
                params_ivf, selector = probe_params(self.manifest.spec, widen), None
            else:
                k = min(k, len(ids))
                params_ivf, selector = selection_params(self.manifest.spec, ids, total)
            if k == 0:
                return []
            if params_ivf is None and ids is not None:
                found_scores, found_ids = exact_among(self._index, vector[0], ids, k)
            else:
                scores, found = self._index.search(vector, k, params=params_ivf)
                del selector  # held until FAISS is done with it: the parameters hold only a raw pointer
                valid = found[0] >= 0
                found_scores, found_ids = scores[0][valid], found[0][valid]
            details = hit_rows(self._conn, [int(i) for i in found_ids], where, params)
            found_pairs = [(float(s), int(i)) for s, i in zip(found_scores, found_ids, strict=True)]
            frames = self._frames.at(self.generation, self.manifest.dim)
            videos = (
                video_hits(frames, vector[0], k, ids, lambda items: hit_rows(self._conn, items, where, params), keep)
                if frames is not None and len(frames) > 0
                else None
            )
            if videos is not None:  # a video is found at its best frame, not by its poster's vector alone
                found_pairs = [pair for pair in found_pairs if pair[1] in details and details[pair[1]][-3] is None]
        hits = [Hit(score, *details[image_id]) for score, image_id in found_pairs if kept(details, image_id, keep)]
        if videos:
            hits = sorted(hits + videos, key=lambda hit: -hit.score)[:k]
        return hits

    def frame_index(self) -> FrameIndex | None:
        """The frames of the collection's videos as of its last commit (None: it has no video)."""
        with self._lock:
            self.refresh_if_stale()
            return self._frames.at(self.generation, self.manifest.dim)

    @contextlib.contextmanager
    def stored_lists(self, token: tuple[int, int] | None = None) -> Iterator[StoredLists | None]:
        """The index's stored vectors, list by list (`faiss_index.stored_lists`), under the collection's lock: views
        valid inside the block only, so keep it short (searches wait meanwhile). None when the index changed (a
        commit, a reload, a conversion) since `token`, a `StoredLists.token` taken earlier."""
        self._refuse_on_archive("finding duplicates")
        with self._lock:
            now = (self.generation, self._index_serial)
            if token is not None and token != now:
                yield None
                return
            if self._stored is None or self._stored.token != now:  # views made once per state, not per cell
                self._stored = StoredLists(now, stored_lists(self._index), list_centroids(self._index))
            yield self._stored

    def refresh_if_stale(self) -> None:
        """Reload the index when another process has committed since we loaded it."""
        with self._lock:
            if self._read_generation(self._conn) != self.generation:
                self._load_index()

    # --- writing -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[CollectionWriter]:
        """Exclusive write access across threads and processes; refuses at once if another run holds it."""
        from filelock import FileLock, Timeout

        if self.is_archive:
            raise CollectionMismatch(
                f"'{self.name}' is an archive built on a cluster; add to it with clipsearch cluster index, or index "
                "this folder into another collection."
            )
        lock = FileLock(str(self.folder / "write.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout as exc:
            raise CollectionBusy(
                f"Collection '{self.name}' is being indexed by another run; try again when that run finishes."
            ) from exc
        try:
            self.refresh_if_stale()
            self._upgrade_manifest()
            writer = CollectionWriter(connect(self.folder / "catalog.sqlite"), self.manifest.dim, self._apply_commit)
            try:
                yield writer
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                writer.close()
            self._convert_if_needed()
            self._save_index()
        finally:
            lock.release()

    def _apply_commit(
        self, conn: sqlite3.Connection, added: dict[int, npt.NDArray[np.float32]], stale: set[int]
    ) -> None:
        # Catalog commit and in-memory index update happen under one lock hold: a search sees both or neither.
        with self._lock:
            generation = self._read_generation(conn) + 1
            conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            conn.execute("COMMIT")
            if stale:
                self._index.remove_ids(np.fromiter(stale, dtype=np.int64, count=len(stale)))
            if added:
                ids = np.fromiter(added, dtype=np.int64, count=len(added))
                self._index.add_with_ids(np.stack(list(added.values())).astype(np.float32), ids)
            self.generation = generation

    def _upgrade_manifest(self) -> None:
        """Migrate an older manifest at the first write (`Manifest.upgraded`)."""
        upgraded = self.manifest.upgraded(self._model_identity, self._family)
        if upgraded is not None:
            log.info(
                "collection %s: manifest version %d -> %d", self.name, self.manifest.schema_version, SCHEMA_VERSION
            )
            self._write_manifest(upgraded)

    def _refuse_on_archive(self, what: str) -> None:
        if self.is_archive:
            raise InvalidArgument(
                f"'{self.name}' is an archive built on a cluster (its vectors in an on-disk IVF-PQ index): {what} is "
                "not offered for archives; search it by text or by example."
            )

    def set_index_policy(self, policy: str) -> None:
        """Record which index the user wants ('auto', 'flat', 'ivf'); applied at the end of the next write."""
        if self.is_archive and policy != self.manifest.index_policy:
            raise CollectionMismatch(f"'{self.name}' is an archive built on a cluster: its index is {ARCHIVE_KIND}.")
        if policy not in INDEX_TYPES:
            raise InvalidArgument(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {policy!r}.")
        if policy != self.manifest.index_policy:
            self._write_manifest(replace(self.manifest, index_policy=policy))

    def set_ocr_policy(self, policy: str) -> None:
        """Record whether text in photos is read ('auto': after a cheap first pass, 'on': in every image, 'off')."""
        if policy not in OCR_POLICIES:
            raise InvalidArgument(f"ocr must be one of {', '.join(OCR_POLICIES)}, got {policy!r}.")
        if policy != self.manifest.ocr:
            self._write_manifest(replace(self.manifest, ocr=policy))

    def _write_manifest(self, manifest: Manifest) -> None:
        write_manifest(self.folder, manifest)
        self.manifest = manifest

    def _convert_if_needed(self) -> None:
        """Switch between Flat and IVF when the policy (or, for 'auto', the size) asks for the other kind.

        Order matters for crash safety: the trained IVF file, then the manifest; an index file of the wrong kind is
        never loaded (`index_files.fits`), so a crash in between only costs a rebuild from the catalog on the next open.
        """
        count = self.count()
        wanted = choose_kind(self.manifest.index_policy, count)
        trained_on = int(self.manifest.index_params.get("trained_on", 0))
        # IVF centroids trained on a much smaller collection no longer partition it well: retrain.
        outgrown = wanted == "ivf" and count > RETRAIN_GROWTH * max(trained_on, 1)
        if (wanted == self.manifest.index_type and not outgrown) or (wanted == "ivf" and count == 0):
            return
        log.info("collection %s: switching its index from %s to %s", self.name, self.manifest.index_type, wanted)
        # The new index is streamed from the catalog (the write lock keeps it still) while the old one keeps
        # answering searches from its file, memory-mapped: its pages are the page cache's, so one copy of the
        # vectors is held, not two.
        self._save_index()
        self._set_index(mapped_index(self.folder, self.manifest, self.generation))
        try:
            self._switch_index(wanted)
        except BaseException:
            self._load_index()  # the mapped index cannot take commits: back to one in memory
            raise

    def _switch_index(self, wanted: str) -> None:
        import faiss

        if wanted == "ivf":
            rng = np.random.default_rng(0)
            all_ids = np.array([r[0] for r in self.query("SELECT id FROM images ORDER BY id")], dtype=np.int64)
            picked = np.sort(rng.choice(len(all_ids), min(len(all_ids), MAX_TRAINING_VECTORS), replace=False))
            sample = self.vectors_of(all_ids[picked])
            # Calibrated against exact search over the catalog, not the mapped index (which would map it all in).
            trained, index, spec = build_ivf_from(len(all_ids), sample, self._catalog_chunks, None, rng)
            del sample
            write_atomically(self.folder / "ivf_trained.faiss", faiss.serialize_index(trained).tobytes())
        else:
            spec = IndexSpec("flat")
            index = new_flat(self.manifest.dim)
            for ids, vectors in self._catalog_chunks():
                index.add_with_ids(vectors, ids)
        if spec.kind == "ivf":
            enable_lookup(index)
        with self._lock:
            self._write_manifest(replace(self.manifest, index_type=spec.kind, index_params=spec.params))
            self._set_index(index)

    # --- index file ----------------------------------------------------------------------------------------------

    @staticmethod
    def _read_generation(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _load_index(self) -> None:
        with self._lock:
            # Another process may have switched the index kind or its parameters since we last looked.
            self.manifest = load_manifest(self.folder, self.name)
            self._conn.execute("BEGIN")
            try:
                generation = self._read_generation(self._conn)
                count = int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
                index, rebuilt = load_index(self.name, self.folder, self.manifest, generation, count, self._conn)
            finally:
                self._conn.execute("COMMIT")
            apply_params(index, self.manifest.spec)
            self._set_index(index)
            self.generation = generation
        if rebuilt:
            try_save_index(self.folder, self._save_index)

    def _set_index(self, index: Any) -> None:
        with self._lock:
            self._index = index
            self._index_serial += 1
            self._stored = None

    def _catalog_chunks(self) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Every (ids, vectors) of the catalog, read on a connection of its own (so a pass may be repeated)."""
        conn = connect(self.folder / "catalog.sqlite")
        try:
            yield from vector_chunks(conn)
        finally:
            conn.close()

    def _save_index(self) -> None:
        # The write lock (held by every caller) keeps other writers out, and searches only read the index, so it is
        # written outside the collection's lock.
        with self._lock:
            generation, index = self.generation, self._index
        save_index(self.folder, generation, index)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
