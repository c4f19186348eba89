"""server/store/manifest.py, format version 4: a collection records its model's family; one written by the previous
release (version 3, tests/fixtures/v3_manifest_collection) opens and searches unchanged and gains its family from
its next indexing run, nothing embedded again."""

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
    assert on_disk["schema_version"] == SCHEMA_VERSION == 4 and on_disk["family"] == "clip"
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
    assert after == {**before, "schema_version": SCHEMA_VERSION, "family": "clip"}
    assert listed_after.collections[0].family == "clip"
    assert "clip" in render(listed_after).splitlines()[1]  # `clipsearch collections` shows it


def test_a_manifest_of_a_newer_format_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    from server.errors import CollectionMismatch
    from server.store.collection_store import CollectionStore

    folder = tmp_path / "index" / "future"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}), encoding="utf-8")

    with pytest.raises(CollectionMismatch, match=f"format version {SCHEMA_VERSION + 1}.*update clipsearch"):
        CollectionStore(tmp_path / "index").read_manifest("future")
