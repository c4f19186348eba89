"""Text in photos: how well and how fast the OCR engines read a generated corpus (bench/ocr_corpus.py).

    python -m bench.ocr --json [--per-kind 12] [--corpus DIR] [--detect-side 960] [--tesseract-kinds document,...]

For RapidOCR PP-OCRv4 as `server/encoders/text_recognition.py` runs it (`full`), for the cheap first pass that
decides which images get read (`probe_480`, `probe_320`: detection alone with the long side at that many pixels),
and for Tesseract (Debian's `tesseract` CLI, eng or chi_sim; on the kinds named):
- char_accuracy: 1 - edit distance / length for each ground-truth line, against the best-matching stretch of the
  image's recognised text (so a line read as two, or two as one, costs only the missing space); overall and mean.
- word_recall: words of lines >= 16 px tall found in the image's text, compared case- and accent-insensitively
  with everything but letters and digits removed (the `text` filter's matching); also by kind and by height.
- false_positive_rate: text-free images with any line read at or above the confidence threshold.
- seconds_per_image, images_per_s: reading each image (decoded beforehand), by kind.
- The probes: how many text and text-free images they pass, the recall left when only those are read, the points
  lost against reading everything, and the seconds per image on a library where one image in five shows text.
- With `--clip DIR` (`python -m bench.checkpoint DIR --size vit-b-32`): the embedding stage on the same decoded
  images (preprocessing and the ONNX fp32 vision tower, batches of 32), for comparison.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import subprocess
import tempfile
import time
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import emit, machine
from bench.ocr_corpus import Sample, generate
from server.encoders.text_recognition import RapidOcrRecognizer

MIN_HEIGHT = 16
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
TEXT_SHARE = 0.2  # one photo in five shows text


@dataclass
class Reading:
    lines: list[tuple[str, float]]  # text, confidence
    seconds: float


def fold(text: str) -> str:
    """Case- and accent-insensitive, letters and digits only: how the `text` filter compares."""
    decomposed = unicodedata.normalize("NFKD", text).casefold()
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c))


def substring_distances(truths: list[str], text: str) -> list[int]:
    """For each truth, the least edit distance between it and any stretch of `text` (semi-global alignment),
    all truths at once, one column of `text` at a time."""
    if not truths:
        return []
    lengths = np.array([len(t) for t in truths])
    width = int(lengths.max())
    codes = np.full((len(truths), width), -1, np.int64)
    for row, truth in enumerate(truths):
        codes[row, : len(truth)] = [ord(c) for c in truth]
    steps = np.arange(width + 1)
    rows = np.arange(len(truths))
    previous = np.tile(steps, (len(truths), 1))
    best = lengths.copy()
    for char in text:
        cost = (codes != ord(char)).astype(np.int64)
        entry = np.empty_like(previous)
        entry[:, 0] = 0
        entry[:, 1:] = np.minimum(previous[:, :-1] + cost, previous[:, 1:] + 1)
        current = np.minimum.accumulate(entry - steps, axis=1) + steps
        best = np.minimum(best, current[rows, lengths])
        previous = current
    return best.tolist()


def squash(text: str) -> str:
    return " ".join(text.split())


def score(samples: list[Sample], readings: dict[str, Reading], threshold: float) -> dict[str, object]:
    """Accuracy, recall and false positives of `readings` (by image name) at a confidence threshold."""
    distance = length = 0
    line_accuracies = []
    found: dict[str, list[bool]] = defaultdict(list)
    false_positives = text_free = 0
    for sample in samples:
        if sample.name not in readings:
            continue
        kept = [text for text, confidence in readings[sample.name].lines if confidence >= threshold]
        if not sample.has_text:
            text_free += 1
            false_positives += bool(kept)
            continue
        recognised = squash(" ".join(kept))
        truths = [squash(line.text) for line in sample.lines]
        for truth, d in zip(truths, substring_distances(truths, recognised), strict=True):
            distance, length = distance + d, length + len(truth)
            line_accuracies.append(max(0.0, 1 - d / len(truth)))
        haystack = fold(recognised)
        for line in sample.lines:
            band = (
                "12-15" if line.height < 16 else "16-23" if line.height < 24 else "24-47" if line.height < 48 else "48+"
            )
            for word in line.words:
                if fold(word):
                    hit = fold(word) in haystack
                    found[f"height {band}"].append(hit)
                    if line.height >= MIN_HEIGHT:
                        found["all"].append(hit)
                        found[f"kind {sample.kind}"].append(hit)
    result: dict[str, object] = {
        "word_recall": _share(found.pop("all", [])),
        "word_recall_by": {key: _share(hits) for key, hits in sorted(found.items())},
        "false_positive_rate": round(false_positives / text_free, 4) if text_free else None,
        "text_free_images": text_free,
    }
    if length:
        result["char_accuracy"] = round(1 - distance / length, 4)
        result["char_accuracy_line_mean"] = round(statistics.fmean(line_accuracies), 4)
    return result


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def timing(samples: list[Sample], readings: dict[str, Reading]) -> dict[str, object]:
    seconds = [readings[s.name].seconds for s in samples if s.name in readings]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        if sample.name in readings:
            by_kind[sample.kind].append(readings[sample.name].seconds)
    return {
        "seconds_per_image": round(statistics.fmean(seconds), 3),
        "images_per_s": round(len(seconds) / sum(seconds), 2),
        "seconds_per_image_by_kind": {kind: round(statistics.fmean(v), 3) for kind, v in sorted(by_kind.items())},
    }


def run_rapid(recognizer: RapidOcrRecognizer, images: dict[str, Image.Image]) -> dict[str, Reading]:
    readings = {}
    for name, image in images.items():
        started = time.perf_counter()
        result = recognizer.read(image)
        readings[name] = Reading([(line.text, line.confidence) for line in result.lines], time.perf_counter() - started)
    return readings


def run_probe(recognizer: RapidOcrRecognizer, images: dict[str, Image.Image]) -> dict[str, tuple[bool, float]]:
    decisions = {}
    for name, image in images.items():
        started = time.perf_counter()
        passed = recognizer.likely_has_text(image)
        decisions[name] = (passed, time.perf_counter() - started)
    return decisions


def run_tesseract(samples: list[Sample], folder: Path) -> dict[str, Reading]:
    readings = {}
    for sample in samples:
        language = "chi_sim" if sample.kind == "chinese" else "eng"
        started = time.perf_counter()
        done = subprocess.run(
            ["tesseract", str(folder / sample.name), "stdout", "-l", language, "--psm", "3", "tsv"],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - started
        words: dict[tuple[str, ...], list[tuple[str, float]]] = defaultdict(list)
        for row in csv.DictReader(io.StringIO(done.stdout), delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["level"] == "5" and row["text"] and row["text"].strip():
                key = (row["page_num"], row["block_num"], row["par_num"], row["line_num"])
                words[key].append((row["text"], float(row["conf"]) / 100))
        joiner = "" if language == "chi_sim" else " "
        lines = [(joiner.join(w for w, _ in ws), statistics.fmean(c for _, c in ws)) for ws in words.values()]
        readings[sample.name] = Reading(lines, seconds)
    return readings


def embedding_speed(checkpoint: Path, images: list[Image.Image], scratch: Path) -> dict[str, object]:
    """The embedding stage on the same decoded images: preprocessing and the ONNX fp32 vision tower, batches of 32."""
    from server.encoders.onnx_engine import OnnxEncoder
    from server.encoders.torch_engine import TransformersEncoder

    encoder = OnnxEncoder(TransformersEncoder(str(checkpoint)), cache=scratch / "onnx", strict=True)
    encoder.encode_pixels(np.stack([encoder.preprocess(images[0])] * 32))  # export, load and warm up untimed
    started = time.perf_counter()
    for start in range(0, len(images), 32):
        encoder.encode_pixels(np.stack([encoder.preprocess(image) for image in images[start : start + 32]]))
    seconds = time.perf_counter() - started
    return {"seconds_per_image": round(seconds / len(images), 4), "images_per_s": round(len(images) / seconds, 2)}


def probe_report(
    samples: list[Sample],
    full: dict[str, Reading],
    decisions: dict[str, tuple[bool, float]],
    full_recall: float,
    threshold: float,
) -> dict[str, object]:
    gated = {
        name: reading if decisions[name][0] else Reading([], 0.0) for name, reading in full.items() if name in decisions
    }
    recall = score(samples, gated, threshold)["word_recall"]
    text = [s for s in samples if s.has_text]
    none = [s for s in samples if not s.has_text]

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    def cost(group: list[Sample], gate: bool) -> float:
        read = mean([full[s.name].seconds for s in group])
        if not gate:
            return read
        passed = mean([float(decisions[s.name][0]) for s in group])
        return mean([decisions[s.name][1] for s in group]) + passed * read

    everything = TEXT_SHARE * cost(text, False) + (1 - TEXT_SHARE) * cost(none, False)
    with_probe = TEXT_SHARE * cost(text, True) + (1 - TEXT_SHARE) * cost(none, True)
    return {
        "probe_seconds_per_image": round(mean([d[1] for d in decisions.values()]), 4),
        "text_images_passed": round(mean([float(decisions[s.name][0]) for s in text]), 4),
        "text_free_images_passed": round(mean([float(decisions[s.name][0]) for s in none]), 4),
        "word_recall": recall,
        "recall_lost_points": round(100 * (full_recall - recall), 2) if recall is not None else None,
        "one_in_five_seconds_per_image": round(with_probe, 4),
        "one_in_five_images_per_s": round(1 / with_probe, 2),
        "one_in_five_seconds_per_image_reading_all": round(everything, 4),
        "one_in_five_images_per_s_reading_all": round(1 / everything, 2),
        "time_saved": round(1 - with_probe / everything, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="folder for the generated images (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--per-kind", type=int, default=12, help="screenshots and Chinese; twice as many photos")
    parser.add_argument("--detect-side", type=int, nargs="+", default=[960], help="one `full` run per value")
    parser.add_argument("--probe-side", type=int, nargs="+", default=[480, 320])
    parser.add_argument("--tesseract-kinds", default="document,screenshot,none", help="'' to skip Tesseract")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all)")
    parser.add_argument("--clip", type=Path, help="a CLIP checkpoint: also time the embedding stage (ONNX fp32)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.corpus or Path(scratch)
        started = time.perf_counter()
        samples = generate(folder, args.seed, args.per_kind)
        generated = time.perf_counter() - started
        images = {}
        for sample in samples:
            with Image.open(folder / sample.name) as image:
                images[sample.name] = image.convert("RGB")
        result: dict[str, object] = {
            "machine": machine(),
            "corpus": {
                "seed": args.seed,
                "images": len(samples),
                "by_kind": {k: sum(s.kind == k for s in samples) for k in sorted({s.kind for s in samples})},
                "lines": sum(len(s.lines) for s in samples),
                "words_at_least_16px": sum(len(ln.words) for s in samples for ln in s.lines if ln.height >= 16),
                "generation_seconds": round(generated, 1),
            },
        }
        engines: dict[str, object] = {}
        if args.clip:
            engines["embedding_onnx_fp32"] = embedding_speed(args.clip, list(images.values()), Path(scratch))
        default_full: dict[str, Reading] = {}
        default_recall = 0.0
        for side in args.detect_side:
            recognizer = RapidOcrRecognizer(detect_side=side, min_confidence=min(THRESHOLDS), threads=args.threads)
            recognizer.read(next(iter(images.values())))  # load and warm up before timing
            full = run_rapid(recognizer, images)
            figures = {f"at_{t}": score(samples, full, t) for t in THRESHOLDS}
            engines[f"rapidocr_full_{side}"] = {"identity": recognizer.identity, **timing(samples, full), **figures}
            if not default_full:
                default_full = full
                default_recall = figures["at_0.5"]["word_recall"]  # type: ignore[index]
                for probe in args.probe_side:
                    prober = RapidOcrRecognizer(detect_side=side, probe_side=probe, threads=args.threads)
                    prober._engine = recognizer._loaded()
                    decisions = run_probe(prober, images)
                    engines[f"probe_{probe}"] = probe_report(samples, full, decisions, default_recall, 0.5)
        kinds = {k for k in args.tesseract_kinds.split(",") if k}
        if kinds:
            chosen = [s for s in samples if s.kind in kinds]
            tess = run_tesseract(chosen, folder)
            rapid_same = {name: default_full[name] for name in tess}
            engines["tesseract"] = {
                "kinds": sorted(kinds),
                **timing(chosen, tess),
                **{f"at_{t}": score(chosen, tess, t) for t in (0.5, 0.7)},
            }
            engines["rapidocr_full_same_images"] = {
                **timing(chosen, rapid_same),
                "at_0.5": score(chosen, rapid_same, 0.5),
            }
        result["engines"] = engines
    emit(result, args.json)


if __name__ == "__main__":
    main()
