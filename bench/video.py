"""Videos (issue 23): planted scenes found at their moment, indexing speed against real time, and sampled frames
embedded against photos of the same size, all through `ClipSearch.index_folder`.

    python -m bench.video --json [--quick] [--corpus DIR] [--model DIR]

- retrieval: four videos (H.264 and HEVC, landscape and portrait by rotation, 640x360 stored, 30 fps), each with
  four planted scenes of its own colours; a still of each scene, decoded independently (PyAV, every frame, the one
  at the scene's middle, turned upright by hand, saved as a JPEG), is searched for: its video at rank 1 with
  `time_seconds` inside the scene, each video listed once. Run with the random ViT-B/32 (ONNX fp32) and with the
  tests' colour encoder (tests/conftest.py `FakeEncoder`), since random weights say little about meaning.
- speed: 60 s clips, 1080p H.264 and 4K HEVC (textured scenes, 30 fps, keyframes every second), each encoded at a
  phone's bitrate and at the generator's constant quality (`crf`), each indexed in its own process: `read_video`
  alone (decode-only) and the whole `index_folder` (hash, sample, preprocess, embed, commit), model loaded
  beforehand; real time factor = video seconds / wall seconds; CPU seconds (steadier on a shared machine); peak RSS
  of that process (VmHWM).
- frames vs photos: in one process, alternately, a folder of N JPEGs (q90, 1920x1080: the 1080p clip's own frames
  at the sampled times) and the 1080p clip, which yields N frames (counted in the catalog's `frames` table):
  images/s against frames/s, and decoding alone (a photo as the indexer decodes it against `read_video` per frame).

Generated clips are kept in `--corpus` (default: a folder in the temp dir), as the 4K one takes minutes to write:
a 6 s segment (two 3 s scenes) is encoded, then its packets are repeated to the full length. `--quick`: 12 s clips,
one run per speed measurement, for a smoke run. OCR is off (`ocr="off"`); the ONNX export is made before anything
is timed.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from bench import video_corpus
from bench.common import emit, machine, proc_status_mb
from bench.video_corpus import Scene, write_video

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_SECONDS = 6.0
FPS = 30
# name -> how it is written. Phones record about 10-20 Mbps at 1080p and 40-60 at 4K; asked for (average bitrate),
# the encoder spends most of it on keyframes, as the scenes' detail only pans (each frame predicts the next
# exactly): keyframes of 1-4 MB, the worst case for sampling at keyframes. The `crf` clips keep the generator's
# constant quality: 3-4 Mbps, keyframes of 0.3-0.7 MB, nearer a phone's (its bits spread over every frame).
SPEED_CLIPS: dict[str, dict[str, Any]] = {
    "1080p_h264": {"width": 1920, "height": 1080, "codec": "libx264", "suffix": ".mp4", "mbps": 16},
    "1080p_h264_crf": {"width": 1920, "height": 1080, "codec": "libx264", "suffix": ".mp4", "mbps": None},
    "4k_hevc": {"width": 3840, "height": 2160, "codec": "libx265", "suffix": ".mov", "mbps": 45},
    "4k_hevc_crf": {"width": 3840, "height": 2160, "codec": "libx265", "suffix": ".mov", "mbps": None},
}
RETRIEVAL_VIDEOS = (  # name, codec, rotation, scene lengths
    ("landscape-h264.mp4", "libx264", 0, (4.0, 5.0, 3.0, 6.0)),
    ("landscape-hevc.mov", "libx265", 0, (5.0, 3.0, 6.0, 4.0)),
    ("portrait-h264.mp4", "libx264", 90, (3.0, 6.0, 4.0, 5.0)),
    ("portrait-hevc.mov", "libx265", 90, (6.0, 4.0, 5.0, 3.0)),
)


# The corpus.


@contextmanager
def bitrate(mbps: float) -> Iterator[None]:
    """video_corpus encodes at a constant quality (3-4 Mbps on textured scenes); phones spend a bitrate, so the
    encoder is given one (average bitrate mode) instead, for as long as this lasts."""
    original = video_corpus._encoder_stream

    def at_bitrate(container: Any, codec: str, fps: int, keyint: int) -> Any:
        stream = original(container, codec, fps, keyint)
        stream.options = {key: value for key, value in stream.options.items() if key != "crf"}
        stream.bit_rate = int(mbps * 1_000_000)
        return stream

    video_corpus._encoder_stream = at_bitrate
    try:
        yield
    finally:
        video_corpus._encoder_stream = original


def repeated(segment: Path, target: Path, times: int) -> None:
    """`target`: the segment's packets `times` over, each repeat shifted by its duration (the same decoding work
    as a clip that long, for a fraction of the encoding)."""
    import av

    with av.open(str(segment)) as source, av.open(str(target), "w") as out:
        stream = source.streams.video[0]
        out_stream = out.add_stream_from_template(stream)
        shift = round(SEGMENT_SECONDS / stream.time_base)
        for repeat in range(times):
            source.seek(0, stream=stream)
            for packet in source.demux(stream):
                if packet.size == 0:
                    continue
                packet.pts += repeat * shift
                packet.dts += repeat * shift
                packet.stream = out_stream
                out.mux(packet)


def speed_clip(corpus: Path, name: str, seconds: float) -> tuple[Path, float]:
    """The clip (written once, then kept) and the seconds it took to write now (0 when kept)."""
    spec = SPEED_CLIPS[name]
    target = corpus / f"{name}-{seconds:.0f}s{spec['suffix']}"
    if target.exists():
        return target, 0.0
    started = time.perf_counter()
    segment = corpus / f"{name}-segment{spec['suffix']}"
    if not segment.exists():
        scenes = video_corpus.planted_scenes((SEGMENT_SECONDS / 2, SEGMENT_SECONDS / 2))
        partial = segment.with_name("partial-" + segment.name)
        with bitrate(spec["mbps"]) if spec["mbps"] else nullcontext():
            write_video(
                partial, scenes, width=spec["width"], height=spec["height"], fps=FPS, codec=spec["codec"], textured=True
            )
        partial.rename(segment)
    partial = target.with_name("partial-" + target.name)
    repeated(segment, partial, round(seconds / SEGMENT_SECONDS))
    partial.rename(target)
    return target, time.perf_counter() - started


def distinct_scenes(video: int, lengths: tuple[float, ...]) -> tuple[Scene, ...]:
    """Scenes back to back in colours no other video has (16 hues around the wheel, interleaved)."""
    scenes, start = [], 0.0
    for index, length in enumerate(lengths):
        hue = (video + index * len(RETRIEVAL_VIDEOS)) / (len(RETRIEVAL_VIDEOS) * len(lengths))
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.85)
        colour = (round(red * 255), round(green * 255), round(blue * 255))
        shape = video_corpus.SHAPES[(video + index) % len(video_corpus.SHAPES)]
        scenes.append(Scene(start, start + length, f"v{video}s{index}", colour, shape))
        start += length
    return tuple(scenes)


def upright_frames(path: Path) -> Iterator[tuple[float, Any]]:
    """Every frame of a video as (seconds, upright PIL image), by PyAV alone: independent of images/video.py."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for frame in container.decode(stream):
            pixels = frame.to_ndarray(format="rgb24")
            turns = round((frame.rotation or 0) / 90)  # FFmpeg's angle, counter-clockwise, as np.rot90 counts
            from PIL import Image

            image = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels)
            yield float((frame.pts - start) * stream.time_base), image


def retrieval_corpus(corpus: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The four planted videos in a folder of their own, and a still per scene (path, video, scene span)."""
    folder, stills_dir = corpus / "planted", corpus / "stills"
    folder.mkdir(parents=True, exist_ok=True)
    stills_dir.mkdir(exist_ok=True)
    stills = []
    for number, (name, codec, rotation, lengths) in enumerate(RETRIEVAL_VIDEOS):
        scenes = distinct_scenes(number, lengths)
        path = folder / name
        if not path.exists():
            partial = folder / ("partial-" + name)
            write_video(partial, scenes, width=640, height=360, fps=FPS, codec=codec, rotation=rotation)
            partial.rename(path)
        wanted = {scene.name: (scene.start + scene.end) / 2 for scene in scenes}
        missing = {n for n in wanted if not (stills_dir / f"{path.stem}-{n}.jpg").exists()}
        if missing:
            for seconds, image in upright_frames(path):
                for scene_name in list(missing):
                    if seconds >= wanted[scene_name] - 0.5 / FPS:
                        image.save(stills_dir / f"{path.stem}-{scene_name}.jpg", "JPEG", quality=90)
                        missing.discard(scene_name)
                if not missing:
                    break
        for scene in scenes:
            still = stills_dir / f"{path.stem}-{scene.name}.jpg"
            stills.append({"still": still, "video": name, "start": scene.start, "end": scene.end})
    return folder, stills


def exported_photos(clip: Path, corpus: Path) -> tuple[Path, int]:
    """The clip's own frames at the times the indexer samples, as 1920x1080 JPEGs (q90), in a folder."""
    from server.images.video import read_video

    _, frames = read_video(clip, min_side=224)
    times = [frame.time_seconds for frame in frames]
    folder = corpus / f"photos-{clip.stem}"
    if len(list(folder.glob("*.jpg"))) != len(times):
        folder.mkdir(exist_ok=True)
        pending = list(enumerate(times))
        for seconds, image in upright_frames(clip):
            while pending and seconds >= pending[0][1] - 0.5 / FPS:
                number, _ = pending.pop(0)
                image.save(folder / f"frame-{number:03d}.jpg", "JPEG", quality=90)
            if not pending:
                break
    return folder, len(times)


# Measuring.


def service(model: str, index_dir: Path, encoder: Any = None) -> Any:
    from server.config import Settings
    from server.service import ClipSearch

    name = encoder.model_name if encoder is not None else model
    return ClipSearch(Settings(index_dir=index_dir, model=name, engine="onnx"), encoder=encoder)


def warmed(model: str, index_dir: Path) -> Any:
    """A service whose ONNX model is loaded (exported on the first run) and has run a batch, before any timing."""
    clip = service(model, index_dir)
    encoder = clip.encoder
    encoder.encode_pixels(np.zeros((32, 3, encoder.input_size, encoder.input_size), np.float32))
    return clip


def retrieval(clip: Any, folder: Path, stills: list[dict[str, Any]], collection: str) -> dict[str, Any]:
    report = clip.index_folder(folder, collection=collection, ocr="off")
    k = len(RETRIEVAL_VIDEOS)
    rank1 = in_span = once = 0
    misses = []
    for item in stills:
        hits = clip.search_image(item["still"], k=k, collection=collection).results
        paths = [Path(hit.path).name for hit in hits]
        once += len(paths) == len(set(paths))
        first = hits[0]
        right_video = paths[0] == item["video"]
        inside = right_video and first.time_seconds is not None and item["start"] <= first.time_seconds < item["end"]
        rank1 += right_video
        in_span += inside
        if not inside:
            misses.append(
                {
                    "still": item["still"].name,
                    "got": paths[0],
                    "at": first.time_seconds,
                    "span": [item["start"], item["end"]],
                }
            )
    return {
        "videos": report.embedded,
        "frames": frames_in(clip, collection),
        "stills": len(stills),
        "rank1_video": round(rank1 / len(stills), 3),
        "rank1_in_scene": round(in_span / len(stills), 3),
        "each_video_once": round(once / len(stills), 3),
        "misses": misses[:8],
    }


def frames_in(clip: Any, collection: str) -> int:
    import sqlite3

    with sqlite3.connect(clip.collection(collection).folder / "catalog.sqlite") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0])


def warm_file_cache(path: Path) -> None:
    """Read the file once, in pieces (whole, its bytes would count in the peak RSS): the OS cache holds it for
    every run alike."""
    with open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass


def child_speed(model: str, clip_path: Path, duration: float, repeats: int) -> dict[str, Any]:
    """In its own process: decode-only and whole indexing of one clip, alternately, `repeats` times."""
    from server.images.video import read_video

    with tempfile.TemporaryDirectory() as index_dir:
        clip = warmed(model, Path(index_dir))
        folder = Path(index_dir) / "clip"
        folder.mkdir()
        (folder / clip_path.name).symlink_to(clip_path)
        warm_file_cache(clip_path)
        decode_s, index_s, decode_cpu, index_cpu, frames = [], [], [], [], 0
        for run in range(repeats):
            started, cpu = time.perf_counter(), time.process_time()
            _, sampled = read_video(clip_path, min_side=clip.encoder.input_size)
            decode_s.append(time.perf_counter() - started)
            decode_cpu.append(time.process_time() - cpu)
            started, cpu = time.perf_counter(), time.process_time()
            report = clip.index_folder(folder, collection=f"run{run}", ocr="off")
            index_s.append(time.perf_counter() - started)
            index_cpu.append(time.process_time() - cpu)
            frames = frames_in(clip, f"run{run}")
            assert report.embedded == 1 and frames == len(sampled), (report, frames, len(sampled))
        decode, index = statistics.median(decode_s), statistics.median(index_s)
        return {
            "duration_s": duration,
            "frames": frames,
            "decode_only_s": round(decode, 2),
            "index_s": round(index, 2),
            "decode_only_x_realtime": round(duration / decode, 1),
            "index_x_realtime": round(duration / index, 1),
            "runs_index_s": [round(s, 2) for s in index_s],
            # CPU seconds (all threads): what the shared machine's load does not change; 2 cores idle would take
            # at least half of it in wall time.
            "decode_only_cpu_s": round(statistics.median(decode_cpu), 2),
            "index_cpu_s": round(statistics.median(index_cpu), 2),
            "peak_rss_mb": proc_status_mb("VmHWM"),
        }


def child_compare(model: str, clip_path: Path, photos: Path, repeats: int) -> dict[str, Any]:
    """In one process, alternately: N photos through index_folder, then the clip yielding N frames."""
    from server.images.decode import decode, read_file
    from server.images.video import read_video

    with tempfile.TemporaryDirectory() as index_dir:
        clip = warmed(model, Path(index_dir))
        size = clip.encoder.input_size
        folder = Path(index_dir) / "clip"
        folder.mkdir()
        (folder / clip_path.name).symlink_to(clip_path)
        paths = sorted(photos.glob("*.jpg"))
        for path in [clip_path, *paths]:
            warm_file_cache(path)
        photo_ips, frame_fps, photo_cpu, frame_cpu, photo_decode_ms, frame_decode_ms = [], [], [], [], [], []
        frames = 0
        for run in range(repeats):
            started, cpu = time.perf_counter(), time.process_time()
            report = clip.index_folder(photos, collection=f"photos{run}", ocr="off")
            photo_ips.append(report.embedded / (time.perf_counter() - started))
            photo_cpu.append((time.process_time() - cpu) * 1000 / report.embedded)
            started, cpu = time.perf_counter(), time.process_time()
            clip.index_folder(folder, collection=f"video{run}", ocr="off")
            seconds = time.perf_counter() - started
            frames = frames_in(clip, f"video{run}")
            frame_fps.append(frames / seconds)
            frame_cpu.append((time.process_time() - cpu) * 1000 / frames)
            started = time.perf_counter()
            for path in paths:
                decode(read_file(path), min_side=size)
            photo_decode_ms.append((time.perf_counter() - started) * 1000 / len(paths))
            started = time.perf_counter()
            _, sampled = read_video(clip_path, min_side=size)
            frame_decode_ms.append((time.perf_counter() - started) * 1000 / len(sampled))
        ips, fps = statistics.median(photo_ips), statistics.median(frame_fps)
        return {
            "photos": len(paths),
            "photo_size": "1920x1080 JPEG q90",
            "frames": frames,
            "photos_per_s": round(ips, 2),
            "frames_per_s": round(fps, 2),
            "frames_vs_photos": round(fps / ips, 3),
            "cpu_ms_per_photo": round(statistics.median(photo_cpu), 1),
            "cpu_ms_per_frame": round(statistics.median(frame_cpu), 1),
            "decode_ms_per_photo": round(statistics.median(photo_decode_ms), 1),
            "decode_ms_per_frame": round(statistics.median(frame_decode_ms), 1),
            "peak_rss_mb": proc_status_mb("VmHWM"),
        }


def in_child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.video", "--child", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench.video --child {args[0]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bitrate_mbps(path: Path, seconds: float) -> float:
    return round(path.stat().st_size * 8 / seconds / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "clip-random")
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench-video")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench-cache")
    parser.add_argument("--quick", action="store_true", help="12 s clips, one run each: a smoke run")
    parser.add_argument("--repeats", type=int, help="runs per measurement, median kept (default 3; --quick 1)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["CLIPSEARCH_CACHE"] = str(args.cache)  # where the ONNX export is kept between runs
    model = str(args.model.resolve())
    if args.child:
        kind, *rest = args.child
        if kind == "speed":
            out = child_speed(model, Path(rest[0]), float(rest[1]), int(rest[2]))
        else:
            out = child_compare(model, Path(rest[0]), Path(rest[1]), int(rest[2]))
        print(json.dumps(out))
        return

    repeats = args.repeats or (1 if args.quick else 2)
    seconds = 2 * SEGMENT_SECONDS if args.quick else 60.0
    if not (args.model / "config.json").is_file():
        from bench.checkpoint import write_random_clip

        write_random_clip(args.model, "vit-b-32")
    args.corpus.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    clips = {name: speed_clip(args.corpus, name, seconds)[0] for name in SPEED_CLIPS}
    planted, stills = retrieval_corpus(args.corpus)
    photos = {name: exported_photos(clips[name], args.corpus)[0] for name in clips if name.startswith("1080p")}
    generated_s = time.perf_counter() - started
    load_before = os.getloadavg()

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import FakeEncoder

    # Importing conftest points CLIPSEARCH_CACHE at a new empty folder (for tests); the export lives in ours.
    test_cache = Path(os.environ["CLIPSEARCH_CACHE"])
    os.environ["CLIPSEARCH_CACHE"] = str(args.cache)
    if test_cache != args.cache:
        shutil.rmtree(test_cache, ignore_errors=True)

    with tempfile.TemporaryDirectory() as index_dir:
        real = warmed(model, Path(index_dir) / "real")  # the ONNX export is made here on a first run
        fake = service(model, Path(index_dir) / "fake", FakeEncoder())
        found = {
            "random_vit_b32_onnx": retrieval(real, planted, stills, "planted"),
            "fake_colour_encoder": retrieval(fake, planted, stills, "planted"),
        }
    speed: dict[str, dict[str, Any]] = {}
    for name, path in clips.items():
        target = 20 if name.startswith("1080p") else 5
        figures = in_child("speed", str(path), str(seconds), str(repeats))
        speed[name] = {
            "size": f"{SPEED_CLIPS[name]['width']}x{SPEED_CLIPS[name]['height']}",
            "bitrate_mbps": bitrate_mbps(path, seconds),
            **figures,
            "target_x_realtime": target,
            "meets": figures["index_x_realtime"] >= target,
        }
    compare = {}
    for name, folder in photos.items():
        figures = in_child("compare", str(clips[name]), str(folder), str(max(repeats, 3)))
        compare[name] = {**figures, "meets_0.8": figures["frames_vs_photos"] >= 0.8}
    emit(
        {
            "benchmark": "video",
            "machine": machine(),
            "quick": args.quick,
            "model": "random ViT-B/32, ONNX fp32",
            "corpus_generation_s": round(generated_s, 1),
            "load_before": [round(x, 2) for x in load_before],
            "retrieval": found,
            "speed": speed,
            "frames_vs_photos": compare,
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
