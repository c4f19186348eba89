"""Text in photos: a `TextRecognizer` reads an image's lines of text (text, box, confidence) in reading order.

The engine is RapidOCR's PP-OCRv4 (Chinese and English) from the `rapidocr-onnxruntime` 1.4.4 wheel, whose ONNX
detection and recognition models run on the ONNX Runtime the image models use; we call its detector and recogniser
ourselves so that the work per image is bounded: detection runs with the long side at most `detect_side` (1280 px),
recognition reads the lines from the same image at up to twice that, and an image longer than twice its width (a
long screenshot) is read in overlapping tiles, at most `max_tiles`, the rest left unread and said so in `note`.
`likely_has_text` is the cheap first pass: detection alone at `probe_side` (480 px). Chosen on `python -m bench.ocr`
(docs/benchmarks.md, "Text in photos"). Each line is recognised on its own (`rec_batch` 1) and ONNX Runtime gets the
cores shared among the images read at once (`READERS`), as measured by `python -m bench.text_stage`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import TextModelUnavailable, first_line

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

log = logging.getLogger(__name__)

DETECT_SIDE = 1280
PROBE_SIDE = 480
MIN_CONFIDENCE = 0.5
MIN_CHARACTERS = 2  # letters or digits in a line kept
MAX_TILES = 8
MAX_LINES = 400  # per tile: a page of tiny print has fewer; thousands of specks would cost seconds each
TILE_ASPECT = 2.0  # an image longer than twice its width is read in tiles at most that long
# Lines through the recogniser one at a time: a batch is padded to its widest line, and with batches of 6 (the
# wheel's default) pages and screenshots took 1.39x as long on 2 cores, for the same recall (docs/benchmarks.md).
REC_BATCH = 1
READERS = 2  # images read at once (the text stage's workers): ONNX Runtime's threads are the cores shared among them
MODEL_FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}
ENGINE = "rapidocr-onnxruntime PP-OCRv4"


Point = tuple[float, float]


@dataclass(frozen=True)
class TextLine:
    """One line as read: its text, its box as four corners (clockwise from top left, in the image's pixels)."""

    text: str
    box: tuple[Point, Point, Point, Point]
    confidence: float


@dataclass(frozen=True)
class RecognisedText:
    """An image's lines in reading order; `note` says why part of the image was not read (None when all was)."""

    lines: tuple[TextLine, ...] = ()
    note: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class TextRecognizer(Protocol):
    """What the indexer needs of an OCR engine; a fake in tests, `RapidOcrRecognizer` for real."""

    @property
    def identity(self) -> str:
        """`sha256:<hex>` of the model files and the settings that change what is read."""
        ...

    def likely_has_text(self, image: Image.Image) -> bool:
        """A cheap guess whether `read` would find anything: false only when no text was detected at low resolution."""
        ...

    def read(self, image: Image.Image) -> RecognisedText:
        """The image's lines of text with a confidence of at least the recogniser's threshold."""
        ...


def default_threads() -> int:
    """ONNX Runtime intra-op threads per session: the machine's cores shared among the `READERS` images in flight."""
    return max(1, (os.cpu_count() or 1) // READERS)


def default_model_dir() -> Path:
    """The models folder inside the installed `rapidocr_onnxruntime` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise TextModelUnavailable(
            "Reading text in photos needs the rapidocr-onnxruntime package (pip install rapidocr-onnxruntime==1.4.4)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


_shared: RapidOcrRecognizer | None = None
_shared_lock = threading.Lock()


def shared_recognizer() -> RapidOcrRecognizer:
    """The process's PP-OCRv4 recogniser with the default settings: its models load once, on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RapidOcrRecognizer()
        return _shared


@dataclass
class RapidOcrRecognizer:
    """PP-OCRv4 through RapidOCR's detector and recogniser, loaded once, on first use, by whichever thread needs it."""

    model_dir: Path | None = None
    detect_side: int = DETECT_SIDE
    probe_side: int = PROBE_SIDE
    min_confidence: float = MIN_CONFIDENCE
    max_tiles: int = MAX_TILES
    max_lines: int = MAX_LINES
    rec_batch: int = REC_BATCH
    threads: int | None = None  # ONNX Runtime intra-op threads per session; None: default_threads()
    _engine: Any = field(default=None, init=False, repr=False)
    _identity: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _files(self) -> dict[str, Path]:
        folder = self.model_dir if self.model_dir is not None else default_model_dir()
        files = {role: folder / name for role, name in MODEL_FILES.items()}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise TextModelUnavailable(f"The text recognition model is missing: {', '.join(missing)}.")
        return files

    @property
    def identity(self) -> str:
        if self._identity is None:
            # A batch is padded to its widest line, which changes what is read, slightly.
            settings = f"detect_side {self.detect_side}", f"min_confidence {self.min_confidence}"
            lines = [ENGINE, *settings, f"rec_batch {self.rec_batch}"]
            for role, path in self._files().items():
                try:
                    with open(path, "rb") as handle:
                        lines.append(f"{role} {hashlib.file_digest(handle, 'sha256').hexdigest()}")
                except OSError as exc:
                    raise TextModelUnavailable(f"Cannot read the text recognition model {path}: {exc}") from exc
            self._identity = "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
        return self._identity

    def _loaded(self) -> Any:
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            return self._engine

    def _load(self) -> Any:
        files = self._files()
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise TextModelUnavailable(
                f"Reading text in photos needs rapidocr-onnxruntime and OpenCV, which failed to import: "
                f"{first_line(exc)}."
            ) from exc
        options: dict[str, Any] = {
            "det_model_path": str(files["det"]),
            "rec_model_path": str(files["rec"]),
            # Never upscale ("min" would blow a long screenshot up to 736 px across): we size the images ourselves.
            "det_limit_type": "max",
            "det_max_candidates": self.max_lines,
            "text_score": self.min_confidence,
            "rec_batch_num": self.rec_batch,
            # ONNX Runtime's default, a thread per core in each session with READERS images in flight, spun idle
            # threads against each other: the stage took 1.6x the CPU time on 2 cores (bench.text_stage).
            "intra_op_num_threads": self.threads or default_threads(),
        }
        try:
            engine = RapidOCR(**options)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types for a damaged file
            raise TextModelUnavailable(f"The text recognition model could not be loaded: {first_line(exc)}.") from exc
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        return engine

    def likely_has_text(self, image: Image.Image) -> bool:
        engine = self._loaded()
        width, height = image.size
        if max(width, height) > 2 * TILE_ASPECT * min(width, height):
            return True  # a long screenshot shrunk to 480 px shows nothing legible; it is worth reading
        boxes = self._detect(engine, _scaled(image, self.probe_side))
        return len(boxes) > 0

    def read(self, image: Image.Image) -> RecognisedText:
        engine = self._loaded()
        if image.mode != "RGB":
            image = image.convert("RGB")
        tiles, note = plan_tiles(image.size, self.max_tiles, self.detect_side)
        lines: list[TextLine] = []
        crowded = 0
        for tile in tiles:
            found, more = self._read_tile(engine, image, tile)
            lines += found
            crowded += more
        if crowded:
            left = f"{crowded} more text boxes left unread (at most {self.max_lines} per part of the image)"
            note = f"{note}; {left}" if note else left
        return RecognisedText(tuple(lines), note)

    def _read_tile(self, engine: Any, image: Image.Image, tile: Tile) -> tuple[list[TextLine], int]:
        """The tile's lines, and how many detected boxes were left unread past `max_lines` (the first in reading
        order are read: thousands of specks would cost the recogniser seconds each)."""
        import numpy as np

        x0, y0, x1, _ = tile.crop
        crop = image.crop(tile.crop) if tile.crop != (0, 0, *image.size) else image
        reading = _scaled(crop, 2 * self.detect_side)
        detecting = _scaled(reading, self.detect_side)
        boxes = self._detect(engine, detecting)
        if len(boxes) == 0:
            return [], 0
        left_out = max(0, len(boxes) - self.max_lines)
        boxes = boxes[: self.max_lines]
        to_reading = reading.width / detecting.width
        boxes = [np.asarray(box, dtype=np.float32) * to_reading for box in boxes]
        pixels = _bgr(reading)
        crops = engine.get_crop_img_list(pixels, boxes)
        results, _ = engine.text_rec(crops)
        to_image = (x1 - x0) / reading.width
        lines = []
        for box, (text, score) in zip(boxes, results, strict=True):
            text = text.strip()
            # What text-free photos yield is one character read off a shape (a square as 口, a bar as 一); a lone
            # letter or digit is also nothing a text search could single out.
            if score < self.min_confidence or sum(c.isalnum() for c in text) < MIN_CHARACTERS:
                continue
            corners = [(float(x * to_image + x0), float(y * to_image + y0)) for x, y in box]
            centre = sum(c[tile.axis] for c in corners) / 4
            if tile.keep[0] <= centre < tile.keep[1]:  # a line in the overlap belongs to one tile only
                lines.append(TextLine(text, tuple(corners), float(score)))  # type: ignore[arg-type]
        return lines, left_out

    def _detect(self, engine: Any, image: Image.Image) -> Sequence[npt.NDArray[np.float32]]:
        pixels = _bgr(_padded(image))
        boxes, _ = engine.text_det(pixels)
        if boxes is None or len(boxes) == 0:
            return []
        return engine.sorted_boxes(boxes)


@dataclass(frozen=True)
class Tile:
    """A part of an image read on its own: `crop` (left, top, right, bottom); lines whose centre along `axis`
    (0 for x, 1 for y) falls in `keep` are its own."""

    crop: tuple[int, int, int, int]
    axis: int
    keep: tuple[float, float]


def plan_tiles(size: tuple[int, int], max_tiles: int, detect_side: int = DETECT_SIDE) -> tuple[list[Tile], str | None]:
    """The tiles an image of `size` is read in, and a note when they do not cover it all. An image more than
    `TILE_ASPECT` times as long as wide, and too long to detect at its own size, is cut across its length into
    near-square tiles, so that its text is not shrunk to nothing."""
    width, height = size
    long_side, short_side = max(width, height), min(width, height)
    axis = 1 if height >= width else 0
    if long_side <= TILE_ASPECT * short_side or long_side <= detect_side:
        return [Tile((0, 0, width, height), axis, (-math.inf, math.inf))], None
    count = math.ceil(long_side / (TILE_ASPECT * short_side))
    step = math.ceil(long_side / count)
    overlap = max(1, short_side // 8)  # taller than any line worth reading at that width
    tiles = []
    for index in range(min(count, max_tiles)):
        start, end = index * step, min(long_side, (index + 1) * step)
        lo, hi = max(0, start - overlap), min(long_side, end + overlap)
        keep = (-math.inf if index == 0 else float(start), math.inf if end == long_side else float(end))
        crop = (0, lo, width, hi) if axis == 1 else (lo, 0, hi, height)
        tiles.append(Tile(crop, axis, keep))
    note = None
    if count > max_tiles:
        note = (
            f"Only the first {max_tiles * step} of {long_side} px of this {width}x{height} image were read for text "
            f"({max_tiles} tiles of {count})."
        )
    return tiles, note


def _scaled(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image

    longest = max(image.size)
    if longest <= side:
        return image
    factor = side / longest
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _padded(image: Image.Image) -> Image.Image:
    # The detector works in multiples of 32 px; a thinner strip would round to nothing.
    from PIL import Image

    if image.width >= 32 and image.height >= 32:
        return image
    canvas = Image.new("RGB", (max(32, image.width), max(32, image.height)), image.getpixel((0, 0)))  # type: ignore[arg-type]
    canvas.paste(image, (0, 0))
    return canvas


def _bgr(image: Image.Image) -> npt.NDArray[np.uint8]:
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(pixels[:, :, ::-1])
