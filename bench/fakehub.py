"""A local stand-in for the Hugging Face hub, enough for huggingface_hub's downloads: repo info, the file tree,
and `resolve/` with the hub's ETag, commit and size headers (Range requests too). Tests point `HF_ENDPOINT` at it to
download a real (tiny) checkpoint through the real hub library, with no network."""

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class FakeHub:
    """Files per repo id; counts every request so tests can assert that nothing was asked."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    chunk_delay: threading.Event | None = None  # weight file bodies wait for it half-way (slow downloads)
    endpoint: str = ""

    def add_folder(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_id(data)}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(
            self, status: int, body: bytes, headers: dict[str, str], head: bool = False, slow: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            if slow and hub.chunk_delay is not None:
                hub.chunk_delay.wait(timeout=30)
            self.wfile.write(body[half:])

        def _not_found(self, head: bool = False) -> None:
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)

        def _route(self, head: bool) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            path = unquote(urlsplit(self.path).path)
            if match := re.fullmatch(r"/api/models/(.+?)/revision/[^/]+", path):
                files = hub.repos.get(match.group(1))
                if files is None:
                    return self._not_found(head)
                info = {"id": match.group(1), "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
            if match := re.fullmatch(r"/api/models/(.+?)/tree/[^/]+/?", path):
                files = hub.repos.get(match.group(1))
                if files is None:
                    return self._not_found(head)
                tree = [_tree_entry(name, data) for name, data in files.items()]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
            if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)", path):
                files = hub.repos.get(match.group(1))
                if files is None:
                    return self._not_found(head)
                siblings = []
                for name, data in files.items():
                    entry = _tree_entry(name, data)
                    lfs = None
                    if "lfs" in entry:  # the model API names the LFS hash sha256, the tree API oid
                        lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    siblings.append({"rfilename": name, "size": len(data), "blobId": entry["oid"], "lfs": lfs})
                info = {"id": match.group(1), "sha": COMMIT, "siblings": siblings}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
            if match := re.fullmatch(r"/(.+?)/resolve/[^/]+/(.+)", path):
                files = hub.repos.get(match.group(1))
                if files is None or match.group(2) not in files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                data = files[match.group(2)]
                lfs = match.group(2).endswith(LFS_SUFFIXES)
                etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_id(data)
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
                if lfs:
                    headers["X-Linked-Etag"] = f'"{etag}"'
                    headers["X-Linked-Size"] = str(len(data))
                status = 200
                if (ranged := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", ranged)):
                    start = int(m.group(1))
                    stop = int(m.group(2)) + 1 if m.group(2) else len(data)
                    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
                    data, status = data[start:stop], 206
                return self._send(status, data, headers, head, slow=lfs)
            return self._send(404, b"", {}, head)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-body (timeouts under test) are expected


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """Run the fake hub on a free loopback port for the duration of the block; `hub.endpoint` is its URL."""
    server = _QuietServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        if hub.chunk_delay is not None:
            hub.chunk_delay.set()
        server.shutdown()
        server.server_close()


@contextmanager
def silent_endpoint() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint that accepts connections and never answers (a hub behind a network that swallows packets, the
    worst case for timeouts); yields its URL and the list of connections it accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
