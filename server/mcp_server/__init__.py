"""The MCP adapter: `build_server` wiring (`server`), one module per tool family, the parameter types (`params`)
and the gallery (MCP Apps, `gallery` and `gallery.html`). Imports `service` and the bottom layer, never a wing."""
