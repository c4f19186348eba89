"""Which FAISS index a collection uses, and how it is built: exact Flat, or IVF once a collection is large.

Flat (`IndexIDMap2` over `IndexFlatIP`) scans every vector: exact, and fast enough below `AUTO_ANN_THRESHOLD`.
IVF (`IndexIVFFlat`, inner product) scans only the `nprobe` nearest of `nlist` clusters; `nprobe` is calibrated at
build time against exact search so that recall@10 reaches `TARGET_RECALL`. Both take new vectors without a rebuild
(IVF keeps its trained centroids) and both remove ids.
"""

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

# Below this many vectors an exact scan answers a single query in a few tens of milliseconds on a laptop CPU
# (docs/benchmarks.md); above it, IVF's approximate search is much faster at recall@10 >= 0.95.
AUTO_ANN_THRESHOLD = 150_000
TARGET_RECALL = 0.97
MAX_TRAINING_VECTORS = 100_000
CALIBRATION_QUERIES = 300


@dataclass(frozen=True)
class IndexSpec:
    """What the manifest records: the index kind and its parameters."""

    kind: str  # "flat" or "ivf"
    params: dict[str, Any] = field(default_factory=dict)


def choose_kind(policy: str, count: int) -> str:
    """The index kind a collection should have: the policy, or for 'auto' the size-based choice."""
    if policy == "auto":
        return "ivf" if count >= AUTO_ANN_THRESHOLD else "flat"
    return policy


def new_flat(dim: int) -> Any:
    import faiss

    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def nlist_for(count: int) -> int:
    """About 4·sqrt(n) clusters, a power of two up to 16384, with at least 39 training vectors per cluster
    (FAISS's own minimum) among the at most MAX_TRAINING_VECTORS used for training."""
    target = 4 * math.sqrt(max(count, 1))
    nlist = int(min(16384, max(64, 2 ** round(math.log2(target)))))
    cap = min(count, MAX_TRAINING_VECTORS) // 39
    if cap >= 64:
        return min(nlist, 2 ** int(math.log2(cap)))
    return max(1, cap)


Chunks = Callable[[], Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]]
"""Every (ids, vectors) of a collection, a chunk at a time; callable again for another pass."""


def build_ivf(
    vectors: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], exact: Any = None, seed: int = 0
) -> tuple[Any, Any, IndexSpec]:
    """`build_ivf_from` over vectors held in memory."""
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(ids), min(len(ids), MAX_TRAINING_VECTORS), replace=False)]
    return build_ivf_from(len(ids), sample, lambda: iter([(ids, vectors)]), exact, rng, seed)


def build_ivf_from(
    count: int, sample: npt.NDArray[np.float32], chunks: Chunks, exact: Any, rng: np.random.Generator, seed: int = 0
) -> tuple[Any, Any, IndexSpec]:
    """Train an IVF index on `sample` (of the `count` vectors `chunks` yields), fill it chunk by chunk, and calibrate
    nprobe on it against `exact` (an exact index over the same ids, e.g. the Flat index being replaced), else
    against exact search over the chunks; no more than the new index and the sample are ever held.

    Returns the trained empty index (kept so later rebuilds need no training), the filled index and its spec."""
    import faiss

    dim = sample.shape[1]
    nlist = nlist_for(count)
    quantizer = faiss.IndexFlatIP(dim)
    trained = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    trained.cp.seed = seed
    trained.cp.niter = 10
    trained.train(np.ascontiguousarray(sample, dtype=np.float32))
    trained.set_direct_map_type(faiss.DirectMap.Hashtable)
    index = faiss.clone_index(trained)
    fill_ivf(index, chunks)
    nprobe = calibrate_nprobe(index, sample, None, rng, exact if exact is not None else StreamedExact(chunks))
    index.nprobe = nprobe
    params = {"nlist": nlist, "nprobe": nprobe, "target_recall_at_10": TARGET_RECALL, "trained_on": count}
    return trained, index, IndexSpec("ivf", params)


def fill_ivf(index: Any, chunks: Chunks) -> None:
    """Add every chunk's vectors to a trained, empty IVF index, each list sized once to what it will hold: two passes
    over the chunks (assign, then add), where lists grown by appending would hold up to twice their vectors' memory
    (at 300,000 vectors: 1.6× their size appended, 1.0× sized first)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    assigned = [
        ivf.quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0] for _, vectors in chunks()
    ]
    lists = np.concatenate(assigned) if assigned else np.empty(0, dtype=np.int64)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for number, size in enumerate(np.bincount(lists, minlength=ivf.nlist).tolist()):
        if size:
            invlists.resize(number, size)  # a list's capacity stays when it is emptied again
            invlists.resize(number, 0)
    start = 0
    for ids, vectors in chunks():
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        part = np.ascontiguousarray(lists[start : start + len(ids)])
        ivf.add_core(len(ids), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(part))
        start += len(ids)


class StreamedExact:
    """Exact top-k over a collection's chunks, one chunk in memory at a time: `search` as a FAISS index has it."""

    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks

    def search(self, queries: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for ids, vectors in self.chunks():
            scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
            found = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else None
            if top is not None:
                scores, found = np.take_along_axis(scores, top, 1), np.take_along_axis(found, top, 1)
            best_scores, best_ids = scores, found
        order = np.argsort(-best_scores, axis=1)
        return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)


def calibrate_nprobe(
    index: Any,
    vectors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64] | None,
    rng: np.random.Generator,
    exact: Any = None,
) -> int:
    """Smallest power-of-two nprobe whose recall@10 meets TARGET_RECALL (`calibrate`)."""
    return calibrate(index, vectors, ids, rng, exact, TARGET_RECALL)[0]


def calibrate(
    index: Any,
    vectors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64] | None,
    rng: np.random.Generator,
    exact: Any,
    target: float,
) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall@10 against exact search, on queries near `vectors` (stored ones,
    or a sample of them), meets `target`, and the recall measured there (at nprobe = nlist when none meets it).
    Without `exact` (an index over ids), `vectors` with their `ids` are all there is."""
    import faiss

    count, dim = vectors.shape
    # Half the queries sit near stored vectors (a query resembling one photo), half midway between two random ones
    # (a query between groups, the hard case for IVF), so the nprobe chosen is conservative.
    half = min(count, CALIBRATION_QUERIES) // 2 or 1
    near = vectors[rng.choice(count, half)] + rng.normal(0, 0.02, (half, dim)).astype(np.float32)
    between = vectors[rng.choice(count, half)] + vectors[rng.choice(count, half)]
    queries = np.concatenate([near, between]).astype(np.float32)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = min(10, int(index.ntotal))
    if k == 0:
        return 1, 1.0
    if exact is None:
        assert ids is not None
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        _, positions = exact.search(queries, k)
        truth = ids[positions]
    else:  # already maps to ids; reusing it spares a second full copy of the vectors
        _, truth = exact.search(queries, k)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
        log.info("IVF nlist=%d nprobe=%d recall@10=%.4f", index.nlist, nprobe, recall)
        if recall >= target or nprobe >= index.nlist:
            return min(nprobe, int(index.nlist)), recall
        nprobe *= 2


def apply_params(index: Any, spec: IndexSpec) -> None:
    """Set search-time parameters (nprobe) on a loaded index, and give IVF a lookup by id."""
    if spec.kind in PROBED:
        index.nprobe = int(spec.params.get("nprobe", 16))
    if spec.kind == "ivf":
        enable_lookup(index)


def enable_lookup(index: Any) -> None:
    """Let an IVF index return stored vectors by id (a hash table, ~30 bytes per vector): filtered searches score
    a small passing subset exactly from these instead of probing clusters that may miss it."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


# --- searching among some ids (filters) ----------------------------------------------------------------------------

PROBED = ("ivf", "ivfpq")  # indexes searched by probing lists (an archive's too: store/ondisk_index.py)
EXACT_SUBSET = 50_000  # on IVF, a filtered search among at most this many images scores each of them exactly


def probe_params(spec: IndexSpec, factor: float) -> Any:
    """Search parameters multiplying IVF's nprobe by `factor` (deeper searches need more clusters); None otherwise."""
    if factor <= 1 or spec.kind not in PROBED:
        return None
    import faiss

    nprobe = int(spec.params.get("nprobe", 16))
    return faiss.SearchParametersIVF(nprobe=min(int(spec.params.get("nlist", nprobe)), math.ceil(nprobe * factor)))


def selection_params(spec: IndexSpec, ids: npt.NDArray[np.int64], total: int) -> tuple[Any, Any]:
    """Search parameters restricting a search to `ids`, and the selector they point to (keep it alive while
    searching: the parameters hold only a raw pointer); (None, None) when `exact_among` is the better way."""
    import faiss

    if spec.kind in PROBED and len(ids) <= EXACT_SUBSET:
        return None, None
    selector = faiss.IDSelectorBatch(ids)
    if spec.kind not in PROBED:
        return faiss.SearchParameters(sel=selector), selector
    # Few passing images are spread over many clusters: probe more of them, in proportion.
    nprobe = int(spec.params.get("nprobe", 16))
    widened = min(int(spec.params.get("nlist", nprobe)), math.ceil(nprobe * total / max(len(ids), 1)))
    return faiss.SearchParametersIVF(sel=selector, nprobe=widened), selector


def exact_among(
    index: Any, query: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Brute-force cosine over the stored vectors of `ids` (an IVF index with `enable_lookup`); ties by id."""
    import faiss

    order = np.sort(ids)
    vectors = index.reconstruct_batch(order)  # one batch, on all cores
    # FAISS's own scan for one query (no BLAS: numpy's threads waking right after FAISS's cost more than the scan).
    # One extra result shows whether a tie crosses the k-th place; only then is every score needed.
    depth = min(k + 1, len(order))
    found_scores, rows = faiss.knn(query.reshape(1, -1), vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)
    scores, rows = found_scores[0], rows[0]
    if depth > k and scores[k] == scores[k - 1]:
        rows = np.arange(len(order))
        scores = vectors @ query
    best = np.lexsort((order[rows], -scores))[:k]
    return scores[best], order[rows[best]]


# --- the stored vectors, list by list (duplicates) ------------------------------------------------------------------


def stored_lists(index: Any) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """The index's stored (ids, vectors): one pair per IVF list, or one for a Flat index. Views into the index's own
    memory, no copy: valid only while the index is neither changed nor freed."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        flat = faiss.downcast_index(index.index)
        ids = faiss.vector_to_array(index.id_map)
        if not len(ids):
            return [(ids, np.empty((0, index.d), dtype=np.float32))]
        vectors = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * index.d).reshape(len(ids), index.d)
        return [(ids, vectors)]
    invlists, dim = ivf.invlists, ivf.d
    lists = []
    for number in range(ivf.nlist):
        size = invlists.list_size(number)
        if not size:
            lists.append((np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)))
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(number), size)
        codes = faiss.rev_swig_ptr(invlists.get_codes(number), size * ivf.code_size)
        lists.append((ids, codes.view(np.float32).reshape(size, dim)))
    return lists


def list_centroids(index: Any) -> npt.NDArray[np.float32] | None:
    """An IVF index's list centroids (a copy), None for Flat."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)
