"""Offline after the first run: how much longer a command takes with the model cached and no network than with
HF_HUB_OFFLINE=1, and how fast a missing model fails.

    python -m bench.offline --model PATH [--runs 3] --json

PATH is a local checkpoint (e.g. from `python -m bench.checkpoint`). It is put into a fresh Hugging Face cache under
the hub name `openai/clip-vit-base-patch32` by downloading it from a local stand-in of the hub (bench/fakehub.py),
as a first run would. Then each command runs as a fresh `clipsearch` process, alternating between the two settings:
`HF_HUB_OFFLINE=1`, and offline mode unset with the hub unreachable. "Unreachable" is measured two ways: the real
hub address (on a machine without network, its name does not resolve) and a local port that accepts connections but
never answers (a network that swallows packets: the worst case for timeouts). Medians over `--runs`.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import SAMPLES, emit, machine
from bench.fakehub import FakeHub, serve, silent_endpoint

HUB_NAME = "openai/clip-vit-base-patch32"
REAL_HUB = "https://huggingface.co"


def timed(env: dict[str, str], *args: str) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    return time.perf_counter() - started, done.returncode, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, silent_endpoint() as (silent, _):
        work = Path(folder)
        base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        base.update(HF_HOME=str(work / "hf"), CLIPSEARCH_INDEX_DIR=str(work / "index"))
        hub = FakeHub()
        hub.add_folder(HUB_NAME, args.model)
        with serve(hub):
            first_run, code, err = timed({**base, "HF_ENDPOINT": hub.endpoint}, "index", str(SAMPLES), "-c", "warm")
        if code != 0:
            raise SystemExit(f"first run failed: {err.strip()}")
        settings = {
            "hf_hub_offline": {**base, "HF_HUB_OFFLINE": "1"},
            "no_network_real_hub": {**base, "HF_ENDPOINT": REAL_HUB},
            "no_network_silent_hub": {**base, "HF_ENDPOINT": silent},
        }
        commands = {
            "index": ("index", str(SAMPLES)),
            "search": ("search", "a rocket launching", "-k", "3"),
        }
        seconds: dict[str, dict[str, list[float]]] = {c: {s: [] for s in settings} for c in commands}
        stderr_lines: dict[str, int] = {s: 0 for s in settings}
        for _ in range(args.runs):
            for command, argv in commands.items():
                for name, env in settings.items():
                    if command == "index":  # a fresh collection each time: the whole run is measured
                        shutil.rmtree(work / "index" / "default", ignore_errors=True)
                    elapsed, code, err = timed(env, *argv)
                    if code != 0:
                        raise SystemExit(f"{command} with {name} failed: {err.strip()}")
                    seconds[command][name].append(elapsed)
                    stderr_lines[name] += len(err.splitlines())
        missing: dict[str, float] = {}
        for name in ("no_network_real_hub", "no_network_silent_hub"):
            env = {**settings[name], "HF_HOME": str(work / "empty-hf")}
            elapsed, code, _ = timed(env, "index", str(SAMPLES), "-c", "never-made")
            missing[name] = round(elapsed, 2) if code == 2 else float("nan")
    medians = {c: {s: round(statistics.median(v), 3) for s, v in by.items()} for c, by in seconds.items()}
    out = {
        "machine": machine(),
        "runs": args.runs,
        "first_run_seconds": round(first_run, 2),
        "median_seconds": medians,
        "extra_seconds_vs_hf_hub_offline": {
            c: {s: round(v - by["hf_hub_offline"], 3) for s, v in by.items() if s != "hf_hub_offline"}
            for c, by in medians.items()
        },
        "stderr_lines_per_setting": stderr_lines,
        "missing_model_fails_after_seconds": missing,
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
