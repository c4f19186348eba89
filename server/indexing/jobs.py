"""Indexing jobs: a record on disk plus a worker thread, so that indexing outlives one tool call (most MCP hosts cut a
call at about 60 s) and the server's own restarts.

A job is the incremental indexer run on one folder of one collection, with its options. Records live in
`<index_dir>/<collection>/jobs/<job_id>.json`, written atomically at every change of state and at most once a second
with progress, so another server on the same index directory (or this one after a restart) can read them. One
worker thread per collection runs its queued jobs in order (the collection's write lock allows one writer anyway).
A record that says `running` but whose owner process is gone was interrupted; `recover` marks it so and queues it
again, which costs little since the indexer skips whatever was committed.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.atomic_files import write_atomically
from server.errors import ClipSearchError, CollectionBusy, FileMissing, IndexingCancelled, InvalidArgument, JobNotFound
from server.limits import INDEX_TYPES, OCR_POLICIES
from server.paths import UNCONFINED, PathGuard
from server.results import IndexReport, JobList, JobProgress, JobStatus

if TYPE_CHECKING:
    from server.indexing.indexer import IndexProgress

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
RECORD_VERSION = 1
KEEP_FINISHED = 50  # finished records kept per collection
LIST_LIMIT = 20
SAVE_INTERVAL_SECONDS = 1.0
BUSY_POLL_SECONDS = 1.0
_JOB_ID = re.compile(r"j-\d{8}-\d{6}-[0-9a-f]{6}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> str:
    """When process `pid` started (Linux: clock ticks since boot), so that a reused pid is not taken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


_OWNER = f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _owner_alive(owner: str) -> bool:
    """Whether the process named by an owner string still runs (owners on other hosts are assumed alive)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return not started or _process_start(pid) in ("", started)


@dataclass
class JobRecord:
    """What is persisted of a job. `folder` keeps the exact path (not necessarily UTF-8) for resuming."""

    job_id: str
    collection: str
    folder: str
    recursive: bool
    remove_missing: bool
    index_type: str | None
    state: str = "queued"
    model: str | None = None  # the model a new collection is built with (None: the default)
    precision: str | None = None  # of a new collection's vectors (None: fp32)
    ocr: str | None = None  # the collection's text reading to set (None: keep)
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: str | None = None
    note: str | None = None
    resumed: int = 0
    owner: str = ""
    version: int = RECORD_VERSION

    def status(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id,
            collection=self.collection,
            folder=self.folder,
            state=self.state,  # type: ignore[arg-type]
            recursive=self.recursive,
            remove_missing=self.remove_missing,
            index_type=self.index_type,
            model=self.model,
            precision=self.precision,
            created=self.created,
            started=self.started,
            finished=self.finished,
            progress=JobProgress(**self.progress),
            report=IndexReport(**self.report) if self.report else None,
            error=self.error,
            note=self.note,
            resumed=self.resumed,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class _Job:
    record: JobRecord
    guard: PathGuard
    cancel: threading.Event = field(default_factory=threading.Event)
    started_at: float = 0.0
    saved_at: float = 0.0
    text_started_at: float | None = None  # when the run's text stage began


class IndexingService(Protocol):
    """What jobs need of the core (`ClipSearch` is one): a model check, and an indexing run."""

    def check_model(self, collection: str, model: str | None, precision: str | None = None) -> None: ...

    def index_folder(
        self,
        folder: str | Path,
        collection: str,
        recursive: bool,
        remove_missing: bool,
        guard: PathGuard,
        progress: "Callable[[IndexProgress], None] | None",
        index_type: str | None,
        cancel: threading.Event | None,
        model: str | None,
        precision: str | None,
        ocr: str | None = None,
    ) -> IndexReport: ...


class JobManager:
    """Starts, runs, lists and cancels this index directory's indexing jobs. `service` is called (once work starts)
    for the core that runs them, so constructing a manager loads nothing."""

    def __init__(self, index_dir: Path, service: Callable[[], IndexingService]) -> None:
        self.index_dir = index_dir
        self._service = service
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, deque[_Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._version = 0

    # --- starting ------------------------------------------------------------------------------------------------

    def start(
        self,
        folder: str | Path,
        collection: str,
        recursive: bool = True,
        remove_missing: bool = True,
        index_type: str | None = None,
        guard: PathGuard = UNCONFINED,
        again: bool = False,
        model: str | None = None,
        precision: str | None = None,
        ocr: str | None = None,
    ) -> JobStatus:
        """Queue the indexing of `folder` into `collection`, or return the job already queued or running for it
        (in this process or, read from its record, in another server). With `again` (changes seen after a run
        began), a running job gets one follow-up queued behind it. `model` builds a new collection with that model
        (checked at once against an existing collection's; loaded, or downloaded, by the job), `precision` with
        vectors of that precision (checked at once too); `ocr` sets the collection's text reading (auto, on, off)."""
        # Here, not above: the MCP handshake must not wait for numpy.
        from server.store.collection_store import validate_name

        validate_name(collection)
        if index_type is not None and index_type not in INDEX_TYPES:
            raise InvalidArgument(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}.")
        if ocr is not None and ocr not in OCR_POLICIES:
            raise InvalidArgument(f"ocr must be one of {', '.join(OCR_POLICIES)}, got {ocr!r}.")
        path = guard.check(folder)
        if not path.is_dir():
            raise FileMissing(f"Folder '{folder}' does not exist or is not a folder.")
        if model is not None or precision is not None:
            self._service().check_model(collection, model, precision)
        with self._lock:
            same = [
                job.record
                for job in self._jobs.values()
                if job.record.state in ACTIVE and job.record.collection == collection and job.record.folder == str(path)
            ]
            queued = [record for record in same if record.state == "queued"]
            if queued or (same and not again):
                existing = (queued or same)[0]
                if model is not None and existing.model not in (None, model):
                    raise InvalidArgument(
                        f"Job {existing.job_id} is already indexing this folder into '{collection}' with the model "
                        f"'{existing.model}'; wait for it (index_status), or index into another collection name."
                    )
                if precision is not None and (existing.precision or "fp32") != precision:
                    raise InvalidArgument(
                        f"Job {existing.job_id} is already indexing this folder into '{collection}' at "
                        f"{existing.precision or 'fp32'}; wait for it (index_status), or index into another "
                        "collection name."
                    )
                return existing.status()
            for record in self._records(collection):
                if record.state in ACTIVE and record.folder == str(path) and self._run_elsewhere(record):
                    return record.status()
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            record = JobRecord(
                job_id=f"j-{stamp}-{secrets.token_hex(3)}",
                collection=collection,
                folder=str(path),
                recursive=recursive,
                remove_missing=remove_missing,
                index_type=index_type,
                model=model,
                precision=precision,
                ocr=ocr,
                owner=_OWNER,
            )
            job = _Job(record, guard)
            self._enqueue(job)
            return record.status()

    def recover(self, guard: PathGuard, resume: bool = True) -> list[JobStatus]:
        """At start-up: mark jobs whose server died mid-run `interrupted` and, with `resume`, queue them again when
        `guard` (the server's configured roots) allows their folder; without configured roots nothing is resumed,
        since the client that allowed the folder may not be the next one. Returns the jobs it touched."""
        touched = []
        with self._lock:
            for record in self._records():
                if record.state not in ACTIVE or record.job_id in self._jobs or self._run_elsewhere(record):
                    continue
                record.state, record.note, record.owner = "interrupted", "its server stopped mid-run", _OWNER
                path = Path(record.folder)
                if resume and path.is_dir() and guard.allows(path):
                    record.resumed += 1
                    record.state, record.note = "queued", f"resumed after its server stopped ({record.resumed}×)"
                    self._enqueue(_Job(record, guard))
                else:
                    if resume:
                        record.note += "; run index_folder on it again to finish (its folder is not under --root)"
                    self._save(record)
                touched.append(record.status())
        for status in touched:
            log.info("job %s (%s): %s", status.job_id, status.folder, status.note)
        return touched

    def _enqueue(self, job: _Job) -> None:
        # Called with the lock held.
        self._jobs[job.record.job_id] = job
        self._queues.setdefault(job.record.collection, deque()).append(job)
        self._save(job.record)
        self._touch()
        if job.record.collection not in self._workers:
            worker = threading.Thread(
                target=self._work, args=(job.record.collection,), name=f"clipsearch-jobs-{job.record.collection}"
            )
            worker.daemon = True
            self._workers[job.record.collection] = worker
            worker.start()

    # --- running -------------------------------------------------------------------------------------------------

    def _work(self, collection: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(collection)
                if not queue:
                    self._workers.pop(collection, None)
                    return
                job = queue.popleft()
            self._execute(job)

    def _execute(self, job: _Job) -> None:
        while True:
            self._wait_for_writer(job)
            if job.cancel.is_set():
                self._finish(job, "cancelled", note="cancelled before it started")
                return
            try:
                self._run(job)
                return
            except CollectionBusy:  # another process took the write lock between our look and the run
                self._update(job, state="queued")

    def _wait_for_writer(self, job: _Job) -> None:
        from server.store.collection import is_being_written

        folder = self.index_dir / job.record.collection
        while not job.cancel.is_set() and is_being_written(folder):
            self._update(job, note="waiting for another indexing run on this collection to finish")
            job.cancel.wait(BUSY_POLL_SECONDS)

    def _run(self, job: _Job) -> None:
        record = job.record
        job.started_at, job.text_started_at = time.monotonic(), None
        self._update(job, state="running", started=_now(), note=None, owner=_OWNER)
        try:
            report = self._service().index_folder(
                Path(record.folder),
                record.collection,
                record.recursive,
                record.remove_missing,
                job.guard,
                lambda progress: self._progress(job, progress),
                record.index_type,
                job.cancel,
                record.model,
                record.precision,
                record.ocr,
            )
        except IndexingCancelled as exc:
            self._finish(job, "cancelled", report=exc.report, note="stopped on request; what it committed stays")
        except CollectionBusy:
            raise
        except ClipSearchError as exc:
            self._finish(job, "failed", error=str(exc))
        except Exception as exc:  # a bug must end the job visibly, not kill the worker silently
            log.exception("indexing job %s failed", record.job_id)
            self._finish(job, "failed", error=f"unexpected error: {type(exc).__name__}: {exc}")
        else:
            self._finish(job, "done", report=report)

    def _progress(self, job: _Job, progress: "IndexProgress") -> None:
        now = time.monotonic()
        if progress.stage == "text":
            if job.text_started_at is None:
                job.text_started_at = now
            values = dict(job.record.progress)  # the embedding stage's figures stay as they ended
            rate = progress.text_done / max(now - job.text_started_at, 1e-6)
            left = progress.text_to_read - progress.text_done
            values.update(
                stage="text",
                text_to_read=progress.text_to_read,
                text_done=progress.text_done,
                text_images_per_second=round(rate, 2),
                text_eta_seconds=round(left / rate, 1) if rate > 0 and progress.text_done else None,
                eta_seconds=None,
            )
            finished = progress.text_done == progress.text_to_read
        else:
            rate = progress.done / max(now - job.started_at, 1e-6)
            left = progress.to_process - progress.done
            values = {
                "found": progress.found,
                "to_process": progress.to_process,
                "done": progress.done,
                "embedded": progress.embedded,
                "failed": progress.failed,
                "images_per_second": round(rate, 2),
                "eta_seconds": round(left / rate, 1) if rate > 0 and progress.done else None,
            }
            finished = progress.done == progress.to_process
        save = now - job.saved_at >= SAVE_INTERVAL_SECONDS or finished
        self._update(job, save=save, progress=values)

    def _update(self, job: _Job, save: bool = True, **changes: Any) -> None:
        with self._lock:
            # The record on disk changes first: whoever sees a state in memory finds it on disk too.
            if save:
                self._save(replace(job.record, **changes))
                job.saved_at = time.monotonic()
            for key, value in changes.items():
                setattr(job.record, key, value)
            self._touch()

    def _finish(self, job: _Job, state: str, report: IndexReport | None = None, **changes: Any) -> None:
        if report is not None:
            progress = dict(job.record.progress)
            progress.update(done=progress.get("to_process", 0) if state == "done" else progress.get("done", 0))
            progress.update(embedded=report.embedded, failed=report.failed, eta_seconds=None, text_eta_seconds=None)
            if report.text_to_read:
                progress.update(text_to_read=report.text_to_read)
                progress.update(text_done=report.text_read + report.text_first_pass_only)
            changes.update(report=report.model_dump(mode="json"), progress=progress)
        self._update(job, state=state, finished=_now(), **changes)

    # --- reading -------------------------------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        return self._find(job_id).status()

    def recent(self, limit: int = LIST_LIMIT) -> JobList:
        """This index directory's jobs, newest first."""
        with self._lock:
            records = self._records()
        records.sort(key=lambda r: (r.created, r.job_id), reverse=True)
        return JobList(jobs=[self._as_seen(r).status() for r in records[:limit]])

    def active(self, collection: str) -> JobStatus | None:
        """The job running (or else queued) on a collection in this process, if any."""
        with self._lock:
            jobs = [j.record for j in self._jobs.values() if j.record.collection == collection]
        for state in ACTIVE[::-1]:
            for record in jobs:
                if record.state == state:
                    return record.status()
        return None

    def wait(self, job_id: str | None, seconds: float) -> None:
        """Block until a job of this process changes (or, for another server's job, its record does), or until
        `seconds` pass."""
        deadline = time.monotonic() + seconds
        if job_id is not None:
            start = self._find(job_id)
            if start.state not in ACTIVE:
                return
            if job_id not in self._jobs:  # another server's: its record is all there is to watch
                while time.monotonic() < deadline:
                    time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))
                    if asdict(self._find(job_id)) != asdict(start):
                        return
                return
        with self._changed:
            version = self._version
            self._changed.wait_for(lambda: self._version != version, timeout=max(deadline - time.monotonic(), 0))

    # --- cancelling ----------------------------------------------------------------------------------------------

    def cancel(self, job_id: str, wait_seconds: float = 10.0) -> JobStatus:
        """Stop a job at its next batch (a queued one at once); waits up to `wait_seconds` for it to stop."""
        record = self._find(job_id)
        if record.state not in ACTIVE:
            return record.status()
        job = self._jobs.get(job_id)
        if job is None:
            raise InvalidArgument(
                f"Job {job_id} is run by another clipsearch server on this index directory; cancel it there."
            )
        job.cancel.set()
        with self._lock:
            queue = self._queues.get(record.collection)
            queued = queue is not None and job in queue
            if queued:
                queue.remove(job)  # type: ignore[union-attr]
        if queued:
            self._finish(job, "cancelled", note="cancelled before it started")
        with self._changed:
            self._changed.wait_for(lambda: job.record.state not in ACTIVE, timeout=wait_seconds)
        return job.record.status()

    # --- records on disk -----------------------------------------------------------------------------------------

    def _find(self, job_id: str) -> JobRecord:
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"Invalid job id {job_id!r}. {self._known_ids()}")
        if job_id in self._jobs:
            return self._jobs[job_id].record
        for path in self.index_dir.glob(f"*/jobs/{job_id}.json"):
            record = self._read(path)
            if record is not None:
                return self._as_seen(record)
        raise JobNotFound(f"No job {job_id}. {self._known_ids()}")

    def _known_ids(self) -> str:
        ids = [status.job_id for status in self.recent(5).jobs]
        return f"Recent jobs: {', '.join(ids)}." if ids else "There are no indexing jobs yet."

    def _records(self, collection: str | None = None) -> list[JobRecord]:
        """Every record on disk (or of one collection), with this process's in-memory state where it has one."""
        pattern = f"{collection}/jobs/*.json" if collection else "*/jobs/*.json"
        records = {}
        for path in self.index_dir.glob(pattern):
            record = self._read(path)
            if record is not None:
                records[record.job_id] = record
        for job_id, job in self._jobs.items():
            if collection is None or job.record.collection == collection:
                records[job_id] = job.record
        return list(records.values())

    def _as_seen(self, record: JobRecord) -> JobRecord:
        """A record from disk as it stands: one left active by a process that is gone was interrupted."""
        if record.state in ACTIVE and record.job_id not in self._jobs and not self._run_elsewhere(record):
            record.state, record.note = "interrupted", "its server stopped mid-run"
        return record

    @staticmethod
    def _read(path: Path) -> JobRecord | None:
        try:
            return JobRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable job record %s: %s", path, exc)
            return None

    def _run_elsewhere(self, record: JobRecord) -> bool:
        """Whether a live process (another server, or another manager in this one) owns this record, so it is not
        ours to resume or run."""
        return record.job_id not in self._jobs and bool(record.owner) and _owner_alive(record.owner)

    def _save(self, record: JobRecord) -> None:
        folder = self.index_dir / record.collection / "jobs"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{record.job_id}.json"
        write_atomically(target, json.dumps(asdict(record), indent=1).encode("utf-8"))
        if record.state not in ACTIVE:
            self._prune(folder)

    @staticmethod
    def _prune(folder: Path) -> None:
        finished = sorted(folder.glob("j-*.json"), key=lambda p: p.name)
        for old in finished[:-KEEP_FINISHED]:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(old.read_text(encoding="utf-8")).get("state") not in ACTIVE:
                    old.unlink()

    def _touch(self) -> None:
        # Called with the lock held: wakes everyone waiting for a change.
        self._version += 1
        self._changed.notify_all()
