"""server/limits.py: each API limit is defined once, so the MCP tools' schemas and the CLI's parser state the same
bounds, choices and defaults, and the core refuses what lies outside them with the range in its message."""

import argparse
from typing import Any

import pytest

from conftest import mcp_client
from server.cli.parser import build_parser
from server.errors import InvalidArgument
from server.limits import GROUPS, MAX_TEXT_FILTER_CHARS, OFFSET, RADIUS_KM, TOP_K, Bound, BoundArgument
from server.search.filters import SearchFilter
from server.search.text_ranking import TextQuery
from server.service import ClipSearch

pytestmark = pytest.mark.anyio

TOOLS = {  # CLI subcommand -> the MCP tool taking the same parameters
    "search": "search_images_by_text",
    "similar": "search_similar_images",
    "text": "search_text_in_images",
    "eval": "evaluate_retrieval",
    "duplicates": "find_duplicates",
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [choices] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(choices.choices)


async def schemas(service: ClipSearch) -> dict[str, dict[str, Any]]:
    async with mcp_client(service) as client:
        return {tool.name: tool.input_schema["properties"] for tool in (await client.list_tools()).tools}


def schema_bounds(prop: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(least, most, least excluded) of a JSON Schema number, an optional one (anyOf with null) or an array's
    items."""
    if "items" in prop:
        prop = prop["items"]
    if "anyOf" in prop:
        [prop] = [p for p in prop["anyOf"] if p.get("type") != "null"]
    if "exclusiveMinimum" in prop:
        return prop["exclusiveMinimum"], prop["maximum"], True
    return prop["minimum"], prop["maximum"], False


async def test_every_bounded_cli_option_has_the_bounds_and_default_of_the_mcp_parameter(
    fake_service: ClipSearch,
) -> None:
    tools = await schemas(fake_service)
    compared = []
    for command, sub in subcommands().items():
        for action in sub._actions:
            if not isinstance(action.type, BoundArgument):
                continue
            bound = action.type.bound
            prop = tools[TOOLS[command]][action.dest]
            assert schema_bounds(prop) == (bound.least, bound.most, bound.above_least), (command, action.dest)
            if "default" in prop and action.default is not None:
                assert action.default == prop["default"], (command, action.dest)
            compared.append(f"{command} --{action.dest}")
    # Every bounded number the CLI takes was compared, not just a few.
    assert sorted(compared) == sorted(
        [
            "search --k",
            "search --offset",
            "search --radius_km",
            "search --min_score",
            "similar --k",
            "similar --offset",
            "similar --radius_km",
            "similar --min_score",
            "similar --time_seconds",
            "text --k",
            "text --offset",
            "text --radius_km",
            "text --min_score",
            "eval --ks",
            "duplicates --threshold",
            "duplicates --max_bits",
            "duplicates --max_groups",
            "duplicates --offset",
        ]
    )


async def test_the_cli_sort_choices_are_the_mcp_sort_enum(fake_service: ClipSearch) -> None:
    tools = await schemas(fake_service)
    for command in ("search", "similar", "text"):
        [sort] = [a for a in subcommands()[command]._actions if a.dest == "sort"]
        assert list(sort.choices or ()) == tools[TOOLS[command]]["sort"]["enum"]


async def test_the_cli_media_choices_are_the_mcp_media_enum(fake_service: ClipSearch) -> None:
    tools = await schemas(fake_service)
    for command in ("search", "similar"):
        [media] = [a for a in subcommands()[command]._actions if a.dest == "media"]
        assert list(media.choices or ()) == tools[TOOLS[command]]["media"]["enum"] == ["all", "photos", "videos"]
        assert media.default == tools[TOOLS[command]]["media"]["default"] == "all"


@pytest.mark.parametrize(
    "bound, inside, outside",
    [(TOP_K, [1, 1000], [0, 1001]), (OFFSET, [0, 10_000], [-1, 10_001]), (RADIUS_KM, [0.001, 20_100.0], [0.0, 20_101])],
)
def test_a_bound_allows_its_range_and_refuses_past_it_naming_the_range(
    bound: Bound[Any], inside: list[Any], outside: list[Any]
) -> None:
    for value in inside:
        assert bound.check(value) == value
    for value in outside:
        with pytest.raises(InvalidArgument, match=f"{bound.name} must be {bound.describe()}, got"):
            bound.check(value)


def test_the_cli_refuses_a_value_past_a_bound_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["duplicates", "--max-groups", str(GROUPS.most + 1)])
    assert exited.value.code == 2
    assert f"must be {GROUPS.describe()}, got {GROUPS.most + 1}" in capsys.readouterr().err


async def test_the_text_filter_and_the_text_query_have_one_length_limit_in_the_schemas_and_the_core(
    fake_service: ClipSearch,
) -> None:
    tools = await schemas(fake_service)
    limits = [
        tools["search_images_by_text"]["text"],
        tools["search_similar_images"]["text"],
        tools["search_text_in_images"]["query"],
    ]
    lengths = [next(p for p in [prop, *prop.get("anyOf", [])] if "maxLength" in p)["maxLength"] for prop in limits]
    assert lengths == [MAX_TEXT_FILTER_CHARS] * 3
    longest = "x" * MAX_TEXT_FILTER_CHARS
    assert SearchFilter.parse(text=longest).text == longest and TextQuery.parse(longest).letters == longest
    with pytest.raises(InvalidArgument, match=f"at most {MAX_TEXT_FILTER_CHARS}"):
        SearchFilter.parse(text=longest + "x")
    with pytest.raises(InvalidArgument, match=f"at most {MAX_TEXT_FILTER_CHARS}"):
        TextQuery.parse(longest + "x")
