"""Video files: frames sampled at known times (upright RGB, decoded small) and the container's metadata
(`read_video`), and the frame at a given moment (`read_frame`).

Sampling. Targets every `every_seconds` from 0 (or, where that would pass `max_frames`, `max_frames` targets spread
evenly over the duration). Each target is served by the keyframe at or before it: one seek, one packet decoded and
drained at once. Where keyframes are further apart than the targets, the frames between are decoded forward from
the keyframe (continuing, not seeking back, for the next target in the same group of pictures). Scene changes are
then looked for between neighbouring samples whose 16x16 colour thumbnails differ by more than `scene_threshold`
(mean absolute difference, 0-1): the keyframes between them are bisected and the first keyframe of each new scene
is added, while samples stay under `max_frames`. Near-black frames (no thumbnail pixel above 24) are not kept: a
black fade-in gives way to the first frame near the start that is not black; a video black throughout keeps its
first frame. A file without an index of its keyframes (a browser's WebM recording) is read in one pass, keyframes
only.

Measured (bench-style script over clips from bench/video_corpus.py: 20 s of textured 1080p H.264 and 10 s of 4K
HEVC, keyframes every second; Python 3.11, PyAV 18.1 / FFmpeg 8.1, 2 shared cores at load 2), a sample every 2 s,
each scaled to 398x224, in sampled frames per second (and times real time), 1080p / 4K:
- every frame decoded (thread_type AUTO): 3.1 (6x) / 1.0 (2x);
- keyframes only, one pass (`skip_frame = "NONKEY"`, or only key packets sent, the same): 20 (20x) / 8.5 (8.5x),
  every keyframe decoded, twice the samples asked for;
- a seek per sample, the keyframe's packet decoded: 15 (30x) / 5.5 (11x): the decoder holds the picture back
  until more arrive, reading and decoding the next group of pictures too;
- a seek per sample, drained at once (chosen): 23 (46x) / 8.8 (18x); by thread_type at 4K: none 7.1, SLICE 8.9,
  FRAME 9.8, AUTO 8.8 frames/s (1080p: 21.9-23.1 for all), so AUTO is kept.
Scaling per frame in swscale, 4K / 1080p: AREA 8.6 / 4.7 ms, BILINEAR 33 / 8.9 ms (its filter widens with the
ratio), BICUBIC 17 / 8.1 ms, FAST_BILINEAR 4.1 / 4.7 ms (aliased), Pillow resizing the full RGB frame 157 / 30 ms:
AREA, antialiased and as cheap as any. Scene changes are judged on 16x16 thumbnails of the small frame (free).
`read_video` itself, scene checks included: the 1080p clip in 0.69 s (29x real time, 12 frames), the 4K one in
0.75 s (13x, 6 frames).

Bounds. Refused before decoding: no video stream, a size unknown or above 16,384 px a side or Pillow's
`MAX_IMAGE_PIXELS`, a file shorter than its own index says (truncated). While sampling, at most `MAX_PACKETS`
packets are read and `MAX_DECODE_UNITS` frames' worth of pixels decoded (1080p frames; 4K costs four), whatever
the file claims; past them the samples so far are returned (and the stop logged), or, with none, the video is
refused. Durations come from the index where the header's claim is longer, and above `MAX_DURATION_SECONDS` are
unknown.

Confinement. The file is opened by the caller's path as a Python file object, demuxers are limited to MP4/QuickTime,
Matroska/WebM and AVI (`format_whitelist`, which also applies to anything they would open), and FFmpeg's `io_open`
refuses every further file: a playlist, concat list or reference movie named like a video never reads another file.

Orientation. Phones store portrait video as landscape pixels plus a display matrix; PyAV gives its angle on each
decoded frame (`frame.rotation`, degrees counter-clockwise, -90 for an iPhone held upright). Frames are turned
upright by it (multiples of 90 degrees; other angles, and mirroring, are ignored as FFmpeg's autorotation does).

Metadata (never raises; a bad field is unknown): the capture time from Apple's `com.apple.quicktime.creationdate`
(local time with its offset, source "quicktime"), else the container's `creation_time` (UTC, shown in this
machine's time zone, source "container"), else the file's mtime; placeholder dates (1970 and earlier, after 2100)
are rejected. Place from `com.apple.quicktime.location.ISO6709` or Android's `location` (ISO 6709 degrees,
degrees-minutes or degrees-minutes-seconds). Camera from `com.apple.quicktime.make`/`model`, Android's
`com.android.manufacturer`/`model`, or plain `make`/`model`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from server.errors import InvalidArgument, VideoUnreadable, first_line
from server.images.metadata import PhotoMetadata
from server.images.video_metadata import video_metadata

if TYPE_CHECKING:
    import av.container
    import av.video

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".3gp"})
# Demuxers allowed (FFmpeg matches any of a demuxer's comma-separated names): no playlists, concat lists, images.
ALLOWED_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
MAX_SIDE = 16384
MAX_PACKETS = 100_000  # packets read per video; a 4-minute 240 fps slow-motion clip holds 57,600
MAX_DECODE_UNITS = 1500.0  # frames of 1920x1080 decoded per video, a 4K frame counting 4 (30-60 s of decoding here)
MAX_DURATION_SECONDS = 30 * 86400  # a longer claim is unknown, not planned for
FADE_WINDOW_SECONDS = 3.0  # how far into the video a black start looks for its first real frame
FADE_STEP_SECONDS = 0.25
NEAR_BLACK = 24  # brightest 16x16 thumbnail value (0-255) of a frame that counts as black
THUMB_SIDE = 16
_UNIT_PIXELS = 1920 * 1080
_SCALING = "AREA"  # measured above: antialiased and the cheapest but for FAST_BILINEAR's aliasing


@dataclass(frozen=True)
class VideoFrame:
    time_seconds: float
    image: Image.Image  # upright RGB, its shorter side `min_side` (or the video's, when smaller)


@dataclass(frozen=True)
class VideoInfo:
    duration_seconds: float | None
    width: int  # upright, as shown (display aspect applied)
    height: int
    rotation: int  # degrees clockwise turned to make the stored pixels upright: 0, 90, 180 or 270
    codec: str
    fps: float | None
    metadata: PhotoMetadata


def is_video_name(path: Path | str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def read_video(
    path: Path,
    min_side: int = 224,
    every_seconds: float = 2.0,
    max_frames: int = 120,
    scene_threshold: float = 0.12,
) -> tuple[VideoInfo, list[VideoFrame]]:
    """The video's information and its sampled frames in time order (at least one); VideoUnreadable with the
    reason when it cannot be read. `path` must already be checked against the roots: it is opened as is."""
    if not (0.1 <= every_seconds <= 3600 and 1 <= max_frames <= 1000):
        raise InvalidArgument("every_seconds must be 0.1-3600 and max_frames 1-1000")
    if not 0 < scene_threshold <= 1:
        raise InvalidArgument("scene_threshold must be in (0, 1]")
    _check_min_side(min_side)
    with _opened(path) as (container, size, mtime_ns):
        return _read(container, size, mtime_ns, min_side, every_seconds, max_frames, scene_threshold)


def read_frame(path: Path, time_seconds: float, min_side: int = 224) -> VideoFrame:
    """The frame shown `time_seconds` into the video (its last past the end), upright and small: a moment to show
    or to search from. Decodes from the keyframe before it; the same checks and bounds as `read_video`."""
    if not (math.isfinite(time_seconds) and time_seconds >= 0):
        raise InvalidArgument("time_seconds must be a number of seconds from the start, 0 or more")
    _check_min_side(min_side)
    with _opened(path) as (container, size, _):
        stream = _checked_stream(container)
        if _KeyframeIndex(container, stream).data_end > size:
            raise VideoUnreadable("the file is truncated: its index names data past its end")
        decoder = _Decoder(container, stream, min_side)
        try:
            sample = decoder.forward(time_seconds) or decoder.last_sample()
        except _BudgetSpent as spent:
            raise VideoUnreadable(f"the frame at {time_seconds:.3f} s was not reached within {spent}") from None
        if sample is None:
            raise VideoUnreadable(f"no frame could be decoded{decoder.error_note()}")
        return VideoFrame(round(sample.time, 3), sample.image)


def _check_min_side(min_side: int) -> None:
    if not 16 <= min_side <= 1024:
        raise InvalidArgument("min_side must be 16-1024 pixels")


@contextmanager
def _opened(path: Path) -> Iterator[tuple[av.container.InputContainer, int, int]]:
    """The video opened through the guards (a Python file object, the demuxer whitelist, no other files), with its
    size and mtime; every failure inside, FFmpeg's or the file's, becomes VideoUnreadable with its reason."""
    import av

    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise VideoUnreadable("file is empty")
            try:
                container = _open(av, handle)
            except av.FFmpegError as exc:
                raise VideoUnreadable(_open_failure(exc, handle)) from exc
            except _OtherFileRefused as exc:
                raise VideoUnreadable(str(exc)) from exc
            with container:
                try:
                    yield container, size, os.fstat(handle.fileno()).st_mtime_ns
                except (av.FFmpegError, ValueError, EOFError) as exc:  # ValueError: PyAV's own refusals
                    raise VideoUnreadable(f"cannot decode video ({_reason(exc)})") from exc
                except _OtherFileRefused as exc:
                    raise VideoUnreadable(str(exc)) from exc
    except OSError as exc:  # the file: permissions, vanished, a folder
        raise VideoUnreadable(f"cannot read file: {exc.strerror or exc}") from exc


def _open(av: Any, handle: Any) -> av.container.InputContainer:
    options = {"format_whitelist": ALLOWED_DEMUXERS}
    try:  # PyAV up to 18 decodes metadata strictly unless told; 19 drops the argument (surrogateescape instead)
        return av.open(handle, "r", options=options, io_open=_refuse_other_files, metadata_errors="replace")
    except TypeError:
        handle.seek(0)
        return av.open(handle, "r", options=options, io_open=_refuse_other_files)


class _OtherFileRefused(Exception):
    pass


def _refuse_other_files(url: str, flags: int, options: dict[str, str]) -> Any:
    """FFmpeg's hook for every file a demuxer opens besides the input (playlists' segments, reference movies)."""
    raise _OtherFileRefused(f"the video refers to another file ({url[:200]!r}); only the file itself is read")


def _reason(exc: BaseException) -> str:
    return first_line(exc)[:300]


def _open_failure(exc: BaseException, handle: Any) -> str:
    """Why FFmpeg would not open the file, in words (its own log is off, so the error code and the file tell)."""
    import errno

    if getattr(exc, "errno", None) == errno.EINVAL:  # what format_whitelist answers
        return "not a video container (a playlist, a list of other files, or a format not read as video)"
    kinds = _top_level_boxes(handle)
    if kinds and kinds[0] == b"ftyp" and b"moov" not in kinds:
        return "its index, the moov atom, is missing: the recording was not finished, or the file is cut short"
    return f"not a video FFmpeg can read ({_reason(exc)})"


def _top_level_boxes(handle: Any, limit: int = 1024) -> list[bytes]:
    """The kinds of an MP4/QuickTime file's top-level boxes (reading only their headers)."""
    kinds: list[bytes] = []
    try:
        end = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset + 8 <= end and len(kinds) < limit:
            handle.seek(offset)
            header = handle.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if size == 1 and len(header) == 16:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = end - offset
            if size < 8:
                break
            kinds.append(kind)
            offset += size
    except (OSError, ValueError):
        pass
    return kinds


def _read(
    container: av.container.InputContainer,
    size: int,
    mtime_ns: int,
    min_side: int,
    every_seconds: float,
    max_frames: int,
    scene_threshold: float,
) -> tuple[VideoInfo, list[VideoFrame]]:
    stream = _checked_stream(container)
    width, height = stream.codec_context.width, stream.codec_context.height
    index = _KeyframeIndex(container, stream)
    if index.data_end > size:
        raise VideoUnreadable(
            f"the file is truncated: its index names data up to byte {index.data_end}, the file has {size}"
        )
    duration = _duration(container, stream, index)
    decoder = _Decoder(container, stream, min_side)
    sampler = _Sampler(decoder, index, every_seconds, max_frames, scene_threshold)
    try:
        samples = sampler.run(duration)
    except _BudgetSpent as spent:
        samples = sampler.samples
        if not samples:
            raise VideoUnreadable(f"no frame could be decoded within {spent}") from None
        log.warning("video sampling stopped after %s; %d frames kept", spent, len(samples))
    kept = _without_black(samples)
    if not kept:
        raise VideoUnreadable(f"no frame could be decoded{decoder.error_note()}")
    first = kept[0]
    rotation = first.rotation
    shown_w, shown_h = decoder.display_size(width, height)
    if rotation in (90, 270):
        shown_w, shown_h = shown_h, shown_w
    fps = _fps(stream)
    info = VideoInfo(
        duration_seconds=duration,
        width=shown_w,
        height=shown_h,
        rotation=rotation,
        codec=stream.codec_context.name,
        fps=fps,
        metadata=video_metadata(container.metadata, mtime_ns, shown_w, shown_h),
    )
    return info, [VideoFrame(round(s.time, 3), s.image) for s in kept]


def _checked_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
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


def _fraction(value: Any) -> Fraction | None:
    """A PyAV rational (a Fraction up to 18, an AVRational from 19) as a Fraction; None when unset or zero."""
    try:
        result = Fraction(int(value.numerator), int(value.denominator))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return result or None


def _time_base(stream: av.video.stream.VideoStream) -> Fraction:
    return _fraction(stream.time_base) or Fraction(1, 90000)


def _fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = _fraction(stream.average_rate) or _fraction(stream.guessed_rate)
    value = float(rate) if rate else None
    return round(value, 3) if value is not None and 0 < value <= 10_000 else None


def _duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: _KeyframeIndex
) -> float | None:
    claimed: float | None = None
    if stream.duration:
        claimed = float(stream.duration * _time_base(stream))
    elif container.duration:
        claimed = container.duration / 1_000_000
    if claimed is not None and index.last_seconds is not None and claimed > index.last_seconds * 1.5 + 5:
        claimed = index.last_seconds + (1 / (_fps(stream) or 30))  # what the file holds, not what it says
    if claimed is None or not math.isfinite(claimed) or not 0 < claimed <= MAX_DURATION_SECONDS:
        return None
    return round(claimed, 3)


class _KeyframeIndex:
    """Keyframe times (seconds from the first frame) from the container's index: MP4's sample table and AVI's idx1
    list every frame, Matroska's cues (read at the first seek) its keyframes. Listed lazily: a 3-hour video's index
    holds hundreds of thousands of entries, and only short videos need the list."""

    LISTED_ENTRIES = 250_000

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        container.seek(stream.start_time or 0, stream=stream, backward=True)  # Matroska reads its cues here
        self.entries = stream.index_entries
        self.time_base = _time_base(stream)
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


class _BudgetSpent(Exception):
    pass


@dataclass
class _Sample:
    time: float
    image: Image.Image
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE x 3, int16
    rotation: int

    @property
    def black(self) -> bool:
        return int(self.thumb.max()) <= NEAR_BLACK

    def differs(self, other: _Sample, threshold: float) -> bool:
        return float(np.abs(self.thumb - other.thumb).mean()) / 255 > threshold


class _Decoder:
    """Frames at chosen times, decoded cheaply: a keyframe by a seek and one drained packet, or frames decoded
    forward from the keyframe before a time. Counts packets and decoded pixels against the bounds."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, min_side: int):
        self.container, self.stream, self.min_side = container, stream, min_side
        self.codec = stream.codec_context
        self.codec.thread_type = "AUTO"
        self.time_base = _time_base(stream)
        self.start = stream.start_time or 0
        self.packets = 0
        self.units = 0.0
        self.errors: list[str] = []
        self._demux: Iterator[Any] | None = None
        self._running = False  # decoding forward, not drained
        self._position = -math.inf  # time of the last frame decoded in this run
        self._pending: list[Any] = []
        self._last_seen: tuple[Any, int] | None = None  # the last frame decoded forward, and its pts
        sar = _fraction(stream.sample_aspect_ratio)
        self.aspect = float(sar) if sar and 0.25 <= sar <= 4 else 1.0

    def seconds(self, pts: int) -> float:
        return float((pts - self.start) * self.time_base)

    def _pts(self, seconds: float) -> int:
        return self.start + math.floor(seconds / self.time_base)

    def display_size(self, width: int, height: int) -> tuple[int, int]:
        return max(1, round(width * self.aspect)), height

    def error_note(self) -> str:
        return f" ({self.errors[-1]})" if self.errors else ""

    def _seek(self, seconds: float) -> None:
        self._stop()
        self.container.seek(max(self.start, self._pts(max(0.0, seconds))), stream=self.stream, backward=True)
        self._demux = self.container.demux(self.stream)

    def _stop(self) -> None:
        if self._running:
            self.codec.flush_buffers()
        self._running, self._position, self._pending = False, -math.inf, []

    def _next_packet(self) -> Any | None:
        if self._demux is None:
            self._demux = self.container.demux(self.stream)
        if self.packets >= MAX_PACKETS:
            raise _BudgetSpent(f"{MAX_PACKETS} packets")
        packet = next(self._demux, None)
        self.packets += 1
        return None if packet is None or packet.size == 0 else packet

    def _decode(self, packet: Any | None) -> list[Any]:
        import av

        try:
            frames = self.stream.decode(packet)
        except av.FFmpegError as exc:  # one damaged packet: its frame is lost, the rest may decode
            self.errors.append(first_line(exc))
            return []
        for frame in frames:
            if frame.width > MAX_SIDE or frame.height > MAX_SIDE:
                raise VideoUnreadable(f"a frame of {frame.width}x{frame.height} pixels is larger than allowed")
            self.units += frame.width * frame.height / _UNIT_PIXELS
        if self.units > MAX_DECODE_UNITS:
            raise _BudgetSpent(f"{MAX_DECODE_UNITS:.0f} frames of 1080p decoded")
        return frames

    def keyframe(self, seconds: float) -> _Sample | None:
        """The keyframe at or before `seconds`, or None past the end."""
        self._seek(seconds)
        while (packet := self._next_packet()) is not None:
            if not packet.is_keyframe:
                continue
            # Drained at once: otherwise the decoder keeps it until more pictures arrive.
            frames = self._decode(packet) + self._decode(None)
            self.codec.flush_buffers()
            if frames:
                return self._sample(frames[0], _first(packet.pts, frames[0].pts, packet.dts))
        return None

    def forward(self, seconds: float) -> _Sample | None:
        """The first frame from `seconds` (less half a frame), decoding every frame since the keyframe before it."""
        slack = 0.5 / (_fps(self.stream) or 30)
        if not self._running or self._position > seconds:
            self._seek(seconds)
            self._running = True
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                pts = _first(frame.pts, frame.dts)
                if pts is None:
                    continue
                self._last_seen = (frame, pts)
                self._position = self.seconds(pts)
                if self._position >= seconds - slack:
                    return self._sample(frame, pts)
            packet = self._next_packet()
            if packet is None:
                self._pending = self._decode(None)
                self.codec.flush_buffers()
                if not self._pending:
                    self._running, self._position = False, -math.inf
                    return None
                continue
            self._pending = self._decode(packet)

    def last_sample(self) -> _Sample | None:
        """The last frame `forward` decoded (the video's last, once it ran past the end)."""
        return self._sample(*self._last_seen) if self._last_seen else None

    def keyframes_in_one_pass(self, min_gap: float) -> Iterator[_Sample]:
        """The keyframes in file order, at least `min_gap` seconds apart (an all-intra file would otherwise have
        every frame decoded), for files without an index: only those key packets reach the decoder."""
        self._seek(0.0)
        self._running = True
        sent = -math.inf
        while (packet := self._next_packet()) is not None:
            pts = _first(packet.pts, packet.dts)
            if not packet.is_keyframe or pts is None or self.seconds(pts) < sent + min_gap:
                continue
            sent = self.seconds(pts)
            for frame in self._decode(packet):
                yield self._sample(frame, _first(frame.pts, frame.dts))
        for frame in self._decode(None):
            yield self._sample(frame, _first(frame.pts, frame.dts))
        self._stop()

    def _sample(self, frame: Any, pts: int | None) -> _Sample:
        seconds = self.seconds(pts) if pts is not None else 0.0
        width, height = self.display_size(frame.width, frame.height)
        scale = min(1.0, self.min_side / min(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = frame.reformat(width=target[0], height=target[1], format="rgb24", interpolation=_SCALING).to_image()
        rotation = _clockwise(frame.rotation)
        if rotation:
            image = image.transpose(_TRANSPOSE[rotation])
        thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.int16)
        return _Sample(max(0.0, seconds), image, thumb, rotation)


_TRANSPOSE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}


def _clockwise(counter_clockwise: Any) -> int:
    """FFmpeg's display rotation (degrees counter-clockwise) as the clockwise turn that makes it upright."""
    try:
        degrees = float(counter_clockwise or 0)
    except (TypeError, ValueError):
        return 0
    if not math.isfinite(degrees) or round(degrees) % 90:
        return 0
    return round(-degrees) % 360


class _Sampler:
    def __init__(
        self, decoder: _Decoder, index: _KeyframeIndex, every: float, max_frames: int, threshold: float
    ) -> None:
        self.decoder, self.index = decoder, index
        self.every, self.max_frames, self.threshold = every, max_frames, threshold
        self.samples: list[_Sample] = []

    def run(self, duration: float | None) -> list[_Sample]:
        if duration is None or not self.index.covers(duration):
            self._one_pass()
            return self.samples
        count = math.ceil(duration / self.every)
        dense = count <= self.max_frames
        targets = (
            [i * self.every for i in range(count)]
            if dense
            else [i * duration / self.max_frames for i in range(self.max_frames)]
        )
        keyframes = self.index.keyframes()
        for target in targets:
            sample = self._at(target, keyframes)
            if sample is not None and (not self.samples or sample.time > self.samples[-1].time):
                self.samples.append(sample)
            if target == 0 and self.samples and self.samples[0].black:
                self._past_black_start(keyframes)
        if dense and keyframes is not None:
            self._scene_changes(keyframes)
        self.samples.sort(key=lambda s: s.time)
        return self.samples

    def _at(self, target: float, keyframes: list[float] | None) -> _Sample | None:
        """The keyframe at or before `target` if newer than the last sample, else the frame at `target` decoded
        forward (keyframes further apart than the targets); None where the last sample is close enough."""
        last = self.samples[-1].time if self.samples else -math.inf
        if target - last < self.every / 2:
            return None  # a fade-in's replacement, or a late keyframe, already stands for this target
        before = _latest(keyframes, target) if keyframes is not None else None
        if before is not None and before <= last + 1e-3:
            return self.decoder.forward(target)
        sample = self.decoder.keyframe(target)
        if sample is not None and sample.time <= last + 1e-3:
            return self.decoder.forward(target)
        return sample

    def _past_black_start(self, keyframes: list[float] | None) -> None:
        """A black first frame (a fade-in): the first frame within a few seconds that is not black replaces it."""
        window = FADE_WINDOW_SECONDS
        candidates = [k for k in keyframes if 0 < k <= window] if keyframes is not None else []
        for time in candidates:
            sample = self.decoder.keyframe(_towards_next(keyframes or [], time))
            if sample is not None and not sample.black and sample.time > 0:
                self.samples[0] = sample
                return
        if candidates:
            return  # black at every keyframe of the first seconds: the frames between will be too
        step = FADE_STEP_SECONDS
        for i in range(1, int(window / step) + 1):
            sample = self.decoder.forward(i * step)
            if sample is None:
                return
            if not sample.black:
                self.samples[0] = sample
                return

    def _scene_changes(self, keyframes: list[float]) -> None:
        for left, right in itertools.pairwise(list(self.samples)):
            if len(self.samples) >= self.max_frames:
                return
            if left.differs(right, self.threshold):
                self._bisect(left, right, keyframes)

    def _bisect(self, left: _Sample, right: _Sample, keyframes: list[float]) -> list[_Sample]:
        """Adds (and returns) the first keyframe of each scene that begins between two samples that differ."""
        # The index's times are decoding times, a frame or two before the shown ones: keyframes that close to a
        # sample are the sample itself.
        slack = 1.5 / (_fps(self.decoder.stream) or 30)
        between = [k for k in keyframes if left.time + slack < k < right.time - slack]
        if not between or len(self.samples) >= self.max_frames:
            return []
        sample = self.decoder.keyframe(_towards_next(keyframes, between[len(between) // 2]))
        if sample is None or not left.time < sample.time < right.time:
            return []
        found = self._bisect(left, sample, keyframes) if left.differs(sample, self.threshold) else []
        previous = found[-1] if found else left
        if previous.differs(sample, self.threshold) and not sample.black and len(self.samples) < self.max_frames:
            found.append(sample)
            self.samples.append(sample)
        if sample.differs(right, self.threshold):
            found.extend(self._bisect(sample, right, keyframes))
        return found

    def _one_pass(self) -> None:
        """No index or no duration: every keyframe is seen once; kept at scene changes and every `every`."""
        previous: _Sample | None = None
        for sample in self.decoder.keyframes_in_one_pass(min_gap=self.every / 4):
            last = self.samples[-1] if self.samples else None
            if last is not None and last.black and not sample.black and len(self.samples) == 1:
                self.samples[0] = sample  # past a black start
            elif (
                last is None
                or sample.time >= last.time + self.every - 1e-3
                or (previous is not None and previous.differs(sample, self.threshold))
            ) and (last is None or sample.time > last.time):
                self.samples.append(sample)
            previous = sample
            if len(self.samples) >= self.max_frames:
                return


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _towards_next(keyframes: list[float], time: float) -> float:
    """Where to seek for the keyframe listed at `time`: half-way to the next one, as the index's times are decoding
    times, up to a few frames before the keyframe is shown (a seek to the listed time lands on the one before)."""
    position = bisect.bisect_right(keyframes, time + 1e-3)
    after = keyframes[position] if position < len(keyframes) else time + 1.0
    return (time + after) / 2


def _latest(times: list[float], target: float) -> float | None:
    position = bisect.bisect_right(times, target + 1e-3)
    return times[position - 1] if position else None


def _without_black(samples: list[_Sample]) -> list[_Sample]:
    kept = [s for s in samples if not s.black]
    return kept or samples[:1]


# Metadata.
