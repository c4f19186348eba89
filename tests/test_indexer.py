"""Incremental indexing: what gets embedded, moved, updated, removed and skipped."""

import os
import shutil
from pathlib import Path

import pytest

from conftest import COLORS, FakeEncoder, save_color
from server.errors import CollectionMismatch, FileMissing
from server.indexing.scan import scan_folder
from server.paths import PathGuard
from server.service import ClipSearch


def add_broken_files(folder: Path) -> None:
    (folder / "empty.jpg").write_bytes(b"")
    whole = (folder / "red" / "red_0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("this is text, not a picture", encoding="utf-8")


def test_first_run_embeds_every_image_once(fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path):
    report = fake_service.index_folder(color_folder)
    assert (report.added, report.indexed_total, report.embedded, report.failed) == (15, 15, 15, 0)
    assert fake_encoder.images_encoded == 15
    collection = fake_service.collection("default")
    assert collection.count() == collection.ntotal == 15


def test_broken_files_are_skipped_with_reasons_and_the_rest_is_indexed(fake_service: ClipSearch, color_folder: Path):
    add_broken_files(color_folder)
    report = fake_service.index_folder(color_folder)
    assert report.indexed_total == 15
    assert report.failed == 3
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "not a recognised image" in reasons["notes.jpg"]


def test_unchanged_rerun_embeds_nothing(fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path):
    fake_service.index_folder(color_folder)
    before = fake_encoder.images_encoded
    report = fake_service.index_folder(color_folder)
    assert report.added + report.updated + report.moved + report.removed == 0
    assert report.unchanged == 15
    assert fake_encoder.images_encoded == before


def test_touched_file_with_same_content_is_unchanged_and_not_reembedded(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path
):
    fake_service.index_folder(color_folder)
    before = fake_encoder.images_encoded
    target = color_folder / "red" / "red_1.jpg"
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    report = fake_service.index_folder(color_folder)
    assert (report.unchanged, report.updated, report.added) == (15, 0, 0)
    assert fake_encoder.images_encoded == before
    assert fake_service.collection("default").find_path(target).mtime_ns == 1_000_000_000


def test_renamed_file_is_moved_not_reembedded(fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path):
    fake_service.index_folder(color_folder)
    collection = fake_service.collection("default")
    old = color_folder / "blue" / "blue_0.jpg"
    old_id = collection.find_path(old).id
    before = fake_encoder.images_encoded
    new = color_folder / "green" / "was_blue.jpg"
    old.rename(new)
    report = fake_service.index_folder(color_folder)
    assert (report.moved, report.added, report.removed, report.embedded) == (1, 0, 0, 0)
    assert fake_encoder.images_encoded == before
    assert collection.find_path(old) is None
    assert collection.find_path(new).id == old_id
    hits = fake_service.search_text("blue", k=15).results
    assert str(new) in [h.path for h in hits] and str(old) not in [h.path for h in hits]


def test_file_moved_between_separately_indexed_folders_keeps_its_vector(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, tmp_path: Path
):
    first, second = tmp_path / "a", tmp_path / "b"
    save_color(first / "x.jpg", COLORS["red"])
    save_color(second / "y.jpg", COLORS["blue"])
    fake_service.index_folder(first)
    fake_service.index_folder(second)
    before = fake_encoder.images_encoded
    shutil.move(first / "x.jpg", second / "x.jpg")
    report = fake_service.index_folder(second)
    assert (report.moved, report.embedded) == (1, 0)
    assert fake_encoder.images_encoded == before
    assert fake_service.collection("default").count() == 2


def test_deleted_file_is_removed_and_never_returned(fake_service: ClipSearch, color_folder: Path):
    fake_service.index_folder(color_folder)
    gone = color_folder / "red" / "red_2.jpg"
    gone.unlink()
    report = fake_service.index_folder(color_folder)
    assert (report.removed, report.indexed_total) == (1, 14)
    hits = fake_service.search_text("red", k=1000).results
    assert len(hits) == 14
    assert str(gone) not in {h.path for h in hits}


def test_keep_missing_leaves_vanished_files_in_the_collection(fake_service: ClipSearch, color_folder: Path):
    fake_service.index_folder(color_folder)
    (color_folder / "red" / "red_2.jpg").unlink()
    report = fake_service.index_folder(color_folder, remove_missing=False)
    assert (report.removed, report.indexed_total) == (0, 15)


def test_changed_content_updates_the_same_entry(fake_service: ClipSearch, color_folder: Path):
    fake_service.index_folder(color_folder)
    target = color_folder / "red" / "red_0.jpg"
    old_id = fake_service.collection("default").find_path(target).id
    save_color(target, COLORS["blue"], size=(70, 50))
    report = fake_service.index_folder(color_folder)
    assert (report.updated, report.embedded, report.indexed_total) == (1, 1, 15)
    assert fake_service.collection("default").find_path(target).id == old_id
    blue_hits = [h.path for h in fake_service.search_text("blue", k=4).results]
    assert str(target) in blue_hits


def test_copy_of_known_content_borrows_the_vector(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path
):
    fake_service.index_folder(color_folder)
    before = fake_encoder.images_encoded
    shutil.copy(color_folder / "green" / "green_0.jpg", color_folder / "green" / "copy.jpg")
    report = fake_service.index_folder(color_folder)
    assert (report.added, report.embedded) == (1, 0)
    assert fake_encoder.images_encoded == before


def test_non_recursive_run_ignores_subfolders(fake_service: ClipSearch, color_folder: Path):
    save_color(color_folder / "top.jpg", COLORS["white"])
    report = fake_service.index_folder(color_folder, recursive=False)
    assert report.indexed_total == 1


def test_index_dir_inside_the_folder_is_never_indexed(fake_encoder: FakeEncoder, color_folder: Path):
    from server.config import Settings

    service = ClipSearch(Settings(index_dir=color_folder / "index", model=fake_encoder.model_name), fake_encoder)
    save_color(color_folder / "index" / "stray.jpg", COLORS["red"])
    report = service.index_folder(color_folder)
    assert report.indexed_total == 15


def test_hidden_files_and_folders_are_skipped(fake_service: ClipSearch, color_folder: Path):
    save_color(color_folder / ".thumbnails" / "t.jpg", COLORS["red"])
    save_color(color_folder / "red" / "._appledouble.jpg", COLORS["red"])
    assert fake_service.index_folder(color_folder).indexed_total == 15


def test_missing_folder_is_a_clear_error(fake_service: ClipSearch, tmp_path: Path):
    with pytest.raises(FileMissing, match="does not exist"):
        fake_service.index_folder(tmp_path / "nope")


def other_encoder() -> FakeEncoder:
    other = FakeEncoder()
    other.model_name = "another-model"
    other.model_identity = "sha256:" + "0b" * 32  # type: ignore[misc]
    return other


def test_each_collection_searches_with_its_own_model_whatever_the_default(
    index_dir: Path, color_folder: Path, fake_service: ClipSearch
):
    from server.config import Settings

    fake_service.index_folder(color_folder)  # built with fake-color-encoder
    built_with, other = FakeEncoder(), other_encoder()
    service = ClipSearch(Settings(index_dir=index_dir, model="another-model"), other)
    service.encoders.add(built_with)
    service.index_folder(color_folder, collection="second")  # a new collection gets the default model

    assert "/red/" in service.search_text("red", k=1).results[0].path
    assert "/red/" in service.search_text("red", k=1, collection="second").results[0].path
    assert built_with.texts_encoded == ["red"] and other.texts_encoded == ["red"]
    models = {c.name: c.model for c in service.list_collections().collections}
    assert models == {"default": "fake-color-encoder", "second": "another-model"}


def test_asking_a_collection_for_another_model_is_refused_naming_both(
    index_dir: Path, color_folder: Path, fake_service: ClipSearch
):
    fake_service.index_folder(color_folder)
    fake_service.encoders.add(other_encoder())

    with pytest.raises(CollectionMismatch) as raised:
        fake_service.index_folder(color_folder, model="another-model")

    message = str(raised.value)
    assert "built with model 'fake-color-encoder'; it cannot take 'another-model'" in message
    assert "new collection name" in message
    assert fake_service.collection("default").count() == 3 * len(COLORS)


def test_same_model_under_another_name_opens_the_collection(
    index_dir: Path, color_folder: Path, fake_service: ClipSearch
):
    from server.config import Settings

    fake_service.index_folder(color_folder)
    renamed = FakeEncoder()
    renamed.model_name = "/a/copy/of/fake-color-encoder"  # same identity, other name

    hits = ClipSearch(Settings(index_dir=index_dir, model=renamed.model_name), renamed).search_text("red", k=3)

    assert [Path(h.path).parent.name for h in hits.results] == ["red", "red", "red"]


def test_symlink_leading_outside_the_roots_is_not_read(tmp_path: Path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    save_color(inside / "ok.jpg", COLORS["red"])
    secret = save_color(outside / "secret.jpg", COLORS["blue"])
    (inside / "link.jpg").symlink_to(secret)
    scan = scan_folder(inside, guard=PathGuard([inside]))
    files, failures = scan.files, scan.failures
    assert [f.path.name for f in files] == ["ok.jpg"]
    assert [Path(f.path).name for f in failures] == ["link.jpg"]
    assert "outside" in failures[0].reason


def test_progress_reports_reach_the_total(fake_service: ClipSearch, color_folder: Path):
    seen: list[tuple[int, int]] = []
    fake_service.index_folder(color_folder, progress=lambda p: seen.append((p.done, p.to_process)))
    assert seen[0] == (0, 15)
    assert seen[-1] == (15, 15)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_file_names_that_are_not_utf8_are_indexed_and_reported_as_json(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    save_color(Path(os.fsdecode(raw)), COLORS["red"])
    report = fake_service.index_folder(folder)
    assert report.indexed_total == 1
    hits = fake_service.search_text("red", k=1)
    assert hits.results[0].path.endswith("caf\\xe9.jpg")
    assert "caf\\\\xe9.jpg" in hits.model_dump_json()
