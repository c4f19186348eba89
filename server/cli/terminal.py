"""What a person at a terminal sees while a command works: a model download, indexing progress, and Ctrl-C."""

import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from server.models.files import DownloadPlan, DownloadState, megabytes

if TYPE_CHECKING:
    from server.indexing.indexer import IndexProgress


class DownloadDisplay:
    """A first run's model download on stderr: one line saying what and how big, then a bar on a terminal or a
    line per tenth elsewhere (logs, pipes)."""

    def __init__(self) -> None:
        self.terminal = sys.stderr.isatty()
        self._bar: Any = None
        self._tenths = 0

    def started(self, plan: DownloadPlan) -> None:
        print(f"clipsearch: {plan.describe()}.", file=sys.stderr, flush=True)
        self._tenths = 0
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="model"
            )

    def advanced(self, state: DownloadState) -> None:
        if self._bar is not None:
            self._bar.update(state.done_bytes - self._bar.n)
            return
        tenths = state.done_bytes * 10 // max(state.total_bytes, 1)
        if tenths > self._tenths:
            self._tenths = tenths
            print(f"clipsearch: {state.describe()}", file=sys.stderr, flush=True)

    def ended(self, state: DownloadState, ok: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if ok:
            print(f"clipsearch: model downloaded ({megabytes(state.total_bytes)} MB).", file=sys.stderr, flush=True)


class ProgressBar:
    """tqdm on stderr, fed by the indexer's progress callback (or any count of images)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._stage = "embedding"

    def __enter__(self) -> "ProgressBar":
        return self

    def __call__(self, progress: "IndexProgress") -> None:
        if progress.stage != self._stage:  # the text stage: a bar of its own
            self.close()
            self._stage = progress.stage
        if progress.stage == "text":
            self.count(progress.text_done, progress.text_to_read, desc="reading text")
        else:
            self.count(progress.done, progress.to_process)

    def count(self, done: int, total: int, desc: str = "indexing") -> None:
        """Show `done` of `total` images."""
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", file=sys.stderr, desc=desc)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()


class StopOnInterrupt(threading.Event):
    """Ctrl-C during indexing: the first asks the run to stop after its current batch (and commit it); a second
    interrupts at once (the uncommitted batch is lost, the collection stays consistent)."""

    def __enter__(self) -> "StopOnInterrupt":
        self._previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.is_set():
            raise KeyboardInterrupt
        print("\nclipsearch: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)
        self.set()

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
