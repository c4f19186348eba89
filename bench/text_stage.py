"""Text in photos, the text stage's cost in the real pipeline: `ClipSearch.index_folder` on a library where one image
in five shows text, ONNX fp32 ViT-B/32 embedding and RapidOCR PP-OCRv4 as the service runs them.

    python -m bench.text_stage --json [--images 100] [--clip DIR] [--photo-side 4032] [--config 2:2:6:square ...]

The library (bench/ocr_corpus.py's generator, seed 22): image 0, 5, 10, ... shows text (per ten: five photo-like,
two screenshots, two Chinese, one document page), the others are photo-like without text. At the corpus's own sizes
(1024-1600 px JPEGs, screenshots as PNG) or, with `--photo-side 4032`, each JPEG scaled to fit a 4032x3024 phone
photo (pages padded), with a little noise, saved at quality 90 (screenshots stay PNG at their own size); the library
is kept in the temporary folder between runs. The checkpoint should be `python -m bench.checkpoint DIR --size
vit-b-32` (random weights: the real model's cost); its ONNX export is made once, before any timing, in
`--cache` (kept between runs).

Each `--config WORKERS:THREADS:REC_BATCH:PROBE` (text-stage worker threads; ONNX Runtime intra-op threads per
recogniser session, 0 for `default_threads()`; lines per recogniser batch; the first pass's draft decode, `long`
as the text stage does it or `square` as it was, both sides >= 480 px; an empty part is the default, and no
`--config` is the defaults) indexes the library into a fresh collection with `ocr` "auto", in the order given
(repeat them, A B A B, to see the machine's drift); then one more collection with `ocr` "on" (every image read in
full, the last configuration's settings) is the recall reference. For each run:
- embedding: the embedding stage's seconds and images/s (IndexReport's `images_per_second`, embedded images over
  the stage's wall time), and the whole run's seconds;
- text: the text stage's seconds and images/s, images read in full, passed over by the first pass, found with text;
- ratio: text-stage seconds over embedding-stage seconds (the issue's target: at most 1.0); and the same for the
  process's CPU seconds in each stage (split at the text stage's first progress report), which other work on the
  machine moves less than wall time;
- word_recall: of the words on lines at least 16 px tall in the stored file, the share the `text` filter finds in
  the image they are on (SearchFilter(text=word) as catalog SQL); for "auto", the points lost against "on" (target:
  at most 2).
The 1-minute load average is printed before each run and after the last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import emit, machine
from bench.ocr_corpus import Generator, Sample
from server.config import Settings
from server.encoders.text_recognition import READERS, REC_BATCH, RapidOcrRecognizer, default_threads
from server.images.decode import decode, read_file
from server.indexing import text_stage
from server.indexing.indexer import Indexer, IndexProgress
from server.search.filters import SearchFilter
from server.service import ClipSearch
from server.store.text_search import words_of

TEXT_EVERY = 5  # one image in five shows text
TEXT_KINDS = ("photo", "screenshot", "photo", "chinese", "photo", "document", "photo", "screenshot", "chinese", "photo")
MIN_HEIGHT = 16
PHONE_QUALITY = 90


@dataclass(frozen=True)
class Config:
    """How the text stage runs: `WORKERS:THREADS:REC_BATCH:PROBE`, each part optional (the defaults)."""

    workers: int = READERS
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0: the recogniser's default_threads()
    rec_batch: int = REC_BATCH
    probe: str = "long"  # the first pass's draft decode: "long" (long side 480) or "square" (both sides 480)

    @classmethod
    def parse(cls, text: str) -> Config:
        parts = text.split(":")
        numbers = [int(p) if p else default for p, default in zip(parts[:3], (READERS, 0, REC_BATCH), strict=False)]
        config = cls(*numbers, *(parts[3:4] or ["long"]))  # type: ignore[arg-type]
        if config.probe not in ("long", "square"):
            raise argparse.ArgumentTypeError(f"the probe decode is long or square, got {config.probe!r}")
        return config

    @property
    def name(self) -> str:
        threads = self.threads or default_threads()
        return f"{self.workers} workers x {threads} threads, rec batch {self.rec_batch}, probe decode {self.probe}"

    def recognizer(self) -> RapidOcrRecognizer:
        return RapidOcrRecognizer(threads=self.threads or None, rec_batch=self.rec_batch)


def square_probe(data: bytes, raw: bool) -> int:
    """The first pass's draft decode as it was before this benchmark: both sides at least 480 px."""
    return text_stage.PROBE_DECODE_SIDE


def phone_sized(image: Image.Image, side: int, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """`image` scaled to fit a `side` x 3/4 `side` frame of its orientation, padded to fill it, with sensor-like
    noise (a smooth upscale would be an unusually cheap JPEG to decode); and the scale factor."""
    landscape = image.width >= image.height
    frame = (side, side * 3 // 4) if landscape else (side * 3 // 4, side)
    factor = min(frame[0] / image.width, frame[1] / image.height)
    size = (round(image.width * factor), round(image.height * factor))
    scaled = image.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", frame, (46, 40, 36))  # a table under a page
    canvas.paste(scaled, ((frame[0] - size[0]) // 2, (frame[1] - size[1]) // 2))
    pixels = np.asarray(canvas, dtype=np.int16) + rng.integers(-4, 5, (frame[1], frame[0], 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), factor


def build_library(folder: Path, count: int, photo_side: int, seed: int) -> list[Sample]:
    """The library's images in `folder`, made once (`truth.json` records them) and reused."""
    gen = Generator(seed)
    key = {"count": count, "photo_side": photo_side, "seed": seed, "fonts": [f.name for f in gen.latin + gen.cjk]}
    truth_file = folder / "truth.json"
    if truth_file.is_file():
        recorded = json.loads(truth_file.read_text(encoding="utf-8"))
        if recorded["key"] == key:
            return [_sample(s) for s in recorded["samples"]]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    noise = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        kind = TEXT_KINDS[(index // TEXT_EVERY) % len(TEXT_KINDS)] if index % TEXT_EVERY == 0 else "none"
        image, sample = getattr(gen, kind)(f"{index:04d}-{kind}")
        if kind == "screenshot":  # phones keep screenshots at the screen's size, as PNG
            sample.name += ".png"
            image.save(folder / sample.name)
        else:
            sample.name += ".jpg"
            quality = gen.rng.randint(60, 92)
            if photo_side:
                image, factor = phone_sized(image, photo_side, noise)
                quality = PHONE_QUALITY
                for line in sample.lines:
                    line.height = round(line.height * factor)
                sample.width, sample.height = image.size
            image.save(folder / sample.name, quality=quality)
        samples.append(sample)
    record = {"key": key, "samples": [asdict(s) for s in samples]}
    truth_file.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    return samples


def _sample(raw: dict[str, object]) -> Sample:
    from bench.ocr_corpus import Line

    lines = [Line(**line) for line in raw.pop("lines")]  # type: ignore[arg-type]
    return Sample(**raw, lines=lines)  # type: ignore[arg-type]


def word_recall(service: ClipSearch, collection: str, folder: Path, samples: list[Sample]) -> dict[str, object]:
    """Of the words on lines >= MIN_HEIGHT px, the share the `text` filter finds in their own image; by kind too."""
    target = service.collection(collection)
    found: dict[str, list[bool]] = {}
    for sample in samples:
        entry = target.find_path((folder / sample.name).resolve())
        assert entry is not None, sample.name
        for line in sample.lines:
            if line.height < MIN_HEIGHT:
                continue
            for word in line.words:
                if not words_of(word):
                    continue
                clause, params = SearchFilter(text=word).sql()
                hits = {row[0] for row in target.query(f"SELECT id FROM images WHERE {clause}", params)}
                for key in ("all", sample.kind):
                    found.setdefault(key, []).append(entry.id in hits)
    share = {key: round(sum(hits) / len(hits), 4) for key, hits in found.items()}
    words = len(found.get("all", []))
    return {"word_recall": share.pop("all", None), "by_kind": dict(sorted(share.items())), "words": words}


def cpu_seconds() -> float:
    """This process's CPU time, user and system, all threads: less moved by other work on the machine than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def index_once(service: ClipSearch, folder: Path, name: str, ocr: str) -> dict[str, object]:
    """One `index_folder` run into a new collection: both stages' wall and CPU seconds, images/s, what was read."""
    load = os.getloadavg()[0]
    marks: dict[str, float] = {}

    def progress(state: IndexProgress) -> None:
        if state.stage == "text" and "text" not in marks:
            marks["text"] = cpu_seconds()  # the text stage's first report: the embedding stage is over

    marks["start"] = cpu_seconds()
    report = service.index_folder(folder, collection=name, ocr=ocr, progress=progress)
    marks["end"] = cpu_seconds()
    embedding_s = report.embedded / report.images_per_second if report.images_per_second else report.seconds
    embedding_cpu, text_cpu = marks["text"] - marks["start"], marks["end"] - marks["text"]
    return {
        "load_1min_before": round(load, 2),
        "embedded": report.embedded,
        "embedding_s": round(embedding_s, 2),
        "embedding_ips": report.images_per_second,
        "run_s": report.seconds,
        "text_s": report.text_seconds,
        "text_ips": report.text_images_per_second,
        "ratio_text_to_embedding": round(report.text_seconds / embedding_s, 2),
        "embedding_cpu_s": round(embedding_cpu, 1),
        "text_cpu_s": round(text_cpu, 1),
        "cpu_ratio_text_to_embedding": round(text_cpu / embedding_cpu, 2),
        "read_in_full": report.text_read,
        "first_pass_only": report.text_first_pass_only,
        "found_text": report.text_found,
        "problems": len(report.text_problems),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--clip", type=Path, help="ViT-B/32 checkpoint (default: random weights, written once)")
    parser.add_argument("--photo-side", type=int, default=0, help="JPEGs scaled to this long side (0: as made)")
    parser.add_argument("--config", type=Config.parse, action="append", help="WORKERS:THREADS:REC_BATCH:PROBE")
    parser.add_argument("--no-reference", action="store_true", help="skip the ocr 'on' run (no recall cost)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench-cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configs = args.config or [Config()]

    scratch = Path(tempfile.gettempdir())
    checkpoint = args.clip
    if checkpoint is None:
        from bench.checkpoint import write_random_clip

        checkpoint = scratch / "clipsearch-bench-clip-vit-b-32"
        if not (checkpoint / "config.json").is_file():
            write_random_clip(checkpoint, "vit-b-32")
    os.environ["CLIPSEARCH_CACHE"] = str(args.cache)
    library = scratch / f"clipsearch-bench-text-{args.images}-{args.photo_side or 'corpus'}-{args.seed}"
    started = time.perf_counter()
    samples = build_library(library, args.images, args.photo_side, args.seed)
    generated = time.perf_counter() - started
    text_samples = [s for s in samples if s.has_text]

    recognizers = {(c.threads, c.rec_batch): c.recognizer() for c in configs}
    # Untimed: the models load, and ONNX Runtime sees the library's first input shapes (its first run at a shape
    # costs more), so the configuration timed first is not charged for it.
    warm = [decode(read_file(library / s.name), min_side=text_stage.READ_DECODE_SIDE).image for s in samples[:2]]
    for recognizer in recognizers.values():
        for image in warm:
            recognizer.likely_has_text(image)
            recognizer.read(image)
    long_side_probe = text_stage.probe_decode_side
    runs: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as index_dir:
        settings = Settings(index_dir=Path(index_dir), model=str(checkpoint.resolve()), engine="onnx")
        service = ClipSearch(settings, recognizer=recognizers[configs[0].threads, configs[0].rec_batch])
        encoder = service.encoder
        encoder.encode_pixels(np.zeros((32, 3, encoder.input_size, encoder.input_size), np.float32))  # export, warm

        def use(config: Config) -> None:
            service.recognizer = recognizers[config.threads, config.rec_batch]
            service.indexer = Indexer(encoder, recognizer=service.recognizer)
            assert service.indexer.text_stage is not None
            service.indexer.text_stage.workers = config.workers
            text_stage.probe_decode_side = square_probe if config.probe == "square" else long_side_probe

        for number, config in enumerate(configs):
            use(config)
            name = f"auto-{number}"
            figures = index_once(service, library, name, "auto")
            runs[f"auto {number + 1}, {config.name}"] = {**figures, **word_recall(service, name, library, text_samples)}
        if not args.no_reference:
            use(configs[-1])
            figures = index_once(service, library, "on", "on")
            reference = {**figures, **word_recall(service, "on", library, text_samples)}
            runs[f"on, {configs[-1].name}"] = reference
            for key, run in runs.items():
                if key.startswith("auto") and isinstance(run, dict):
                    run["recall_lost_points"] = round(100 * (reference["word_recall"] - run["word_recall"]), 2)
    emit(
        {
            "benchmark": "text_stage",
            "machine": machine(),
            "library": {
                "images": len(samples),
                "with_text": len(text_samples),
                "by_kind": {k: sum(s.kind == k for s in samples) for k in sorted({s.kind for s in samples})},
                "photo_side": args.photo_side or "corpus sizes (1024-1600 px JPEG, screenshots PNG)",
                "bytes": sum((library / s.name).stat().st_size for s in samples),
                "generation_s": round(generated, 1),
            },
            "checkpoint": str(checkpoint),
            "runs": runs,
            "load_1min_after": round(os.getloadavg()[0], 2),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
