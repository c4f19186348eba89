"""Text-to-image and image-to-image search over one collection."""

import os
from pathlib import Path

import numpy as np

from server.collection import Collection
from server.defaults import MAX_K, MAX_QUERY_CHARS
from server.encoder import Encoder
from server.errors import FileMissing, InvalidArgument
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

    def by_text(self, collection: Collection, query: str, k: int = 10) -> SearchResponse:
        """The k images closest to the text, best first; text beyond the model's 77 tokens is truncated."""
        text = clean_query(query)
        check_k(k)
        vector = self.encoder.encode_texts([text])
        return _response(collection, text, collection.search(vector, k)[0])

    def by_image(self, collection: Collection, image_path: Path, k: int = 10) -> SearchResponse:
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
        return _response(collection, str(image_path), collection.search(vector, k)[0])


def _response(collection: Collection, query: str, hits: list[tuple[Path, float]]) -> SearchResponse:
    return SearchResponse(
        collection=collection.name,
        query=query,
        results=[SearchHit(rank=i, path=str(p), score=round(s, 6)) for i, (p, s) in enumerate(hits, start=1)],
    )
