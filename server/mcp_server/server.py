"""The MCP server: thin tools over the ClipSearch core, run in worker threads so the event loop never blocks.

Search, evaluation and listing are here; indexing (jobs, status, cancel) is in `app_indexing.py`."""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ListRootsResult, ToolAnnotations
from pydantic import Field

from server.indexing.jobs import JobManager
from server.indexing.watch import FolderWatcher
from server.limits import DEFAULT_COLLECTION, DEFAULT_KS, DEFAULT_TEMPLATE, MAX_COMPARED, MAX_K, MAX_QUERY_CHARS
from server.mcp_server.gallery import GALLERY_META, HideAppOnlyTools, gallery_apps, gallery_note
from server.mcp_server.indexing_tools import register_indexing_tools
from server.mcp_server.library_tools import register_library_tools
from server.mcp_server.params import (
    AndImages,
    AndTexts,
    Camera,
    Diverse,
    FolderFilter,
    MinScore,
    Near,
    NotImages,
    NotTexts,
    Offset,
    Place,
    RadiusKm,
    Sort,
    TakenAfter,
    TakenBefore,
    Thumbnails,
    TopK,
)
from server.mcp_server.support import CallProgress, CollectionName, RootAccess, lazy, run_core, tool_result
from server.models.files import DownloadTracker
from server.models.recommended import list_models as list_models_in_cache
from server.paths import PathGuard
from server.results import CollectionList, EvaluationReport, ModelList, SearchHit, SearchResponse
from server.search.composition import Extras
from server.search.filters import ResultOrder, SearchFilter

if TYPE_CHECKING:
    from server.service import ClipSearch

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = (
    "Search the user's own photos by description or by example. Index a folder once with index_folder "
    "(re-running only processes new or changed files; a large folder keeps indexing in the background: follow it "
    "with index_status), then use search_images_by_text or search_similar_images. "
    "Paths are absolute and must lie inside the folders the user allowed."
)
READ_ONLY = {"read_only_hint": True, "open_world_hint": False}


def build_server(
    service: "ClipSearch | Callable[[], ClipSearch]",
    roots: Sequence[Path] = (),
    downloads: DownloadTracker | None = None,
    jobs: JobManager | None = None,
    watcher: FolderWatcher | None = None,
) -> MCPServer:
    """An MCP server over `service`, or over the service a factory makes on first use (so the handshake never
    waits for numpy, PIL or torch). File access is confined to `roots`, else to the roots the client declares.
    A tool call waiting for the model's first download reports its progress from `downloads` (default: the
    service's own tracker). Indexing runs as `jobs` (default: a manager over the service's index directory;
    required with a factory); `watcher` keeps watched folders in sync (default: one over `jobs`)."""
    if callable(service):
        if jobs is None:
            raise ValueError("build_server needs a JobManager when the service is made lazily")
        get = lazy(service)
    else:
        instance = service
        get = lambda: instance  # noqa: E731 - the same shape as lazy()'s getter
        jobs = jobs or JobManager(instance.store.index_dir, get)
    tracker = downloads or (service.downloads if not callable(service) else DownloadTracker())
    access = RootAccess(roots)
    server = MCPServer(
        "clipsearch",
        instructions=INSTRUCTIONS,
        extensions=[gallery_apps(get, access)],
        middleware=[HideAppOnlyTools()],
    )
    ClientRoots = Annotated[ListRootsResult, Resolve(access.ask)]
    ThumbnailRoots = Annotated[ListRootsResult, Resolve(access.ask_for_thumbnails)]

    async def run(fn: Callable[[], T], ctx: Context) -> T:
        return await run_core(fn, CallProgress(ctx, tracker))

    def indexing_note(collection: str) -> list[str]:
        status = jobs.active(collection)
        if status is None:
            return []
        p = status.progress
        return [
            f"('{collection}' is being indexed (job {status.job_id}): {p.done:,} of {p.to_process:,} new or changed "
            "images processed so far; results cover what is committed.)"
        ]

    def search_options(
        collection: str,
        guard: PathGuard,
        folder: str | None,
        taken_after: str | None,
        taken_before: str | None,
        near: Place | None,
        radius_km: float | None,
        camera: str | None,
        min_score: float | None,
        sort: str,
        offset: int,
        diverse: bool,
    ) -> tuple[SearchFilter, ResultOrder]:
        """The search tools' filter and order parameters, checked (in a worker thread: it may open the collection)."""
        place = (near.latitude, near.longitude) if near else None
        filters = get().make_filter(collection, folder, taken_after, taken_before, place, radius_km, camera, guard)
        return filters, ResultOrder(min_score, sort, offset, diverse)

    register_indexing_tools(server, jobs, tracker, access, watcher or FolderWatcher(jobs, exclude=(jobs.index_dir,)))

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find images by description", **READ_ONLY))
    async def search_images_by_text(
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What the image shows, in words")
        ],
        ctx: Context,
        client_roots: ThumbnailRoots,
        k: TopK = 10,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
        folder: FolderFilter = None,
        taken_after: TakenAfter = None,
        taken_before: TakenBefore = None,
        near: Near = None,
        radius_km: RadiusKm = None,
        camera: Camera = None,
        min_score: MinScore = None,
        sort: Sort = "score",
        offset: Offset = 0,
        diverse: Diverse = False,
        and_texts: AndTexts = None,
        not_texts: NotTexts = None,
        and_images: AndImages = None,
        not_images: NotImages = None,
    ) -> Annotated[CallToolResult, SearchResponse]:
        """Find the images in a collection that best match a text description, best first, with cosine scores.
        Refine it like "beach, and sunset, but not people": and_texts/not_texts/and_images/not_images add or take
        away texts and example images (weighted; the query's vector is the normalised weighted sum). Optional
        filters (folder, capture date, place, camera) narrow the search exactly; each result carries its capture
        time, size, camera and GPS position when known."""
        guard = access.guard(client_roots)
        options = (folder, taken_after, taken_before, near, radius_km, camera, min_score, sort, offset, diverse)
        extras = _extras(and_texts, not_texts, and_images, not_images)

        def search() -> SearchResponse:
            filters, order = search_options(collection, guard, *options)
            return get().search_text(query, k, collection, filters, order, extras, guard)

        response = await run(search, ctx)
        notes = indexing_note(collection) + gallery_note(ctx)
        return await _search_result(get, response, thumbnails, guard, notes)

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find similar images", **READ_ONLY))
    async def search_similar_images(
        image_path: Annotated[str, Field(description="Absolute path of the example image (need not be indexed)")],
        ctx: Context,
        client_roots: ClientRoots,
        k: TopK = 10,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
        folder: FolderFilter = None,
        taken_after: TakenAfter = None,
        taken_before: TakenBefore = None,
        near: Near = None,
        radius_km: RadiusKm = None,
        camera: Camera = None,
        min_score: MinScore = None,
        sort: Sort = "score",
        offset: Offset = 0,
        diverse: Diverse = False,
        and_texts: AndTexts = None,
        not_texts: NotTexts = None,
        and_images: AndImages = None,
        not_images: NotImages = None,
    ) -> Annotated[CallToolResult, SearchResponse]:
        """Find the images in a collection most similar to an example image, best first, with cosine scores.
        An indexed example comes back first with a score of about 1. Takes the same refinements ("like this photo,
        but at night": and_texts=['night']) and filters as search_images_by_text."""
        guard = access.guard(client_roots)
        options = (folder, taken_after, taken_before, near, radius_km, camera, min_score, sort, offset, diverse)
        extras = _extras(and_texts, not_texts, and_images, not_images)

        def search() -> SearchResponse:
            filters, order = search_options(collection, guard, *options)
            return get().search_image(image_path, k, collection, guard, filters, order, extras)

        response = await run(search, ctx)
        notes = indexing_note(collection) + gallery_note(ctx)
        return await _search_result(get, response, thumbnails, guard, notes)

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Measure retrieval quality", **READ_ONLY))
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
        collections: Annotated[
            list[CollectionName] | None,
            Field(
                min_length=2,
                max_length=MAX_COMPARED,
                description="Compare models: 2-5 collections of the same images, each built with another model, "
                "evaluated with the same ground truth and shown side by side with each model's measured speed "
                "(replaces `collection`)",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, EvaluationReport]:
        """Measure how well search works on a collection, as in the CLIP+FAISS paper: mAP, MRR, Recall@k, hit
        rate@k, Precision@k and nDCG@k for text-to-image and image-to-image queries, worst queries listed. With
        `collections`, compares the models of several collections of the same images side by side."""
        guard = access.guard(client_roots)

        def evaluate() -> EvaluationReport:
            service = get()
            names = collections or [collection]
            report_dir = service.evaluation_dir(names[0]) if plots else None
            if collections:
                return service.compare(collections, ground_truth, ks, text_template, guard, report_dir, plots)
            return service.evaluate(collection, ground_truth, ks, text_template, guard, report_dir, plots)

        report = await run(evaluate, ctx)
        lines = _comparison_lines(report) if report.comparison else _evaluation_lines(report)
        if report.report_dir:
            lines.append(f"Report written to {report.report_dir}")
        lines += gallery_note(ctx)
        images = [Image(data=Path(p).read_bytes(), format="png").to_image_content() for p in report.plots]
        return tool_result(report, "\n".join(lines), images)

    @server.tool(annotations=ToolAnnotations(title="List collections", **READ_ONLY))
    async def list_collections() -> Annotated[CallToolResult, CollectionList]:
        """List the collections with their image counts and the model each was built with."""
        listing = await run_core(lambda: get().list_collections())
        names = ", ".join(f"{c.name} ({c.images} images)" for c in listing.collections) or "none yet"
        return tool_result(listing, f"Collections in {listing.index_dir}: {names}")

    register_library_tools(server, get, access)

    @server.tool(annotations=ToolAnnotations(title="List recommended models", **READ_ONLY))
    async def list_models() -> Annotated[CallToolResult, ModelList]:
        """The recommended image-text models (pass one as index_folder's `model` for a new collection): family,
        languages, size, embedding dimension, published quality figures with their sources, and which are already
        downloaded. Searches always use the model a collection was built with."""
        listing = await run_core(lambda: list_models_in_cache(get().settings.model))
        lines = [f"Default model: {listing.default}"]
        for m in listing.models:
            best = f"; {m.figures[0].metric} {m.figures[0].value}" if m.figures else ""
            here = ", downloaded" if m.downloaded else ""
            lines.append(f"- {m.model} ({m.family}, {m.languages}, {m.download_mb} MB{here}{best}): {m.advice}")
        return tool_result(listing, "\n".join(lines))

    return server


def _extras(*terms: list[str] | None) -> Extras:
    and_texts, not_texts, and_images, not_images = (tuple(t or ()) for t in terms)
    return Extras(and_texts, not_texts, and_images, not_images)


def _evaluation_lines(report: EvaluationReport) -> list[str]:
    lines = [f"Evaluation of '{report.collection}' ({report.images} images, ground truth {report.ground_truth}):"]
    for direction, metrics in (("text→image", report.text_to_image), ("image→image", report.image_to_image)):
        recalls = ", ".join(f"R@{k} {v:.3f}" for k, v in metrics.recall_at.items())
        lines.append(
            f"{direction}: mAP {metrics.map:.3f}, MRR {metrics.mrr:.3f}, {recalls} "
            f"({metrics.queries} queries, {metrics.skipped} skipped)"
        )
    return lines


def _comparison_lines(report: EvaluationReport) -> list[str]:
    lines = [f"Models compared on the same {report.images} images (ground truth {report.ground_truth}):"]
    for c in report.comparison or []:
        lines.append(
            f"'{c.collection}' ({c.model}): text→image mAP {c.text_to_image.map:.3f}, image→image mAP "
            f"{c.image_to_image.map:.3f}, {c.images_per_second:.1f} images/s, text query {c.text_query_ms:.0f} ms"
        )
    return lines


def _about(hit: SearchHit) -> str:
    """What is known of a result besides its score, for the reader of the text."""
    parts = []
    if hit.taken:
        parts.append(f"taken {hit.taken}" + (" (file date)" if hit.taken_source == "file_mtime" else ""))
    if hit.camera:
        parts.append(hit.camera)
    if hit.latitude is not None and hit.longitude is not None:
        parts.append(f"at {hit.latitude:.5f}, {hit.longitude:.5f}")
    return f" ({'; '.join(parts)})" if parts else ""


async def _search_result(
    get: "Callable[[], ClipSearch]",
    response: SearchResponse,
    thumbnails: int,
    guard: PathGuard,
    notes: Sequence[str] = (),
) -> CallToolResult:
    lines = [f"{len(response.results)} results in '{response.collection}' for {response.query!r}:"]
    lines += [
        f"{hit.rank}. {hit.score:.3f}  {hit.path}{_about(hit)}"
        + (f" (+{hit.also} near-duplicates)" if hit.also else "")
        for hit in response.results
    ]
    lines += notes
    images: list[ContentBlock] = []
    if thumbnails:
        for hit in response.results[:thumbnails]:
            try:
                data = await run_core(lambda path=hit.path: get().thumbnail(path, guard))
            except ToolError as exc:
                lines.append(f"(no thumbnail for rank {hit.rank}: {exc})")
                continue
            images.append(Image(data=data, format="jpeg").to_image_content())
    return tool_result(response, "\n".join(lines), images)
