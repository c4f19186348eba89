"""Retrieval quality on a user's own collection: the paper's protocol with exact IR metrics, over stored vectors.

Each direction ranks the whole collection for every query (batched matrix products, one stable sort per chunk);
the query image itself is never a result. Metrics are in `metrics.py`, ground truth in `ground_truth.py`, the
written report and plots in `report.py`.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.encoders.protocol import Encoder
from server.errors import ClipSearchError, GroundTruthError, InvalidArgument
from server.evaluation.ground_truth import (
    DEFAULT_TEMPLATE,
    MAX_REPORTED,
    GroundTruth,
    ImageQuery,
    check_template,
    from_folders,
    from_json,
)
from server.evaluation.metrics import rank_order, ranking_metrics
from server.images.decode import load_image
from server.limits import DEFAULT_KS, TOP_K
from server.paths import UNCONFINED, PathGuard
from server.results import DirectionMetrics, EvaluationReport, QueryResult
from server.store.collection import Collection
from server.store.frames import FrameIndex

WORST_SHOWN = 10
_CHUNK = 256


@dataclass
class Direction:
    """One direction's outcome: per-query results and the scores of the retrieved top results."""

    summary: DirectionMetrics
    per_query: list[QueryResult]
    top_scores: npt.NDArray[np.float32]  # (queries, top_n)
    top_relevant: npt.NDArray[np.bool_]  # (queries, top_n)


@dataclass
class Evaluation:
    report: EvaluationReport
    text_to_image: Direction
    image_to_image: Direction
    truth: GroundTruth
    vectors: npt.NDArray[np.float32]


def check_ks(ks: Sequence[int]) -> list[int]:
    unique = sorted(set(ks))
    if not unique or not TOP_K.allows(unique[0]) or not TOP_K.allows(unique[-1]):
        raise InvalidArgument(f"ks must be a non-empty list of integers {TOP_K.describe()}, got {list(ks)}.")
    return unique


def evaluate(
    collection: Collection,
    encoder: Encoder,
    ground_truth: str = "folders",
    ks: Sequence[int] = DEFAULT_KS,
    template: str = DEFAULT_TEMPLATE,
    guard: PathGuard = UNCONFINED,
) -> Evaluation:
    """Evaluate text-to-image and image-to-image retrieval against folder labels or a ground-truth JSON file."""
    started = time.perf_counter()
    ks = check_ks(ks)
    check_template(template)
    ids, paths, vectors = collection.all_vectors()
    moments = VideoScores.of(collection.frame_index(), ids)
    if len(paths) < 2:
        raise GroundTruthError(f"Collection '{collection.name}' holds {len(paths)} image(s); evaluation needs more.")
    if ground_truth == "folders":
        truth = from_folders(paths, collection.indexed_folders(), template)
    else:
        truth = from_json(Path(ground_truth), paths, guard)
    top_n = min(max(ks), len(paths))

    text_vectors = encoder.encode_texts([q.text for q in truth.text_queries]) if truth.text_queries else None
    text = _direction(
        [q.text for q in truth.text_queries],
        text_vectors,
        [q.relevant for q in truth.text_queries],
        [None] * len(truth.text_queries),
        vectors,
        paths,
        ks,
        top_n,
        len(truth.skipped_text),
        moments,
    )
    image_queries, image_vectors = _image_query_vectors(truth, vectors, encoder, guard)
    own_rows = [q.row for q in image_queries]
    image = _direction(
        [str(q.path) for q in image_queries],
        image_vectors,
        [q.relevant for q in image_queries],
        own_rows,
        vectors,
        paths,
        ks,
        # A query image in the collection is never among its own results, so one fewer can be listed.
        min(top_n, len(paths) - 1) if any(row is not None for row in own_rows) else top_n,
        len(truth.skipped_image),
        moments,
    )
    if not text.per_query and not image.per_query:
        raise GroundTruthError("No usable query: " + "; ".join((truth.skipped_text + truth.skipped_image)[:5]))
    named = {label for label in truth.labels if label is not None}
    report = EvaluationReport(
        collection=collection.name,
        ground_truth=truth.source,
        images=len(paths),
        labels=len(named) if truth.source == "folders" else None,
        text_template=template,
        ks=ks,
        text_to_image=text.summary,
        image_to_image=image.summary,
        unknown_paths=truth.unknown_paths[:MAX_REPORTED],
        unknown_count=len(truth.unknown_paths),
        notes=(truth.skipped_text + truth.skipped_image)[:MAX_REPORTED],
        seconds=round(time.perf_counter() - started, 3),
        report_dir=None,
    )
    return Evaluation(report, text, image, truth, vectors)


def _image_query_vectors(
    truth: GroundTruth, vectors: npt.NDArray[np.float32], encoder: Encoder, guard: PathGuard
) -> tuple[list[ImageQuery], npt.NDArray[np.float32] | None]:
    """Stored vectors for queries in the collection; others are read (within the guard) and embedded."""
    kept: list[ImageQuery] = []
    rows: list[npt.NDArray[np.float32]] = []
    outside: list[tuple[int, npt.NDArray[np.float32]]] = []
    for query in truth.image_queries:
        if query.row is not None:
            kept.append(query)
            rows.append(vectors[query.row])
            continue
        try:
            path = guard.check(query.path)
            pixels = encoder.preprocess(load_image(path, min_side=encoder.input_size).image)
        except ClipSearchError as exc:
            truth.skipped_image.append(f"{query.path}: {exc}")
            continue
        outside.append((len(kept), pixels))
        kept.append(query)
        rows.append(vectors[0])  # placeholder, replaced below
    if not kept:
        return [], None
    stacked = np.stack(rows)
    if outside:
        embedded = encoder.encode_pixels(np.stack([pixels for _, pixels in outside]))
        for (position, _), vector in zip(outside, embedded, strict=True):
            stacked[position] = vector
    return kept, stacked


@dataclass(frozen=True)
class VideoScores:
    """Videos scored by their best frame: the frames (store/frames.py) and, per run of one video's frames, the
    column of that video among the evaluated items."""

    frames: FrameIndex
    starts: npt.NDArray[np.int64]  # where each video's run of frames begins
    columns: npt.NDArray[np.int64]  # that video's position among the items

    @classmethod
    def of(cls, frames: FrameIndex | None, ids: npt.NDArray[np.int64]) -> "VideoScores | None":
        if frames is None or len(frames) == 0:
            return None
        starts = np.flatnonzero(np.r_[True, frames.items[1:] != frames.items[:-1]])
        columns = np.searchsorted(ids, frames.items[starts])
        known = (columns < len(ids)) & (ids[np.minimum(columns, len(ids) - 1)] == frames.items[starts])
        if not known.all():  # a frame of an item not in this snapshot: cannot happen in one, checked anyway
            raise GroundTruthError("The collection changed while it was being evaluated; run it again.")
        return cls(frames, starts, columns)

    def raise_to_best_frame(self, scores: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]) -> None:
        """Each video's column of `scores` becomes its best frame's score (its poster is one of them)."""
        best = np.maximum.reduceat(queries @ self.frames.vectors.T, self.starts, axis=1)
        scores[:, self.columns] = np.maximum(scores[:, self.columns], best)


def _direction(
    names: list[str],
    query_vectors: npt.NDArray[np.float32] | None,
    relevant: list[list[int]],
    exclude: list[int | None],
    vectors: npt.NDArray[np.float32],
    paths: list[Path],
    ks: list[int],
    top_n: int,
    skipped: int,
    moments: "VideoScores | None" = None,
) -> Direction:
    per_query: list[QueryResult] = []
    top_scores = np.zeros((len(names), top_n), np.float32)
    top_relevant = np.zeros((len(names), top_n), np.bool_)
    for start in range(0, len(names), _CHUNK):
        stop = min(start + _CHUNK, len(names))
        assert query_vectors is not None
        scores = query_vectors[start:stop] @ vectors.T
        if moments is not None:
            moments.raise_to_best_frame(scores, query_vectors[start:stop])
        relevance = np.zeros(scores.shape, np.bool_)
        for i in range(stop - start):
            relevance[i, relevant[start + i]] = True
            own = exclude[start + i]
            if own is not None:  # the query image is never a result: drop it from its own ranking
                scores[i, own] = -np.inf
        order = rank_order(scores)
        ranked = np.take_along_axis(relevance, order, axis=1)
        metrics = ranking_metrics(ranked, ks, n_relevant=np.array([len(r) for r in relevant[start:stop]]))
        top_scores[start:stop] = np.take_along_axis(scores, order[:, :top_n], axis=1)
        top_relevant[start:stop] = ranked[:, :top_n]
        for i in range(stop - start):
            q = start + i
            per_query.append(
                QueryResult(
                    query=names[q],
                    relevant=len(relevant[q]),
                    ap=float(metrics.ap[i]),
                    rr=float(metrics.rr[i]),
                    recall_at={k: float(metrics.recall[k][i]) for k in ks},
                    precision_at={k: float(metrics.precision[k][i]) for k in ks},
                    hit_rate_at={k: float(metrics.hit_rate[k][i]) for k in ks},
                    ndcg_at={k: float(metrics.ndcg[k][i]) for k in ks},
                    relevant_ranks=(np.flatnonzero(ranked[i]) + 1).tolist(),
                    top=[str(paths[j]) for j in order[i, :top_n]],
                )
            )
    per_query.sort(key=lambda r: (r.ap, r.rr, r.query))

    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 6) if values else 0.0

    summary = DirectionMetrics(
        map=mean([r.ap for r in per_query]),
        mrr=mean([r.rr for r in per_query]),
        recall_at={k: mean([r.recall_at[k] for r in per_query]) for k in ks},
        hit_rate_at={k: mean([r.hit_rate_at[k] for r in per_query]) for k in ks},
        precision_at={k: mean([r.precision_at[k] for r in per_query]) for k in ks},
        ndcg_at={k: mean([r.ndcg_at[k] for r in per_query]) for k in ks},
        queries=len(per_query),
        skipped=skipped,
        worst=per_query[:WORST_SHOWN],
    )
    return Direction(summary, per_query, top_scores, top_relevant)
