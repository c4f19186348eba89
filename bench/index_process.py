"""Indexing as a user meets it, whole process, imports and model load included: `clipsearch index` of N photo-sized
JPEGs with each engine (ONNX fp32, torch, and an int8 collection), against the naive script (PIL full decode,
transformers' CLIP image processor, the model, batch 32, in one process), in alternation; wall time and peak RSS.

    python -m bench.index_process --model DIR --images 48 --json

Each `clipsearch index` run writes a fresh collection (every photo embedded). The ONNX exports are made before the
timed runs (once per model on a user's machine too); the checkpoint should be the random-weight ViT-B/32 of
`bench.checkpoint` (the real cost)."""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import emit, machine, make_photos, whole_process

RUNS = 3
CLI = "import sys; from server.cli.main import main; sys.exit(main(sys.argv[1:]))"
NAIVE = """
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel

model = CLIPModel.from_pretrained(sys.argv[1]).eval()
processor = CLIPImageProcessorPil.from_pretrained(sys.argv[1])
paths = sorted(Path(sys.argv[2]).glob("*.jpg"))
vectors = []
with torch.inference_mode():
    for start in range(0, len(paths), 32):
        images = [Image.open(path).convert("RGB") for path in paths[start : start + 32]]
        features = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        features = getattr(features, "pooler_output", features)
        vectors.append(torch.nn.functional.normalize(features, dim=-1))
print(len(torch.cat(vectors)))
"""
VARIANTS = {  # name -> the index command's options
    "onnx": ["--engine", "onnx"],
    "torch": ["--engine", "torch"],
    "int8": ["--precision", "int8"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint folder (bench.checkpoint writes ViT-B/32)")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--photos", type=Path, help="folder for the generated 12 MP JPEGs (kept between runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    source = args.photos or Path(tempfile.gettempdir()) / "clipsearch-bench-photos"
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for path in make_photos(source, args.images):
            (photos / path.name).symlink_to(path)
        env = {**os.environ, "CLIPSEARCH_CACHE": str(Path(tmp) / "cache"), "CLIPSEARCH_MODEL": model}
        index_dir = Path(tmp) / "index"

        def index(variant: str) -> tuple[float, float]:
            shutil.rmtree(index_dir, ignore_errors=True)
            command = [sys.executable, "-c", CLI, "index", str(photos), "--index-dir", str(index_dir)]
            return whole_process([*command, *VARIANTS[variant]], env)

        def naive() -> tuple[float, float]:
            return whole_process([sys.executable, "-c", NAIVE, model, str(photos)], env)

        runs: dict[str, list[tuple[float, float]]] = {"naive": [], **{name: [] for name in VARIANTS}}
        for name in VARIANTS:  # untimed: makes the exports, fills the OS file cache
            index(name)
        naive()
        for _ in range(RUNS):
            runs["naive"].append(naive())
            for name in VARIANTS:
                runs[name].append(index(name))

    summary = {
        name: {
            "median_s": round(statistics.median(s for s, _ in values), 2),
            "min_s": round(min(s for s, _ in values), 2),
            "peak_rss_mb": round(max(r for _, r in values), 1),
        }
        for name, values in runs.items()
    }
    naive_s = summary["naive"]["median_s"]
    emit(
        {
            "benchmark": "index_process",
            "machine": machine(),
            "images": args.images,
            "image_size": "4000x3000 JPEG",
            "runs": RUNS,
            "whole_process": summary,
            "speedup_vs_naive": {name: round(naive_s / summary[name]["median_s"], 2) for name in VARIANTS},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
