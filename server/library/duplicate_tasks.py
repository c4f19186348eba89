"""Duplicate groups computed once per collection commit, each computation in a thread of its own that callers wait on
for as long as they can: a host that cuts a tool call at about 60 s gets a running state with the computation's id
instead, and the next call (the same question again, or another page of it) waits on the same computation, or,
once it is done, answers from it at once for as long as the collection stays unchanged.

Results live in memory only: a server that stops loses them, and the next call computes again; a computation that
failed or was cancelled is forgotten, never served as a partial answer."""

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from server.library.duplicates import DuplicateGroups, DuplicateQuery, Progress, duplicate_groups
from server.store.collection import Collection

KEEP = 4  # computations remembered (running or done), least recently asked for dropped


@dataclass(frozen=True)
class Running:
    """A computation still under way: its id and how far it is."""

    job_id: str
    compared: int
    total: int


@dataclass
class _Task:
    job_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    compared: int = 0
    total: int = 0
    result: DuplicateGroups | None = None
    error: BaseException | None = None


Key = tuple[str, int, Path | None, float, int, bool]


class DuplicateTasks:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._tasks: OrderedDict[Key, _Task] = OrderedDict()
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

    def cancel(self, job_id: str) -> bool:
        """Stop a running computation (it is forgotten); False when no computation has that id."""
        with self._lock:
            for task in self._tasks.values():
                if task.job_id == job_id and not task.finished.is_set():
                    task.cancel.set()
                    return True
        return False

    def _start(self, collection: Collection, query: DuplicateQuery, key: Key, progress: Progress | None) -> _Task:
        task = _Task(job_id=f"d-{secrets.token_hex(5)}")
        for other_key, other in self._tasks.items():  # an older commit's answer to the same question is not wanted
            if other_key[0] == key[0] and other_key[2:] == key[2:] and not other.finished.is_set():
                other.cancel.set()
        self._tasks[key] = task
        while len(self._tasks) > self.keep:
            _, dropped = self._tasks.popitem(last=False)
            dropped.cancel.set()

        def told(compared: int, total: int) -> None:
            task.compared, task.total = compared, total
            if progress is not None:
                progress(compared, total)

        def run() -> None:
            try:
                task.result = duplicate_groups(collection, query, told, task.cancel)
            except BaseException as exc:  # handed to whoever waits; the task is forgotten
                task.error = exc
                with self._lock:
                    if self._tasks.get(key) is task:
                        del self._tasks[key]
            finally:
                task.finished.set()

        threading.Thread(target=run, name=f"clipsearch-duplicates-{task.job_id}", daemon=True).start()
        return task
