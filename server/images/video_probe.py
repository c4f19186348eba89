"""A video's stream probed before anything is decoded: the stream checked (a decoder, a sane size), its time base
and frame rate, its duration (the index's where the header claims longer) and the container's index of keyframes."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from PIL import Image

from server.errors import VideoUnreadable

if TYPE_CHECKING:
    import av.container
    import av.video

MAX_SIDE = 16384
MAX_DURATION_SECONDS = 30 * 86400  # a longer claim is unknown, not planned for


def checked_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The video stream, refused before anything is decoded if it has no decoder or claims an absurd size."""
    stream = _video_stream(container)
    if stream.codec_context is None:
        raise VideoUnreadable(f"no decoder for the video's codec ({stream.codec.name})")
    width, height = stream.codec_context.width, stream.codec_context.height
    limit = Image.MAX_IMAGE_PIXELS or MAX_SIDE * MAX_SIDE
    if width <= 0 or height <= 0:
        raise VideoUnreadable("the video's frame size is unknown")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > limit:
        raise VideoUnreadable(
            f"video claims {width}x{height} pixels, more than is decoded safely ({MAX_SIDE} a side, {limit} in all)"
        )
    return stream


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    import av

    candidates = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]  # cover art is a one-picture "video" stream
    if not candidates:
        audio = " (audio only)" if container.streams.audio else ""
        raise VideoUnreadable(f"no video stream in the file{audio}")
    return candidates[0]


def fraction(value: Any) -> Fraction | None:
    """A PyAV rational (a Fraction up to 18, an AVRational from 19) as a Fraction; None when unset or zero."""
    try:
        result = Fraction(int(value.numerator), int(value.denominator))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return result or None


def time_base(stream: av.video.stream.VideoStream) -> Fraction:
    return fraction(stream.time_base) or Fraction(1, 90000)


def frames_per_second(stream: av.video.stream.VideoStream) -> float | None:
    rate = fraction(stream.average_rate) or fraction(stream.guessed_rate)
    value = float(rate) if rate else None
    return round(value, 3) if value is not None and 0 < value <= 10_000 else None


def duration_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: KeyframeIndex
) -> float | None:
    claimed: float | None = None
    if stream.duration:
        claimed = float(stream.duration * time_base(stream))
    elif container.duration:
        claimed = container.duration / 1_000_000
    if claimed is not None and index.last_seconds is not None and claimed > index.last_seconds * 1.5 + 5:
        claimed = index.last_seconds + (1 / (frames_per_second(stream) or 30))  # what the file holds, not what it says
    if claimed is None or not math.isfinite(claimed) or not 0 < claimed <= MAX_DURATION_SECONDS:
        return None
    return round(claimed, 3)


class KeyframeIndex:
    """Keyframe times (seconds from the first frame) from the container's index: MP4's sample table and AVI's idx1
    list every frame, Matroska's cues (read at the first seek) its keyframes. Listed lazily: a 3-hour video's index
    holds hundreds of thousands of entries, and only short videos need the list."""

    LISTED_ENTRIES = 250_000

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        container.seek(stream.start_time or 0, stream=stream, backward=True)  # Matroska reads its cues here
        self.entries = stream.index_entries
        self.time_base = time_base(stream)
        count = len(self.entries)
        self.count = count
        self.first_ts = self.entries[0].timestamp if count else 0
        last = self.entries[count - 1] if count else None
        self.last_seconds = float((last.timestamp - self.first_ts) * self.time_base) if last else None
        self.data_end = max((e.pos + e.size for e in self.entries[max(0, count - 16) :]), default=0)
        self._times: list[float] | None = None

    def covers(self, duration: float | None) -> bool:
        """Whether the index reaches the end (a live WebM's holds only what has been read so far)."""
        if duration is None or not self.count or not self.entries[0].is_keyframe or self.last_seconds is None:
            return False
        return self.last_seconds >= duration - max(10.0, duration / 4)

    def keyframes(self) -> list[float] | None:
        """All keyframe times, or None where the index is too long to list."""
        if self.count > self.LISTED_ENTRIES:
            return None
        if self._times is None:
            base, tb = self.first_ts, self.time_base
            self._times = [float((e.timestamp - base) * tb) for e in self.entries if e.is_keyframe]
        return self._times
