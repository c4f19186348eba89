"""Long indexing through a real MCP host client: the official TypeScript SDK at its default 60 s request timeout.

    python -m bench.host_check --model PATH [--images 1500] --json

Makes a folder of photos large enough to take minutes to index (default 1,500 at 640×480), indexes it through
`clipsearch serve` driven by `bench/mcp_host/long_index.mjs` (index_folder, then index_status with wait_seconds=30
and a search after each, until done), then indexes the same folder with the CLI into another index directory, and
reports every call's duration and whether both runs end with the same counts. Needs Node.js and
`npm install` in bench/mcp_host (the npm registry).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, machine, make_photos

HOST = Path(__file__).resolve().parent / "mcp_host"
COUNTS = ("indexed_total", "added", "updated", "moved", "unchanged", "removed", "failed", "embedded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (HOST / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HOST, check=True, capture_output=True)
    bin_path = shutil.which("clipsearch") or str(Path(sys.executable).parent / "clipsearch")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        photos = work / "photos"
        make_photos(photos, args.images, size=(640, 480))
        done = subprocess.run(
            ["node", str(HOST / "long_index.mjs"), bin_path, str(photos), args.model, str(work / "index-mcp")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"host check failed: {done.stderr.strip()[-2000:]}")
        host = json.loads(done.stdout.strip().splitlines()[-1])
        started = time.perf_counter()
        cli = subprocess.run(
            [bin_path, "index", str(photos), "--json", "--model", args.model, "--index-dir", str(work / "index-cli")],
            capture_output=True,
            text=True,
            check=True,
        )
        cli_seconds = time.perf_counter() - started
        cli_report = json.loads(cli.stdout)
    report = host["report"] or {}
    out = {
        "machine": machine(),
        "images": args.images,
        "host_client": host["sdk"],
        "final_state": host["state"],
        "first_call_state": host["first_state"],
        "total_seconds": host["total_seconds"],
        "tool_calls": host["calls"],
        "max_call_seconds": host["max_call_seconds"],
        "searches_during_run": host["searches"],
        "cli_seconds": round(cli_seconds, 1),
        "same_counts_as_cli": {key: (report.get(key), cli_report[key]) for key in COUNTS},
        "counts_equal": all(report.get(key) == cli_report[key] for key in COUNTS if key != "embedded"),
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
