"""Folders kept in sync while the server runs: file-system events (watchdog: inotify, FSEvents,
ReadDirectoryChangesW) mark a watched folder changed; once its changes settle, one indexing job brings the collection
in line, through the same incremental indexer as any other run (a moved file keeps its vector).

Events are not applied one by one: copying 1,000 photos in is one job, started when the folder has been quiet for
`settle_seconds` (or after `max_delay_seconds` of continuous change). Only a changed flag and a time are kept per
watched folder, so memory does not grow with the number of events. A watched folder that disappears or cannot be
listed stops being watched and says so; nothing is removed from the collection on its account.
"""

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.errors import ClipSearchError
from server.indexing.jobs import JobManager
from server.paths import UNCONFINED, PathGuard
from server.results import WatchedFolder

log = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0
MAX_DELAY_SECONDS = 30.0
TICK_SECONDS = 0.25


@dataclass
class _Watch:
    folder: Path
    collection: str
    recursive: bool
    remove_missing: bool
    guard: PathGuard
    since: str
    handle: Any = None  # the observer's watch
    changed_at: float | None = None  # monotonic time of the last event not yet indexed
    first_change_at: float | None = None
    state: str = "watching"
    note: str | None = None
    last_job: str | None = None


class FolderWatcher:
    """Watches folders for changes and starts indexing jobs for them through `jobs`; one observer thread for all."""

    def __init__(
        self,
        jobs: JobManager,
        settle_seconds: float = SETTLE_SECONDS,
        max_delay_seconds: float = MAX_DELAY_SECONDS,
        exclude: tuple[Path, ...] = (),
    ) -> None:
        self.jobs = jobs
        self.settle_seconds = settle_seconds
        self.max_delay_seconds = max_delay_seconds
        self._exclude = tuple(Path(os.path.realpath(p)) for p in exclude)
        self._lock = threading.Lock()
        self._watches: dict[tuple[str, Path], _Watch] = {}
        self._observer: Any = None
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()

    def watch(
        self,
        folder: Path,
        collection: str,
        recursive: bool = True,
        remove_missing: bool = True,
        guard: PathGuard = UNCONFINED,
    ) -> WatchedFolder:
        """Start watching `folder` (already checked by the caller) for `collection`; watching twice is one watch."""
        folder = Path(os.path.realpath(folder))
        key = (collection, folder)
        with self._lock:
            existing = self._watches.get(key)
            if existing is not None and existing.state == "watching":
                return _info(existing)
            self._ensure_running()
            entry = _Watch(
                folder, collection, recursive, remove_missing, guard, datetime.now(UTC).isoformat(timespec="seconds")
            )
            entry.handle = self._observer.schedule(_Handler(self, entry), str(folder), recursive=recursive)
            self._watches[key] = entry
        log.info("watching %s for collection %s", folder, collection)
        return _info(entry)

    def unwatch(self, folder: Path, collection: str) -> bool:
        """Stop watching; returns whether it was watched."""
        key = (collection, Path(os.path.realpath(folder)))
        with self._lock:
            entry = self._watches.pop(key, None)
            if entry is None:
                return False
            self._unschedule(entry)
        log.info("stopped watching %s for collection %s", entry.folder, collection)
        return True

    def unwatch_job(self, job_id: str) -> None:
        """Cancelling a watched folder's job also stops its watch."""
        with self._lock:
            keys = [key for key, entry in self._watches.items() if entry.last_job == job_id]
        for collection, folder in keys:
            self.unwatch(folder, collection)

    def watched(self) -> list[WatchedFolder]:
        with self._lock:
            return [_info(entry) for entry in self._watches.values()]

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    # --- inside ------------------------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        # Called with the lock held.
        if self._observer is None:
            from watchdog.observers import Observer

            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="clipsearch-watch", daemon=True)
            self._ticker.start()

    def _unschedule(self, entry: _Watch) -> None:
        if entry.handle is not None and self._observer is not None:
            # The observer may have dropped it already (e.g. its folder vanished).
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._observer.unschedule(entry.handle)
            entry.handle = None

    def _changed(self, entry: _Watch, path: str) -> None:
        real = Path(os.path.realpath(path))
        parts = real.relative_to(entry.folder).parts if real.is_relative_to(entry.folder) else ()
        if any(part.startswith(".") for part in parts) or any(real.is_relative_to(e) for e in self._exclude):
            return  # hidden files and the index directory itself are never indexed
        now = time.monotonic()
        with self._lock:
            entry.changed_at = now
            if entry.first_change_at is None:
                entry.first_change_at = now

    def _tick(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            now = time.monotonic()
            with self._lock:
                entries = list(self._watches.values())
            for entry in entries:
                if entry.state != "watching":
                    continue
                if not _listable(entry.folder):
                    self._stop(entry, "the folder was deleted, moved or made unreadable; nothing was removed")
                    continue
                with self._lock:
                    changed, first = entry.changed_at, entry.first_change_at
                if changed is None or first is None:
                    continue
                if now - changed >= self.settle_seconds or now - first >= self.max_delay_seconds:
                    self._index(entry)

    def _index(self, entry: _Watch) -> None:
        with self._lock:
            entry.changed_at = entry.first_change_at = None
        try:
            status = self.jobs.start(
                entry.folder, entry.collection, entry.recursive, entry.remove_missing, guard=entry.guard, again=True
            )
        except ClipSearchError as exc:
            self._stop(entry, f"could not index the changes: {exc}")
            return
        entry.last_job = status.job_id

    def _stop(self, entry: _Watch, note: str) -> None:
        log.warning("stopped watching %s: %s", entry.folder, note)
        with self._lock:
            entry.state, entry.note = "stopped", note
            self._unschedule(entry)


def _listable(folder: Path) -> bool:
    try:
        with os.scandir(folder):
            return True
    except OSError:
        return False


def _info(entry: _Watch) -> WatchedFolder:
    return WatchedFolder(
        folder=str(entry.folder),
        collection=entry.collection,
        state=entry.state,  # type: ignore[arg-type]
        since=entry.since,
        note=entry.note,
        last_job=entry.last_job,
        pending=entry.changed_at is not None,
    )


class _Handler:
    """watchdog's callback for one watch: every event just marks the folder changed."""

    def __init__(self, watcher: FolderWatcher, entry: _Watch) -> None:
        self._watcher = watcher
        self._entry = entry

    def dispatch(self, event: Any) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (our own indexer's among them) change nothing
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self._watcher._changed(self._entry, os.fsdecode(path))
