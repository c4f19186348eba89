"""An archive's files on disk, `<index_dir>/<name>/`: `archive.json` (format version, model, identity, dim), the
source's listing (`listing.parquet`: id, path, size, mtime) and the vectors with their metadata in Parquet shards
(`shards/shard-NNNNNN.parquet`), each written whole under a temporary name and renamed, so a shard that exists is
finished. An object is done when its (id, path, size, mtime) sits in a finished shard; `write.lock` keeps one run at a
time. Imports pyarrow only inside functions (the CLI's --help must not wait for it)."""

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from server.atomic_files import write_atomically, write_atomically_with
from server.errors import CollectionBusy, CollectionMismatch, InvalidArgument

if TYPE_CHECKING:
    import pyarrow as pa

ARCHIVE_FORMAT = 1
ARCHIVE_FILE = "archive.json"
LISTING_FILE = "listing.parquet"
SHARDS = "shards"
_SHARD_NAME = re.compile(r"shard-(\d{6,})\.parquet")
Key = tuple[int, str, int, int]  # id, path, size, mtime_ns


def object_id(path: str) -> int:
    """An object's id: 63 bits of its path's hash, the same on every run and every node (no counter to keep)."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()) >> 1


@dataclass(frozen=True)
class ArchiveInfo:
    model: str
    model_identity: str
    precision: str
    dim: int


def shard_schema(dim: int) -> "pa.Schema":
    """The columns of a shard: the object's key, what was read from it, and its unit vector."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("hash", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("taken", pa.string()),
            ("taken_source", pa.string()),
            ("taken_local", pa.string()),
            ("taken_utc", pa.float64()),
            ("latitude", pa.float64()),
            ("longitude", pa.float64()),
            ("camera", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ],
        metadata={"clipsearch.archive_format": str(ARCHIVE_FORMAT)},
    )


class ShardStore:
    """One archive's folder: its record, listing and shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards = folder / SHARDS

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Exclusive across processes, as a collection's write lock: a second run is refused at once."""
        from filelock import FileLock, Timeout

        self.shards.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / "write.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout as exc:
            raise CollectionBusy(
                f"Archive '{name}' is being built by another run; try again when that run finishes."
            ) from exc
        try:
            yield
        finally:
            lock.release()

    # --- the record --------------------------------------------------------------------------------------------

    def read_info(self) -> ArchiveInfo | None:
        path = self.folder / ARCHIVE_FILE
        if not path.exists():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != ARCHIVE_FORMAT:
            raise InvalidArgument(
                f"{path} is archive format {record.get('format')!r}; this clipsearch reads format {ARCHIVE_FORMAT}."
            )
        return ArchiveInfo(record["model"], record["model_identity"], record["precision"], int(record["dim"]))

    def check_or_record(self, name: str, info: ArchiveInfo) -> None:
        """Record the model of a new archive; refuse another model for an existing one (its vectors would not
        compare)."""
        known = self.read_info()
        if known is None:
            record = {"format": ARCHIVE_FORMAT, **info.__dict__}
            write_atomically(self.folder / ARCHIVE_FILE, json.dumps(record, indent=2).encode("utf-8"))
            return
        if (known.model_identity, known.precision, known.dim) != (info.model_identity, info.precision, info.dim):
            raise CollectionMismatch(
                f"Archive '{name}' was built with model '{known.model}' ({known.precision}); it cannot take "
                f"'{info.model}' ({info.precision}). Use a new archive name for that model."
            )

    # --- the listing -------------------------------------------------------------------------------------------

    def write_listing(self, keys: Sequence[Key]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = _key_table(keys)
        write_atomically_with(self.folder / LISTING_FILE, lambda handle: pq.write_table(table, pa.PythonFile(handle)))

    def read_listing(self) -> list[Key]:
        import pyarrow.parquet as pq

        path = self.folder / LISTING_FILE
        if not path.exists():
            return []
        return _keys(pq.read_table(path))

    # --- the shards --------------------------------------------------------------------------------------------

    def finished(self) -> list[Path]:
        """The finished shards, oldest first (temporary files of an interrupted write are not among them)."""
        if not self.shards.is_dir():
            return []
        return sorted(p for p in self.shards.iterdir() if _SHARD_NAME.fullmatch(p.name))

    def done(self) -> dict[Key, Path]:
        """Every (id, path, size, mtime) in a finished shard, with the shard holding it."""
        import pyarrow.parquet as pq

        found: dict[Key, Path] = {}
        for shard in self.finished():
            for key in _keys(pq.read_table(shard, columns=["id", "path", "size", "mtime_ns"])):
                found.setdefault(key, shard)
        return found

    def write_shard(self, table: "pa.Table") -> Path:
        """A new finished shard holding `table` (written whole, then renamed into place)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = self.finished()
        number = int(_SHARD_NAME.fullmatch(shards[-1].name).group(1)) + 1 if shards else 0  # type: ignore[union-attr]
        path = self.shards / f"shard-{number:06d}.parquet"
        write_atomically_with(path, lambda handle: pq.write_table(table, pa.PythonFile(handle)))
        return path

    def live(self) -> list[tuple[Path, npt.NDArray[np.int64]]]:
        """Per finished shard, the numbers of its rows that hold a listed object, each listed (id, path, size,
        mtime) once: rows of files that changed or vanished since are left out. Shards without such rows too."""
        import pyarrow.parquet as pq

        listed = set(self.read_listing())
        out: list[tuple[Path, npt.NDArray[np.int64]]] = []
        for shard in self.finished():
            rows = []
            for row, key in enumerate(_keys(pq.read_table(shard, columns=["id", "path", "size", "mtime_ns"]))):
                if key in listed:
                    listed.discard(key)
                    rows.append(row)
            if rows:
                out.append((shard, np.asarray(rows, dtype=np.int64)))
        return out

    @staticmethod
    def read_rows(shard: Path, rows: npt.NDArray[np.int64], columns: Sequence[str]) -> "pa.Table":
        """The `columns` of some rows of one shard, in row order."""
        import pyarrow.parquet as pq

        return pq.read_table(shard, columns=list(columns)).take(rows)

    def vectors(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], list[str]]:
        """The ids, unit vectors and paths of the listed objects, each once (`live`)."""
        ids: list[npt.NDArray[np.int64]] = []
        paths: list[str] = []
        matrices: list[npt.NDArray[np.float32]] = []
        for shard, rows in self.live():
            table = self.read_rows(shard, rows, ["id", "path", "vector"])
            ids.append(np.asarray(table.column("id").to_numpy(), dtype=np.int64))
            paths.extend(table.column("path").to_pylist())
            matrices.append(vector_matrix(table))
        info = self.read_info()
        dim = info.dim if info else 0
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), []
        return np.concatenate(ids), np.concatenate(matrices), paths

    def vector_of(self, key: Key) -> npt.NDArray[np.float32] | None:
        """The vector of one object (id, path, size, mtime) as a finished shard holds it; None if none does. Reads
        every shard's ids (8 bytes an object): for a query by example, not for loops."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        shards = self.finished()
        if not shards:
            return None
        table = ds.dataset([str(p) for p in shards], format="parquet").to_table(
            columns=["id", "path", "size", "mtime_ns", "vector"], filter=pc.field("id") == key[0]
        )
        for row, found in enumerate(_keys(table)):
            if found == key:
                return vector_matrix(table.slice(row, 1))[0].copy()
        return None


def _key_table(keys: Sequence[Key]) -> "pa.Table":
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array([k[0] for k in keys], pa.int64()),
            "path": pa.array([k[1] for k in keys], pa.string()),
            "size": pa.array([k[2] for k in keys], pa.int64()),
            "mtime_ns": pa.array([k[3] for k in keys], pa.int64()),
        }
    )


def _keys(table: "pa.Table") -> list[Key]:
    columns = [table.column(name).to_pylist() for name in ("id", "path", "size", "mtime_ns")]
    return list(zip(*columns, strict=True))


def vector_matrix(table: "pa.Table") -> npt.NDArray[np.float32]:
    """A table's `vector` column as an (n, dim) float32 matrix."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
