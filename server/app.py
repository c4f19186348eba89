"""The MCP server: thin tools over the ClipSearch core, run in worker threads so the event loop never blocks."""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar
from urllib.parse import unquote, urlparse

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image, ListRoots, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ListRootsResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from server.defaults import DEFAULT_COLLECTION, DEFAULT_KS, DEFAULT_TEMPLATE, MAX_K, MAX_QUERY_CHARS
from server.errors import ClipSearchError
from server.model_files import DownloadState, DownloadTracker
from server.models import CollectionList, EvaluationReport, IndexReport, SearchResponse
from server.paths import PathGuard

if TYPE_CHECKING:
    from server.indexer import IndexProgress
    from server.service import ClipSearch

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_THUMBNAILS = 10
PROGRESS_INTERVAL_SECONDS = 0.25

CollectionName = Annotated[
    str, Field(description="Collection to use; collections are independent indexes (letters, digits, . _ -)")
]
TopK = Annotated[int, Field(ge=1, le=MAX_K, description=f"Number of results, 1-{MAX_K}")]
Thumbnails = Annotated[
    int, Field(ge=0, le=MAX_THUMBNAILS, description="Also return the top N hits as small JPEG images you can see")
]

INSTRUCTIONS = (
    "Search the user's own photos by description or by example. Index a folder once with index_folder "
    "(re-running only processes new or changed files), then use search_images_by_text or search_similar_images. "
    "Paths are absolute and must lie inside the folders the user allowed."
)


def build_server(
    service: "ClipSearch | Callable[[], ClipSearch]",
    roots: Sequence[Path] = (),
    downloads: DownloadTracker | None = None,
) -> MCPServer:
    """An MCP server over `service`, or over the service a factory makes on first use (so the handshake never
    waits for numpy, PIL or torch). File access is confined to `roots`, else to the roots the client declares.
    A tool call waiting for the model's first download reports its progress from `downloads` (default: the
    service's own tracker)."""
    server = MCPServer("clipsearch", instructions=INSTRUCTIONS)
    get = lazy(service) if callable(service) else (lambda: service)
    tracker = downloads or (service.downloads if not callable(service) else DownloadTracker())
    configured = tuple(roots)

    async def run(fn: Callable[[], T], ctx: Context) -> T:
        return await _run(fn, _CallProgress(ctx, tracker))

    no_roots = ListRootsResult(roots=[])

    def ask_roots(ctx: Context) -> ListRoots | ListRootsResult:
        # Configured roots win; otherwise ask the client, if it declared that it can answer.
        capabilities = ctx.client_capabilities
        if configured or capabilities is None or capabilities.roots is None:
            return no_roots
        return ListRoots()

    def ask_roots_for_thumbnails(ctx: Context, thumbnails: int = 0) -> ListRoots | ListRootsResult:
        return ask_roots(ctx) if thumbnails else no_roots

    ClientRoots = Annotated[ListRootsResult, Resolve(ask_roots)]
    ThumbnailRoots = Annotated[ListRootsResult, Resolve(ask_roots_for_thumbnails)]

    def guard_for(client_roots: ListRootsResult) -> PathGuard:
        return PathGuard(configured or _file_roots(client_roots))

    @server.tool(annotations=ToolAnnotations(title="Index a folder of images", destructive_hint=False))
    async def index_folder(
        folder: Annotated[str, Field(description="Absolute path of the folder whose images to index")],
        ctx: Context,
        client_roots: ClientRoots,
        collection: CollectionName = DEFAULT_COLLECTION,
        recursive: Annotated[bool, Field(description="Include subfolders")] = True,
        remove_missing: Annotated[
            bool, Field(description="Drop catalogued images under this folder that no longer exist")
        ] = True,
        index_type: Annotated[
            Literal["auto", "flat", "ivf"] | None,
            Field(
                description="Search index: 'flat' exact, 'ivf' approximate (fast for very large collections), "
                "'auto' switches to ivf from 150,000 images; omitted keeps the collection's setting"
            ),
        ] = None,
    ) -> Annotated[CallToolResult, IndexReport]:
        """Index (or re-index) a folder's images so they can be searched. Only new or changed files are embedded;
        renamed files keep their vectors; unreadable files are skipped and listed with the reason."""
        guard = guard_for(client_roots)
        progress = _CallProgress(ctx, tracker)
        report = await _run(
            lambda: get().index_folder(folder, collection, recursive, remove_missing, guard, progress.work, index_type),
            progress,
        )
        text = (
            f"Indexed {report.folder} into '{report.collection}': {report.indexed_total} images in total; "
            f"{report.added} added, {report.updated} updated, {report.moved} moved, {report.unchanged} unchanged, "
            f"{report.removed} removed, {report.failed} failed; {report.seconds:.1f} s."
        )
        return _result(report, text)

    @server.tool(annotations=ToolAnnotations(title="Find images by description", read_only_hint=True))
    async def search_images_by_text(
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What the image shows, in words")
        ],
        ctx: Context,
        client_roots: ThumbnailRoots,
        k: TopK = 10,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
    ) -> Annotated[CallToolResult, SearchResponse]:
        """Find the images in a collection that best match a text description, best first, with cosine scores."""
        response = await run(lambda: get().search_text(query, k, collection), ctx)
        return await _search_result(get, response, thumbnails, guard_for(client_roots))

    @server.tool(annotations=ToolAnnotations(title="Find similar images", read_only_hint=True))
    async def search_similar_images(
        image_path: Annotated[str, Field(description="Absolute path of the example image (need not be indexed)")],
        ctx: Context,
        client_roots: ClientRoots,
        k: TopK = 10,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
    ) -> Annotated[CallToolResult, SearchResponse]:
        """Find the images in a collection most similar to an example image, best first, with cosine scores.
        An indexed example comes back first with a score of about 1."""
        guard = guard_for(client_roots)
        response = await run(lambda: get().search_image(image_path, k, collection, guard), ctx)
        return await _search_result(get, response, thumbnails, guard)

    @server.tool(annotations=ToolAnnotations(title="Measure retrieval quality", read_only_hint=True))
    async def evaluate_retrieval(
        ctx: Context,
        client_roots: ClientRoots,
        collection: CollectionName = DEFAULT_COLLECTION,
        ground_truth: Annotated[
            str,
            Field(
                description="'folders' (an image's label is its parent folder, relative to the indexed folder) or "
                'the absolute path of a JSON file {"text_queries": [{"query", "relevant": [paths]}], '
                '"image_queries": [{"image", "relevant": [paths]}]}'
            ),
        ] = "folders",
        ks: Annotated[
            list[Annotated[int, Field(ge=1, le=MAX_K)]],
            Field(min_length=1, max_length=20, description="Cut-offs k for Recall@k, Precision@k, nDCG@k"),
        ] = list(DEFAULT_KS),  # noqa: B006 - pydantic copies defaults
        text_template: Annotated[
            str, Field(min_length=1, max_length=200, description="Text query per label; must contain {label}")
        ] = DEFAULT_TEMPLATE,
        plots: Annotated[
            bool, Field(description="Also write report.json, report.md, a score histogram and a t-SNE map")
        ] = False,
    ) -> Annotated[CallToolResult, EvaluationReport]:
        """Measure how well search works on a collection, as in the CLIP+FAISS paper: mAP, MRR, Recall@k, hit
        rate@k, Precision@k and nDCG@k for text-to-image and image-to-image queries, worst queries listed."""
        guard = guard_for(client_roots)
        report = await run(
            lambda: get().evaluate(
                collection,
                ground_truth,
                ks,
                text_template,
                guard,
                get().evaluation_dir(collection) if plots else None,
                plots,
            ),
            ctx,
        )
        lines = [f"Evaluation of '{report.collection}' ({report.images} images, ground truth {report.ground_truth}):"]
        for direction, metrics in (("text→image", report.text_to_image), ("image→image", report.image_to_image)):
            recalls = ", ".join(f"R@{k} {v:.3f}" for k, v in metrics.recall_at.items())
            lines.append(
                f"{direction}: mAP {metrics.map:.3f}, MRR {metrics.mrr:.3f}, {recalls} "
                f"({metrics.queries} queries, {metrics.skipped} skipped)"
            )
        if report.report_dir:
            lines.append(f"Report written to {report.report_dir}")
        images = [Image(data=Path(p).read_bytes(), format="png").to_image_content() for p in report.plots]
        return _result(report, "\n".join(lines), images)

    @server.tool(annotations=ToolAnnotations(title="List collections", read_only_hint=True))
    async def list_collections() -> Annotated[CallToolResult, CollectionList]:
        """List the collections with their image counts and the model each was built with."""
        listing = await _run(lambda: get().list_collections())
        names = ", ".join(f"{c.name} ({c.images} images)" for c in listing.collections) or "none yet"
        return _result(listing, f"Collections in {listing.index_dir}: {names}")

    return server


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


async def _run(fn: Callable[[], T], progress: "_CallProgress | None" = None) -> T:
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


def _result(model: BaseModel, text: str, extra: Sequence[ContentBlock] = ()) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text), *extra], structured_content=model.model_dump(mode="json")
    )


async def _search_result(
    get: "Callable[[], ClipSearch]", response: SearchResponse, thumbnails: int, guard: PathGuard
) -> CallToolResult:
    lines = [f"{len(response.results)} results in '{response.collection}' for {response.query!r}:"]
    lines += [f"{hit.rank}. {hit.score:.3f}  {hit.path}" for hit in response.results]
    images: list[ContentBlock] = []
    if thumbnails:
        for hit in response.results[:thumbnails]:
            try:
                data = await _run(lambda path=hit.path: get().thumbnail(path, guard))
            except ToolError as exc:
                lines.append(f"(no thumbnail for rank {hit.rank}: {exc})")
                continue
            images.append(Image(data=data, format="jpeg").to_image_content())
    return _result(response, "\n".join(lines), images)


class _CallProgress:
    """One tool call's progress notifications: a model download it waits for (in MB), then its own work (images).

    Progress must only grow within a call, so the work's counts are reported after the download's megabytes."""

    def __init__(self, ctx: Context, downloads: DownloadTracker) -> None:
        self._ctx = ctx
        self._downloads = downloads
        self._offset = 0.0
        self._last = 0.0

    async def watch_downloads(self) -> None:
        seen: DownloadState | None = None
        while True:
            state = self._downloads.state()
            if state is not None and state != seen:
                seen = state
                self._offset = state.total_bytes / 1e6
                await self._notify(state.done_bytes / 1e6, self._offset, state.describe())
            await anyio.sleep(PROGRESS_INTERVAL_SECONDS)

    def work(self, progress: "IndexProgress") -> None:
        """A thread-side callback for the core's progress, sent at most a few times a second."""
        now = time.monotonic()
        if progress.done < progress.to_process and now - self._last < PROGRESS_INTERVAL_SECONDS:
            return
        self._last = now
        done, total = self._offset + progress.done, self._offset + progress.to_process
        anyio.from_thread.run(self._notify, done, total, progress.message)

    async def _notify(self, done: float, total: float, message: str) -> None:
        try:
            await self._ctx.report_progress(done, total, message)
        except Exception:  # progress is best effort; never fail a call over it
            log.debug("progress notification failed", exc_info=True)


def _file_roots(result: ListRootsResult) -> list[Path]:
    """The local folders among the client's declared roots (file:// URIs)."""
    paths = []
    for root in result.roots:
        parsed = urlparse(str(root.uri))
        if parsed.scheme == "file":
            paths.append(Path(unquote(parsed.path)))
    return paths
