"""Ranking metrics over full rankings, vectorised over many queries; definitions follow trec_eval.

A ranking is a boolean matrix `ranked[q, r]`: whether the item at rank r+1 of query q is relevant. `n_relevant`
counts every relevant item of the query, ranked or not.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


def rank_order(scores: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """Item indices per query, best first: score descending, ties broken by lower item index (stable sort)."""
    return np.argsort(-scores, axis=1, kind="stable")


def ranked_relevance(scores: npt.NDArray[np.floating], relevant: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Relevance of each query's results in rank order."""
    return np.take_along_axis(relevant, rank_order(scores), axis=1)


@dataclass(frozen=True)
class RankingMetrics:
    """Per-query values (arrays of shape (queries,)) for each metric; dict keys are cut-offs k."""

    ap: Floats
    rr: Floats
    recall: dict[int, Floats]
    precision: dict[int, Floats]
    hit_rate: dict[int, Floats]
    ndcg: dict[int, Floats]


def _safe_divide(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> Floats:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def ranking_metrics(
    ranked: npt.NDArray[np.bool_], ks: Sequence[int], n_relevant: npt.NDArray[np.integer] | None = None
) -> RankingMetrics:
    """AP and reciprocal rank over the full ranking; Recall, Precision, hit rate and binary nDCG at each k."""
    queries, length = ranked.shape
    total = ranked.sum(axis=1) if n_relevant is None else np.asarray(n_relevant)
    total_f = total.astype(np.float64)
    hits = np.cumsum(ranked, axis=1, dtype=np.int64)
    positions = np.arange(1, length + 1, dtype=np.float64)
    ap = _safe_divide(np.where(ranked, hits / positions, 0.0).sum(axis=1), total_f)
    first = np.argmax(ranked, axis=1)
    found_any = ranked.any(axis=1)
    rr = np.where(found_any, 1.0 / (first + 1.0), 0.0)
    discounts = 1.0 / np.log2(positions + 1.0)
    gains = np.cumsum(np.where(ranked, discounts, 0.0), axis=1)
    top_k = max(ks, default=0)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, top_k + 2, dtype=np.float64)))])
    recall, precision, hit_rate, ndcg = {}, {}, {}, {}
    for k in ks:
        cut = min(k, length)
        found = hits[:, cut - 1] if cut > 0 else np.zeros(queries, np.int64)
        recall[k] = _safe_divide(found.astype(np.float64), total_f)
        precision[k] = found / float(k)
        hit_rate[k] = (found > 0).astype(np.float64)
        dcg = gains[:, cut - 1] if cut > 0 else np.zeros(queries)
        ideal_dcg = ideal[np.minimum(total, k)]
        ndcg[k] = _safe_divide(dcg, ideal_dcg)
    return RankingMetrics(ap=ap, rr=rr, recall=recall, precision=precision, hit_rate=hit_rate, ndcg=ndcg)
