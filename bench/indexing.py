"""Indexing throughput on photo-sized JPEGs: the naive pipeline, the model alone, and the project's pipeline.

    python -m bench.indexing --model PATH --images 96 --json

- naive_ips: PIL full decode -> transformers' CLIP image processor -> model, batch 32, one process.
- model_only_ips: the model's forward pass on ready tensors, same model and batch size.
- pipeline_ips: the project's index_folder end to end (scan, read, hash, decode, embed, write the collection).
- fidelity_cosine_median: cosine between each image's vector from the project's path and from the naive path.
- fidelity_pixel_mae: mean absolute difference of the model inputs (normalised pixels) between the two paths.
- peak_rss_mb: the process's peak memory during the project's pipeline (measured first).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, machine, make_photos, peak_rss_mb
from server.config import Settings
from server.encoders.protocol import normalize
from server.encoders.torch_engine import TransformersEncoder
from server.service import ClipSearch

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local CLIP checkpoint (random ViT-B/32 weights are fine)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--photos", type=Path, help="folder for the generated JPEGs (kept between runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    photos_dir = args.photos or Path(tempfile.gettempdir()) / "clipsearch-bench-photos"
    paths = make_photos(photos_dir, args.images)
    encoder = TransformersEncoder(args.model, batch_size=BATCH)
    dim = encoder.dim  # load the model before any timing
    size = encoder.input_size
    # Warm up: the first forward passes allocate and pick kernels; charging that to whichever stage runs first
    # would skew the comparison.
    encoder.encode_pixels(np.zeros((BATCH, 3, size, size), np.float32))

    with tempfile.TemporaryDirectory() as index_dir:
        service = ClipSearch(Settings(index_dir=Path(index_dir), model=encoder.model_name), encoder)
        folder = Path(tempfile.mkdtemp(dir=index_dir, prefix="photos-"))
        for path in paths:
            (folder / path.name).symlink_to(path)
        started = time.perf_counter()
        report = service.index_folder(folder, collection="bench")
        pipeline_seconds = time.perf_counter() - started
        pipeline_rss = peak_rss_mb()
        collection = service.collection("bench")
        fast = {p.name: collection.vector(collection.find_path(p.resolve()).id) for p in folder.iterdir()}

    processor = CLIPImageProcessorPil.from_pretrained(args.model)
    model = encoder._load().model
    naive_vectors: dict[str, np.ndarray] = {}
    pixel_batches = []
    started = time.perf_counter()
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        images = []
        for path in chunk:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_batches.append(pixels)
        with torch.inference_mode():
            features = model.get_image_features(pixel_values=pixels)
        vectors = normalize(getattr(features, "pooler_output", features).numpy())
        naive_vectors.update({p.name: v for p, v in zip(chunk, vectors, strict=True)})
    naive_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with torch.inference_mode():
        for pixels in pixel_batches:
            model.get_image_features(pixel_values=pixels)
    model_seconds = time.perf_counter() - started

    cosines = [float(np.dot(fast[name], naive_vectors[name])) for name in naive_vectors]
    # Random weights may hide input differences, so compare the model inputs too: the fast path's pixels
    # (draft-mode JPEG decode + our preprocessing) against the reference processor's, in normalised units.
    from server.images.decode import decode, read_file

    reference = torch.cat(pixel_batches).numpy()
    fast_pixels = np.stack([encoder.preprocess(decode(read_file(p), min_side=size).image) for p in paths])
    pixel_mae = float(np.mean(np.abs(fast_pixels - reference)))
    out = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "images": len(paths),
        "image_size": "4000x3000 JPEG",
        "dim": dim,
        "naive_ips": round(len(paths) / naive_seconds, 2),
        "model_only_ips": round(len(paths) / model_seconds, 2),
        "pipeline_ips": round(report.embedded / pipeline_seconds, 2),
        "pipeline_vs_model": round((report.embedded / pipeline_seconds) / (len(paths) / model_seconds), 3),
        "pipeline_vs_naive": round((report.embedded / pipeline_seconds) / (len(paths) / naive_seconds), 2),
        "fidelity_cosine_median": round(float(np.median(cosines)), 5),
        "fidelity_cosine_min": round(float(np.min(cosines)), 5),
        "fidelity_pixel_mae": round(pixel_mae, 4),
        "pixel_std": round(float(reference.std()), 4),
        "peak_rss_mb": pipeline_rss,
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
