"""The search tools: `search_images_by_text` and `search_similar_images`, with the same filters, refinements and
thumbnails, whose results the gallery shows; and `search_text_in_images`, the photos ranked by the text read in them,
with the same filters."""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ListRootsResult, ToolAnnotations
from pydantic import Field

from server.limits import DEFAULT_COLLECTION, DEFAULT_K, DEFAULT_MIN_TEXT_SCORE, MAX_QUERY_CHARS
from server.mcp_server.gallery import GALLERY_META, gallery_note
from server.mcp_server.params import (
    AndImages,
    AndTexts,
    Camera,
    Diverse,
    FolderFilter,
    Media,
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
    TextFilter,
    TextMinScore,
    TextQuery,
    Thumbnails,
    TimeSeconds,
    TopK,
)
from server.mcp_server.support import READ_ONLY, CollectionName, ToolContext, run_core, tool_result
from server.paths import PathGuard
from server.results import SearchHit, SearchResponse
from server.search.composition import Extras
from server.search.filters import ResultOrder, SearchFilter

if TYPE_CHECKING:
    from server.service import ClipSearch


def register(server: MCPServer, tools: ToolContext) -> None:
    """Add search_images_by_text, search_similar_images and search_text_in_images to `server`."""
    ClientRoots = tools.client_roots()
    ThumbnailRoots = Annotated[ListRootsResult, Resolve(tools.access.ask_for_thumbnails)]
    TextSearchRoots = Annotated[ListRootsResult, Resolve(tools.access.ask_for_thumbnails_or_folder)]

    def indexing_note(collection: str) -> list[str]:
        status = tools.background.jobs.active(collection)
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
        text: str | None,
        min_score: float | None,
        sort: str,
        offset: int,
        diverse: bool = False,
        media: str = "all",
    ) -> tuple[SearchFilter, ResultOrder]:
        """The search tools' filter and order parameters, checked (in a worker thread: it may open the collection)."""
        place = (near.latitude, near.longitude) if near else None
        filters = tools.get().make_filter(
            collection, folder, taken_after, taken_before, place, radius_km, camera, guard, text, media
        )
        return filters, ResultOrder(min_score, sort, offset, diverse)

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find images by description", **READ_ONLY))
    async def search_images_by_text(
        query: Annotated[
            str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What the image shows, in words")
        ],
        ctx: Context,
        client_roots: ThumbnailRoots,
        k: TopK = DEFAULT_K,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
        folder: FolderFilter = None,
        taken_after: TakenAfter = None,
        taken_before: TakenBefore = None,
        near: Near = None,
        radius_km: RadiusKm = None,
        camera: Camera = None,
        text: TextFilter = None,
        media: Media = "all",
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
        filters (folder, capture date, place, camera, words of the text read in the photo) narrow the search
        exactly; each result carries its capture time, size, camera and GPS position when known, and a snippet of
        the photo's text when it has any. Videos are found at their best moment (kind 'video', time_seconds,
        duration_seconds, other_moments)."""
        guard = tools.access.guard(client_roots)
        options = (folder, taken_after, taken_before, near, radius_km, camera, text, min_score, sort, offset, diverse)
        extras = _extras(and_texts, not_texts, and_images, not_images)

        def search() -> SearchResponse:
            filters, order = search_options(collection, guard, *options, media=media)
            return tools.get().search_text(query, k, collection, filters, order, extras, guard)

        response = await tools.run(search, ctx)
        notes = indexing_note(collection) + gallery_note(ctx)
        return await _search_result(tools.get, response, thumbnails, guard, notes)

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find similar images", **READ_ONLY))
    async def search_similar_images(
        image_path: Annotated[
            str, Field(description="Absolute path of the example image or video (need not be indexed)")
        ],
        ctx: Context,
        client_roots: ClientRoots,
        time_seconds: TimeSeconds = None,
        k: TopK = DEFAULT_K,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
        folder: FolderFilter = None,
        taken_after: TakenAfter = None,
        taken_before: TakenBefore = None,
        near: Near = None,
        radius_km: RadiusKm = None,
        camera: Camera = None,
        text: TextFilter = None,
        media: Media = "all",
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
        but at night": and_texts=['night']) and filters as search_images_by_text. The example may be a video,
        with time_seconds the moment to search from ("more like this moment"); a still from a video finds the
        moment it came from."""
        guard = tools.access.guard(client_roots)
        options = (folder, taken_after, taken_before, near, radius_km, camera, text, min_score, sort, offset, diverse)
        extras = _extras(and_texts, not_texts, and_images, not_images)

        def search() -> SearchResponse:
            filters, order = search_options(collection, guard, *options, media=media)
            return tools.get().search_image(image_path, k, collection, guard, filters, order, extras, time_seconds)

        response = await tools.run(search, ctx)
        notes = indexing_note(collection) + gallery_note(ctx)
        return await _search_result(tools.get, response, thumbnails, guard, notes)

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find text in photos", **READ_ONLY))
    async def search_text_in_images(
        query: TextQuery,
        ctx: Context,
        client_roots: TextSearchRoots,
        k: TopK = DEFAULT_K,
        collection: CollectionName = DEFAULT_COLLECTION,
        thumbnails: Thumbnails = 0,
        folder: FolderFilter = None,
        taken_after: TakenAfter = None,
        taken_before: TakenBefore = None,
        near: Near = None,
        radius_km: RadiusKm = None,
        camera: Camera = None,
        min_score: TextMinScore = DEFAULT_MIN_TEXT_SCORE,
        sort: Sort = "score",
        offset: Offset = 0,
    ) -> Annotated[CallToolResult, SearchResponse]:
        """Find photos by the text in them (signs, screenshots, receipts, tickets, whiteboards), read by OCR when
        they were indexed: each result gives the text around the match, so "what's the wifi password in that
        screenshot" or "the booking code on my boarding pass" is answered without looking at any image. Ranked by
        how well the text matches, tolerating OCR slips ("lh1234" finds "LH 1234", "wi fi password" finds "WiFi
        Password"); score 1 is the exact words, 0.8 every word apart, less a partial match; equal scores newest
        first. Takes the filters of search_images_by_text. Photos not read yet (indexed without OCR) are not
        found."""
        guard = tools.access.guard(client_roots)
        options = (folder, taken_after, taken_before, near, radius_km, camera, None, min_score, sort, offset)

        def search() -> SearchResponse:
            filters, order = search_options(collection, guard, *options)
            return tools.get().search_text_in_images(query, k, collection, filters, order)

        response = await tools.run(search, ctx)
        notes = indexing_note(collection)
        if not response.results and not offset:
            notes.append("(No photo's recognised text matches. Only photos indexed with text reading are searched.)")
        notes += gallery_note(ctx)
        return await _search_result(tools.get, response, thumbnails, guard, notes)


def _extras(*terms: list[str] | None) -> Extras:
    and_texts, not_texts, and_images, not_images = (tuple(t or ()) for t in terms)
    return Extras(and_texts, not_texts, and_images, not_images)


def _clock(seconds: float) -> str:
    """12.5 as 0:12, 3725 as 1:02:05."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}" if hours else f"{rest // 60}:{rest % 60:02}"


def _about(hit: SearchHit) -> str:
    """What is known of a result besides its score, for the reader of the text."""
    parts = []
    if hit.kind == "video" and hit.time_seconds is not None:
        length = f" of {_clock(hit.duration_seconds)}" if hit.duration_seconds is not None else ""
        parts.append(f"video, at {_clock(hit.time_seconds)}{length}")
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
        + (f"\n   text: {hit.text!r}" if hit.text else "")  # repr: control and direction marks shown escaped
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
