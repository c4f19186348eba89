"""The MCP adapter: `build_server` wires the tool families (`server`), each a module with one `register(server,
tools)`: `indexing_tools`, `search_tools`, `evaluation_tools`, `library_tools`; what they share (`support`: running
core calls off the event loop, roots, progress), the search tools' parameter types (`params`) and the gallery (MCP
Apps: `gallery` and its `gallery.html`); the same server over Streamable HTTP with tokens (`http_transport`). Imports
the service, its results and the wings' public names."""
