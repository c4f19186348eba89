"""Watched folders: changes indexed within seconds through the same incremental indexer, batched, and a vanished
folder reported, never emptied. Waits are bounded waits on conditions."""

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import COLORS, FakeEncoder, mcp_client, save_color, until
from server.config import Settings
from server.indexing.background import Background
from server.indexing.indexer import Indexer
from server.indexing.jobs import JobManager
from server.indexing.watch import FolderWatcher
from server.service import ClipSearch

WAIT = 10.0  # the bound for a change to show up in searches
SETTLE = 0.3


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def service(index_dir: Path, encoder: FakeEncoder) -> ClipSearch:
    return ClipSearch(Settings(index_dir=index_dir, model=encoder.model_name), encoder, Indexer(encoder, workers=2))


@pytest.fixture
def jobs(service: ClipSearch) -> JobManager:
    return JobManager(service.store.index_dir, lambda: service)


@pytest.fixture
def watcher(jobs: JobManager, index_dir: Path) -> Any:
    watcher = FolderWatcher(jobs, settle_seconds=SETTLE, exclude=(index_dir,))
    yield watcher
    watcher.close()


def paths_in(service: ClipSearch) -> set[str]:
    return {p.name for p in service.collection("default").all_vectors()[1]}


def test_added_deleted_and_renamed_photos_are_applied_within_seconds_and_a_rename_keeps_its_vector(
    service: ClipSearch, encoder: FakeEncoder, watcher: FolderWatcher, color_folder: Path
) -> None:
    service.index_folder(color_folder)
    watcher.watch(color_folder, "default")
    embedded = encoder.images_encoded

    save_color(color_folder / "blue" / "new_blue.jpg", COLORS["blue"])
    until(lambda: "new_blue.jpg" in paths_in(service), "the new photo to be indexed", seconds=WAIT)
    hits = service.search_text("blue", k=4).results
    (color_folder / "red" / "red_0.jpg").unlink()
    until(lambda: "red_0.jpg" not in paths_in(service), "the deleted photo to leave the collection", seconds=WAIT)
    (color_folder / "green" / "green_0.jpg").rename(color_folder / "green" / "renamed.jpg")
    until(lambda: "renamed.jpg" in paths_in(service), "the renamed photo to be indexed", seconds=WAIT)

    assert "new_blue.jpg" in {Path(h.path).name for h in hits}
    assert "green_0.jpg" not in paths_in(service) and len(paths_in(service)) == 15
    assert encoder.images_encoded == embedded + 1  # only the new photo went through the model
    assert [w.state for w in watcher.watched()] == ["watching"]


def test_a_thousand_files_copied_in_at_once_are_indexed_by_a_few_jobs_not_one_each(
    service: ClipSearch, jobs: JobManager, watcher: FolderWatcher, color_folder: Path, tmp_path: Path
) -> None:
    service.index_folder(color_folder)
    watcher.watch(color_folder, "default")
    source = tmp_path / "source"
    save_color(source / "one.jpg", COLORS["yellow"])
    drop = color_folder / "drop"
    drop.mkdir()
    for i in range(1000):
        shutil.copyfile(source / "one.jpg", drop / f"copy_{i:04d}.jpg")

    until(lambda: len(paths_in(service)) == 1015, "the thousand copies to be indexed", seconds=60)

    assert 1 <= len(jobs.recent(100).jobs) <= 3


def test_reads_by_the_indexer_itself_start_no_further_jobs(
    service: ClipSearch, jobs: JobManager, watcher: FolderWatcher, color_folder: Path
) -> None:
    watcher.watch(color_folder, "default")
    save_color(color_folder / "red" / "trigger.jpg", COLORS["red"])
    until(
        lambda: service.store.exists("default") and "trigger.jpg" in paths_in(service),
        "the first watched run",
        seconds=WAIT,
    )
    until(lambda: all(j.state == "done" for j in jobs.recent().jobs), "the run to end", seconds=WAIT)
    count = len(jobs.recent().jobs)

    time.sleep(4 * SETTLE)  # quiet time in which a self-triggered run would have started

    assert len(jobs.recent().jobs) == count
    assert watcher.watched()[0].pending is False


def test_a_watched_folder_that_vanishes_stops_its_watch_and_removes_nothing(
    service: ClipSearch, watcher: FolderWatcher, color_folder: Path, tmp_path: Path
) -> None:
    service.index_folder(color_folder)
    watcher.watch(color_folder, "default")

    color_folder.rename(tmp_path / "moved-away")
    until(lambda: watcher.watched()[0].state == "stopped", "the watch to notice", seconds=WAIT)

    [watched] = watcher.watched()
    assert watched.note is not None and "nothing was removed" in watched.note
    assert len(paths_in(service)) == 15


@pytest.mark.anyio
async def test_index_folder_watch_true_keeps_the_folder_in_sync_and_false_stops_it(
    service: ClipSearch, jobs: JobManager, watcher: FolderWatcher, color_folder: Path
) -> None:
    async with mcp_client(service, [color_folder], background=Background(jobs, watcher)) as client:
        watched = await client.call_tool("index_folder", {"folder": str(color_folder), "watch": True})
        status = await client.call_tool("index_status", {})
        save_color(color_folder / "white" / "new_white.jpg", COLORS["white"])
        until(lambda: "new_white.jpg" in paths_in(service), "the new photo to be indexed", seconds=WAIT)
        stopped = await client.call_tool("index_folder", {"folder": str(color_folder), "watch": False})
        after = await client.call_tool("index_status", {})

    assert watched.structured_content["watching"] is True
    assert "The folder is watched" in watched.content[0].text  # type: ignore[union-attr]
    assert [w["folder"] for w in status.structured_content["watched"]] == [str(color_folder)]
    assert stopped.structured_content["watching"] is False
    assert after.structured_content["watched"] == []


CLI = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import with_encoder
from server.cli.main import main
argv = ["index", {folder!r}, "--watch", "--json", "--index-dir", {index!r}, "--model", "fake-color-encoder"]
sys.exit(main(argv, make_service=with_encoder()))
"""


def test_clipsearch_index_watch_indexes_then_applies_changes_until_ctrl_c(color_folder: Path, index_dir: Path) -> None:
    import json
    import signal
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    code = CLI.format(root=str(tests.parent), tests=str(tests), index=str(index_dir), folder=str(color_folder))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    try:
        first = json.loads(_read_json(child.stdout))
        assert "watching" in child.stderr.readline()
        save_color(color_folder / "red" / "late.jpg", COLORS["red"])
        second = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)

    assert (first["indexed_total"], first["added"]) == (15, 15)
    assert (second["indexed_total"], second["added"], second["unchanged"]) == (16, 1, 15)
    assert child.returncode == 0 and "stopped watching" in err


def _read_json(stream: Any) -> str:
    """The first (indented) JSON document on a stream."""
    lines = [stream.readline()]
    while lines[-1].rstrip() != "}":
        lines.append(stream.readline())
    return "".join(lines)


def test_serve_watch_resumes_watching_every_recorded_folder_under_the_roots(
    service: ClipSearch, jobs: JobManager, watcher: FolderWatcher, color_folder: Path, tmp_path: Path, index_dir: Path
) -> None:
    from server.paths import PathGuard

    elsewhere = tmp_path / "elsewhere"
    save_color(elsewhere / "x.jpg", COLORS["red"])
    service.index_folder(color_folder)
    service.index_folder(elsewhere)
    (color_folder / "red" / "red_1.jpg").unlink()  # changed while no server ran

    Background(jobs, watcher).start_up(PathGuard([color_folder]), resume=False, watch=True)
    until(
        lambda: "red_1.jpg" not in paths_in(service), "the change made while no server ran to be applied", seconds=WAIT
    )

    assert [(w.folder, w.state) for w in watcher.watched()] == [(str(color_folder), "watching")]
    assert "x.jpg" in paths_in(service)  # a folder outside the roots is neither watched nor touched
