"""Many assistants on one HTTP server: concurrent clients searching on loopback while an indexing job runs.

    python -m bench.http --json                          # 32 clients x 200 searches (the issue's size)
    python -m bench.http --clients 8 --searches 50 --json  # smaller, for a busy machine

The server is `clipsearch serve --http`'s own code (`serve_http`) in a child process on 127.0.0.1:0, over a bench
encoder (64-d; text and pixels through fixed random projections; embedding an image sleeps 2 ms, a stand-in for the
model that leaves the CPU to the searches, so what is measured is the server: HTTP, MCP, FAISS, catalog). A library
of `--library` small JPEGs is indexed first. Then two phases, each while an indexing job brings a fresh folder of
`--incoming` images into the same collection (commits every 512 images): one client alone, then `--clients` clients
at once (each with its own token), each making `--searches` text searches (k = 10) one after another over the
Python SDK's Streamable HTTP client. The job is then cancelled: a cancel keeps what it committed and nothing else, so
a result naming an image missing from the final catalog would have been an uncommitted one. Reported: errors, such
results, p50/p99 latency per phase, throughput (searches/s) and its ratio, 32 clients to one. Text is not read
(`ocr: off`), so the job is the embedding stage only.
"""

import argparse
import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.common import emit, machine

DIM = 64
WORDS = ("red", "car", "beach", "dog", "sunset", "mountain", "city", "snow", "forest", "cat", "boat", "bridge")


class BenchEncoder:
    """Deterministic 64-d vectors: pixels (8x8 RGB) and texts (seeded by their hash) through fixed projections."""

    model_name = "bench-http-encoder"
    precision = "fp32"
    model_identity = "sha256:" + "be" * 32
    dim = DIM
    input_size = 8

    def __init__(self, seconds_per_image: float = 0.002) -> None:
        self.seconds_per_image = seconds_per_image
        self.projection = np.random.default_rng(7).standard_normal((192, DIM)).astype(np.float32)

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        return (np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0).reshape(-1)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        time.sleep(self.seconds_per_image * len(batch))  # the model's time, off the CPU the searches share
        return _unit((batch - 0.5) @ self.projection)

    def encode_texts(self, texts: Any) -> npt.NDArray[np.float32]:
        rows = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(DIM)
            for t in texts
        ]
        return _unit(np.asarray(rows, dtype=np.float32))


def _unit(vectors: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def make_images(folder: Path, count: int, seed: int) -> None:
    """`count` distinct 32x32 JPEGs of random colour blocks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(blocks, "RGB").resize((32, 32), Image.Resampling.NEAREST).save(folder / f"img_{i:05d}.jpg")


def serve_child(index_dir: str, root: str, calls_per_token: int) -> None:
    """The child process: `serve --http 127.0.0.1:0`'s code over the bench encoder; prints its URL first."""
    from server.config import Settings
    from server.indexing.background import Background
    from server.mcp_server.http_transport import HttpOptions, serve_http
    from server.mcp_server.server import build_server
    from server.service import ClipSearch
    from server.tokens import TokenStore

    settings = Settings(index_dir=Path(index_dir), model=BenchEncoder.model_name, roots=(Path(root),))
    service = ClipSearch(settings, encoder=BenchEncoder())
    background = Background.over(settings.index_dir, lambda: service)
    server = build_server(service, settings.roots, background=background, client_roots=False)
    options = HttpOptions(host="127.0.0.1", port=0, calls_per_token=calls_per_token)
    say = lambda line: print(line, flush=True)  # noqa: E731
    serve_http(server, options, TokenStore(settings.index_dir), say, access_log_file=Path(index_dir) / "access.log")


async def _client(
    url: str, token: str, queries: list[str], latencies: list[float], paths: set[str], mode: Any = "legacy"
) -> int:
    """One assistant: its searches one after another; returns its errors."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300)) as http,
        Client(streamable_http_client(url, http_client=http), read_timeout_seconds=300, mode=mode) as client,
    ):
        for query in queries:
            started = time.perf_counter()
            try:
                result = await client.call_tool("search_images_by_text", {"query": query, "k": 10})
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if result.is_error or not result.structured_content:
                errors += 1
                continue
            paths.update(hit["path"] for hit in result.structured_content["results"])
    return errors


async def _call(url: str, token: str, name: str, arguments: dict[str, Any], mode: Any = "legacy") -> dict[str, Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60, read=300)) as http,
        Client(streamable_http_client(url, http_client=http), read_timeout_seconds=300, mode=mode) as client,
    ):
        result = await client.call_tool(name, arguments)
        if result.is_error:
            raise RuntimeError(f"{name}: {result.content[0].text}")  # type: ignore[union-attr]
        return result.structured_content or {}


async def _phase(url: str, tokens: list[str], searches: int, incoming: Path, seed: int, mode: str) -> dict[str, Any]:
    """Clients searching while a job indexes `incoming`; the job cancelled after them."""
    job = await _call(url, tokens[0], "index_folder", {"folder": str(incoming), "wait_seconds": 0, "ocr": "off"})
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    paths: set[str] = set()
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(
            _client(url, token, [" ".join(rng.choice(WORDS, 3)) for _ in range(searches)], latencies, paths, mode)
            for token in tokens
        )
    )
    seconds = time.perf_counter() - started
    state = (await _call(url, tokens[0], "index_status", {"job_id": job["job_id"]}))["jobs"][0]
    await _call(url, tokens[0], "cancel_indexing", {"job_id": job["job_id"]})
    done = len(latencies)
    return {
        "clients": len(tokens),
        "searches": done,
        "errors": sum(errors),
        "seconds": round(seconds, 2),
        "searches_per_s": round(done / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
        "job_state_at_end": state["state"],
        "job_done_at_end": state["progress"]["done"],
        "paths": paths,
    }


def _catalog_paths(index_dir: Path) -> set[str]:
    with sqlite3.connect(index_dir / "default" / "catalog.sqlite") as conn:
        rows = conn.execute("SELECT path FROM images").fetchall()
    return {os.fsdecode(path) for (path,) in rows}


def run(clients: int, searches: int, library: int, incoming: int, mode: str) -> dict[str, Any]:
    from server.tokens import TokenStore

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        root, index_dir = Path(tmp) / "photos", Path(tmp) / "index"
        make_images(root / "library", library, seed=1)
        make_images(root / "incoming-alone", incoming, seed=2)
        make_images(root / "incoming-load", incoming, seed=3)
        store = TokenStore(index_dir)
        tokens = [store.add(f"assistant-{i}") for i in range(clients)]
        code = f"from bench.http import serve_child; serve_child({str(index_dir)!r}, {str(root)!r}, 16)"
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            if "serving MCP over HTTP at" not in first:
                raise RuntimeError(f"the server did not start: {first}{child.stderr.read() if child.stderr else ''}")
            url = first.rsplit(" ", 1)[1].strip()
            started = time.perf_counter()
            library_folder = {"folder": str(root / "library"), "wait_seconds": 50, "ocr": "off"}
            asyncio.run(_call(url, tokens[0], "index_folder", library_folder))
            library_seconds = time.perf_counter() - started
            alone = asyncio.run(_phase(url, tokens[:1], searches, root / "incoming-alone", 4, mode))
            load = asyncio.run(_phase(url, tokens, searches, root / "incoming-load", 5, mode))
        finally:
            child.terminate()
            child.wait(timeout=30)
        committed = _catalog_paths(index_dir)
        named = alone.pop("paths") | load.pop("paths")
        incoming_named = sum("/incoming-" in path for path in named)
        return {
            "benchmark": "http",
            "machine": machine(),
            "client_mode": mode,
            "library_images": library,
            "library_index_seconds": round(library_seconds, 2),
            "incoming_images_per_phase": incoming,
            "alone": alone,
            "load": load,
            "throughput_ratio": round(load["searches_per_s"] / alone["searches_per_s"], 3),
            "p99_over_p50_under_load": round(load["p99_ms"] / load["p50_ms"], 2) if load["p50_ms"] else None,
            "results_naming_uncommitted_images": len(named - committed),
            "distinct_incoming_images_in_results": incoming_named,
            "access_log_lines": sum(1 for _ in (index_dir / "access.log").open(encoding="utf-8"))
            if (index_dir / "access.log").exists()
            else 0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--searches", type=int, default=200, help="Per client")
    parser.add_argument("--library", type=int, default=2000, help="Images indexed before the phases")
    parser.add_argument("--incoming", type=int, default=20000, help="Images a job indexes during each phase")
    parser.add_argument(
        "--mode",
        choices=["legacy", "auto"],
        default="legacy",
        help="The clients' protocol: legacy (initialize and a session, as the TypeScript SDK's hosts speak it) or "
        "auto (the Python SDK's default, 2026-07-28 per-request when the server offers it)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(args.clients, args.searches, args.library, args.incoming, args.mode), args.json)


if __name__ == "__main__":
    main()
