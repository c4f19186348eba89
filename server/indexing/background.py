"""Indexing in the background, wired once for every adapter: the index directory's jobs and the watcher that feeds
them, and what a starting server does with both (resume interrupted jobs, watch the folders already indexed)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.indexing.jobs import ACTIVE, IndexingService, JobManager
from server.indexing.watch import FolderWatcher
from server.paths import PathGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Background:
    jobs: JobManager
    watcher: FolderWatcher

    @classmethod
    def over(cls, index_dir: Path, service: Callable[[], IndexingService]) -> "Background":
        """Jobs over `index_dir` run by the service `service()` makes when work starts (so this loads nothing), and
        a watcher that never watches the index directory itself."""
        jobs = JobManager(index_dir, service)
        return cls(jobs, FolderWatcher(jobs, exclude=(index_dir,)))

    def start_up(self, guard: PathGuard, resume: bool = True, watch: bool = False) -> None:
        """A starting server: jobs a stopped server left running go on (under `guard`'s roots only); with `watch`,
        every folder indexed into any collection under those roots is watched, and indexed once now for what
        changed while no server ran."""
        self.jobs.recover(guard, resume)
        if not watch:
            return
        if not guard.roots:
            log.warning("--watch needs --root (or CLIPSEARCH_ROOTS): no folder is watched")
            return
        # numpy and faiss: not at import
        from server.store.catalog import recorded_folders
        from server.store.collection_store import CollectionStore

        index_dir = self.jobs.index_dir
        for name in CollectionStore(index_dir).names():
            for folder in recorded_folders(index_dir / name):
                if folder.is_dir() and guard.allows(folder):
                    self.watcher.watch(folder, name, guard=guard)
                    self.jobs.start(folder, name, guard=guard, again=True)

    def close(self) -> None:
        """Stop watching and cancel what is queued or running (committed batches stay)."""
        self.watcher.close()
        for job in self.jobs.recent().jobs:
            if job.state in ACTIVE:
                self.jobs.cancel(job.job_id)
