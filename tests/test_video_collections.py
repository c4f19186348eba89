"""Videos in a collection (catalog version 5, store/frames.py): one item per video, its sampled frames its vectors,
each tied to a time; a search finds a video once, at its best moment; evaluation scores a video by its best frame;
duplicates never join two videos that only look alike; a catalog written by the previous release is upgraded."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from server.store.collection_store import CollectionStore
from server.store.schema import CATALOG_VERSION
from server.store.writer import NewImage, NewVideo

DIM = 4
MODEL = "test-model"


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def item(path: str, content: str) -> NewImage:
    return NewImage(path=Path(path), size=1000, mtime_ns=1, hash=content, width=64, height=48)


def video(path: str, content: str, frames: list[tuple[float, np.ndarray]], duration: float = 20.0) -> NewImage:
    return NewImage(
        path=Path(path),
        size=5000,
        mtime_ns=1,
        hash=content,
        width=320,
        height=240,
        video=NewVideo(duration, frames[0][0], tuple(frames)),
    )


@pytest.fixture
def collection(tmp_path: Path):
    store = CollectionStore(tmp_path / "index")
    made = store.create("mixed", MODEL, DIM, identity="sha256:" + "ab" * 32)
    with made.writer() as writer:
        writer.add(item("/p/red.jpg", "r"), unit(1, 0.1, 0, 0))
        writer.add(item("/p/blue.jpg", "b"), unit(0, 0, 1, 0.1))
        # A video: black-ish poster at 0 s, then a green scene from 6 s, a red one at 14 s.
        writer.add(
            video(
                "/v/party.mp4",
                "v",
                [
                    (0.0, unit(0.1, 0.1, 0.1, 1)),
                    (6.0, unit(0, 1, 0, 0)),
                    (8.0, unit(0, 1, 0.05, 0)),
                    (14.0, unit(0.9, 0.1, 0, 0.2)),
                ],
            ),
            unit(0.1, 0.1, 0.1, 1),
        )
    return made


def test_a_video_is_found_once_at_its_best_moment_with_its_other_moments(collection) -> None:
    hits = collection.search_hits(unit(0, 1, 0, 0), k=3)

    assert hits[0].path.name == "party.mp4"
    best = hits[0]
    assert best.is_video and best.time_seconds == 6.0 and best.duration == 20.0
    assert [m.time_seconds for m in best.other_moments] == [] or all(
        abs(m.time_seconds - 6.0) >= 2.0 for m in best.other_moments
    )
    assert [h.path.name for h in hits].count("party.mp4") == 1
    assert best.score == pytest.approx(1.0, abs=1e-5)  # its green frame, not its poster (cosine ~0.1)


def test_a_photo_beats_a_videos_weaker_moment_and_the_video_still_comes_with_its_best(collection) -> None:
    hits = collection.search_hits(unit(1, 0.1, 0, 0), k=3)

    assert [h.path.name for h in hits] == ["red.jpg", "party.mp4", "blue.jpg"]
    assert hits[1].time_seconds == 14.0 and not hits[0].is_video and hits[0].time_seconds is None


def test_among_ids_and_with_a_where_a_video_is_scored_by_its_frames(collection) -> None:
    ids = np.array([r[0] for r in collection.query("SELECT id FROM images WHERE kind = 'video'", ())], np.int64)

    only_videos = collection.search_hits(unit(0, 1, 0, 0), k=5, ids=ids)
    no_videos = collection.search_hits(unit(0, 1, 0, 0), k=5, where="kind IS NULL")

    assert [(h.path.name, h.time_seconds) for h in only_videos] == [("party.mp4", 6.0)]
    assert sorted(h.path.name for h in no_videos) == ["blue.jpg", "red.jpg"]


def test_replacing_or_removing_a_video_replaces_or_removes_its_frames(collection) -> None:
    [(video_id,)] = collection.query("SELECT id FROM images WHERE kind = 'video'", ())
    with collection.writer() as writer:
        writer.replace(video_id, item("/v/party.mp4", "now-a-photo"), unit(0, 0, 0, 1))
    after_replace = collection.query("SELECT COUNT(*) FROM frames", ())
    green = collection.search_hits(unit(0, 1, 0, 0), k=1)
    with collection.writer() as writer:
        writer.remove([video_id])

    assert after_replace == [(0,)] and not green[0].is_video
    assert collection.query("SELECT COUNT(*) FROM frames", ()) == [(0,)]
    assert collection.count() == 2 == collection.ntotal


def test_a_moved_video_keeps_its_frames(collection) -> None:
    [(video_id,)] = collection.query("SELECT id FROM images WHERE kind = 'video'", ())
    with collection.writer() as writer:
        writer.move(video_id, Path("/v/2024/party.mp4"), 5000, 2)

    hit = collection.search_hits(unit(0, 1, 0, 0), k=1)[0]
    assert hit.path == Path("/v/2024/party.mp4") and hit.time_seconds == 6.0


def test_evaluation_scores_a_video_by_its_best_frame(collection) -> None:
    from server.evaluation.evaluate import VideoScores

    ids, _, vectors = collection.all_vectors()
    moments = VideoScores.of(collection.frame_index(), ids)
    queries = np.stack([unit(0, 1, 0, 0)])
    scores = queries @ vectors.T
    poster_only = scores.copy()
    assert moments is not None
    moments.raise_to_best_frame(scores, queries)

    column = list(ids).index(next(r[0] for r in collection.query("SELECT id FROM images WHERE kind='video'", ())))
    assert poster_only[0, column] < 0.2 and scores[0, column] == pytest.approx(1.0, abs=1e-5)
    others = [c for c in range(len(ids)) if c != column]
    assert np.array_equal(scores[0, others], poster_only[0, others])


def test_two_videos_with_the_same_black_opening_are_no_duplicates_but_byte_identical_copies_are(tmp_path: Path) -> None:
    from server.images.fingerprint import Perceptual
    from server.library.duplicates import DuplicateQuery, find_duplicates

    store = CollectionStore(tmp_path / "index")
    made = store.create("clips", MODEL, DIM, identity="sha256:" + "ab" * 32)
    black = unit(0.01, 0.01, 0.01, 1)
    fingerprint = Perceptual(dhash=0x0F0F0F0F0F0F0F0F, contrast=200)
    with made.writer() as writer:
        for name, content in (("a.mp4", "x"), ("b.mp4", "y"), ("copy-of-a.mp4", "x")):
            clip = video(
                f"/v/{name}", content, [(0.0, black), (4.0, unit(1, 0, 0, 0) if content == "x" else unit(0, 1, 0, 0))]
            )
            writer.add(NewImage(**{**clip.__dict__, "perceptual": fingerprint}), black)

    report = find_duplicates(made, DuplicateQuery())

    groups = [sorted(Path(m.path).name for m in group.members) for group in report.groups]
    assert groups == [["a.mp4", "copy-of-a.mp4"]]


def test_a_catalog_of_the_previous_version_is_upgraded_with_no_video_and_searches_unchanged(tmp_path: Path) -> None:
    from conftest import install_previous_collection

    index, _ = install_previous_collection("v4_manifest_collection", tmp_path)
    catalog = index / "default" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:
        before = conn.execute("SELECT id, path, vector FROM images ORDER BY id").fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
    conn.close()
    model = __import__("json").loads((index / "default" / "manifest.json").read_text(encoding="utf-8"))["model"]

    opened = CollectionStore(index).open("default", model)
    after = opened.query("SELECT id, path, vector FROM images ORDER BY id")
    kinds = opened.query("SELECT COUNT(*) FROM images WHERE kind IS NOT NULL")
    upgraded = opened.query("SELECT value FROM meta WHERE key = 'catalog_version'")

    assert version == ("4",) and upgraded == [(str(CATALOG_VERSION),)] and CATALOG_VERSION == 5
    assert after == before and kinds == [(0,)] and opened.frame_index() is None
    hits = opened.search_hits(np.frombuffer(before[0][2], np.float32), k=9)
    assert len(hits) == 9 and all(not h.is_video for h in hits) and hits[0].id == before[0][0]
