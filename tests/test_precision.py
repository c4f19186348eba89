"""int8 collections: towers quantised from the fp32 export and checked against it, a manifest that records the
precision (version 3) so every vector of a collection comes from one, queries at the collection's precision, clear
refusals, and collections of the previous release (manifest version 2) read as fp32 and migrated on their next
write."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    COLORS,
    SAMPLES,
    assert_answers_as_recorded,
    clipsearch,
    clipsearch_imports,
    imported,
    mcp_client,
    previous_release_service,
    save_color,
)
from server.config import Settings
from server.encoders import onnx_export
from server.encoders.onnx_engine import OnnxEncoder
from server.encoders.onnx_export import read_export
from server.encoders.torch_engine import TransformersEncoder
from server.errors import CollectionMismatch, InvalidArgument, ModelUnavailable
from server.images.decode import load_image
from server.service import ClipSearch
from server.store.manifest import SCHEMA_VERSION

TEXTS = ["a red car", "a photo of the sea", "東京の夜景", ""]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for name, rgb in COLORS.items():
        save_color(folder / f"{name}.jpg", rgb)
    return folder


@pytest.fixture
def service(tiny_clip: Path, tmp_path: Path) -> ClipSearch:
    return ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny_clip)))


def manifest(service: ClipSearch, name: str) -> dict[str, object]:
    return json.loads((service.settings.index_dir / name / "manifest.json").read_text(encoding="utf-8"))


def test_int8_towers_are_quantised_from_the_fp32_export_and_stay_close_to_it(tiny_clip: Path, tmp_path: Path):
    fp32 = OnnxEncoder(TransformersEncoder(str(tiny_clip)), cache=tmp_path)
    int8 = OnnxEncoder(TransformersEncoder(str(tiny_clip)), cache=tmp_path, precision="int8")
    pixels = np.random.default_rng(0).standard_normal((3, 3, int8.input_size, int8.input_size)).astype(np.float32)

    texts8, texts32 = int8.encode_texts(TEXTS), fp32.encode_texts(TEXTS)
    images8, images32 = int8.encode_pixels(pixels), fp32.encode_pixels(pixels)

    assert int8.engine == "onnx" and int8.folder != fp32.folder
    export = read_export(int8.folder)
    assert export is not None and export.precision == "int8" and export.min_cosine >= onnx_export.INT8_MIN_COSINE
    assert read_export(fp32.folder) is not None  # made first: int8 is quantised from it
    for weights in ("text.onnx.data", "vision.onnx.data"):  # the weights, memory-mapped, beside each tower
        assert (int8.folder / weights).stat().st_size < (fp32.folder / weights).stat().st_size / 2
    cosines = np.concatenate([(texts8 * texts32).sum(axis=1), (images8 * images32).sum(axis=1)])
    assert cosines.min() >= onnx_export.INT8_MIN_COSINE
    assert np.abs(texts8 - texts32).max() > 1e-4  # really quantised, not the fp32 towers under another name


def test_int8_that_strays_too_far_from_fp32_is_refused_and_creates_no_collection(
    service: ClipSearch, photos: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(onnx_export, "INT8_MIN_COSINE", 1.01)  # no quantisation can meet it
    with pytest.raises(ModelUnavailable, match="without --precision int8"):
        service.index_folder(photos, "strict", precision="int8")
    assert service.store.names() == []


def test_an_int8_collection_records_its_precision_and_is_searched_with_int8_vectors(
    service: ClipSearch, photos: Path, tiny_clip: Path
):
    service.index_folder(photos, "p8", precision="int8")
    service.index_folder(photos, "p32")
    reference = OnnxEncoder(TransformersEncoder(str(tiny_clip)), precision="int8")

    found = service.search_text("a red car", k=5, collection="p8")
    plain = service.search_text("a red car", k=5, collection="p32")

    assert (
        manifest(service, "p8")["precision"] == "int8" and manifest(service, "p8")["schema_version"] == SCHEMA_VERSION
    )
    assert manifest(service, "p32")["precision"] == "fp32"
    collection = service.collection("p8")
    query = reference.encode_texts(["a red car"])[0]
    for hit in found.results:
        stored = collection.vector(collection.find_path(Path(hit.path)).id)
        assert float(stored @ query) == pytest.approx(hit.score, abs=1e-5)  # int8 query against int8 vectors
    # Dynamic int8 quantises a batch's activations with one scale, so a vector depends a little on the images
    # embedded beside it (a photo alone against in a batch: cosine 0.9990-0.99998 seen). The indexer embedded these
    # five in one batch, in whatever order (order does not change the scale); so does the reference here.
    files = sorted(photos.iterdir())
    batch = reference.encode_pixels(
        np.stack([reference.preprocess(load_image(f, reference.input_size).image) for f in files])
    )
    fp32 = OnnxEncoder(TransformersEncoder(str(tiny_clip)))
    exact = fp32.encode_pixels(np.stack([fp32.preprocess(load_image(f, fp32.input_size).image) for f in files]))
    for file, int8_vector, fp32_vector in zip(files, batch, exact, strict=True):
        stored = collection.vector(collection.find_path(file).id)
        assert float(stored @ int8_vector) > 1 - 1e-6  # stored by the int8 vision tower
        assert onnx_export.INT8_MIN_COSINE <= float(stored @ fp32_vector) < 1 - 1e-6  # int8: near fp32, not it
    assert [h.score for h in found.results] != pytest.approx([h.score for h in plain.results], abs=1e-6)
    listed = {c.name: c.precision for c in service.list_collections().collections}
    assert listed == {"p8": "int8", "p32": "fp32"}


def test_a_collection_refuses_vectors_of_another_precision_and_names_a_new_collection(
    service: ClipSearch, photos: Path
):
    service.index_folder(photos, "photos")
    with pytest.raises(CollectionMismatch, match=r"holds fp32 vectors.*'photos-int8'"):
        service.index_folder(photos, "photos", precision="int8")
    with pytest.raises(InvalidArgument, match="precision must be one of fp32, int8"):
        service.index_folder(photos, "other", precision="int4")
    assert service.index_folder(photos, "photos", precision="fp32").unchanged == len(COLORS)


def test_int8_with_the_torch_engine_asked_for_by_name_says_which_engine_to_use(
    tiny_clip: Path, tmp_path: Path, photos: Path
):
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny_clip), engine="torch"))
    with pytest.raises(ModelUnavailable, match="--engine auto or --engine onnx"):
        service.index_folder(photos, "p8", precision="int8")
    assert service.store.names() == []


@pytest.mark.anyio
async def test_index_folder_over_mcp_takes_a_precision_for_a_new_collection(service: ClipSearch, photos: Path):
    async with mcp_client(service, [photos]) as client:
        made = await client.call_tool("index_folder", {"folder": str(photos), "collection": "p8", "precision": "int8"})
        again = await client.call_tool("index_folder", {"folder": str(photos), "collection": "p8", "precision": "fp32"})
        bad = await client.call_tool("index_folder", {"folder": str(photos), "precision": "int4"})
        listed = await client.call_tool("list_collections", {})

    assert not made.is_error and made.structured_content["state"] == "done"  # type: ignore[index]
    assert again.is_error and "holds int8 vectors" in again.content[0].text  # type: ignore[union-attr]
    assert bad.is_error
    assert listed.structured_content["collections"][0]["precision"] == "int8"  # type: ignore[index]


def test_searching_an_int8_collection_from_the_terminal_imports_neither_torch_nor_transformers(
    tiny_clip: Path, tmp_path: Path, photos: Path
):
    env = {**os.environ, "CLIPSEARCH_INDEX_DIR": str(tmp_path / "idx"), "CLIPSEARCH_MODEL": str(tiny_clip)}
    indexed = clipsearch("index", str(photos), "-c", "p8", "--precision", "int8", env=env)
    assert indexed.returncode == 0, indexed.stderr
    searched = clipsearch_imports("search", "a red photo", "-c", "p8", "-k", "3", "--json", env=env)
    assert searched.returncode == 0, searched.stderr
    assert imported(searched) == []
    assert len(json.loads(searched.stdout)["results"]) == 3


def test_a_collection_of_the_previous_release_reads_as_fp32_searches_unchanged_and_is_migrated_by_its_next_write(
    tiny_clip: Path, tmp_path: Path
):
    service, photos, path, before = previous_release_service("v2_manifest_collection", tiny_clip, tmp_path)

    by_text = service.search_text("a rocket launching", k=9)
    by_image = service.search_image(photos / "cat" / "chelsea.jpg", k=9)
    untouched = path.read_bytes()
    with pytest.raises(CollectionMismatch, match="holds fp32 vectors"):
        service.index_folder(photos, precision="int8")
    report = service.index_folder(photos)
    after = json.loads(path.read_text(encoding="utf-8"))

    assert before["schema_version"] == 2 and "precision" not in before
    assert_answers_as_recorded("v2_manifest_collection", by_text, by_image)
    assert json.loads(untouched) == before  # reading never writes
    assert report.embedded == 0 and report.unchanged == 9
    assert after == {**before, "schema_version": SCHEMA_VERSION, "precision": "fp32", "family": "clip", "ocr": "auto"}


def test_the_readmes_quality_recipe_compares_an_fp32_and_an_int8_collection_of_the_same_photos(
    service: ClipSearch, tmp_path: Path
):
    library = shutil.copytree(SAMPLES, tmp_path / "library", ignore=shutil.ignore_patterns("*.md"))
    service.index_folder(library, "photos")
    service.index_folder(library, "photos-int8", precision="int8")

    report = service.compare(["photos", "photos-int8"], report_dir=tmp_path / "report")

    assert report.comparison is not None
    assert [(c.collection, c.precision) for c in report.comparison] == [("photos", "fp32"), ("photos-int8", "int8")]
    # the samples' 5 folders as labels; 6 of the 9 photos share theirs with another
    assert {(c.text_to_image.queries, c.image_to_image.queries) for c in report.comparison} == {(5, 6)}
    assert "| Precision | fp32 | int8 |" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
