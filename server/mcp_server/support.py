"""What the MCP tool families share: running core calls off the event loop, results, progress, allowed roots."""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar
from urllib.parse import unquote, urlparse

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, ListRoots, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ListRootsResult, TextContent
from pydantic import BaseModel, Field

from server.errors import ClipSearchError
from server.models.files import DownloadState, DownloadTracker
from server.paths import PathGuard
from server.results import JobStatus

if TYPE_CHECKING:
    from server.indexing.background import Background
    from server.service import ClipSearch

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_INTERVAL_SECONDS = 0.25
READ_ONLY = {"read_only_hint": True, "open_world_hint": False}

CollectionName = Annotated[
    str, Field(description="Collection to use; collections are independent indexes (letters, digits, . _ -)")
]


class RootAccess:
    """Which folders tools may read: the configured roots, else those the client declares (asked per call), unless
    `client_roots` is off (over HTTP, where a client's roots name its own disk, not the server's)."""

    def __init__(self, configured: Sequence[Path], client_roots: bool = True) -> None:
        self.configured = tuple(configured)
        self.client_roots = client_roots

    def ask(self, ctx: Context) -> ListRoots | ListRootsResult:
        # Configured roots win; otherwise ask the client, if it declared that it can answer.
        capabilities = ctx.client_capabilities
        if self.configured or not self.client_roots or capabilities is None or capabilities.roots is None:
            return ListRootsResult(roots=[])
        return ListRoots()

    def ask_for_thumbnails(
        self,
        ctx: Context,
        thumbnails: int = 0,
        folder: str | None = None,
        and_images: list[str] | None = None,
        not_images: list[str] | None = None,
    ) -> ListRoots | ListRootsResult:
        """Roots for a text search: needed only to show thumbnails, check a folder filter or read image terms."""
        needed = thumbnails or folder or and_images or not_images
        return self.ask(ctx) if needed else ListRootsResult(roots=[])

    def ask_for_thumbnails_or_folder(
        self, ctx: Context, thumbnails: int = 0, folder: str | None = None
    ) -> ListRoots | ListRootsResult:
        """Roots for a search of the text in photos: needed only to show thumbnails or check a folder filter."""
        return self.ask_for_thumbnails(ctx, thumbnails, folder)

    def guard(self, client_roots: ListRootsResult) -> PathGuard:
        return PathGuard(self.configured or file_roots(client_roots))


@dataclass(frozen=True)
class ToolContext:
    """What every tool family is registered with: the service (made on first use), the folders it may read, the
    model download to report, and the background indexing (jobs and watcher)."""

    get: "Callable[[], ClipSearch]"
    access: RootAccess
    downloads: DownloadTracker
    background: "Background"

    def client_roots(self) -> type:
        """The parameter type that asks the client for its roots when none are configured."""
        return Annotated[ListRootsResult, Resolve(self.access.ask)]  # type: ignore[return-value]

    async def run(self, fn: Callable[[], T], ctx: Context) -> T:
        """`run_core` reporting a model download the call waits for as its progress."""
        return await run_core(fn, CallProgress(ctx, self.downloads))


def lazy(factory: "Callable[[], ClipSearch]") -> "Callable[[], ClipSearch]":
    """The factory's result, made once, by whichever thread asks first."""
    made: list[ClipSearch] = []
    lock = threading.Lock()

    def get() -> "ClipSearch":
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    return get


async def run_core(fn: Callable[[], T], progress: "CallProgress | None" = None) -> T:
    """Run blocking core work in a worker thread; domain errors become tool errors the client can read. With
    `progress`, a model download that the work waits for is reported meanwhile."""
    results: list[T] = []
    failures: list[Exception] = []
    if progress is None:
        try:
            results.append(await anyio.to_thread.run_sync(fn))
        except Exception as exc:
            failures.append(exc)
    else:
        async with anyio.create_task_group() as group:
            group.start_soon(progress.watch_downloads)
            try:
                results.append(await anyio.to_thread.run_sync(fn))
            except Exception as exc:  # raised below, outside the group, so it is not wrapped in an ExceptionGroup
                failures.append(exc)
            finally:
                group.cancel_scope.cancel()
    if failures:
        if isinstance(failures[0], ClipSearchError):
            raise ToolError(str(failures[0])) from failures[0]
        raise failures[0]
    return results[0]


def tool_result(model: BaseModel, text: str, extra: Sequence[ContentBlock] = ()) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text), *extra], structured_content=model.model_dump(mode="json")
    )


class CallProgress:
    """One tool call's progress notifications: a model download it waits for (in MB), then its own work (images).

    Progress must only grow within a call, so the work's counts are reported after the download's megabytes."""

    def __init__(self, ctx: Context, downloads: DownloadTracker) -> None:
        self._ctx = ctx
        self._downloads = downloads
        self._offset = 0.0
        self._last_update: tuple[float, float, str] | None = None

    async def watch_downloads(self) -> None:
        seen: DownloadState | None = None
        while True:
            state = self._downloads.state()
            if state is not None and state != seen:
                seen = state
                self._offset = state.total_bytes / 1e6
                await self._notify(state.done_bytes / 1e6, self._offset, state.describe())
            await anyio.sleep(PROGRESS_INTERVAL_SECONDS)

    async def job(self, status: JobStatus) -> None:
        """Report a job's progress (or the model download it waits on), when it changed since the last report."""
        download = self._downloads.state()
        if download is not None:
            self._offset = download.total_bytes / 1e6
            update = (download.done_bytes / 1e6, self._offset, download.describe())
        else:
            p = status.progress
            message = f"{p.done}/{p.to_process} processed ({p.found} images found)" if p.found else status.state
            update = (self._offset + p.done, self._offset + max(p.to_process, p.done), message)
        if update != self._last_update:
            self._last_update = update
            await self._notify(*update)

    async def _notify(self, done: float, total: float, message: str) -> None:
        try:
            await self._ctx.report_progress(done, total, message)
        except Exception:  # progress is best effort; never fail a call over it
            log.debug("progress notification failed", exc_info=True)


def file_roots(result: ListRootsResult) -> list[Path]:
    """The local folders among the client's declared roots (file:// URIs)."""
    paths = []
    for root in result.roots:
        parsed = urlparse(str(root.uri))
        if parsed.scheme == "file":
            paths.append(Path(unquote(parsed.path)))
    return paths
