"""Duplicates in a collection: exact copies (the same content hash) and near-duplicates (re-encoded or resized copies,
bursts), grouped, each group with a suggested keeper. It only reports: nothing is ever deleted or moved.

Near-duplicates are pairs whose embeddings are at cosine ≥ `threshold` among each image's `NEIGHBOURS` nearest and
whose perceptual fingerprints agree (images/fingerprint.py: at most `max_bits` differing bits of a 64-bit difference
hash). Uniform images (all black, all white) have no structure to compare and are grouped only with byte-identical
copies. Groups are connected components: a burst of 30 shots is one group even if its first and last shots differ
more.

The nearest are found exactly up to `EXACT_UP_TO` images; beyond, by an IVF search probing a few lists (the
collection's own IVF index, or one built for the call over a Flat collection's stored vectors): vectors as close as
near-duplicates share their list, or a neighbouring one, so few lists find them, and the scores it returns are exact
inner products, so every pair found is judged exactly. bench.duplicates measures what it finds against planted
groups.

The default threshold, 0.95, is clip-retrieval's duplicate cut-off (it found cosine ≥ 0.94 to mark near-duplicates on
LAION); the fingerprint check then removes the look-alikes CLIP alone confuses (two dark low-texture photos, frames of
a fade from black).
"""

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.errors import ClipSearchError, InvalidArgument
from server.images.fingerprint import BLANK_CONTRAST, distance
from server.limits import (
    DEFAULT_MAX_GROUPS,
    DEFAULT_NEAR_BITS,
    DEFAULT_THRESHOLD,
    GROUP_OFFSET,
    GROUPS,
    MAX_BITS,
    THRESHOLD,
)
from server.results import DuplicateGroup, DuplicateMember, DuplicateReport, DuplicatesProgress
from server.store.collection import Collection, Hit
from server.store.faiss_index import nlist_for
from server.store.schema import under_folder

if TYPE_CHECKING:
    from server.library.duplicate_tasks import Running

NEIGHBOURS = 32
BATCH = 1024
EXACT_UP_TO = 20_000  # images in scope up to which each one's neighbours are found by exact search
PROBED_LISTS = 4  # at 100,000 images (1,024 lists) 2 already found every planted group; 4 for margin
# A collection's own IVF index has longer lists (its nlist is capped by its training sample): at 1M images (2,048
# lists) probing 2 found 2,525 of 2,526 planted groups in 95 s, 4 found them all in 190 s.
PROBED_LISTS_OWN = 2


@dataclass(frozen=True)
class DuplicateQuery:
    folder: Path | None = None
    threshold: float = DEFAULT_THRESHOLD
    max_bits: int = DEFAULT_NEAR_BITS
    exact_only: bool = False
    max_groups: int = DEFAULT_MAX_GROUPS
    offset: int = 0

    def check(self) -> "DuplicateQuery":
        if not THRESHOLD.allows(self.threshold):
            raise InvalidArgument(f"threshold is a cosine similarity in (0, 1], got {self.threshold}.")
        MAX_BITS.check(self.max_bits)
        GROUPS.check(self.max_groups)
        GROUP_OFFSET.check(self.offset)
        return self


@dataclass(frozen=True)
class DuplicateGroups:
    """Every group of one scope of a collection (folder, threshold, bits, exact only), largest first, as it stood at
    `generation`: what paging reads, computed once."""

    collection: str
    generation: int
    ids: npt.NDArray[np.int64]  # the images examined, ascending
    hashes: list[str]
    groups: list[list[int]]  # positions in `ids`
    unhashed: int  # images without a fingerprint yet (compared as exact copies only)
    seconds: float


Progress = Callable[[int, int], None]
"""Told (images compared, images in scope) after each batch."""


class Cancelled(ClipSearchError):
    """A duplicates computation stopped on request, or for a newer commit's; nothing of it is kept."""

    def __init__(self) -> None:
        super().__init__(
            "The search for duplicates was stopped (asked to, or the collection changed meanwhile); ask again."
        )


def find_duplicates(collection: Collection, query: DuplicateQuery) -> DuplicateReport:
    """One page of the collection's duplicate groups, computed now."""
    return page_of(collection, duplicate_groups(collection, query), query)


def duplicate_groups(
    collection: Collection,
    query: DuplicateQuery,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> DuplicateGroups:
    """The groups of the query's scope (its page is ignored); `cancel` stops it between batches (`Cancelled`)."""
    started = time.perf_counter()
    query.check()
    collection.refresh_if_stale()
    generation = collection.generation
    where, params = under_folder(query.folder) if query.folder is not None else ("1", [])
    ids, hashes, dhash, contrast = _fingerprints(collection, where, params)
    parent = np.arange(len(ids))
    _join_exact(parent, hashes)
    unhashed = int(np.count_nonzero(dhash == _MISSING))
    if not query.exact_only and len(ids) > 1:
        comparable = (dhash != _MISSING) & (contrast >= BLANK_CONTRAST)
        search, stored = _neighbour_search(collection, ids)
        for start in range(0, len(ids), BATCH):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            batch_ids = ids[start : start + BATCH]
            vectors = stored[start : start + BATCH] if stored is not None else collection.vectors_of(batch_ids)
            _join_near(parent, ids, batch_ids, vectors, search, query, dhash, comparable)
            if progress is not None:
                progress(min(start + BATCH, len(ids)), len(ids))
    roots = np.array([_root(parent, i) for i in range(len(ids))], dtype=np.int64)
    members: dict[int, list[int]] = {}
    for position, root in enumerate(roots.tolist()):
        members.setdefault(root, []).append(position)
    groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), int(ids[m[0]])))
    seconds = round(time.perf_counter() - started, 3)
    return DuplicateGroups(collection.name, generation, ids, hashes, groups, unhashed, seconds)


def page_of(collection: Collection, found: DuplicateGroups, query: DuplicateQuery) -> DuplicateReport:
    """The query's page of `found`, with each member's details read now."""
    query.check()
    page = found.groups[query.offset : query.offset + query.max_groups]
    details = _details(collection, [int(found.ids[p]) for group in page for p in group])
    notes = []
    if found.unhashed and not query.exact_only:
        notes.append(
            f"{found.unhashed} images have no perceptual fingerprint yet (indexed by an earlier release) and were "
            "compared as exact copies only; run index_folder on their folder again to take it (nothing is "
            "re-embedded)."
        )
    return DuplicateReport(
        collection=found.collection,
        generation=found.generation,
        threshold=query.threshold,
        max_bits=query.max_bits,
        exact_only=query.exact_only,
        images=len(found.ids),
        groups_total=len(found.groups),
        images_in_groups=sum(len(g) for g in found.groups),
        offset=query.offset,
        groups=[_group(group, found.ids, found.hashes, details) for group in page],
        notes=notes,
        seconds=found.seconds,
    )


def running_report(collection: str, generation: int, query: DuplicateQuery, running: "Running") -> DuplicateReport:
    """What a call answers while the groups are still being computed: the computation's id and how far it is."""
    return DuplicateReport(
        collection=collection,
        state="running",
        job_id=running.job_id,
        progress=DuplicatesProgress(compared=running.compared, total=running.total),
        generation=generation,
        threshold=query.threshold,
        max_bits=query.max_bits,
        exact_only=query.exact_only,
        images=running.total,
        groups_total=0,
        images_in_groups=0,
        offset=query.offset,
        groups=[],
        notes=[
            f"Still comparing: {running.compared:,} of {running.total:,} images so far. Ask again with the same "
            "arguments for the groups; the comparison goes on meanwhile and is done once for this collection."
        ],
        seconds=0.0,
    )


_MISSING = np.iinfo(np.int64).min  # a fingerprint not taken yet (fingerprints() maps NULL to it)


def _root(parent: npt.NDArray[np.int64], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _union(parent: npt.NDArray[np.int64], a: int, b: int) -> None:
    ra, rb = _root(parent, a), _root(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _join_exact(parent: npt.NDArray[np.int64], hashes: list[str]) -> None:
    first: dict[str, int] = {}
    for position, content in enumerate(hashes):
        if content in first:
            _union(parent, first[content], position)
        else:
            first[content] = position


Search = Callable[[npt.NDArray[np.float32], int], tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]


def _neighbour_search(
    collection: Collection, ids: npt.NDArray[np.int64]
) -> tuple[Search, npt.NDArray[np.float32] | None]:
    """How each image's nearest are found (scores and catalog ids), and the in-scope vectors when the search needed
    them all in memory anyway (else None: they are read per batch)."""
    if collection.manifest.index_type == "ivf":
        return lambda vectors, k: collection.neighbours(vectors, k, nprobe=PROBED_LISTS_OWN), None
    if len(ids) <= EXACT_UP_TO:
        return collection.neighbours, None
    import faiss

    stored = collection.vectors_of(ids)
    nlist = nlist_for(len(ids))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(stored.shape[1]), stored.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # a rough partition suffices: near-duplicates are close whatever the lists' borders
    sample = np.random.default_rng(0).choice(len(ids), min(len(ids), 40 * nlist), replace=False)
    index.train(stored[np.sort(sample)])
    index.add_with_ids(stored, ids)
    index.nprobe = PROBED_LISTS
    return index.search, stored


def _join_near(
    parent: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    batch_ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    search: Search,
    query: DuplicateQuery,
    dhash: npt.NDArray[np.int64],
    comparable: npt.NDArray[np.bool_],
) -> None:
    """Join each image of the batch with its neighbours at cosine ≥ threshold whose fingerprints agree."""
    scores, found = search(vectors, NEIGHBOURS + 1)
    rows = np.searchsorted(ids, batch_ids)
    near = (scores >= query.threshold) & (found >= 0)
    where = np.searchsorted(ids, np.where(found >= 0, found, ids[0]))
    inside = near & (where < len(ids)) & (ids[np.minimum(where, len(ids) - 1)] == found)  # in scope (folder)
    source = np.repeat(rows[:, None], found.shape[1], axis=1)
    pairs_a, pairs_b = source[inside], where[inside]
    keep = (pairs_a != pairs_b) & comparable[pairs_a] & comparable[pairs_b]
    pairs_a, pairs_b = pairs_a[keep], pairs_b[keep]
    bits = np.bitwise_count(np.bitwise_xor(dhash[pairs_a], dhash[pairs_b]).view(np.uint64))
    for a, b in zip(pairs_a[bits <= query.max_bits].tolist(), pairs_b[bits <= query.max_bits].tolist(), strict=True):
        _union(parent, a, b)


def _fingerprints(
    collection: Collection, where: str, params: Sequence[Any]
) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The matching images' ids (ascending), content hashes, difference hashes and contrasts (`_MISSING` and -1 where
    not taken yet)."""
    rows = collection.query(f"SELECT id, hash, dhash, contrast FROM images WHERE {where} ORDER BY id", params)
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows],
        np.array([_MISSING if r[2] is None else r[2] for r in rows], dtype=np.int64),
        np.array([-1 if r[3] is None else r[3] for r in rows], dtype=np.int64),
    )


def _details(collection: Collection, image_ids: list[int]) -> dict[int, DuplicateMember]:
    details: dict[int, DuplicateMember] = {}
    for start in range(0, len(image_ids), BATCH):
        chunk = image_ids[start : start + BATCH]
        rows = collection.query(
            "SELECT id, path, size, width, height, taken, taken_utc FROM images "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for image_id, path, size, width, height, taken, taken_utc in rows:
            details[image_id] = DuplicateMember(
                path=os.fsdecode(path), size=size, width=width, height=height, taken=taken, taken_utc=taken_utc
            )
    return details


def _group(
    group: list[int], ids: npt.NDArray[np.int64], hashes: list[str], details: dict[int, DuplicateMember]
) -> DuplicateGroup:
    members = [details[int(ids[p])] for p in group if int(ids[p]) in details]
    kind = "exact" if len({hashes[p] for p in group}) == 1 else "near"
    keeper, reason = _keeper(members)
    return DuplicateGroup(kind=kind, members=members, keeper=keeper.path, keeper_reason=reason)


def _keeper(members: list[DuplicateMember]) -> tuple[DuplicateMember, str]:
    """Largest resolution, then taken first, then the shortest path; and why."""
    by_size = max(m.width * m.height for m in members)
    largest = [m for m in members if m.width * m.height == by_size]
    reasons = [f"the largest ({largest[0].width}×{largest[0].height})" if len(largest) < len(members) else ""]
    if len(largest) > 1:
        dated = [m for m in largest if m.taken_utc is not None]
        if dated and len({m.taken_utc for m in dated}) > 1:
            first = min(m.taken_utc or 0.0 for m in dated)
            largest = [m for m in dated if m.taken_utc == first]
            reasons.append(f"taken first ({largest[0].taken})")
    if len(largest) > 1:
        largest = sorted(largest, key=lambda m: (len(m.path), m.path))[:1]
        reasons.append("the shortest path")
    said = [r for r in reasons if r]
    return largest[0], "; then ".join(said) if said else "the only candidate"


def collapse(collection: Collection, hits: list[Hit], threshold: float = DEFAULT_THRESHOLD) -> dict[int, int]:
    """Near-duplicates among ranked hits, by the same rule as find_duplicates: each hit that repeats a better one
    (same content, or cosine ≥ threshold with fingerprints within DEFAULT_NEAR_BITS) is folded into it. Returns
    the hits to keep, by id, each with how many it stands for besides itself."""
    if not hits:
        return {}
    wanted = [h.id for h in hits]
    ids, hashes, dhash, contrast = _fingerprints(collection, f"id IN ({','.join('?' * len(wanted))})", wanted)
    rows = {int(i): n for n, i in enumerate(ids)}
    vectors = collection.vectors_of(ids)
    kept: dict[int, int] = {}
    for hit in hits:
        n = rows.get(hit.id)
        if n is None:
            continue
        twin = next((k for k in kept if _same(n, rows[k], hashes, dhash, contrast, vectors, threshold)), None)
        if twin is None:
            kept[hit.id] = 0
        else:
            kept[twin] += 1
    return kept


def _same(
    a: int,
    b: int,
    hashes: list[str],
    dhash: npt.NDArray[np.int64],
    contrast: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    threshold: float,
) -> bool:
    if hashes[a] == hashes[b]:
        return True
    comparable = dhash[a] != _MISSING and dhash[b] != _MISSING and min(contrast[a], contrast[b]) >= BLANK_CONTRAST
    if not comparable or float(vectors[a] @ vectors[b]) < threshold:
        return False
    return distance(int(dhash[a]), int(dhash[b])) <= DEFAULT_NEAR_BITS


def non_keepers(report: DuplicateReport) -> list[str]:
    """The paths a user might remove: every member but each group's keeper."""
    return [m.path for g in report.groups for m in g.members if m.path != g.keeper]
