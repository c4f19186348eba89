"""Reading image files: which files count as images, decoding any mode to upright RGB, hashing and thumbnails.

Formats: JPEG, PNG, WebP, GIF, BMP, TIFF (Pillow); HEIC/HEIF, the format of phone cameras, through pillow-heif
registered as a Pillow opener; AVIF through Pillow's own decoder where it has one, else pillow-heif's. Camera RAW
files need the optional `rawpy` (`pip install clipsearch[raw]`): their largest embedded preview is decoded, which is
far cheaper than developing the RAW and plenty for a 224 px model."""

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from server.errors import ImageUnreadable

RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".rw2", ".orf", ".raf"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
    | RAW_EXTENSIONS
)
# A RAW file next to one of these with the same name is the same shot: only the developed sibling is indexed.
RAW_SIBLING_EXTENSIONS = (".jpg", ".jpeg", ".heic", ".heif")
RAW_EXTRA_MISSING = "install clipsearch[raw] to index RAW files"
THUMBNAIL_MAX_SIDE = 256

# Truncated files must fail loudly, not embed a half-grey picture; Pillow's decompression-bomb guard
# (Image.MAX_IMAGE_PIXELS) stays at its default.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# decode() refuses images above the warning limit itself; the warning would only be noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _register_formats() -> None:
    from PIL import features
    from pillow_heif import register_heif_opener

    register_heif_opener()
    if not features.check("avif"):
        from pillow_heif import register_avif_opener

        register_avif_opener()


_register_formats()


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_raw_name(path: Path) -> bool:
    return path.suffix.lower() in RAW_EXTENSIONS


def raw_supported() -> bool:
    """Whether the optional RAW reader (rawpy) is installed."""
    import importlib.util

    return importlib.util.find_spec("rawpy") is not None


def raw_preview(data: bytes) -> bytes | Image.Image:
    """The largest preview embedded in a RAW file: JPEG bytes, or an image when the camera stored a bitmap."""
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            thumb = raw.extract_thumb()
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageUnreadable(f"cannot read RAW file: {exc}") from exc
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return bytes(thumb.data)
    return Image.fromarray(np.asarray(thumb.data, dtype=np.uint8))


def content_hash(data: bytes) -> str:
    """Hash of a file's bytes: identifies the same picture under another name."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: Path) -> str:
    """`content_hash` of a file read in pieces (a video need not fit in memory); ImageUnreadable if it cannot be
    read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ImageUnreadable(f"cannot read file: {exc.strerror or exc}") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    width: int
    height: int


def decode(data: bytes, min_side: int | None = None, raw: bool = False) -> DecodedImage:
    """Decode bytes to an upright RGB image; width/height are the original, upright dimensions.

    With `min_side`, JPEGs are decoded in draft mode (DCT-domain downscaling) to no less than that many pixels on
    each side: far cheaper than a full decode when the model only needs 224 px. With `raw`, the bytes are a camera
    RAW file and its embedded preview is decoded (the preview's dimensions are reported).
    """
    if raw:
        if not raw_supported():
            raise ImageUnreadable(RAW_EXTRA_MISSING)
        preview = raw_preview(data)
        if isinstance(preview, Image.Image):
            return DecodedImage(image=to_rgb(preview), width=preview.width, height=preview.height)
        data = preview
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        # Pillow only warns between its limit and twice it; refusing there too keeps memory bounded per image.
        if width * height > (Image.MAX_IMAGE_PIXELS or width * height):
            raise ImageUnreadable(
                f"image too large to decode safely ({width}x{height} pixels, limit {Image.MAX_IMAGE_PIXELS})"
            )
        if min_side is not None and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise ImageUnreadable(f"image too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageUnreadable("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageUnreadable(f"cannot decode image: {exc}") from exc
    if upright is not image and _orientation_swaps_axes(image):
        width, height = height, width
    return DecodedImage(image=to_rgb(upright), width=width, height=height)


def _orientation_swaps_axes(image: Image.Image) -> bool:
    # EXIF orientations 5-8 rotate by 90 degrees.
    return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency over white, 16/32-bit and float scaled to 0-255."""
    mode = image.mode
    if mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max(initial=0.0))
        if mode.startswith("I;16"):
            peak = 65535.0
        elif mode == "F" and 0.0 < top <= 1.0:
            peak = 1.0  # float images in [0, 1]
        else:
            peak = max(top, 255.0)
        scaled = np.clip(values * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_file(path: Path, max_bytes: int | None = None, partial: int | None = None) -> bytes:
    """The whole file (or its first `partial` bytes); raises ImageUnreadable with the OS's reason (permissions,
    vanished file, not a file), or when it exceeds `max_bytes`."""
    try:
        with open(path, "rb") as handle:
            if partial is not None:
                data = handle.read(partial)
            else:
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageUnreadable(f"cannot read file: {exc.strerror or exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageUnreadable(f"file is larger than {max_bytes} bytes")
    if not data:
        raise ImageUnreadable("file is empty")
    return data


def load_image(path: Path, min_side: int | None = None) -> DecodedImage:
    """Read and decode one image file (RAW files by their preview)."""
    return decode(read_file(path), min_side=min_side, raw=is_raw_name(path))


def thumbnail_jpeg(path: Path, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """A small upright JPEG of the image, for showing results to an assistant."""
    return jpeg_of(load_image(path, min_side=max_side).image, max_side)


def jpeg_of(image: Image.Image, max_side: int, max_bytes: int | None = None) -> bytes:
    """An RGB image as a JPEG of at most `max_side` px (and `max_bytes`, lowering the quality, then the size)."""
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    quality = 85 if max_bytes else 80
    while True:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        if max_bytes is None or out.tell() <= max_bytes or max(image.size) <= 64:
            return out.getvalue()
        if quality > 50:
            quality -= 15
        else:
            image.thumbnail((max(64, image.width * 3 // 4), max(64, image.height * 3 // 4)), Image.Resampling.BICUBIC)
