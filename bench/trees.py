"""The command line's whole-process cost, this source tree against another (the previous release, say), in one run:
`clipsearch --help` and a `clipsearch search` on the sample photos (ONNX engine), wall time and peak RSS, the two
trees in alternation so that a busy machine slows both alike.

    git worktree add /tmp/previous <commit>
    python -m bench.trees --model DIR --other /tmp/previous --json

Both trees run as `python -P -m server` with their root first on PYTHONPATH, with this interpreter and its packages;
the collection and the ONNX export are made once, by this tree, and read by both (their formats must be the same)."""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import SAMPLES, emit, machine, whole_process
from server.config import Settings
from server.service import ClipSearch

RUNS = 7
COMMANDS = {
    "help": ["--help"],
    "search": ["search", "a rocket launching", "-k", "3", "--engine", "onnx"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint folder (bench.checkpoint writes ViT-B/32)")
    parser.add_argument("--other", required=True, type=Path, help="The other source tree (a checkout's root)")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parent.parent, "other": args.other.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        cache, index_dir = Path(tmp) / "cache", Path(tmp) / "index"
        os.environ["CLIPSEARCH_CACHE"] = str(cache)
        ClipSearch(Settings.load(str(Path(args.model).resolve()), index_dir, engine="onnx")).index_folder(SAMPLES)
        base = {**os.environ, "CLIPSEARCH_INDEX_DIR": str(index_dir), "CLIPSEARCH_MODEL": str(Path(args.model))}

        def once(tree: str, command: str) -> tuple[float, float]:
            env = {**base, "PYTHONPATH": str(trees[tree])}
            return whole_process([sys.executable, "-P", "-m", "server", *COMMANDS[command]], env)

        samples: dict[str, dict[str, list[tuple[float, float]]]] = {t: {c: [] for c in COMMANDS} for t in trees}
        for tree in trees:  # once each, untimed: the OS file cache holds both trees' files
            for command in COMMANDS:
                once(tree, command)
        for _ in range(args.runs):
            for command in COMMANDS:
                for tree in trees:
                    samples[tree][command].append(once(tree, command))

    def summary(tree: str, command: str) -> dict[str, float]:
        runs = samples[tree][command]
        return {
            "median_s": round(statistics.median(s for s, _ in runs), 3),
            "best_s": round(min(s for s, _ in runs), 3),
            "peak_rss_mb": round(max(m for _, m in runs), 1),
        }

    result: dict[str, object] = {"machine": machine(), "runs": args.runs, "other": str(trees["other"])}
    for command in COMMANDS:
        this, other = summary("this", command), summary("other", command)
        result[command] = {"this": this, "other": other, "ratio": round(this["median_s"] / other["median_s"], 3)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
