"""The gallery (MCP Apps, the `io.modelcontextprotocol/ui` extension): the search, duplicates and evaluation tools
point at one `ui://` view that hosts with the extension render beside the answer. The view fetches thumbnails
through the app-only `get_thumbnails` tool, so they never enter the model's context. A host that did not negotiate
the extension gets exactly the results it got before, and is not shown the app-only tool."""

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.apps import Apps, client_supports_apps
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, Resolve
from mcp.types import CallToolResult, ListRootsResult, ToolAnnotations
from pydantic import Field

from server.limits import DEFAULT_GALLERY_SIDE, GALLERY_MAX_PATHS, GALLERY_SIDE
from server.mcp_server.support import RootAccess, run_core, tool_result
from server.results import ThumbnailPage

if TYPE_CHECKING:
    from server.service import ClipSearch

GALLERY_URI = "ui://clipsearch/gallery.html"
GALLERY_META: dict[str, Any] = {"ui": {"resourceUri": GALLERY_URI}}
"""`meta=` for a tool whose results the gallery shows."""
GALLERY_NOTE = "(The user sees these results as a gallery of thumbnails beside this answer.)"


def gallery_html() -> str:
    """The view: one self-contained HTML file shipped in the package (no network, no build step)."""
    return resources.files(__package__).joinpath("gallery.html").read_text(encoding="utf-8")


def gallery_note(ctx: Context) -> list[str]:
    """The line a UI-bound tool adds to its text when the host shows the gallery; nothing otherwise."""
    return [GALLERY_NOTE] if client_supports_apps(ctx) else []


def gallery_apps(get: "Callable[[], ClipSearch]", access: RootAccess) -> Apps:
    """The extension: the gallery resource and the app-only `get_thumbnails` tool."""
    apps = Apps()
    apps.add_html_resource(
        GALLERY_URI,
        gallery_html(),
        name="clipsearch gallery",
        title="Search results",
        description="Thumbnails of search results, duplicate groups and evaluation reports",
    )
    ClientRoots = Annotated[ListRootsResult, Resolve(access.ask)]

    @apps.tool(
        resource_uri=GALLERY_URI,
        visibility=["app"],
        annotations=ToolAnnotations(title="Thumbnails for the gallery", read_only_hint=True, open_world_hint=False),
    )
    async def get_thumbnails(
        paths: Annotated[
            list[str],
            Field(min_length=1, max_length=GALLERY_MAX_PATHS, description="Absolute paths of images (results)"),
        ],
        client_roots: ClientRoots,
        side: Annotated[
            int, Field(**GALLERY_SIDE.schema(), description="Longest side of each JPEG, in pixels")
        ] = DEFAULT_GALLERY_SIDE,
        times: Annotated[
            list[float | None] | None,
            Field(
                max_length=GALLERY_MAX_PATHS,
                description="One per path: a video's moment to show (its result's time_seconds), null for a photo",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, ThumbnailPage]:
        """Small JPEGs of images (a video's frame at its moment), for the gallery view only (hidden from the
        model). Paths outside the allowed folders, missing or unreadable get a reason instead; thumbnails are cached
        per file version."""
        guard = access.guard(client_roots)
        page = await run_core(lambda: get().thumbnail_page(paths, side, guard, times))
        made = sum(t.jpeg_base64 is not None for t in page.thumbnails)
        return tool_result(page, f"{made} of {len(paths)} thumbnails")

    return apps


def _app_only(tool: dict[str, Any]) -> bool:
    ui = (tool.get("_meta") or {}).get("ui")
    return isinstance(ui, dict) and ui.get("visibility") == ["app"]


class HideAppOnlyTools:
    """Middleware: a client that did not negotiate MCP Apps would hand app-only tools to its model, so they are
    left out of its tool list (hosts with Apps filter them themselves, by `_meta.ui.visibility`). The runner hands
    middleware the serialized result, a dict."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or client_supports_apps(ctx):
            return result
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            return {**result, "tools": [t for t in result["tools"] if not _app_only(t)]}
        return result
