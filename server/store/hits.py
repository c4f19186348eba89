"""What a collection's search returns: a `Hit` per image or video, with a video's other matching `Moment`s, made
from the catalog's rows (`hit_rows`, read under the collection's lock)."""

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.store.schema import METADATA_COLUMNS

Keep = Callable[[float | None, float | None], bool]  # called with a row's latitude and longitude


def path_text(path: Path) -> str:
    """A hit's path as text: an archive's S3 object keeps its `s3://bucket/key` (a Path folds the double slash;
    catalogued files are absolute, so a first part "s3:" can only be such a URI)."""
    parts = path.parts
    if parts and parts[0] == "s3:":
        return "s3://" + "/".join(parts[1:])
    return str(path)


@dataclass(frozen=True)
class Moment:
    time_seconds: float
    score: float


@dataclass(frozen=True)
class Hit:
    """One search result with what the catalog knows of the image."""

    score: float
    id: int
    path: Path
    width: int
    height: int
    taken: str | None
    taken_source: str | None
    taken_local: str | None
    taken_utc: float | None
    latitude: float | None
    longitude: float | None
    camera: str | None
    kind: str | None = None  # None: a photo; "video"
    duration: float | None = None  # a video's, in seconds
    time_seconds: float | None = None  # a video's moment that matched (its poster frame's, from the index alone)
    other_moments: tuple[Moment, ...] = ()  # a video's other matching moments

    @property
    def is_video(self) -> bool:
        return self.kind == "video"


def hit_rows(
    conn: sqlite3.Connection, ids: list[int], where: str | None = None, params: Sequence[Any] = ()
) -> dict[int, tuple[Any, ...]]:
    """By id, the catalog's row of each of `ids` that matches `where`: a `Hit`'s fields after its score."""
    details: dict[int, tuple[Any, ...]] = {}
    columns = "id, path, width, height, " + ", ".join(METADATA_COLUMNS) + ", kind, duration, poster_time"
    condition = f" AND ({where})" if where else ""
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {columns} FROM images WHERE id IN ({marks}){condition}"
        for row in conn.execute(sql, [*chunk, *params]):
            details[row[0]] = (row[0], Path(os.fsdecode(row[1])), *row[2:])
    return details


def kept(details: dict[int, tuple[Any, ...]], image_id: int, keep: Keep | None) -> bool:
    """Whether `image_id` has a row in `details` (a hit's fields after its score, by id) that `keep` accepts."""
    return image_id in details and (keep is None or keep(details[image_id][8], details[image_id][9]))
