"""Changes to one collection, batched into atomic commits: new, replaced, moved and removed images, their metadata,
fingerprints and recognised text. A commit is one SQLite transaction; the collection then applies it to its FAISS index
(handed in as `apply`) under its lock. Obtained only through `Collection.writer()`, which holds the write lock.
"""

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.store.schema import METADATA_COLUMNS, METADATA_SET_COLUMNS, metadata_values, path_key
from server.store.text_search import fold, text_json

if TYPE_CHECKING:
    from server.encoders.text_recognition import RecognisedText
    from server.images.fingerprint import Perceptual
    from server.images.metadata import PhotoMetadata


@dataclass(frozen=True)
class NewImage:
    path: Path
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    metadata: "PhotoMetadata | None" = None
    perceptual: "Perceptual | None" = None  # None: taken from a row of the same content, if one has it
    video: "NewVideo | None" = None  # for a video: its duration and sampled frames


@dataclass(frozen=True)
class NewVideo:
    """A video's part of its row: its length, the time of the frame whose vector is the row's, and every sampled
    frame (time, vector), that one included (store/frames.py)."""

    duration: float | None
    poster_time: float
    frames: tuple[tuple[float, npt.NDArray[np.float32]], ...]


ApplyCommit = Callable[[sqlite3.Connection, dict[int, npt.NDArray[np.float32]], set[int]], None]
"""Commits the open transaction and applies its vectors (added, and stale ids) to the index, atomically for readers."""


class CollectionWriter:
    """Changes to one collection, batched into atomic commits. Obtain through `Collection.writer()`, which hands in
    the catalog connection, the vectors' dimension and how a commit is applied to its index."""

    def __init__(self, conn: sqlite3.Connection, dim: int, apply: ApplyCommit) -> None:
        self._conn = conn
        self._dim = dim
        self._apply = apply
        self._added: dict[int, npt.NDArray[np.float32]] = {}
        self._stale: set[int] = set()  # ids whose current vector must leave the index (replaced or removed)
        self._open = False

    def _begin(self) -> None:
        if not self._open:
            self._conn.execute("BEGIN IMMEDIATE")
            self._open = True

    def _row(self, image: NewImage, vector: npt.NDArray[np.float32]) -> tuple[Any, ...]:
        blob = _vector_blob(vector, self._dim)
        return (
            path_key(image.path),
            image.size,
            image.mtime_ns,
            image.hash,
            image.width,
            image.height,
            blob,
            *metadata_values(image.metadata),
        )

    def add(self, image: NewImage, vector: npt.NDArray[np.float32]) -> int:
        self._begin()
        cursor = self._conn.execute(
            f"INSERT INTO images (path, size, mtime_ns, hash, width, height, vector, {METADATA_SET_COLUMNS}) "
            f"VALUES ({', '.join('?' * (7 + len(METADATA_COLUMNS) + 1))})",
            self._row(image, vector),
        )
        image_id = int(cursor.lastrowid or 0)
        self._set_perceptual(image_id, image)
        if image.video is not None:
            self._set_video(image_id, image.video)
        self._added[image_id] = vector
        return image_id

    def replace(self, image_id: int, image: NewImage, vector: npt.NDArray[np.float32]) -> None:
        """New content at a known path: same id, new vector."""
        self._begin()
        self._conn.execute(
            "UPDATE images SET path = ?, size = ?, mtime_ns = ?, hash = ?, width = ?, height = ?, vector = ?, "
            f"{', '.join(f'{c} = ?' for c in (*METADATA_COLUMNS, 'meta_read'))} WHERE id = ?",
            (*self._row(image, vector), image_id),
        )
        self._set_perceptual(image_id, image)
        self._forget_text([image_id])  # new content: its text is read again
        self._forget_frames([image_id])
        if image.video is not None:
            self._set_video(image_id, image.video)
        self._added[image_id] = vector
        self._stale.add(image_id)

    def _set_video(self, image_id: int, video: NewVideo) -> None:
        self._conn.execute(
            "UPDATE images SET kind = 'video', duration = ?, poster_time = ? WHERE id = ?",
            (video.duration, video.poster_time, image_id),
        )
        self._conn.executemany(
            "INSERT INTO frames (item, time, vector) VALUES (?, ?, ?)",
            [(image_id, float(time), _vector_blob(vector, self._dim)) for time, vector in video.frames],
        )

    def _forget_frames(self, image_ids: list[int]) -> None:
        self._conn.executemany("DELETE FROM frames WHERE item = ?", [(i,) for i in image_ids])
        self._conn.executemany(
            "UPDATE images SET kind = NULL, duration = NULL, poster_time = NULL WHERE id = ?", [(i,) for i in image_ids]
        )

    def move(self, image_id: int, path: Path, size: int, mtime_ns: int) -> None:
        """Same content under a new path: the id and vector stay, so nothing is re-embedded."""
        self._begin()
        self._conn.execute(
            "UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
            (path_key(path), size, mtime_ns, image_id),
        )

    def record_folder(self, folder: Path) -> None:
        """Remember a folder an indexing run covered (labels for evaluation are relative to it)."""
        self._begin()
        self._conn.execute("INSERT OR IGNORE INTO folders (path) VALUES (?)", (path_key(folder),))

    def set_metadata(self, image_id: int, width: int, height: int, metadata: "PhotoMetadata") -> None:
        """Fill in a catalogued image's metadata (read from its header) without touching its vector."""
        self._begin()
        assignments = ", ".join(f"{c} = ?" for c in (*METADATA_COLUMNS, "meta_read"))
        self._conn.execute(
            f"UPDATE images SET width = ?, height = ?, {assignments} WHERE id = ?",
            (width, height, *metadata_values(metadata), image_id),
        )

    def _set_perceptual(self, image_id: int, image: NewImage) -> None:
        if image.perceptual is not None:
            self.set_perceptual(image_id, image.perceptual)
            return
        # Content already catalogued under another path (a copy) has the same fingerprint.
        self._conn.execute(
            "UPDATE images SET (dhash, contrast) = (SELECT dhash, contrast FROM images WHERE hash = ? AND id != ? "
            "AND dhash IS NOT NULL LIMIT 1) WHERE id = ?",
            (image.hash, image_id, image_id),
        )

    def set_perceptual(self, image_id: int, perceptual: "Perceptual") -> None:
        """Record a catalogued image's perceptual fingerprint (images/fingerprint.py) without touching its vector."""
        self._begin()
        self._conn.execute(
            "UPDATE images SET dhash = ?, contrast = ? WHERE id = ?", (perceptual.dhash, perceptual.contrast, image_id)
        )

    def set_text(self, image_id: int, model: str, text: "RecognisedText") -> None:
        """Record what was read in a catalogued image (no lines: read, nothing found); its vector stays."""
        self._begin()
        self._conn.execute("DELETE FROM text_search WHERE rowid = ?", (image_id,))
        self._conn.execute(
            "INSERT OR REPLACE INTO texts (id, model, text, lines) VALUES (?, ?, ?, ?)",
            (image_id, model, text.text, text_json(text)),
        )
        if text.lines:
            self._conn.execute("INSERT INTO text_search (rowid, body) VALUES (?, ?)", (image_id, fold(text.text)))

    def _forget_text(self, image_ids: list[int]) -> None:
        self._conn.executemany("DELETE FROM texts WHERE id = ?", [(i,) for i in image_ids])
        self._conn.executemany("DELETE FROM text_search WHERE rowid = ?", [(i,) for i in image_ids])

    def touch(self, image_id: int, size: int, mtime_ns: int) -> None:
        """Same content, new size or modification time recorded so the next run skips it on stat alone."""
        self._begin()
        self._conn.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, image_id))

    def remove(self, image_ids: Iterable[int]) -> None:
        ids = list(image_ids)
        if not ids:
            return
        self._begin()
        self._conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
        self._forget_text(ids)
        self._conn.executemany("DELETE FROM frames WHERE item = ?", [(i,) for i in ids])
        for image_id in ids:
            self._added.pop(image_id, None)
            self._stale.add(image_id)

    def commit(self) -> None:
        if self._open:
            self._apply(self._conn, self._added, self._stale)
            self._open = False
        self._added = {}
        self._stale = set()

    def rollback(self) -> None:
        if self._open:
            self._conn.execute("ROLLBACK")
            self._open = False
        self._added = {}
        self._stale = set()

    def close(self) -> None:
        self._conn.close()


def _vector_blob(vector: npt.NDArray[np.float32], dim: int) -> bytes:
    array = np.ascontiguousarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"vector of shape {array.shape}, expected ({dim},)")
    return array.tobytes()
