"""Indexing as jobs: answers within wait_seconds, status, cancel, queueing, records that outlive the server, resuming
after a crash, and one writer per collection across servers. The fake encoder lets each batch through on the test's
say-so, so every state is reached on purpose, not by timing."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import mcp.types as types
import numpy as np
import numpy.typing as npt
import pytest
from mcp import Client

from conftest import COLORS, FakeEncoder, call, mcp_client, save_color, until
from server.config import Settings
from server.indexing.background import Background
from server.indexing.indexer import Indexer
from server.indexing.jobs import JobManager, JobRecord
from server.indexing.watch import FolderWatcher
from server.paths import PathGuard
from server.service import ClipSearch
from server.store.collection_store import CollectionStore

pytestmark = pytest.mark.anyio

WAIT = 20.0
IMAGES = 15  # conftest.color_folder
BATCH = 3


class SteppedEncoder(FakeEncoder):
    """Each image batch waits until the test lets it through (`allow`), or all do once `open()`ed."""

    def __init__(self) -> None:
        super().__init__()
        self._permits = threading.Semaphore(0)
        self.batches = 0
        self.waiting = 0  # batches that reached the model, let through or not

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self._permits.release()

    def open(self) -> None:
        self.allow(1000)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.waiting += 1
        if not self._permits.acquire(timeout=WAIT):
            raise RuntimeError("the test never let this batch through")
        self.batches += 1
        return super().encode_pixels(batch)


def stepped_service(index_dir: Path, encoder: FakeEncoder) -> ClipSearch:
    # A commit after every batch of 3: 15 images are 5 commits, each visible to searches.
    indexer = Indexer(encoder, workers=2, batch_size=BATCH, commit_every=BATCH)
    return ClipSearch(Settings(index_dir=index_dir, model=encoder.model_name), encoder, indexer)


def committed(service: ClipSearch) -> int:
    """Images committed to the default collection so far (0 before the job has made it)."""
    return service.collection("default").count() if service.store.exists("default") else 0


def text(result: types.CallToolResult) -> str:
    return result.content[0].text  # type: ignore[union-attr]


async def status_until(client: Client, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    for _ in range(20):
        listing = await call(client, "index_status", job_id=job_id, wait_seconds=2)
        job = listing.structured_content["jobs"][0]
        if job["state"] in states:
            return job
    raise AssertionError(f"job {job_id} never reached {states}")


@pytest.fixture
def encoder() -> SteppedEncoder:
    return SteppedEncoder()


@pytest.fixture
def service(index_dir: Path, encoder: SteppedEncoder) -> ClipSearch:
    return stepped_service(index_dir, encoder)


@pytest.fixture
def jobs(service: ClipSearch) -> JobManager:
    return JobManager(service.store.index_dir, lambda: service)


# --- a job that outlasts the call --------------------------------------------------------------------------------


async def test_index_folder_answers_at_once_and_index_status_follows_the_job_to_the_same_counts_as_a_direct_run(
    service: ClipSearch, jobs: JobManager, encoder: SteppedEncoder, color_folder: Path, tmp_path: Path
) -> None:
    async with mcp_client(service, [color_folder], background=Background(jobs, FolderWatcher(jobs))) as client:
        started = await call(client, "index_folder", folder=str(color_folder), wait_seconds=0)
        job_id = started.structured_content["job_id"]
        encoder.allow(2)
        until(lambda: committed(service) == 2 * BATCH, "two committed batches")
        during = await call(client, "search_images_by_text", query="red", k=IMAGES)
        encoder.open()
        finished = await status_until(client, job_id, ("done",))

    assert started.structured_content["state"] in ("queued", "running")
    assert f"job_id='{job_id}'" in started.structured_content["next_step"] and "index_status" in text(started)
    assert started.structured_content["indexed_total"] is None  # no report before the end
    # A search during the run sees exactly what was committed, and says the collection is being indexed.
    assert len(during.structured_content["results"]) == 2 * BATCH
    assert f"'default' is being indexed (job {job_id})" in text(during)
    direct = stepped_service(tmp_path / "direct-index", FakeEncoder()).index_folder(color_folder)
    report = finished["report"]
    for key in ("indexed_total", "added", "updated", "moved", "unchanged", "removed", "failed", "embedded"):
        assert report[key] == getattr(direct, key), key
    assert finished["progress"]["done"] == finished["progress"]["to_process"] == IMAGES


async def test_small_folder_is_done_within_the_call_with_the_whole_report(index_dir: Path, color_folder: Path) -> None:
    service = stepped_service(index_dir, FakeEncoder())
    async with mcp_client(service, [color_folder]) as client:
        result = await call(client, "index_folder", folder=str(color_folder))

    content = result.structured_content
    assert content["state"] == "done" and content["indexed_total"] == IMAGES and content["added"] == IMAGES
    assert text(result).startswith(f"Indexed {color_folder} into 'default': {IMAGES} images in total")


async def test_a_job_for_another_folder_of_the_collection_waits_for_the_running_one(
    service: ClipSearch, jobs: JobManager, encoder: SteppedEncoder, color_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "more"
    for i in range(4):
        save_color(other / f"more_{i}.jpg", COLORS["blue"])
    guard = PathGuard([color_folder, other])
    first = jobs.start(color_folder, "default", guard=guard)
    until(lambda: jobs.status(first.job_id).state == "running", "the first job to run")
    second = jobs.start(other, "default", guard=guard)
    assert jobs.status(second.job_id).state == "queued"
    encoder.open()
    until(lambda: jobs.status(second.job_id).state == "done", "the second job to finish")

    one, two = jobs.status(first.job_id), jobs.status(second.job_id)
    assert one.state == "done" and one.finished is not None and two.started is not None
    assert two.started >= one.finished
    assert two.report is not None and two.report.indexed_total == IMAGES + 4


# --- cancelling ----------------------------------------------------------------------------------------------------


async def test_cancel_stops_within_a_batch_and_a_later_run_finishes_without_embedding_twice(
    service: ClipSearch, jobs: JobManager, encoder: SteppedEncoder, color_folder: Path
) -> None:
    async with mcp_client(service, [color_folder], background=Background(jobs, FolderWatcher(jobs))) as client:
        started = await call(client, "index_folder", folder=str(color_folder), wait_seconds=0)
        job_id = started.structured_content["job_id"]
        encoder.allow(1)
        until(lambda: committed(service) == BATCH, "the first committed batch")
        until(lambda: encoder.waiting == 2, "the second batch held at the model")
        jobs.cancel(job_id, wait_seconds=0)  # the run is held in its second batch: the request lands mid-batch
        encoder.open()
        cancelled = await status_until(client, job_id, ("cancelled",))
        kept = service.collection("default").count()
        again = await call(client, "index_folder", folder=str(color_folder))
        cancel_again = await call(client, "cancel_indexing", job_id=job_id)

    assert kept == 2 * BATCH  # the batch in hand was finished and committed, nothing after it
    assert cancelled["report"]["embedded"] == 2 * BATCH and "what it committed stays" in cancelled["note"]
    assert again.structured_content["state"] == "done"
    assert again.structured_content["embedded"] == IMAGES - 2 * BATCH
    assert again.structured_content["unchanged"] == 2 * BATCH
    assert encoder.images_encoded == IMAGES  # each image went through the model once
    assert cancel_again.structured_content["state"] == "cancelled"  # cancelling an ended job changes nothing


async def test_cancelling_a_queued_job_ends_it_before_it_starts(
    service: ClipSearch, jobs: JobManager, encoder: SteppedEncoder, color_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "more"
    save_color(other / "more.jpg", COLORS["green"])
    guard = PathGuard([color_folder, other])
    running = jobs.start(color_folder, "default", guard=guard)
    queued = jobs.start(other, "default", guard=guard)
    async with mcp_client(service, [color_folder, other], background=Background(jobs, FolderWatcher(jobs))) as client:
        result = await call(client, "cancel_indexing", job_id=queued.job_id)
    encoder.open()
    until(lambda: jobs.status(running.job_id).state == "done", "the running job to finish")

    assert result.structured_content["state"] == "cancelled"
    assert result.structured_content["note"] == "cancelled before it started"
    assert not any(path.parent == other for path in service.collection("default").all_vectors()[1])


# --- bad input -----------------------------------------------------------------------------------------------------


async def test_unknown_or_malformed_job_ids_are_tool_errors_naming_the_valid_ones(
    index_dir: Path, color_folder: Path
) -> None:
    service = stepped_service(index_dir, FakeEncoder())
    async with mcp_client(service, [color_folder]) as client:
        none_yet = await call(client, "index_status", job_id="j-20260101-000000-abcdef")
        done = await call(client, "index_folder", folder=str(color_folder))
        unknown = await call(client, "cancel_indexing", job_id="j-20260101-000000-abcdef")
        malformed = await call(client, "index_status", job_id="../../etc/passwd")
        too_long_wait = await call(client, "index_status", wait_seconds=51)

    job_id = done.structured_content["job_id"]
    assert none_yet.is_error and "There are no indexing jobs yet." in text(none_yet)
    assert unknown.is_error and f"No job j-20260101-000000-abcdef. Recent jobs: {job_id}." in text(unknown)
    assert malformed.is_error and "Invalid job id '../../etc/passwd'" in text(malformed)
    assert too_long_wait.is_error and "wait_seconds" in text(too_long_wait)


async def test_index_folder_outside_the_roots_or_missing_is_refused_before_any_job(
    index_dir: Path, color_folder: Path, tmp_path: Path
) -> None:
    service = stepped_service(index_dir, FakeEncoder())
    async with mcp_client(service, [color_folder]) as client:
        outside = await call(client, "index_folder", folder=str(tmp_path))
        missing = await call(client, "index_folder", folder=str(color_folder / "nope"))
        listing = await call(client, "index_status")

    assert outside.is_error and "outside the folders" in text(outside)
    assert missing.is_error and "does not exist" in text(missing)
    assert listing.structured_content["jobs"] == [] and text(listing) == "No indexing jobs yet."


# --- records outlive the server; crashed jobs resume ---------------------------------------------------------------


def write_record(index_dir: Path, job_id: str, folder: Path, owner: str) -> JobRecord:
    """A record as a server leaves it when it dies mid-run: state running, owned by `owner`."""
    record = JobRecord(
        job_id=job_id,
        collection="default",
        folder=str(folder),
        recursive=True,
        remove_missing=True,
        index_type=None,
        state="running",
        owner=owner,
    )
    jobs_folder = index_dir / record.collection / "jobs"
    jobs_folder.mkdir(parents=True, exist_ok=True)
    (jobs_folder / f"{record.job_id}.json").write_text(json.dumps(record.__dict__), encoding="utf-8")
    return record


def dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:"


def test_a_finished_job_is_read_back_by_a_new_server(index_dir: Path, color_folder: Path) -> None:
    service = stepped_service(index_dir, FakeEncoder())
    first = JobManager(index_dir, lambda: service)
    job = first.start(color_folder, "default")
    until(lambda: first.status(job.job_id).state == "done", "the job to finish")

    later = JobManager(index_dir, lambda: service)
    status = later.status(job.job_id)

    assert status.state == "done" and status.report is not None and status.report.indexed_total == IMAGES
    assert [j.job_id for j in later.recent().jobs] == [job.job_id]


def test_a_job_whose_server_died_is_resumed_under_the_roots_and_finishes(index_dir: Path, color_folder: Path) -> None:
    service = stepped_service(index_dir, FakeEncoder())
    service.index_folder(color_folder / "red")  # some of the work was committed before the crash
    record = write_record(index_dir, "j-20261127-120000-aaaaaa", color_folder, dead_owner())
    manager = JobManager(index_dir, lambda: service)

    touched = manager.recover(PathGuard([color_folder]))
    until(lambda: manager.status(record.job_id).state == "done", "the resumed job to finish")

    status = manager.status(record.job_id)
    assert [t.job_id for t in touched] == [record.job_id]
    assert status.resumed == 1 and status.report is not None
    assert (status.report.indexed_total, status.report.unchanged, status.report.added) == (IMAGES, 3, IMAGES - 3)


@pytest.mark.parametrize("guard_roots, resume", [(None, True), ("folder", False), ("elsewhere", True)])
def test_a_crashed_job_is_only_marked_interrupted_without_resume_or_outside_the_roots(
    index_dir: Path, color_folder: Path, tmp_path: Path, guard_roots: str | None, resume: bool
) -> None:
    record = write_record(index_dir, "j-20261127-120000-bbbbbb", color_folder, dead_owner())
    roots = {None: PathGuard([]), "folder": PathGuard([color_folder]), "elsewhere": PathGuard([tmp_path / "other"])}
    manager = JobManager(index_dir, lambda: stepped_service(index_dir, FakeEncoder()))

    manager.recover(roots[guard_roots], resume)

    status = JobManager(index_dir, lambda: stepped_service(index_dir, FakeEncoder())).status(record.job_id)
    assert status.state == "interrupted" and status.resumed == 0
    assert status.note is not None and status.note.startswith("its server stopped mid-run")


def test_another_live_servers_job_is_neither_resumed_nor_duplicated(index_dir: Path, color_folder: Path) -> None:
    other_server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = Path(f"/proc/{other_server.pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19]
        owner = f"{socket.gethostname()}:{other_server.pid}:{start}"
        record = write_record(index_dir, "j-20261127-120000-cccccc", color_folder, owner)
        manager = JobManager(index_dir, lambda: stepped_service(index_dir, FakeEncoder()))

        touched = manager.recover(PathGuard([color_folder]))
        again = manager.start(color_folder, "default")
    finally:
        other_server.kill()
        other_server.wait()

    assert touched == []
    assert again.job_id == record.job_id and again.state == "running"
    assert not (index_dir / "default" / "manifest.json").exists()  # nothing ran here


# --- SIGKILL at any moment, restart, resume --------------------------------------------------------------------------

SERVER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
from conftest import FakeEncoder
from server.config import Settings
from server.indexing.indexer import Indexer
from server.indexing.jobs import JobManager
from server.paths import PathGuard
from server.service import ClipSearch

class SlowEncoder(FakeEncoder):
    def encode_pixels(self, batch):
        time.sleep(0.02)  # long enough for the parent to kill mid-run, not a wait for a condition
        return super().encode_pixels(batch)

encoder = SlowEncoder()
service = ClipSearch(Settings(index_dir=Path({index!r}), model=encoder.model_name), encoder,
                     Indexer(encoder, workers=2, batch_size=2, commit_every=2))
jobs = JobManager(Path({index!r}), lambda: service)
touched = jobs.recover(PathGuard([Path({folder!r})]))
job_id = touched[0].job_id if touched else jobs.start({folder!r}, "default").job_id
print("JOB", job_id, flush=True)
while jobs.status(job_id).state in ("queued", "running"):
    jobs.wait(job_id, 1)
    print("PROGRESS", jobs.status(job_id).progress.done, flush=True)
status = jobs.status(job_id)
print("END", status.state, status.report.indexed_total if status.report else -1, flush=True)
"""


def test_a_server_killed_ten_times_mid_job_resumes_each_time_and_ends_like_one_run(
    tmp_path: Path, index_dir: Path
) -> None:
    folder = tmp_path / "many"
    for i in range(60):
        save_color(
            folder / ["red", "green", "blue"][i % 3] / f"img_{i:03d}.jpg", COLORS[["red", "green", "blue"][i % 3]]
        )
    tests = Path(__file__).resolve().parent
    code = SERVER.format(root=str(tests.parent), tests=str(tests), index=str(index_dir), folder=str(folder))
    job_ids, end = set(), ""
    for attempt in range(11):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        progress_lines = 0
        for line in child.stdout:
            if line.startswith("JOB"):
                job_ids.add(line.split()[1])
            elif line.startswith("PROGRESS"):
                progress_lines += 1
                if attempt < 10 and progress_lines >= 1 + attempt % 3:
                    child.kill()
                    break
            elif line.startswith("END"):
                end = line.strip()
        child.stdout.close()
        child.wait(timeout=60)
        if end:
            break

    assert attempt == 10 and len(job_ids) == 1  # killed ten times; every restart resumed the same job
    assert end == "END done 60"
    collection = CollectionStore(index_dir).open("default", FakeEncoder.model_name)
    ids, paths, _ = collection.all_vectors()
    assert collection.count() == collection.ntotal == len(ids) == 60
    assert {p.name for p in paths} == {f"img_{i:03d}.jpg" for i in range(60)}
    record = json.loads((index_dir / "default" / "jobs" / f"{job_ids.pop()}.json").read_text(encoding="utf-8"))
    assert record["state"] == "done" and record["resumed"] == 10


# --- the CLI --------------------------------------------------------------------------------------------------------

CLI = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import FakeEncoder
from server.cli.main import main
from server.indexing.indexer import Indexer
from server.service import ClipSearch

class SlowEncoder(FakeEncoder):
    def encode_pixels(self, batch):
        print("BATCH", flush=True)
        time.sleep(0.2)
        return super().encode_pixels(batch)

def slow_service(settings, **options):
    encoder = SlowEncoder()
    indexer = Indexer(encoder, workers=1, batch_size=2, commit_every=2)
    return ClipSearch(settings, encoder=encoder, indexer=indexer, **options)

argv = ["index", {folder!r}, "--index-dir", {index!r}, "--model", "fake-color-encoder"]
sys.exit(main(argv, make_service=slow_service))
"""


def test_ctrl_c_stops_clipsearch_index_after_its_batch_with_code_130_keeping_what_was_committed(
    color_folder: Path, index_dir: Path
) -> None:
    import signal

    tests = Path(__file__).resolve().parent
    code = CLI.format(root=str(tests.parent), tests=str(tests), index=str(index_dir), folder=str(color_folder))
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "BATCH"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)

    assert child.returncode == 130, err
    assert "stopping after the current batch" in err and "stopped; everything committed stays" in err
    collection = CollectionStore(index_dir).open("default", FakeEncoder.model_name)
    assert 2 <= collection.count() < IMAGES
    assert collection.count() == collection.ntotal
