"""The MCP server over Streamable HTTP: the same `build_server` wrapped in the SDK's `streamable_http_app()`, behind
the checks a server on a home network needs. Every request, whatever its path or method, passes Host and Origin
(DNS rebinding), then a bearer token (the SDK's bearer middleware over `server.tokens`); a token in the URL is
refused. Inside, each MCP call is checked against its token's rights (read-only tokens never index, cancel or
watch) and a per-token bound on calls at once, and logged to the access log (no queries or paths unless asked)."""

import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any, TextIO
from urllib.parse import parse_qsl

from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import InvalidArgument, UnsafeToServe
from server.tokens import TokenStore

log = logging.getLogger(__name__)
access_log = logging.getLogger("clipsearch.access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MCP_PATH = "/mcp"
MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE  # 4 MiB: a search's arguments are a few hundred bytes
DEFAULT_CALLS_PER_TOKEN = 16
KEEP_ALIVE_SECONDS = 75  # above the clients' own idle timeouts (Node's 5 s, browsers' 60 s), so reuse never races
MAX_CONNECTIONS = 4096  # past it uvicorn answers 503 instead of holding memory for every socket
REQUEST_HEAD_SECONDS = 10.0  # a connection that has not sent a whole request head by then is closed (slowloris)
WRITE_TOOLS = frozenset({"index_folder", "cancel_indexing"})
"""What a read-only token may not call: indexing (which also starts and stops watches) and cancelling jobs."""
URL_TOKEN_PARAMETERS = frozenset({"token", "access_token", "api_key", "apikey", "key", "auth", "authorization"})
PATH_ARGUMENTS = ("folder", "image_path", "path", "paths", "ground_truth", "and_images", "not_images", "model")
ROOTS_NOTE = (
    " Over HTTP, only the folders the server was started with (--root) can be read; roots this client declares "
    "name the client's disk, not the server's, and are ignored."
)
READ_SCOPE, WRITE_SCOPE = "read", "write"


@dataclass(frozen=True)
class HttpOptions:
    """How `clipsearch serve --http` listens and what it lets through."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    allowed_hosts: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    calls_per_token: int = DEFAULT_CALLS_PER_TOKEN
    max_body_bytes: int = MAX_BODY_BYTES
    log_queries: bool = False
    request_head_seconds: float = REQUEST_HEAD_SECONDS

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def url(self, port: int | None = None) -> str:
        host = self.allowed_hosts[0] if self.allowed_hosts and _is_wildcard(self.host) else self.host
        if _is_wildcard(host):
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{port or self.port}{MCP_PATH}"


def parse_listen(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` (an IPv6 host in brackets) as (host, port); the host defaults to loopback."""
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidArgument(f"--http takes [HOST:]PORT, e.g. 8765 or 0.0.0.0:8765; got {text!r}.") from None
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"--http: port {port} is outside 0-65535.")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def check_safe_to_serve(options: HttpOptions, tokens: TokenStore) -> None:
    """Refuse to listen beyond this machine with no token to check, and TLS given by halves."""
    if bool(options.tls_cert) != bool(options.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together: give both, or neither.")
    if not is_loopback(options.host) and not tokens.configured():
        raise UnsafeToServe(
            f"Refusing to serve on {options.host}: that address is reachable from other machines and no token "
            f"exists, so anyone who can reach it could read the photo library. Make one first with "
            f"'clipsearch token add NAME' (tokens live in {tokens.path}), or serve on 127.0.0.1."
        )


def security_settings(options: HttpOptions) -> TransportSecuritySettings:
    """The Host and Origin values a request may carry: loopback names, the address listened on (on every address:
    this machine's name), and each `--allowed-host` (with or without a port, as a reverse proxy may send either)."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if _is_wildcard(options.host):  # the name the start-up lines print, and its mDNS form
        names += [socket.gethostname(), f"{socket.gethostname()}.local"]
    elif not is_loopback(options.host):
        names.append(f"[{options.host}]" if ":" in options.host else options.host)
    names += list(options.allowed_hosts)
    hosts = [pattern for name in names for pattern in (name, f"{name}:*")]
    origins = [f"{scheme}://{pattern}" for scheme in ("http", "https") for pattern in hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class StoreVerifier:
    """The SDK's `TokenVerifier` over our token file: a token's holder becomes its client id and scopes."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        holder = self.tokens.holder(token)
        if holder is None:
            return None
        scopes = [READ_SCOPE] if holder.read_only else [READ_SCOPE, WRITE_SCOPE]
        return AccessToken(token="", client_id=holder.name, scopes=scopes)  # the token itself is kept nowhere


class Gate:
    """The ASGI app in front of the SDK's: Host/Origin first (421/403), then no token in the URL, then a valid bearer
    token (401 with nothing else), on every path and method. Lifespan events pass straight through."""

    def __init__(self, inner: ASGIApp, options: HttpOptions, tokens: TokenStore) -> None:
        self.inner = inner
        self.security = TransportSecurityMiddleware(security_settings(options))
        required = RequireAuthMiddleware(inner, required_scopes=[READ_SCOPE])
        self.authenticated = AuthenticationMiddleware(
            AuthContextMiddleware(required), backend=BearerAuthBackend(StoreVerifier(tokens))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.inner(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        refusal = await self.security.validate_request(Request(scope, receive), is_post=False)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        if any(key.lower() in URL_TOKEN_PARAMETERS for key, _ in parse_qsl(query, keep_blank_values=True)):
            # URLs end up in proxy logs and browser history: such a token counts as leaked, never as valid.
            await _refuse_url_token(scope, receive, send)
            return
        await self.authenticated(scope, receive, send)


async def _refuse_url_token(scope: Scope, receive: Receive, send: Send) -> None:
    body = {
        "error": "invalid_request",
        "error_description": "Tokens are accepted only in the Authorization header, never in the URL; "
        "revoke one sent this way ('clipsearch token revoke NAME').",
    }
    await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_request"'})(
        scope, receive, send
    )


class CallPolicy:
    """MCP middleware for HTTP: read-only tokens refused the write tools, at most `calls_per_token` calls at once
    per token, one access-log line per call. Over stdio there is no token and this is not installed."""

    def __init__(self, calls_per_token: int, log_queries: bool = False) -> None:
        self.calls_per_token = calls_per_token
        self.log_queries = log_queries
        self._lock = Lock()
        self._running: dict[str, int] = {}

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:  # a notification: nothing runs for it
            return await call_next(ctx)
        access = get_access_token()
        holder = access.client_id if access else "-"
        params = dict(ctx.params or {})
        tool = str(params.get("name", "")) if ctx.method == "tools/call" else ""
        started = time.perf_counter()
        outcome = "ok"
        try:
            # Fail closed: over HTTP every call has a token, so a call without one in its context writes nothing.
            if tool in WRITE_TOOLS and (access is None or WRITE_SCOPE not in access.scopes):
                outcome = "refused: read-only"
                return _tool_error(
                    f"The token '{holder}' is read-only: it may search, view, list and evaluate, but {tool} changes "
                    "the library. Ask the server's owner for a token made without --read-only."
                )
            with self._slot(holder) as admitted:
                if not admitted:
                    outcome = "refused: busy"
                    message = (
                        f"The token '{holder}' already has {self.calls_per_token} calls running on this server; "
                        "wait for one to finish and call again."
                    )
                    if tool:
                        return _tool_error(message)
                    raise MCPError(code=-32000, message=message)
                result = await call_next(ctx)
            if result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False):
                outcome = "tool error"
            return result
        except MCPError as exc:
            outcome = outcome if outcome.startswith("refused") else f"error {exc.code}"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._log(ctx, holder, tool, params, time.perf_counter() - started, outcome)

    @contextmanager
    def _slot(self, holder: str) -> Iterator[bool]:
        with self._lock:
            running = self._running.get(holder, 0)
            admitted = running < self.calls_per_token
            if admitted:
                self._running[holder] = running + 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._running[holder] -= 1

    def _log(
        self,
        ctx: ServerRequestContext[Any, Any],
        holder: str,
        tool: str,
        params: dict[str, Any],
        took: float,
        outcome: str,
    ) -> None:
        what = f"{ctx.method} {tool}" if tool else ctx.method
        if ctx.method == "resources/read":
            what += f" {params.get('uri', '')}"  # the resource's URI is ours (ui://...), never a user's path
        line = f"token={holder} call={what} ms={took * 1000:.1f} outcome={outcome}"
        if self.log_queries and tool:
            line += f" arguments={params.get('arguments', {})!r}"
        access_log.info(line)


def _tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


class RootsNote:
    """MCP middleware for HTTP: every tool that reads a path says, in its description, that only the server's
    roots count (a client's declared roots name the client's disk)."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return result
        return {**result, "tools": [_with_roots_note(t) for t in result["tools"]]}


def _with_roots_note(tool: dict[str, Any]) -> dict[str, Any]:
    properties = (tool.get("inputSchema") or {}).get("properties") or {}
    if not any(name in properties for name in PATH_ARGUMENTS):
        return tool
    return {**tool, "description": (tool.get("description") or "") + ROOTS_NOTE}


def http_app(server: MCPServer, options: HttpOptions, tokens: TokenStore) -> ASGIApp:
    """The ASGI app serving `server` at /mcp to holders of `tokens` (none yet: every request refused until one is
    made). Installs the HTTP middleware on `server`, so build a server per app."""
    server.middleware.append(CallPolicy(options.calls_per_token, options.log_queries))
    server.middleware.append(RootsNote())
    inner = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        max_request_body_size=options.max_body_bytes,
        transport_security=security_settings(options),
        host=options.host,
    )
    return Gate(inner, options, tokens)


def bind(options: HttpOptions) -> socket.socket:
    """The listening socket, bound before anything starts (a port in use fails here, clearly); port 0 picks one."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"Cannot listen on {options.host}:{options.port}: {exc.strerror}.") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def head_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, with a deadline for each request's head: uvicorn starts no timer on a connection
    until it has answered a request on it, so a client could hold a connection (and a slot of MAX_CONNECTIONS)
    forever by sending nothing, or a header a byte at a time."""
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request's head starts now
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # its head is in: the request runs

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()

    return HeadDeadlineProtocol


def uvicorn_server(app: ASGIApp, options: HttpOptions) -> Any:
    """uvicorn configured for long-lived MCP clients: keep-alive above theirs, no access log of its own (ours
    names tokens, never URLs), bounded connections, a deadline for request heads, TLS when given."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=head_deadline_protocol(options.request_head_seconds),
        host=options.host,
        port=options.port,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def client_lines(url: str, tokens_exist: bool) -> list[str]:
    """What to paste into Claude Code and VS Code to connect."""
    lines = [
        f"clipsearch: serving MCP over HTTP at {url}",
        "Claude Code:",
        f'  claude mcp add --transport http clipsearch {url} --header "Authorization: Bearer <token>"',
        "VS Code (.vscode/mcp.json):",
        f'  {{"servers": {{"clipsearch": {{"type": "http", "url": "{url}", '
        '"headers": {"Authorization": "Bearer <token>"}}}}',
        "Replace <token> with one printed by 'clipsearch token add NAME' (only its hash is kept).",
    ]
    if not tokens_exist:
        lines.append("No token exists yet: every request is refused until one is made (no restart needed).")
    return lines


def log_to(file: Path | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send the access log to `file` (appended) or `stream` (default stderr), one line per call; returns the
    handler, to remove when the server stops."""
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(stream or sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    return handler


def serve_http(
    server: MCPServer,
    options: HttpOptions,
    tokens: TokenStore,
    say: Callable[[str], None],
    started: Callable[[], None] = lambda: None,
    access_log_file: Path | None = None,
) -> None:
    """Listen until interrupted: one process, one server, every client. Checks first that it is safe to; the
    access log goes to `access_log_file`, else stderr."""
    check_safe_to_serve(options, tokens)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # not a line per session opened: the access log says enough
    listening = bind(options)
    handler = log_to(access_log_file)
    try:
        for line in client_lines(options.url(listening.getsockname()[1]), tokens.configured()):
            say(line)
        started()
        uvicorn_server(http_app(server, options, tokens), options).run(sockets=[listening])
    finally:
        access_log.removeHandler(handler)
        handler.close()
        listening.close()
