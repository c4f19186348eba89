"""The MCP tools through the SDK's in-memory client: schemas, results, progress, thumbnails, errors, confinement."""

import base64
import io
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from PIL import Image

from conftest import COLORS, call, error_text, fake_collection_listed, mcp_client, save_color
from server.service import ClipSearch

pytestmark = pytest.mark.anyio


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path passed to open() from now until the test ends."""
    seen: list[str] = []
    real_open = open

    def spying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    return seen


TOOLS = {
    "index_folder",
    "find_duplicates",
    "view_image",
    "list_models",
    "index_status",
    "cancel_indexing",
    "search_images_by_text",
    "search_similar_images",
    "search_text_in_images",
    "evaluate_retrieval",
    "list_collections",
}


async def test_all_tools_are_listed_with_input_and_output_schemas_and_closed_world(fake_service: ClipSearch):
    async with mcp_client(fake_service) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description
        assert tool.output_schema and tool.output_schema["type"] == "object"
        assert tool.annotations is not None and tool.annotations.open_world_hint is False
    assert tools["index_status"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["cancel_indexing"].annotations.destructive_hint is False  # type: ignore[union-attr]
    assert tools["index_folder"].annotations.destructive_hint is False  # type: ignore[union-attr]
    assert tools["index_folder"].input_schema["properties"]["wait_seconds"]["maximum"] == 50
    search = tools["search_images_by_text"].input_schema
    assert search["required"] == ["query"]
    assert search["properties"]["k"]["minimum"] == 1 and search["properties"]["k"]["maximum"] == 1000
    assert "client_roots" not in search["properties"]
    assert set(tools["index_folder"].output_schema["properties"]) >= {
        "indexed_total",
        "added",
        "updated",
        "moved",
        "unchanged",
        "removed",
        "failed",
        "failures",
        "seconds",
        "images_per_second",
    }


async def test_index_then_text_search_returns_k_results_best_first(fake_service: ClipSearch, color_folder: Path):
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async with mcp_client(fake_service, [color_folder]) as client:
        indexed = await client.call_tool("index_folder", {"folder": str(color_folder)}, progress_callback=on_progress)
        assert not indexed.is_error
        assert indexed.structured_content["indexed_total"] == 15
        assert "15 images in total" in indexed.content[0].text
        found = await call(client, "search_images_by_text", query="a red thing", k=4)
    assert progress and progress[-1] == (15, 15)
    results = found.structured_content["results"]
    assert len(results) == 4
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert all("/red/" in r["path"] for r in results[:3])


async def test_similar_search_with_an_indexed_image_returns_it_first(fake_service: ClipSearch, color_folder: Path):
    query = color_folder / "green" / "green_1.jpg"
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder))
        found = await call(client, "search_similar_images", image_path=str(query), k=3)
    first = found.structured_content["results"][0]
    assert first["path"] == str(query)
    assert first["score"] >= 0.999


async def test_similar_search_accepts_an_image_outside_the_collection(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path
):
    outside = save_color(tmp_path / "queries" / "q.png", COLORS["blue"], fmt="PNG")
    async with mcp_client(fake_service, [color_folder, tmp_path / "queries"]) as client:
        await call(client, "index_folder", folder=str(color_folder))
        found = await call(client, "search_similar_images", image_path=str(outside), k=3)
    assert all("/blue/" in r["path"] for r in found.structured_content["results"])


async def test_thumbnails_come_back_as_small_jpeg_images(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "big"
    save_color(folder / "wide.jpg", COLORS["red"], size=(900, 400))
    async with mcp_client(fake_service, [folder]) as client:
        await call(client, "index_folder", folder=str(folder))
        found = await call(client, "search_images_by_text", query="red", k=1, thumbnails=1)
    images = [c for c in found.content if isinstance(c, types.ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/jpeg"
    thumb = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert thumb.format == "JPEG" and max(thumb.size) == 256 and thumb.size[0] > thumb.size[1]


async def test_evaluate_retrieval_reports_structured_figures(fake_service: ClipSearch, color_folder: Path):
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder), collection="colors")
        evaluation = await call(client, "evaluate_retrieval", collection="colors", ks=[1, 3])
    report = evaluation.structured_content
    # Colour clusters are perfectly separable for the fake encoder: every metric is exactly 1.
    assert report["image_to_image"]["map"] == pytest.approx(1.0)
    assert report["text_to_image"]["recall_at"] == {"1": pytest.approx(1 / 3), "3": pytest.approx(1.0)}
    assert report["image_to_image"]["queries"] == 15 and report["text_to_image"]["queries"] == 5


async def test_list_collections_reports_each_collections_model_and_size(fake_service: ClipSearch, color_folder: Path):
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder), collection="colors")
        listing = await call(client, "list_collections")
    assert listing.structured_content["collections"] == [fake_collection_listed("colors", 15, "flat")]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("search_images_by_text", {"query": "   "}, "query is empty"),
        ("search_images_by_text", {"query": "red", "k": 0}, "greater than or equal to 1"),
        ("search_images_by_text", {"query": "red", "k": 1001}, "less than or equal to 1000"),
        ("search_images_by_text", {"query": "red", "collection": "nope"}, "No collection named 'nope'"),
        ("search_images_by_text", {"query": "red", "collection": "../etc"}, "Invalid collection name"),
        ("evaluate_retrieval", {"ground_truth": "labels.json"}, "relative path"),
        ("evaluate_retrieval", {"ks": [0]}, "greater than or equal to 1"),
        ("evaluate_retrieval", {"text_template": "no placeholder"}, "must contain"),
    ],
)
async def test_bad_arguments_come_back_as_readable_tool_errors(
    fake_service: ClipSearch, color_folder: Path, tool: str, arguments: dict[str, Any], expected: str
):
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder))
        result = await call(client, tool, **arguments)
    assert expected in error_text(result)


async def test_missing_folder_and_unreadable_query_image_are_tool_errors(fake_service: ClipSearch, tmp_path: Path):
    (tmp_path / "not-an-image.jpg").write_text("hello", encoding="utf-8")
    save_color(tmp_path / "photos" / "a.jpg", COLORS["red"])
    async with mcp_client(fake_service, [tmp_path]) as client:
        missing = await call(client, "index_folder", folder=str(tmp_path / "absent"))
        await call(client, "index_folder", folder=str(tmp_path / "photos"))
        unreadable = await call(client, "search_similar_images", image_path=str(tmp_path / "not-an-image.jpg"))
        directory = await call(client, "search_similar_images", image_path=str(tmp_path))
        relative = await call(client, "search_similar_images", image_path="photos/a.jpg")
    assert "does not exist" in error_text(missing)
    assert "not a recognised image format" in error_text(unreadable)
    assert "not a file" in error_text(directory)
    assert "relative path" in error_text(relative)


async def test_paths_outside_the_roots_are_refused_before_anything_is_read(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path, opened: list[str]
):
    outside = save_color(tmp_path / "private" / "secret.jpg", COLORS["blue"])
    escape = color_folder / "escape.jpg"
    escape.symlink_to(outside)
    async with mcp_client(fake_service, [color_folder]) as client:
        opened.clear()
        direct = await call(client, "search_similar_images", image_path=str(outside))
        dotdot = await call(client, "search_similar_images", image_path=f"{color_folder}/../private/secret.jpg")
        via_link = await call(client, "search_similar_images", image_path=str(escape))
        folder = await call(client, "index_folder", folder=str(tmp_path / "private"))
    for result in (direct, dotdot, via_link, folder):
        assert "outside the folders this server may read" in error_text(result)
    assert not [p for p in opened if "secret" in p]


async def test_without_any_roots_file_tools_say_how_to_configure_them(fake_service: ClipSearch, color_folder: Path):
    async with mcp_client(fake_service) as client:
        result = await call(client, "index_folder", folder=str(color_folder))
    message = error_text(result)
    assert "--root" in message and "CLIPSEARCH_ROOTS" in message


async def test_roots_declared_by_the_client_are_honoured(fake_service: ClipSearch, color_folder: Path, tmp_path: Path):
    async def list_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=color_folder.as_uri(), name="photos")])

    elsewhere = save_color(tmp_path / "elsewhere" / "x.jpg", COLORS["red"])
    async with mcp_client(fake_service, list_roots_callback=list_roots) as client:
        allowed = await call(client, "index_folder", folder=str(color_folder))
        refused = await call(client, "search_similar_images", image_path=str(elsewhere))
    assert allowed.structured_content["indexed_total"] == 15
    assert "outside the folders" in error_text(refused)


async def test_unexpected_exceptions_do_not_leak_their_text(fake_service: ClipSearch, monkeypatch: pytest.MonkeyPatch):
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("internal secret detail")

    monkeypatch.setattr(fake_service, "list_collections", explode)
    async with mcp_client(fake_service) as client:
        result = await call(client, "list_collections")
    assert result.is_error
    assert "internal secret detail" not in result.content[0].text


async def test_thumbnails_of_results_outside_the_roots_are_not_read(
    fake_service: ClipSearch, tmp_path: Path, opened: list[str]
):
    elsewhere = tmp_path / "elsewhere"
    save_color(elsewhere / "x.jpg", COLORS["red"])
    fake_service.index_folder(elsewhere)  # indexed from the terminal, outside what the server may read
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    async with mcp_client(fake_service, [allowed]) as client:
        opened.clear()
        found = await call(client, "search_images_by_text", query="red", k=1, thumbnails=1)
    assert not found.is_error
    assert not [c for c in found.content if isinstance(c, types.ImageContent)]
    assert "no thumbnail for rank 1" in found.content[0].text
    assert not [p for p in opened if p.endswith("x.jpg")]


async def test_ground_truth_file_outside_the_roots_is_refused(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path
):
    secret = tmp_path / "secret.json"
    secret.write_text('{"text_queries": [{"query": "red", "relevant": ["x.jpg"]}]}', encoding="utf-8")
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder))
        result = await call(client, "evaluate_retrieval", ground_truth=str(secret))
    assert "outside the folders this server may read" in error_text(result)


async def test_evaluation_plots_come_back_as_images_and_stay_in_the_index_dir(
    fake_service: ClipSearch, color_folder: Path, index_dir: Path
):
    async with mcp_client(fake_service, [color_folder]) as client:
        await call(client, "index_folder", folder=str(color_folder))
        result = await call(client, "evaluate_retrieval", plots=True)
    images = [c for c in result.content if isinstance(c, types.ImageContent)]
    assert [i.mime_type for i in images] == ["image/png", "image/png"]
    report_dir = Path(result.structured_content["report_dir"])
    assert report_dir.is_relative_to(index_dir / "default" / "evaluations")
    assert {p.name for p in report_dir.iterdir()} == {
        "report.json",
        "report.md",
        "similarity_histogram.png",
        "tsne.png",
    }
