"""Filtered search is exact: on a Flat index the top-k of brute-force cosine over the images that pass, however few;
on IVF recall@10 >= 0.95 against that. Dates, places, cameras, folders, ordering and paging as documented; bad
values are clear errors."""

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import FakeEncoder, mcp_client, with_encoder
from server.encoders.protocol import normalize
from server.images.metadata import PhotoMetadata
from server.search.filtered import select_ids
from server.search.filters import ResultOrder, SearchFilter, distance_km
from server.search.searcher import Searcher
from server.service import ClipSearch
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.writer import NewImage

DIM = 16
BERLIN, PARIS, TOKYO = (52.52, 13.405), (48.8566, 2.3522), (35.6762, 139.6503)
RARE = (1234, 15678)  # the only two photos from a Leica: 0.01 % of 20,000


class VectorEncoder(FakeEncoder):
    """Text queries are given as vectors: 'q:<seed>' is a seeded random unit vector."""

    dim = DIM

    def encode_texts(self, texts: Any) -> npt.NDArray[np.float32]:
        return normalize(np.stack([np.random.default_rng(int(t[2:])).normal(size=DIM) for t in texts]))


def meta(i: int) -> PhotoMetadata:
    """Photo i: a date in 2024 (every 3rd with an offset), a place, a camera; every 10th has no place."""
    day, hour = 1 + i % 28, i % 24
    month = 1 + (i // 28) % 12
    offset = "+02:00" if i % 3 == 0 else ""
    taken = f"2024-{month:02d}-{day:02d}T{hour:02d}:00:00{offset}"
    from server.images.metadata import _derived

    local, utc = _derived(taken)
    place = (None, None) if i % 10 == 0 else [BERLIN, PARIS, TOKYO][i % 3]
    camera = "Leica M11" if i in RARE else ["Apple iPhone 15", "Canon EOS R5", "Google Pixel 8"][i % 3]
    return PhotoMetadata(taken, "exif", local, utc, place[0], place[1], camera, 640, 480)


def build(index_dir: Path, count: int, index_type: str = "flat") -> tuple[Collection, npt.NDArray[np.float32]]:
    vectors = normalize(np.random.default_rng(7).normal(size=(count, DIM)))
    store = CollectionStore(index_dir)
    collection = store.create("photos", VectorEncoder.model_name, DIM, index_policy=index_type)
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            folder = "/lib/a" if i % 2 else "/lib/b"
            image = NewImage(Path(f"{folder}/img_{i:05d}.jpg"), 1, 1, f"h{i}", 640, 480, meta(i))
            writer.add(image, vector)
    return collection, vectors


def brute_force(collection: Collection, query: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int) -> list:
    _, paths, vectors = collection.all_vectors()
    all_ids = collection.all_vectors()[0]
    position = {int(i): n for n, i in enumerate(all_ids)}
    rows = np.array([position[int(i)] for i in ids], dtype=np.int64)
    scores = vectors[rows] @ query
    best = np.lexsort((ids, -scores))[:k]
    return [str(paths[rows[b]]) for b in best]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    return build(tmp_path_factory.mktemp("flat"), 3000)[0]


def query(seed: int) -> npt.NDArray[np.float32]:
    return VectorEncoder().encode_texts([f"q:{seed}"])[0]


@pytest.mark.parametrize(
    "filters",
    [
        SearchFilter.parse(folder=Path("/lib/a")),  # 50 %
        SearchFilter.parse(taken_after="2024-03-01", taken_before="2024-03-03"),  # about 1 %
        SearchFilter.parse(
            near=TOKYO, radius_km=5, camera="pixel", taken_after="2024-01-01", taken_before="2024-02-09"
        ),
    ],
    ids=["folder, 50 %", "dates, 1 %", "place + camera + dates, a handful"],
)  # fmt: skip
def test_filtered_flat_search_equals_brute_force_over_the_passing_images(
    flat: Collection, filters: SearchFilter
) -> None:
    where, params = filters.sql()
    passing = select_ids(flat, where, params, filters.keeps_place if filters.near else None)
    searcher = Searcher(VectorEncoder())

    for seed in range(5):
        got = [h.path for h in searcher.by_text(flat, f"q:{seed}", k=10, filters=filters).results]
        assert got == brute_force(flat, query(seed), passing, 10)
    assert len(got) == min(10, len(passing)) and len(passing) > 0
    assert len(passing) < 3000


def test_filtered_ivf_search_keeps_recall_at_every_selectivity(tmp_path: Path) -> None:
    collection, _ = build(tmp_path, 20_000, index_type="ivf")
    assert collection.manifest.index_type == "ivf"
    searcher = Searcher(VectorEncoder())
    cases = {
        "50 %": SearchFilter.parse(folder=Path("/lib/a")),
        "1 %": SearchFilter.parse(taken_after="2024-02-01", taken_before="2024-02-03"),
        "0.01 %": SearchFilter.parse(camera="leica"),
    }
    for name, filters in cases.items():
        where, params = filters.sql()
        passing = select_ids(collection, where, params, filters.keeps_place if filters.near else None)
        recalls = []
        for seed in range(20):
            got = {h.path for h in searcher.by_text(collection, f"q:{seed}", k=10, filters=filters).results}
            want = set(brute_force(collection, query(seed), passing, 10))
            recalls.append(len(got & want) / len(want))
        assert np.mean(recalls) >= 0.95, (name, len(passing), np.mean(recalls))


def test_dates_cover_whole_days_datetimes_are_exact_and_offsets_compare_instants(flat: Collection) -> None:
    def taken(filters: SearchFilter) -> set[str]:
        where, params = filters.sql()
        with sqlite3.connect(flat.folder / "catalog.sqlite") as conn:
            return {r[0] for r in conn.execute(f"SELECT taken FROM images WHERE {where}", params)}

    one_day = taken(SearchFilter.parse(taken_after="2024-01-05", taken_before="2024-01-05"))
    exact = taken(SearchFilter.parse(taken_after="2024-01-05T04:00:00", taken_before="2024-01-05T05:00:00"))
    # Instants: a photo at 04:00 without an offset is read as 04:00Z; one at 06:00+02:00 is 04:00Z too.
    no_offset = taken(SearchFilter.parse(taken_after="2024-01-05T05:30:00+02:00", taken_before="2024-01-05T04:30Z"))
    with_offset = taken(SearchFilter.parse(taken_after="2024-01-07T03:30:00Z", taken_before="2024-01-07T04:30:00Z"))

    assert one_day and all(t.startswith("2024-01-05T") for t in one_day)
    assert {t[:19] for t in exact} == {"2024-01-05T04:00:00"}  # after inclusive, before exclusive
    assert no_offset == {"2024-01-05T04:00:00"}
    assert with_offset == {"2024-01-07T06:00:00+02:00"}


def test_place_camera_and_folder_filters_keep_only_what_they_say(flat: Collection) -> None:
    searcher = Searcher(VectorEncoder())
    near_paris = SearchFilter.parse(near=PARIS, radius_km=50, camera="CANON", folder=Path("/lib/a"))

    results = searcher.by_text(flat, "q:1", k=50, filters=near_paris).results

    assert len(results) == 50
    for hit in results:
        assert hit.camera == "Canon EOS R5" and hit.path.startswith("/lib/a/")
        assert distance_km(PARIS, (hit.latitude, hit.longitude)) <= 50  # type: ignore[arg-type]
    assert distance_km(BERLIN, PARIS) == pytest.approx(878, abs=2)


def test_sort_by_date_reorders_the_k_most_relevant_and_offset_pages_through_them(flat: Collection) -> None:
    searcher = Searcher(VectorEncoder())
    by_score = searcher.by_text(flat, "q:3", k=20).results
    newest = searcher.by_text(flat, "q:3", k=20, order=ResultOrder(sort="taken")).results
    oldest = searcher.by_text(flat, "q:3", k=20, order=ResultOrder(sort="taken_asc")).results
    page_two = searcher.by_text(flat, "q:3", k=10, order=ResultOrder(offset=10)).results
    floor = by_score[4].score - 1e-6  # scores in results are rounded to 6 decimals
    above = searcher.by_text(flat, "q:3", k=20, order=ResultOrder(min_score=floor)).results

    assert {h.path for h in newest} == {h.path for h in by_score}
    instants = [flat.search_hits(query(3), 1, np.array([_id(flat, h.path)]))[0].taken_utc for h in newest]
    assert instants == sorted(instants, reverse=True)
    assert [h.path for h in oldest] == [h.path for h in newest][::-1]
    assert [h.path for h in page_two] == [h.path for h in by_score[10:]]
    assert [h.rank for h in page_two] == list(range(11, 21))
    assert [h.path for h in above] == [h.path for h in by_score[:5]]


def _id(collection: Collection, path: str) -> int:
    entry = collection.find_path(Path(path))
    assert entry is not None
    return entry.id


def test_the_date_filter_uses_the_catalog_index(flat: Collection) -> None:
    where, params = SearchFilter.parse(taken_after="2024-03-01", taken_before="2024-03-03").sql()
    with sqlite3.connect(flat.folder / "catalog.sqlite") as conn:
        plan = " ".join(
            str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM images WHERE {where}", params)
        )

    assert "images_taken_local" in plan


@pytest.mark.anyio
async def test_bad_filter_values_are_tool_errors_that_say_what_to_fix(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path
) -> None:
    fake_service.index_folder(color_folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cases = {
        "taken_after must be an ISO 8601 date": {"taken_after": "yesterday"},
        "taken_before must be an ISO 8601 date": {"taken_before": "2024-13-01"},
        "must be before taken_before": {"taken_after": "2024-06-30", "taken_before": "2024-06-01"},
        "latitude": {"near": {"latitude": 91, "longitude": 0}, "radius_km": 5},
        "radius_km": {"near": {"latitude": 10, "longitude": 0}, "radius_km": -1},
        "near needs radius_km": {"near": {"latitude": 10, "longitude": 0}},
        "outside the folders": {"folder": "/etc"},
        "is not part of collection 'default'": {"folder": str(elsewhere)},
        "min_score": {"min_score": 2},
        "offset": {"offset": 20_000},
    }
    async with mcp_client(fake_service, [tmp_path]) as client:
        results = {
            expected: await client.call_tool("search_images_by_text", {"query": "red", **arguments})
            for expected, arguments in cases.items()
        }

    for expected, result in results.items():
        assert result.is_error, expected
        assert expected in result.content[0].text, (expected, result.content[0].text)  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("tool", ["search_images_by_text", "search_similar_images", "find_duplicates"])
async def test_a_folder_filter_that_would_answer_nothing_is_a_tool_error_naming_the_collections_folders(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path, tool: str
) -> None:
    fake_service.index_folder(color_folder)
    (color_folder / "empty").mkdir()
    arguments = {
        "search_images_by_text": {"query": "red"},
        "search_similar_images": {"image_path": str(color_folder / "red" / "red_0.jpg")},
        "find_duplicates": {},
    }[tool]
    cases = {
        "does not exist": color_folder / "does-not-exist",
        "holds no image of collection 'default'": color_folder / "empty",
    }
    async with mcp_client(fake_service, [tmp_path]) as client:
        results = {
            expected: await client.call_tool(tool, {**arguments, "folder": str(folder)})
            for expected, folder in cases.items()
        }
        allowed = await client.call_tool(tool, {**arguments, "folder": str(color_folder / "red")})

    for expected, result in results.items():
        text = result.content[0].text  # type: ignore[union-attr]
        assert result.is_error and expected in text and str(color_folder) in text, (expected, text)
    assert not allowed.is_error, allowed.content


@pytest.mark.anyio
async def test_filters_reach_both_search_tools_and_the_cli(
    fake_service: ClipSearch, color_folder: Path, capsys: pytest.CaptureFixture[str], index_dir: Path
) -> None:
    fake_service.index_folder(color_folder)
    red = color_folder / "red"
    async with mcp_client(fake_service, [color_folder]) as client:
        text = await client.call_tool("search_images_by_text", {"query": "blue", "k": 15, "folder": str(red)})
        image = await client.call_tool(
            "search_similar_images",
            {"image_path": str(red / "red_0.jpg"), "k": 15, "folder": str(color_folder / "blue")},
        )
    from server.cli.main import main

    code = main(
        ["search", "blue", "-k", "15", "--folder", str(red), "--json", "--index-dir", str(index_dir), "--model",
         FakeEncoder.model_name],
        make_service=with_encoder(),
    )  # fmt: skip
    cli = capsys.readouterr().out

    assert [Path(h["path"]).parent.name for h in text.structured_content["results"]] == ["red"] * 3
    assert [Path(h["path"]).parent.name for h in image.structured_content["results"]] == ["blue"] * 3
    assert code == 0 and cli.count('"rank"') == 3 and "/red/" in cli


def test_empty_filter_searches_everything(flat: Collection) -> None:
    assert not SearchFilter.parse().active
    searcher = Searcher(VectorEncoder())
    unfiltered = searcher.by_text(flat, "q:1", k=1000).results
    empty = searcher.by_text(flat, "q:1", k=1000, filters=SearchFilter.parse()).results
    assert [h.path for h in empty] == [h.path for h in unfiltered] and len(empty) == 1000


def test_camera_text_is_matched_literally_not_as_a_pattern() -> None:
    assert SearchFilter.parse(camera="a_b%").sql() == ("camera LIKE ? ESCAPE '\\'", ["%a\\_b\\%%"])


def test_opening_a_collection_moves_what_is_alive_out_of_the_garbage_collectors_full_passes(
    fake_service: ClipSearch, color_folder: Path, fake_encoder: FakeEncoder
) -> None:
    import gc

    fake_service.index_folder(color_folder)
    fresh = ClipSearch(fake_service.settings, encoder=fake_encoder)  # as a new process finds the collection
    gc.unfreeze()

    fresh.collection("default")

    assert gc.get_freeze_count() > 1000  # the modules, the service and the collection at least
    gc.unfreeze()
