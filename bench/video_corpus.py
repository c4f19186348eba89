"""Generated test videos with planted scenes at known times, written with PyAV, the same on every run.

    python -m bench.video_corpus /tmp/video-corpus [--width 320 --height 240 --fps 10]

Each scene is a solid colour with its own shape in the middle and a white bar along the upright top (so a frame
shows which scene it came from and which way is up). Videos: H.264 (`libx264`) or HEVC (`libx265`), landscape or
portrait as phones store it (landscape pixels plus a display matrix: FFmpeg's -90 degrees), QuickTime
metadata atoms (`com.apple.quicktime.*` keys through the mov muxer's `use_metadata_tags`), an optional black
fade-in, and `textured` scenes (panned detail, for realistic decoding cost in benchmarks). The bad ones: truncated,
zero-length, audio-only `.mp4`, moov atom missing, random bytes, playlists naming another file, AVIs claiming
absurd sizes (raw video: FFmpeg has nothing else to go by; an H.264 or HEVC stream's own header overrides a
container's claim), and MP4s whose sample table claims a billion frames or frames lasting days (FFmpeg ignores the
movie and media headers' durations for it).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

SHAPES = ("circle", "square", "triangle", "stripes", "cross", "ring")
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (210, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 70, 210)),
    ("yellow", (220, 200, 40)),
    ("magenta", (190, 50, 180)),
    ("cyan", (40, 190, 200)),
)
MARKER = (255, 255, 255)  # the bar along the upright top of every scene
MARKER_FRACTION = 0.12  # of the upright height
APPLE_METADATA = {
    "com.apple.quicktime.creationdate": "2023-07-14T18:30:05+0200",
    "com.apple.quicktime.location.ISO6709": "+48.8577+002.2950+035.000/",
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 15 Pro",
    "creation_time": "2023-07-14T16:30:05.000000Z",
}
ANDROID_METADATA = {
    "creation_time": "2024-02-03T09:15:00.000000Z",
    "location": "+37.4219-122.0840/",
    "com.android.manufacturer": "Google",
    "com.android.model": "Pixel 8",
}
_X265_QUIET = "log-level=error"


@dataclass(frozen=True)
class Scene:
    start: float  # seconds
    end: float
    name: str  # the colour's name
    colour: tuple[int, int, int]
    shape: str

    def holds(self, seconds: float) -> bool:
        return self.start <= seconds < self.end


@dataclass(frozen=True)
class PlantedVideo:
    path: Path
    scenes: tuple[Scene, ...]
    width: int  # upright, as a viewer shows it
    height: int
    fps: int
    codec: str
    rotation: int  # degrees clockwise a viewer turns the stored pixels (the display matrix says -rotation)
    duration: float
    fade_in: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    def scene_at(self, seconds: float) -> Scene | None:
        return next((scene for scene in self.scenes if scene.holds(seconds)), None)


def planted_scenes(durations: tuple[float, ...] = (4.0, 5.0, 3.0, 6.0)) -> tuple[Scene, ...]:
    """Scenes back to back: red 0-4 s, green 4-9 s, blue 9-12 s, yellow 12-18 s for the default durations."""
    scenes, start = [], 0.0
    for index, length in enumerate(durations):
        name, colour = PALETTE[index % len(PALETTE)]
        scenes.append(Scene(start, start + length, name, colour, SHAPES[index % len(SHAPES)]))
        start += length
    return tuple(scenes)


def scene_picture(scene: Scene, width: int, height: int) -> np.ndarray:
    """The upright picture of a scene (height x width x 3, uint8): colour, shape, top marker."""
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = scene.colour
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy, r = width / 2, height * 0.56, min(width, height) * 0.22
    dx, dy = xs - cx, ys - cy
    if scene.shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif scene.shape == "square":
        mask = (abs(dx) <= r) & (abs(dy) <= r)
    elif scene.shape == "triangle":
        mask = (dy <= r) & (dy >= -r) & (abs(dx) <= (dy + r) / 2)
    elif scene.shape == "stripes":
        mask = (abs(dy) <= r) & (abs(dx) <= r) & ((xs // max(1, int(r / 3))) % 2 == 0)
    elif scene.shape == "cross":
        mask = ((abs(dx) <= r / 4) & (abs(dy) <= r)) | ((abs(dy) <= r / 4) & (abs(dx) <= r))
    else:  # ring
        mask = (dx**2 + dy**2 <= r**2) & (dx**2 + dy**2 >= (r * 0.6) ** 2)
    picture[mask] = (20, 20, 20)
    picture[: max(2, round(height * MARKER_FRACTION))] = MARKER
    return picture


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random detail in [-40, 40]: coarse noise upscaled, so encoders and decoders do real work."""
    coarse = rng.normal(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    fine = np.kron(coarse, np.ones((16, 16), np.float32))[:height, :width]
    grain = rng.normal(0, 0.35, (height, width)).astype(np.float32)
    return np.clip((fine + grain) * 22, -40, 40).astype(np.int16)


def _encoder_stream(container: av.container.OutputContainer, codec: str, fps: int, keyint: int) -> av.VideoStream:
    stream = container.add_stream(codec, rate=fps)
    stream.pix_fmt = "yuv420p"
    stream.gop_size = keyint
    if codec == "libx264":
        stream.options = {"preset": "veryfast", "crf": "26", "keyint_min": str(min(keyint, fps))}
    elif codec == "libx265":
        stream.options = {"preset": "ultrafast", "crf": "30", "x265-params": f"keyint={keyint}:{_X265_QUIET}"}
    elif codec == "libvpx-vp9":
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "0"}
    elif codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only
        stream.options = {"preset": "12", "crf": "45", "svtav1-params": f"keyint={keyint}"}
    return stream


def write_video(
    path: Path,
    scenes: tuple[Scene, ...] | None = None,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 10,
    codec: str = "libx264",
    rotation: int = 0,
    keyint_seconds: float = 1.0,
    metadata: dict[str, str] | None = None,
    fade_in: float = 0.0,
    textured: bool = False,
    faststart: bool = False,
    muxer_options: dict[str, str] | None = None,
) -> PlantedVideo:
    """Write one video of the scenes, `width` x `height` pixels as stored. With `rotation` (90, 180, 270) the scenes
    are stored turned that much counter-clockwise, with a display matrix saying to turn them back clockwise:
    `rotation=90` is what an iPhone held upright records (FFmpeg reports the matrix as -90 degrees), its scenes
    drawn upright `height` x `width`, taller than wide. Keyframes every `keyint_seconds` (phones: about
    1 s); the first `fade_in` seconds are near-black, fading into the first scene. The container follows the
    suffix (.mp4 .mov .m4v .3gp .mkv .webm .avi); `muxer_options` go to its muxer (WebM's `live`: no cues)."""
    scenes = scenes or planted_scenes()
    metadata = dict(metadata or {})
    duration = scenes[-1].end
    options: dict[str, str] = {}
    flags = []
    if any(key.startswith("com.") for key in metadata):
        flags.append("use_metadata_tags")  # mdta keys, as iPhones write them
    if faststart:
        flags.append("faststart")
    if flags:
        options["movflags"] = "+".join(flags)
    options.update(muxer_options or {})
    if rotation not in (0, 90, 180, 270):
        raise ValueError("rotation is 0, 90, 180 or 270 degrees")
    upright_width, upright_height = (height, width) if rotation in (90, 270) else (width, height)
    rng = np.random.default_rng(23)
    pictures = {scene: scene_picture(scene, upright_width, upright_height) for scene in scenes}
    pan = fps * 8
    textures = {scene: _texture(rng, upright_height, upright_width + pan) for scene in scenes} if textured else {}
    with av.open(str(path), "w", options=options) as container:
        container.metadata.update(metadata)
        stream = _encoder_stream(container, codec, fps, max(1, round(keyint_seconds * fps)))
        stream.width, stream.height = width, height
        if path.suffix.lower() == ".avi":
            stream.max_b_frames = 0  # AVI keeps no presentation times; B-frames there get them guessed
        if rotation:
            stream.set_display_rotation(-rotation)  # FFmpeg's angle is counter-clockwise
        for index in range(round(duration * fps)):
            seconds = index / fps
            scene = next(s for s in scenes if s.holds(seconds) or s is scenes[-1])
            upright = pictures[scene]
            if textured:
                shift = (index * 4) % pan
                detail = textures[scene][:, shift : shift + upright_width]
                upright = np.clip(upright.astype(np.int16) + detail[:, :, None], 0, 255).astype(np.uint8)
            if seconds < fade_in:
                upright = (upright.astype(np.float32) * (seconds / fade_in) ** 2 * 0.08).astype(np.uint8)
            stored = np.ascontiguousarray(np.rot90(upright, rotation // 90)) if rotation else upright
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return PlantedVideo(path, scenes, upright_width, upright_height, fps, codec, rotation, duration, fade_in, metadata)


# The bad ones.


def write_zero_length(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_random_bytes(path: Path, size: int = 64 * 1024) -> Path:
    path.write_bytes(np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_truncated(path: Path, keep: float = 0.4) -> Path:
    """A video whose index (moov, written first) promises more samples than the file holds: a copy cut short."""
    write_video(path, faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_moov_missing(path: Path) -> Path:
    """An MP4 whose index (the moov atom, written last) is gone: a recording that stopped before it was closed."""
    write_video(path)
    data = path.read_bytes()
    moov = next(box for box in mp4_boxes(data) if box.kind == b"moov")
    path.write_bytes(data[: moov.start])
    return path


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An `.mp4` holding only an AAC audio track."""
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_concat_playlist(path: Path, target: Path) -> Path:
    """A file named like a video that is really an FFmpeg concat list naming another file (relative, as the
    concat demuxer's 'safe' mode allows)."""
    path.write_text(f"ffconcat version 1.0\nfile '{target.name}'\n", encoding="utf-8")
    return path


def write_hls_playlist(path: Path, segment: Path) -> Path:
    """An HLS playlist naming a segment file (FFmpeg detects it by content once named .m3u8; named as a video it
    must still never be followed)."""
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:20\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:18.0,\n{segment.name}\n#EXT-X-ENDLIST\n",
        encoding="utf-8",
    )
    return path


def write_mpegts(path: Path) -> PlantedVideo:
    """The planted scenes in an MPEG transport stream (an HLS segment's format)."""
    scenes = planted_scenes()
    with av.open(str(path), "w", format="mpegts") as container:
        stream = _encoder_stream(container, "libx264", 10, 10)
        stream.width, stream.height = 320, 240
        pictures = {scene: scene_picture(scene, 320, 240) for scene in scenes}
        for index in range(round(scenes[-1].end * 10)):
            scene = next(s for s in scenes if s.holds(index / 10) or s is scenes[-1])
            frame = av.VideoFrame.from_ndarray(pictures[scene], format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return PlantedVideo(path, scenes, 320, 240, 10, "libx264", 0, scenes[-1].end)


def write_claimed_size_avi(path: Path, width: int, height: int) -> Path:
    """An AVI of 32x32 raw frames whose headers claim `width` x `height` (raw video has no other size to go by)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 100, np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    strf, avih = data.index(b"strf"), data.index(b"avih")
    struct.pack_into("<ii", data, strf + 12, width, height)  # BITMAPINFOHEADER biWidth, biHeight
    struct.pack_into("<II", data, avih + 8 + 32, width, height)  # AVIMAINHEADER dwWidth, dwHeight
    path.write_bytes(bytes(data))
    return path


@dataclass(frozen=True)
class Box:
    kind: bytes
    start: int  # offset of the box's header
    body: int  # offset of its payload
    end: int


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """Every box of an MP4/QuickTime file, depth first (the few container boxes we patch into, and stsd's
    sample entries)."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = offset + 8
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
            body += 8
        elif size == 0:
            size = end - offset
        if size < 8 or offset + size > end:
            return
        yield Box(kind, offset, body, offset + size)
        if kind in _CONTAINERS:
            yield from mp4_boxes(data, body, offset + size)
        elif kind == b"stsd":
            yield from mp4_boxes(data, body + 8, offset + size)  # version/flags and entry count first
        offset += size


def patch_frame_count(path: Path, frames: int, ticks_per_frame: int | None = None) -> Path:
    """Make the time-to-sample table (stts) claim `frames` frames (and, with `ticks_per_frame`, that each lasts
    that long): a billion-frame claim over a few kilobytes of pictures."""
    data = bytearray(path.read_bytes())
    for box in mp4_boxes(bytes(data)):
        if box.kind == b"stts":
            count = struct.unpack_from(">I", data, box.body + 4)[0]
            for entry in range(count):
                at = box.body + 8 + entry * 8
                struct.pack_into(">I", data, at, min(frames, 0xFFFFFFFF) if entry == 0 else 0)
                if ticks_per_frame is not None:
                    struct.pack_into(">I", data, at + 4, ticks_per_frame)
    path.write_bytes(bytes(data))
    return path


def patch_text(path: Path, placeholder: bytes, replacement: bytes) -> Path:
    """Overwrite a metadata value in place (same length), e.g. with bytes that are not UTF-8."""
    data = path.read_bytes()
    assert len(placeholder) == len(replacement) and placeholder in data
    path.write_bytes(data.replace(placeholder, replacement))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    size = {"width": args.width, "height": args.height, "fps": args.fps}
    written = [
        write_video(args.folder / "landscape-h264.mp4", **size, metadata=APPLE_METADATA),
        write_video(args.folder / "landscape-hevc.mov", **size, codec="libx265", metadata=APPLE_METADATA),
        write_video(args.folder / "portrait-h264.mp4", **size, rotation=90, metadata=ANDROID_METADATA),
        write_video(args.folder / "portrait-hevc.mov", **size, codec="libx265", rotation=90),
    ]
    manifest = [
        {**asdict(video), "path": video.path.name, "scenes": [asdict(scene) for scene in video.scenes]}
        for video in written
    ]
    (args.folder / "videos.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    print(f"{len(written)} videos in {args.folder}")


if __name__ == "__main__":
    main()
