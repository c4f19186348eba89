"""What a person sees: a first run that says what it downloads, later runs that print nothing extra, progress for an
MCP call waiting on the download, and messages that speak as a command or as a server. Real subprocesses where the
output is the point; a local fake hub, no network."""

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from bench.fakehub import FakeHub
from conftest import HUB_NAME, clipsearch, mcp_client
from server.config import Settings
from server.service import ClipSearch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def online_env(hf_home: Path, endpoint: str, index_dir: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_ENDPOINT": endpoint, "CLIPSEARCH_INDEX_DIR": str(index_dir)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_first_run_announces_the_download_once_then_later_runs_print_nothing_extra(
    fake_hub: FakeHub, hf_home: Path, tmp_path: Path, tiny_clip: Path
) -> None:
    env = online_env(hf_home, fake_hub.endpoint, tmp_path / "index")

    first = clipsearch("index", str(SAMPLES), env=env)
    requests_after_first = len(fake_hub.requests)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the network is gone now: nothing listens there
    second = clipsearch("search", "a rocket", "-k", "2", env=env)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    lines = first.stderr.splitlines()
    size = round(sum(p.stat().st_size for p in tiny_clip.iterdir()) / 1e6)
    assert lines[0] == (
        f"clipsearch: downloading the model {HUB_NAME} ({size} MB, 5 files) from the Hugging Face hub into "
        f"{hf_home / 'hub'}; this happens once, later runs start from the cache."
    )
    assert lines[-1] == f"clipsearch: model downloaded ({size} MB)."
    assert all(line.startswith("clipsearch: downloading the model") for line in lines[1:-1])
    assert len(lines) == len(set(lines))  # no line twice
    assert "Collection 'default': 9 images" in first.stdout
    assert second.stderr == ""
    assert second.stdout.splitlines()[0].split() == ["rank", "score", "taken", "path"]
    assert len(fake_hub.requests) == requests_after_first


def test_cached_model_without_network_prints_no_warnings(cached_model: Path, hf_home: Path, tmp_path: Path) -> None:
    env = online_env(hf_home, "http://127.0.0.1:9", tmp_path / "index")

    indexed = clipsearch("index", str(SAMPLES), env=env)
    searched = clipsearch("search", "a cat", "-k", "3", env=env)

    assert indexed.returncode == searched.returncode == 0
    assert indexed.stderr == searched.stderr == ""


def test_missing_model_without_network_is_one_error_line(hf_home: Path, tmp_path: Path) -> None:
    env = online_env(hf_home, "http://127.0.0.1:9", tmp_path / "index")

    result = clipsearch("index", str(SAMPLES), env=env)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"clipsearch: error: Cannot load the model '{HUB_NAME}': it is not in the ")
    assert "the hub cannot be reached" in result.stderr and ".." not in result.stderr


@pytest.mark.anyio
async def test_mcp_call_waiting_for_the_download_reports_its_progress(
    fake_hub: FakeHub, hf_home: Path, tmp_path: Path
) -> None:
    fake_hub.chunk_delay = threading.Event()  # the weights arrive only once a progress notification was seen
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model=HUB_NAME), speaker="this server")
    messages: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append((done, total, message))
        if message and message.startswith("downloading the model"):
            fake_hub.chunk_delay.set()  # type: ignore[union-attr]

    async with mcp_client(service, [SAMPLES]) as client:
        result = await client.call_tool(
            "index_folder", {"folder": str(SAMPLES)}, read_timeout_seconds=120, progress_callback=on_progress
        )

    assert not result.is_error, result.content
    downloading = [m for m in messages if m[2] and m[2].startswith(f"downloading the model {HUB_NAME}, ")]
    assert downloading and downloading[0][2].endswith(" of 1 MB")  # type: ignore[union-attr]
    values = [done for done, _, _ in messages]
    assert values == sorted(values)  # progress only grows, through the download and then the indexing
    assert messages[-1][0] == messages[-1][1]


@pytest.mark.anyio
async def test_stdio_server_speaks_as_a_server_in_its_errors(tiny_clip: Path, tmp_path: Path) -> None:
    from bench.checkpoint import write_random_clip

    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    other = write_random_clip(tmp_path / "other-clip", "tiny", seed=1)
    index = tmp_path / "index"
    env = {**os.environ, "CLIPSEARCH_INDEX_DIR": str(index), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    assert clipsearch("index", str(SAMPLES), env={**env, "CLIPSEARCH_MODEL": str(model)}).returncode == 0
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # the collection's model is not the same
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--root", str(SAMPLES), "--model", str(other)], env=env
    )

    async with Client(params, read_timeout_seconds=300) as client:
        refused = await client.call_tool("search_images_by_text", {"query": "a cat"})

    assert refused.is_error
    assert f"this server uses '{model}', a different checkpoint" in refused.content[0].text  # type: ignore[union-attr]
