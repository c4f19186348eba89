// Bundled by the browser tests (esbuild) into one script for the test host page: the official MCP Apps host side.
export { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";
