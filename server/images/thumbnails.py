"""Small JPEGs of images for a gallery, cached per (path, modification time, size, side) in a bounded memory budget,
so paging back and forth through results does not decode a photo twice. A file changed since it was cached gets a
new entry (its mtime or size differ); the stale one ages out."""

import base64
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from server.errors import ClipSearchError, FileMissing, InvalidArgument
from server.images.decode import THUMBNAIL_MAX_SIDE, is_image_name, thumbnail_jpeg
from server.limits import GALLERY_MAX_PATHS, GALLERY_SIDE
from server.results import Thumbnail, ThumbnailPage

DEFAULT_BUDGET = 64 << 20  # bytes of JPEG kept; a 256 px thumbnail is ~10-20 KB, so a few thousand

Key = tuple[str, int, int, int]


class ThumbnailCache:
    """Thumbnails by (path, mtime_ns, size, side), least recently used dropped past `max_bytes`. Thread-safe; two
    threads asking for the same new thumbnail may both make it (the second store is a no-op)."""

    def __init__(self, max_bytes: int = DEFAULT_BUDGET, make: Callable[[Path, int], bytes] = thumbnail_jpeg) -> None:
        self.max_bytes = max_bytes
        self.made = 0  # thumbnails decoded rather than served from the cache
        self._make = make
        self._items: OrderedDict[Key, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path, side: int = THUMBNAIL_MAX_SIDE) -> bytes:
        """The JPEG of the (already allowed) image at `path`, at most `side` px."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileMissing(f"Image '{path}' does not exist.") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size, side)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        data = self._make(path, side)
        with self._lock:
            self.made += 1
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= len(dropped)
        return data

    def page(self, paths: Sequence[str], side: int, check: Callable[[str], Path]) -> ThumbnailPage:
        """Thumbnails of `paths` in order, each allowed by `check` first; a path that is refused, missing or
        unreadable gets its reason instead of data (the others still come back)."""
        GALLERY_SIDE.check(side)
        if len(paths) > GALLERY_MAX_PATHS:
            raise InvalidArgument(f"At most {GALLERY_MAX_PATHS} paths per call, got {len(paths)}.")
        items = []
        for text in paths:
            try:
                path = check(text)
                if not is_image_name(path):
                    raise InvalidArgument(f"'{path}' is not an image file.")
                data = base64.b64encode(self.get(path, side)).decode("ascii")
                items.append(Thumbnail(path=text, jpeg_base64=data))
            except ClipSearchError as exc:
                items.append(Thumbnail(path=text, error=str(exc)))
        return ThumbnailPage(side=side, thumbnails=items)
