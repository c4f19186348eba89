"""server/models/recommended.py, `clipsearch models` and the list_models tool: the recommended models with sourced
figures, and which are downloaded."""

import json
from pathlib import Path

import pytest

from conftest import mcp_client
from server.cli.main import main
from server.config import Settings
from server.models.recommended import RECOMMENDED, list_models
from server.service import ClipSearch

DEFAULT = "openai/clip-vit-base-patch32"


def test_every_recommended_figure_names_its_source_and_every_family_is_one_we_run() -> None:
    from server.models.families import CLIP, METACLIP2, SIGLIP, SIGLIP2

    labels = {f.label for f in (CLIP, SIGLIP, SIGLIP2, METACLIP2)}
    assert {e.family for e in RECOMMENDED} == labels
    assert len({e.model for e in RECOMMENDED}) == len(RECOMMENDED)
    for entry in RECOMMENDED:
        assert all(source and 0 < value < 100 for _, value, source in entry.figures), entry.model
    assert RECOMMENDED[0].model == DEFAULT


def test_a_model_in_the_local_cache_is_marked_downloaded_and_no_other(cached_model: Path) -> None:
    listing = list_models(DEFAULT)
    assert [m.model for m in listing.models if m.downloaded] == [DEFAULT]


def test_cli_lists_the_models_as_a_table_and_as_json(
    hf_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["models", "--index-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert main(["models", "--json", "--index-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)

    assert "google/siglip2-base-patch16-224" in table and "XM3600 English 75.19" in table
    assert listed["default"] == DEFAULT and not any(m["downloaded"] for m in listed["models"])
    assert {f["source"] for m in listed["models"] for f in m["figures"]} >= {
        "immich docs/docs/features/searching.md (XM3600)"
    }


@pytest.mark.anyio
async def test_list_models_tool_is_read_only_and_says_the_default(hf_home: Path, tmp_path: Path) -> None:
    service = ClipSearch(Settings(index_dir=tmp_path, model=DEFAULT))
    async with mcp_client(service) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        result = await client.call_tool("list_models", {})

    assert tools["list_models"].annotations.read_only_hint  # type: ignore[union-attr]
    assert not result.is_error
    assert result.content[0].text.startswith(f"Default model: {DEFAULT}")  # type: ignore[union-attr]
    models = result.structured_content["models"]  # type: ignore[index]
    assert len(models) == len(RECOMMENDED) and all("advice" in m for m in models)
