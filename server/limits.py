"""Defaults and limits of the public API, each defined once: the core checks them, the MCP parameter types state
them in their schema and the CLI parser enforces them (tests/test_limits.py checks that the two adapters agree).

Kept free of heavy imports so the MCP server can describe its tools before numpy, PIL or torch are loaded.
"""

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from server.errors import InvalidArgument

Number = TypeVar("Number", int, float)

DEFAULT_COLLECTION = "default"
DEFAULT_K = 10
DEFAULT_KS = (1, 3, 5, 10)
DEFAULT_TEMPLATE = "a photo of a {label}"
INDEX_TYPES = ("auto", "flat", "ivf")
ENGINES = ("auto", "onnx", "torch")
OCR_POLICIES = ("auto", "on", "off")  # text in photos: after a cheap first pass (default), every image, never
PRECISIONS = ("fp32", "int8")  # of a collection's vectors: int8 towers are ONNX Runtime's, dynamically quantised
SORTS = ("score", "taken", "taken_asc")
MEDIA = ("all", "photos", "videos")  # what a search may return

MAX_QUERY_CHARS = 2000
MAX_TEMPLATE_CHARS = 200
MAX_CAMERA_CHARS = 200
MAX_TEXT_FILTER_CHARS = 200  # a `text` filter's words, and search_text_in_images' query
DEFAULT_MIN_TEXT_SCORE = 0.35  # search_text_in_images: half the query's letter triples (search/text_ranking.py)
MAX_FOLDER_CHARS = 400  # index_folder's folder
MAX_JOB_ID_CHARS = 64
MAX_KS = 20  # cut-offs in one evaluation
MAX_TERMS = 16  # terms of a composed query, the main one included
MIN_COMPARED, MAX_COMPARED = 2, 5  # collections compared side by side in one evaluation
GALLERY_MAX_PATHS = 48  # thumbnails per get_thumbnails call
DEFAULT_GALLERY_SIDE = 256
DEFAULT_VIEW_SIDE = 1024
DEFAULT_THRESHOLD = 0.95  # cosine from which two images may be near-duplicates
DEFAULT_NEAR_BITS = 20  # perceptual-hash bits (of 64) near-duplicates may differ by (images/fingerprint.py says why)
DEFAULT_MAX_GROUPS = 100
DEFAULT_WAIT_SECONDS = 20


@dataclass(frozen=True)
class Bound(Generic[Number]):
    """An inclusive range of one numeric parameter (`least` itself excluded when `above_least`)."""

    name: str
    least: Number
    most: Number
    above_least: bool = False
    unit: str = ""

    def allows(self, value: Number) -> bool:
        return (value > self.least if self.above_least else value >= self.least) and value <= self.most

    def check(self, value: Number) -> Number:
        """The value, or InvalidArgument naming the range."""
        if not self.allows(value):
            raise InvalidArgument(f"{self.name} must be {self.describe()}, got {value}.")
        return value

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.above_least:
            return f"above {_shown(self.least)} and at most {_shown(self.most)}{unit}"
        return f"between {_shown(self.least)} and {_shown(self.most)}{unit}"

    def schema(self) -> dict[str, Number]:
        """The range as pydantic `Field` keywords (JSON Schema minimum/exclusiveMinimum and maximum)."""
        return {"gt" if self.above_least else "ge": self.least, "le": self.most}

    def arg(self, kind: type[Number]) -> "BoundArgument[Number]":
        """An argparse `type=` that converts with `kind` and refuses values outside the range."""
        return BoundArgument(self, kind)


@dataclass(frozen=True)
class BoundArgument(Generic[Number]):
    bound: Bound[Number]
    kind: type[Number]

    def __call__(self, text: str) -> Number:
        import argparse

        try:
            value = self.kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        if not self.bound.allows(value):
            raise argparse.ArgumentTypeError(f"must be {self.bound.describe()}, got {text}")
        return value

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind.__name__


def _shown(value: Any) -> str:
    """1000 as 1000, 10000 as 10,000, 20100.0 as 20,100, 0.1 as 0.1."""
    if isinstance(value, float):
        return f"{value:,g}" if abs(value) >= 10_000 else f"{value:g}"
    return f"{value:,}" if abs(value) >= 10_000 else str(value)


TOP_K = Bound("k", 1, 1000)
OFFSET = Bound("offset", 0, 10_000)
THUMBNAILS = Bound("thumbnails", 0, 10)
RADIUS_KM = Bound("radius_km", 0.0, 20_100.0, above_least=True)  # half the Earth's circumference: every place
MIN_SCORE = Bound("min_score", -1.0, 1.0)
TEXT_SCORE = Bound("min_score", 0.0, 1.0)  # search_text_in_images' text-match score
LATITUDE = Bound("latitude", -90.0, 90.0)
LONGITUDE = Bound("longitude", -180.0, 180.0)
TERM_WEIGHT = Bound("a term's weight", 0.1, 10.0)
GALLERY_SIDE = Bound("side", 64, 512, unit="pixels")  # a gallery thumbnail's longest side
VIEW_SIDE = Bound("max_side", 64, 2048, unit="pixels")  # view_image's JPEG
THRESHOLD = Bound("threshold", 0.0, 1.0, above_least=True)
MAX_BITS = Bound("max_bits", 0, 64)
GROUPS = Bound("max_groups", 1, 1000)
GROUP_OFFSET = Bound("offset", 0, 1_000_000)
TIME_SECONDS = Bound("time_seconds", 0.0, 30 * 86400.0, unit="seconds")  # a moment of a video, from its start
WAIT_SECONDS = Bound("wait_seconds", 0, 50)  # below the ~60 s after which common hosts give up on a call
