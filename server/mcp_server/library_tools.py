"""The tools that look at the library itself rather than search it: `view_image` (one photo, closely) and
`find_duplicates` (copies and look-alikes, reported, never touched)."""

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image, Resolve
from mcp.types import CallToolResult, ListRootsResult, ToolAnnotations
from pydantic import Field

from server.limits import DEFAULT_COLLECTION
from server.mcp_server.gallery import GALLERY_META, gallery_note
from server.mcp_server.support import CollectionName, RootAccess, run_core, tool_result
from server.results import DuplicateReport, ImageView

if TYPE_CHECKING:
    from server.service import ClipSearch

READ_ONLY = {"read_only_hint": True, "open_world_hint": False}
MAX_GROUPS = 1000


def register_library_tools(server: MCPServer, get: "Callable[[], ClipSearch]", access: RootAccess) -> None:
    """Add view_image and find_duplicates to `server`."""
    ClientRoots = Annotated[ListRootsResult, Resolve(access.ask)]

    @server.tool(annotations=ToolAnnotations(title="View an image", **READ_ONLY))
    async def view_image(
        path: Annotated[str, Field(description="Absolute path of the image (e.g. a search result)")],
        client_roots: ClientRoots,
        max_side: Annotated[
            int, Field(ge=64, le=2048, description="Longest side of the returned JPEG, in pixels")
        ] = 1024,
    ) -> Annotated[CallToolResult, ImageView]:
        """Look closely at one image: it comes back upright as a JPEG (at most max_side px, under 1 MB) with its
        size, capture time, place, camera and the collections that hold it. Use it to read a sign or check a
        detail in a search result before answering."""
        guard = access.guard(client_roots)
        data, view = await run_core(lambda: get().view_image(path, max_side, guard))
        about = [f"{view.width}×{view.height}"]
        if view.taken:
            about.append(f"taken {view.taken}")
        if view.camera:
            about.append(view.camera)
        if view.latitude is not None and view.longitude is not None:
            about.append(f"at {view.latitude:.5f}, {view.longitude:.5f}")
        text = f"{view.path} ({'; '.join(about)}), shown at {view.shown_width}×{view.shown_height}"
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
            float, Field(gt=0, le=1, description="Cosine similarity from which two images may be near-duplicates")
        ] = 0.95,
        max_bits: Annotated[
            int,
            Field(
                ge=0,
                le=64,
                description="Most differing bits (of 64) of the perceptual hash for a near pair: 20 keeps bursts "
                "together and unrelated look-alikes apart; raise it to group looser edits, 64 turns the check off",
            ),
        ] = 20,
        exact_only: Annotated[bool, Field(description="Only byte-identical copies")] = False,
        max_groups: Annotated[int, Field(ge=1, le=MAX_GROUPS, description="Groups per page")] = 100,
        offset: Annotated[int, Field(ge=0, le=1_000_000, description="Skip this many groups (paging)")] = 0,
    ) -> Annotated[CallToolResult, DuplicateReport]:
        """Find exact copies and near-duplicates (re-encoded or resized copies, bursts) in a collection, grouped,
        largest groups first, each with a suggested keeper (largest resolution, then taken first, then shortest
        path) and why. It only reports: nothing is deleted or moved; tell the user, who decides."""
        from server.library.duplicates import DuplicateQuery

        guard = access.guard(client_roots)
        query = DuplicateQuery(Path(folder) if folder else None, threshold, max_bits, exact_only, max_groups, offset)
        report = await run_core(lambda: get().find_duplicates(collection, query, guard))
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
