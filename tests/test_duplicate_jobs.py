"""A find_duplicates comparison that outlasts its call is a job like indexing's: `index_status` lists and follows it
with its progress, `cancel_indexing` stops it, and what was cancelled is never served; `clipsearch duplicates`
waits for it in the foreground with a progress bar. Each comparison is held at its first progress report by an
Event the test opens, so "slow" needs no sleep."""

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from conftest import SAMPLES, call, error_text, mcp_client, serving
from server.cli.main import main
from server.service import ClipSearch

pytestmark = pytest.mark.anyio


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """The sample photos (no duplicates among them) plus two byte-identical copies: two exact groups."""
    root = tmp_path / "library"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(root / "cat" / "chelsea.jpg", root / "cat" / "chelsea copy.jpg")
    shutil.copy(root / "coffee" / "coffee.jpg", root / "coffee" / "coffee copy.jpg")
    return root


class Held:
    """Every computation of duplicate groups, counted; each stops at its first progress report until `gate` opens
    (`reported` says one got there)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.reported = threading.Event()
        self.computations = 0

    def reached(self) -> None:
        assert self.reported.wait(10), "no comparison reported progress"


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    from server.library import duplicate_tasks

    hold = Held()
    real = duplicate_tasks.duplicate_groups

    def computed(collection: Any, query: Any, progress: Any = None, cancel: Any = None) -> Any:
        hold.computations += 1

        def told(compared: int, total: int) -> None:
            if progress is not None:
                progress(compared, total)
            hold.reported.set()
            assert hold.gate.wait(20), "the test never opened the gate"

        return real(collection, query, told, cancel)

    monkeypatch.setattr(duplicate_tasks, "duplicate_groups", computed)
    yield hold
    hold.gate.set()  # no thread left waiting past the test


async def held_comparison(client: Any, held: Held) -> tuple[Any, str]:
    """Start find_duplicates and wait until its comparison is held at its first progress report: (reply, job id)."""
    started = await call(client, "find_duplicates", wait_seconds=0)
    await anyio.to_thread.run_sync(held.reached)
    return started, started.structured_content["job_id"]  # type: ignore[index]


def images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


async def test_a_long_comparison_is_followed_by_index_status_and_stopped_by_cancel_indexing_then_computed_anew(
    fake_service: ClipSearch, library: Path, held: Held
) -> None:
    fake_service.index_folder(library)
    async with mcp_client(fake_service, [library]) as client:
        started, job_id = await held_comparison(client, held)
        listed = await call(client, "index_status")
        one = await call(client, "index_status", job_id=job_id)
        stopped = await call(client, "cancel_indexing", job_id=job_id)
        held.gate.set()
        ended = await call(client, "index_status", job_id=job_id, wait_seconds=10)
        again = await call(client, "find_duplicates", wait_seconds=10)
        after = await call(client, "index_status")

    assert started.structured_content["state"] == "running" and job_id.startswith("d-")  # type: ignore[index]
    assert f"index_status(job_id='{job_id}')" in started.content[0].text  # type: ignore[union-attr]
    assert listed.structured_content["jobs"] == []  # type: ignore[index]
    (running,) = listed.structured_content["duplicates"]  # type: ignore[index]
    assert (running["job_id"], running["kind"], running["state"], running["collection"]) == (
        job_id,
        "duplicates",
        "running",
        "default",
    )
    assert 0 < running["progress"]["compared"] <= running["progress"]["total"] == images(library)
    assert f"Duplicates search {job_id}: comparing 'default'" in listed.content[0].text  # type: ignore[union-attr]
    assert one.structured_content["duplicates"] == [running]  # type: ignore[index]
    assert "cancel_indexing" in running["next_step"]
    assert not stopped.is_error
    assert (stopped.structured_content["state"], stopped.structured_content["note"]) == (  # type: ignore[index]
        "cancelled",
        "cancelled on request",
    )
    (cancelled,) = ended.structured_content["duplicates"]  # type: ignore[index]
    assert cancelled["state"] == "cancelled" and cancelled["finished"] is not None
    assert cancelled["groups_total"] is None  # nothing of it is kept
    assert again.structured_content["state"] == "done" and again.structured_content["groups_total"] == 2  # type: ignore[index]
    assert held.computations == 2  # the cancelled comparison's answer was not served: the groups were computed anew
    newest, oldest = after.structured_content["duplicates"]  # type: ignore[index]
    assert (newest["state"], newest["groups_total"], oldest["job_id"]) == ("done", 2, job_id)
    assert "Call find_duplicates again with the same arguments for the groups" in newest["next_step"]


async def test_a_finished_comparison_says_its_groups_are_ready_and_cancelling_it_changes_nothing(
    fake_service: ClipSearch, library: Path, held: Held
) -> None:
    fake_service.index_folder(library)
    async with mcp_client(fake_service, [library]) as client:
        started = await call(client, "find_duplicates", wait_seconds=0)
        job_id = started.structured_content["job_id"]  # type: ignore[index]
        held.gate.set()
        done = await call(client, "index_status", job_id=job_id, wait_seconds=10)
        cancelled = await call(client, "cancel_indexing", job_id=job_id)
        groups = await call(client, "find_duplicates", wait_seconds=0)

    (status,) = done.structured_content["duplicates"]  # type: ignore[index]
    assert (status["state"], status["groups_total"]) == ("done", 2)
    assert status["progress"]["compared"] == status["progress"]["total"] == images(library)
    assert "done, 2 groups in 'default'" in done.content[0].text  # type: ignore[union-attr]
    assert "find_duplicates again with the same arguments" in done.content[0].text  # type: ignore[union-attr]
    assert cancelled.structured_content["state"] == "done"  # type: ignore[index]
    assert groups.structured_content["state"] == "done" and groups.structured_content["groups_total"] == 2  # type: ignore[index]
    assert held.computations == 1  # the groups came from the finished comparison, even with no time to wait


async def test_a_commit_during_a_comparison_cancels_it_for_a_comparison_of_the_new_generation(
    fake_service: ClipSearch, library: Path, held: Held
) -> None:
    fake_service.index_folder(library)
    async with mcp_client(fake_service, [library]) as client:
        _, job_id = await held_comparison(client, held)
        shutil.copy(library / "cat" / "chelsea.jpg", library / "cat" / "chelsea again.jpg")
        await anyio.to_thread.run_sync(lambda: fake_service.index_folder(library))
        restarted = await call(client, "find_duplicates", wait_seconds=0)  # the first is still held meanwhile
        held.gate.set()
        newer = await call(client, "find_duplicates", wait_seconds=10)
        old = await call(client, "index_status", job_id=job_id, wait_seconds=10)

    (replaced,) = old.structured_content["duplicates"]  # type: ignore[index]
    assert replaced["state"] == "cancelled" and "the collection changed" in replaced["note"]
    assert restarted.structured_content["job_id"] not in (None, job_id)  # type: ignore[index]
    assert newer.structured_content["state"] == "done"  # type: ignore[index]
    assert newer.structured_content["generation"] > replaced["generation"]  # type: ignore[index]
    assert newer.structured_content["images_in_groups"] == 5  # type: ignore[index]  # the new copy joined chelsea's
    assert held.computations == 2


async def test_unknown_or_malformed_duplicates_ids_are_tool_errors(fake_service: ClipSearch, library: Path) -> None:
    fake_service.index_folder(library)
    async with mcp_client(fake_service, [library]) as client:
        none_yet = await call(client, "index_status", job_id="d-0123456789")
        done = await call(client, "find_duplicates")
        unknown = await call(client, "cancel_indexing", job_id="d-0123456789")
        malformed = await call(client, "index_status", job_id="d-../../etc")
        listing = await call(client, "index_status")

    (job,) = listing.structured_content["duplicates"]  # type: ignore[index]
    assert done.structured_content["state"] == "done"  # type: ignore[index]
    assert "No duplicates computation d-0123456789. This server has run no duplicates computation yet" in error_text(
        none_yet
    )
    assert f"No duplicates computation d-0123456789. Recent duplicates computations: {job['job_id']}." in error_text(
        unknown
    )
    assert "Invalid job id 'd-../../etc'" in error_text(malformed)


def test_the_cli_waits_for_the_comparison_in_the_foreground_with_a_progress_bar(
    fake_service: ClipSearch, library: Path, held: Held, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from server.cli.terminal import ProgressBar

    shown: list[tuple[int, int, str]] = []
    monkeypatch.setattr(
        ProgressBar, "count", lambda self, done, total, desc="indexing": shown.append((done, total, desc))
    )
    fake_service.index_folder(library)
    outcome: list[int] = []
    command = threading.Thread(
        target=lambda: outcome.append(main(["duplicates", "--json"], make_service=serving(fake_service)))
    )
    command.start()
    held.reached()
    waiting = command.is_alive()  # held mid-comparison: the command has not answered 'running'
    held.gate.set()
    command.join(20)

    assert waiting and outcome == [0]
    assert '"state": "done"' in capsys.readouterr().out
    assert shown and shown[-1] == (images(library), images(library), "comparing")


def test_a_failed_comparison_is_listed_with_its_error_and_the_next_call_computes_again(
    fake_service: ClipSearch, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.library import duplicate_tasks
    from server.library.duplicates import DuplicateQuery

    real = duplicate_tasks.duplicate_groups
    attempts: list[int] = []

    def first_fails(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk unreadable\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(duplicate_tasks, "duplicate_groups", first_fails)
    fake_service.index_folder(library)
    with pytest.raises(OSError, match="disk unreadable"):
        fake_service.find_duplicates(query=DuplicateQuery(), wait_seconds=10)
    (failed,) = fake_service.duplicate_tasks.recent()
    done = fake_service.find_duplicates(query=DuplicateQuery(), wait_seconds=10)

    assert (failed.state, failed.error, failed.groups_total) == ("failed", "disk unreadable", None)
    assert failed.next_step == "Call find_duplicates again to compute the groups anew."
    assert done.state == "done" and done.groups_total == 2 and len(attempts) == 2
    assert [job.state for job in fake_service.duplicate_tasks.recent()] == ["done", "failed"]
