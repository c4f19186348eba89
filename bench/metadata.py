"""What reading photo metadata adds to indexing: the pipeline on 12 MP JPEGs with EXIF (date, offset, GPS, camera),
with the metadata reader and with it replaced by a no-op, alternating, in one process.

    python -m bench.metadata --model PATH [--images 48] --json
"""

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

import server.indexing.indexer as indexer_module
from bench.common import emit, machine, make_photos
from server.config import Settings
from server.images.metadata import PhotoMetadata, read_metadata
from server.service import ClipSearch

ROUNDS = 2


def exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15 Pro"
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011] = "2024:06:01 14:03:22", "+02:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.0), "E", (13.0, 24.0, 0.0)
    return exif.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        exif = exif_bytes()
        for path in make_photos(folder, args.images):
            with Image.open(path) as image:
                image.load()
                image.save(path, "JPEG", quality=90, exif=exif)
        data = [p.read_bytes() for p in sorted(folder.iterdir())]
        started = time.perf_counter()
        for blob in data:
            read_metadata(blob, 0)
        reader_ms = (time.perf_counter() - started) * 1000 / len(data)
        service = ClipSearch(Settings(index_dir=Path(tmp) / "index", model=args.model))
        service.encoder.encode_texts(["warm up"])
        seconds: dict[str, list[float]] = {"with_metadata": [], "without_metadata": []}
        real = indexer_module.read_metadata
        for round_number in range(ROUNDS):
            for variant in ("with_metadata", "without_metadata"):
                indexer_module.read_metadata = real if variant == "with_metadata" else (lambda d, m: PhotoMetadata())
                report = service.index_folder(folder, collection=f"{variant}-{round_number}")
                seconds[variant].append(report.seconds)
        indexer_module.read_metadata = real
    best = {variant: min(values) for variant, values in seconds.items()}
    out = {
        "machine": machine(),
        "images": args.images,
        "photo": "12 MP JPEG, quality 90, with EXIF date, offset, GPS and camera",
        "read_metadata_ms_per_image": round(reader_ms, 3),
        "index_seconds": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()},
        "overhead_percent": round(100 * (best["with_metadata"] / best["without_metadata"] - 1), 1),
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
