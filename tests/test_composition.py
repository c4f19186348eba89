"""server/search/composition.py and composed searches: rclip's weighted terms and infix form, exact against the formula
computed by hand, through the service, the MCP tools and the CLI; bad terms refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import mcp_client
from server.cli.main import main
from server.config import Settings
from server.errors import InvalidArgument
from server.images.decode import load_image
from server.limits import MAX_TERMS
from server.search.composition import Extras, split_infix, weighted
from server.service import ClipSearch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.mark.parametrize(
    ("item", "expected"),
    [("night", (1.0, "night")), ("2:night", (2.0, "night")), ("0.5:/p/a.jpg", (0.5, "/p/a.jpg")), ("10:x", (10, "x"))],
)
def test_a_weight_prefix_scales_a_term(item: str, expected: tuple[float, str]) -> None:
    assert weighted(item) == expected


@pytest.mark.parametrize(
    ("item", "message"), [("20:x", "weights go from"), ("0.05:x", "weights go from"), ("2:", "empty"), (" ", "empty")]
)
def test_bad_terms_are_refused_saying_why(item: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        weighted(item)


def test_a_time_of_day_is_text_not_a_weight() -> None:
    assert weighted("10:30 clock") == (1.0, "10:30 clock")
    assert weighted("2: 10:30 clock") == (2.0, "10:30 clock")  # a weight before a time takes a space
    assert split_infix("a clock + 12:00 noon") == ("a clock", Extras(("12:00 noon",)))


def test_infix_form_splits_into_wanted_and_unwanted_terms(tmp_path: Path) -> None:
    photo = tmp_path / "ref.jpg"
    Image.new("RGB", (8, 8)).save(photo)

    assert split_infix("horse + stripes - grass") == ("horse", Extras(("stripes",), ("grass",)))
    assert split_infix('"rock + roll" + 2:guitar') == ("rock + roll", Extras(("2:guitar",)))
    assert split_infix("a t-shirt, black-and-white") == ("a t-shirt, black-and-white", Extras())
    assert split_infix("the kid's party + cake") == ("the kid's party", Extras(("cake",)))
    assert split_infix(f"beach - people - {photo}") == ("beach", Extras((), ("people",), (), (str(photo),)))
    for broken in ("beach +", "- people", "beach + - people", '"beach + sunset'):
        with pytest.raises(InvalidArgument):
            split_infix(broken)


@pytest.fixture
def tiny_service(tiny_clip: Path, tmp_path: Path) -> ClipSearch:
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny_clip)))
    service.index_folder(SAMPLES)
    return service


def test_composed_search_equals_the_rclip_formula_by_brute_force(tiny_service: ClipSearch, tmp_path: Path) -> None:
    outside = tmp_path / "flipped.jpg"  # not in the collection: embedded afresh
    ImageOps.mirror(Image.open(SAMPLES / "cat" / "chelsea.jpg")).save(outside)
    rocket = SAMPLES / "space" / "rocket.jpg"
    extras = Extras(("2:coffee",), ("space",), (str(rocket),), (f"0.5:{outside}",))

    got = tiny_service.search_text("a cat", 9, extras=extras).results

    collection = tiny_service.collection("default")
    encoder = tiny_service.encoder_for(collection)
    texts = encoder.encode_texts(["a cat", "coffee", "space"])
    ids, paths, stored = collection.all_vectors()
    by_path = dict(zip(paths, stored, strict=True))
    fresh = encoder.encode_pixels(encoder.preprocess(load_image(outside, min_side=encoder.input_size).image)[None])
    total = texts[0] + 2 * texts[1] - texts[2] + by_path[rocket.resolve()] - 0.5 * fresh[0]
    scores = stored @ (total / np.linalg.norm(total))
    order = np.lexsort((ids, -scores))
    assert [h.path for h in got] == [str(paths[i]) for i in order]
    np.testing.assert_allclose([h.score for h in got], scores[order], atol=1e-5)
    assert tiny_service.search_text("a cat", 9, extras=extras).query == (
        f"a cat + 2:coffee - space + {rocket.resolve()} - 0.5:{outside}"
    )


def test_terms_that_cancel_exactly_are_refused(tiny_service: ClipSearch) -> None:
    with pytest.raises(InvalidArgument, match="cancel each other out"):
        tiny_service.search_text("a cat", extras=Extras(not_texts=("a cat",)))


def test_too_many_terms_are_refused(tiny_service: ClipSearch) -> None:
    with pytest.raises(InvalidArgument, match=f"at most {MAX_TERMS} terms"):
        tiny_service.search_text("a cat", extras=Extras(and_texts=tuple(f"t{i}" for i in range(MAX_TERMS))))


def test_a_composed_image_search_combines_with_filters(tiny_service: ClipSearch) -> None:
    filters = tiny_service.make_filter(folder=SAMPLES / "space")
    got = tiny_service.search_image(SAMPLES / "cat" / "chelsea.jpg", 9, filters=filters, extras=Extras(("night",)))
    assert got.results and all("/space/" in h.path for h in got.results)


@pytest.mark.anyio
async def test_tools_take_composed_terms(tiny_service: ClipSearch) -> None:
    async with mcp_client(tiny_service, [SAMPLES]) as client:
        by_text = await client.call_tool(
            "search_images_by_text", {"query": "a cat", "and_texts": ["2:coffee"], "not_texts": ["space"], "k": 3}
        )
        by_image = await client.call_tool(
            "search_similar_images",
            {
                "image_path": str(SAMPLES / "cat" / "chelsea.jpg"),
                "not_images": [str(SAMPLES / "coffee" / "coffee.jpg")],
            },
        )

    assert not by_text.is_error and by_text.structured_content["query"] == "a cat + 2:coffee - space"  # type: ignore[index]
    assert len(by_text.structured_content["results"]) == 3  # type: ignore[index]
    assert not by_image.is_error, by_image.content


@pytest.mark.anyio
async def test_tools_refuse_image_terms_outside_the_roots_or_too_many_terms(
    tiny_service: ClipSearch, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jpg"
    shutil.copy(SAMPLES / "cat" / "chelsea.jpg", secret)
    async with mcp_client(tiny_service, [SAMPLES]) as client:
        outside = await client.call_tool("search_images_by_text", {"query": "a cat", "and_images": [str(secret)]})
        too_many = await client.call_tool("search_images_by_text", {"query": "a", "and_texts": ["b"] * MAX_TERMS})

    assert outside.is_error and "outside the folders" in outside.content[0].text  # type: ignore[union-attr]
    assert too_many.is_error


def test_cli_composes_with_flags_and_with_the_infix_form(
    tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(tiny_clip))
    monkeypatch.setenv("CLIPSEARCH_INDEX_DIR", str(tmp_path / "index"))
    assert main(["index", str(SAMPLES), "--json"]) == 0
    capsys.readouterr()

    assert main(["search", "a cat + coffee - space", "-k", "3", "--json"]) == 0
    infix = json.loads(capsys.readouterr().out)
    assert main(["search", "a cat", "--and", "coffee", "--not", "space", "-k", "3", "--json"]) == 0
    flags = json.loads(capsys.readouterr().out)
    assert (
        main(["similar", str(SAMPLES / "cat" / "chelsea.jpg"), "--unlike", str(SAMPLES / "space" / "rocket.jpg")]) == 0
    )

    assert infix == flags and infix["query"] == "a cat + coffee - space"
    assert "rank" in capsys.readouterr().out


@pytest.mark.anyio
async def test_image_terms_are_read_under_the_roots_the_client_declares(tiny_service: ClipSearch) -> None:
    import mcp.types as types

    async def list_roots(context: object) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=SAMPLES.resolve().as_uri(), name="samples")])

    term = str(SAMPLES / "space" / "rocket.jpg")
    async with mcp_client(tiny_service, list_roots_callback=list_roots) as client:
        result = await client.call_tool("search_images_by_text", {"query": "a cat", "and_images": [term], "k": 2})

    assert not result.is_error, result.content
    assert result.structured_content["query"] == f"a cat + {Path(term).resolve()}"  # type: ignore[index]
