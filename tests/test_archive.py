"""An archive built on Ray is a collection the server and CLI search: an on-disk IVF-PQ index (lists and float16
vectors memory-mapped, candidates reranked), nprobe calibrated to recall@10 >= 0.9 against exact search over the
shards; its results agree with that exact search; filters, search by example and list_collections work on it; it is
rebuilt only when the listing changes, opens from a moved folder, and refuses what would need its vectors in the
catalog. One local Ray instance per module (conftest's `local_ray`)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import archive_against_exact, block_pictures, mcp_client
from server.config import Settings
from server.errors import CollectionMismatch, InvalidArgument
from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
from server.service import ClipSearch

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
OPTIONS = ClusterOptions(block_rows=16, embed_batch=16, shard_rows=24, embedders=1)
QUERIES = ("a red car", "a blue sky over the sea", "green leaves", "a dark night", "a white page of text")


def service_over(index_dir: Path, tiny_clip: Path) -> ClipSearch:
    return ClipSearch(Settings(index_dir=index_dir, model=str(tiny_clip), engine="onnx"))


def test_an_archive_is_searched_like_a_collection_and_agrees_with_exact_search(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    block_pictures(folder, 90)
    index_dir = tmp_path / "index"
    report = cluster_index(folder, "archive", index_dir, EncoderRecipe(str(tiny_clip)), options=OPTIONS)
    assert (report.embedded, report.index_type, report.index_built, report.index_vectors) == (90, "ivfpq", True, 90)
    assert report.index_recall_at_10 is not None and report.index_recall_at_10 >= 0.9

    service = service_over(index_dir, tiny_clip)
    listed = {c.name: c for c in service.list_collections().collections}
    assert (listed["archive"].index_type, listed["archive"].images) == ("ivfpq", 90)

    found_among_exact = []
    for query in QUERIES:
        hits, exact, tenth = archive_against_exact(service, "archive", query)
        assert len(hits) == 10
        for hit in hits:  # scores are cosines of the float16 copies: within 1e-3 of the float32 ones
            assert hit.score == pytest.approx(exact[hit.path], abs=2e-3)
        found_among_exact += [exact[hit.path] >= tenth - 2e-3 for hit in hits]
    assert np.mean(found_among_exact) >= 0.9

    example = sorted(folder.rglob("*.png"))[7]
    similar = service.search_image(example, k=5, collection="archive").results
    assert similar[0].path == str(example.resolve()) and similar[0].score == pytest.approx(1.0, abs=2e-3)

    only = service.make_filter("archive", folder=folder / "part1")
    filtered = service.search_text("a red car", k=40, collection="archive", filters=only).results
    assert len(filtered) == 30 and all(Path(h.path).parent.name == "part1" for h in filtered)


def test_a_rerun_keeps_the_index_and_a_grown_source_rebuilds_it_with_the_new_photos(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    files = block_pictures(folder, 30)
    index_dir = tmp_path / "index"
    recipe = EncoderRecipe(str(tiny_clip))
    first = cluster_index(folder, "archive", index_dir, recipe, options=OPTIONS)
    again = cluster_index(folder, "archive", index_dir, recipe, options=OPTIONS)
    assert (again.embedded, again.index_built, again.index_vectors) == (0, False, 30)
    assert again.index_nprobe == first.index_nprobe

    added = block_pictures(folder, 10, start=30)
    files[0].unlink()
    grown = cluster_index(folder, "archive", index_dir, recipe, options=OPTIONS)
    assert (grown.embedded, grown.index_built, grown.index_vectors) == (10, True, 39)
    service = service_over(index_dir, tiny_clip)
    hits = service.search_image(added[3], k=39, collection="archive").results
    assert hits[0].path == str(added[3].resolve())
    assert str(files[0].resolve()) not in {h.path for h in hits}
    generations = sorted(p.name for p in (index_dir / "archive").glob("index.*.faiss"))
    assert len(generations) == 1  # the previous generation's files are gone


def test_a_moved_archive_opens_and_what_needs_the_vectors_in_the_catalog_is_refused_clearly(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    files = block_pictures(folder, 20)
    cluster_index(folder, "archive", tmp_path / "index", EncoderRecipe(str(tiny_clip)), options=OPTIONS)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "index", moved)
    service = service_over(moved, tiny_clip)
    hits = service.search_image(files[2], k=3, collection="archive").results
    assert hits[0].path == str(files[2].resolve())

    with pytest.raises(CollectionMismatch, match="archive built on a cluster"):
        service.index_folder(folder, "archive")
    with pytest.raises(InvalidArgument, match="not offered for archives"):
        service.find_duplicates("archive")
    manifest = json.loads((moved / "archive" / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["schema_version"], manifest["index_type"]) == (6, "ivfpq")
    assert manifest["index_params"]["recall_at_10"] >= 0.9


def test_an_archive_whose_index_files_are_missing_says_to_build_it_again(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    block_pictures(folder, 12)
    index_dir = tmp_path / "index"
    cluster_index(folder, "archive", index_dir, EncoderRecipe(str(tiny_clip)), options=OPTIONS)
    for lists in (index_dir / "archive").glob("lists.*.ivfdata"):
        lists.unlink()
    with pytest.raises(CollectionMismatch, match="run clipsearch cluster index on it again"):
        service_over(index_dir, tiny_clip).search_text("a red car", k=3, collection="archive")


@pytest.mark.anyio
async def test_over_mcp_an_archive_is_listed_searched_by_text_and_example_and_its_gallery_has_thumbnails(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    files = block_pictures(folder, 16)
    index_dir = tmp_path / "index"
    cluster_index(folder, "archive", index_dir, EncoderRecipe(str(tiny_clip)), options=OPTIONS)
    service = service_over(index_dir, tiny_clip)
    async with mcp_client(service, [folder], apps=True) as client:
        listed = (await client.call_tool("list_collections", {})).structured_content
        assert [(c["name"], c["index_type"], c["images"]) for c in listed["collections"]] == [("archive", "ivfpq", 16)]
        asked = {"query": "a red car", "k": 4, "collection": "archive"}
        by_text = await client.call_tool("search_images_by_text", asked)
        assert not by_text.is_error and len(by_text.structured_content["results"]) == 4
        similar = await client.call_tool(
            "search_similar_images", {"image_path": str(files[5]), "k": 3, "collection": "archive"}
        )
        assert similar.structured_content["results"][0]["path"] == str(files[5].resolve())
        paths = [hit["path"] for hit in by_text.structured_content["results"]]
        thumbnails = await client.call_tool("get_thumbnails", {"paths": paths, "side": 64})
        assert not thumbnails.is_error and len(thumbnails.structured_content["thumbnails"]) == 4
        refused = await client.call_tool("find_duplicates", {"collection": "archive"})
        assert refused.is_error and "not offered for archives" in refused.content[0].text


@pytest.mark.parametrize("count", [1, 3, 14, 200])
def test_an_index_of_very_few_vectors_trains_and_finds_each_vector_first(count: int, tmp_path: Path) -> None:
    import faiss

    from server.store import ondisk_index

    vectors = np.random.default_rng(count).normal(size=(count, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(count, dtype=np.int64) * 11 + 7
    trained = ondisk_index.train(vectors, count)
    part = ondisk_index.fill_part(faiss.serialize_index(trained), ids, vectors)
    ondisk_index.merge(tmp_path, 1, trained, [part], lambda: iter([(ids, vectors)]), count)
    index = ondisk_index.MappedArchive(tmp_path, 1)
    index.nprobe = index.nlist
    scores, found = index.search(vectors, 1)
    assert found[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=2e-3)
