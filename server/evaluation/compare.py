"""Comparing models on the user's own photos: collections of the same images, one per model, evaluated with the same
ground truth and shown side by side, with each model's speed measured here and now.

The recipe: `clipsearch index FOLDER -c photos-clip`, `clipsearch index FOLDER -c photos-siglip2 --model
google/siglip2-base-patch16-224`, then `clipsearch eval -c photos-clip -c photos-siglip2`.
"""

import os
import secrets
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.encoders.protocol import Encoder
from server.errors import ClipSearchError, InvalidArgument
from server.evaluation.evaluate import Evaluation
from server.images.decode import load_image
from server.limits import MAX_COMPARED
from server.paths import UNCONFINED, PathGuard
from server.results import ComparedCollection
from server.search.searcher import Searcher
from server.store.collection import Collection

SPEED_IMAGES = 16  # images embedded to measure a model's indexing speed
SPEED_QUERIES = 10  # text searches timed to measure its query speed
SHOWN_DIFFERENCES = 10


def check_comparable(collections: Sequence[Collection]) -> None:
    """Refuse collections that cannot be compared: too many, repeated, or not holding the same images."""
    names = [c.name for c in collections]
    if len(names) > MAX_COMPARED:
        raise InvalidArgument(f"At most {MAX_COMPARED} collections can be compared at once, got {len(names)}.")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"Each collection can be compared once; got {', '.join(names)}.")
    first = collections[0]
    expected = _image_paths(first)
    for other in collections[1:]:
        paths = _image_paths(other)
        if paths == expected:
            continue
        missing, extra = sorted(expected - paths), sorted(paths - expected)
        parts = []
        if missing:
            shown = ", ".join(str(p) for p in missing[:SHOWN_DIFFERENCES])
            parts.append(f"{len(missing)} of '{first.name}' images are not in '{other.name}' (e.g. {shown})")
        if extra:
            shown = ", ".join(str(p) for p in extra[:SHOWN_DIFFERENCES])
            parts.append(f"{len(extra)} of '{other.name}' images are not in '{first.name}' (e.g. {shown})")
        raise InvalidArgument(
            "Collections compared must hold the same images: " + "; ".join(parts) + ". Index the same folder into "
            "each collection (indexing again brings a collection in line with its folder)."
        )


def compared(
    collection: Collection, encoder: Encoder, evaluation: Evaluation, guard: PathGuard = UNCONFINED
) -> ComparedCollection:
    """One collection's figures, with its model's speed measured now on a few of its images (those the guard
    allows) and queries."""
    report = evaluation.report
    images_per_second, query_ms = _speed(collection, encoder, evaluation, guard)
    return ComparedCollection(
        collection=collection.name,
        model=collection.manifest.model,
        precision=collection.manifest.precision,
        dim=collection.manifest.dim,
        text_to_image=report.text_to_image,
        image_to_image=report.image_to_image,
        images_per_second=round(images_per_second, 2),
        text_query_ms=round(query_ms, 2),
    )


def _speed(collection: Collection, encoder: Encoder, evaluation: Evaluation, guard: PathGuard) -> tuple[float, float]:
    allowed = sorted(p for p in _image_paths(collection) if guard.allows(p))
    paths = allowed[: SPEED_IMAGES + 1]
    warm, timed = paths[:1], paths[1:] or paths
    _embed(encoder, warm)  # the first call pays for loading the model
    started = time.perf_counter()
    _embed(encoder, timed)
    images_per_second = len(timed) / max(time.perf_counter() - started, 1e-9)
    # Texts the model has not seen (the evaluation just embedded the ground truth's, and the encoder caches them).
    nonce = secrets.token_hex(3)
    queries = [f"{q.text} {nonce}" for q in evaluation.truth.text_queries[:SPEED_QUERIES]] or [f"a photo {nonce}"]
    searcher = Searcher(encoder)
    durations = []
    for query in queries:
        started = time.perf_counter()
        searcher.by_text(collection, query, k=10)
        durations.append((time.perf_counter() - started) * 1000)
    return images_per_second, statistics.median(durations)


def _embed(encoder: Encoder, paths: Sequence[Path]) -> None:
    pixels = []
    for path in paths:
        try:
            pixels.append(encoder.preprocess(load_image(path, min_side=encoder.input_size).image))
        except ClipSearchError:  # changed or gone since it was indexed: time the others
            continue
    if pixels:
        encoder.encode_pixels(np.stack(pixels))


def _image_paths(collection: Collection) -> set[Path]:
    return {Path(os.fsdecode(row[0])) for row in collection.query("SELECT path FROM images")}
