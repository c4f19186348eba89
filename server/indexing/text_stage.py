"""An indexing run's second stage: the text in photos, read once the run's embeddings are committed.

Description search works as soon as the first stage commits; this one then reads the images under the run's folder
that the collection's OCR model has not read yet (new or changed content, a model changed since, or an earlier run
stopped first). Each file is read again and its content hash checked against the catalog, so text is only ever
stored for the content that was embedded; a file changed or gone since is left for the next run. With `ocr` "auto"
a cheap first pass (the recogniser's `likely_has_text`, on a small decode) decides which images are read in full;
"on" reads every image in full. Decoding and recognition run in worker threads; results are committed every 64
images or 30 s, so a run killed here resumes where it stopped.
"""

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from server.encoders.text_recognition import READERS, RecognisedText, TextRecognizer
from server.errors import ClipSearchError, TextModelUnavailable
from server.images.decode import content_hash, decode, is_raw_name, read_file
from server.results import Failure
from server.store.collection import Collection
from server.store.text_search import Unread, unread_under
from server.store.writer import CollectionWriter

log = logging.getLogger(__name__)

PROBE_DECODE_SIDE = 480  # the first pass looks at 480 px on the long side: JPEGs are decoded in draft mode to that
READ_DECODE_SIDE = 1920  # full recognition reads lines from up to 2560 px on the long side
FIRST_PASS = "+first-pass"  # appended to the model identity of images the first pass found no text in
MAX_REPORTED = 50


@dataclass
class TextCounts:
    """What the text stage did: images due, read in full, passed over by the first pass, found to hold text."""

    to_read: int = 0
    read: int = 0
    first_pass_only: int = 0
    with_text: int = 0
    problems: list[Failure] = field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0
    stopped: bool = False

    @property
    def done(self) -> int:
        return self.read + self.first_pass_only


@dataclass
class _Outcome:
    item: Unread
    text: RecognisedText | None = None  # None: nothing to record now (the file changed or vanished)
    first_pass_only: bool = False
    problem: str | None = None
    unavailable: TextModelUnavailable | None = None


TextProgressFn = Callable[[TextCounts], None]


def read_models(identity: str, full: bool) -> tuple[str, ...]:
    """The model names in `texts` that count as read: the model's own, and with `full` False also its first pass."""
    return (identity,) if full else (identity, identity + FIRST_PASS)


class TextStage:
    """Reads text in a collection's images with one recogniser; one instance serves many runs."""

    def __init__(
        self,
        recognizer: TextRecognizer,
        workers: int = READERS,
        commit_every: int = 64,
        commit_seconds: float = 30.0,
    ) -> None:
        self.recognizer = recognizer
        self.workers = workers
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds

    def run(
        self,
        collection: Collection,
        writer: CollectionWriter,
        folder: Path,
        recursive: bool = True,
        full: bool = False,
        cancel: threading.Event | None = None,
        progress: TextProgressFn | None = None,
    ) -> TextCounts:
        """Read the text of the images under `folder` not read yet, recording it through `writer`. Returns early,
        with `note` set, when the recogniser cannot be loaded (nothing is recorded then), and with `stopped` when
        `cancel` is set."""
        started = time.perf_counter()
        counts = TextCounts()
        try:
            identity = self.recognizer.identity
        except TextModelUnavailable as exc:
            counts.note = f"text in photos not read: {exc}"
            return counts
        todo = unread_under(collection.query, read_models(identity, full), folder, recursive)
        counts.to_read = len(todo)
        if progress:
            progress(counts)
        since_commit, last_commit = 0, time.monotonic()
        stop = threading.Event()
        for outcome in self._read_all(todo, full, stop):
            if outcome.unavailable is not None:
                counts.note = f"text in photos not read: {outcome.unavailable}"
                stop.set()
                break
            if outcome.text is not None:
                model = identity + FIRST_PASS if outcome.first_pass_only else identity
                writer.set_text(outcome.item.id, model, outcome.text)
                since_commit += 1
                if outcome.first_pass_only:
                    counts.first_pass_only += 1
                else:
                    counts.read += 1
                    counts.with_text += bool(outcome.text.lines)
            problem = outcome.problem or (outcome.text.note if outcome.text is not None else None)
            if problem is not None and len(counts.problems) < MAX_REPORTED:
                counts.problems.append(Failure(path=str(outcome.item.path), reason=problem))
            if since_commit >= self.commit_every or time.monotonic() - last_commit >= self.commit_seconds:
                writer.commit()
                since_commit, last_commit = 0, time.monotonic()
            if progress:
                progress(counts)
            if cancel is not None and cancel.is_set():
                counts.stopped = True
                stop.set()
                break
        writer.commit()
        counts.seconds = time.perf_counter() - started
        return counts

    def _read_all(self, todo: Sequence[Unread], full: bool, stop: threading.Event) -> Iterator[_Outcome]:
        """Each image read in worker threads and yielded as soon as it is done, a few in flight; none started once
        `stop` is set. Not in order: a page of print takes seconds, a photo without text a tenth of one, and in
        order the other worker stood idle behind the page (the stage took 1.29x as long on 2 cores)."""
        window = self.workers * 2
        items = iter(todo)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="clipsearch-text") as pool:
            in_flight: dict[Future[_Outcome], int] = {}
            try:
                while True:
                    while len(in_flight) < window and not stop.is_set():
                        item = next(items, None)
                        if item is None:
                            break
                        in_flight[pool.submit(self.read_one, item, full)] = item.id
                    if not in_flight or stop.is_set():
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=in_flight.__getitem__):  # the same order for the same timing
                        del in_flight[future]
                        yield future.result()
            finally:
                for future in in_flight:
                    future.cancel()

    def read_one(self, item: Unread, full: bool) -> _Outcome:
        """One image: its bytes checked against the catalogued hash, the first pass unless `full`, then read."""
        try:
            data = read_file(item.path)
        except ClipSearchError:
            return _Outcome(item)  # gone or unreadable now: the next indexing run deals with the file
        if content_hash(data) != item.hash:
            return _Outcome(item)  # changed since it was embedded: read once the next run has embedded it again
        raw = is_raw_name(item.path)
        try:
            image = None
            if not full:
                small = decode(data, min_side=probe_decode_side(data, raw), raw=raw)
                if not self.recognizer.likely_has_text(small.image):
                    return _Outcome(item, RecognisedText(), first_pass_only=True)
                if max(small.image.size) >= max(small.width, small.height):
                    image = small.image  # decoded whole (not a JPEG, or a small one): no second decode
                del small
            if image is None:
                image = decode(data, min_side=READ_DECODE_SIDE, raw=raw).image
            del data
            return _Outcome(item, self.recognizer.read(image))
        except TextModelUnavailable as exc:
            return _Outcome(item, unavailable=exc)
        except ClipSearchError as exc:
            reason = f"text not read: {exc}"
        except Exception as exc:  # a recogniser bug on one odd image must not stop the stage
            log.exception("unexpected failure reading text in %s", item.path)
            reason = f"text not read: unexpected error: {type(exc).__name__}: {exc}"
        # Recorded as read with nothing found, the reason kept, so the image is not tried again until it changes.
        return _Outcome(item, RecognisedText((), reason), problem=reason)


def probe_decode_side(data: bytes, raw: bool) -> int:
    """The least side a JPEG's draft decode may have for the first pass to see `PROBE_DECODE_SIDE` px on the long
    side: a 4032x3024 photo then decodes at 1/8 (504x378), not 1/4 (1008x756), 11 ms of the pass's ~90 on 2 cores."""
    if raw:
        return PROBE_DECODE_SIDE  # the embedded preview's size is only known once it is found
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:  # decode() says what is wrong with the file
        return PROBE_DECODE_SIDE
    if min(width, height) < 1:
        return PROBE_DECODE_SIDE
    return max(1, math.ceil(PROBE_DECODE_SIDE * min(width, height) / max(width, height)))
