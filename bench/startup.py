"""MCP server start-up: seconds from process start to the answer to `initialize`, and to the first search result.

    python -m bench.startup --model PATH --json

The sample photos are indexed into a temporary collection first (not timed); then `clipsearch serve` is started
as an MCP client would start it, over stdio, three times; the medians are reported.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from bench.common import SAMPLES, emit, machine
from server.config import Settings
from server.service import ClipSearch

RUNS = 3


async def one_run(model: str, index_dir: Path) -> tuple[float, float]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "serve", "--root", str(SAMPLES), "--model", model],
        env={**os.environ, "CLIPSEARCH_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"},
    )
    started = time.perf_counter()
    async with Client(params, read_timeout_seconds=600) as client:
        initialized = time.perf_counter() - started
        result = await client.call_tool("search_images_by_text", {"query": "a rocket launching", "k": 3})
        searched = time.perf_counter() - started
        if result.is_error:
            raise RuntimeError(result.content[0].text)
    return initialized, searched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        index_dir = Path(folder)
        ClipSearch(Settings.load(args.model, index_dir)).index_folder(SAMPLES)
        runs = [asyncio.run(one_run(args.model, index_dir)) for _ in range(RUNS)]
    out = {
        "machine": machine(),
        "runs": RUNS,
        "initialize_seconds": round(statistics.median(r[0] for r in runs), 3),
        "first_search_seconds": round(statistics.median(r[1] for r in runs), 3),
        "all_runs": [[round(a, 3), round(b, 3)] for a, b in runs],
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
