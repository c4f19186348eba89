"""Incremental indexing of a folder into a collection: scan, diff against the catalog, embed only what is new.

Unchanged files are recognised by size and mtime; otherwise by content hash, so a renamed or moved file keeps its
vector and a copy of known content borrows it. Decoding runs in worker threads while the main thread batches
images through the model; changes are committed in batches, so a killed run resumes from its last commit.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.encoders.protocol import Encoder
from server.encoders.text_recognition import TextRecognizer
from server.errors import ClipSearchError, FileMissing, ImageUnreadable, IndexingCancelled
from server.images.decode import content_hash, decode, file_hash, is_raw_name, read_file
from server.images.fingerprint import Perceptual, perceptual
from server.images.metadata import PhotoMetadata, read_metadata
from server.images.video import is_video_name, read_video
from server.indexing.scan import FileStat, scan_folder
from server.indexing.text_stage import TextCounts, TextStage
from server.paths import UNCONFINED, PathGuard
from server.results import Failure, IndexReport
from server.store.catalog import CatalogEntry
from server.store.collection import Collection
from server.store.writer import CollectionWriter, NewImage, NewVideo

log = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 50


@dataclass(frozen=True)
class IndexProgress:
    """Where a run stands: files found, those needing work, how many of those are done, embedded, failed; then, in
    the text stage, how many images it reads and has read."""

    found: int
    to_process: int
    done: int
    embedded: int
    failed: int
    stage: str = "embedding"
    text_to_read: int = 0
    text_done: int = 0


ProgressFn = Callable[[IndexProgress], None]


@dataclass
class _Prepared:
    """What a worker learned about one file: its hash, and its pixels unless the content is already known."""

    file: FileStat
    previous: CatalogEntry | None
    hash: str = ""
    width: int = 0
    height: int = 0
    metadata: PhotoMetadata | None = None
    perceptual: Perceptual | None = None
    pixels: npt.NDArray[np.float32] | None = None
    error: str | None = None
    video: "_VideoFrames | None" = None  # a video's sampled frames, preprocessed


@dataclass
class _VideoFrames:
    duration: float | None
    times: list[float]
    pixels: npt.NDArray[np.float32]  # one row per frame, the first the poster


@dataclass
class _Counts:
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    embedded: int = 0
    raw_with_sibling: int = 0
    failures: list[Failure] = field(default_factory=list)
    embedding_seconds: float = 0.0
    frames: int = 0  # video frames embedded
    text: TextCounts = field(default_factory=TextCounts)


HEADER_BYTES = 512 * 1024  # where JPEG/TIFF/PNG keep EXIF and XMP; other formats are read whole if needed
FINGERPRINT_SIDE = 64  # decoding for a 9×8 hash alone needs few pixels (JPEG draft mode makes it cheap)


def read_header_metadata(file: FileStat) -> PhotoMetadata:
    """Metadata of a catalogued file from its header: its first part, or the whole file when that is not enough."""
    try:
        data = read_file(file.path, partial=HEADER_BYTES)
        metadata = read_metadata(data, file.mtime_ns)
        if metadata.width == 0 and len(data) >= HEADER_BYTES:
            metadata = read_metadata(read_file(file.path), file.mtime_ns)
    except ClipSearchError:  # unreadable now: its mtime is all that is known
        metadata = read_metadata(b"", file.mtime_ns)
    return metadata


def read_fingerprints(file: FileStat, need_metadata: bool) -> tuple[PhotoMetadata | None, Perceptual | None]:
    """A catalogued file's perceptual fingerprint (decoding its pixels, small) and, if needed, its metadata, from
    one read; (metadata or None, None) when it cannot be read or decoded now."""
    try:
        data = read_file(file.path)
    except ClipSearchError:
        return (read_metadata(b"", file.mtime_ns) if need_metadata else None), None
    metadata = read_metadata(data, file.mtime_ns) if need_metadata else None
    try:
        decoded = decode(data, min_side=FINGERPRINT_SIDE, raw=is_raw_name(file.path))
    except ClipSearchError:
        return metadata, None
    return metadata, perceptual(decoded.image)


class Indexer:
    """Runs incremental indexing with a given encoder, and the text stage with `recognizer` (none: text is never
    read); one instance serves many runs."""

    def __init__(
        self,
        encoder: Encoder,
        workers: int | None = None,
        batch_size: int = 32,
        commit_every: int = 512,
        commit_seconds: float = 30.0,
        recognizer: TextRecognizer | None = None,
    ) -> None:
        self.encoder = encoder
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.batch_size = batch_size
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.recognizer = recognizer
        self.text_stage = TextStage(recognizer, commit_seconds=commit_seconds) if recognizer is not None else None

    def using(self, encoder: Encoder) -> "Indexer":
        """An indexer with these settings over another encoder (another collection's model)."""
        return Indexer(encoder, self.workers, self.batch_size, self.commit_every, self.commit_seconds, self.recognizer)

    def run(
        self,
        collection: Collection,
        folder: Path,
        recursive: bool = True,
        remove_missing: bool = True,
        guard: PathGuard = UNCONFINED,
        exclude: Sequence[Path] = (),
        progress: ProgressFn | None = None,
        index_type: str | None = None,
        cancel: threading.Event | None = None,
        ocr: str | None = None,
    ) -> IndexReport:
        """Bring the collection in line with the folder's images and report what changed, then read the text in
        the images not read yet (the text stage) unless the collection's `ocr` is "off"; `index_type` and `ocr`
        set the collection's index choice and text reading, under the same write lock. Once `cancel` is set the
        run stops after the batch (or image) in hand, commits it, removes nothing and raises `IndexingCancelled`
        with the partial report."""
        started = time.perf_counter()
        if not folder.is_dir():
            raise FileMissing(f"Folder '{folder}' does not exist or is not a folder.")
        folder = Path(os.path.realpath(folder))
        scan = scan_folder(folder, recursive, exclude, guard)
        files = scan.files
        counts = _Counts(failures=list(scan.failures), raw_with_sibling=len(scan.raw_with_sibling))
        catalog = collection.entries_under(folder, recursive)
        scanned = {f.path for f in files}
        todo: list[tuple[FileStat, CatalogEntry | None]] = []
        # Unchanged, but catalogued before metadata was read or fingerprints were taken (an earlier release).
        backfill: list[tuple[FileStat, CatalogEntry]] = []
        for file in files:
            previous = catalog.get(file.path)
            if previous and previous.size == file.size and previous.mtime_ns == file.mtime_ns:
                counts.unchanged += 1
                if not previous.has_metadata or not previous.has_perceptual:
                    backfill.append((file, previous))
            else:
                todo.append((file, previous))
        vanished: dict[str, list[CatalogEntry]] = {}
        for entry in catalog.values():
            if entry.path not in scanned and not any(entry.path.is_relative_to(d) for d in scan.unlisted):
                vanished.setdefault(entry.hash, []).append(entry)
        known = collection.known_hashes()
        run = _Run(self, collection, counts, vanished, progress, len(files), len(todo))
        run.report_progress()
        stopped = False
        with collection.writer() as writer:
            run.writer = writer
            if index_type is not None:
                collection.set_index_policy(index_type)
            if ocr is not None:
                collection.set_ocr_policy(ocr)
            writer.record_folder(folder)
            for file, entry in backfill:
                if cancel is not None and cancel.is_set():
                    break
                if entry.has_perceptual:
                    metadata, fingerprint = read_header_metadata(file), None
                else:
                    metadata, fingerprint = read_fingerprints(file, not entry.has_metadata)
                if metadata is not None:
                    writer.set_metadata(entry.id, metadata.width, metadata.height, metadata)
                if fingerprint is not None:
                    writer.set_perceptual(entry.id, fingerprint)
            for prepared in self._prepare_all(todo, known):
                if cancel is not None and cancel.is_set():
                    stopped = True
                    break
                run.handle(prepared)
            run.flush()
            leftover = [e.id for entries in vanished.values() for e in entries]
            # A stopped run has not seen every file: a "vanished" entry may yet turn out to be a move.
            if remove_missing and leftover and not stopped:
                writer.remove(leftover)
                counts.removed += len(leftover)
            counts.embedding_seconds = time.perf_counter() - started
            if not stopped and self.text_stage is not None and collection.manifest.ocr != "off":
                writer.commit()  # description search has the whole folder before any text is read
                counts.text = self.text_stage.run(
                    collection, writer, folder, recursive, collection.manifest.ocr == "on", cancel, run.text_progress
                )
                stopped = counts.text.stopped
        report = self._report(collection, folder, counts, time.perf_counter() - started)
        if stopped:
            raise IndexingCancelled(report)
        return report

    @staticmethod
    def _report(collection: Collection, folder: Path, counts: "_Counts", seconds: float) -> IndexReport:
        text = counts.text
        return IndexReport(
            collection=collection.name,
            folder=str(folder),
            indexed_total=collection.count(),
            added=counts.added,
            updated=counts.updated,
            moved=counts.moved,
            unchanged=counts.unchanged,
            removed=counts.removed,
            failed=len(counts.failures),
            failures=counts.failures[:MAX_REPORTED_FAILURES],
            embedded=counts.embedded,
            skipped_raw_with_sibling=counts.raw_with_sibling,
            seconds=round(seconds, 3),
            images_per_second=_rate(counts.embedded, counts.embedding_seconds or seconds),
            ocr=collection.manifest.ocr,
            text_to_read=text.to_read,
            text_read=text.read,
            text_first_pass_only=text.first_pass_only,
            text_found=text.with_text,
            text_seconds=round(text.seconds, 3),
            text_images_per_second=_rate(text.done, text.seconds),
            text_note=text.note,
            text_problems=text.problems,
        )

    def _prepare_all(self, todo: list[tuple[FileStat, CatalogEntry | None]], known: set[str]) -> Iterator[_Prepared]:
        """Read, hash and (for unknown content) decode files in worker threads, yielded in order, bounded in flight."""
        window = self.workers * 2 + self.batch_size
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="clipsearch-decode") as pool:
            in_flight: deque[Future[_Prepared]] = deque()
            for file, previous in todo:
                in_flight.append(pool.submit(self.prepare, file, previous, known))
                if len(in_flight) >= window:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()

    def prepare(self, file: FileStat, previous: CatalogEntry | None, known: set[str] | None = None) -> _Prepared:
        """One file: read once, hash, and decode + preprocess unless the hash is already in the collection."""
        result = _Prepared(file=file, previous=previous)
        if is_video_name(file.path):
            return self._prepare_video(result)
        try:
            data = read_file(file.path)
            result.hash = content_hash(data)
            result.metadata = read_metadata(data, file.mtime_ns)
            result.width, result.height = result.metadata.width, result.metadata.height
            if known is not None and result.hash in known:
                return result
            decoded = decode(data, min_side=self.encoder.input_size, raw=is_raw_name(file.path))
            result.width, result.height = decoded.width, decoded.height
            result.perceptual = perceptual(decoded.image)
            result.pixels = self.encoder.preprocess(decoded.image)
        except ClipSearchError as exc:
            result.error = str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            log.exception("unexpected failure preparing %s", file.path)
            result.error = f"unexpected error: {type(exc).__name__}: {exc}"
        return result

    def _prepare_video(self, result: _Prepared) -> _Prepared:
        """A video: hashed in pieces, its frames sampled small (images/video.py) and preprocessed. Always decoded:
        a copy of known content needs its own frames, and a move is found by the hash alone."""
        path = result.file.path
        try:
            result.hash = file_hash(path)
            info, frames = read_video(path, min_side=self.encoder.input_size)
            result.metadata = info.metadata
            result.width, result.height = info.width, info.height
            if not frames:
                raise ImageUnreadable("no frame could be decoded")
            _unchanged_since_scan(result.file)
            result.perceptual = perceptual(frames[0].image)  # so later runs have nothing to fill in
            result.video = _VideoFrames(
                info.duration_seconds,
                [frame.time_seconds for frame in frames],
                np.stack([self.encoder.preprocess(frame.image) for frame in frames]),
            )
        except ClipSearchError as exc:
            result.error = str(exc)
        except Exception as exc:  # a demuxer bug on one odd file must not stop the run
            log.exception("unexpected failure preparing %s", path)
            result.error = f"unexpected error: {type(exc).__name__}: {exc}"
        return result


def _unchanged_since_scan(file: FileStat) -> None:
    """A video is read in several passes (hashed, then decoded): refuse it if it changed or vanished meanwhile, so
    its vectors never describe other content than its hash; the next run reads it again."""
    try:
        now = os.stat(file.path)
    except OSError as exc:
        raise ImageUnreadable(f"vanished while being read ({exc.strerror or exc}); the next run tries again") from exc
    if (now.st_size, now.st_mtime_ns) != (file.size, file.mtime_ns):
        raise ImageUnreadable("changed while being read; the next run reads it again")


class _Run:
    """The main-thread side of one indexing run: decides add/update/move, batches the model, commits."""

    def __init__(
        self,
        indexer: Indexer,
        collection: Collection,
        counts: _Counts,
        vanished: dict[str, list[CatalogEntry]],
        progress: ProgressFn | None,
        found: int,
        total: int,
    ) -> None:
        self.indexer = indexer
        self.collection = collection
        self.writer: CollectionWriter  # set once the write lock is held
        self.counts = counts
        self.vanished = vanished
        self.progress = progress
        self.found = found
        self.total = total
        self.done = 0
        self.batch: list[_Prepared] = []
        self.vectors_this_run: dict[str, npt.NDArray[np.float32]] = {}
        # Entries this run re-pointed at a new path: their id now belongs to that path, not to the old one.
        self.moved_ids: set[int] = set()
        self.since_commit = 0
        self.last_commit = time.monotonic()

    def handle(self, item: _Prepared) -> None:
        previous = item.previous
        if previous is not None and previous.id in self.moved_ids:
            previous = item.previous = None
        if item.error is not None:
            self.counts.failures.append(Failure(path=str(item.file.path), reason=item.error))
            if previous is not None:  # its old vector no longer describes the file
                self.writer.remove([previous.id])
                self.counts.removed += 1
            self._advance(1)
            return
        if previous is not None and previous.hash == item.hash:
            self.writer.touch(previous.id, item.file.size, item.file.mtime_ns)
            if item.metadata is not None:
                self.writer.set_metadata(previous.id, item.width, item.height, item.metadata)
            self.counts.unchanged += 1
            self._advance(1)
            return
        same_content = self.collection.find_hash(item.hash)
        source = self._move_source(item.hash, same_content)
        if source is not None:
            if previous is not None:
                self.writer.remove([previous.id])
                self.counts.removed += 1
            self.writer.move(source.id, item.file.path, item.file.size, item.file.mtime_ns)
            if item.metadata is not None:
                self.writer.set_metadata(source.id, item.width, item.height, item.metadata)
            self.moved_ids.add(source.id)
            self.counts.moved += 1
            self._advance(1)
            return
        if item.video is not None:
            self._store_video(item, item.video)
            self._advance(1)
            return
        vector = self._known_vector(item.hash, same_content)
        if vector is not None:
            self._store(item, vector)
            self._advance(1)
            return
        if item.pixels is None:
            # Its content was known when the worker looked, but that entry has changed since: decode it now.
            item = self.indexer.prepare(item.file, previous)
            if item.error is not None:
                self.handle(item)
                return
        self.batch.append(item)
        if len(self.batch) >= self.indexer.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            pixels = np.stack([item.pixels for item in self.batch if item.pixels is not None])
            vectors = self.indexer.encoder.encode_pixels(pixels)
            for item, vector in zip(self.batch, vectors, strict=True):
                self.vectors_this_run[item.hash] = vector
                self._store(item, vector)
            self.counts.embedded += len(self.batch)
            done = len(self.batch)
            self.batch = []
            self._advance(done)

    def _store_video(self, item: _Prepared, video: _VideoFrames) -> None:
        """A video's frames through the model, in batches; the poster's vector is its row's."""
        size = self.indexer.batch_size
        vectors = np.concatenate(
            [self.indexer.encoder.encode_pixels(video.pixels[i : i + size]) for i in range(0, len(video.pixels), size)]
        )
        self.counts.embedded += 1
        self.counts.frames += len(vectors)
        frames = tuple(zip(video.times, vectors, strict=True))
        self._store(item, vectors[0], NewVideo(video.duration, video.times[0], frames))

    def _store(self, item: _Prepared, vector: npt.NDArray[np.float32], video: NewVideo | None = None) -> None:
        width, height = item.width, item.height
        image = NewImage(
            item.file.path,
            item.file.size,
            item.file.mtime_ns,
            item.hash,
            width,
            height,
            item.metadata,
            item.perceptual,
            video,
        )
        if item.previous is not None:
            self.writer.replace(item.previous.id, image, vector)
            self.counts.updated += 1
        else:
            self.writer.add(image, vector)
            self.counts.added += 1

    def _move_source(self, content: str, same_content: list[CatalogEntry]) -> CatalogEntry | None:
        """A catalogued file with this content whose own path is gone: the file was renamed or moved here."""
        candidates = self.vanished.get(content)
        if candidates:
            entry = candidates.pop(0)
            if not candidates:
                del self.vanished[content]
            return entry
        for entry in same_content:
            if entry.id not in self.moved_ids and not entry.path.exists():
                return entry
        return None

    def _known_vector(self, content: str, same_content: list[CatalogEntry]) -> npt.NDArray[np.float32] | None:
        if content in self.vectors_this_run:
            return self.vectors_this_run[content]
        return self.collection.vector(same_content[0].id) if same_content else None

    def _advance(self, n: int) -> None:
        self.done += n
        self.since_commit += n
        if self.since_commit >= self.indexer.commit_every or (
            time.monotonic() - self.last_commit >= self.indexer.commit_seconds
        ):
            self.writer.commit()
            # Committed vectors are found through the catalog from now on; keeping them here would make memory
            # grow with the size of the run.
            self.vectors_this_run.clear()
            self.since_commit = 0
            self.last_commit = time.monotonic()
        self.report_progress()

    def report_progress(self) -> None:
        if self.progress:
            counts = self.counts
            self.progress(IndexProgress(self.found, self.total, self.done, counts.embedded, len(counts.failures)))

    def text_progress(self, text: TextCounts) -> None:
        if self.progress:
            counts = self.counts
            self.progress(
                IndexProgress(
                    self.found,
                    self.total,
                    self.done,
                    counts.embedded,
                    len(counts.failures),
                    "text",
                    text.to_read,
                    text.done,
                )
            )


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0
