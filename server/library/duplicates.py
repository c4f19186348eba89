"""Duplicates in a collection: exact copies (the same content hash) and near-duplicates (re-encoded or resized copies,
bursts), grouped, each group with a suggested keeper. It only reports: nothing is ever deleted or moved.

Near-duplicates are pairs whose embeddings are at cosine ≥ `threshold` among each image's `NEIGHBOURS` nearest and
whose perceptual fingerprints agree (images/fingerprint.py: at most `max_bits` differing bits of a 64-bit difference
hash). Uniform images (all black, all white) have no structure to compare and are grouped only with byte-identical
copies. Groups are connected components: a burst of 30 shots is one group even if its first and last shots differ
more.

Candidate pairs come from `near_pairs.py`: images split into cells of close vectors, each cell compared with the
images that may be near it in a few matrix products, every score the exact cosine of two stored vectors (exact for
up to 20,000 images, beyond it what a k-NN search finds; bench.duplicates measures it against planted groups).

The default threshold, 0.95, is clip-retrieval's duplicate cut-off (it found cosine ≥ 0.94 to mark near-duplicates on
LAION); the fingerprint check then removes the look-alikes CLIP alone confuses (two dark low-texture photos, frames of
a fade from black).
"""

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.errors import DuplicatesCancelled, InvalidArgument
from server.images.fingerprint import BLANK_CONTRAST, distance
from server.library.near_pairs import Progress, near_pairs
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
from server.store.schema import under_folder

if TYPE_CHECKING:
    from server.library.duplicate_tasks import Running

BATCH = 1024  # images whose details are read at a time


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


def find_duplicates(collection: Collection, query: DuplicateQuery) -> DuplicateReport:
    """One page of the collection's duplicate groups, computed now."""
    return page_of(collection, duplicate_groups(collection, query), query)


def duplicate_groups(
    collection: Collection,
    query: DuplicateQuery,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> DuplicateGroups:
    """The groups of the query's scope (its page is ignored); `cancel` stops it between cells
    (`DuplicatesCancelled`), as does a commit meanwhile."""
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
        if collection.generation != generation:  # committed since the fingerprints were read
            raise DuplicatesCancelled
        a, b = near_pairs(collection, ids, query.threshold, progress, cancel)
        _join_near(parent, a, b, query, dhash, comparable)
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


def _join_near(
    parent: npt.NDArray[np.int64],
    a: npt.NDArray[np.int64],
    b: npt.NDArray[np.int64],
    query: DuplicateQuery,
    dhash: npt.NDArray[np.int64],
    comparable: npt.NDArray[np.bool_],
) -> None:
    """Join the pairs (positions, close enough by cosine) whose fingerprints agree."""
    keep = comparable[a] & comparable[b]
    a, b = a[keep], b[keep]
    bits = np.bitwise_count(np.bitwise_xor(dhash[a], dhash[b]).view(np.uint64))
    near = bits <= query.max_bits
    for first, second in zip(a[near].tolist(), b[near].tolist(), strict=True):
        _union(parent, first, second)


def _fingerprints(
    collection: Collection, where: str, params: Sequence[Any]
) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The matching images' ids (ascending), content hashes, difference hashes and contrasts (`_MISSING` and -1 where
    not taken yet)."""
    rows = collection.query(f"SELECT id, hash, dhash, contrast, kind FROM images WHERE {where} ORDER BY id", params)
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows],
        np.array([_MISSING if r[2] is None else r[2] for r in rows], dtype=np.int64),
        # A video is never a near-duplicate (two clips sharing a black fade-in look alike), only a byte-identical
        # copy: no contrast, as for a blank picture.
        np.array([-1 if r[3] is None or r[4] is not None else r[3] for r in rows], dtype=np.int64),
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
