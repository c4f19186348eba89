"""One photo for the assistant to look at closely: upright, as a JPEG of bounded size, with what is known of it
(size, capture time, place, camera) and the collections that hold it. The file is read once; the caller checks the
path against the allowed roots before anything is opened."""

import io
import os
from pathlib import Path

from PIL import Image

from server.errors import FileMissing, InvalidArgument
from server.images.decode import decode, is_image_name, is_raw_name, jpeg_of, read_file
from server.images.metadata import read_metadata
from server.limits import VIEW_SIDE
from server.results import ImageView
from server.store.catalog import read_catalog

MAX_JPEG_BYTES = 1_000_000


def view_image(path: Path, max_side: int, index_dir: Path, collections: list[str]) -> tuple[bytes, ImageView]:
    """The JPEG and the description of the image at `path` (already resolved and allowed)."""
    VIEW_SIDE.check(max_side)
    if not path.exists():
        raise FileMissing(f"Image '{path}' does not exist.")
    if not path.is_file() or not is_image_name(path):
        raise InvalidArgument(f"'{path}' is not an image file; give the path of a photo (e.g. a search result).")
    data = read_file(path)
    decoded = decode(data, min_side=max_side, raw=is_raw_name(path))
    meta = read_metadata(data, path.stat().st_mtime_ns)
    jpeg = jpeg_of(decoded.image, max_side, MAX_JPEG_BYTES)
    key = os.fsencode(str(path))
    query = "SELECT 1 FROM images WHERE path = ?"
    holding = [name for name in collections if read_catalog(index_dir / name, query, (key,))]
    with Image.open(io.BytesIO(jpeg)) as shown:  # the header only
        shown_size = shown.size
    return jpeg, ImageView(
        path=str(path),
        width=meta.width or decoded.width,
        height=meta.height or decoded.height,
        shown_width=shown_size[0],
        shown_height=shown_size[1],
        jpeg_bytes=len(jpeg),
        taken=meta.taken,
        taken_source=meta.taken_source,
        latitude=meta.latitude,
        longitude=meta.longitude,
        camera=meta.camera,
        collections=holding,
    )
