"""An archive's catalog: the same SQLite tables as any collection's (so filters, paging and the gallery read it the
same way), holding each listed object's metadata and no vector (an empty blob: the vectors stay in the shards, the
index holds their codes). A build replaces its rows in one transaction that also moves the generation to that of
the index files just written, so a reader sees the old rows with the old index or the new with the new."""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.store.schema import METADATA_COLUMNS, connect, prepare_catalog

# The shard columns copied into the catalog, in the order of `_INSERT`'s columns after the path.
ROW_COLUMNS = ("id", "path", "size", "mtime_ns", "hash", "width", "height", *METADATA_COLUMNS)
_INSERT = (
    "INSERT INTO images (id, path, size, mtime_ns, hash, width, height, vector, "
    + ", ".join(METADATA_COLUMNS)
    + ", meta_read) VALUES ("
    + ", ".join("?" * (8 + len(METADATA_COLUMNS)))
    + ", 1)"
)


def generation_of(folder: Path, name: str) -> int:
    """The catalog's generation (0 for an archive not yet published)."""
    conn = connect(folder / "catalog.sqlite")
    try:
        prepare_catalog(conn, name)
        return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    finally:
        conn.close()


def publish_rows(folder: Path, name: str, generation: int, source: str, batches: Iterable[dict[str, list[Any]]]) -> int:
    """Replace the catalog's rows with `batches` (columns named as ROW_COLUMNS) and set its generation, in one
    transaction. Returns the rows written."""
    conn = connect(folder / "catalog.sqlite")
    try:
        prepare_catalog(conn, name)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM images")
            conn.execute("DELETE FROM folders")
            conn.execute("INSERT INTO folders (path) VALUES (?)", (os.fsencode(source),))
            written = 0
            for batch in batches:
                columns = [batch[c] for c in ROW_COLUMNS]
                rows = [(row[0], os.fsencode(row[1]), *row[2:7], b"", *row[7:]) for row in zip(*columns, strict=True)]
                conn.executemany(_INSERT, rows)
                written += len(rows)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return written
    finally:
        conn.close()
