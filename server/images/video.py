"""Video files: frames sampled at known times (upright RGB, decoded small) and the container's metadata
(`read_video`), and the frame at a given moment (`read_frame`).

Sampling (`video_sampling`): a target every `every_seconds` (at most `max_frames`, spread), each served by the
keyframe before it or decoded forward from it, then the first keyframe of each scene change between samples;
near-black frames are not kept.

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

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from server.errors import InvalidArgument, VideoUnreadable, first_line
from server.images.metadata import PhotoMetadata
from server.images.video_metadata import video_metadata
from server.images.video_probe import MAX_DURATION_SECONDS as MAX_DURATION_SECONDS
from server.images.video_probe import (
    MAX_SIDE,
    KeyframeIndex,
    checked_stream,
    duration_seconds,
    fraction,
    frames_per_second,
    time_base,
)
from server.images.video_sampling import FADE_STEP_SECONDS as FADE_STEP_SECONDS
from server.images.video_sampling import FADE_WINDOW_SECONDS as FADE_WINDOW_SECONDS
from server.images.video_sampling import Sampler, without_black

if TYPE_CHECKING:
    import av.container
    import av.video

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".3gp"})
# Demuxers allowed (FFmpeg matches any of a demuxer's comma-separated names): no playlists, concat lists, images.
ALLOWED_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
MAX_PACKETS = 100_000  # packets read per video; a 4-minute 240 fps slow-motion clip holds 57,600
MAX_DECODE_UNITS = 1500.0  # frames of 1920x1080 decoded per video, a 4K frame counting 4 (30-60 s of decoding here)
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
        stream = checked_stream(container)
        if KeyframeIndex(container, stream).data_end > size:
            raise VideoUnreadable("the file is truncated: its index names data past its end")
        decoder = Decoder(container, stream, min_side)
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
    stream = checked_stream(container)
    width, height = stream.codec_context.width, stream.codec_context.height
    index = KeyframeIndex(container, stream)
    if index.data_end > size:
        raise VideoUnreadable(
            f"the file is truncated: its index names data up to byte {index.data_end}, the file has {size}"
        )
    duration = duration_seconds(container, stream, index)
    decoder = Decoder(container, stream, min_side)
    sampler = Sampler(decoder, index, every_seconds, max_frames, scene_threshold)
    try:
        samples = sampler.run(duration)
    except _BudgetSpent as spent:
        samples = sampler.samples
        if not samples:
            raise VideoUnreadable(f"no frame could be decoded within {spent}") from None
        log.warning("video sampling stopped after %s; %d frames kept", spent, len(samples))
    kept = without_black(samples)
    if not kept:
        raise VideoUnreadable(f"no frame could be decoded{decoder.error_note()}")
    first = kept[0]
    rotation = first.rotation
    shown_w, shown_h = decoder.display_size(width, height)
    if rotation in (90, 270):
        shown_w, shown_h = shown_h, shown_w
    fps = frames_per_second(stream)
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


class _BudgetSpent(Exception):
    pass


@dataclass
class Sample:
    time: float
    image: Image.Image
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE x 3, int16
    rotation: int

    @property
    def black(self) -> bool:
        return int(self.thumb.max()) <= NEAR_BLACK

    def differs(self, other: Sample, threshold: float) -> bool:
        return float(np.abs(self.thumb - other.thumb).mean()) / 255 > threshold


class Decoder:
    """Frames at chosen times, decoded cheaply: a keyframe by a seek and one drained packet, or frames decoded
    forward from the keyframe before a time. Counts packets and decoded pixels against the bounds."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, min_side: int):
        self.container, self.stream, self.min_side = container, stream, min_side
        self.codec = stream.codec_context
        self.codec.thread_type = "AUTO"
        self.time_base = time_base(stream)
        self.start = stream.start_time or 0
        self.packets = 0
        self.units = 0.0
        self.errors: list[str] = []
        self._demux: Iterator[Any] | None = None
        self._running = False  # decoding forward, not drained
        self._position = -math.inf  # time of the last frame decoded in this run
        self._pending: list[Any] = []
        self._last_seen: tuple[Any, int] | None = None  # the last frame decoded forward, and its pts
        sar = fraction(stream.sample_aspect_ratio)
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

    def keyframe(self, seconds: float) -> Sample | None:
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

    def forward(self, seconds: float) -> Sample | None:
        """The first frame from `seconds` (less half a frame), decoding every frame since the keyframe before it."""
        slack = 0.5 / (frames_per_second(self.stream) or 30)
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

    def last_sample(self) -> Sample | None:
        """The last frame `forward` decoded (the video's last, once it ran past the end)."""
        return self._sample(*self._last_seen) if self._last_seen else None

    def keyframes_in_one_pass(self, min_gap: float) -> Iterator[Sample]:
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

    def _sample(self, frame: Any, pts: int | None) -> Sample:
        seconds = self.seconds(pts) if pts is not None else 0.0
        width, height = self.display_size(frame.width, frame.height)
        scale = min(1.0, self.min_side / min(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = frame.reformat(width=target[0], height=target[1], format="rgb24", interpolation=_SCALING).to_image()
        rotation = _clockwise(frame.rotation)
        if rotation:
            image = image.transpose(_TRANSPOSE[rotation])
        thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.int16)
        return Sample(max(0.0, seconds), image, thumb, rotation)


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


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)
