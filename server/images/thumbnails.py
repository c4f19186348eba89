"""Small JPEGs of images for a gallery, cached per (path, modification time, size, side, moment) in a bounded memory
budget, so paging back and forth through results does not decode a photo twice. A file changed since it was cached
gets a new entry (its mtime or size differ); the stale one ages out. A video's thumbnail is its frame at the moment
asked (a result's `time_seconds`), or its first frame that is not black."""

import base64
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from server.errors import ClipSearchError, FileMissing, InvalidArgument
from server.images.decode import THUMBNAIL_MAX_SIDE, is_image_name, jpeg_of, thumbnail_jpeg
from server.images.video import is_video_name, read_frame, read_video
from server.limits import GALLERY_MAX_PATHS, GALLERY_SIDE, TIME_SECONDS
from server.results import Thumbnail, ThumbnailPage

DEFAULT_BUDGET = 64 << 20  # bytes of JPEG kept; a 256 px thumbnail is ~10-20 KB, so a few thousand

Key = tuple[str, int, int, int, float | None]


def video_thumbnail(path: Path, side: int, time_seconds: float | None = None) -> bytes:
    """A small upright JPEG of a video's frame at `time_seconds`, or of its first frame that is not black."""
    if time_seconds is None:
        _, frames = read_video(path, min_side=side, every_seconds=3600.0, max_frames=1)
        frame = frames[0]
    else:
        frame = read_frame(path, time_seconds, min_side=side)
    return jpeg_of(frame.image, side)


def media_thumbnail(path: Path, side: int, time_seconds: float | None = None) -> bytes:
    """A photo's thumbnail, or a video's at that moment."""
    if is_video_name(path):
        return video_thumbnail(path, side, time_seconds)
    return thumbnail_jpeg(path, side)


class ThumbnailCache:
    """Thumbnails by (path, mtime_ns, size, side), least recently used dropped past `max_bytes`. Thread-safe; two
    threads asking for the same new thumbnail may both make it (the second store is a no-op)."""

    def __init__(
        self, max_bytes: int = DEFAULT_BUDGET, make: Callable[[Path, int, float | None], bytes] = media_thumbnail
    ) -> None:
        self.max_bytes = max_bytes
        self.made = 0  # thumbnails decoded rather than served from the cache
        self._make = make
        self._items: OrderedDict[Key, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path, side: int = THUMBNAIL_MAX_SIDE, time_seconds: float | None = None) -> bytes:
        """The JPEG of the (already allowed) image at `path` (a video's frame at `time_seconds`), at most `side`
        px."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileMissing(f"Image '{path}' does not exist.") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size, side, time_seconds)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        data = self._make(path, side, time_seconds)
        with self._lock:
            self.made += 1
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= len(dropped)
        return data

    def page(
        self,
        paths: Sequence[str],
        side: int,
        check: Callable[[str], Path],
        times: Sequence[float | None] | None = None,
    ) -> ThumbnailPage:
        """Thumbnails of `paths` in order (a video's at the moment in `times`, the same length, if given), each
        allowed by `check` first; a path that is refused, missing or unreadable gets its reason instead of data (the
        others still come back)."""
        GALLERY_SIDE.check(side)
        if len(paths) > GALLERY_MAX_PATHS:
            raise InvalidArgument(f"At most {GALLERY_MAX_PATHS} paths per call, got {len(paths)}.")
        if times is not None and len(times) != len(paths):
            raise InvalidArgument(f"times must have one entry per path ({len(paths)}), got {len(times)}.")
        moments = list(times) if times is not None else [None] * len(paths)
        items = []
        for text, moment in zip(paths, moments, strict=True):
            try:
                path = check(text)
                if not is_image_name(path) and not is_video_name(path):
                    raise InvalidArgument(f"'{path}' is not an image or video file.")
                if moment is not None:
                    TIME_SECONDS.check(moment)
                data = base64.b64encode(self.get(path, side, moment)).decode("ascii")
                items.append(Thumbnail(path=text, jpeg_base64=data))
            except ClipSearchError as exc:
                items.append(Thumbnail(path=text, error=str(exc)))
        return ThumbnailPage(side=side, thumbnails=items)
