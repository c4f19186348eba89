"""Concurrency: one writer per collection across threads and processes, searches that keep answering (and stay
consistent) while an indexing run is held mid-way, and many tool calls in flight through one MCP client."""

import json
import select
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import mcp.types as types
import numpy as np
import numpy.typing as npt
import pytest

from conftest import COLORS, FakeEncoder, mcp_client, save_color
from server.config import Settings
from server.errors import CollectionBusy
from server.indexing.indexer import Indexer
from server.paths import PathGuard
from server.service import ClipSearch
from server.store.collection_store import CollectionStore

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WAIT_SECONDS = 10
BUSY = "is being indexed by another run"


class GatedEncoder(FakeEncoder):
    """A fake encoder that, once armed, holds its Nth image batch until the test releases it."""

    def __init__(self, hold_batch: int = 1) -> None:
        super().__init__()
        self.hold_batch = hold_batch
        self.armed = False
        self.batches = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self.armed:
            self.batches += 1
            if self.batches == self.hold_batch:
                self.reached.set()
                if not self.release.wait(timeout=WAIT_SECONDS):
                    raise RuntimeError("the test never released the held batch")
        return super().encode_pixels(batch)


def gated_service(index_dir: Path, encoder: GatedEncoder, batch_size: int = 32, commit_every: int = 512) -> ClipSearch:
    indexer = Indexer(encoder, workers=2, batch_size=batch_size, commit_every=commit_every)
    return ClipSearch(Settings(index_dir=index_dir, model=encoder.model_name), encoder, indexer)


async def wait_until_held(encoder: GatedEncoder) -> None:
    # Waited for in a worker thread: the event loop must stay free to serve the run being held.
    reached = await anyio.to_thread.run_sync(encoder.reached.wait, WAIT_SECONDS)
    assert reached, "the indexing run never reached its held batch"


def images_in(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*.jpg")}


def catalogued(service: ClipSearch, name: str) -> set[str]:
    _, paths, _ = service.collection(name).all_vectors()
    return {str(p) for p in paths}


def reopened_consistent(index_dir: Path, name: str, model: str) -> set[str]:
    """Open the collection afresh, as another process would, and check catalog and FAISS index agree."""
    collection = CollectionStore(index_dir).open(name, model)
    try:
        ids, paths, _ = collection.all_vectors()
        assert collection.count() == collection.ntotal == len(ids)
        return {str(p) for p in paths}
    finally:
        collection.close()


async def test_a_second_index_call_for_a_folder_being_indexed_returns_the_same_job(color_folder: Path, index_dir: Path):
    encoder = GatedEncoder(hold_batch=1)
    service = gated_service(index_dir, encoder)
    encoder.armed = True
    outcome: dict[str, types.CallToolResult] = {}
    arguments = {"folder": str(color_folder), "collection": "photos"}
    async with mcp_client(service, [color_folder]) as client:

        async def first_run() -> None:
            outcome["first"] = await client.call_tool("index_folder", arguments)

        async with anyio.create_task_group() as group:
            group.start_soon(first_run)
            try:
                await wait_until_held(encoder)
                outcome["second"] = await client.call_tool("index_folder", {**arguments, "wait_seconds": 0})
                assert "first" not in outcome
            finally:
                encoder.release.set()
        rerun = await client.call_tool("index_folder", arguments)

    second = outcome["second"].structured_content
    assert not outcome["second"].is_error and second["state"] == "running"
    assert "index_status" in outcome["second"].content[0].text  # type: ignore[union-attr]
    assert not outcome["first"].is_error, outcome["first"]
    first = outcome["first"].structured_content
    assert first["job_id"] == second["job_id"] and first["state"] == "done"
    assert (first["indexed_total"], first["added"], first["failed"]) == (15, 15, 0)
    # The second call started nothing: one run embedded everything once, and the rerun finds it all unchanged.
    assert encoder.batches == 1
    assert rerun.structured_content["job_id"] != first["job_id"]
    assert (rerun.structured_content["unchanged"], rerun.structured_content["embedded"]) == (15, 0)
    assert reopened_consistent(index_dir, "photos", encoder.model_name) == images_in(color_folder)


async def test_options_of_a_second_call_do_not_change_the_running_job_or_the_collection(
    color_folder: Path, index_dir: Path
):
    encoder = GatedEncoder(hold_batch=1)
    service = gated_service(index_dir, encoder)
    encoder.armed = True
    outcome: dict[str, types.CallToolResult] = {}
    async with mcp_client(service, [color_folder]) as client:

        async def first_run() -> None:
            outcome["first"] = await client.call_tool("index_folder", {"folder": str(color_folder)})

        async with anyio.create_task_group() as group:
            group.start_soon(first_run)
            try:
                await wait_until_held(encoder)
                outcome["second"] = await client.call_tool(
                    "index_folder", {"folder": str(color_folder), "index_type": "ivf", "wait_seconds": 0}
                )
            finally:
                encoder.release.set()
        listing = await client.call_tool("list_collections", {})

    assert outcome["second"].structured_content["job_id"] == outcome["first"].structured_content["job_id"]
    assert not outcome["first"].is_error
    manifest = json.loads((index_dir / "default" / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["index_policy"], manifest["index_type"]) == ("auto", "flat")
    assert listing.structured_content["collections"][0]["index_type"] == "flat"


HOLDER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}]
    from pathlib import Path
    from server.store.collection_store import CollectionStore

    collection = CollectionStore(Path({index!r})).open({name!r}, {model!r})
    with collection.writer():
        print("ready", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def read_line(stream: IO[str]) -> str:
    ready, _, _ = select.select([stream], [], [], WAIT_SECONDS)
    assert ready, "the child process did not answer in time"
    return stream.readline().strip()


def test_a_collection_held_by_another_process_refuses_indexing_until_released(
    fake_service: ClipSearch, color_folder: Path, index_dir: Path
):
    guard = PathGuard([color_folder])
    fake_service.index_folder(color_folder, "shared", guard=guard)
    newcomer = save_color(color_folder / "red" / "red_new.jpg", COLORS["red"])
    code = HOLDER.format(root=str(ROOT), index=str(index_dir), name="shared", model=FakeEncoder.model_name)
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert read_line(child.stdout) == "ready"
        with pytest.raises(CollectionBusy, match=f"Collection 'shared' {BUSY}"):
            fake_service.index_folder(color_folder, "shared", guard=guard)
        assert fake_service.collection("shared").count() == 15
        child.stdin.write("\n")
        child.stdin.flush()
        assert read_line(child.stdout) == "released"
        assert child.wait(timeout=WAIT_SECONDS) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=WAIT_SECONDS)
        child.stdin.close()
        child.stdout.close()
    report = fake_service.index_folder(color_folder, "shared", guard=guard)
    assert (report.added, report.unchanged, report.indexed_total) == (1, 15, 16)
    assert str(newcomer) in catalogued(fake_service, "shared")


async def test_searches_answer_from_committed_state_while_an_index_run_is_held(color_folder: Path, index_dir: Path):
    encoder = GatedEncoder(hold_batch=2)
    # Batches of two, committed after each: when the second batch is held, exactly two new images are committed.
    service = gated_service(index_dir, encoder, batch_size=2, commit_every=2)
    old = images_in(color_folder)
    outcome: dict[str, Any] = {}
    async with mcp_client(service, [color_folder]) as client:
        first = await client.call_tool("index_folder", {"folder": str(color_folder)})
        assert first.structured_content["indexed_total"] == 15
        new = sorted(str(save_color(color_folder / "later" / f"{name}.jpg", rgb)) for name, rgb in COLORS.items())
        encoder.armed = True

        async def held_run() -> None:
            outcome["index"] = await client.call_tool("index_folder", {"folder": str(color_folder)})

        async with anyio.create_task_group() as group:
            group.start_soon(held_run)
            try:
                await wait_until_held(encoder)
                outcome["searches"] = [
                    await client.call_tool("search_images_by_text", {"query": name, "k": 1000}) for name in COLORS
                ]
                outcome["listing"] = await client.call_tool("list_collections", {})
                outcome["index_finished_early"] = "index" in outcome
            finally:
                encoder.release.set()

    # Files are processed in path order, so the first batch of two is what a search may see, no more, no less.
    committed = old | set(new[:2])
    assert outcome["index_finished_early"] is False
    for found in outcome["searches"]:
        assert not found.is_error, found
        paths = [hit["path"] for hit in found.structured_content["results"]]
        assert len(paths) == len(set(paths)) == 17
        assert set(paths) == committed
    assert outcome["listing"].structured_content["collections"][0]["images"] == 17
    final = outcome["index"]
    assert not final.is_error, final
    assert (final.structured_content["added"], final.structured_content["indexed_total"]) == (5, 20)
    assert reopened_consistent(index_dir, "default", encoder.model_name) == old | set(new)


async def test_many_tool_calls_in_flight_through_one_client_all_get_their_own_answers(
    fake_service: ClipSearch, color_folder: Path
):
    example = color_folder / "green" / "green_2.jpg"
    requests: list[tuple[str, dict[str, Any]]] = []
    for _ in range(4):
        requests += [("search_images_by_text", {"query": f"a {name} picture", "k": 3}) for name in COLORS]
        requests.append(("list_collections", {}))
        requests.append(("search_similar_images", {"image_path": str(example), "k": 3}))
    results: dict[int, types.CallToolResult] = {}
    async with mcp_client(fake_service, [color_folder]) as client:
        await client.call_tool("index_folder", {"folder": str(color_folder)})

        async def one(i: int, tool: str, arguments: dict[str, Any]) -> None:
            results[i] = await client.call_tool(tool, arguments)

        async with anyio.create_task_group() as group:
            for i, (tool, arguments) in enumerate(requests):
                group.start_soon(one, i, tool, arguments)

    assert len(requests) >= 24 and sorted(results) == list(range(len(requests)))
    for i, (tool, arguments) in enumerate(requests):
        result = results[i]
        assert not result.is_error, result
        content = result.structured_content
        if tool == "list_collections":
            assert [(c["name"], c["images"]) for c in content["collections"]] == [("default", 15)]
            continue
        paths = [hit["path"] for hit in content["results"]]
        if tool == "search_similar_images":
            assert paths[0] == str(example) and all("/green/" in p for p in paths)
        else:
            colour = arguments["query"].split()[1]
            assert content["query"] == arguments["query"]
            assert len(paths) == 3 and all(f"/{colour}/" in p for p in paths), (colour, paths)
