"""The tools that look at the library itself rather than search it: `list_collections` and `list_models` (what is
there, and what could be), `view_image` (one photo, closely) and `find_duplicates` (copies and look-alikes,
reported, never touched)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from server.limits import (
    DEFAULT_COLLECTION,
    DEFAULT_MAX_GROUPS,
    DEFAULT_NEAR_BITS,
    DEFAULT_THRESHOLD,
    DEFAULT_VIEW_SIDE,
    DEFAULT_WAIT_SECONDS,
    GROUP_OFFSET,
    GROUPS,
    MAX_BITS,
    THRESHOLD,
    TIME_SECONDS,
    VIEW_SIDE,
    WAIT_SECONDS,
)
from server.mcp_server.gallery import GALLERY_META, gallery_note
from server.mcp_server.support import READ_ONLY, CollectionName, ToolContext, run_core, tool_result
from server.models.recommended import list_models as list_models_in_cache
from server.results import CollectionList, DuplicateReport, ImageView, ModelList

if TYPE_CHECKING:
    pass

VIEW_TEXT_CHARS = 4000  # of a photo's text in view_image's text for the assistant; all of it is in `text`


def register(server: MCPServer, tools: ToolContext) -> None:
    """Add list_collections, view_image, find_duplicates and list_models to `server`."""
    ClientRoots = tools.client_roots()

    @server.tool(annotations=ToolAnnotations(title="List collections", **READ_ONLY))
    async def list_collections() -> Annotated[CallToolResult, CollectionList]:
        """List the collections with their image counts and the model each was built with."""
        listing = await run_core(lambda: tools.get().list_collections())
        names = ", ".join(f"{c.name} ({c.images} images)" for c in listing.collections) or "none yet"
        return tool_result(listing, f"Collections in {listing.index_dir}: {names}")

    @server.tool(annotations=ToolAnnotations(title="View an image", **READ_ONLY))
    async def view_image(
        path: Annotated[str, Field(description="Absolute path of the image (e.g. a search result)")],
        client_roots: ClientRoots,
        max_side: Annotated[
            int, Field(**VIEW_SIDE.schema(), description="Longest side of the returned JPEG, in pixels")
        ] = DEFAULT_VIEW_SIDE,
        time_seconds: Annotated[
            float | None,
            Field(
                **TIME_SECONDS.schema(), description="For a video: the moment to show (e.g. a result's time_seconds)"
            ),
        ] = None,
    ) -> Annotated[CallToolResult, ImageView]:
        """Look closely at one image: it comes back upright as a JPEG (at most max_side px, under 1 MB) with its
        size, capture time, place, camera, the collections that hold it and, once indexing has read it, the text
        in it (`text`, and `lines` with their boxes and confidences, in reading order). Use it to read a sign or
        check a detail in a search result before answering. For a video, time_seconds picks the moment shown (its
        frame, with the video's metadata and duration)."""
        guard = tools.access.guard(client_roots)
        data, view = await run_core(lambda: tools.get().view_image(path, max_side, guard, time_seconds))
        about = [f"{view.width}×{view.height}"]
        if view.kind == "video" and view.time_seconds is not None:
            about.insert(0, f"video, frame at {view.time_seconds:.1f} s of {view.duration_seconds or 0:.1f} s")
        if view.taken:
            about.append(f"taken {view.taken}")
        if view.camera:
            about.append(view.camera)
        if view.latitude is not None and view.longitude is not None:
            about.append(f"at {view.latitude:.5f}, {view.longitude:.5f}")
        text = f"{view.path} ({'; '.join(about)}), shown at {view.shown_width}×{view.shown_height}"
        if view.text:
            shown = view.text if len(view.text) <= VIEW_TEXT_CHARS else view.text[:VIEW_TEXT_CHARS] + "…"
            text += f"\nText read in it (OCR, {len(view.lines or [])} lines): {shown!r}"  # repr: controls escaped
        elif view.text == "":
            text += "\nNo text was found in it when it was indexed."
        if view.text_note:
            text += f"\n({view.text_note})"
        return tool_result(view, text, [Image(data=data, format="jpeg").to_image_content()])

    @server.tool(meta=GALLERY_META, annotations=ToolAnnotations(title="Find duplicate images", **READ_ONLY))
    async def find_duplicates(
        ctx: Context,
        client_roots: ClientRoots,
        collection: CollectionName = DEFAULT_COLLECTION,
        folder: Annotated[
            str | None, Field(description="Only images under this folder (absolute path, inside the allowed folders)")
        ] = None,
        threshold: Annotated[
            float,
            Field(**THRESHOLD.schema(), description="Cosine similarity from which two images may be near-duplicates"),
        ] = DEFAULT_THRESHOLD,
        max_bits: Annotated[
            int,
            Field(
                **MAX_BITS.schema(),
                description=f"Most differing bits (of 64) of the perceptual hash for a near pair: {DEFAULT_NEAR_BITS} "
                "keeps bursts together and unrelated look-alikes apart; raise it to group looser edits, 64 turns the "
                "check off",
            ),
        ] = DEFAULT_NEAR_BITS,
        exact_only: Annotated[bool, Field(description="Only byte-identical copies")] = False,
        max_groups: Annotated[int, Field(**GROUPS.schema(), description="Groups per page")] = DEFAULT_MAX_GROUPS,
        offset: Annotated[int, Field(**GROUP_OFFSET.schema(), description="Skip this many groups (paging)")] = 0,
        wait_seconds: Annotated[
            float,
            Field(
                **WAIT_SECONDS.schema(),
                description="Seconds to wait for the groups; a large collection's comparison goes on past them and "
                "this answers state 'running': ask again with the same arguments",
            ),
        ] = DEFAULT_WAIT_SECONDS,
    ) -> Annotated[CallToolResult, DuplicateReport]:
        """Find exact copies and near-duplicates (re-encoded or resized copies, bursts) in a collection, grouped,
        largest groups first, each with a suggested keeper (largest resolution, then taken first, then shortest
        path) and why. It only reports: nothing is deleted or moved; tell the user, who decides. The groups are
        computed once per state of the collection: paging through them, or asking again, is immediate. A comparison
        longer than wait_seconds goes on as a job: this answers state 'running' with its job_id ('d-...'), which
        index_status follows and cancel_indexing stops; ask again with the same arguments for the groups."""
        from server.library.duplicates import DuplicateQuery

        guard = tools.access.guard(client_roots)
        query = DuplicateQuery(Path(folder) if folder else None, threshold, max_bits, exact_only, max_groups, offset)
        report = await run_core(lambda: tools.get().find_duplicates(collection, query, guard, wait_seconds))
        if report.state == "running":
            follow = f"Follow it with index_status(job_id='{report.job_id}'), or stop it with cancel_indexing."
            return tool_result(report, "\n".join([*report.notes, follow]))
        lines = [
            f"{report.groups_total} groups of duplicates ({report.images_in_groups} images) among {report.images} in "
            f"'{report.collection}'"
            + (f"; groups {offset + 1}-{offset + len(report.groups)}:" if report.groups else ".")
        ]
        for number, group in enumerate(report.groups, start=offset + 1):
            others = ", ".join(m.path for m in group.members if m.path != group.keeper)
            lines.append(f"{number}. {group.kind}, keep {group.keeper} ({group.keeper_reason}); also {others}")
        lines += report.notes + gallery_note(ctx)
        return tool_result(report, "\n".join(lines))

    @server.tool(annotations=ToolAnnotations(title="List recommended models", **READ_ONLY))
    async def list_models() -> Annotated[CallToolResult, ModelList]:
        """The recommended image-text models (pass one as index_folder's `model` for a new collection): family,
        languages, size, embedding dimension, published quality figures with their sources, and which are already
        downloaded. Searches always use the model a collection was built with."""
        listing = await run_core(lambda: list_models_in_cache(tools.get().settings.model))
        lines = [f"Default model: {listing.default}"]
        for m in listing.models:
            best = f"; {m.figures[0].metric} {m.figures[0].value}" if m.figures else ""
            here = ", downloaded" if m.downloaded else ""
            lines.append(f"- {m.model} ({m.family}, {m.languages}, {m.download_mb} MB{here}{best}): {m.advice}")
        return tool_result(listing, "\n".join(lines))
