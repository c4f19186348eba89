"""The pairs of images whose stored vectors are at cosine ≥ a threshold: the candidates of near-duplicates.

Comparing every image with every other is n² products (10¹² at a million), and a k-NN search per image through an
IVF index is a million searches of a thousand vectors each, most of it overhead. Instead the images are split into
cells of close vectors and each cell is compared with what may be near it in a few matrix products:

- every image belongs to the cell of its nearest centroid and is compared, as a query, with the members of its
  `PROBES` nearest cells (its own and the next). Vectors as close as near-duplicates (cosine ≥ 0.9) nearly always
  share a cell or sit in each other's next ones, so this finds what a k-NN search would, at a fraction of the cost;
  bench.duplicates measures what it finds against planted groups.
- the cells are the collection's own IVF lists (centroids and vectors read in place, list by list), or for a Flat
  collection a spherical k-means of about sqrt(n) cells trained on a sample; up to `EXACT_UP_TO` images they are one
  cell, compared exactly.
- an IVF image's next cells are looked for among the `NEAR_CENTROIDS` centroids nearest its own, not among all.

Every score is the exact inner product of two stored vectors, so every pair found is judged exactly. At most
`NEIGHBOURS` pairs are kept per image and cell (the best), so a dense cluster (a thousand identical frames) costs
bounded memory. The collection's lock is held only while one cell's vectors are copied out: searches go on between,
and a commit or reload meanwhile stops the computation (`DuplicatesCancelled`) rather than mix two states.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.errors import DuplicatesCancelled
from server.store.collection import Collection
from server.store.faiss_index import nlist_for

NEIGHBOURS = 32  # pairs kept per image and cell, the best first
EXACT_UP_TO = 20_000  # images in scope compared all with all, as one cell
PROBES = 3  # cells each image is compared with: its own and the next two
NEAR_CENTROIDS = 64  # where an IVF image's next cells are looked for: its own list's nearest centroids
SCORES_PER_BLOCK = 1 << 22  # scores of one matrix product at a time (16 MB)
SAMPLE_PER_CELL = 40  # k-means training vectors per cell (FAISS asks for at least 39)

Progress = Callable[[int, int], None]
"""Told (images compared, images in scope) as cells are done."""

Token = tuple[int, int]


@dataclass(frozen=True)
class _Layout:
    """Where each row (a position in the scope's ids) is stored: its list and offset in it."""

    source: npt.NDArray[np.int64]
    offset: npt.NDArray[np.int64]
    centroids: npt.NDArray[np.float32] | None  # the IVF lists' centroids; None for Flat


def near_pairs(
    collection: Collection,
    ids: npt.NDArray[np.int64],
    threshold: float,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pairs (a, b) of positions in `ids` (ascending catalog ids, all in the collection) whose vectors are at
    cosine ≥ `threshold`, a ≠ b, each pair at least once, possibly both ways."""
    token, layout = _locate(collection, ids)
    if len(ids) < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    def gather(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        if cancel is not None and cancel.is_set():
            raise DuplicatesCancelled
        return _gather(collection, token, layout, rows)

    # Each row's cells, its own first: one cell of every row, or its PROBES nearest.
    best = np.zeros((len(ids), 1), dtype=np.int64) if len(ids) <= EXACT_UP_TO else _best_cells(layout, gather, len(ids))
    found_a: list[npt.NDArray[np.int64]] = []
    found_b: list[npt.NDArray[np.int64]] = []
    done = 0
    members_of = _rows_by_cell(best[:, 0])
    queries_of = _rows_by_cell(best.ravel(), np.repeat(np.arange(len(ids)), best.shape[1]))
    for cell, members in members_of.items():
        queries = queries_of[cell]
        a, b = _pairs_in_cell(gather(queries), queries, gather(members), members, best[queries, 0] == cell, threshold)
        found_a.append(a)
        found_b.append(b)
        done += len(members)
        if progress is not None:
            progress(done, len(ids))
    if not found_a:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(found_a), np.concatenate(found_b)


def _locate(collection: Collection, ids: npt.NDArray[np.int64]) -> tuple[Token, _Layout]:
    source = np.full(len(ids), -1, dtype=np.int64)
    offset = np.full(len(ids), -1, dtype=np.int64)
    with collection.stored_lists() as stored:
        assert stored is not None
        for number, (list_ids, _) in enumerate(stored.lists):
            if not len(list_ids) or not len(ids):
                continue
            where = np.searchsorted(ids, list_ids)
            inside = (where < len(ids)) & (ids[np.minimum(where, len(ids) - 1)] == list_ids)
            source[where[inside]] = number
            offset[where[inside]] = np.flatnonzero(inside)
        token, centroids = stored.token, stored.centroids
    if np.any(source < 0):  # the catalog and the index disagree: a commit came between reading one and the other
        raise DuplicatesCancelled
    return token, _Layout(source, offset, centroids)


def _gather(
    collection: Collection, token: Token, layout: _Layout, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Copies of the rows' stored vectors, in that order, read while the index is as `token` names it."""
    with collection.stored_lists(token) as stored:
        if stored is None:
            raise DuplicatesCancelled
        dim = collection.manifest.dim
        out = np.empty((len(rows), dim), dtype=np.float32)
        sources = layout.source[rows]
        order = np.argsort(sources, kind="stable")
        bounds = np.flatnonzero(np.diff(sources[order])) + 1
        for part in np.split(order, bounds):
            if len(part):
                out[part] = stored.lists[int(sources[part[0]])][1][layout.offset[rows[part]]]
    return out


def _best_cells(
    layout: _Layout, gather: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]], count: int
) -> npt.NDArray[np.int64]:
    """Each row's `PROBES` nearest cells, nearest first: among the IVF centroids nearest its own list's, or among the
    centroids of a k-means of the rows (Flat)."""
    best = np.empty((count, PROBES), dtype=np.int64)
    if layout.centroids is not None:
        centroids = layout.centroids
        near = min(NEAR_CENTROIDS, len(centroids))
        closeness = centroids @ centroids.T
        np.fill_diagonal(closeness, np.inf)  # a list's own centroid first, whatever its norm
        around = np.argsort(-closeness, axis=1)[:, :near]
        for number, rows in _rows_by_cell(layout.source).items():
            candidates = around[number]
            scores = gather(rows) @ centroids[candidates].T
            best[rows] = _top(scores, candidates)
        return best
    centroids = _kmeans(gather, count)
    every = np.arange(len(centroids))
    rows_per_chunk = max(1, SCORES_PER_BLOCK // len(centroids))
    for start in range(0, count, rows_per_chunk):
        rows = np.arange(start, min(start + rows_per_chunk, count))
        best[rows] = _top(gather(rows) @ centroids.T, every)
    return best


def _top(scores: npt.NDArray[np.float32], candidates: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Per row, the `PROBES` best candidates, best first (repeated when there are fewer)."""
    width = min(PROBES, scores.shape[1])
    picked = np.argpartition(-scores, width - 1, axis=1)[:, :width] if scores.shape[1] > width else None
    if picked is None:
        picked = np.broadcast_to(np.arange(width), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, picked, 1), axis=1)
    chosen = candidates[np.take_along_axis(picked, order, 1)]
    if width < PROBES:
        chosen = np.concatenate([chosen, np.repeat(chosen[:, :1], PROBES - width, axis=1)], axis=1)
    return chosen


def _kmeans(gather: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]], count: int) -> npt.NDArray[np.float32]:
    import faiss

    cells = nlist_for(count)  # as many as an IVF index of that size would have
    sample = np.sort(np.random.default_rng(0).choice(count, min(count, SAMPLE_PER_CELL * cells), replace=False))
    vectors = gather(sample)
    kmeans = faiss.Kmeans(vectors.shape[1], cells, niter=10, spherical=True, seed=0)
    kmeans.train(vectors)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def _rows_by_cell(
    cells: npt.NDArray[np.int64], rows: npt.NDArray[np.int64] | None = None
) -> dict[int, npt.NDArray[np.int64]]:
    """The rows of each cell (`rows[i]` is in `cells[i]`; by default row i), each cell's rows ascending and once."""
    if rows is None:
        rows = np.arange(len(cells))
    order = np.lexsort((rows, cells))
    cells, rows = cells[order], rows[order]
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (cells[1:] != cells[:-1]) | (rows[1:] != rows[:-1])
    cells, rows = cells[keep], rows[keep]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    return {
        int(part[0]): rows_part for part, rows_part in zip(np.split(cells, bounds), np.split(rows, bounds), strict=True)
    }


def _pairs_in_cell(
    query_vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.int64],
    member_vectors: npt.NDArray[np.float32],
    members: npt.NDArray[np.int64],
    query_is_member: npt.NDArray[np.bool_],
    threshold: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The (query, member) pairs at cosine ≥ threshold, at most NEIGHBOURS per query (the best); a pair of two
    members once."""
    found_a, found_b = [], []
    block = max(1, SCORES_PER_BLOCK // len(members))
    own_column = np.searchsorted(members, queries)  # where a query that is a member meets itself
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        scores = query_vectors[start:stop] @ member_vectors.T
        own = np.flatnonzero(query_is_member[start:stop])
        scores[own, own_column[start:stop][own]] = -np.inf  # an image is not its own duplicate
        # Few queries have a pair at all: one pass for the row maxima, the rest only where one reaches the threshold.
        hit = np.flatnonzero(scores.max(axis=1) >= threshold)
        if not len(hit):
            continue
        near = scores[hit]
        if near.shape[1] > NEIGHBOURS:
            crowded = np.count_nonzero(near >= threshold, axis=1) > NEIGHBOURS
            if crowded.any():  # keep each crowded query's best NEIGHBOURS only
                kept = np.argpartition(-near[crowded], NEIGHBOURS - 1, axis=1)[:, :NEIGHBOURS]
                trimmed = np.full_like(near[crowded], -np.inf)
                np.put_along_axis(trimmed, kept, np.take_along_axis(near[crowded], kept, 1), 1)
                near[crowded] = trimmed
        q, m = np.nonzero(near >= threshold)
        rows = start + hit[q]
        a, b = queries[rows], members[m]
        once = ~(query_is_member[rows] & (a > b))
        found_a.append(a[once])
        found_b.append(b[once])
    if not found_a:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(found_a), np.concatenate(found_b)
