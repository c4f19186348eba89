"""Filtered search: the top images among those a filter lets through, exactly on a Flat index, at recall@10 ≥ 0.95 on
IVF, whatever fraction of the collection passes (docs/benchmarks.md). The filter itself is SQL over the catalog
(filters.py); this module decides how to search with it and reads the catalog for it."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from server.search.filters import SearchFilter
from server.store.collection import Collection, Hit

ESTIMATE_SAMPLE = 128  # ids sampled to estimate how selective a filter is (±0.045 at 50 %)
Keep = Callable[[float | None, float | None], bool]


PROBE_FRACTION = 0.1  # filters estimated to pass fewer images than this select the passing ids straight away
PROBE_SURPLUS = 2  # a probe looks deep enough to expect this many times the passing images it needs


def filtered_hits(
    collection: Collection, vector: npt.NDArray[np.float32], need: int, filters: SearchFilter
) -> list[Hit]:
    """The top `need` images that pass the filter.

    A random sample of the catalog first estimates the fraction f of images that pass. When many pass, the
    unfiltered top need·PROBE_SURPLUS/f usually holds `need` passing ones: on an exact index they are then exactly the
    filtered top (anything passing further down scores lower), and only those few ids are checked against the
    catalog. Otherwise (a selective filter, or a probe that came up short) the catalog selects every passing id and
    the search runs among them (FAISS IDSelector, or exact scoring of a small subset)."""
    where, params = filters.sql(collection.cameras() if filters.camera else None)
    keep = filters.keeps_place if filters.near else None
    fraction = passing_fraction(collection, where, params)
    if fraction >= PROBE_FRACTION:
        depth = math.ceil(need * PROBE_SURPLUS / fraction)
        # On IVF, probe as many times more clusters as the filter is selective (the deeper top holds more of them).
        kept = collection.search_hits(vector, depth, where=where, params=params, keep=keep, widen=1 / fraction)
        if len(kept) >= need or depth >= collection.ntotal:  # enough, or the probe saw every image
            return kept[:need]
    return collection.search_hits(vector, need, select_ids(collection, where, params, keep))


def passing_fraction(collection: Collection, where: str, params: Sequence[Any], sample: int = ESTIMATE_SAMPLE) -> float:
    """About which fraction of the images match a WHERE clause, from `sample` random ids (a primary-key lookup
    each, so about a millisecond whatever the collection's size); 1.0 for an empty collection."""
    # Two queries: SQLite answers MIN or MAX alone from the primary key, but scans the table for both at once.
    low = collection.query("SELECT MIN(id) FROM images")[0][0]
    high = collection.query("SELECT MAX(id) FROM images")[0][0]
    if low is None:
        return 1.0
    rng = np.random.default_rng(collection.generation)
    seen = matched = 0
    for _ in range(4):  # ids deleted since leave gaps: draw again until enough existing rows were seen
        draw = sorted({int(i) for i in rng.integers(low, high + 1, sample)})
        marks = ",".join("?" * len(draw))
        counted, passed = collection.query(
            f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN ({where}) THEN 1 ELSE 0 END), 0) FROM images "
            f"WHERE id IN ({marks})",
            [*params, *draw],
        )[0]
        seen, matched = seen + int(counted), matched + int(passed)
        if seen >= sample // 2:
            break
    return matched / seen if seen else 1.0


def select_ids(
    collection: Collection, where: str, params: Sequence[Any], keep: Keep | None = None
) -> npt.NDArray[np.int64]:
    """Ids of the images matching a WHERE clause over `images` (filters.py), optionally refined by `keep`
    (called with each row's latitude and longitude)."""
    if keep is None:
        rows = collection.query(f"SELECT id FROM images WHERE {where}", params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    rows = collection.query(f"SELECT id, latitude, longitude FROM images WHERE {where}", params)
    return np.array([r[0] for r in rows if keep(r[1], r[2])], dtype=np.int64)
