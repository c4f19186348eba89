"""The SQLite catalog's tables, its version, and the upgrade of catalogs written by earlier releases.

Version 1 held each image's path, size, mtime, hash, size in pixels and vector. Version 2 adds photo metadata
(metadata.py) in columns of their own, indexed for filters; `meta_read` stays NULL until an indexing run has read a
file's metadata, so the next run fills in older rows from their headers without re-embedding anything. Version 3
adds each image's perceptual fingerprint (images/fingerprint.py: `dhash`, `contrast`), NULL until an indexing run has
decoded the file; the next run computes it for older rows, again without re-embedding. Version 4 adds the text
recognised in each photo (`texts`, and `text_search` to match it: store/text_search.py); an image without a row
there has not been read yet. Version 5 adds videos (store/frames.py): an item's `kind` (NULL for a photo, 'video'),
a video's `duration` and the time of the frame whose vector is its own (`poster_time`), and `frames`, every sampled
frame's time and vector; a catalog of version 4 holds photos only, so upgrading it adds empty columns and table.
"""

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import CollectionBusy, CollectionMismatch

if TYPE_CHECKING:
    from server.images.metadata import PhotoMetadata

log = logging.getLogger(__name__)

CATALOG_VERSION = 5
METADATA_COLUMNS = ("taken", "taken_source", "taken_local", "taken_utc", "latitude", "longitude", "camera")
METADATA_SET_COLUMNS = ", ".join((*METADATA_COLUMNS, "meta_read"))

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_hash ON images(hash);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (path BLOB PRIMARY KEY);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""
_TO_VERSION_2 = """
ALTER TABLE images ADD COLUMN taken TEXT;
ALTER TABLE images ADD COLUMN taken_source TEXT;
ALTER TABLE images ADD COLUMN taken_local TEXT;
ALTER TABLE images ADD COLUMN taken_utc REAL;
ALTER TABLE images ADD COLUMN latitude REAL;
ALTER TABLE images ADD COLUMN longitude REAL;
ALTER TABLE images ADD COLUMN camera TEXT;
ALTER TABLE images ADD COLUMN meta_read INTEGER;
CREATE INDEX IF NOT EXISTS images_taken_local ON images(taken_local);
CREATE INDEX IF NOT EXISTS images_taken_utc ON images(taken_utc);
CREATE INDEX IF NOT EXISTS images_latitude ON images(latitude);
CREATE INDEX IF NOT EXISTS images_camera ON images(camera);
INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog_version', '2');
"""
_TO_VERSION_3 = """
ALTER TABLE images ADD COLUMN dhash INTEGER;
ALTER TABLE images ADD COLUMN contrast INTEGER;
INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog_version', '3');
"""
_TO_VERSION_4 = """
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    lines TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS text_search USING fts5(body, tokenize='trigram');
INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog_version', '4');
"""
_TO_VERSION_5 = """
ALTER TABLE images ADD COLUMN kind TEXT;
ALTER TABLE images ADD COLUMN duration REAL;
ALTER TABLE images ADD COLUMN poster_time REAL;
CREATE INDEX IF NOT EXISTS images_kind ON images(kind);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    item INTEGER NOT NULL,
    time REAL NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_item ON frames(item);
INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog_version', '5');
"""
_UPGRADES = {1: _TO_VERSION_2, 2: _TO_VERSION_3, 3: _TO_VERSION_4, 4: _TO_VERSION_5}  # from each version to the next


def prepare_catalog(conn: sqlite3.Connection, name: str) -> None:
    """Create the tables of a new catalog, or upgrade an older one; a current catalog is only read, so opening it
    never waits on a running indexer."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        conn.executescript(_VERSION_1)
    row = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
    version = int(row[0]) if row else 1
    if version > CATALOG_VERSION:
        raise CollectionMismatch(
            f"Collection '{name}' has catalog version {version}, newer than this clipsearch reads "
            f"({CATALOG_VERSION}). Update clipsearch to open it."
        )
    if version == CATALOG_VERSION:
        return
    log.info("collection %s: upgrading its catalog from version %d to %d", name, version, CATALOG_VERSION)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have upgraded it between our look and the lock: read the version again.
            row = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
            for step in range(int(row[0]) if row else 1, CATALOG_VERSION):
                for statement in filter(str.strip, _UPGRADES[step].split(";")):
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        raise CollectionBusy(
            f"Collection '{name}' needs a one-time catalog upgrade, and another run is writing it: {exc}. "
            "Try again when it finishes."
        ) from exc


def metadata_values(metadata: "PhotoMetadata | None") -> tuple[Any, ...]:
    """The metadata columns' values for a row (in METADATA_SET_COLUMNS order); all NULL when not read."""
    if metadata is None:
        return (None,) * (len(METADATA_COLUMNS) + 1)
    return (*(getattr(metadata, c) for c in METADATA_COLUMNS), 1)


def under_folder(folder: Path) -> tuple[str, list[bytes]]:
    """A WHERE condition on `images.path` (file names as bytes) for every image under `folder`, and its parameters:
    the byte range from "folder/" up to "folder0" ('0' follows '/')."""
    prefix = os.fsencode(str(folder)).rstrip(b"/") + b"/"
    return "path >= ? AND path < ?", [prefix, prefix[:-1] + b"0"]


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def path_key(path: Path) -> bytes:
    # Bytes, not text: file names need not be valid UTF-8.
    return os.fsencode(str(path))
