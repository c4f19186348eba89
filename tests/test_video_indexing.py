"""Videos through indexing and search, end to end (generated with bench/video_corpus.py, embedded by the fake
colour encoder): a video is one item found at the moment that matches, a still finds the moment it came from, a
moment finds its like, the `media` filter, moves and changes, bad files skipped with their reason, over MCP and the
CLI."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.video_corpus import (
    planted_scenes,
    write_audio_only,
    write_truncated,
    write_video,
    write_zero_length,
)
from conftest import COLORS, FakeEncoder, FakeRecognizer, call, mcp_client, save_color
from server.config import Settings
from server.images.video import read_video
from server.service import ClipSearch

pytest.importorskip("av")

SCENES = planted_scenes()  # red 0-4 s, green 4-9 s, blue 9-12 s, yellow 12-18 s


def service_at(tmp_path: Path) -> ClipSearch:
    encoder = FakeEncoder()
    settings = Settings(index_dir=tmp_path / "index", model=encoder.model_name)
    return ClipSearch(settings, encoder=encoder, recognizer=FakeRecognizer())


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    save_color(folder / "white.jpg", COLORS["white"])
    save_color(folder / "red.jpg", COLORS["red"])
    (folder / "clips").mkdir()
    write_video(folder / "clips" / "party.mp4", SCENES)
    return folder


def scene_of(name: str) -> Any:
    return next(scene for scene in SCENES if scene.name == name)


def test_a_video_is_indexed_as_one_item_and_found_at_the_moment_that_matches(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    report = service.index_folder(library)

    results = service.search_text("green", k=3).results
    videos = [hit for hit in results if hit.kind == "video"]

    assert report.added == 3 and report.failed == 0 and report.indexed_total == 3
    assert [Path(hit.path).name for hit in videos] == ["party.mp4"]  # once, though several frames match
    [video] = videos
    assert results[0] is video and scene_of("green").holds(video.time_seconds or -1)
    assert video.duration_seconds == pytest.approx(18.0, abs=0.5)
    assert all(hit.kind == "photo" and hit.time_seconds is None for hit in results if hit is not video)


@pytest.mark.parametrize("colour", ["blue", "yellow"])
def test_a_still_of_a_scene_finds_its_video_at_that_scene(tmp_path: Path, library: Path, colour: str) -> None:
    service = service_at(tmp_path)
    service.index_folder(library)
    scene = scene_of(colour)
    # A frame decoded independently (every 0.5 s here), from the middle of the scene, saved as a photo.
    _, frames = read_video(library / "clips" / "party.mp4", min_side=64, every_seconds=0.5)
    still = min(frames, key=lambda f: abs(f.time_seconds - (scene.start + scene.end) / 2))
    path = tmp_path / "still.png"
    still.image.save(path)

    [first, *_] = service.search_image(path, k=3).results

    assert Path(first.path).name == "party.mp4" and scene.holds(first.time_seconds or -1)


def test_a_moment_of_a_video_finds_what_looks_like_it(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    service.index_folder(library)
    clip = library / "clips" / "party.mp4"

    from_red = service.search_image(clip, k=3, time_seconds=1.0).results
    from_yellow = service.search_image(clip, k=1, time_seconds=14.0).results

    assert [Path(h.path).name for h in from_red][:2] == ["party.mp4", "red.jpg"] or (
        Path(from_red[0].path).name == "red.jpg" and Path(from_red[1].path).name == "party.mp4"
    )
    assert scene_of("yellow").holds(from_yellow[0].time_seconds or -1)


def test_the_media_filter_keeps_photos_or_videos(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    service.index_folder(library)

    photos = service.search_text("green", k=5, filters=service.make_filter(media="photos")).results
    videos = service.search_text("red", k=5, filters=service.make_filter(media="videos")).results

    assert sorted(Path(h.path).name for h in photos) == ["red.jpg", "white.jpg"]
    assert [Path(h.path).name for h in videos] == ["party.mp4"] and scene_of("red").holds(videos[0].time_seconds or -1)


def test_a_moved_video_keeps_its_frames_and_a_changed_one_is_read_again(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    service.index_folder(library)
    shutil.move(library / "clips" / "party.mp4", library / "party-2024.mp4")
    moved = service.index_folder(library)
    write_video(library / "party-2024.mp4", planted_scenes((3.0, 3.0)), fps=8)  # new content, same name
    changed = service.index_folder(library)

    assert moved.moved == 1 and moved.embedded == 0
    assert changed.updated == 1 and changed.embedded == 1
    [video] = service.search_text("yellow", k=3, filters=service.make_filter(media="videos")).results
    assert Path(video.path).name == "party-2024.mp4" and video.duration_seconds == pytest.approx(6.0, abs=0.5)


def test_bad_videos_are_skipped_with_their_reason_and_the_photos_indexed(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    write_zero_length(library / "empty.mp4")
    write_audio_only(library / "voice-memo.mp4")
    good = write_video(tmp_path / "whole.mp4", SCENES)
    write_truncated(shutil.copy(good.path, library / "cut.mp4"))
    (library / "notes.mov").write_bytes(b"\x00" * 4096)

    report = service.index_folder(library)
    reasons = {Path(f.path).name: f.reason for f in report.failures}

    assert {"empty.mp4", "voice-memo.mp4", "notes.mov"} <= set(reasons)
    assert "empty" in reasons["empty.mp4"] and "video" in reasons["voice-memo.mp4"]
    assert report.indexed_total == report.added == 3 + ("cut.mp4" not in reasons)  # photos and the good clip in
    assert service.collection("default").count() == service.collection("default").ntotal


@pytest.mark.anyio
async def test_over_mcp_a_video_result_carries_its_moment_and_the_media_filter(tmp_path: Path, library: Path) -> None:
    service = service_at(tmp_path)
    async with mcp_client(service, [library]) as client:
        await call(client, "index_folder", folder=str(library))
        found = await call(client, "search_images_by_text", query="blue", k=2, media="videos")
        similar = await call(
            client, "search_similar_images", image_path=str(library / "clips" / "party.mp4"), time_seconds=5.0, k=1
        )
        refused = await call(client, "search_similar_images", image_path=str(library / "red.jpg"), time_seconds=5.0)

    [hit] = found.structured_content["results"]
    assert hit["kind"] == "video" and scene_of("blue").holds(hit["time_seconds"])
    assert hit["duration_seconds"] == pytest.approx(18.0, abs=0.5) and isinstance(hit["other_moments"], list)
    assert "video, at 0:" in found.content[0].text  # type: ignore[union-attr]
    assert scene_of("green").holds(similar.structured_content["results"][0]["time_seconds"])
    assert refused.is_error and "time_seconds is a moment of a video" in refused.content[0].text  # type: ignore[union-attr]


def test_the_cli_searches_videos_only_and_from_a_moment(
    tmp_path: Path, library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli.main import main

    def make_service(settings: Settings, **options: Any) -> ClipSearch:
        return ClipSearch(settings, encoder=FakeEncoder(), recognizer=FakeRecognizer(), **options)

    options = ["--index-dir", str(tmp_path / "index"), "--model", FakeEncoder.model_name]
    assert main(["index", str(library), *options], make_service=make_service) == 0
    capsys.readouterr()
    assert main(["search", "green", "--media", "videos", "--json", *options], make_service=make_service) == 0
    videos = json.loads(capsys.readouterr().out)["results"]
    clip = str(library / "clips" / "party.mp4")
    assert main(["similar", clip, "--at", "10", "-k", "1", "--json", *options], make_service=make_service) == 0
    moment = json.loads(capsys.readouterr().out)["results"]

    assert [Path(h["path"]).name for h in videos] == ["party.mp4"] and scene_of("green").holds(
        videos[0]["time_seconds"]
    )
    assert scene_of("blue").holds(moment[0]["time_seconds"])


def mean_colour(jpeg: bytes) -> tuple[float, ...]:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
    return tuple(pixels.reshape(-1, 3).mean(axis=0))


def nearest_scene(colour: tuple[float, ...]) -> str:
    return min(SCENES, key=lambda s: sum((a - b) ** 2 for a, b in zip(s.colour, colour, strict=True))).name


def test_view_image_shows_a_videos_moment_with_its_metadata_and_refuses_a_moment_of_a_photo(
    tmp_path: Path, library: Path
) -> None:
    from server.errors import InvalidArgument

    service = service_at(tmp_path)
    service.index_folder(library)
    clip = library / "clips" / "party.mp4"

    jpeg, view = service.view_image(clip, 256, time_seconds=10.5)
    first_jpeg, first = service.view_image(clip, 256)
    assert first.kind == "video" and first.time_seconds is not None and first.time_seconds < 4.0

    assert view.kind == "video" and view.time_seconds == pytest.approx(10.5, abs=1.0)
    assert view.duration_seconds == pytest.approx(18.0, abs=0.5) and view.collections == ["default"]
    assert (view.width, view.height) == (320, 240) and max(view.shown_width, view.shown_height) <= 256
    assert nearest_scene(mean_colour(jpeg)) == "blue" and nearest_scene(mean_colour(first_jpeg)) == "red"
    with pytest.raises(InvalidArgument, match="moment of a video"):
        service.view_image(library / "red.jpg", 256, time_seconds=1.0)


@pytest.mark.anyio
async def test_the_gallerys_thumbnails_show_each_videos_moment(tmp_path: Path, library: Path) -> None:
    import base64

    service = service_at(tmp_path)
    clip = str(library / "clips" / "party.mp4")
    async with mcp_client(service, [library], apps=True) as client:
        page = await call(
            client, "get_thumbnails", paths=[clip, clip, str(library / "red.jpg")], times=[5.0, 14.0, None], side=96
        )
        mismatched = await call(client, "get_thumbnails", paths=[clip], times=[1.0, 2.0])

    shown = [base64.b64decode(t["jpeg_base64"]) for t in page.structured_content["thumbnails"]]
    assert [nearest_scene(mean_colour(j)) for j in shown[:2]] == ["green", "yellow"]
    assert mismatched.is_error and "one entry per path" in mismatched.content[0].text  # type: ignore[union-attr]


def test_a_videos_capture_time_place_and_camera_from_its_container_work_with_every_filter(
    tmp_path: Path, library: Path
) -> None:
    write_video(
        library / "trip.mov",
        SCENES,
        metadata={
            "com.apple.quicktime.creationdate": "2023-07-14T18:30:05+0200",
            "com.apple.quicktime.location.ISO6709": "+48.8577+002.2950+035.000/",
            "com.apple.quicktime.make": "Apple",
            "com.apple.quicktime.model": "iPhone 15 Pro",
        },
    )
    service = service_at(tmp_path)
    service.index_folder(library)

    def found(**filters: Any) -> list[str]:
        hits = service.search_text("green", k=5, filters=service.make_filter(**filters)).results
        return sorted(Path(h.path).name for h in hits)

    in_july = found(taken_after="2023-07-14", taken_before="2023-07-14")
    in_paris = found(near=(48.8584, 2.2945), radius_km=1.0)
    by_iphone = found(camera="iphone")
    [trip] = [h for h in service.search_text("green", k=5).results if Path(h.path).name == "trip.mov"]

    assert in_july == in_paris == by_iphone == ["trip.mov"]
    assert trip.taken == "2023-07-14T18:30:05+02:00" and trip.taken_source == "quicktime"
    assert trip.camera is not None and "iPhone 15 Pro" in trip.camera


def test_a_video_that_changes_while_it_is_read_is_skipped_and_read_by_the_next_run(
    tmp_path: Path, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.indexing.indexer as indexer

    service = service_at(tmp_path)
    real = indexer.read_video

    def appended_meanwhile(path: Path, **options: Any) -> Any:
        read = real(path, **options)
        with open(path, "ab") as handle:  # another program still writing the file
            handle.write(b"\0" * 1024)
        return read

    monkeypatch.setattr(indexer, "read_video", appended_meanwhile)
    first = service.index_folder(library)
    monkeypatch.setattr(indexer, "read_video", real)
    second = service.index_folder(library)

    [failure] = first.failures
    assert Path(failure.path).name == "party.mp4" and "changed while being read" in failure.reason
    assert first.added == 2 and second.added == 1 and second.failed == 0
