"""Recognised text in the catalog (store/text_search.py): stored per image, kept through moves, forgotten with new
content or removal, matched by the `text` filter case- and accent-insensitively, as substrings, CJK included, with
FTS syntax taken literally; combined with the other filters and with ranking."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_filters import DIM, VectorEncoder, query

from server.encoders.text_recognition import RecognisedText, TextLine
from server.errors import InvalidArgument
from server.search.filters import SearchFilter
from server.search.searcher import Searcher
from server.store.collection import Collection
from server.store.collection_store import CollectionStore
from server.store.schema import CATALOG_VERSION
from server.store.text_search import fold, snippet, texts_by_id, unread, words_of
from server.store.writer import NewImage

MODEL = "ocr-model-identity"
TEXTS = {
    0: "BOARDING PASS\nFlight LH 1234 Frankfurt",
    1: "Crème brûlée 7,50 €",
    2: "北京欢迎你",
    3: 'He said "NEAR" OR * maybe',
    4: "",  # read, nothing found
    5: "lidl receipt 50% off",
}


def box(top: float) -> tuple[tuple[float, float], ...]:
    return ((0.0, top), (100.0, top), (100.0, top + 18), (0.0, top + 18))


def photo_text(text: str) -> RecognisedText:
    lines = tuple(TextLine(line, box(20.0 * n), 0.9) for n, line in enumerate(text.split("\n")) if line)  # type: ignore[arg-type]
    return RecognisedText(lines)


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    vectors = np.random.default_rng(1).normal(size=(40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection = CollectionStore(tmp_path).create("texts", VectorEncoder.model_name, DIM, index_policy="flat")
    with collection.writer() as writer:
        for i, vector in enumerate(vectors):
            image_id = writer.add(
                NewImage(Path(f"/lib/{'a' if i % 2 else 'b'}/{i}.jpg"), 1, 1, f"h{i}", 64, 48), vector
            )
            if i in TEXTS:
                writer.set_text(image_id, MODEL, photo_text(TEXTS[i]))
    return collection


def found(collection: Collection, text: str, **filters: object) -> set[int]:
    where, params = SearchFilter.parse(text=text, **filters).sql()  # type: ignore[arg-type]
    return {
        int(Path(row[0].decode()).stem) for row in collection.query(f"SELECT path FROM images WHERE {where}", params)
    }


def test_text_is_folded_to_match_without_case_accents_or_control_characters() -> None:
    assert fold("  Crème\tBRÛLÉE\x00 ﬁn  ") == "creme brulee fin"
    assert words_of("LH  1234") == ["lh", "1234"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lh 1234", {0}),
        ("BOARDING", {0}),
        ("oard", {0}),  # part of a word
        ("creme brulee", {1}),
        ("CRÈME", {1}),
        ("北京", {2}),
        ('"near"', {3}),  # FTS syntax is text to look for
        ("OR *", {3}),
        ("50%", {5}),
        ("%", {5}),
        ("lh lidl", set()),  # every word must be there
        ("xyz", set()),
    ],
)
def test_the_text_filter_finds_the_photos_whose_text_holds_every_word(
    collection: Collection, text: str, expected: set[int]
) -> None:
    assert found(collection, text) == expected


def test_the_text_filter_combines_with_the_folder_filter_and_ranking(collection: Collection) -> None:
    searcher = Searcher(VectorEncoder())
    ranked = searcher.by_text(collection, "q:3", k=10, filters=SearchFilter.parse(text="a")).results
    in_b = searcher.by_text(
        collection, "q:3", k=10, filters=SearchFilter.parse(text="a", folder=Path("/lib/b"))
    ).results

    assert found(collection, "a") == {0, 3} and found(collection, "a", folder=Path("/lib/a")) == {3}
    assert [Path(h.path).stem for h in in_b] == ["0"]
    _, paths, vectors = collection.all_vectors()
    exact = {Path(p).stem: float(v @ query(3)) for p, v in zip(paths, vectors, strict=True)}
    assert sorted(Path(h.path).stem for h in ranked) == ["0", "3"]
    assert [h.score for h in ranked] == pytest.approx(sorted((exact["0"], exact["3"]), reverse=True), abs=1e-5)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201])
def test_an_empty_or_too_long_text_filter_is_refused_with_what_to_fix(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="text"):
        SearchFilter.parse(text=bad)


def test_text_stays_with_a_moved_photo_and_goes_with_new_content_or_removal(collection: Collection) -> None:
    ids = {int(Path(row[1].decode()).stem): int(row[0]) for row in collection.query("SELECT id, path FROM images")}
    with collection.writer() as writer:
        writer.move(ids[0], Path("/lib/moved/0.jpg"), 1, 2)
        writer.replace(ids[1], NewImage(Path("/lib/a/1.jpg"), 2, 2, "new", 64, 48), np.ones(DIM, np.float32) / 4)
        writer.remove([ids[2]])

    texts = texts_by_id(collection.query, list(ids.values()))
    assert texts[ids[0]].text.text == TEXTS[0] and texts[ids[0]].model == MODEL
    assert ids[1] not in texts and ids[2] not in texts
    assert (
        found(collection, "lh 1234") == {0}
        and found(collection, "creme") == set()
        and found(collection, "北京") == set()
    )
    assert texts[ids[4]].text.lines == () and ids[4] not in unread(collection.query, MODEL)
    assert ids[1] in unread(collection.query, MODEL) and ids[0] in unread(collection.query, "another-ocr-model")
    assert len(unread(collection.query, MODEL)) == 40 - 1 - (len(TEXTS) - 2)  # 1 removed; 2 of the read no longer


def test_lines_come_back_as_stored_in_reading_order(collection: Collection) -> None:
    (image_id,) = [row[0] for row in collection.query("SELECT id FROM images WHERE path = ?", [b"/lib/b/0.jpg"])]
    (stored,) = texts_by_id(collection.query, [image_id]).values()
    text = stored.text
    assert [line.text for line in text.lines] == ["BOARDING PASS", "Flight LH 1234 Frankfurt"]
    assert text.lines[1].box == box(20.0) and text.lines[1].confidence == pytest.approx(0.9)


def test_a_snippet_is_at_most_300_characters_around_the_match() -> None:
    text = "word " * 200 + "the WiFi password is Crème-42 " + "more " * 200
    cut = snippet(text, words_of("creme"))
    assert len(cut) <= 300 and "Crème-42" in cut
    assert snippet("short text", ["zzz"]) == "short text"


def test_a_catalog_of_the_previous_version_gains_the_text_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    from conftest import install_previous_collection

    index, _ = install_previous_collection("v3_manifest_collection", tmp_path)
    catalog = index / "default" / "catalog.sqlite"
    with sqlite3.connect(catalog) as conn:
        before = conn.execute("SELECT id, path, vector FROM images ORDER BY id").fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
    conn.close()
    model = __import__("json").loads((index / "default" / "manifest.json").read_text(encoding="utf-8"))["model"]

    collection = CollectionStore(index).open("default", model)
    after = collection.query("SELECT id, path, vector FROM images ORDER BY id")
    upgraded = collection.query("SELECT value FROM meta WHERE key = 'catalog_version'")

    assert version == ("3",) and upgraded == [(str(CATALOG_VERSION),)] and CATALOG_VERSION == 5
    assert after == before and len(unread(collection.query, MODEL)) == len(before)
    assert found(collection, "anything") == set()
