"""A video container's metadata as a `PhotoMetadata`: capture time (Apple's `com.apple.quicktime.creationdate` with
its offset, else `creation_time`, else the file's mtime), place (ISO 6709 from Apple's or Android's key) and camera
make and model. Hostile values (wrong types, absurd dates, invalid ISO 6709, huge strings) leave that field unknown;
nothing here raises."""

import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.images.metadata import PhotoMetadata

log = logging.getLogger(__name__)

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?$")
_ISO6709 = re.compile(r"([+-]\d{2,6}(?:\.\d+)?)([+-]\d{3,7}(?:\.\d+)?)([+-]\d+(?:\.\d+)?)?(?:CRS[A-Za-z0-9_:]*)?/?$")
_TIME_KEYS = (("com.apple.quicktime.creationdate", "quicktime"), ("creation_time", "container"))
_PLACE_KEYS = ("com.apple.quicktime.location.ISO6709", "location", "location-eng")
_CAMERA_KEYS = (
    ("com.apple.quicktime.make", "com.apple.quicktime.model"),
    ("com.android.manufacturer", "com.android.model"),
    ("make", "model"),
)
_MAX_TEXT = 256  # metadata values longer than this are not dates, places or camera names


def video_metadata(tags: Mapping[str, Any], mtime_ns: int, width: int = 0, height: int = 0) -> PhotoMetadata:
    """A container's metadata tags as a `PhotoMetadata`; never raises (a bad field is unknown)."""
    taken = source = None
    for key, name in _TIME_KEYS:
        taken = _guard(lambda key=key: _taken(tags.get(key)))
        if taken:
            source = name
            break
    if taken is None:
        taken = datetime.fromtimestamp(mtime_ns / 1e9).astimezone().isoformat(timespec="seconds")
        source = "file_mtime"
    local, utc = _derived(taken)
    place = None
    for key in _PLACE_KEYS:
        place = _guard(lambda key=key: _iso6709(tags.get(key)))
        if place:
            break
    camera = None
    for make_key, model_key in _CAMERA_KEYS:
        camera = _guard(lambda m=make_key, n=model_key: _camera(tags.get(m), tags.get(n)))
        if camera:
            break
    latitude, longitude = place if place else (None, None)
    return PhotoMetadata(taken, source, local, utc, latitude, longitude, camera, width, height)


def _guard(read: Any) -> Any:
    try:
        return read()
    except Exception:  # hostile metadata: that field is unknown, the video is still read
        log.debug("unreadable video metadata field", exc_info=True)
        return None


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        return None
    # Bytes that were not UTF-8 arrive replaced (PyAV 18) or as surrogates (19): both dropped.
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    value = value.replace("\x00", "").replace("\ufffd", "").strip()
    return value or None


def _taken(value: Any) -> str | None:
    """ISO 8601 text from a container date; a UTC time (creation_time) in this machine's zone."""
    match = _DATE.match(_text(value) or "")
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not 1970 < year <= 2100:
        return None
    fraction, zone = match.group(7), match.group(8)
    moment = datetime(year, month, day, hour, minute, second, int((fraction or "0")[:6].ljust(6, "0")))
    if zone and zone != "Z":
        digits = zone.replace(":", "")
        hours, minutes = int(digits[1:3]), int(digits[3:5])
        if hours > 14 or minutes > 59:
            return None
        text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
        return f"{text}{digits[0]}{hours:02d}:{minutes:02d}"
    shown = moment.replace(tzinfo=UTC).astimezone()  # the instant, in this machine's zone
    return shown.isoformat(timespec="microseconds" if moment.microsecond else "seconds")


def _derived(taken: str) -> tuple[str | None, float | None]:
    # As images/metadata.py derives them: wall-clock text for sorting by local time, epoch seconds for ranges.
    try:
        moment = datetime.fromisoformat(taken)
    except ValueError:
        return None, None
    local = moment.replace(tzinfo=None).isoformat(timespec="microseconds")
    utc = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return local, utc


def _iso6709(value: Any) -> tuple[float, float] | None:
    """'+48.8577+002.2950+035.000/' (or degrees-minutes[-seconds] forms) as (latitude, longitude)."""
    match = _ISO6709.match(_text(value) or "")
    if not match:
        return None
    latitude, longitude = _sexagesimal(match.group(1), 2), _sexagesimal(match.group(2), 3)
    if latitude is None or longitude is None or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    if latitude == 0 and longitude == 0:
        return None
    return round(latitude, 7), round(longitude, 7)


def _sexagesimal(text: str, degree_digits: int) -> float | None:
    sign = -1.0 if text[0] == "-" else 1.0
    whole, _, fraction = text[1:].partition(".")
    fraction = "0." + (fraction or "0")
    if len(whole) == degree_digits:
        value = int(whole) + float(fraction)
    elif len(whole) == degree_digits + 2:
        minutes = int(whole[-2:]) + float(fraction)
        value = int(whole[:-2]) + minutes / 60 if minutes < 60 else math.nan
    elif len(whole) == degree_digits + 4:
        minutes, seconds = int(whole[-4:-2]), int(whole[-2:]) + float(fraction)
        value = int(whole[:-4]) + minutes / 60 + seconds / 3600 if minutes < 60 and seconds < 60 else math.nan
    else:
        return None
    return sign * value if math.isfinite(value) else None


def _camera(make: Any, model: Any) -> str | None:
    make, model = _text(make), _text(model)
    if make and model and model.lower().startswith(make.split()[0].lower()):
        make = None  # "Canon" + "Canon EOS R5": the model already says it (as images/metadata.py does)
    name = " ".join(" ".join(p for p in (make, model) if p).split())
    return name[:200] or None
