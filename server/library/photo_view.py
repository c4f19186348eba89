"""One photo for the assistant to look at closely: upright, as a JPEG of bounded size, with what is known of it
(size, capture time, place, camera, the text read in it) and the collections that hold it. The file is read once; the
caller checks the path against the allowed roots before anything is opened."""

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from server.encoders.text_recognition import RecognisedText, TextLine
from server.errors import FileMissing, InvalidArgument
from server.images.decode import decode, is_image_name, is_raw_name, jpeg_of, read_file
from server.images.metadata import PhotoMetadata, read_metadata
from server.images.video import is_video_name, read_frame, read_video
from server.limits import TIME_SECONDS, VIEW_SIDE
from server.results import ImageView, TextLineView
from server.store.catalog import read_catalog
from server.store.text_search import text_from_json

MAX_JPEG_BYTES = 1_000_000


def view_image(
    path: Path, max_side: int, index_dir: Path, collections: list[str], time_seconds: float | None = None
) -> tuple[bytes, ImageView]:
    """The JPEG and the description of the image at `path` (already resolved and allowed); of a video, its frame at
    `time_seconds` (its first that is not black without)."""
    VIEW_SIDE.check(max_side)
    if not path.exists():
        raise FileMissing(f"Image '{path}' does not exist.")
    if path.is_file() and is_video_name(path):
        return _view_video(path, max_side, index_dir, collections, time_seconds)
    if time_seconds is not None:
        raise InvalidArgument("time_seconds is a moment of a video; this is a photo.")
    if not path.is_file() or not is_image_name(path):
        raise InvalidArgument(f"'{path}' is not an image file; give the path of a photo (e.g. a search result).")
    data = read_file(path)
    decoded = decode(data, min_side=max_side, raw=is_raw_name(path))
    meta = read_metadata(data, path.stat().st_mtime_ns)
    jpeg = jpeg_of(decoded.image, max_side, MAX_JPEG_BYTES)
    key, holding = _holding(path, index_dir, collections)
    text = _recognised_text(key, [index_dir / name for name in holding])
    return jpeg, _described(
        path,
        jpeg,
        (meta.width or decoded.width, meta.height or decoded.height),
        meta,
        holding,
        text=text.text if text is not None else None,
        lines=[_line_view(line) for line in text.lines] if text is not None else None,
        text_note=text.note if text is not None else None,
    )


def _view_video(
    path: Path, max_side: int, index_dir: Path, collections: list[str], time_seconds: float | None
) -> tuple[bytes, ImageView]:
    """A video's frame at `time_seconds` (its first that is not black without), with the video's metadata, read
    from its container."""
    side = min(max_side, 4096)
    if time_seconds is None:
        info, [frame] = read_video(path, min_side=side, every_seconds=3600.0, max_frames=1)
    else:
        TIME_SECONDS.check(time_seconds)
        info, _ = read_video(path, min_side=16, every_seconds=3600.0, max_frames=1)  # its metadata, cheaply
        frame = read_frame(path, time_seconds, min_side=side)
    jpeg = jpeg_of(frame.image, max_side, MAX_JPEG_BYTES)
    _, holding = _holding(path, index_dir, collections)
    duration = None if info.duration_seconds is None else round(info.duration_seconds, 3)
    return jpeg, _described(
        path,
        jpeg,
        (info.width, info.height),
        info.metadata,
        holding,
        kind="video",
        time_seconds=round(frame.time_seconds, 3),
        duration_seconds=duration,
    )


def _holding(path: Path, index_dir: Path, collections: list[str]) -> tuple[bytes, list[str]]:
    """The catalog key of `path`, and the collections (by name) that hold it."""
    key = os.fsencode(str(path))
    query = "SELECT 1 FROM images WHERE path = ?"
    return key, [name for name in collections if read_catalog(index_dir / name, query, (key,))]


def _described(
    path: Path, jpeg: bytes, size: tuple[int, int], meta: PhotoMetadata, holding: list[str], **more: Any
) -> ImageView:
    with Image.open(io.BytesIO(jpeg)) as shown:  # the header only
        shown_size = shown.size
    return ImageView(
        path=str(path),
        width=size[0],
        height=size[1],
        shown_width=shown_size[0],
        shown_height=shown_size[1],
        jpeg_bytes=len(jpeg),
        taken=meta.taken,
        taken_source=meta.taken_source,
        latitude=meta.latitude,
        longitude=meta.longitude,
        camera=meta.camera,
        collections=holding,
        **more,
    )


def _recognised_text(key: bytes, folders: list[Path]) -> RecognisedText | None:
    """What was read in the photo, from the first collection (by name) that found text in it, else the first that
    read it and found none; None when none has read it (or a catalog predates text)."""
    query = "SELECT texts.lines FROM images JOIN texts ON texts.id = images.id WHERE images.path = ?"
    read = [text_from_json(rows[0][0]) for folder in folders if (rows := read_catalog(folder, query, (key,)))]
    return next((text for text in read if text.lines), read[0] if read else None)


def _line_view(line: TextLine) -> TextLineView:
    return TextLineView(text=line.text, box=[list(point) for point in line.box], confidence=line.confidence)
