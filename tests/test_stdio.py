"""A real `clipsearch serve` subprocess over stdio, driven by the SDK's client, as an MCP host would."""

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from conftest import run_python

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

pytestmark = pytest.mark.anyio


async def test_stdio_server_lists_tools_indexes_and_searches(tiny_clip: Path, tmp_path: Path):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "serve", "--root", str(SAMPLES), "--model", str(tiny_clip)],
        env={**os.environ, "CLIPSEARCH_INDEX_DIR": str(tmp_path / "index"), "HF_HUB_OFFLINE": "1"},
    )
    async with Client(params, read_timeout_seconds=300) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {
            "index_folder",
            "search_images_by_text",
            "search_similar_images",
            "search_text_in_images",
            "evaluate_retrieval",
            "list_collections",
            "index_status",
            "cancel_indexing",
            "list_models",
            "view_image",
            "find_duplicates",
        }
        assert all(t.input_schema and t.output_schema for t in tools.values())
        indexed = await client.call_tool("index_folder", {"folder": str(SAMPLES)})
        assert not indexed.is_error, indexed.content
        assert indexed.structured_content["indexed_total"] == 9
        query = SAMPLES / "space" / "rocket.jpg"
        similar = await client.call_tool("search_similar_images", {"image_path": str(query), "k": 3})
        assert similar.structured_content["results"][0]["path"] == str(query.resolve())
        refused = await client.call_tool("search_similar_images", {"image_path": "/etc/hostname"})
        assert refused.is_error and "outside the folders" in refused.content[0].text


def test_the_mcp_server_module_loads_none_of_the_heavy_libraries() -> None:
    code = (
        "import sys, server.mcp_server.server; "
        "print(sorted(m for m in ('numpy', 'PIL', 'torch', 'faiss') if m in sys.modules))"
    )
    done = run_python("-c", code, cwd=SAMPLES.parent, check=True)

    assert done.stdout.strip() == "[]"  # the handshake never waits for them
