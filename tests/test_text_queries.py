"""Searching by the text read in photos, end to end: the `text` filter on both search tools and the CLI, combined with
the other filters and paging; snippets and their marks on every hit; `search_text_in_images` and `clipsearch text`
ranking (exact before partial, OCR slips tolerated, ties newest first, unrelated photos left out, candidates from the
index); `view_image`'s text and lines; refusals; hostile text returned as text."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_metadata import exif_with

from conftest import COLORS, FakeEncoder, error_text, mcp_client, serving
from server.cli.main import main
from server.encoders.text_recognition import RecognisedText, TextLine
from server.search import text_ranking
from server.search.text_ranking import TextQuery, search_texts
from server.service import ClipSearch
from server.store.collection_store import CollectionStore
from server.store.text_search import fold
from server.store.writer import NewImage

HOSTILE = "safe\x00word \u200fRTL\u202e mark <script>alert(1)</script>"
LONG = "word " * 150 + "the door code is ZX 9876 today " + "more " * 150
PHOTOS: dict[str, tuple[str, str, str, str, str | None]] = {  # name: folder, colour, taken, camera, text
    "boarding": ("trips", "blue", "2024:03:01 10:00:00", "Canon", "BOARDING PASS\nFlight LH 1234 Frankfurt\nGate B22"),
    "ticket": ("trips", "blue", "2023:05:01 10:00:00", "Apple", "LH 1234 Munich"),
    "joined": ("screens", "red", "2024:06:01 10:00:00", "Apple", "Booking LH1234 confirmed"),
    "longer": ("screens", "red", "2024:07:01 10:00:00", "Apple", "Order LH 12345"),
    "wifi": ("screens", "green", "2024:02:01 10:00:00", "Apple", "WiFi Password: Crème-42"),
    "berlin": ("trips", "yellow", "2024:04:01 10:00:00", "Canon", "Willkommen in Berlin"),
    "cjk": ("trips", "white", "2024:05:01 10:00:00", "Canon", "北京欢迎你"),
    "fts": ("screens", "white", "2024:08:01 10:00:00", "Apple", 'He said "NEAR" OR * (maybe) -x'),
    "hostile": ("screens", "green", "2024:01:15 10:00:00", "Apple", HOSTILE),
    "long": ("screens", "yellow", "2024:09:01 10:00:00", "Apple", LONG),
    "blank": ("trips", "red", "2024:10:01 10:00:00", "Canon", ""),  # read, no text in it
    "plain": ("trips", "yellow", "2024:11:01 10:00:00", "Canon", None),  # left as indexing left it: no text
}
CAMERAS = {"Canon": ("Canon", "EOS R5"), "Apple": ("Apple", "iPhone 15")}
NOTE = "3 of 11 tiles were left unread"


def box(top: float) -> tuple[tuple[float, float], ...]:
    return ((0.0, top), (120.0, top), (120.0, top + 16.0), (0.0, top + 16.0))


def read(text: str, note: str | None = None) -> RecognisedText:
    lines = tuple(TextLine(line, box(20.0 * n), 0.9 - n / 100) for n, line in enumerate(text.split("\n")) if line)  # type: ignore[arg-type]
    return RecognisedText(lines, note)


def photo(path: Path, colour: str, taken: str, camera: str) -> None:
    make, model = CAMERAS[camera]
    seed = sum(path.name.encode())
    noise = np.random.default_rng(seed).integers(-12, 13, size=(48, 64, 3))
    pixels = np.clip(np.asarray(COLORS[colour])[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG", exif=exif_with(original=taken, make=make, model=model))


@pytest.fixture
def library(fake_service: ClipSearch, tmp_path: Path) -> Path:
    """The photos above, indexed with the fake encoder, their text planted as an OCR stage would have read it; and
    outside/unindexed.jpg, in no collection."""
    root = tmp_path / "photos"
    for name, (folder, colour, taken, camera, _) in PHOTOS.items():
        photo(root / folder / f"{name}.jpg", colour, taken, camera)
    fake_service.index_folder(root)
    photo(root / "outside" / "unindexed.jpg", "blue", "2024:12:01 10:00:00", "Canon")
    collection = fake_service.collection("default")
    with collection.writer() as writer:
        for name, (folder, *_, text) in PHOTOS.items():
            entry = collection.find_path(root / folder / f"{name}.jpg")
            assert entry is not None
            if text is not None:
                writer.set_text(entry.id, "fake-ocr", read(text, NOTE if name == "long" else None))
    return root


def names(content: dict[str, Any] | None) -> list[str]:
    assert content is not None
    return [Path(hit["path"]).stem for hit in content["results"]]


def marked(hit: dict[str, Any]) -> list[str]:
    return [hit["text"][start:end] for start, end in hit["text_marks"]]


async def search(service: ClipSearch, root: Path, tool: str, **arguments: Any) -> dict[str, Any]:
    async with mcp_client(service, [root]) as client:
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


# --- the text filter ------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lh 1234", {"boarding", "ticket", "joined", "longer"}),  # every word, as parts of words too
        ("BOARD", {"boarding"}),
        ("creme-42 wifi", {"wifi"}),  # no accents, any case, any order
        ("北京", {"cjk"}),
        ('"NEAR" OR *', {"fts"}),  # FTS syntax is text to find
        ("(maybe) -x", {"fts"}),
        ("lh berlin", set()),
    ],
)
async def test_the_text_filter_keeps_only_photos_whose_text_holds_every_word_and_marks_them(
    fake_service: ClipSearch, library: Path, text: str, expected: set[str]
) -> None:
    found = await search(fake_service, library, "search_images_by_text", query="blue", k=50, text=text)

    assert set(names(found)) == expected
    words = fold(text).split()
    for hit in found["results"]:
        assert hit["text_marks"] and all(any(w in fold(m) for w in words) for m in marked(hit)), hit


@pytest.mark.anyio
async def test_the_text_filter_combines_with_folder_date_and_camera_filters_and_paging_on_both_tools(
    fake_service: ClipSearch, library: Path
) -> None:
    both = {"query": "blue", "k": 50, "text": "lh 1234"}
    in_trips = await search(fake_service, library, "search_images_by_text", **both, folder=str(library / "trips"))
    this_year = await search(fake_service, library, "search_images_by_text", **both, taken_after="2024-01-01")
    canon = await search(fake_service, library, "search_images_by_text", **both, camera="canon")
    ranked = await search(fake_service, library, "search_images_by_text", **both)
    pages = [
        await search(fake_service, library, "search_images_by_text", query="blue", k=2, offset=o, text="lh 1234")
        for o in (0, 2, 4)
    ]
    similar = await search(
        fake_service,
        library,
        "search_similar_images",
        image_path=str(library / "screens" / "joined.jpg"),
        k=50,
        text="1234",
        sort="taken",
    )

    assert set(names(in_trips)) == {"boarding", "ticket"}
    assert set(names(this_year)) == {"boarding", "joined", "longer"}
    assert names(canon) == ["boarding"]
    assert names(ranked)[:2] == ["boarding", "ticket"]  # the blue ones first: the filter leaves the ranking alone
    assert names(pages[0]) + names(pages[1]) == names(ranked) and names(pages[2]) == []
    assert [h["rank"] for h in pages[1]["results"]] == [3, 4]
    assert names(similar) == ["longer", "joined", "boarding", "ticket"]  # newest first


@pytest.mark.anyio
async def test_every_hit_with_text_carries_its_start_and_hits_without_text_carry_none(
    fake_service: ClipSearch, library: Path
) -> None:
    found = await search(fake_service, library, "search_images_by_text", query="yellow", k=50)
    hits = {Path(h["path"]).stem: h for h in found["results"]}

    assert len(hits) == len(PHOTOS)
    for name in ("plain", "blank"):
        assert (hits[name]["text"], hits[name]["text_marks"]) == (None, None)
    assert hits["boarding"]["text"] == "BOARDING PASS Flight LH 1234 Frankfurt Gate B22"  # one line
    assert hits["boarding"]["text_marks"] == []  # nothing asked of the text
    assert hits["long"]["text"] == LONG[:300] and len(hits["long"]["text"]) == 300


# --- search_text_in_images ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "expected", "scores"),
    [
        # The exact words first (the newer of two first), then inside a longer word, then with a space missing.
        ("lh 1234", ["boarding", "ticket", "longer", "joined"], [1.0, 1.0, 0.95, 0.9]),
        ("LH1234", ["joined", "boarding", "ticket", "longer"], [1.0, 0.9, 0.9, 0.85]),
        ("wi fi password", ["wifi"], [0.9]),  # an extra space
        ("password wifi", ["wifi"], [0.8]),  # every word, in another order
        ("creme 42", ["wifi"], [0.9]),
        ("willkommen berlin", ["berlin"], [0.8]),
        ("北京", ["cjk"], [0.95]),
    ],
)
async def test_text_search_ranks_exact_words_first_tolerates_slips_and_breaks_ties_by_recency(
    fake_service: ClipSearch, library: Path, query: str, expected: list[str], scores: list[float]
) -> None:
    found = await search(fake_service, library, "search_text_in_images", query=query)

    assert names(found) == expected
    assert [h["score"] for h in found["results"]] == scores
    assert all(h["text_marks"] for h in found["results"])


@pytest.mark.anyio
async def test_a_partial_match_scores_the_share_of_the_query_found_and_unrelated_photos_are_left_out(
    fake_service: ClipSearch, library: Path
) -> None:
    slipped = await search(fake_service, library, "search_text_in_images", query="passw0rd")
    stricter = await search(fake_service, library, "search_text_in_images", query="passw0rd", min_score=0.5)
    unrelated = await search(fake_service, library, "search_text_in_images", query="zebra crossing ahead")
    async with mcp_client(fake_service, [library]) as client:
        told = await client.call_tool("search_text_in_images", {"query": "zebra crossing ahead"})

    assert names(slipped) == ["wifi"] and slipped["results"][0]["score"] == 0.35  # 3 of "passw0rd"'s 6 triples
    assert marked(slipped["results"][0]) == ["Passw"]
    assert names(stricter) == [] and names(unrelated) == []
    assert "No photo's recognised text matches" in told.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_text_search_takes_the_filters_sort_and_paging(fake_service: ClipSearch, library: Path) -> None:
    in_screens = await search(
        fake_service, library, "search_text_in_images", query="lh 1234", folder=str(library / "screens")
    )
    canon = await search(fake_service, library, "search_text_in_images", query="lh 1234", camera="canon")
    before = await search(fake_service, library, "search_text_in_images", query="lh 1234", taken_before="2024-06-30")
    oldest = await search(fake_service, library, "search_text_in_images", query="lh 1234", sort="taken_asc")
    second = await search(fake_service, library, "search_text_in_images", query="lh 1234", k=2, offset=2)

    assert names(in_screens) == ["longer", "joined"]
    assert names(canon) == ["boarding"]
    assert names(before) == ["boarding", "ticket", "joined"]
    assert names(oldest) == ["ticket", "boarding", "joined", "longer"]
    assert names(second) == ["longer", "joined"] and [h["rank"] for h in second["results"]] == [3, 4]


@pytest.mark.anyio
async def test_a_snippet_is_at_most_300_characters_around_the_match_with_marks_on_the_words(
    fake_service: ClipSearch, library: Path
) -> None:
    by_text = await search(fake_service, library, "search_text_in_images", query="zx 9876")
    filtered = await search(fake_service, library, "search_images_by_text", query="red", text="zx 9876")

    [hit] = by_text["results"]
    assert len(hit["text"]) <= 300 and hit["text"] in LONG and marked(hit) == ["ZX 9876"]
    [hit] = filtered["results"]
    assert len(hit["text"]) <= 300 and marked(hit) == ["ZX", "9876"]


def test_text_search_scores_only_the_candidates_the_trigram_index_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = CollectionStore(tmp_path).create("many", FakeEncoder.model_name, 3, index_policy="flat")
    letters = "abcdefgkmnopqrsuvwxyz"  # none of the query's: no triple of it in these texts
    with collection.writer() as writer:
        for i in range(3000):
            image_id = writer.add(NewImage(Path(f"/lib/{i}.jpg"), 1, 1, f"h{i}", 64, 48), np.ones(3, np.float32) / 3)
            words = " ".join(letters[(i * 7 + j) % len(letters)] * 3 for j in range(4))
            writer.set_text(image_id, "fake-ocr", read(f"menu {words}"))
        for i, text in enumerate(["Flight LH 1234", "LH1234", "nothing alike"]):
            image_id = writer.add(NewImage(Path(f"/lib/x{i}.jpg"), 1, 1, f"x{i}", 64, 48), np.ones(3, np.float32) / 3)
            writer.set_text(image_id, "fake-ocr", read(text))
    scored: list[str] = []
    real_score = TextQuery.score
    monkeypatch.setattr(TextQuery, "score", lambda self, text: scored.append(text) or real_score(self, text))

    found = search_texts(collection, "lh 1234")

    assert [Path(h.path).name for h in found.results] == ["x0.jpg", "x1.jpg"]
    assert sorted(scored) == ["flight lh 1234", "lh1234"]
    assert text_ranking.CANDIDATES < 3000


# --- view_image -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_view_image_returns_the_text_and_its_lines_in_reading_order_once_read(
    fake_service: ClipSearch, library: Path
) -> None:
    views = {}
    async with mcp_client(fake_service, [library]) as client:
        for name in ("boarding", "blank", "unindexed", "long"):
            folder = PHOTOS[name][0] if name in PHOTOS else "outside"
            result = await client.call_tool("view_image", {"path": str(library / folder / f"{name}.jpg")})
            assert not result.is_error, result.content
            views[name] = (result.structured_content, result.content[0].text)  # type: ignore[union-attr]

    boarding, said = views["boarding"]
    assert boarding["text"] == "BOARDING PASS\nFlight LH 1234 Frankfurt\nGate B22"  # type: ignore[index]
    assert [line["text"] for line in boarding["lines"]] == ["BOARDING PASS", "Flight LH 1234 Frankfurt", "Gate B22"]  # type: ignore[index]
    assert boarding["lines"][1]["box"] == [[0.0, 20.0], [120.0, 20.0], [120.0, 36.0], [0.0, 36.0]]  # type: ignore[index]
    assert boarding["lines"][1]["confidence"] == pytest.approx(0.89)  # type: ignore[index]
    assert boarding["text_note"] is None and "Flight LH 1234 Frankfurt" in said  # type: ignore[index]
    assert (views["blank"][0]["text"], views["blank"][0]["lines"]) == ("", [])  # type: ignore[index]
    assert (views["unindexed"][0]["text"], views["unindexed"][0]["lines"]) == (None, None)  # type: ignore[index]
    assert views["long"][0]["text_note"] == NOTE and NOTE in views["long"][1]  # type: ignore[index]


# --- refusals and hostile text --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("search_images_by_text", {"query": "blue", "text": ""}, "at least one word"),
        ("search_images_by_text", {"query": "blue", "text": " \t "}, "at least one word"),
        ("search_similar_images", {"image_path": "{photo}", "text": "\x00\u0301"}, "at least one word"),
        ("search_images_by_text", {"query": "blue", "text": "x" * 201}, "at most 200 characters"),
        ("search_text_in_images", {"query": "   "}, "empty"),
        ("search_text_in_images", {"query": "x" * 201}, "at most 200 characters"),
        ("search_text_in_images", {"query": "lh", "min_score": 1.5}, "less than or equal to 1"),
    ],
)
async def test_an_empty_or_too_long_text_is_refused_saying_what_to_fix(
    fake_service: ClipSearch, library: Path, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    filled = {
        k: v.format(photo=library / "trips" / "boarding.jpg") if k == "image_path" else v for k, v in arguments.items()
    }
    async with mcp_client(fake_service, [library]) as client:
        result = await client.call_tool(tool, filled)
    assert expected in error_text(result)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query", ['"', '""', "*", "NEAR(", "a OR b", "-x", "(", "')", "%_\\", "NOT AND", '"NEAR" OR *', "(maybe) -x"]
)
async def test_fts_syntax_in_a_query_or_filter_is_text_never_an_sql_error(
    fake_service: ClipSearch, library: Path, query: str
) -> None:
    async with mcp_client(fake_service, [library]) as client:
        by_text = await client.call_tool("search_text_in_images", {"query": query})
        filtered = await client.call_tool("search_images_by_text", {"query": "blue", "text": query})

    assert not by_text.is_error and not filtered.is_error, (by_text.content, filtered.content)
    for hit in filtered.structured_content["results"]:  # type: ignore[index]
        assert all(word in fold(hit["text"]) for word in fold(query).split())  # each word, literally
    best = by_text.structured_content["results"][:1]  # type: ignore[index]
    if fold(query) in fold(PHOTOS["fts"][4] or ""):  # in the text as written: found exactly
        assert [(Path(h["path"]).stem, h["score"]) for h in best] == [("fts", 1.0)]


@pytest.mark.anyio
async def test_nul_direction_marks_and_markup_in_a_text_come_back_as_text_in_valid_json(
    fake_service: ClipSearch, library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with mcp_client(fake_service, [library]) as client:
        result = await client.call_tool("search_text_in_images", {"query": "<script>alert(1)"})
    [hit] = result.structured_content["results"]  # type: ignore[index]
    assert main(["text", "alert(1)", "--json"], make_service=serving(fake_service)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(["text", "alert(1)"], make_service=serving(fake_service)) == 0
    table = capsys.readouterr().out

    assert hit["text"] == "safeword \u200fRTL\u202e mark <script>alert(1)</script>"  # NUL dropped, the rest kept
    assert marked(hit) == ["<script>alert(1)"]
    assert printed["results"][0]["text"] == hit["text"] and printed["results"][0]["text_marks"] == [[28, 36]]
    assert "\\u202e" in result.content[0].text and "\u202e" not in result.content[0].text  # type: ignore[union-attr]
    assert "\\u202e" in table and "\u202e" not in table and "<script>alert(1)</script>" in table


# --- the command line -----------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], service: ClipSearch, *argv: str) -> tuple[int, Any]:
    code = main(list(argv), make_service=serving(service))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else out + err)


def test_the_cli_finds_text_in_photos_and_filters_searches_by_text(
    fake_service: ClipSearch, library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, by_text = cli(capsys, fake_service, "text", "LH1234", "-k", "3", "--json")
    _, in_trips = cli(capsys, fake_service, "text", "lh 1234", "--folder", str(library / "trips"), "--json")
    _, filtered = cli(capsys, fake_service, "search", "blue", "--text", "lh 1234", "--camera", "apple", "--json")
    _, similar = cli(
        capsys, fake_service, "similar", str(library / "trips" / "ticket.jpg"), "--text", "berlin", "--json"
    )
    _, table = cli(capsys, fake_service, "text", "wi fi password")
    _, nothing = cli(capsys, fake_service, "text", "zebra crossing")

    assert names(by_text) == ["joined", "boarding", "ticket"]
    assert names(in_trips) == ["boarding", "ticket"]
    assert set(names(filtered)) == {"ticket", "joined", "longer"}
    assert names(similar) == ["berlin"] and marked(similar["results"][0]) == ["Berlin"]
    assert "wifi.jpg" in table and "text: WiFi Password: Crème-42" in table
    assert nothing.strip() == "No images in 'default' match 'zebra crossing'."


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["text", "   "], "The query is empty"),
        (["text", "x" * 201], "at most 200"),
        (["search", "blue", "--text", ""], "at least one word"),
        (["similar", "{photo}", "--text", "y" * 201], "at most 200 characters"),
    ],
)
def test_the_cli_refuses_an_empty_or_too_long_text_with_exit_code_2(
    fake_service: ClipSearch, library: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code = main([a.format(photo=library / "trips" / "ticket.jpg") for a in argv], make_service=serving(fake_service))
    out, err = capsys.readouterr()
    assert code == 2 and expected in err and out == ""


def test_the_cli_refuses_a_text_score_outside_0_to_1_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["text", "lh", "--min-score", "1.5"], make_service=lambda *a, **k: pytest.fail("a service was made"))
    assert exited.value.code == 2 and "--min-score: must be between 0 and 1, got 1.5" in capsys.readouterr().err
