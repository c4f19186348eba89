"""The MCP server: `build_server` wires the tool families (one `register(server, tools)` each) over the ClipSearch
core; every tool runs its core call in a worker thread, so the event loop never blocks."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mcp.server import MCPServer

from server.indexing.background import Background
from server.mcp_server import evaluation_tools, indexing_tools, library_tools, search_tools
from server.mcp_server.gallery import HideAppOnlyTools, gallery_apps
from server.mcp_server.support import RootAccess, ToolContext, lazy
from server.models.files import DownloadTracker

if TYPE_CHECKING:
    from server.service import ClipSearch

INSTRUCTIONS = (
    "Search the user's own photos by description or by example. Index a folder once with index_folder "
    "(re-running only processes new or changed files; a large folder keeps indexing in the background: follow it "
    "with index_status), then use search_images_by_text or search_similar_images. "
    "Paths are absolute and must lie inside the folders the user allowed."
)
FAMILIES = (indexing_tools, search_tools, evaluation_tools, library_tools)
"""Each module's `register(server, tools)` adds its tools; the gallery's app-only tool comes with its extension."""


def build_server(
    service: "ClipSearch | Callable[[], ClipSearch]",
    roots: Sequence[Path] = (),
    downloads: DownloadTracker | None = None,
    background: Background | None = None,
    client_roots: bool = True,
) -> MCPServer:
    """An MCP server over `service`, or over the service a factory makes on first use (so the handshake never
    waits for numpy, PIL or torch). File access is confined to `roots`, else to the roots the client declares.
    A tool call waiting for the model's first download reports its progress from `downloads` (default: the
    service's own tracker). Indexing runs as the `background` jobs, which keep watched folders in sync too
    (default: over the service's index directory; required with a factory). Without `client_roots` the roots a
    client declares are never asked for (over HTTP they name the client's disk)."""
    if callable(service):
        if background is None:
            raise ValueError("build_server needs its Background (jobs and watcher) when the service is made lazily")
        get = lazy(service)
        tracker = downloads or DownloadTracker()
    else:
        instance = service
        get = lambda: instance  # noqa: E731 - the same shape as lazy()'s getter
        background = background or Background.over(instance.store.index_dir, get)
        tracker = downloads or instance.downloads
    tools = ToolContext(get, RootAccess(roots, client_roots), tracker, background)
    server = MCPServer(
        "clipsearch",
        instructions=INSTRUCTIONS,
        extensions=[gallery_apps(get, tools.access)],
        middleware=[HideAppOnlyTools()],
    )
    for family in FAMILIES:
        family.register(server, tools)
    return server
