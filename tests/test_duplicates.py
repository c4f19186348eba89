"""find_duplicates and `clipsearch duplicates`: planted exact copies, re-encoded and resized copies and a burst are
found exactly; look-alike uniform frames are not grouped; keepers are the largest; nothing is ever touched."""

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import FIXTURES, SAMPLES, install_previous_collection, mcp_client, serving
from server.cli.main import main
from server.errors import InvalidArgument
from server.library.duplicates import DuplicateQuery, non_keepers
from server.service import ClipSearch


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """The sample photos plus planted duplicates. The fake encoder embeds an image as its mean colour, so many
    unrelated photos are near each other in its space: only the perceptual check keeps them apart."""
    root = tmp_path / "library"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("*.md"))
    planted = root / "planted"
    planted.mkdir()
    shutil.copy(root / "cat" / "chelsea.jpg", planted / "chelsea copy.jpg")  # byte-identical
    coffee = Image.open(root / "coffee" / "coffee.jpg")
    coffee.resize((coffee.width // 2, coffee.height // 2)).save(planted / "coffee small.jpg", quality=70)
    rocket = Image.open(root / "space" / "rocket.jpg")
    w, h = rocket.size
    for i, shift in enumerate((0.01, 0.02)):  # a burst: the frame moves a little each time
        left = int(w * shift)
        rocket.crop((left, 0, left + int(w * 0.97), h)).save(planted / f"rocket burst {i}.jpg", quality=92)
        os.utime(planted / f"rocket burst {i}.jpg", (1_700_000_000 + i, 1_700_000_000 + i))
    Image.new("RGB", (320, 240)).save(planted / "black 1.png")
    shutil.copy(planted / "black 1.png", planted / "black 2.png")
    Image.new("RGB", (640, 480)).save(planted / "black large.png")  # black, but not the same file
    Image.new("RGB", (320, 240), (40, 40, 40)).save(planted / "fade 1.png")  # uniform frames of a fade: alike in
    Image.new("RGB", (320, 240), (90, 90, 90)).save(planted / "fade 2.png")  # CLIP space, not duplicates
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def names(report: object) -> list[tuple[str, list[str], str]]:
    return [
        (g.kind, sorted(Path(m.path).name for m in g.members), Path(g.keeper).name)
        for g in report.groups  # type: ignore[attr-defined]
    ]


def test_planted_groups_are_found_exactly_with_the_largest_kept(fake_service: ClipSearch, library: Path) -> None:
    fake_service.index_folder(library)
    before = snapshot(library)

    report = fake_service.find_duplicates()

    assert sorted(names(report)) == sorted(
        [
            ("exact", ["black 1.png", "black 2.png"], "black 1.png"),
            ("exact", ["chelsea copy.jpg", "chelsea.jpg"], "chelsea.jpg"),
            ("near", ["coffee small.jpg", "coffee.jpg"], "coffee.jpg"),
            ("near", ["rocket burst 0.jpg", "rocket burst 1.jpg", "rocket.jpg"], "rocket.jpg"),
        ]
    )
    rocket = next(g for g in report.groups if len(g.members) == 3)
    assert rocket.keeper_reason.startswith("the largest (")
    assert report.groups[0].members[0].path.endswith(".jpg")  # the largest group comes first
    assert snapshot(library) == before  # nothing read-write, nothing moved


def test_exact_only_folder_and_paging_narrow_the_report(fake_service: ClipSearch, library: Path) -> None:
    fake_service.index_folder(library)

    exact = fake_service.find_duplicates(query=DuplicateQuery(exact_only=True))
    space = fake_service.find_duplicates(query=DuplicateQuery(folder=library / "space"))
    paged = fake_service.find_duplicates(query=DuplicateQuery(max_groups=1, offset=1))

    assert {g.kind for g in exact.groups} == {"exact"} and exact.groups_total == 2
    assert space.groups_total == 0 and space.images == 3  # the burst's copies are outside that folder
    assert paged.groups_total == 4 and len(paged.groups) == 1 and paged.offset == 1


def test_bad_arguments_are_refused(fake_service: ClipSearch, library: Path) -> None:
    fake_service.index_folder(library)
    for query, message in (
        (DuplicateQuery(threshold=0), "threshold"),
        (DuplicateQuery(threshold=1.5), "threshold"),
        (DuplicateQuery(max_bits=65), "max_bits"),
        (DuplicateQuery(max_groups=0), "max_groups"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            fake_service.find_duplicates(query=query)


@pytest.mark.anyio
async def test_the_tool_reports_the_groups_and_refuses_a_folder_outside_the_roots(
    fake_service: ClipSearch, library: Path
) -> None:
    async with mcp_client(fake_service, [library]) as client:
        await client.call_tool("index_folder", {"folder": str(library)})
        result = await client.call_tool("find_duplicates", {})
        outside = await client.call_tool("find_duplicates", {"folder": "/etc"})

    assert not result.is_error, result.content
    assert result.structured_content["groups_total"] == 4  # type: ignore[index]
    assert "keep " in result.content[0].text  # type: ignore[union-attr]
    assert outside.is_error and "outside the folders" in outside.content[0].text  # type: ignore[union-attr]


def test_the_cli_prints_the_non_keepers_nul_separated(
    fake_service: ClipSearch, library: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    fake_service.index_folder(library)

    assert main(["duplicates", "--print0"], make_service=serving(fake_service)) == 0
    printed = capsysbinary.readouterr().out.split(b"\0")
    report = fake_service.find_duplicates()
    assert [p.decode() for p in printed[:-1]] == non_keepers(report) and printed[-1] == b""
    assert len(non_keepers(report)) == 5


def test_a_collection_from_the_previous_release_is_upgraded_and_gains_fingerprints_without_embedding(
    tiny_clip: Path, tmp_path: Path
) -> None:
    import json
    import sqlite3

    from server.config import Settings
    from server.encoders.torch_engine import TransformersEncoder
    from server.store.collection_store import CollectionStore
    from server.store.schema import CATALOG_VERSION

    fixture = FIXTURES / "v2_collection"
    index, photos = install_previous_collection("v2_collection", tmp_path)
    catalog = index / "default" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:
        before = conn.execute("SELECT id, vector FROM images ORDER BY id").fetchall()
    conn.close()
    model = json.loads((index / "default" / "manifest.json").read_text(encoding="utf-8"))["model"]

    collection = CollectionStore(index).open("default", model)
    query = TransformersEncoder(str(tiny_clip)).encode_texts(["a rocket launching"])
    found = collection.search(query, 9)[0]
    collection.close()
    with sqlite3.connect(catalog) as conn:
        upgraded = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
        after = conn.execute("SELECT id, vector FROM images ORDER BY id").fetchall()
        unhashed = conn.execute("SELECT COUNT(*) FROM images WHERE dhash IS NULL").fetchone()
    service = ClipSearch(Settings(index_dir=index, model=model))
    service.encoders.add(TransformersEncoder(str(tiny_clip)), model)  # the checkpoint, where the release had it
    before_run = service.find_duplicates()
    report = service.index_folder(photos)
    after_run = service.find_duplicates()

    assert upgraded == (str(CATALOG_VERSION),) and after == before and unhashed == (9,)
    recorded = json.loads((fixture / "search_text.json").read_text(encoding="utf-8"))["results"]
    assert [p.name for p, _ in found] == [Path(r["path"]).name for r in recorded]
    assert [s for _, s in found] == pytest.approx([r["score"] for r in recorded], abs=1e-5)
    assert "9 images have no perceptual fingerprint yet" in before_run.notes[0]
    assert report.embedded == 0 and report.unchanged == 9 and report.added == 0
    assert after_run.notes == [] and after_run.images == 9


@pytest.mark.anyio
async def test_a_diverse_search_folds_a_burst_into_its_best_shot_and_still_fills_the_page(
    fake_service: ClipSearch, library: Path
) -> None:
    fake_service.index_folder(library)
    rocket = str(library / "space" / "rocket.jpg")
    async with mcp_client(fake_service, [library]) as client:
        plain = await client.call_tool("search_similar_images", {"image_path": rocket, "k": 5})
        diverse = await client.call_tool("search_similar_images", {"image_path": rocket, "k": 5, "diverse": True})

    plain_names = [Path(r["path"]).name for r in plain.structured_content["results"]]  # type: ignore[index]
    results = diverse.structured_content["results"]  # type: ignore[index]
    assert {"rocket.jpg", "rocket burst 0.jpg", "rocket burst 1.jpg"} <= set(plain_names[:3])
    assert len(results) == 5 and Path(results[0]["path"]).name == "rocket.jpg" and results[0]["also"] == 2
    assert not any("burst" in r["path"] for r in results)
    assert all(r["also"] == 0 for r in results[1:]) and plain.structured_content["results"][0]["also"] is None  # type: ignore[index]
    assert "(+2 near-duplicates)" in diverse.content[0].text  # type: ignore[union-attr]


def planted_collection(
    folder: Path, count: int, groups: int, dim: int = 16, index_policy: str = "flat"
) -> tuple[Any, set[frozenset[int]]]:
    """`count` random unit vectors with `groups` planted near-duplicate pairs and triples (cosine ≈ 0.99, hashes a few
    bits apart); returns the collection and the planted groups, as sets of image numbers."""
    import numpy as np

    from server.images.fingerprint import Perceptual
    from server.store.collection_store import CollectionStore
    from server.store.writer import NewImage

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = rng.integers(-(2**62), 2**62, count).tolist()
    order, planted = rng.permutation(count).tolist(), set()
    for g in range(groups):
        members = order[3 * g : 3 * g + 2 + g % 2]
        for member in members[1:]:
            nudged = vectors[members[0]] + rng.normal(0, 0.02, dim).astype(np.float32)
            vectors[member] = nudged / np.linalg.norm(nudged)
            hashes[member] = hashes[members[0]] ^ 0b101
        planted.add(frozenset(members))
    collection = CollectionStore(folder).create("planted", "fake", dim, index_policy=index_policy)
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            image = NewImage(Path(f"/planted/{i}.jpg"), 1, 1, f"h{i}", 64, 48, None, Perceptual(hashes[i], 99))
            writer.add(image, vector)
    return collection, planted


def test_past_the_exact_size_the_cells_find_the_groups_exact_search_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.library import duplicates, near_pairs

    collection, planted = planted_collection(tmp_path, 3 * near_pairs.EXACT_UP_TO // 2, groups=60)

    def groups(report: Any) -> set[frozenset[int]]:
        return {frozenset(int(Path(m.path).stem) for m in g.members) for g in report.groups}

    probed = duplicates.find_duplicates(collection, DuplicateQuery(max_groups=1000))
    monkeypatch.setattr(near_pairs, "EXACT_UP_TO", 10**9)
    exact = duplicates.find_duplicates(collection, DuplicateQuery(max_groups=1000))

    assert groups(exact) == planted  # the planted groups, and nothing the random background would join
    assert groups(probed) == groups(exact)


def stem_groups(report: Any) -> set[frozenset[int]]:
    return {frozenset(int(Path(m.path).stem) for m in g.members) for g in report.groups}


def test_an_ivf_collection_s_own_lists_find_the_groups_exact_search_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.library import duplicates, near_pairs

    collection, planted = planted_collection(tmp_path, 4000, groups=40, index_policy="ivf")
    monkeypatch.setattr(near_pairs, "EXACT_UP_TO", 500)
    probed = duplicates.find_duplicates(collection, DuplicateQuery(max_groups=1000))
    monkeypatch.setattr(near_pairs, "EXACT_UP_TO", 10**9)
    exact = duplicates.find_duplicates(collection, DuplicateQuery(max_groups=1000))

    assert collection.manifest.index_type == "ivf" and collection.manifest.index_params["nlist"] > 1
    assert stem_groups(exact) == planted and stem_groups(probed) == planted


@pytest.mark.parametrize("exact_up_to", [10**9, 100])
def test_a_folder_s_duplicates_are_its_own_images_only_whether_compared_exactly_or_by_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_up_to: int
) -> None:
    import numpy as np

    from server.images.fingerprint import Perceptual
    from server.library import duplicates, near_pairs
    from server.store.collection_store import CollectionStore
    from server.store.writer import NewImage

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors[1] = vectors[0] + 0.01  # a pair inside /a
    vectors[2] = vectors[3] + 0.01  # a pair across /a (2) and /b (3)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection = CollectionStore(tmp_path).create("scoped", "fake", 16, index_policy="flat")
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            folder = "a" if i < 3 or (i > 3 and i % 2) else "b"
            fingerprint = Perceptual(7 if i < 4 else int(rng.integers(2**40)), 99)
            writer.add(NewImage(Path(f"/{folder}/{i}.jpg"), 1, 1, f"h{i}", 64, 48, None, fingerprint), vector)
    monkeypatch.setattr(near_pairs, "EXACT_UP_TO", exact_up_to)

    whole = duplicates.find_duplicates(collection, DuplicateQuery())
    scoped = duplicates.find_duplicates(collection, DuplicateQuery(folder=Path("/a")))

    assert stem_groups(whole) == {frozenset({0, 1}), frozenset({2, 3})}
    assert stem_groups(scoped) == {frozenset({0, 1})} and scoped.images == 301


@pytest.mark.parametrize("change", ["commit", "conversion"])
def test_a_commit_or_conversion_during_the_comparison_stops_it_rather_than_mix_two_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    import numpy as np

    from server.errors import DuplicatesCancelled
    from server.library import duplicates, near_pairs
    from server.store.writer import NewImage

    collection, _ = planted_collection(tmp_path, 3000, groups=30)
    monkeypatch.setattr(near_pairs, "EXACT_UP_TO", 100)
    told: list[int] = []

    def meanwhile(compared: int, total: int) -> None:
        told.append(compared)
        if len(told) == 1:
            if change == "conversion":  # the index is replaced, the generation stays
                collection.set_index_policy("ivf")
            with collection.writer() as writer:
                if change == "commit":
                    vector = np.ones(16, dtype=np.float32) / 4
                    writer.add(NewImage(Path("/planted/new.jpg"), 1, 1, "new", 64, 48), vector)

    generation = collection.generation
    with pytest.raises(DuplicatesCancelled):
        duplicates.duplicate_groups(collection, DuplicateQuery(), meanwhile)

    assert len(told) == 1 and told[0] < 3000
    assert (collection.generation > generation) == (change == "commit")
    assert collection.manifest.index_type == ("ivf" if change == "conversion" else "flat")
    assert duplicates.duplicate_groups(collection, DuplicateQuery()).generation == collection.generation


def counting(monkeypatch: pytest.MonkeyPatch, gate: Any = None) -> list[int]:
    """Count the computations of duplicate groups (each one waiting for `gate`, an Event, first if given)."""
    from server.library import duplicate_tasks

    calls: list[int] = []
    real = duplicate_tasks.duplicate_groups

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if gate is not None:
            assert gate.wait(20), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(duplicate_tasks, "duplicate_groups", counted)
    return calls


def started_and_held(service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[int], Any]:
    """The library indexed and a duplicates computation started on it, held until the returned gate opens; returns
    (gate, the computations counted, the report of the call that started it)."""
    import threading

    service.index_folder(library)
    gate = threading.Event()
    calls = counting(monkeypatch, gate)
    return gate, calls, service.find_duplicates(query=DuplicateQuery(), wait_seconds=0.05)


def test_groups_are_computed_once_per_commit_and_paging_reads_them(
    fake_service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_service.index_folder(library)
    calls = counting(monkeypatch)

    first = fake_service.find_duplicates(query=DuplicateQuery(max_groups=1))
    second = fake_service.find_duplicates(query=DuplicateQuery(max_groups=1, offset=1))
    again = fake_service.find_duplicates(query=DuplicateQuery())
    shutil.copy(library / "cat" / "chelsea.jpg", library / "cat" / "chelsea again.jpg")
    fake_service.index_folder(library)  # a commit: the remembered groups describe an older collection
    after = fake_service.find_duplicates(query=DuplicateQuery())

    assert len(calls) == 2
    assert names(first) + names(second) == names(again)[:2]
    assert after.generation > again.generation == first.generation
    assert after.images_in_groups == again.images_in_groups + 1


def test_a_comparison_longer_than_the_wait_answers_running_then_the_groups_on_a_later_call(
    fake_service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, calls, running = started_and_held(fake_service, library, monkeypatch)
    still = fake_service.find_duplicates(query=DuplicateQuery(), wait_seconds=0.05)
    gate.set()
    done = fake_service.find_duplicates(query=DuplicateQuery(), wait_seconds=10)

    assert running.state == "running" and running.job_id and running.groups == [] and running.groups_total == 0
    assert still.state == "running" and still.job_id == running.job_id  # the same computation, not a second one
    assert done.state == "done" and done.job_id is None and done.groups_total == 4  # the library's planted groups
    assert len(calls) == 1


def test_a_cancelled_comparison_is_forgotten_and_the_next_call_computes_again(
    fake_service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.errors import JobNotFound

    gate, calls, running = started_and_held(fake_service, library, monkeypatch)
    assert running.job_id is not None

    stopped = fake_service.duplicate_tasks.cancel(running.job_id)
    gate.set()
    done = fake_service.find_duplicates(query=DuplicateQuery(), wait_seconds=10)  # not the cancelled one's answer
    ended = fake_service.duplicate_tasks.wait(running.job_id, 10)

    assert stopped.state == "cancelled" and stopped.note == "cancelled on request"
    assert done.state == "done" and done.groups_total == 4 and len(calls) == 2
    assert ended.state == "cancelled" and ended.finished is not None and ended.groups_total is None
    with pytest.raises(JobNotFound, match="No duplicates computation d-0123456789"):
        fake_service.duplicate_tasks.cancel("d-0123456789")


@pytest.mark.anyio
async def test_the_tool_answers_running_within_its_wait_and_the_groups_when_asked_again(
    fake_service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    fake_service.index_folder(library)
    gate = threading.Event()
    counting(monkeypatch, gate)
    async with mcp_client(fake_service, [library]) as client:
        running = await client.call_tool("find_duplicates", {"wait_seconds": 0})
        gate.set()
        done = await client.call_tool("find_duplicates", {"wait_seconds": 10})

    assert not running.is_error and running.structured_content["state"] == "running"  # type: ignore[index]
    assert "Ask again with the same arguments" in running.content[0].text  # type: ignore[union-attr]
    assert done.structured_content["state"] == "done" and done.structured_content["groups_total"] == 4  # type: ignore[index]
