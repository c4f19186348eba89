"""`clipsearch serve --http`: a real uvicorn server on 127.0.0.1 (an ephemeral port, in a thread) over the fake
encoder, reached with the SDK's Streamable HTTP client and with raw requests: tokens, the auth matrix on every
method, read-only tokens, Host/Origin, bodies, calls at once per token, the access log, one job seen by every
client, and the official TypeScript SDK client running the tool set."""

import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import COLORS, FakeEncoder, FakeRecognizer, call, error_text, save_color, until
from server.cli.main import main
from server.config import Settings
from server.indexing.background import Background
from server.mcp_server.http_transport import (
    KEEP_ALIVE_SECONDS,
    MCP_PATH,
    HttpOptions,
    bind,
    client_lines,
    http_app,
    parse_listen,
    uvicorn_server,
)
from server.mcp_server.server import build_server
from server.service import ClipSearch
from server.tokens import TokenStore

pytestmark = pytest.mark.anyio

BROWSER = Path(__file__).resolve().parent / "browser"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Running:
    """A server listening on loopback, its token file and what serves behind it."""

    url: str
    tokens: TokenStore
    service: ClipSearch
    background: Background
    verify: ssl.SSLContext | bool = True

    def post(self, body: Any, token: str | None = None, **options: Any) -> httpx2.Response:
        return self.request("POST", body=body, token=token, **options)

    def request(
        self,
        method: str,
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        url: str | None = None,
        content: bytes | None = None,
    ) -> httpx2.Response:
        sent = {**ACCEPT, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = content if content is not None else (json.dumps(body).encode() if body is not None else None)
        with httpx2.Client(timeout=30, verify=self.verify) as client:
            return client.request(method, url or self.url, headers=sent, content=data)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in ("red", "green", "blue"):
        for i in range(3):
            save_color(root / name / f"{name}_{i}.jpg", COLORS[name])
    return root


@pytest.fixture
def http_service(index_dir: Path) -> ClipSearch:
    return ClipSearch(
        Settings(index_dir=index_dir, model=FakeEncoder.model_name), encoder=FakeEncoder(), recognizer=FakeRecognizer()
    )


@contextmanager
def running(
    service: ClipSearch, roots: tuple[Path, ...], client_roots: bool = False, **options: Any
) -> Iterator[Running]:
    """`serve --http 127.0.0.1:0` in a thread: the same app, uvicorn configuration and Background as the command
    (`client_roots` only to show what the command's False prevents)."""
    tokens = TokenStore(service.store.index_dir)
    background = Background.over(service.store.index_dir, lambda: service)
    server = build_server(service, roots, background=background, client_roots=client_roots)
    http = HttpOptions(host="127.0.0.1", port=0, **options)
    sock = bind(http)
    port = sock.getsockname()[1]
    uv = uvicorn_server(http_app(server, http, tokens), http)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: uv.started, "the HTTP server to start")
    try:
        verify = ssl.create_default_context(cafile=str(http.tls_cert)) if http.tls_cert else True
        yield Running(f"{http.scheme}://127.0.0.1:{port}{MCP_PATH}", tokens, service, background, verify)
    finally:
        uv.should_exit = True
        thread.join(15)
        background.close()
        sock.close()


@pytest.fixture
def live(http_service: ClipSearch, photos: Path) -> Iterator[Running]:
    with running(http_service, (photos,)) as server:
        yield server


@asynccontextmanager
async def connect(
    url: str,
    token: str | None,
    headers: dict[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
    **options: Any,
) -> AsyncIterator[Client]:
    """The Python SDK's Streamable HTTP client with a bearer token; `options` go to the client."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with (
        httpx2.AsyncClient(headers=sent, timeout=httpx2.Timeout(30, read=120), verify=verify) as http,
        Client(streamable_http_client(url, http_client=http), read_timeout_seconds=120, **options) as client,
    ):
        yield client


def refused_without_data(response: httpx2.Response, status: int = 401) -> None:
    """Refused with `status`, and the body is the refusal's few words, never a result."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    if status == 401:
        assert set(response.json()) <= {"error", "error_description"}
        assert response.headers["www-authenticate"].startswith("Bearer")
    for leak in ('"result"', "serverInfo", "red_0", '"tools"', "<html"):
        assert leak not in response.text


# --- tokens -------------------------------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_its_hash_in_an_owner_only_file(index_dir: Path) -> None:
    store = TokenStore(index_dir)
    token = store.add("laptop")
    text = store.path.read_text(encoding="utf-8")
    assert token not in text and token.startswith("cs_") and len(token) > 40
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert [(e.name, e.read_only) for e in store.entries()] == [("laptop", False)]
    assert store.holder(token).name == "laptop"  # type: ignore[union-attr]
    assert store.holder(token + "x") is None and store.holder("") is None


def test_a_revocation_by_another_process_holds_at_the_next_check(index_dir: Path) -> None:
    server_side, cli_side = TokenStore(index_dir), TokenStore(index_dir)
    token = cli_side.add("phone", read_only=True)
    assert server_side.holder(token).read_only is True  # type: ignore[union-attr]
    cli_side.revoke("phone")
    assert server_side.holder(token) is None


def test_token_names_are_unique_and_revoking_an_unknown_one_fails(index_dir: Path) -> None:
    from server.errors import InvalidArgument

    store = TokenStore(index_dir)
    store.add("a")
    with pytest.raises(InvalidArgument, match="exists already"):
        store.add("a")
    with pytest.raises(InvalidArgument, match="No token is named"):
        store.revoke("b")
    with pytest.raises(InvalidArgument, match="Invalid token name"):
        store.add("../x")


def test_a_damaged_token_file_admits_nobody(index_dir: Path) -> None:
    store = TokenStore(index_dir)
    token = store.add("a")
    store.path.write_text("{not json", encoding="utf-8")
    assert store.holder(token) is None


def test_the_token_commands_add_list_and_revoke(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "add", "alice", "--index-dir", str(index_dir)]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "add", "kid", "--read-only", "--index-dir", str(index_dir)]) == 0
    capsys.readouterr()
    assert main(["token", "list", "--json", "--index-dir", str(index_dir)]) == 0
    listed = json.loads(capsys.readouterr().out)["tokens"]
    assert [(t["name"], t["read_only"]) for t in listed] == [("alice", False), ("kid", True)]
    assert token not in json.dumps(listed)
    assert main(["token", "revoke", "alice", "--index-dir", str(index_dir)]) == 0
    assert TokenStore(index_dir).holder(token) is None
    assert main(["token", "revoke", "alice", "--index-dir", str(index_dir)]) == 2
    assert "No token is named 'alice'" in capsys.readouterr().err


# --- starting --------------------------------------------------------------------------------------------------------


def test_serving_beyond_loopback_without_a_token_refuses_to_start(
    index_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--http", "0.0.0.0:0", "--index-dir", str(index_dir)], make_service=_never)
    assert code == 2
    err = capsys.readouterr().err
    assert "Refusing to serve on 0.0.0.0" in err and "clipsearch token add" in err


def _never(*args: Any, **options: Any) -> ClipSearch:
    raise AssertionError("no service may be made")


def test_the_listen_address_defaults_to_loopback_and_reads_ipv6() -> None:
    assert parse_listen("8765") == ("127.0.0.1", 8765)
    assert parse_listen("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:8765") == ("::1", 8765)


def test_the_start_up_lines_name_the_url_for_claude_code_and_vs_code() -> None:
    lines = client_lines("http://127.0.0.1:8765/mcp", tokens_exist=True)
    assert (
        '  claude mcp add --transport http clipsearch http://127.0.0.1:8765/mcp --header "Authorization: Bearer '
        '<token>"' in lines
    )
    vs_code = json.loads(lines[lines.index("VS Code (.vscode/mcp.json):") + 1])
    assert vs_code == {
        "servers": {
            "clipsearch": {
                "type": "http",
                "url": "http://127.0.0.1:8765/mcp",
                "headers": {"Authorization": "Bearer <token>"},
            }
        }
    }


def test_on_every_address_the_machines_own_name_is_an_allowed_host() -> None:
    import socket

    from server.mcp_server.http_transport import security_settings

    wildcard = security_settings(HttpOptions(host="0.0.0.0"))
    assert f"{socket.gethostname()}:*" in wildcard.allowed_hosts
    assert "evil.example:*" not in wildcard.allowed_hosts
    one = security_settings(HttpOptions(host="192.168.1.5", allowed_hosts=("nas.local",)))
    assert {"192.168.1.5:*", "nas.local", "nas.local:*"} <= set(one.allowed_hosts)
    assert "https://nas.local" in one.allowed_origins and socket.gethostname() + ":*" not in one.allowed_hosts


def test_keep_alive_outlasts_the_clients_idle_timeouts(http_service: ClipSearch) -> None:
    options = HttpOptions(port=0)
    server = build_server(http_service, (), client_roots=False)
    config = uvicorn_server(http_app(server, options, TokenStore(http_service.store.index_dir)), options).config
    assert config.timeout_keep_alive == KEEP_ALIVE_SECONDS >= 65
    assert config.access_log is False  # uvicorn's log would print URLs; ours names tokens


# --- the auth matrix ---------------------------------------------------------------------------------------------


def test_no_method_on_any_path_answers_without_a_valid_token(live: Running) -> None:
    good = live.tokens.add("good")
    revoked = live.tokens.add("gone")
    live.tokens.revoke("gone")
    other_paths = [live.url, live.url.replace(MCP_PATH, "/"), live.url.replace(MCP_PATH, "/anything")]
    for url in other_paths:
        for method in ("POST", "GET", "DELETE", "PUT", "OPTIONS"):
            for token in (None, "wrong", "cs_" + "A" * 43, revoked, good[:-1]):
                refused_without_data(live.request(method, INIT, token=token, url=url))
            # Another scheme than Bearer is not a token either.
            refused_without_data(live.request(method, INIT, headers={"Authorization": f"Basic {good}"}, url=url))


def test_a_token_in_the_query_string_is_refused_even_beside_a_valid_header(live: Running) -> None:
    good = live.tokens.add("good")
    for name in ("token", "access_token", "api_key"):
        for method in ("POST", "GET", "DELETE"):
            url = f"{live.url}?{name}={good}"
            refused_without_data(live.request(method, INIT, url=url))
            refused_without_data(live.request(method, INIT, token=good, url=url))


async def test_a_token_revoked_while_the_server_runs_is_refused_from_its_next_request(live: Running) -> None:
    token = live.tokens.add("laptop")
    async with connect(live.url, token) as client:
        listed = await call(client, "list_collections")
        assert not listed.is_error
        TokenStore(live.tokens.path.parent).revoke("laptop")  # as `clipsearch token revoke` does, from outside
        with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as its transport's error
            await call(client, "list_collections")
    refused_without_data(live.post(INIT, token=token))


async def test_a_session_answers_only_the_token_that_opened_it(live: Running) -> None:
    alice, bob = live.tokens.add("alice"), live.tokens.add("bob")
    opened = live.post(INIT, token=alice)
    assert opened.status_code == 200
    session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    read = {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "ui://clipsearch/gallery.html"}}
    thumbnails = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "get_thumbnails", "arguments": {"paths": ["/etc/hostname"]}},
    }
    for body in (read, thumbnails):
        refused_without_data(live.post(body, headers=session))  # no token
        refused_without_data(live.post(body, token="wrong", headers=session))
        refused_without_data(live.post(body, token=bob, headers=session), status=404)  # as if it did not exist
    for method in ("GET", "DELETE"):
        refused_without_data(live.request(method, headers=session))
        refused_without_data(live.request(method, token=bob, headers=session), status=404)


async def test_a_read_only_token_searches_but_never_indexes_cancels_or_watches(live: Running, photos: Path) -> None:
    writer, reader = live.tokens.add("owner"), live.tokens.add("guest", read_only=True)
    async with connect(live.url, writer) as client:
        done = await call(client, "index_folder", folder=str(photos), wait_seconds=20)
        assert not done.is_error and done.structured_content["indexed_total"] == 9
        job_id = done.structured_content["job_id"]
    async with connect(live.url, reader) as client:
        found = await call(client, "search_images_by_text", query="red", k=3)
        assert not found.is_error
        assert [Path(h["path"]).parent.name for h in found.structured_content["results"]] == ["red"] * 3
        assert not (await call(client, "list_collections")).is_error
        assert not (await call(client, "index_status")).is_error
        for name, arguments in (
            ("index_folder", {"folder": str(photos)}),
            ("index_folder", {"folder": str(photos), "watch": True}),
            ("cancel_indexing", {"job_id": job_id}),
        ):
            refused = await client.call_tool(name, arguments)
            assert "read-only" in error_text(refused) and name in error_text(refused)
    assert live.background.watcher.watched() == []
    assert len(live.background.jobs.recent().jobs) == 1  # only the writer's


async def test_a_job_one_client_starts_is_seen_by_another(live: Running, photos: Path) -> None:
    first, second = live.tokens.add("first"), live.tokens.add("second", read_only=True)
    async with connect(live.url, first) as one, connect(live.url, second) as other:
        started = await call(one, "index_folder", folder=str(photos), wait_seconds=0)
        job_id = started.structured_content["job_id"]
        for _ in range(100):  # each answer comes when the job changes; bounded
            seen = (await call(other, "index_status", job_id=job_id, wait_seconds=10)).structured_content["jobs"][0]
            assert seen["job_id"] == job_id
            if seen["state"] not in ("queued", "running"):
                break
        assert seen["state"] == "done"
        listing = (await call(other, "index_status")).structured_content["jobs"]
        assert [j["job_id"] for j in listing] == [job_id]
        listed = await call(other, "list_collections")
        assert listed.structured_content["collections"][0]["images"] == 9


async def test_client_declared_roots_are_ignored_over_http(http_service: ClipSearch, photos: Path) -> None:
    import mcp.types as types

    async def declare_photos(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=photos.as_uri(), name="photos")])

    # A session client (the 2025 protocol) can be asked for its roots; the per-request protocol never can.
    declaring = {"list_roots_callback": declare_photos, "mode": "legacy"}
    with running(http_service, ()) as live:
        token = live.tokens.add("t")
        async with connect(live.url, token, **declaring) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert "roots this client declares" in (tools["index_folder"].description or "")
            assert "roots this client declares" not in (tools["list_collections"].description or "")
            refused = await call(client, "index_folder", folder=str(photos))
            assert "outside the folders" in error_text(refused) or "no folders" in error_text(refused).lower()
    assert live.background.jobs.recent().jobs == []
    with running(http_service, (), client_roots=True) as live:  # what client_roots=False prevents
        async with connect(live.url, live.tokens.add("u"), **declaring) as client:
            assert not (await call(client, "index_folder", folder=str(photos), wait_seconds=20)).is_error


# --- the transport's defences --------------------------------------------------------------------------------------


def test_a_hostile_host_or_origin_is_refused_before_any_tool_runs(live: Running, photos: Path) -> None:
    token = live.tokens.add("t")
    index = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "index_folder", "arguments": {"folder": str(photos)}},
    }
    for body in (INIT, index):
        refused_without_data(live.post(body, token=token, headers={"Host": "evil.example"}), status=421)
        refused_without_data(live.post(body, token=token, headers={"Origin": "http://evil.example"}), status=403)
        refused_without_data(live.post(body, headers={"Host": "evil.example"}), status=421)
    assert live.background.jobs.recent().jobs == []
    assert live.post(INIT, token=token, headers={"Origin": "http://localhost:3000"}).status_code == 200


def test_an_allowed_host_name_is_let_through(http_service: ClipSearch, photos: Path) -> None:
    with running(http_service, (photos,), allowed_hosts=("nas.local",)) as live:
        token = live.tokens.add("t")
        assert live.post(INIT, token=token, headers={"Host": "nas.local"}).status_code == 200
        assert live.post(INIT, token=token, headers={"Host": "nas.local:8765"}).status_code == 200
        assert live.post(INIT, token=token, headers={"Origin": "https://nas.local"}).status_code == 200
        assert live.post(INIT, token=token, headers={"Host": "nas.evil"}).status_code == 421


async def test_malformed_json_and_a_huge_body_get_4xx_and_the_server_keeps_answering(live: Running) -> None:
    token = live.tokens.add("t")
    bad = live.request("POST", token=token, content=b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert 400 <= bad.status_code < 500
    huge = live.request("POST", token=token, content=b'{"x": "' + b"a" * (5 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413
    refused_without_data(live.request("POST", content=b"a" * (5 * 1024 * 1024)))  # no token: 401 first
    async with connect(live.url, token) as client:
        assert not (await call(client, "list_collections")).is_error


class HeldEncoder(FakeEncoder):
    """The fake encoder, holding every text query until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode_texts(self, texts: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return super().encode_texts(texts)


async def test_calls_past_a_tokens_limit_get_a_clear_error_and_other_tokens_go_on(
    index_dir: Path, photos: Path
) -> None:
    import anyio

    encoder = HeldEncoder()
    service = ClipSearch(Settings(index_dir=index_dir, model=encoder.model_name), encoder=encoder)
    with running(service, (photos,), calls_per_token=1) as live:
        busy, other = live.tokens.add("busy"), live.tokens.add("other")
        async with connect(live.url, busy) as one, connect(live.url, busy) as two, connect(live.url, other) as three:
            assert not (await call(one, "index_folder", folder=str(photos), wait_seconds=20)).is_error
            held: list[Any] = []
            async with anyio.create_task_group() as group:

                async def first() -> None:
                    held.append(await call(one, "search_images_by_text", query="red"))

                group.start_soon(first)
                await anyio.to_thread.run_sync(lambda: encoder.entered.wait(20))
                second = await call(two, "search_images_by_text", query="blue")
                assert "already has 1 calls running" in error_text(second)
                assert not (await call(three, "list_collections")).is_error
                encoder.release.set()
            assert not held[0].is_error
            assert not (await call(two, "search_images_by_text", query="blue")).is_error


async def test_the_access_log_names_token_tool_and_outcome_never_the_query(
    live: Running, caplog: pytest.LogCaptureFixture
) -> None:
    token = live.tokens.add("alice", read_only=True)
    with caplog.at_level(logging.INFO, logger="clipsearch.access"):
        async with connect(live.url, token) as client:
            await call(client, "search_images_by_text", query="a secret red bicycle")
            await call(client, "index_folder", folder="/private/holiday")
    lines = [r.getMessage() for r in caplog.records if r.name == "clipsearch.access"]
    assert any("token=alice call=tools/call search_images_by_text" in line for line in lines)
    assert any("index_folder" in line and "outcome=refused: read-only" in line for line in lines)
    assert all("ms=" in line for line in lines)
    assert "secret" not in caplog.text and "holiday" not in caplog.text and token not in caplog.text


async def test_with_log_queries_the_access_log_has_the_arguments(
    http_service: ClipSearch, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running(http_service, (photos,), log_queries=True) as live:
        token = live.tokens.add("alice")
        with caplog.at_level(logging.INFO, logger="clipsearch.access"):
            async with connect(live.url, token) as client:
                await call(client, "search_images_by_text", query="a red bicycle")
    assert "a red bicycle" in caplog.text and token not in caplog.text


# --- the official TypeScript SDK client -------------------------------------------------------------------------


def test_the_typescript_sdk_client_runs_the_tool_set_with_a_token(live: Running, photos: Path) -> None:
    node = shutil.which("node")
    if node is None or not (BROWSER / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        if os.environ.get("CLIPSEARCH_BROWSER_TESTS") == "required":
            pytest.fail("node or @modelcontextprotocol/sdk missing: npm ci --prefix tests/browser")
        pytest.skip("node or @modelcontextprotocol/sdk missing (npm ci --prefix tests/browser)")
    token = live.tokens.add("ts-client")
    done = subprocess.run(
        [node, str(BROWSER / "http_client.mjs"), live.url, str(photos)],
        env={**os.environ, "CLIPSEARCH_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["refused_without_token"] == 401
    assert seen["job_state"] == "done" and seen["indexed_total"] == 9
    assert seen["search_top_folders"] == ["red", "red", "red"]
    assert Path(seen["similar_top"]).name == "blue_0.jpg"
    assert seen["view_mime"] == "image/jpeg"
    assert seen["duplicates_state"] == "done" and seen["duplicates_images"] == 9
    assert seen["evaluate_queries"] == 3
    assert seen["gallery_mime"] == "text/html;profile=mcp-app" and "<html" in seen["gallery_start"].lower()


# --- the command itself, and what it survives --------------------------------------------------------------------


async def test_the_serve_command_prints_its_url_and_serves_every_client_until_terminated(
    tiny_clip: Path, tmp_path: Path
) -> None:
    import signal
    import sys

    index = tmp_path / "index"
    token = TokenStore(index).add("laptop")
    samples = Path(__file__).resolve().parent.parent / "samples"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--http",
            "127.0.0.1:0",
            "--root",
            str(samples),
            "--model",
            str(tiny_clip),
            "--index-dir",
            str(index),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("clipsearch: serving MCP over HTTP at http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[1].strip()
        lines = [process.stdout.readline().strip() for _ in range(5)]
        assert f'claude mcp add --transport http clipsearch {url} --header "Authorization: Bearer <token>"' in lines
        async with connect(url, token) as one, connect(url, token) as two:
            indexed = (await call(one, "index_folder", folder=str(samples), wait_seconds=40)).structured_content
            job_id = indexed["job_id"]
            for _ in range(60):  # a busy machine may take longer than one call to export and load the model
                if indexed.get("indexed_total") is not None:
                    break
                job = (await call(one, "index_status", job_id=job_id, wait_seconds=10)).structured_content["jobs"][0]
                indexed = job["report"] or {}
            assert indexed["indexed_total"] == 9, indexed
            listed = await call(two, "list_collections")
            assert listed.structured_content["collections"][0]["images"] == 9
        with httpx2.Client(timeout=30) as raw:
            refused_without_data(raw.post(url, headers=ACCEPT, content=json.dumps(INIT).encode()))
    except Exception:
        process.kill()
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal it caught: the exit systemd expects of a stopped unit.
    assert process.returncode == -signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "token=laptop call=tools/call index_folder" in err and token not in err


async def test_with_a_certificate_the_server_speaks_https_only(
    http_service: ClipSearch, photos: Path, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with running(http_service, (photos,), tls_cert=cert, tls_key=key) as live:
        assert live.url.startswith("https://")
        token = live.tokens.add("t")
        async with connect(live.url, token, verify=live.verify) as client:
            assert not (await call(client, "list_collections")).is_error
        refused_without_data(live.post(INIT))
        with httpx2.Client(timeout=10) as plain, pytest.raises(httpx2.HTTPError):
            plain.post(live.url.replace("https://", "http://"), headers=ACCEPT, content=json.dumps(INIT).encode())


def test_tls_needs_both_the_certificate_and_its_key(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--http", "0", "--tls-cert", "c.pem", "--index-dir", str(index_dir)], make_service=_never)
    assert code == 2 and "--tls-cert and --tls-key go together" in capsys.readouterr().err


async def test_slow_and_silent_connections_are_closed_and_the_server_keeps_answering(
    http_service: ClipSearch, photos: Path
) -> None:
    import socket

    with running(http_service, (photos,), request_head_seconds=1.0) as live:
        token = live.tokens.add("t")
        port = int(live.url.rsplit(":", 1)[1].split("/")[0])
        idle = []
        try:
            for i in range(300):  # slow clients: half a request head (or nothing at all), then silence
                sock = socket.create_connection(("127.0.0.1", port), timeout=20)
                if i % 2:
                    sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + str(i).encode())
                idle.append(sock)
            async with connect(live.url, token) as client:
                assert not (await call(client, "list_collections")).is_error
                # Each is closed once its head is overdue (recv sees the end), while the client's session lives on.
                assert all(sock.recv(1024) == b"" for sock in idle)
                assert not (await call(client, "list_collections")).is_error
        finally:
            for sock in idle:
                sock.close()


HTTP_SERVER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import FakeEncoder, FakeRecognizer
from server.cli.main import main
from server.indexing.indexer import Indexer
from server.service import ClipSearch

class SlowEncoder(FakeEncoder):
    def encode_pixels(self, batch):
        time.sleep(0.05)  # long enough to be killed mid-job, not a wait for a condition
        return super().encode_pixels(batch)

def slow_service(settings, **options):
    encoder = SlowEncoder()
    indexer = Indexer(encoder, workers=2, batch_size=2, commit_every=2)
    return ClipSearch(settings, encoder=encoder, indexer=indexer, recognizer=FakeRecognizer(), **options)

sys.exit(main(sys.argv[1:], make_service=slow_service))
"""


def _start_http_server(index: Path, folder: Path) -> tuple[subprocess.Popen[str], str]:
    import sys

    tests = Path(__file__).resolve().parent
    code = HTTP_SERVER.format(root=str(tests.parent), tests=str(tests))
    args = ["serve", "--http", "127.0.0.1:0", "--root", str(folder), "--index-dir", str(index)]
    args += ["--model", FakeEncoder.model_name]
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    assert "serving MCP over HTTP at" in first, first
    return child, first.rsplit(" ", 1)[1].strip()


async def test_a_server_sigkilled_mid_job_under_searches_restarts_consistent_and_resumes_the_job(
    tmp_path: Path, index_dir: Path
) -> None:
    from server.store.collection_store import CollectionStore

    folder = tmp_path / "many"
    for i in range(60):
        name = ["red", "green", "blue"][i % 3]
        save_color(folder / name / f"img_{i:03d}.jpg", COLORS[name])
    token = TokenStore(index_dir).add("t")
    child, url = _start_http_server(index_dir, folder)
    try:
        async with connect(url, token) as indexer, connect(url, token) as searcher:
            job_id = (await call(indexer, "index_folder", folder=str(folder), wait_seconds=0)).structured_content[
                "job_id"
            ]
            for _ in range(500):  # searches meanwhile, until part of the folder is in; bounded
                found = await call(searcher, "search_images_by_text", query="red", k=5)
                # Before the first commit there is no collection yet to search.
                assert not found.is_error or "No collection" in error_text(found), found.content
                done = (await call(searcher, "index_status", job_id=job_id)).structured_content["jobs"][0]
                if done["progress"]["done"] >= 10:
                    break
            assert done["state"] == "running", json.dumps(done)[-1500:]
    finally:
        child.kill()  # SIGKILL: no clean-up of any kind
        child.wait(timeout=30)

    collection = CollectionStore(index_dir).open("default", FakeEncoder.model_name)
    assert 0 < collection.count() == collection.ntotal < 60  # what was committed, catalog and FAISS alike
    collection.close()

    child, url = _start_http_server(index_dir, folder)
    try:
        async with connect(url, token) as client:
            for _ in range(100):
                status = (await call(client, "index_status", job_id=job_id, wait_seconds=10)).structured_content
                if status["jobs"][0]["state"] not in ("queued", "running", "interrupted"):
                    break
            assert status["jobs"][0]["state"] == "done"
            assert status["jobs"][0]["report"]["indexed_total"] == 60
            found = await call(client, "search_images_by_text", query="red", k=20)
            assert [Path(h["path"]).parent.name for h in found.structured_content["results"]] == ["red"] * 20
    finally:
        child.terminate()
        child.wait(timeout=30)
    record = json.loads((index_dir / "default" / "jobs" / f"{job_id}.json").read_text(encoding="utf-8"))
    assert record["resumed"] == 1
