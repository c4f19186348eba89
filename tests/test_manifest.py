"""server/store/manifest.py, format version 6: a collection records its model's family (version 4), whether text in
its photos is read (`ocr`, version 5), and may be an archive's "ivfpq" index (version 6); one written by an earlier
release (version 3, tests/fixtures/v3_manifest_collection; version 4, tests/fixtures/v4_manifest_collection; version 5,
tests/fixtures/v5_manifest_collection) opens and searches unchanged and is migrated by its next indexing run, nothing
embedded again."""

import json
from pathlib import Path

import pytest

from conftest import assert_answers_as_recorded, previous_release_service
from server.cli.render import render
from server.config import Settings
from server.service import ClipSearch
from server.store.manifest import SCHEMA_VERSION


def test_a_new_collection_records_its_models_family(tiny_clip: Path, tmp_path: Path) -> None:
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny_clip)))
    (tmp_path / "photos").mkdir()

    service.index_folder(tmp_path / "photos", "fresh")

    on_disk = json.loads((tmp_path / "index" / "fresh" / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == SCHEMA_VERSION == 6 and on_disk["family"] == "clip" and on_disk["ocr"] == "auto"
    [listed] = service.list_collections().collections
    assert listed.family == "clip"


def test_a_version_3_collection_searches_unchanged_and_its_next_run_records_the_family_without_embedding(
    tiny_clip: Path, tmp_path: Path
) -> None:
    service, photos, path, before = previous_release_service("v3_manifest_collection", tiny_clip, tmp_path)

    by_text = service.search_text("a rocket launching", k=9)
    by_image = service.search_image(photos / "cat" / "chelsea.jpg", k=9)
    listed_before = service.list_collections().collections[0]
    untouched = path.read_bytes()
    report = service.index_folder(photos)
    after = json.loads(path.read_text(encoding="utf-8"))
    listed_after = service.list_collections()

    assert before["schema_version"] == 3 and "family" not in before
    assert_answers_as_recorded("v3_manifest_collection", by_text, by_image)
    assert json.loads(untouched) == before  # reading never writes
    assert listed_before.family is None
    assert report.embedded == 0 and report.unchanged == 9
    assert after == {**before, "schema_version": SCHEMA_VERSION, "family": "clip", "ocr": "auto"}
    assert listed_after.collections[0].family == "clip"
    assert "clip" in render(listed_after).splitlines()[1]  # `clipsearch collections` shows it


def test_a_version_4_collection_searches_unchanged_and_its_next_run_reads_text_without_embedding(
    tiny_clip: Path, tmp_path: Path
) -> None:
    from server.encoders.text_recognition import shared_recognizer
    from server.store.text_search import texts_by_id

    service, photos, path, before = previous_release_service("v4_manifest_collection", tiny_clip, tmp_path)

    by_text = service.search_text("a rocket launching", k=9)
    by_image = service.search_image(photos / "cat" / "chelsea.jpg", k=9)
    untouched = path.read_bytes()
    report = service.index_folder(photos)
    again = service.index_folder(photos)
    after = json.loads(path.read_text(encoding="utf-8"))
    collection = service.collection("default")
    ids = [int(row[0]) for row in collection.query("SELECT id FROM images", ())]
    texts = texts_by_id(collection.query, ids)

    assert before["schema_version"] == 4 and "ocr" not in before
    assert_answers_as_recorded("v4_manifest_collection", by_text, by_image)
    assert json.loads(untouched) == before  # reading never writes
    assert report.embedded == 0 and report.unchanged == 9
    assert after == {**before, "schema_version": SCHEMA_VERSION, "ocr": "auto"}
    assert report.text_to_read == 9 == report.text_read + report.text_first_pass_only
    assert sorted(texts) == sorted(ids) and {t.model.split("+")[0] for t in texts.values()} == {
        shared_recognizer().identity
    }
    assert again.text_to_read == 0 and again.embedded == 0  # read once, never again while unchanged


def test_a_version_5_collection_searches_unchanged_and_its_next_run_only_bumps_the_version_without_embedding(
    tiny_clip: Path, tmp_path: Path
) -> None:
    service, photos, path, before = previous_release_service("v5_manifest_collection", tiny_clip, tmp_path)

    by_text = service.search_text("a rocket launching", k=9)
    by_image = service.search_image(photos / "cat" / "chelsea.jpg", k=9)
    untouched = path.read_bytes()
    report = service.index_folder(photos)
    after = json.loads(path.read_text(encoding="utf-8"))
    listed = service.list_collections().collections[0]

    assert before["schema_version"] == 5 and before["ocr"] == "auto" and before["index_type"] == "flat"
    assert_answers_as_recorded("v5_manifest_collection", by_text, by_image)
    assert json.loads(untouched) == before  # reading never writes
    assert report.embedded == 0 and report.unchanged == 9
    assert report.text_to_read == 0  # that release read every image's text with the same recogniser
    assert after == {**before, "schema_version": SCHEMA_VERSION} and SCHEMA_VERSION == 6  # nothing else changes
    assert (listed.family, listed.index_type, listed.images) == ("clip", "flat", 9)


def test_a_manifest_of_a_newer_format_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    from server.errors import CollectionMismatch
    from server.store.collection_store import CollectionStore

    folder = tmp_path / "index" / "future"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}), encoding="utf-8")

    with pytest.raises(CollectionMismatch, match=f"format version {SCHEMA_VERSION + 1}.*update clipsearch"):
        CollectionStore(tmp_path / "index").read_manifest("future")


def test_a_manifest_asking_for_an_unknown_text_reading_is_refused_saying_what_is_known(tmp_path: Path) -> None:
    from server.errors import CollectionMismatch
    from server.store.collection_store import CollectionStore

    store = CollectionStore(tmp_path / "index")
    store.create("odd", "some-model", 4, identity="sha256:" + "ab" * 32).close()
    path = tmp_path / "index" / "odd" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), "ocr": "sometimes"}), "utf-8")

    with pytest.raises(CollectionMismatch, match=r"'sometimes'.*auto, on, off"):
        CollectionStore(tmp_path / "index").read_manifest("odd")
