"""The gallery over MCP (no browser): which tools point at the view, the view resource itself, the app-only
thumbnail tool and its confinement and cache, and hosts without MCP Apps getting exactly what they got before."""

import base64
import io
import os
import re
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from mcp import Client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from PIL import Image

from conftest import COLORS, apps_client, call, mcp_client, save_color
from server.images.thumbnails import ThumbnailCache
from server.mcp_server.gallery import GALLERY_NOTE, GALLERY_URI, gallery_html
from server.mcp_server.server import build_server
from server.service import ClipSearch

pytestmark = pytest.mark.anyio

UI_BOUND = {
    "search_images_by_text",
    "search_similar_images",
    "search_text_in_images",
    "find_duplicates",
    "evaluate_retrieval",
}


def untimed(data: dict[str, Any] | None) -> dict[str, Any]:
    """Structured content without its time taken, which differs between two runs of anything."""
    return {key: value for key, value in (data or {}).items() if key != "seconds"}


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_only_the_result_tools_point_at_the_gallery_and_get_thumbnails_is_app_only(fake_service: ClipSearch):
    async with mcp_client(fake_service, apps=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    bound = {name for name, t in tools.items() if (t.meta or {}).get("ui", {}).get("resourceUri") == GALLERY_URI}
    assert bound == UI_BOUND | {"get_thumbnails"}
    assert tools["get_thumbnails"].meta["ui"]["visibility"] == ["app"]
    assert all("visibility" not in tools[name].meta["ui"] for name in UI_BOUND)  # the model sees them
    assert all(not (t.meta or {}).get("ui") for name, t in tools.items() if name not in bound)


async def test_hosts_without_apps_are_not_offered_the_app_only_tool(fake_service: ClipSearch):
    async with mcp_client(fake_service) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert "get_thumbnails" not in names and names >= UI_BOUND


async def test_the_view_is_served_as_an_mcp_app_and_is_small_and_self_contained(fake_service: ClipSearch):
    async with mcp_client(fake_service, apps=True) as client:
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        read = await client.read_resource(GALLERY_URI)
        capabilities = client.server_capabilities
    assert listed[GALLERY_URI].mime_type == APP_MIME_TYPE
    assert not (read.contents[0].meta or {}).get("ui")  # no extra domains, permissions or CSP asked for
    (content,) = read.contents
    assert content.mime_type == APP_MIME_TYPE and content.text == gallery_html()
    assert EXTENSION_ID in (capabilities.extensions or {})
    html = content.text
    assert len(html.encode()) < 60_000
    # Nothing fetched from anywhere: no external script, style, image or connection.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "fetch(" not in html and "XMLHttpRequest" not in html and "import(" not in html
    # Names go in as text: the script never writes HTML.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", html)


def view_list(name: str) -> set[str]:
    """The names in one of the view's constant lists, `const NAME = [...]` or `new Set([...])`."""
    found = re.search(rf"const {name} = (?:new Set\()?\[([^\]]*)\]", gallery_html())
    assert found, name
    return set(re.findall(r'"([a-z_]+)"', found.group(1)))


async def test_the_view_knows_each_tool_whose_results_it_is_shown(fake_service: ClipSearch):
    async with mcp_client(fake_service, apps=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    bound = {name for name, t in tools.items() if (t.meta or {}).get("ui", {}).get("resourceUri") == GALLERY_URI}
    known = view_list("KNOWN_TOOLS")
    assert bound - {"get_thumbnails"} <= known <= set(tools)
    assert "search_text_in_images" in known


async def test_more_like_this_keeps_every_filter_of_the_search_it_leaves(fake_service: ClipSearch):
    async with mcp_client(fake_service, apps=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    parameters = set(tools["search_similar_images"].input_schema["properties"])
    not_filters = {
        "image_path",
        "time_seconds",  # the example's moment, not a filter
        "thumbnails",
        "offset",
        "sort",
        "and_texts",
        "not_texts",
        "and_images",
        "not_images",
    }
    assert view_list("FILTER_KEYS") == parameters - not_filters
    assert "text" in view_list("FILTER_KEYS")  # words read in the photo


async def test_hosts_without_apps_get_the_same_text_and_data_and_hosts_with_apps_one_more_line(
    fake_service: ClipSearch, tmp_path: Path
):
    folder = tmp_path / "photos"
    for name, rgb in COLORS.items():
        save_color(folder / name / "a.jpg", rgb)
        save_color(folder / name / "b.jpg", rgb)
    server = build_server(fake_service, roots=[folder])
    async with Client(server) as plain, apps_client(server) as apps:
        await call(plain, "index_folder", folder=str(folder))
        for tool, args in (
            ("search_images_by_text", {"query": "red", "k": 3, "thumbnails": 1}),
            ("search_similar_images", {"image_path": str(folder / "blue" / "a.jpg"), "k": 2}),
            ("search_text_in_images", {"query": "red", "k": 3}),
            ("find_duplicates", {}),
            ("evaluate_retrieval", {"ground_truth": "folders"}),
        ):
            before = await call(plain, tool, **args)
            shown = await call(apps, tool, **args)
            assert not before.is_error and not shown.is_error, (tool, text_of(before))
            assert GALLERY_NOTE not in text_of(before)
            assert text_of(shown) == text_of(before) + "\n" + GALLERY_NOTE
            assert untimed(shown.structured_content) == untimed(before.structured_content)
            assert [type(c) for c in shown.content] == [type(c) for c in before.content]


async def test_get_thumbnails_returns_jpegs_in_order_and_a_reason_for_each_path_it_refuses(
    fake_service: ClipSearch, tmp_path: Path
):
    folder = tmp_path / "photos"
    red = save_color(folder / "red.jpg", COLORS["red"], size=(900, 400))
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    outside = save_color(tmp_path / "private" / "secret.jpg", COLORS["blue"])
    paths = [str(red), str(folder / "gone.jpg"), str(broken), str(outside), str(red)]
    async with mcp_client(fake_service, [folder], apps=True) as client:
        page = await call(client, "get_thumbnails", paths=paths, side=128)
    got = page.structured_content["thumbnails"]
    assert [t["path"] for t in got] == paths
    first = Image.open(io.BytesIO(base64.b64decode(got[0]["jpeg_base64"])))
    assert first.format == "JPEG" and first.size[0] == 128 and first.size[1] < 128
    assert got[4]["jpeg_base64"] == got[0]["jpeg_base64"]
    assert "does not exist" in got[1]["error"]
    assert got[2]["error"] and got[2]["jpeg_base64"] is None
    assert "outside" in got[3]["error"] and got[3]["jpeg_base64"] is None
    assert "3 of 5" not in text_of(page) and text_of(page) == "2 of 5 thumbnails"


async def test_get_thumbnails_refuses_too_many_paths_or_a_silly_size(fake_service: ClipSearch, tmp_path: Path):
    async with mcp_client(fake_service, [tmp_path], apps=True) as client:
        many = await call(client, "get_thumbnails", paths=[str(tmp_path / f"{i}.jpg") for i in range(49)])
        huge = await call(client, "get_thumbnails", paths=[str(tmp_path / "a.jpg")], side=4000)
    assert many.is_error and huge.is_error


def test_a_thumbnail_is_decoded_once_per_file_version(tmp_path: Path):
    made: list[Path] = []

    def make(path: Path, side: int, time_seconds: float | None = None) -> bytes:
        made.append(path)
        return path.read_bytes()[:10] + bytes([side % 256])

    cache = ThumbnailCache(make=make)
    photo = save_color(tmp_path / "a.jpg", COLORS["red"])
    first = cache.get(photo, 256)
    assert cache.get(photo, 256) == first and len(made) == 1
    cache.get(photo, 128)  # another size is another thumbnail
    assert len(made) == 2
    save_color(photo, COLORS["blue"])
    os.utime(photo, ns=(1, 2))  # a changed file: new mtime
    cache.get(photo, 256)
    assert len(made) == 3 and cache.made == 3


def test_the_cache_keeps_to_its_budget_dropping_the_least_recently_used(tmp_path: Path):
    cache = ThumbnailCache(max_bytes=250, make=lambda path, side, time_seconds: b"x" * 100)
    photos = [save_color(tmp_path / f"{i}.jpg", COLORS["red"]) for i in range(3)]
    cache.get(photos[0])
    cache.get(photos[1])
    cache.get(photos[0])  # now most recent
    cache.get(photos[2])  # over budget: photos[1] goes
    made = cache.made
    cache.get(photos[0])
    cache.get(photos[2])
    assert cache.made == made
    cache.get(photos[1])
    assert cache.made == made + 1
