"""Run every benchmark, each in a fresh process, and print one JSON object with all results.

    python -m bench --model PATH [--images 96] [--vectors 1000000] [--text-vectors 100000]

PATH is any local CLIP checkpoint; `python -m bench.checkpoint PATH` writes one with random ViT-B/32 weights
(add `--bpe bpe_simple_vocab_16e6.txt.gz` for CLIP's real tokenizer, so text queries cost what they really cost).
"""

import argparse
import json
import subprocess
import sys


def run(module: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", default="96")
    parser.add_argument("--vectors", default="1000000")
    parser.add_argument("--text-vectors", default="100000")
    parser.add_argument("--eval-images", default="10000")
    args = parser.parse_args()
    results = {
        "indexing": run("indexing", "--model", args.model, "--images", args.images),
        "search": run("search", "--vectors", args.vectors),
        "text_query": run("search", "--vectors", args.text_vectors, "--model", args.model),
        "startup": run("startup", "--model", args.model),
        "evaluation": run("evaluation", "--images", args.eval_images),
        "offline": run("offline", "--model", args.model),
        "engines": run("engines", "--model", args.model, "--vectors", args.text_vectors),
        "index_process": run("index_process", "--model", args.model, "--images", "48"),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
