"""Retrieval quality on a user's own collection: the paper's protocol (mAP, Recall@k) with folder labels."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.collection import Collection
from server.encoder import Encoder
from server.errors import GroundTruthError, InvalidArgument
from server.models import DirectionMetrics, EvaluationReport

DEFAULT_KS = (1, 3, 5, 10)
DEFAULT_TEMPLATE = "a photo of a {label}"
_CHUNK = 512


def label_of(path: Path) -> str:
    """The 'folders' ground truth: an image's label is its parent folder's name."""
    return path.parent.name


def label_text(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    return template.format(label=label.replace("_", " ").replace("-", " "))


def ranked_relevance(scores: npt.NDArray[np.float32], relevant: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Relevance of each query's results in rank order: score descending, ties broken by item order (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(relevant, order, axis=1)


def average_precision(ranked: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """AP per query over its full ranking: mean of precision at each relevant rank."""
    hits = np.cumsum(ranked, axis=1)
    ranks = np.arange(1, ranked.shape[1] + 1)
    n_relevant = ranked.sum(axis=1)
    precision_sum = np.where(ranked, hits / ranks, 0.0).sum(axis=1)
    return np.divide(precision_sum, n_relevant, out=np.zeros(len(ranked)), where=n_relevant > 0)


def recall_at(ranked: npt.NDArray[np.bool_], k: int) -> npt.NDArray[np.float64]:
    """Fraction of each query's relevant items found in its top k."""
    n_relevant = ranked.sum(axis=1)
    found = ranked[:, :k].sum(axis=1)
    return np.divide(found, n_relevant, out=np.zeros(len(ranked)), where=n_relevant > 0)


def _metrics(
    scores: npt.NDArray[np.float32], relevant: npt.NDArray[np.bool_], ks: Sequence[int]
) -> tuple[list[float], dict[int, list[float]]]:
    ranked = ranked_relevance(scores, relevant)
    return average_precision(ranked).tolist(), {k: recall_at(ranked, k).tolist() for k in ks}


def _summary(aps: list[float], recalls: dict[int, list[float]], skipped: int) -> DirectionMetrics:
    return DirectionMetrics(
        map=round(float(np.mean(aps)), 6) if aps else 0.0,
        recall_at={k: round(float(np.mean(v)), 6) if v else 0.0 for k, v in recalls.items()},
        queries=len(aps),
        skipped=skipped,
    )


def evaluate_folders(
    collection: Collection,
    encoder: Encoder,
    ks: Sequence[int] = DEFAULT_KS,
    template: str = DEFAULT_TEMPLATE,
) -> EvaluationReport:
    """Both directions of the paper's protocol with parent-folder labels, over stored vectors (no re-embedding)."""
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise InvalidArgument("ks must be a non-empty list of positive integers.")
    if "{label}" not in template:
        raise InvalidArgument("The text template must contain '{label}'.")
    _, paths, vectors = collection.all_vectors()
    if len(paths) < 2:
        raise GroundTruthError(f"Collection '{collection.name}' holds {len(paths)} image(s); evaluation needs more.")
    labels = np.array([label_of(p) for p in paths])
    names = sorted(set(labels.tolist()))

    text_vectors = encoder.encode_texts([label_text(name, template) for name in names])
    text_relevant = labels[np.newaxis, :] == np.array(names)[:, np.newaxis]
    text_aps, text_recalls = _metrics(text_vectors @ vectors.T, text_relevant, ks)

    counts = {name: int((labels == name).sum()) for name in names}
    queries = np.array([i for i, label in enumerate(labels) if counts[label] >= 2], dtype=np.int64)
    image_aps: list[float] = []
    image_recalls: dict[int, list[float]] = {k: [] for k in ks}
    for start in range(0, len(queries), _CHUNK):
        chunk = queries[start : start + _CHUNK]
        scores = vectors[chunk] @ vectors.T
        relevant = labels[chunk][:, np.newaxis] == labels[np.newaxis, :]
        rows = np.arange(len(chunk))
        # The query itself is never a result: last place and not relevant.
        scores[rows, chunk] = -np.inf
        relevant[rows, chunk] = False
        aps, recalls = _metrics(scores, relevant, ks)
        image_aps.extend(aps)
        for k in ks:
            image_recalls[k].extend(recalls[k])
    if not image_aps and not text_aps:
        raise GroundTruthError("No usable query: every label has a single image.")
    return EvaluationReport(
        collection=collection.name,
        ground_truth="folders",
        images=len(paths),
        labels=len(names),
        text_template=template,
        text_to_image=_summary(text_aps, text_recalls, 0),
        image_to_image=_summary(image_aps, image_recalls, len(paths) - len(queries)),
    )
