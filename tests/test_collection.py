"""Collections on disk: manifest checks, names, the writer's atomic commits, the FAISS index against exact search."""

import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from conftest import fill, image
from server.errors import CollectionBusy, CollectionMismatch, CollectionNotFound, InvalidArgument
from server.store.collection import Collection
from server.store.collection_store import CollectionStore, validate_name
from server.store.manifest import SCHEMA_VERSION

MODEL = "test-model"
DIM = 16


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> npt.NDArray[np.float32]:
    raw = np.random.default_rng(seed).standard_normal((n, dim))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def exact_search(
    paths: Sequence[Path], vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> list[list[tuple[Path, float]]]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(paths[j], float(scores[q, j])) for j in row] for q, row in enumerate(order)]


TIE = 1e-5  # float32 scores closer than this may come back in either order


def assert_matches_exact(
    actual: list[list[tuple[Path, float]]],
    paths: Sequence[Path],
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
) -> None:
    """Exact search's scores rank by rank, each path with its own score, its order wherever there's no near-tie."""
    expected = exact_search(paths, vectors, queries, k)
    everything = exact_search(paths, vectors, queries, len(paths))
    assert len(actual) == len(expected)
    for q, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert len(got) == len(want) == min(k, len(paths))
        assert len({p for p, _ in got}) == len(got)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=TIE)
        exact_score = dict(everything[q])
        np.testing.assert_allclose([s for _, s in got], [exact_score[p] for p, _ in got], rtol=0, atol=TIE)
        full = [s for _, s in everything[q]]
        for rank, ((got_path, _), (want_path, score)) in enumerate(zip(got, want, strict=True)):
            neighbours = full[max(rank - 1, 0) : rank] + full[rank + 1 : rank + 2]
            if all(abs(score - n) > TIE for n in neighbours):
                assert got_path == want_path, f"query {q}, rank {rank}"


@pytest.fixture
def store(tmp_path: Path) -> CollectionStore:
    return CollectionStore(tmp_path / "index")


@pytest.fixture
def collection(store: CollectionStore) -> Collection:
    return store.create("default", MODEL, DIM)


# --- manifest and opening ----------------------------------------------------------------------------------------


def test_created_collection_persists_its_manifest_and_reopens_with_the_same_fields(store: CollectionStore) -> None:
    created = store.create("photos", MODEL, DIM, identity="sha256:" + "ab" * 32)
    created.close()

    on_disk = json.loads((store.index_dir / "photos" / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk["schema_version"] == SCHEMA_VERSION == 6
    assert on_disk["model"] == MODEL
    assert on_disk["model_identity"] == "sha256:" + "ab" * 32
    assert on_disk["precision"] == "fp32" and on_disk["family"] is None  # the store is not told one here
    assert on_disk["ocr"] == "auto"  # text in photos read unless turned off
    assert on_disk["dim"] == DIM
    assert on_disk["metric"] == "inner_product"
    assert on_disk["index_type"] == "flat"

    reopened = CollectionStore(store.index_dir).open("photos", MODEL, DIM)
    assert reopened.manifest == created.manifest
    assert (reopened.manifest.model, reopened.manifest.dim, reopened.manifest.metric) == (MODEL, DIM, "inner_product")
    assert store.names() == ["photos"]
    assert store.exists("photos") and not store.exists("other")


def test_reopening_with_another_model_is_refused_naming_both_models(store: CollectionStore) -> None:
    store.create("photos", "model-a", DIM).close()

    with pytest.raises(CollectionMismatch) as info:
        store.open("photos", "model-b", DIM)
    assert "model-a" in str(info.value) and "model-b" in str(info.value)

    # create() on an existing collection checks the model just the same.
    with pytest.raises(CollectionMismatch, match=r"model-a.*model-b"):
        store.create("photos", "model-b", DIM)


def test_reopening_with_another_dimension_is_refused_naming_both_dimensions(store: CollectionStore) -> None:
    store.create("photos", "model-a", 16).close()

    with pytest.raises(CollectionMismatch) as info:
        store.open("photos", "model-a", 8)
    message = str(info.value)
    assert "model-a" in message and "16-d" in message and "8-d" in message


def test_manifest_with_another_schema_version_is_refused(store: CollectionStore) -> None:
    store.create("photos", MODEL, DIM).close()
    manifest_path = store.index_dir / "photos" / "manifest.json"
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    data["schema_version"] = SCHEMA_VERSION + 1
    manifest_path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(CollectionMismatch, match=f"format version {SCHEMA_VERSION + 1}"):
        store.open("photos", MODEL, DIM)


def test_unreadable_manifest_is_refused_as_a_mismatch(store: CollectionStore) -> None:
    store.create("photos", MODEL, DIM).close()
    (store.index_dir / "photos" / "manifest.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(CollectionMismatch, match="unreadable manifest"):
        store.open("photos", MODEL, DIM)


def test_opening_a_missing_collection_lists_the_existing_names(store: CollectionStore) -> None:
    with pytest.raises(CollectionNotFound, match="none yet"):
        store.open("holidays", MODEL)

    store.create("photos", MODEL, DIM).close()
    store.create("archive", MODEL, DIM).close()
    with pytest.raises(CollectionNotFound) as info:
        store.open("holidays", MODEL)
    assert "'holidays'" in str(info.value)
    assert "archive, photos" in str(info.value)


# --- names -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "a/b",
        "a\\b",
        "..",
        ".",
        "a..b",
        ".hidden",
        "-dash",
        "_under",
        "a\nb",
        "abc\n",
        "a\x00b",
        "a\tb",
        "a b",
        "x" * 65,
        "café",
    ],
)
def test_validate_name_rejects_names_that_are_not_plain_folder_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="Invalid collection name"):
        validate_name(name)


@pytest.mark.parametrize("name", ["default", "my-photos_2024.v1", "A", "9", "x" * 64])
def test_validate_name_accepts_plain_names_up_to_64_characters(name: str) -> None:
    assert validate_name(name) == name


def test_store_refuses_path_tricks_before_touching_the_disk(store: CollectionStore) -> None:
    for call in (lambda: store.create("../escape", MODEL, DIM), lambda: store.open("../escape", MODEL)):
        with pytest.raises(InvalidArgument):
            call()
    assert not (store.index_dir.parent / "escape").exists()


# --- writing and reading -----------------------------------------------------------------------------------------


def test_writer_add_replace_move_touch_remove_keep_catalog_and_index_in_agreement(collection: Collection) -> None:
    vectors = unit_vectors(6, seed=1)
    with collection.writer() as w:
        ids = [w.add(image(f"/photos/{i}.jpg", f"h{i}", size=100 + i, mtime_ns=10 + i), vectors[i]) for i in range(5)]
    assert collection.count() == collection.ntotal == 5
    assert len(set(ids)) == 5
    assert collection.find_path(Path("/photos/2.jpg")).id == ids[2]  # type: ignore[union-attr]

    new_vector = vectors[5]
    with collection.writer() as w:
        w.replace(ids[0], image("/photos/0.jpg", "h0-new", size=555, mtime_ns=55), new_vector)
        w.move(ids[1], Path("/photos/moved/1.jpg"), size=101, mtime_ns=77)
        w.touch(ids[2], size=999, mtime_ns=88)
        w.remove([ids[3]])

    assert collection.count() == collection.ntotal == 4

    replaced = collection.find_path(Path("/photos/0.jpg"))
    assert replaced is not None
    assert (replaced.id, replaced.hash, replaced.size, replaced.mtime_ns) == (ids[0], "h0-new", 555, 55)
    assert collection.find_hash("h0") == []
    assert [e.id for e in collection.find_hash("h0-new")] == [ids[0]]
    np.testing.assert_array_equal(collection.vector(ids[0]), new_vector)

    assert collection.find_path(Path("/photos/1.jpg")) is None
    moved = collection.find_path(Path("/photos/moved/1.jpg"))
    assert moved is not None and (moved.id, moved.hash, moved.mtime_ns) == (ids[1], "h1", 77)

    touched = collection.find_path(Path("/photos/2.jpg"))
    assert touched is not None and (touched.id, touched.hash, touched.size, touched.mtime_ns) == (ids[2], "h2", 999, 88)

    assert collection.find_path(Path("/photos/3.jpg")) is None
    assert collection.find_hash("h3") == []
    with pytest.raises(KeyError):
        collection.vector(ids[3])

    all_ids, paths, stored = collection.all_vectors()
    assert all_ids.tolist() == sorted([ids[0], ids[1], ids[2], ids[4]])
    by_id = dict(zip(all_ids.tolist(), paths, strict=True))
    assert by_id == {
        ids[0]: Path("/photos/0.jpg"),
        ids[1]: Path("/photos/moved/1.jpg"),
        ids[2]: Path("/photos/2.jpg"),
        ids[4]: Path("/photos/4.jpg"),
    }
    expected_vectors = {ids[0]: new_vector, ids[1]: vectors[1], ids[2]: vectors[2], ids[4]: vectors[4]}
    np.testing.assert_array_equal(stored, np.stack([expected_vectors[i] for i in all_ids.tolist()]))

    # The index answers with the replaced vector and the moved path; the removed image is gone.
    queries = np.stack([new_vector, vectors[0], vectors[1], vectors[3]])
    assert_matches_exact(collection.search(queries, 10), paths, stored, queries, 10)
    assert collection.search(new_vector[None, :], 1)[0][0][0] == Path("/photos/0.jpg")
    assert collection.search(vectors[1][None, :], 1)[0][0][0] == Path("/photos/moved/1.jpg")

    assert set(collection.entries_under(Path("/photos"))) == set(paths)
    assert set(collection.entries_under(Path("/photos"), recursive=False)) == set(paths) - {Path("/photos/moved/1.jpg")}
    assert collection.known_hashes() == {"h0-new", "h1", "h2", "h4"}


def test_search_matches_exact_numpy_search_on_seeded_vectors(collection: Collection) -> None:
    vectors = unit_vectors(500, seed=2)
    paths = fill(collection, vectors)
    queries = unit_vectors(7, seed=3)
    for k in (1, 5, 37, 500, 750):
        assert_matches_exact(collection.search(queries, k), paths, vectors, queries, k)


def test_search_on_an_empty_collection_returns_no_hits(collection: Collection) -> None:
    assert collection.search(unit_vectors(3, seed=4), 5) == [[], [], []]


def test_vector_of_the_wrong_shape_is_refused_and_nothing_is_committed(collection: Collection) -> None:
    with pytest.raises(ValueError, match="expected"), collection.writer() as w:
        w.add(image("/photos/ok.jpg", "ok"), unit_vectors(1, seed=5)[0])
        w.add(image("/photos/bad.jpg", "bad"), np.ones(DIM + 1, dtype=np.float32))
    assert collection.count() == collection.ntotal == 0
    assert collection.find_path(Path("/photos/ok.jpg")) is None


def test_exception_inside_the_writer_rolls_back_everything_from_that_block(collection: Collection) -> None:
    vectors = unit_vectors(20, seed=6)
    paths = fill(collection, vectors[:10])
    queries = vectors[10:15]
    before = collection.search(queries, 10)
    generation = collection.generation

    with pytest.raises(RuntimeError, match="interrupted"), collection.writer() as w:
        for i in range(10, 20):
            w.add(image(f"/photos/new_{i}.jpg", f"new-{i}"), vectors[i])
        w.replace(collection.find_path(paths[0]).id, image(paths[0], "changed"), vectors[19])  # type: ignore[union-attr]
        w.remove([collection.find_path(paths[1]).id])  # type: ignore[union-attr]
        raise RuntimeError("interrupted")

    assert collection.count() == collection.ntotal == 10
    assert collection.generation == generation
    assert all(collection.find_path(Path(f"/photos/new_{i}.jpg")) is None for i in range(10, 20))
    assert collection.find_path(paths[0]).hash == "hash-/photos-0"  # type: ignore[union-attr]
    assert collection.find_path(paths[1]) is not None
    assert collection.search(queries, 10) == before
    assert_matches_exact(before, paths, vectors[:10], queries, 10)

    # The write lock was released: the next writer works.
    with collection.writer() as w:
        w.add(image("/photos/after.jpg", "after"), vectors[19])
    assert collection.count() == collection.ntotal == 11


def test_committed_state_survives_reopening_and_only_the_newest_index_file_is_kept(store: CollectionStore) -> None:
    collection = store.create("default", MODEL, DIM)
    vectors = unit_vectors(300, seed=7)
    paths = fill(collection, vectors[:100], folder="/a")
    paths += fill(collection, vectors[100:200], folder="/b")
    with collection.writer() as w:
        w.remove(collection.find_path(p).id for p in paths[:50])  # type: ignore[union-attr]
    paths = paths[50:]
    queries = vectors[200:210]
    before = collection.search(queries, 25)
    generation = collection.generation
    assert generation == 3
    collection.close()

    folder = store.index_dir / "default"
    assert sorted(p.name for p in folder.glob("index.*.faiss")) == [f"index.{generation}.faiss"]

    reopened = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    assert reopened.generation == generation
    assert reopened.count() == reopened.ntotal == 150
    assert reopened.search(queries, 25) == before
    assert_matches_exact(before, paths, vectors[50:200], queries, 25)


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "empty"])
def test_missing_or_corrupt_index_file_is_rebuilt_from_the_catalog(store: CollectionStore, damage: str) -> None:
    collection = store.create("default", MODEL, DIM)
    vectors = unit_vectors(210, seed=8)
    paths = fill(collection, vectors[:200])
    queries = vectors[200:]
    before = collection.search(queries, 15)
    generation = collection.generation
    collection.close()

    index_file = store.index_dir / "default" / f"index.{generation}.faiss"
    original = index_file.read_bytes()
    if damage == "deleted":
        index_file.unlink()
    elif damage == "garbage":
        index_file.write_bytes(np.random.default_rng(9).bytes(4096))
    elif damage == "truncated":
        index_file.write_bytes(original[: len(original) // 2])
    else:
        index_file.write_bytes(b"")

    reopened = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    assert reopened.ntotal == reopened.count() == 200
    assert reopened.search(queries, 15) == before
    assert_matches_exact(before, paths, vectors[:200], queries, 15)
    # The rebuilt index was written back, so the next open reads it instead of rebuilding.
    import faiss

    assert faiss.read_index(str(index_file)).ntotal == 200


def test_stale_index_file_with_the_wrong_count_is_not_trusted(store: CollectionStore) -> None:
    collection = store.create("default", MODEL, DIM)
    vectors = unit_vectors(40, seed=10)
    fill(collection, vectors[:10], folder="/a")
    folder = store.index_dir / "default"
    old_index = (folder / "index.1.faiss").read_bytes()
    paths = fill(collection, vectors[10:30], folder="/b")
    collection.close()
    # An index file under the current generation's name that holds an older state (10 vectors, not 30).
    (folder / "index.2.faiss").write_bytes(old_index)

    reopened = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    assert reopened.ntotal == 30
    all_paths = [Path(f"/a/img_{i:04d}.jpg") for i in range(10)] + paths
    assert_matches_exact(reopened.search(vectors[30:], 30), all_paths, vectors[:30], vectors[30:], 30)


# --- several instances (as several processes would) ----------------------------------------------------------------


def test_second_writer_is_refused_while_one_is_open_and_works_after(store: CollectionStore) -> None:
    first = store.create("default", MODEL, DIM)
    second = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    vectors = unit_vectors(2, seed=11)
    second_block_ran = False

    with first.writer() as w:
        w.add(image("/photos/first.jpg", "first"), vectors[0])
        with pytest.raises(CollectionBusy) as info, second.writer():
            second_block_ran = True
    assert not second_block_ran
    assert "'default'" in str(info.value) and "another run" in str(info.value)

    with second.writer() as w:
        w.add(image("/photos/second.jpg", "second"), vectors[1])
    assert second.count() == second.ntotal == 2
    assert second.search(vectors[:1], 1)[0][0][0] == Path("/photos/first.jpg")
    assert first.search(vectors[1:], 1)[0][0][0] == Path("/photos/second.jpg")


def test_writer_lock_is_refused_to_another_instance_even_before_any_change(store: CollectionStore) -> None:
    first = store.create("default", MODEL, DIM)
    second = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    with first.writer(), pytest.raises(CollectionBusy), second.writer():
        pass
    with second.writer() as w:
        w.add(image("/photos/x.jpg", "x"), unit_vectors(1, seed=12)[0])
    assert first.count() == 1


def test_second_instance_sees_the_first_ones_commits_after_a_generation_check(store: CollectionStore) -> None:
    first = store.create("default", MODEL, DIM)
    second = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    vectors = unit_vectors(110, seed=13)
    queries = vectors[100:]

    paths = fill(first, vectors[:60])
    assert second.generation == 0 and second.ntotal == 0  # not yet checked
    assert_matches_exact(second.search(queries, 10), paths, vectors[:60], queries, 10)
    assert second.generation == first.generation == 1
    assert second.ntotal == 60

    with first.writer() as w:
        w.remove(first.find_path(p).id for p in paths[:20])  # type: ignore[union-attr]
        for i in range(60, 100):
            w.add(image(f"/more/{i}.jpg", f"more-{i}"), vectors[i])
    second.refresh_if_stale()
    assert second.generation == first.generation == 2
    assert second.ntotal == first.ntotal == 80
    expected_paths = paths[20:] + [Path(f"/more/{i}.jpg") for i in range(60, 100)]
    assert_matches_exact(second.search(queries, 80), expected_paths, vectors[20:100], queries, 80)
    assert second.search(queries, 80) == first.search(queries, 80)


def test_open_instance_searches_committed_state_while_another_holds_an_open_transaction(
    store: CollectionStore,
) -> None:
    first = store.create("default", MODEL, DIM)
    vectors = unit_vectors(30, seed=14)
    paths = fill(first, vectors[:20])
    second = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    queries = vectors[25:]

    with first.writer() as w:
        for i in range(20, 25):
            w.add(image(f"/pending/{i}.jpg", f"pending-{i}"), vectors[i])
        # Uncommitted rows are invisible to the other instance.
        assert second.count() == 20
        assert_matches_exact(second.search(queries, 30), paths, vectors[:20], queries, 30)
    assert [len(hits) for hits in second.search(queries, 30)] == [25] * len(queries)


def test_collection_opens_while_another_instance_is_writing(
    store: CollectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short busy timeout keeps the failure fast; a correct open needs no write lock at all.
    real_connect = sqlite3.connect

    def quick_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        kwargs["timeout"] = 0.2
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", quick_connect)
    first = store.create("default", MODEL, DIM)
    vectors = unit_vectors(5, seed=15)
    fill(first, vectors[:3])

    with first.writer() as w:
        w.add(image("/pending/x.jpg", "pending"), vectors[3])
        second = CollectionStore(store.index_dir).open("default", MODEL, DIM)
        assert second.count() == second.ntotal == 3


# --- paths -------------------------------------------------------------------------------------------------------


def test_paths_that_are_not_valid_utf8_round_trip_through_the_catalog(store: CollectionStore) -> None:
    collection = store.create("default", MODEL, DIM)
    odd = Path(os.fsdecode(b"/x/\xff\xfe caf\xe9.jpg"))
    plain = Path("/x/plain.jpg")
    vectors = unit_vectors(3, seed=16)
    with collection.writer() as w:
        odd_id = w.add(image(odd, "odd"), vectors[0])
        w.add(image(plain, "plain"), vectors[1])

    def check(c: Collection) -> None:
        entry = c.find_path(odd)
        assert entry is not None and entry.id == odd_id and entry.path == odd
        assert os.fsencode(entry.path) == b"/x/\xff\xfe caf\xe9.jpg"
        assert c.find_hash("odd")[0].path == odd
        _, paths, _ = c.all_vectors()
        assert paths == [odd, plain]
        assert c.search(vectors[:1], 1)[0][0][0] == odd
        assert set(c.entries_under(Path("/x"))) == {odd, plain}

    check(collection)
    collection.close()
    check(CollectionStore(store.index_dir).open("default", MODEL, DIM))

    with CollectionStore(store.index_dir).open("default", MODEL, DIM).writer() as w:
        w.move(odd_id, Path(os.fsdecode(b"/y/\x80.jpg")), size=1, mtime_ns=2)
    moved = CollectionStore(store.index_dir).open("default", MODEL, DIM)
    assert moved.find_path(odd) is None
    assert moved.find_path(Path(os.fsdecode(b"/y/\x80.jpg"))).id == odd_id  # type: ignore[union-attr]
