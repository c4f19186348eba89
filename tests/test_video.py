"""server/images/video.py: frames sampled from generated videos with planted scenes (bench/video_corpus.py), their
orientation, metadata, and every bad input refused with its reason."""

import logging
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bench import video_corpus as corpus
from server.errors import ImageUnreadable, InvalidArgument, VideoUnreadable
from server.images import video
from server.images.video import VIDEO_EXTENSIONS, is_video_name, read_frame, read_video
from server.images.video_metadata import video_metadata

MINUTE = 60.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def planted(folder: Path) -> dict[str, corpus.PlantedVideo]:
    """The four kinds a phone library holds: H.264 and HEVC, landscape and portrait by rotation."""
    return {
        "h264": corpus.write_video(folder / "h264.mp4", metadata=corpus.APPLE_METADATA),
        "hevc": corpus.write_video(folder / "hevc.mov", codec="libx265", metadata=corpus.APPLE_METADATA),
        "h264-portrait": corpus.write_video(folder / "portrait.mp4", rotation=90, metadata=corpus.ANDROID_METADATA),
        "hevc-portrait": corpus.write_video(folder / "portrait.mov", codec="libx265", rotation=90),
    }


def background(image: Image.Image) -> tuple[int, int, int]:
    """The colour of the scene behind its shape (low on the left, clear of the shape and the top marker)."""
    return image.getpixel((image.width // 20, image.height * 9 // 10))


def scene_shown(image: Image.Image, scenes: tuple[corpus.Scene, ...]) -> corpus.Scene:
    colour = np.array(background(image), dtype=float)
    return min(scenes, key=lambda s: float(np.abs(np.array(s.colour) - colour).sum()))


def assert_times_match_scenes(frames: list[video.VideoFrame], planted: corpus.PlantedVideo) -> None:
    times = [f.time_seconds for f in frames]
    assert times == sorted(set(times)), "frames in time order, each moment once"
    for frame in frames:
        expected = planted.scene_at(frame.time_seconds)
        assert expected is not None, f"frame at {frame.time_seconds} s is past the video"
        assert scene_shown(frame.image, planted.scenes) == expected, f"frame at {frame.time_seconds} s"


@pytest.mark.parametrize("kind", ["h264", "hevc", "h264-portrait", "hevc-portrait"])
def test_each_planted_scene_has_a_frame_whose_time_lies_inside_it(planted, kind) -> None:
    made = planted[kind]
    info, frames = read_video(made.path)
    assert_times_match_scenes(frames, made)
    for scene in made.scenes:
        assert any(scene.holds(f.time_seconds) for f in frames), f"no frame in {scene.name} {scene.start}-{scene.end}"
    assert info.codec == ("h264" if kind.startswith("h264") else "hevc")


@pytest.mark.parametrize("kind", ["h264", "hevc-portrait"])
def test_there_is_a_frame_in_every_two_seconds(planted, kind) -> None:
    made = planted[kind]
    _, frames = read_video(made.path, every_seconds=2.0)
    times = [f.time_seconds for f in frames]
    for start in np.arange(0, made.duration - 0.5, 2.0):
        assert any(start - 1e-6 <= t <= start + 2.0 + 1e-6 for t in times), f"nothing in {start}-{start + 2} s"


def test_keyframes_far_apart_are_filled_by_decoding_forward(folder) -> None:
    made = corpus.write_video(folder / "long-gop.mp4", keyint_seconds=20)  # keyframes only at the scene cuts
    with av.open(str(made.path)) as container:
        keyframes = sum(1 for e in container.streams.video[0].index_entries if e.is_keyframe)
    assert keyframes <= len(made.scenes) + 1
    _, frames = read_video(made.path, every_seconds=2.0)
    assert_times_match_scenes(frames, made)
    times = [f.time_seconds for f in frames]
    for start in np.arange(0, made.duration - 0.5, 2.0):
        assert any(start - 1e-6 <= t <= start + 2.0 + 1e-6 for t in times), f"nothing in {start}-{start + 2} s"
    assert len(frames) > keyframes


def test_scene_changes_between_sampling_times_add_the_scene_s_first_keyframe(planted) -> None:
    made = planted["h264"]  # red 0-4 s, green 4-9 s, blue 9-12 s, yellow 12-18 s; keyframes every second
    _, frames = read_video(made.path, every_seconds=6.0)  # samples at 0, 6, 12 would miss blue
    times = [f.time_seconds for f in frames]
    assert_times_match_scenes(frames, made)
    for scene in made.scenes:
        assert any(scene.start <= t <= scene.start + 1.0 for t in times), f"{scene.name} found late: {times}"
    assert len(frames) <= 3 + len(made.scenes), "no frames added inside a scene"


def test_a_long_video_gets_at_most_max_frames_spread_over_its_duration(planted) -> None:
    made = planted["h264"]
    info, frames = read_video(made.path, every_seconds=1.0, max_frames=5)
    times = [f.time_seconds for f in frames]
    assert 4 <= len(frames) <= 5
    assert times[0] == 0.0 and times[-1] >= 0.7 * made.duration
    assert info.duration_seconds == pytest.approx(made.duration, abs=0.2)


def test_ten_minutes_of_video_give_120_frames_quickly(folder) -> None:
    scenes = corpus.planted_scenes((100.0,) * 6)
    made = corpus.write_video(folder / "ten-minutes.mp4", scenes, width=160, height=120, fps=2, keyint_seconds=2)
    started = time.perf_counter()
    info, frames = read_video(made.path)
    elapsed = time.perf_counter() - started
    assert len(frames) == 120
    assert_times_match_scenes(frames, made)
    gaps = np.diff([f.time_seconds for f in frames])
    assert gaps.max() <= 10.0 and frames[-1].time_seconds >= 590
    assert info.duration_seconds == pytest.approx(10 * MINUTE, abs=1)
    assert elapsed < 20, f"{elapsed:.1f} s for 120 frames of a small video"


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_a_rotated_video_comes_back_upright(folder, rotation) -> None:
    made = corpus.write_video(folder / f"turned-{rotation}.mp4", corpus.planted_scenes((2.0, 2.0)), rotation=rotation)
    info, frames = read_video(made.path)
    assert info.rotation == rotation
    assert (info.width, info.height) == (made.width, made.height)
    for frame in frames:
        pixels = np.asarray(frame.image, dtype=int)
        top, bottom = pixels[: pixels.shape[0] // 20], pixels[-(pixels.shape[0] // 20) :]
        assert top.mean() > 240, "the white marker is on top"
        assert bottom.mean() < 200
        assert (frame.image.width > frame.image.height) == (made.width > made.height)


def test_portrait_phone_video_is_taller_than_wide(planted) -> None:
    made = planted["h264-portrait"]
    with av.open(str(made.path)) as container:
        stored = container.streams.video[0]
        assert (stored.width, stored.height) == (320, 240), "stored as landscape, as phones do"
    info, frames = read_video(made.path)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    assert all(f.image.height > f.image.width for f in frames)


@pytest.mark.parametrize(
    "name, codec",
    [("vp9.webm", "libvpx-vp9"), ("av1.mkv", "libsvtav1"), ("h264.mkv", "libx264"), ("h264.avi", "libx264")],
)
def test_other_containers_and_codecs_are_sampled_at_the_right_times(folder, name, codec) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV has no {codec} encoder")
    made = corpus.write_video(folder / name, codec=codec)
    _, frames = read_video(made.path)
    assert_times_match_scenes(frames, made)
    assert {made.scene_at(f.time_seconds) for f in frames} == set(made.scenes)


def test_a_webm_without_cues_is_read_in_one_pass(folder) -> None:
    made = corpus.write_video(folder / "live.webm", codec="libvpx-vp9", muxer_options={"live": "1"})
    info, frames = read_video(made.path)
    assert info.duration_seconds is None  # a live recording says nothing of its length
    assert_times_match_scenes(frames, made)
    assert {made.scene_at(f.time_seconds) for f in frames} == set(made.scenes)


def test_frames_are_decoded_small(folder) -> None:
    made = corpus.write_video(folder / "hd.mp4", corpus.planted_scenes((2.0, 2.0)), width=1280, height=720)
    _, frames = read_video(made.path)
    assert {f.image.size for f in frames} == {(398, 224)}
    assert all(f.image.mode == "RGB" for f in frames)
    _, frames = read_video(made.path, min_side=64)
    assert {f.image.size for f in frames} == {(114, 64)}


def test_a_video_smaller_than_min_side_is_not_enlarged(folder) -> None:
    made = corpus.write_video(folder / "tiny.mp4", corpus.planted_scenes((2.0,)), width=160, height=120)
    info, frames = read_video(made.path)
    assert (info.width, info.height) == (160, 120)
    assert {f.image.size for f in frames} == {(160, 120)}


@pytest.mark.parametrize("keyint", [1.0, 20.0])
def test_a_black_fade_in_is_not_the_first_frame(folder, keyint) -> None:
    made = corpus.write_video(folder / f"fade-{keyint}.mp4", fade_in=1.5, keyint_seconds=keyint)
    _, frames = read_video(made.path)
    first = frames[0]
    assert 1.5 <= first.time_seconds <= 3.0
    assert np.asarray(first.image).max() > 200
    assert all(np.asarray(f.image).max() > 24 for f in frames), "no black frame kept"


def test_a_video_black_throughout_keeps_its_first_frame(folder) -> None:
    made = corpus.write_video(folder / "black.mp4", corpus.planted_scenes((4.0,)), fade_in=10.0)
    _, frames = read_video(made.path)
    assert [f.time_seconds for f in frames] == [0.0]


@pytest.mark.parametrize("kind", ["h264", "hevc-portrait"])
def test_the_frame_at_a_moment_is_that_moment_s_scene(planted, kind) -> None:
    made = planted[kind]
    for moment in (0.0, 3.7, 10.5, 12.05):
        frame = read_frame(made.path, moment)
        assert frame.time_seconds == pytest.approx(moment, abs=0.1)
        assert scene_shown(frame.image, made.scenes) == made.scene_at(moment)
        assert min(frame.image.size) == 224 and (frame.image.height > frame.image.width) == kind.endswith("portrait")


def test_the_frame_past_the_end_is_the_last(planted) -> None:
    made = planted["h264"]
    frame = read_frame(made.path, 1000.0)
    assert frame.time_seconds == pytest.approx(made.duration - 0.1, abs=0.05)
    assert scene_shown(frame.image, made.scenes) == made.scenes[-1]


def test_a_frame_is_refused_for_a_bad_moment_or_file(planted, folder) -> None:
    with pytest.raises(InvalidArgument):
        read_frame(planted["h264"].path, -1.0)
    with pytest.raises(InvalidArgument):
        read_frame(planted["h264"].path, float("nan"))
    with pytest.raises(VideoUnreadable, match="file is empty"):
        read_frame(corpus.write_zero_length(folder / "empty-frame.mp4"), 1.0)
    with pytest.raises(VideoUnreadable, match="claims 20000x2000"):
        read_frame(corpus.write_claimed_size_avi(folder / "side-frame.avi", 20000, 2000), 0.0)


def test_quicktime_metadata_round_trips(planted) -> None:
    info, _ = read_video(planted["hevc"].path)
    meta = info.metadata
    assert meta.taken == "2023-07-14T18:30:05+02:00"
    assert meta.taken_source == "quicktime"
    assert meta.taken_local == "2023-07-14T18:30:05.000000"
    assert meta.taken_utc == pytest.approx(1689352205.0)
    assert (meta.latitude, meta.longitude) == (48.8577, 2.295)
    assert meta.camera == "Apple iPhone 15 Pro"
    assert (meta.width, meta.height) == (320, 240)
    assert info.duration_seconds == pytest.approx(18.0, abs=0.15)
    assert info.fps == pytest.approx(10.0)


def test_android_metadata_round_trips_in_this_machines_zone(planted, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        info, _ = read_video(planted["h264-portrait"].path)
    finally:
        monkeypatch.undo()
        time.tzset()
    meta = info.metadata
    assert meta.taken == "2024-02-03T10:15:00+01:00"  # creation_time is UTC: 09:15Z
    assert meta.taken_source == "container"
    assert meta.taken_utc == pytest.approx(1706951700.0)
    assert (meta.latitude, meta.longitude) == (37.4219, -122.084)
    assert meta.camera == "Google Pixel 8"
    assert (meta.width, meta.height) == (240, 320)


def test_a_video_without_metadata_is_dated_by_its_file(planted) -> None:
    made = planted["hevc-portrait"]
    info, _ = read_video(made.path)
    assert info.metadata.taken_source == "file_mtime"
    assert info.metadata.taken_utc == pytest.approx(made.path.stat().st_mtime, abs=1)
    assert (info.metadata.latitude, info.metadata.camera) == (None, None)


def test_hostile_metadata_leaves_those_fields_unknown_and_the_video_read(folder) -> None:
    path = folder / "hostile.mp4"
    corpus.write_video(
        path,
        metadata={
            "com.apple.quicktime.creationdate": "2023-13-45T25:61:61+0200",
            "com.apple.quicktime.location.ISO6709": "+999.0000+999.0000/",
            "com.apple.quicktime.make": "X" * 100_000,
            "com.apple.quicktime.model": "PLACEHOLDER-PLACEHOLDER",
            "creation_time": "yesterday",
        },
    )
    corpus.patch_text(path, b"PLACEHOLDER-PLACEHOLDER", b"\xff\xfe" * 11 + b"\xc3")  # not UTF-8
    info, frames = read_video(path)
    meta = info.metadata
    assert meta.taken_source == "file_mtime"
    assert (meta.latitude, meta.longitude, meta.camera) == (None, None, None)
    assert len(frames) >= 9


@pytest.mark.parametrize(
    "tags",
    [
        {"com.apple.quicktime.creationdate": 20230714, "location": 48.8, "make": ["Apple"], "model": None},
        {"creation_time": b"2023-07-14T16:30:05Z", "location": {"lat": 1}, "com.android.model": 7},
        {"creation_time": "1904-01-01T00:00:00.000000Z"},  # the MP4 epoch: a camera that never set its clock
        {"creation_time": "1970-01-01T00:00:00Z", "com.apple.quicktime.creationdate": "0000-00-00T00:00:00+0000"},
        {"creation_time": "2999-01-01T00:00:00Z"},
        {"com.apple.quicktime.creationdate": "2023-07-14T18:30:05+2500"},
        {"creation_time": "2023-07-14T16:30:05Z" + "0" * 10_000},
    ],
)
def test_metadata_of_the_wrong_type_or_absurd_is_unknown(tags) -> None:
    meta = video_metadata(tags, mtime_ns=1_700_000_000 * 10**9)
    assert meta.taken_source == "file_mtime"
    assert meta.taken_utc == pytest.approx(1_700_000_000)
    assert (meta.latitude, meta.longitude, meta.camera) == (None, None, None)


@pytest.mark.parametrize(
    "text, place",
    [
        ("+48.8577+002.2950+035.000/", (48.8577, 2.295)),
        ("-33.8568+151.2153/", (-33.8568, 151.2153)),
        ("+4851.462+00217.700/", (48.8577, 2.295)),  # degrees and minutes
        ("+485127.72+0021742.00CRSWGS_84/", (48.8577, 2.295)),  # degrees, minutes, seconds
        ("+48.8577/", None),
        ("+91.0000+002.0000/", None),
        ("+48.0000+181.0000/", None),
        ("+4875.000+00217.700/", None),  # 75 minutes
        ("+00.0000+000.0000/", None),
        ("48.8577,2.2950", None),
    ],
)
def test_iso6709_places_are_read_or_left_unknown(text, place) -> None:
    meta = video_metadata({"location": text}, mtime_ns=0)
    got = (meta.latitude, meta.longitude) if meta.latitude is not None else None
    if place is None:
        assert got is None
    else:
        assert got == pytest.approx(place, abs=1e-4)


def test_apple_time_is_preferred_to_the_container_time() -> None:
    meta = video_metadata(
        {
            "creation_time": "2023-07-14T16:30:05.000000Z",
            "com.apple.quicktime.creationdate": "2023-07-14T18:30:05.5+0200",
        },
        mtime_ns=0,
    )
    assert (meta.taken, meta.taken_source) == ("2023-07-14T18:30:05.500000+02:00", "quicktime")
    assert meta.taken_utc == pytest.approx(1689352205.5)


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("empty.mp4", corpus.write_zero_length, "file is empty"),
        ("truncated.mp4", corpus.write_truncated, "the file is truncated"),
        ("unfinished.mp4", corpus.write_moov_missing, "the moov atom, is missing"),
        ("sound.mp4", corpus.write_audio_only, "no video stream in the file (audio only)"),
        ("random.mp4", corpus.write_random_bytes, "not a video FFmpeg can read"),
        ("area.avi", lambda path: corpus.write_claimed_size_avi(path, 16000, 16000), "claims 16000x16000 pixels"),
        ("side.avi", lambda path: corpus.write_claimed_size_avi(path, 20000, 2000), "claims 20000x2000 pixels"),
        ("huge.avi", lambda path: corpus.write_claimed_size_avi(path, 60000, 60000), "frame size is unknown"),
    ],
)
def test_a_bad_video_is_refused_with_its_reason(folder, name, write, reason) -> None:
    path = folder / name
    write(path)
    with pytest.raises(VideoUnreadable, match=re.escape(reason)) as caught:
        read_video(path)
    assert isinstance(caught.value, ImageUnreadable), "the indexer skips it as it skips a broken photo"


def test_a_missing_file_is_refused(folder) -> None:
    with pytest.raises(VideoUnreadable, match="cannot read file"):
        read_video(folder / "nowhere.mp4")


def test_a_billion_frame_claim_is_read_within_bounds(folder) -> None:
    path = corpus.patch_frame_count(corpus.write_video(folder / "billion.mp4").path, 1_000_000_000)
    started = time.perf_counter()
    info, frames = read_video(path)
    assert time.perf_counter() - started < 5
    assert 1 <= len(frames) <= 120
    assert info.duration_seconds is not None and info.duration_seconds < 60


def test_frames_claiming_days_each_are_read_within_bounds(folder) -> None:
    path = corpus.patch_frame_count(corpus.write_video(folder / "ages.mp4").path, 180, ticks_per_frame=1 << 30)
    started = time.perf_counter()
    _, frames = read_video(path)
    assert time.perf_counter() - started < 5
    assert 1 <= len(frames) <= 120


def test_decoding_stops_at_its_budget_keeping_the_frames_so_far(folder, monkeypatch, caplog) -> None:
    made = corpus.write_video(folder / "budget.mp4", keyint_seconds=20)  # forward decoding: many frames per sample
    _, unbounded = read_video(made.path)
    frame_units = 320 * 240 / (1920 * 1080)
    monkeypatch.setattr(video, "MAX_DECODE_UNITS", 40 * frame_units)  # 40 frames of this video
    with caplog.at_level(logging.WARNING, logger="server.images.video"):
        _, bounded = read_video(made.path)
    assert 1 <= len(bounded) < len(unbounded)
    assert bounded[-1].time_seconds < 5.0
    assert "video sampling stopped after" in caplog.text
    monkeypatch.setattr(video, "MAX_DECODE_UNITS", 0.5 * frame_units)
    with pytest.raises(VideoUnreadable, match="no frame could be decoded within"):
        read_video(made.path)


def test_reading_stops_at_its_packet_bound(folder, monkeypatch) -> None:
    made = corpus.write_video(folder / "packets.webm", codec="libvpx-vp9", muxer_options={"live": "1"})
    monkeypatch.setattr(video, "MAX_PACKETS", 50)  # 5 s at 10 fps
    _, frames = read_video(made.path)
    assert frames and frames[-1].time_seconds < 5.0


def test_a_concat_list_named_as_a_video_does_not_read_the_file_it_names(folder) -> None:
    secret = corpus.write_video(folder / "secret.mp4")
    playlist = corpus.write_concat_playlist(folder / "list.mp4", secret.path)
    with av.open(str(playlist)) as container:  # what FFmpeg does unguarded: reads the other file
        assert container.format.name == "concat" and next(container.decode(video=0)) is not None
    with pytest.raises(VideoUnreadable, match="not a video container"):
        read_video(playlist)


def test_an_hls_playlist_does_not_read_its_segments(folder) -> None:
    segment = corpus.write_mpegts(folder / "segment.ts")
    playlist = corpus.write_hls_playlist(folder / "list.m3u8", segment.path)
    with av.open(str(playlist)) as container:
        assert container.format.name == "hls" and next(container.decode(video=0)) is not None
    with pytest.raises(VideoUnreadable, match="not a video container"):
        read_video(playlist)
    named_as_video = corpus.write_hls_playlist(folder / "list-named.mp4", segment.path)
    with pytest.raises(VideoUnreadable):
        read_video(named_as_video)


def test_a_demuxer_that_opens_other_files_is_stopped_at_the_first(folder, monkeypatch) -> None:
    segment = corpus.write_mpegts(folder / "segment-2.ts")
    playlist = corpus.write_hls_playlist(folder / "list-2.m3u8", segment.path)
    monkeypatch.setattr(video, "ALLOWED_DEMUXERS", video.ALLOWED_DEMUXERS + ",hls,mpegts")  # past the first guard
    with pytest.raises(VideoUnreadable, match=r"refers to another file \('.*segment-2.ts'\)"):
        read_video(playlist)


def test_bad_arguments_are_refused(planted) -> None:
    with pytest.raises(InvalidArgument):
        read_video(planted["h264"].path, max_frames=0)
    with pytest.raises(InvalidArgument):
        read_video(planted["h264"].path, scene_threshold=0)


def test_video_names_are_told_by_their_extension() -> None:
    assert {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".3gp"} == VIDEO_EXTENSIONS
    assert is_video_name(Path("/a/IMG_0001.MOV")) and is_video_name("clip.3gp")
    assert not is_video_name(Path("photo.jpg")) and not is_video_name(Path("list.m3u8"))
