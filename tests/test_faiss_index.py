"""The IVF index: when it is chosen, how it is built and calibrated, and that it stays right through writes, reopens,
rebuilds and the service, CLI and MCP paths. Results are checked against exact numpy search on seeded clustered data."""

import itertools
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from conftest import FakeEncoder, fake_collection_listed, fill, image, mcp_client, with_encoder
from server.errors import InvalidArgument
from server.service import ClipSearch
from server.store import faiss_index
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.faiss_index import (
    AUTO_ANN_THRESHOLD,
    CALIBRATION_QUERIES,
    TARGET_RECALL,
    build_ivf,
    calibrate_nprobe,
    choose_kind,
    nlist_for,
)

MODEL = "test-model"
DIM = 64
CLUSTERS = 40
COUNT = 3000
K = 10
TIE = 1e-5


def clustered(n: int, seed: int = 0, dim: int = DIM, clusters: int = CLUSTERS) -> npt.NDArray[np.float32]:
    """Unit vectors around `clusters` random centres: the shape real CLIP embeddings of a photo library have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    raw = centres[rng.integers(0, clusters, n)] + rng.normal(0, 0.1, (n, dim))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: npt.NDArray[np.float32], n: int, seed: int) -> npt.NDArray[np.float32]:
    """Queries near, not at, `n` of the stored vectors."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), n, replace=False)
    queries = vectors[picks] + rng.normal(0, 0.02, (n, vectors.shape[1]))
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def exact_top(
    paths: list[Path], vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int = K
) -> list[list[Path]]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    return [[paths[j] for j in row] for row in np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def recall(found: list[list[tuple[Path, float]]], truth: list[list[Path]]) -> float:
    shared = [len({p for p, _ in got} & set(want)) / len(want) for got, want in zip(found, truth, strict=True)]
    return float(np.mean(shared))


def assert_scores_are_exact(
    found: list[list[tuple[Path, float]]],
    by_path: dict[Path, npt.NDArray[np.float32]],
    queries: npt.NDArray[np.float32],
) -> None:
    """Every returned score is the exact inner product of its item's vector with the query, best first."""
    for query, hits in zip(queries, found, strict=True):
        got = [s for _, s in hits]
        want = [float(by_path[p].astype(np.float64) @ query.astype(np.float64)) for p, _ in hits]
        np.testing.assert_allclose(got, want, rtol=0, atol=TIE)
        assert got == sorted(got, reverse=True)


def index_file(collection: Collection) -> Path:
    return collection.folder / f"index.{collection.generation}.faiss"


def kind_of(index: Any) -> str:
    return "ivf" if faiss.try_extract_index_ivf(index) is not None else "flat"


def stored_kind(collection: Collection) -> str:
    return kind_of(faiss.read_index(str(index_file(collection))))


def manifest_on_disk(collection: Collection) -> dict[str, Any]:
    return json.loads((collection.folder / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
def store(tmp_path: Path) -> CollectionStore:
    return CollectionStore(tmp_path / "index")


@pytest.fixture
def vectors() -> npt.NDArray[np.float32]:
    return clustered(COUNT)


@pytest.fixture
def ivf(store: CollectionStore, vectors: npt.NDArray[np.float32]) -> tuple[Collection, list[Path]]:
    collection = store.create("big", MODEL, DIM, index_policy="ivf")
    return collection, fill(collection, vectors)


# --- choosing and sizing ------------------------------------------------------------------------------------------


def test_auto_is_flat_below_the_threshold_and_ivf_from_it():
    assert choose_kind("auto", 0) == "flat"
    assert choose_kind("auto", AUTO_ANN_THRESHOLD - 1) == "flat"
    assert choose_kind("auto", AUTO_ANN_THRESHOLD) == "ivf"
    assert choose_kind("auto", 10 * AUTO_ANN_THRESHOLD) == "ivf"


@pytest.mark.parametrize("count", [0, 1, AUTO_ANN_THRESHOLD - 1, AUTO_ANN_THRESHOLD, 10 * AUTO_ANN_THRESHOLD])
def test_an_explicit_flat_or_ivf_policy_is_honoured_at_any_size(count: int):
    assert choose_kind("flat", count) == "flat"
    assert choose_kind("ivf", count) == "ivf"


@pytest.mark.parametrize("count", [0, 1, 38, 39, 40, 77, 78, 1000, 3000, 20_000, 150_000, 1_000_000, 10**9])
def test_nlist_leaves_at_least_39_training_vectors_per_cluster_and_is_never_zero(count: int):
    nlist = nlist_for(count)
    assert nlist >= 1
    if count >= 39:
        assert count // nlist >= 39


@pytest.mark.parametrize("count", [200_000, 1_000_000, 10_000_000, 10**9])
def test_nlist_is_a_power_of_two_for_large_collections(count: int):
    nlist = nlist_for(count)
    assert nlist > 1 and nlist & (nlist - 1) == 0
    assert nlist <= 16384


# --- an IVF collection against exact search -----------------------------------------------------------------------


def test_an_ivf_collection_becomes_ivf_on_its_first_write(store: CollectionStore, vectors: npt.NDArray[np.float32]):
    collection = store.create("big", MODEL, DIM, index_policy="ivf")
    assert collection.manifest.index_type == "flat"
    assert not (collection.folder / "ivf_trained.faiss").exists()
    fill(collection, vectors)
    on_disk = manifest_on_disk(collection)
    assert (on_disk["index_policy"], on_disk["index_type"]) == ("ivf", "ivf")
    assert on_disk["index_params"]["nlist"] == nlist_for(COUNT)
    assert 1 <= on_disk["index_params"]["nprobe"] <= on_disk["index_params"]["nlist"]
    assert collection.manifest.index_type == "ivf"
    assert (collection.folder / "ivf_trained.faiss").is_file()
    assert kind_of(faiss.read_index(str(collection.folder / "ivf_trained.faiss"))) == "ivf"
    assert stored_kind(collection) == "ivf"
    assert collection.count() == collection.ntotal == COUNT


def test_ivf_search_finds_the_exact_top_10_for_queries_near_stored_vectors(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32]
):
    collection, paths = ivf
    queries = near(vectors, 200, seed=1)
    found = collection.search(queries, K)
    assert all(len(hits) == K for hits in found)
    assert recall(found, exact_top(paths, vectors, queries)) >= 0.95
    assert_scores_are_exact(found, dict(zip(paths, vectors, strict=True)), queries)


def test_ivf_is_approximate_not_a_disguised_exact_scan(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32]
):
    collection, _ = ivf
    nprobe = collection.manifest.index_params["nprobe"]
    assert nprobe < collection.manifest.index_params["nlist"]
    assert faiss.extract_index_ivf(collection._index).nprobe == nprobe


# --- switching between flat and IVF -------------------------------------------------------------------------------


def test_auto_switches_to_ivf_past_the_threshold_and_back_to_flat_when_asked(
    store: CollectionStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(faiss_index, "AUTO_ANN_THRESHOLD", 1000)
    data = clustered(1300, seed=3)
    collection = store.create("grows", MODEL, DIM)
    assert collection.manifest.index_policy == "auto"

    paths = fill(collection, data[:900], folder="/a")
    assert collection.manifest.index_type == "flat" and stored_kind(collection) == "flat"
    assert not (collection.folder / "ivf_trained.faiss").exists()

    paths += fill(collection, data[900:], folder="/b")
    assert manifest_on_disk(collection)["index_type"] == "ivf" and stored_kind(collection) == "ivf"
    assert collection.count() == collection.ntotal == 1300
    queries = near(data, 100, seed=4)
    assert recall(collection.search(queries, K), exact_top(paths, data, queries)) >= 0.95

    collection.set_index_policy("flat")
    assert manifest_on_disk(collection)["index_policy"] == "flat"
    assert manifest_on_disk(collection)["index_type"] == "ivf"  # applied at the end of the next write
    extra = clustered(1, seed=5)
    paths += fill(collection, extra, folder="/c")
    data = np.vstack([data, extra])
    on_disk = manifest_on_disk(collection)
    assert (on_disk["index_type"], on_disk["index_params"]) == ("flat", {})
    assert stored_kind(collection) == "flat" and kind_of(collection._index) == "flat"
    found = collection.search(queries, K)
    assert [[p for p, _ in hits] for hits in found] == exact_top(paths, data, queries)
    assert_scores_are_exact(found, dict(zip(paths, data, strict=True)), queries)


def test_during_a_conversion_searches_are_answered_from_the_mapped_old_index_with_the_same_results(
    store: CollectionStore, vectors: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
):
    from server.store import collection as collection_module

    collection = store.create("converting", MODEL, DIM, index_policy="flat")
    fill(collection, vectors)
    queries = near(vectors, 20, seed=6)
    before = collection.search(queries, K)
    seen: dict[str, Any] = {}
    real = collection_module.build_ivf_from

    def building(*args: Any, **kwargs: Any) -> Any:
        seen["kind"], seen["found"] = kind_of(collection._index), collection.search(queries, K)
        seen["owned"] = faiss.downcast_index(collection._index.index).codes.is_owned
        return real(*args, **kwargs)

    monkeypatch.setattr(collection_module, "build_ivf_from", building)
    collection.set_index_policy("ivf")
    with collection.writer():
        pass

    assert seen["kind"] == "flat" and not seen["owned"]  # the Flat vectors were the file's pages, not a copy
    assert seen["found"] == before
    assert kind_of(collection._index) == "ivf" and collection.ntotal == COUNT
    assert recall(collection.search(queries, K), [[p for p, _ in hits] for hits in before]) >= 0.95


def test_a_conversion_that_fails_leaves_the_old_index_in_memory_taking_commits(
    store: CollectionStore, vectors: npt.NDArray[np.float32], monkeypatch: pytest.MonkeyPatch
):
    from server.store import collection as collection_module

    collection = store.create("failing", MODEL, DIM, index_policy="flat")
    paths = fill(collection, vectors[:2000])

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("no room for the new index")

    monkeypatch.setattr(collection_module, "build_ivf_from", broken)
    collection.set_index_policy("ivf")
    with pytest.raises(MemoryError), collection.writer():
        pass
    monkeypatch.undo()
    collection.set_index_policy("flat")
    paths += fill(collection, vectors[2000:], folder="/more")

    assert manifest_on_disk(collection)["index_type"] == "flat" and collection.ntotal == COUNT
    assert faiss.downcast_index(collection._index.index).codes.is_owned
    queries = near(vectors, 20, seed=7)
    assert [[p for p, _ in hits] for hits in collection.search(queries, K)] == exact_top(paths, vectors, queries)


def test_an_ivf_index_filled_list_by_list_sized_first_equals_one_filled_by_appending(
    vectors: npt.NDArray[np.float32],
):
    ids = np.arange(len(vectors), dtype=np.int64) * 7
    trained, appended, _ = build_ivf(vectors, ids)
    sized = faiss.clone_index(trained)
    faiss_index.fill_ivf(sized, lambda: iter([(ids[:1000], vectors[:1000]), (ids[1000:], vectors[1000:])]))
    sized.nprobe = appended.nprobe
    queries = near(vectors, 50, seed=8)

    assert sized.ntotal == appended.ntotal == len(vectors)
    found_sized, found_appended = sized.search(queries, K), appended.search(queries, K)
    np.testing.assert_array_equal(found_sized[1], found_appended[1])
    np.testing.assert_array_equal(sized.reconstruct(int(ids[1234])), vectors[1234])
    lists = faiss.extract_index_ivf(sized).invlists
    sizes = [lists.list_size(n) for n in range(lists.nlist)]
    assert sizes == [faiss.extract_index_ivf(appended).invlists.list_size(n) for n in range(lists.nlist)]


def test_an_unknown_index_policy_is_refused(store: CollectionStore):
    with pytest.raises(InvalidArgument, match="index_type must be one of auto, flat, ivf"):
        store.create("bad", MODEL, DIM, index_policy="hnsw")
    collection = store.create("good", MODEL, DIM)
    with pytest.raises(InvalidArgument, match="'hnsw'"):
        collection.set_index_policy("hnsw")
    assert manifest_on_disk(collection)["index_policy"] == "auto"


# --- writes to an IVF collection ----------------------------------------------------------------------------------


def test_adding_to_an_ivf_collection_keeps_its_training_and_finds_the_new_vectors(
    ivf: tuple[Collection, list[Path]],
):
    collection, _ = ivf
    trained = collection.folder / "ivf_trained.faiss"
    before = (trained.read_bytes(), trained.stat().st_mtime_ns, dict(collection.manifest.index_params))
    # A cluster the training never saw, and more of the known ones.
    new = np.vstack([clustered(30, seed=7, clusters=1), clustered(30, seed=0)[::-1]])
    new_paths = fill(collection, new, folder="/new")
    assert (trained.read_bytes(), trained.stat().st_mtime_ns, manifest_on_disk(collection)["index_params"]) == before
    assert collection.count() == collection.ntotal == COUNT + 60
    assert kind_of(collection._index) == "ivf"
    for path, (hits,) in zip(new_paths, (collection.search(v[None, :], 1) for v in new), strict=True):
        assert hits[0][0] == path
        assert hits[0][1] == pytest.approx(1.0, abs=TIE)


def test_removed_ids_are_never_returned_and_replaced_vectors_are_found_with_their_new_score(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32]
):
    collection, paths = ivf
    removed = paths[:100]
    replaced = paths[100:120]
    fresh = clustered(len(replaced), seed=11)
    with collection.writer() as w:
        w.remove(collection.find_path(p).id for p in removed)
        for i, (path, vector) in enumerate(zip(replaced, fresh, strict=True)):
            w.replace(collection.find_path(path).id, image(path, f"new-{i}"), vector)
    assert collection.count() == collection.ntotal == COUNT - len(removed)

    current = dict(zip(paths, vectors, strict=True))
    for path in removed:
        del current[path]
    current.update(zip(replaced, fresh, strict=True))

    # Queries at the removed vectors themselves: their nearest stored neighbour would be the removed item.
    at_removed = collection.search(vectors[:100], K)
    assert not {p for hits in at_removed for p, _ in hits} & set(removed)
    assert_scores_are_exact(at_removed, current, vectors[:100])

    for path, vector in zip(replaced, fresh, strict=True):
        (hits,) = collection.search(vector[None, :], K)
        assert hits[0] == (path, pytest.approx(1.0, abs=TIE))
    # Queries at the old vectors: if a replaced item comes back, it is with its new vector's score.
    at_old = collection.search(vectors[100:120], K)
    assert_scores_are_exact(at_old, current, vectors[100:120])

    queries = near(np.stack(list(current.values())), 100, seed=12)
    found = collection.search(queries, K)
    assert recall(found, exact_top(list(current), np.stack(list(current.values())), queries)) >= 0.95
    assert not {p for hits in found for p, _ in hits} & set(removed)


# --- reopening and rebuilding -------------------------------------------------------------------------------------


def test_reopening_loads_the_ivf_index_with_the_manifests_nprobe_and_the_same_results(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32], store: CollectionStore
):
    collection, _ = ivf
    queries = near(vectors, 100, seed=2)
    before = collection.search(queries, K)
    file = index_file(collection)
    stamp = file.stat().st_mtime_ns

    reopened = CollectionStore(store.index_dir).open("big", MODEL, DIM)
    assert reopened.manifest.index_type == "ivf"
    assert faiss.extract_index_ivf(reopened._index).nprobe == collection.manifest.index_params["nprobe"]
    assert file.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    after = reopened.search(queries, K)
    assert [[p for p, _ in h] for h in after] == [[p for p, _ in h] for h in before]
    np.testing.assert_allclose([[s for _, s in h] for h in after], [[s for _, s in h] for h in before], atol=TIE)

    # The manifest, not the value saved inside the FAISS file, sets nprobe.
    manifest = manifest_on_disk(collection)
    manifest["index_params"]["nprobe"] = manifest["index_params"]["nlist"]
    (collection.folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    exhaustive = CollectionStore(store.index_dir).open("big", MODEL, DIM)
    assert faiss.extract_index_ivf(exhaustive._index).nprobe == manifest["index_params"]["nlist"]


def test_a_deleted_index_file_is_rebuilt_as_ivf_from_the_catalog(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32], store: CollectionStore
):
    collection, _ = ivf
    queries = near(vectors, 100, seed=2)
    before = collection.search(queries, K)
    index_file(collection).unlink()

    reopened = CollectionStore(store.index_dir).open("big", MODEL, DIM)
    assert kind_of(reopened._index) == "ivf"
    assert faiss.extract_index_ivf(reopened._index).nprobe == collection.manifest.index_params["nprobe"]
    assert reopened.ntotal == COUNT
    assert index_file(reopened).is_file() and stored_kind(reopened) == "ivf"
    after = reopened.search(queries, K)
    assert [[p for p, _ in h] for h in after] == [[p for p, _ in h] for h in before]
    np.testing.assert_allclose([[s for _, s in h] for h in after], [[s for _, s in h] for h in before], atol=TIE)


def test_an_index_file_of_the_wrong_kind_is_not_trusted_but_rebuilt(
    ivf: tuple[Collection, list[Path]], vectors: npt.NDArray[np.float32], store: CollectionStore
):
    collection, paths = ivf
    queries = near(vectors, 100, seed=2)
    before = collection.search(queries, K)
    # A flat index with the right ids and count but other vectors: trusting it would change every answer.
    ids = np.array([collection.find_path(p).id for p in paths], dtype=np.int64)
    impostor = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    impostor.add_with_ids(clustered(COUNT, seed=99), ids)
    faiss.write_index(impostor, str(index_file(collection)))

    reopened = CollectionStore(store.index_dir).open("big", MODEL, DIM)
    assert kind_of(reopened._index) == "ivf"
    assert stored_kind(reopened) == "ivf"
    after = reopened.search(queries, K)
    assert [[p for p, _ in h] for h in after] == [[p for p, _ in h] for h in before]
    np.testing.assert_allclose([[s for _, s in h] for h in after], [[s for _, s in h] for h in before], atol=TIE)


def test_an_open_collection_follows_another_processs_switch_to_ivf(
    store: CollectionStore, vectors: npt.NDArray[np.float32]
):
    server_side = store.create("shared", MODEL, DIM)
    fill(server_side, vectors[:500], folder="/first")
    assert server_side.manifest.index_type == "flat"

    cli_side = CollectionStore(store.index_dir).open("shared", MODEL, DIM)
    cli_side.set_index_policy("ivf")
    fill(cli_side, vectors[500:], folder="/second")
    assert manifest_on_disk(cli_side)["index_type"] == "ivf" and stored_kind(cli_side) == "ivf"

    server_side.search(vectors[:1], K)  # sees the new generation and reloads
    assert stored_kind(server_side) == "ivf"
    assert server_side.manifest.index_type == "ivf" and kind_of(server_side._index) == "ivf"


# --- calibration --------------------------------------------------------------------------------------------------


def _recall_at(index: Any, queries: npt.NDArray[np.float32], truth: npt.NDArray[np.int64], nprobe: int) -> float:
    index.nprobe = nprobe
    _, found = index.search(queries, truth.shape[1])
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def _calibration_queries(
    vectors: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The queries calibrate_nprobe draws from a generator seeded `seed`, and their exact top-10 ids."""
    rng = np.random.default_rng(seed)
    count, dim = vectors.shape
    picks = rng.choice(count, min(count, CALIBRATION_QUERIES), replace=False)
    queries = vectors[picks] + rng.normal(0, 0.02, (len(picks), dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    return queries, ids[np.argsort(-scores, axis=1)[:, :K]]


def test_calibrated_nprobe_is_the_smallest_power_of_two_reaching_the_target_recall():
    # Spread-out clusters: one probe is not enough, so the search for the smallest nprobe has something to do.
    vectors = clustered(COUNT, seed=21, clusters=400)
    ids = np.arange(1000, 1000 + COUNT, dtype=np.int64)
    _, index, spec = build_ivf(vectors, ids)
    nprobe = calibrate_nprobe(index, vectors, ids, np.random.default_rng(5))
    nlist = index.nlist
    assert nprobe > 1 and nprobe & (nprobe - 1) == 0 and nprobe < nlist
    queries, truth = _calibration_queries(vectors, ids, seed=5)
    assert _recall_at(index, queries, truth, nprobe) >= TARGET_RECALL
    assert _recall_at(index, queries, truth, nprobe // 2) < TARGET_RECALL
    assert spec.params["nprobe"] & (spec.params["nprobe"] - 1) == 0
    assert spec.params["nlist"] == nlist == nlist_for(COUNT)


def test_calibration_falls_back_to_nlist_when_the_target_is_never_reached(monkeypatch: pytest.MonkeyPatch):
    vectors = clustered(COUNT, seed=21, clusters=400)
    ids = np.arange(COUNT, dtype=np.int64)
    _, index, _ = build_ivf(vectors, ids)
    monkeypatch.setattr(faiss_index, "TARGET_RECALL", 1.01)
    assert calibrate_nprobe(index, vectors, ids, np.random.default_rng(5)) == index.nlist


# --- service, CLI and MCP -----------------------------------------------------------------------------------------


def test_index_folder_with_index_type_ivf_makes_the_collection_ivf(fake_service: ClipSearch, color_folder: Path):
    report = fake_service.index_folder(color_folder, collection="colors", index_type="ivf")
    assert report.indexed_total == 15
    manifest = fake_service.store.read_manifest("colors")
    assert (manifest.index_policy, manifest.index_type) == ("ivf", "ivf")
    assert [c.index_type for c in fake_service.list_collections().collections] == ["ivf"]
    hits = fake_service.search_text("a red thing", k=3, collection="colors").results
    assert len(hits) == 3 and all("/red/" in h.path for h in hits)
    # Re-indexing without index_type keeps the choice.
    fake_service.index_folder(color_folder, collection="colors")
    assert fake_service.store.read_manifest("colors").index_policy == "ivf"


def test_index_folder_refuses_an_unknown_index_type_before_embedding_anything(
    fake_service: ClipSearch, color_folder: Path, fake_encoder: FakeEncoder
):
    fake_service.index_folder(color_folder, collection="colors")
    with pytest.raises(InvalidArgument, match="index_type must be one of auto, flat, ivf, got 'hnsw'"):
        fake_service.index_folder(color_folder, collection="colors", index_type="hnsw")
    assert fake_encoder.images_encoded == 15
    assert fake_service.store.read_manifest("colors").index_policy == "auto"


def test_a_refused_index_type_leaves_no_new_collection_behind(fake_service: ClipSearch, color_folder: Path):
    with pytest.raises(InvalidArgument):
        fake_service.index_folder(color_folder, collection="typo", index_type="hnsw")
    assert fake_service.store.names() == []


def test_cli_index_type_option_sets_the_collection_index(
    color_folder: Path, index_dir: Path, capsys: pytest.CaptureFixture[str]
):
    from server.cli.main import main

    fake = with_encoder()
    common = ["--index-dir", str(index_dir), "--model", FakeEncoder.model_name]
    assert main(["index", str(color_folder), "--index-type", "ivf", "--json", *common], make_service=fake) == 0
    capsys.readouterr()
    assert main(["collections", "--json", *common], make_service=fake) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["index_type"]) for c in listing["collections"]] == [("default", "ivf")]
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(color_folder), "--index-type", "hnsw", *common])
    assert exit_info.value.code == 2
    assert "invalid choice: 'hnsw'" in capsys.readouterr().err


@pytest.mark.anyio
async def test_mcp_index_type_is_validated_and_reported_by_list_collections(
    fake_service: ClipSearch, color_folder: Path
):
    async with mcp_client(fake_service, [color_folder]) as client:
        refused = await client.call_tool("index_folder", {"folder": str(color_folder), "index_type": "hnsw"})
        indexed = await client.call_tool("index_folder", {"folder": str(color_folder), "index_type": "ivf"})
        listing = await client.call_tool("list_collections", {})
    assert refused.is_error and "index_type" in refused.content[0].text
    assert not indexed.is_error and indexed.structured_content["indexed_total"] == 15
    assert listing.structured_content["collections"] == [fake_collection_listed("default", 15, "ivf")]


def test_exact_search_streamed_over_chunks_equals_a_flat_index_over_all_of_them():
    import faiss

    from server.store.faiss_index import StreamedExact

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(70_000, 75_000, dtype=np.int64)
    queries = vectors[rng.choice(5000, 40)] + rng.normal(0, 0.05, (40, 16)).astype(np.float32)
    bounds = [0, 7, 1000, 1001, 4096, 5000]  # uneven chunks, one smaller than k
    chunks = [(ids[a:b], vectors[a:b]) for a, b in itertools.pairwise(bounds)]
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    flat.add_with_ids(vectors, ids)

    scores, found = StreamedExact(lambda: iter(chunks)).search(queries, 10)
    want_scores, want = flat.search(queries, 10)

    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
