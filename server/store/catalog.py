"""Reading a collection's SQLite catalog: its entries, rows read without opening the collection, and the stored
vectors, by id or a chunk at a time."""

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CHUNK = 8192  # vectors read at a time: 16 MB at 512-d, so a million are never held twice over as blobs and copies


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    path: Path
    size: int
    mtime_ns: int
    hash: str
    has_metadata: bool = True
    has_perceptual: bool = True


ENTRY_COLUMNS = "id, path, size, mtime_ns, hash, meta_read, dhash IS NOT NULL"


def entry_of(row: tuple[Any, ...]) -> CatalogEntry:
    path = Path(os.fsdecode(row[1]))
    return CatalogEntry(row[0], path, row[2], row[3], row[4], has_metadata=bool(row[5]), has_perceptual=bool(row[6]))


def read_catalog(folder: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a collection's catalog, read without opening the collection ([] if unreadable)."""
    uri = (folder / "catalog.sqlite").as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def recorded_folders(folder: Path) -> list[Path]:
    """The folders indexing runs were pointed at, from a collection's catalog."""
    return sorted(Path(os.fsdecode(row[0])) for row in read_catalog(folder, "SELECT path FROM folders"))


def vector_chunks(
    conn: sqlite3.Connection, size: int = CHUNK
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Every (ids, vectors) of the catalog on `conn`, in id order, `size` at a time."""
    cursor = conn.execute("SELECT id, vector FROM images ORDER BY id")
    while rows := cursor.fetchmany(size):
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)


def all_vectors(
    conn: sqlite3.Connection, dim: int
) -> tuple[npt.NDArray[np.int64], list[Path], npt.NDArray[np.float32]]:
    """Every image's id, path and vector, in id order, from one read transaction on `conn`."""
    conn.execute("BEGIN")
    try:
        count = int(conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
        ids = np.empty(count, dtype=np.int64)
        vectors = np.empty((count, dim), dtype=np.float32)
        paths: list[Path] = []
        cursor = conn.execute("SELECT id, path, vector FROM images ORDER BY id")
        row = 0
        # Filled chunk by chunk: a million vectors must not be held twice over as blobs and copies.
        while chunk := cursor.fetchmany(CHUNK):
            stop = row + len(chunk)
            ids[row:stop] = [r[0] for r in chunk]
            vectors[row:stop] = np.frombuffer(b"".join(r[2] for r in chunk), np.float32).reshape(-1, vectors.shape[1])
            paths.extend(Path(os.fsdecode(r[1])) for r in chunk)
            row = stop
    finally:
        conn.execute("COMMIT")
    return ids, paths, vectors


def vectors_by_id(
    query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], ids: npt.NDArray[np.int64], dim: int
) -> npt.NDArray[np.float32]:
    """The stored vectors of `ids`, in that order, read through `query` 500 ids at a time."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500].tolist()
        rows = dict(query(f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        for row, image_id in enumerate(chunk, start=start):
            out[row] = np.frombuffer(rows[image_id], dtype=np.float32)
    return out
