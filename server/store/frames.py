"""A video's moments: the vectors of its sampled frames, each tied to a time, and how a query finds a video's best.

A video is one row of `images` (kind 'video'): its own vector is that of its poster frame, so every part of the
collection that works on one vector per item (the FAISS index, duplicates, IVF conversion, calibration) sees it as
one item. Every sampled frame, the poster's included, is a row of `frames` (id, item, time, vector). Searches score
all of a collection's frames exactly (numpy, in memory, loaded once per commit that changed them: a few vectors per
minute of video), so a video is found at its best moment, and at most `MAX_MOMENTS` more are named: `video_hits`,
which a collection's search merges with the photos its FAISS index finds.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from server.store.hits import Hit, Keep, Moment, kept

MAX_MOMENTS = 3  # other matching moments named with a video's best
MOMENT_GAP_SECONDS = 2.0  # other moments are at least this far from the best and from each other
MOMENT_MARGIN = 0.05  # ... and score within this of the best


@dataclass(frozen=True)
class VideoMatch:
    """A video's best moment for a query, and up to `MAX_MOMENTS` other good ones."""

    item: int
    score: float
    time_seconds: float
    others: tuple[Moment, ...] = ()


Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


class FrameIndex:
    """Every frame of a collection's videos: item ids, times and unit vectors, in memory."""

    def __init__(self, items: npt.NDArray[np.int64], times: npt.NDArray[np.float64], vectors: npt.NDArray[np.float32]):
        self.items = items
        self.times = times
        self.vectors = vectors

    @classmethod
    def load(cls, query: Query, dim: int) -> "FrameIndex":
        rows = query("SELECT item, time, vector FROM frames ORDER BY item, time", ())
        items = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        times = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        vectors = (
            np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(-1, dim).copy()
            if rows
            else np.empty((0, dim), dtype=np.float32)
        )
        return cls(items, times, vectors)

    def __len__(self) -> int:
        return len(self.items)

    def best(
        self, query: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64] | None = None
    ) -> list[VideoMatch]:
        """The `k` videos whose best frame scores highest for `query` (among `allowed` items, if given), best first."""
        if len(self.items) == 0 or k <= 0:
            return []
        scores = self.vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        mask = np.isin(self.items, allowed) if allowed is not None else None
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        # Per video, its best frame: frames are stored by item, so each item is one run of rows.
        starts = np.flatnonzero(np.r_[True, self.items[1:] != self.items[:-1]])
        best_score = np.maximum.reduceat(scores, starts)
        order = np.argsort(-best_score, kind="stable")
        matches = []
        for run in order[: k * 2]:  # a few spare for items excluded above (their best is -inf)
            if not np.isfinite(best_score[run]) or len(matches) == k:
                break
            end = starts[run + 1] if run + 1 < len(starts) else len(self.items)
            matches.append(
                self._match(scores[starts[run] : end], self.times[starts[run] : end], int(self.items[starts[run]]))
            )
        return matches

    @staticmethod
    def _match(scores: npt.NDArray[np.float32], times: npt.NDArray[np.float64], item: int) -> VideoMatch:
        ranked = np.argsort(-scores, kind="stable")
        top = int(ranked[0])
        others: list[Moment] = []
        taken = [float(times[top])]
        for i in ranked[1:]:
            if len(others) == MAX_MOMENTS or scores[i] < scores[top] - MOMENT_MARGIN:
                break
            if all(abs(float(times[i]) - t) >= MOMENT_GAP_SECONDS for t in taken):
                others.append(Moment(round(float(times[i]), 3), float(scores[i])))
                taken.append(float(times[i]))
        return VideoMatch(item, float(scores[top]), round(float(times[top]), 3), tuple(others))

    def frames_of(self, item: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """One video's frame times and vectors."""
        rows = self.items == item
        return self.times[rows], self.vectors[rows]


class FrameCache:
    """A collection's `FrameIndex`, loaded once per generation. Not locked: its collection's lock is held by every
    caller."""

    def __init__(self, query: Query) -> None:
        self._query = query
        self._frames: tuple[int, FrameIndex | None] | None = None  # (generation, the videos' frames)

    def at(self, generation: int, dim: int) -> FrameIndex | None:
        """The frames of the collection's videos as of `generation` (None: it has none)."""
        if self._frames is None or self._frames[0] != generation:
            has = bool(self._query("SELECT 1 FROM frames LIMIT 1", ()))
            loaded = FrameIndex.load(self._query, dim) if has else None
            self._frames = (generation, loaded)
        return self._frames[1]


def video_hits(
    frames: FrameIndex,
    vector: npt.NDArray[np.float32],
    k: int,
    ids: npt.NDArray[np.int64] | None,
    details: Callable[[list[int]], dict[int, tuple[Any, ...]]],
    keep: Keep | None,
) -> list[Hit]:
    """The k best videos by their best frame (among `ids`, with a row in `details` that `keep` accepts), as hits."""
    depth = k
    while True:
        matches = frames.best(vector, depth, ids)
        found = details([m.item for m in matches])
        hits = [
            replace(Hit(match.score, *found[match.item]), time_seconds=match.time_seconds, other_moments=match.others)
            for match in matches
            if kept(found, match.item, keep)
        ]
        if len(hits) >= k or len(matches) < depth:
            return hits[:k]
        depth *= 4  # filtered out: look deeper
