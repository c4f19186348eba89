"""Duplicate groups computed once per collection commit, each computation in a thread of its own that callers wait on
for as long as they can: a host that cuts a tool call at about 60 s gets a running state with the computation's id
instead, and the next call (the same question again, or another page of it) waits on the same computation, or,
once it is done, answers from it at once for as long as the collection stays unchanged.

Each computation is also a job, as indexing's are: `status`, `recent` and `wait` follow it by its id (`d-...`),
`cancel` stops it. Results live in memory only: a server that stops loses them, and the next call computes again; a
computation that failed or was cancelled is forgotten at once (the next call starts a new one), never served as a
partial answer; only its state stays listed."""

import logging
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from server.errors import DuplicatesCancelled, JobNotFound, first_line
from server.library.duplicates import DuplicateGroups, DuplicateQuery, Progress, duplicate_groups
from server.results import DuplicatesJob, DuplicatesProgress, DuplicatesState
from server.store.collection import Collection

log = logging.getLogger(__name__)

KEEP = 4  # computations remembered (running or done), least recently asked for dropped
LISTED = 20  # computations whose state `recent` lists, as many as indexing's job list
PREFIX = "d-"
_JOB_ID = re.compile(r"d-[0-9a-f]{10}")


@dataclass(frozen=True)
class Running:
    """A computation still under way: its id and how far it is."""

    job_id: str
    compared: int
    total: int


Key = tuple[str, int, Path | None, float, int, bool]


@dataclass
class _Task:
    job_id: str
    collection: str
    key: Key
    created: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    state: DuplicatesState = "running"
    ended: str | None = None
    note: str | None = None
    compared: int = 0
    total: int = 0
    result: DuplicateGroups | None = None
    error: BaseException | None = None


class DuplicateTasks:
    def __init__(self, keep: int = KEEP, listed: int = LISTED) -> None:
        self.keep = keep
        self.listed = listed
        self._tasks: OrderedDict[Key, _Task] = OrderedDict()  # those that can answer: running or done
        # Every computation by id, oldest first, for its status; a done one no longer in `_tasks` is kept as its
        # status only, so its groups are let go.
        self._seen: OrderedDict[str, _Task | DuplicatesJob] = OrderedDict()
        self._lock = threading.Lock()

    def groups(
        self,
        collection: Collection,
        query: DuplicateQuery,
        wait_seconds: float | None = None,
        progress: Progress | None = None,
    ) -> DuplicateGroups | Running:
        """The groups of the query's scope as the collection stands now: remembered, or computed (told to
        `progress`, if this call starts the computation), waiting at most `wait_seconds` (None: until done)."""
        query.check()
        collection.refresh_if_stale()
        key: Key = (
            str(collection.folder),
            collection.generation,
            query.folder,
            query.threshold,
            query.max_bits,
            query.exact_only,
        )
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                task = self._start(collection, query, key, progress)
            self._tasks.move_to_end(key)
        if not task.finished.wait(wait_seconds):
            return Running(task.job_id, task.compared, task.total)
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    @staticmethod
    def owns(job_id: str) -> bool:
        """Whether `job_id` names a duplicates computation (rather than an indexing job)."""
        return job_id.startswith(PREFIX)

    def status(self, job_id: str) -> DuplicatesJob:
        """A computation's state and progress; `JobNotFound` for an id this server has not issued (or forgot)."""
        with self._lock:
            return self._status(self._find(job_id))

    def recent(self) -> list[DuplicatesJob]:
        """The computations this server remembers, newest first."""
        with self._lock:
            return [self._status(seen) for seen in reversed(self._seen.values())]

    def wait(self, job_id: str, seconds: float) -> DuplicatesJob:
        """Block until the computation ends, or `seconds` pass; then its status."""
        with self._lock:
            seen = self._find(job_id)
        if isinstance(seen, _Task):
            seen.finished.wait(seconds)
        return self.status(job_id)

    def cancel(self, job_id: str) -> DuplicatesJob:
        """Stop a running computation at its next batch, and forget it: the next call for its groups computes them
        anew. One that already ended is left as it is."""
        with self._lock:
            seen = self._find(job_id)
            if isinstance(seen, _Task) and seen.state == "running":
                self._stop(seen, "cancelled on request")
            return self._status(seen)

    def _find(self, job_id: str) -> "_Task | DuplicatesJob":
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(f"Invalid job id {job_id!r}. {self._known_ids()}")
        seen = self._seen.get(job_id)
        if seen is None:
            raise JobNotFound(f"No duplicates computation {job_id}. {self._known_ids()}")
        return seen

    def _known_ids(self) -> str:
        ids = list(reversed(self._seen))[:5]
        if ids:
            return f"Recent duplicates computations: {', '.join(ids)}."
        return "This server has run no duplicates computation yet (they are forgotten when it stops)."

    def _stop(self, task: _Task, why: str) -> None:
        """Cancel a running task (under the lock): it stops at its next batch and no longer answers."""
        task.cancel.set()
        task.state, task.note = "cancelled", why
        if self._tasks.get(task.key) is task:
            del self._tasks[task.key]

    def _start(self, collection: Collection, query: DuplicateQuery, key: Key, progress: Progress | None) -> _Task:
        task = _Task(f"{PREFIX}{secrets.token_hex(5)}", collection.name, key, _now())
        for other in list(self._tasks.values()):  # an older commit's answer to the same question is not wanted
            if other.key[0] == key[0] and other.key[2:] == key[2:] and other.state == "running":
                self._stop(other, "the collection changed meanwhile; a newer computation replaced it")
        self._tasks[key] = task
        while len(self._tasks) > self.keep:
            _, dropped = self._tasks.popitem(last=False)
            if dropped.state == "running":
                self._stop(dropped, f"more than {self.keep} other questions were asked meanwhile")
            else:  # its groups are let go; its status stays listed
                dropped.note = "its groups are no longer kept: find_duplicates computes them again"
                self._seen[dropped.job_id] = self._status(dropped)
        self._seen[task.job_id] = task
        for old in [job_id for job_id, seen in self._seen.items() if not _answers(seen, self._tasks)]:
            if len(self._seen) <= self.listed:
                break
            del self._seen[old]

        def told(compared: int, total: int) -> None:
            task.compared, task.total = compared, total
            if progress is not None:
                progress(compared, total)

        def run() -> None:
            try:
                result = duplicate_groups(collection, query, told, task.cancel)
            except BaseException as exc:
                if not isinstance(exc, DuplicatesCancelled):
                    log.error("duplicates computation %s failed", task.job_id, exc_info=exc)
                # handed to whoever waits, without the frames (and the arrays they hold): it stays listed
                self._ended(task, None, exc.with_traceback(None))
            else:
                self._ended(task, result, None)

        threading.Thread(target=run, name=f"clipsearch-duplicates-{task.job_id}", daemon=True).start()
        return task

    def _ended(self, task: _Task, result: DuplicateGroups | None, error: BaseException | None) -> None:
        with self._lock:
            task.ended = _now()
            if task.state == "cancelled" or isinstance(error, DuplicatesCancelled):
                # stopped: even a result that was finished meanwhile is not served
                task.error = error if isinstance(error, DuplicatesCancelled) else DuplicatesCancelled()
                task.state = "cancelled"
            elif error is not None:
                task.error, task.state = error, "failed"
            else:
                task.result, task.state = result, "done"
            if task.state != "done" and self._tasks.get(task.key) is task:
                del self._tasks[task.key]
        task.finished.set()

    def _status(self, seen: "_Task | DuplicatesJob") -> DuplicatesJob:
        if isinstance(seen, DuplicatesJob):
            return seen
        _, generation, folder, threshold, max_bits, exact_only = seen.key
        return DuplicatesJob(
            job_id=seen.job_id,
            collection=seen.collection,
            generation=generation,
            folder=str(folder) if folder is not None else None,
            threshold=threshold,
            max_bits=max_bits,
            exact_only=exact_only,
            state=seen.state,
            created=seen.created,
            finished=seen.ended,
            progress=DuplicatesProgress(compared=seen.compared, total=seen.total),
            groups_total=len(seen.result.groups) if seen.result is not None else None,
            error=first_line(seen.error) if seen.state == "failed" and seen.error is not None else None,
            note=seen.note,
            next_step=_next_step(seen),
        )


def _answers(seen: "_Task | DuplicatesJob", tasks: "OrderedDict[Key, _Task]") -> bool:
    return isinstance(seen, _Task) and tasks.get(seen.key) is seen


def _next_step(task: _Task) -> str:
    if task.state == "running":
        return (
            f"Call find_duplicates again with the same arguments to wait for the groups, index_status with "
            f"job_id='{task.job_id}' to follow it, or cancel_indexing to stop it."
        )
    if task.state == "done":
        return "Call find_duplicates again with the same arguments for the groups (page them with offset)."
    return "Call find_duplicates again to compute the groups anew."


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
