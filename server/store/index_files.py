"""A collection's FAISS files: `index.<generation>.faiss` read if it fits the catalog, else rebuilt from the catalog's
vectors; mapped read-only; streamed to disk under its generation's name, older generations removed. An archive's
index (`ondisk_index.MappedArchive`) is only ever mapped. `Collection` calls these under its own locks."""

import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.atomic_files import write_atomically_with
from server.errors import CollectionMismatch
from server.store.catalog import vector_chunks
from server.store.faiss_index import apply_params, fill_ivf, new_flat
from server.store.manifest import Manifest
from server.store.ondisk_index import KIND as ARCHIVE_KIND
from server.store.ondisk_index import MappedArchive

log = logging.getLogger(__name__)

_GENERATION_FILE = re.compile(r"(?:index|lists|vectors|ids)\.(\d+)\.(?:faiss|ivfdata|f16\.npy|npy)")


def load_index(
    name: str, folder: Path, manifest: Manifest, generation: int, count: int, conn: sqlite3.Connection
) -> tuple[Any, bool]:
    """The index of `generation` (whose catalog holds `count` images, read on `conn` inside the caller's
    transaction), and whether it was rebuilt from the catalog (and so wants saving)."""
    import faiss

    if manifest.index_type == ARCHIVE_KIND:
        return open_archive(name, folder, generation, count), False
    stored = folder / f"index.{generation}.faiss"
    index = None
    if stored.is_file():
        try:
            index = faiss.read_index(str(stored))
        except RuntimeError as exc:
            log.warning("index file %s unreadable (%s); rebuilding from the catalog", stored, exc)
    if index is None or index.ntotal != count or not fits(index, manifest):
        index = None  # a stale index is let go before its replacement is built, not held beside it
        return rebuild(folder, manifest, conn), True
    return index, False


def open_archive(name: str, folder: Path, generation: int, count: int) -> Any:
    """An archive's index of this generation, mapped (it is never rebuilt here: its vectors are not in the
    catalog)."""
    try:
        index = MappedArchive(folder, generation)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CollectionMismatch(
            f"Archive '{name}' has no readable index for its catalog ({exc}); run clipsearch cluster index on it again."
        ) from exc
    if index.ntotal != count:
        raise CollectionMismatch(
            f"Archive '{name}': its index holds {index.ntotal} vectors, its catalog {count} images; run "
            "clipsearch cluster index on it again."
        )
    return index


def fits(index: Any, manifest: Manifest) -> bool:
    """Whether a stored index is of the kind and dimension the manifest names."""
    import faiss

    try:
        faiss.extract_index_ivf(index)
        kind = "ivf"
    except RuntimeError:
        kind = "flat"
    return index.d == manifest.dim and kind == manifest.index_type


def empty_index(folder: Path, manifest: Manifest) -> Any:
    import faiss

    if manifest.index_type == "ivf":
        return faiss.read_index(str(folder / "ivf_trained.faiss"))
    return new_flat(manifest.dim)


def rebuild(folder: Path, manifest: Manifest, conn: sqlite3.Connection) -> Any:
    """The manifest's kind of index, filled with every vector of the catalog read on `conn`."""
    index = empty_index(folder, manifest)
    if manifest.index_type == "ivf":
        fill_ivf(index, lambda: vector_chunks(conn))
    else:
        for ids, vectors in vector_chunks(conn):
            index.add_with_ids(vectors, ids)
    return index


def mapped_index(folder: Path, manifest: Manifest, generation: int) -> Any:
    """The generation's index file, memory-mapped read-only (searches only: it cannot take commits)."""
    import faiss

    # One flag or the other: FAISS maps an IVF index's lists only from a plain file reader, which the flag for
    # Flat's codes replaces.
    flags = faiss.IO_FLAG_MMAP if manifest.index_type == "ivf" else faiss.IO_FLAG_MMAP_IFC
    index = faiss.read_index(str(folder / f"index.{generation}.faiss"), flags)
    apply_params(index, manifest.spec)
    return index


def try_save_index(folder: Path, save: Callable[[], None]) -> None:
    """`save()` unless another run holds the collection's write lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / "write.lock"), timeout=0)
    try:
        with lock:
            save()
    except Timeout:
        pass  # a writer is active; it will save its own index


def save_index(folder: Path, generation: int, index: Any) -> None:
    """Write `index` as `generation`'s file, atomically, and remove every other generation's."""
    import faiss

    # Streamed to the file, never copied whole in memory.
    target = folder / f"index.{generation}.faiss"
    write_atomically_with(target, lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))
    remove_other_generations(folder, generation)


def remove_other_generations(folder: Path, generation: int) -> None:
    """Every index file of another generation removed: a collection's `index.<g>.faiss`, an archive's lists, float16
    vectors and ids too. A reader that has them open or mapped keeps reading them until it lets go."""
    for path in folder.iterdir():
        match = _GENERATION_FILE.fullmatch(path.name)
        if match and int(match.group(1)) != generation:
            with contextlib.suppress(OSError):
                path.unlink()
