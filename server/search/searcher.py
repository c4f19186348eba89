"""Text-to-image and image-to-image search over one collection."""

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.encoders.protocol import Encoder
from server.errors import FileMissing, InvalidArgument
from server.images.decode import load_image
from server.images.video import is_video_name, read_frame, read_video
from server.library.duplicates import collapse
from server.limits import MAX_QUERY_CHARS, TIME_SECONDS, TOP_K
from server.paths import UNCONFINED, PathGuard
from server.results import SearchResponse
from server.search.composition import Extras, Term, extra_terms
from server.search.filtered import filtered_hits
from server.search.filters import ResultOrder, SearchFilter
from server.search.hits import search_response, sorted_by, word_spans
from server.store.collection import Collection, Hit
from server.store.text_search import words_of


def check_k(k: int) -> int:
    TOP_K.check(k)
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
        extras: Extras | None = None,
        guard: PathGuard = UNCONFINED,
    ) -> SearchResponse:
        """The k images closest to the text (composed with `extras`, if any), best first; text beyond the model's
        context is truncated. `guard` checks the paths of image terms."""
        check_k(k)
        return self._search(collection, Term(clean_query(query), None, 1.0), k, filters, order, extras, guard)

    def by_image(
        self,
        collection: Collection,
        image_path: Path,
        k: int = 10,
        filters: SearchFilter | None = None,
        order: ResultOrder | None = None,
        extras: Extras | None = None,
        guard: PathGuard = UNCONFINED,
        time_seconds: float | None = None,
    ) -> SearchResponse:
        """The k images closest to the given image, or to a video's moment `time_seconds` (composed with `extras`,
        if any); an indexed image's stored vector (a video's frame nearest that moment) is reused."""
        check_k(k)
        if time_seconds is not None and not is_video_name(image_path):
            raise InvalidArgument("time_seconds is a moment of a video; the example given is a photo.")
        if time_seconds is not None:
            TIME_SECONDS.check(time_seconds)
        main = Term(None, image_path, 1.0, time_seconds)
        return self._search(collection, main, k, filters, order, extras, guard)

    def _search(
        self,
        collection: Collection,
        main: Term,
        k: int,
        filters: SearchFilter | None,
        order: ResultOrder | None,
        extras: Extras | None,
        guard: PathGuard,
    ) -> SearchResponse:
        order = order or ResultOrder()
        vector, label = self._composed(collection, main, extras or Extras(), guard)
        hits, also = _hits(collection, vector, k, filters, order)
        words = words_of(filters.text) if filters is not None and filters.text else []
        return search_response(collection, label, hits, also, order.offset, word_spans(words))

    def image_vector(
        self, collection: Collection, image_path: Path, time_seconds: float | None = None
    ) -> npt.NDArray[np.float32]:
        """One image's unit vector (a video's: that of its frame nearest `time_seconds`, its poster's without):
        its stored vector when the collection holds it unchanged, else embedded now."""
        path = Path(os.path.realpath(image_path))
        if not path.exists():
            raise FileMissing(f"Image '{image_path}' does not exist.")
        if not path.is_file():
            raise InvalidArgument(f"'{image_path}' is not a file; give the path of an image.")
        entry = collection.find_path(path)
        info = path.stat()
        unchanged = entry is not None and entry.size == info.st_size and entry.mtime_ns == info.st_mtime_ns
        if is_video_name(path):
            return self._moment_vector(collection, path, entry.id if entry and unchanged else None, time_seconds)
        if entry is not None and unchanged:
            return collection.vector(entry.id)
        decoded = load_image(path, min_side=self.encoder.input_size)
        return self.encoder.encode_pixels(self.encoder.preprocess(decoded.image)[np.newaxis])[0]

    def _moment_vector(
        self, collection: Collection, path: Path, item: int | None, time_seconds: float | None
    ) -> npt.NDArray[np.float32]:
        """A video's frame vector nearest `time_seconds`: stored when catalogued, else sampled and embedded now."""
        frames = collection.frame_index() if item is not None else None
        if frames is not None and item is not None:
            times, vectors = frames.frames_of(item)
            if len(times):
                at = 0 if time_seconds is None else int(np.argmin(np.abs(times - time_seconds)))
                return vectors[at].copy()
        if time_seconds is None:  # its first frame that is not black, as indexing takes it
            frame = read_video(path, self.encoder.input_size, every_seconds=3600.0, max_frames=1)[1][0]
        else:
            frame = read_frame(path, time_seconds, min_side=self.encoder.input_size)
        return self.encoder.encode_pixels(self.encoder.preprocess(frame.image)[np.newaxis])[0]

    def _composed(
        self, collection: Collection, main: Term, extras: Extras, guard: PathGuard
    ) -> tuple[npt.NDArray[np.float32], str]:
        """The query's vector, by rclip's formula: Σ weight·unit(term), normalised (a plain query is its own term's
        vector); and the query written out with its terms."""
        texts, images = extra_terms(extras)
        terms = [main, *texts]
        for weight, given in images:
            path = guard.check(given)
            terms.append(Term(None, path, weight))
        text_terms = [t for t in terms if t.text is not None]
        weighted: list[tuple[float, npt.NDArray[np.float32]]] = []
        if text_terms:  # one batch through the text tower
            encoded = self.encoder.encode_texts([clean_query(t.text or "") for t in text_terms])
            weighted += [(t.weight, v) for t, v in zip(text_terms, encoded, strict=True)]
        weighted += [
            (t.weight, self.image_vector(collection, t.image, t.time_seconds)) for t in terms if t.image is not None
        ]
        first = main.text if main.text is not None else str(main.image)
        label = " ".join([first, *(t.describe() for t in terms[1:])])
        if len(weighted) == 1:
            return weighted[0][1], label
        total = np.sum([w * v.astype(np.float64) for w, v in weighted], axis=0)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise InvalidArgument("The query's terms cancel each other out exactly; change a weight or drop a term.")
        return (total / norm).astype(np.float32), label


DIVERSE_DEPTH = 4  # a diverse search ranks this many times more results, to fill the page after folding


def _hits(
    collection: Collection, vector: npt.NDArray[np.float32], k: int, filters: SearchFilter | None, order: ResultOrder
) -> tuple[list[Hit], dict[int, int]]:
    """Filter, then the top offset+k by score (with `diverse`, near-duplicates folded into the best of them, and
    how many each stands for); drop those under min_score; order; cut the page."""
    need = order.offset + k
    depth = min(TOP_K.most * DIVERSE_DEPTH, need * DIVERSE_DEPTH) if order.diverse else need
    if filters is None or not filters.active:
        hits = collection.search_hits(vector, depth)
    else:
        hits = filtered_hits(collection, vector, depth, filters)
    also: dict[int, int] = {}
    if order.diverse:
        also = collapse(collection, hits)
        hits = [h for h in hits if h.id in also][:need]
    if order.min_score is not None:
        hits = [h for h in hits if h.score >= order.min_score]
    return sorted_by(hits, order.sort)[order.offset : order.offset + k], also
