"""Text-to-image and image-to-image search over one collection."""

import math
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.collection import Collection, Hit
from server.defaults import MAX_K, MAX_QUERY_CHARS
from server.encoder import Encoder
from server.errors import FileMissing, InvalidArgument
from server.filters import ResultOrder, SearchFilter
from server.images import load_image
from server.models import SearchHit, SearchResponse


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}.")
    return k


def clean_query(query: str) -> str:
    text = " ".join(query.split())
    if not text:
        raise InvalidArgument("The query is empty; describe the image you are looking for.")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"The query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}.")
    return text


class Searcher:
    """Embeds queries with the encoder and looks them up in a collection's index."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def by_text(
        self,
        collection: Collection,
        query: str,
        k: int = 10,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
    ) -> SearchResponse:
        """The k images closest to the text, best first; text beyond the model's 77 tokens is truncated."""
        text = clean_query(query)
        check_k(k)
        vector = self.encoder.encode_texts([text])
        order = order or ResultOrder()
        return _response(collection, text, _hits(collection, vector[0], k, filters, order), order.offset)

    def by_image(
        self,
        collection: Collection,
        image_path: Path,
        k: int = 10,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
    ) -> SearchResponse:
        """The k images closest to the given image; an indexed image's stored vector is reused."""
        check_k(k)
        path = Path(os.path.realpath(image_path))
        if not path.exists():
            raise FileMissing(f"Image '{image_path}' does not exist.")
        if not path.is_file():
            raise InvalidArgument(f"'{image_path}' is not a file; give the path of an image.")
        entry = collection.find_path(path)
        info = path.stat()
        if entry is not None and entry.size == info.st_size and entry.mtime_ns == info.st_mtime_ns:
            vector = collection.vector(entry.id)[np.newaxis, :]
        else:
            decoded = load_image(path, min_side=self.encoder.input_size)
            pixels = self.encoder.preprocess(decoded.image)[np.newaxis]
            vector = self.encoder.encode_pixels(pixels)
        order = order or ResultOrder()
        hits = _hits(collection, vector[0], k, filters, order)
        return _response(collection, str(image_path), hits, order.offset)


def _hits(
    collection: Collection, vector: npt.NDArray[np.float32], k: int, filters: SearchFilter | None, order: ResultOrder
) -> list[Hit]:
    """Filter, then the top offset+k by score; drop those under min_score; order; cut the page."""
    need = order.offset + k
    if filters is None or not filters.active:
        hits = collection.search_hits(vector, need)
    else:
        hits = _filtered(collection, vector, need, filters)
    if order.min_score is not None:
        hits = [h for h in hits if h.score >= order.min_score]
    if order.sort != "score":
        # Newest (or oldest) first among the relevant ones; images without a date go last.
        newest = order.sort == "taken"
        dated = sorted((h for h in hits if h.taken_utc is not None), key=lambda h: h.taken_utc or 0.0, reverse=newest)
        hits = dated + [h for h in hits if h.taken_utc is None]
    return hits[order.offset : order.offset + k]


PROBE_FRACTION = 0.1  # filters estimated to pass fewer images than this select the passing ids straight away
PROBE_SURPLUS = 2  # a probe looks deep enough to expect this many times the passing images it needs


def _filtered(collection: Collection, vector: npt.NDArray[np.float32], need: int, filters: SearchFilter) -> list[Hit]:
    """The top `need` images that pass the filter.

    A random sample of the catalog first estimates the fraction f of images that pass. When many pass, the
    unfiltered top need·PROBE_SURPLUS/f usually holds `need` passing ones: on an exact index they are then exactly the
    filtered top (anything passing further down scores lower), and only those few ids are checked against the
    catalog. Otherwise (a selective filter, or a probe that came up short) the catalog selects every passing id and
    the search runs among them (FAISS IDSelector, or exact scoring of a small subset)."""
    where, params = filters.sql(collection.cameras() if filters.camera else None)
    keep = filters.keeps_place if filters.near else None
    fraction = collection.passing_fraction(where, params)
    if fraction >= PROBE_FRACTION:
        depth = math.ceil(need * PROBE_SURPLUS / fraction)
        # On IVF, probe as many times more clusters as the filter is selective (the deeper top holds more of them).
        kept = collection.search_hits(vector, depth, where=where, params=params, keep=keep, widen=1 / fraction)
        if len(kept) >= need or depth >= collection.ntotal:  # enough, or the probe saw every image
            return kept[:need]
    return collection.search_hits(vector, need, collection.select_ids(where, params, keep))


def _response(collection: Collection, query: str, hits: list[Hit], offset: int = 0) -> SearchResponse:
    return SearchResponse(
        collection=collection.name,
        query=query,
        results=[
            SearchHit(
                rank=rank,
                path=str(hit.path),
                score=round(hit.score, 6),
                taken=hit.taken,
                taken_source=hit.taken_source,
                width=hit.width or None,
                height=hit.height or None,
                camera=hit.camera,
                latitude=hit.latitude,
                longitude=hit.longitude,
            )
            for rank, hit in enumerate(hits, start=offset + 1)
        ],
    )
