"""Photo metadata from bytes already read: capture time, place, camera. Tolerant of bad EXIF by construction.

One reader turns a file's bytes into a small typed record. Anything it cannot read safely (wrong types, absurd
values, broken IFDs, non-UTF-8 text, a huge XMP packet) is left out of the record; it never raises.

`taken` keeps the time as written (sub-seconds and offset too), from EXIF `DateTimeOriginal` (+ `SubSecTimeOriginal`
+ `OffsetTimeOriginal`), else `DateTimeDigitized`, else `DateTime`, else XMP `xmp:CreateDate`; placeholder dates
(zeros, 1970 and earlier) are rejected. Without any, the file's mtime stands in, marked `file_mtime`. For filtering
and sorting two derived values are kept: `taken_local` (the wall-clock time as written, fixed-width ISO text) and
`taken_utc` (epoch seconds; a time without an offset is read as UTC).
"""

import io
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

# Formats whose EXIF Pillow reads from the header without decoding pixels (for PNG and GIF it would decode them).
_EXIF_IN_HEADER = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF", "AVIF"})
XMP_SCAN_BYTES = 1 << 20  # a CreateDate lies near the packet's start; a 50 MB packet is not searched whole
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TIME, _MAKE, _MODEL, _OFFSET_TIME = 0x0132, 0x010F, 0x0110, 0x9010
_ORIGINAL = (0x9003, 0x9291, 0x9011)  # DateTimeOriginal, SubSecTimeOriginal, OffsetTimeOriginal
_DIGITIZED = (0x9004, 0x9292, 0x9012)
_EXIF_DATE = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})|Z")
_XMP_CREATE = re.compile(rb"xmp:CreateDate(?:=\"|>)([^\"<]{4,40})")
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class PhotoMetadata:
    taken: str | None = None
    taken_source: str | None = None  # "exif", "xmp" or "file_mtime"
    taken_local: str | None = None  # YYYY-MM-DDTHH:MM:SS.ffffff, wall-clock time as written
    taken_utc: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    camera: str | None = None
    width: int = 0  # upright, from the header (0 when it cannot be read)
    height: int = 0


def read_metadata(data: bytes, mtime_ns: int) -> PhotoMetadata:
    """Metadata of an image file's bytes (or of their first part: only headers are parsed)."""
    exif: Any = None
    xmp: bytes = b""
    width = height = 0
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format in _EXIF_IN_HEADER:
                exif = image.getexif()
            else:  # Pillow would decode the pixels to look for EXIF after them: only what the header held
                exif = Image.Exif()
                if isinstance(image.info.get("exif"), bytes):
                    exif.load(image.info["exif"])
            if exif.get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the picture by 90 degrees
                width, height = height, width
            raw_xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
            xmp = raw_xmp.encode("utf-8", "replace") if isinstance(raw_xmp, str) else bytes(raw_xmp)
    except Exception:  # unreadable header: only the mtime is known
        log.debug("no readable image header for metadata", exc_info=True)
    taken = _guard(lambda: _exif_taken(exif)) if exif is not None else None
    source = "exif" if taken else None
    if taken is None:
        taken = _guard(lambda: _xmp_taken(xmp or _find_xmp(data)))
        source = "xmp" if taken else None
    if taken is None:
        stamp = datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
        taken, source = stamp.isoformat(timespec="seconds"), "file_mtime"
    local, utc = _derived(taken)
    lat_lon = _guard(lambda: _gps(exif)) if exif is not None else None
    camera = _guard(lambda: _camera(exif)) if exif is not None else None
    latitude, longitude = lat_lon if lat_lon else (None, None)
    return PhotoMetadata(taken, source, local, utc, latitude, longitude, camera, width, height)


def _guard(read: Any) -> Any:
    try:
        return read()
    except Exception:  # hostile or broken metadata: that field is unknown, the photo is still indexed
        log.debug("unreadable metadata field", exc_info=True)
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _exif_taken(exif: Any) -> str | None:
    sub = exif.get_ifd(_EXIF_IFD)
    for date_tag, subsec_tag, offset_tag in (_ORIGINAL, _DIGITIZED):
        taken = _compose(sub.get(date_tag), sub.get(subsec_tag), sub.get(offset_tag))
        if taken:
            return taken
    return _compose(exif.get(_DATE_TIME), sub.get(0x9290), sub.get(_OFFSET_TIME))


def _compose(date: Any, subsec: Any, offset: Any) -> str | None:
    """EXIF's 'YYYY:MM:DD HH:MM:SS' (+ sub-seconds, + offset) as ISO 8601; None for placeholders."""
    text = _text(date)
    match = _EXIF_DATE.match(text or "")
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    if year <= 1970:
        return None
    iso = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    digits = re.sub(r"\D", "", _text(subsec) or "")[:6]
    if digits:
        iso += "." + digits
    zone = _OFFSET.fullmatch(_text(offset) or "")
    if zone:
        iso += "+00:00" if zone.group(0) == "Z" else f"{zone.group(1)}{zone.group(2)}:{zone.group(3)}"
    return iso


def _find_xmp(data: bytes) -> bytes:
    start = data.find(b"<x:xmpmeta", 0, XMP_SCAN_BYTES * 4)
    return data[start : start + XMP_SCAN_BYTES] if start >= 0 else b""


def _xmp_taken(xmp: bytes) -> str | None:
    match = _XMP_CREATE.search(xmp[:XMP_SCAN_BYTES])
    if not match:
        return None
    text = match.group(1).decode("ascii", "replace").strip()
    parsed = _ISO.match(text)
    if not parsed or int(parsed.group(1)) <= 1970:
        return None
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return text


def _derived(taken: str) -> tuple[str | None, float | None]:
    try:
        moment = datetime.fromisoformat(taken.replace("Z", "+00:00"))
    except ValueError:
        return None, None
    local = moment.replace(tzinfo=None).isoformat(timespec="microseconds")
    utc = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return local, utc


def _degrees(value: Any) -> float | None:
    parts = [float(v) for v in value]
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    return parts[0] + parts[1] / 60 + parts[2] / 3600


def _gps(exif: Any) -> tuple[float, float] | None:
    gps = exif.get_ifd(_GPS_IFD)
    if not gps or 2 not in gps or 4 not in gps:
        return None
    latitude, longitude = _degrees(gps[2]), _degrees(gps[4])
    if latitude is None or longitude is None:
        return None
    if (_text(gps.get(1)) or "N").upper().startswith("S"):
        latitude = -latitude
    if (_text(gps.get(3)) or "E").upper().startswith("W"):
        longitude = -longitude
    if abs(latitude) > 90 or abs(longitude) > 180 or (latitude == 0 and longitude == 0):
        return None
    return round(latitude, 7), round(longitude, 7)


def _camera(exif: Any) -> str | None:
    make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    if make and model and model.lower().startswith(make.split()[0].lower()):
        make = None  # "Canon" + "Canon EOS 5D": the model already says it
    name = " ".join(" ".join(p for p in (make, model) if p).split())
    return name[:200] or None
