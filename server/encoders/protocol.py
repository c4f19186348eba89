"""What every engine offers: the `Encoder` protocol (images and texts to unit float32 vectors), row normalisation,
a checkpoint's image preprocessing reproduced without transformers, and the cache of recent text vectors."""

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

Vectors = npt.NDArray[np.float32]
TEXT_CACHE_SIZE = 1024  # text vectors remembered per model (2 MB at 512-d)


class Encoder(Protocol):
    """What indexing and search need from a model; tests hand in a fake."""

    model_name: str
    precision: str  # of the vectors it makes: "fp32" (fp16 on CUDA counts as it), or "int8" (limits.PRECISIONS)

    @property
    def model_identity(self) -> str:
        """What the checkpoint holds (a content hash), so a copy under another name is recognised as the same."""
        ...

    @property
    def dim(self) -> int: ...

    @property
    def input_size(self) -> int:
        """Shortest side, in pixels, the model looks at (decoders may downscale to it)."""
        ...

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """One RGB image to the model's input array; safe to call from worker threads."""
        ...

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> Vectors:
        """A stack of preprocessed images to unit vectors, shape (n, dim)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        """Texts to unit vectors, shape (n, dim); text beyond the model's context is truncated."""
        ...


def normalize(vectors: npt.NDArray[np.floating[Any]]) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as C-contiguous float32."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


@dataclass(frozen=True)
class Preprocessing:
    """A checkpoint's image preprocessing, read from its preprocessor config: resize (the shortest side to
    `shortest_edge` keeping the aspect ratio, or both sides to `height`×`width`), centre-crop when set, rescale,
    normalise."""

    height: int  # after resizing (shortest_edge mode: 0) and before cropping
    width: int
    shortest_edge: int  # 0 when resizing to height×width
    crop_height: int  # 0 when there is no centre crop
    crop_width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    rescale: float = 1 / 255

    @property
    def input_size(self) -> int:
        """The shortest side, in pixels, the model looks at."""
        if self.crop_height:
            return min(self.crop_height, self.crop_width)
        return self.shortest_edge or min(self.height, self.width)

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """One RGB image to the model's input, (3, H, W) float32."""
        width, height = image.size
        if self.shortest_edge:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            size = (self.width, self.height)
        if size != image.size:
            image = image.resize(size, Image.Resampling(self.resample))
        if self.crop_height:
            left = (size[0] - self.crop_width) // 2
            top = (size[1] - self.crop_height) // 2
            image = image.crop((left, top, left + self.crop_width, top + self.crop_height))
        pixels = np.asarray(image, dtype=np.float32) * np.float32(self.rescale)
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    @classmethod
    def of(cls, processor: Any) -> "Preprocessing":
        """The preprocessing a transformers image processor does, or ValueError for steps not reproduced here."""
        for step in ("do_pad", "do_reduce_labels", "do_image_splitting"):
            if getattr(processor, step, False):
                raise ValueError(f"its image processor's '{step}' step is not supported")
        if not (getattr(processor, "do_resize", True) and getattr(processor, "do_normalize", True)):
            raise ValueError("its image processor does not resize and normalise")
        size = processor.size
        shortest = int(getattr(size, "shortest_edge", None) or 0)
        height, width = int(getattr(size, "height", None) or 0), int(getattr(size, "width", None) or 0)
        if not shortest and not (height and width):
            raise ValueError(f"its image processor's size {size} is neither a shortest edge nor height and width")
        crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
        return cls(
            height=0 if shortest else height,
            width=0 if shortest else width,
            shortest_edge=shortest,
            crop_height=int(crop.height) if crop else 0,
            crop_width=int(crop.width) if crop else 0,
            mean=tuple(float(v) for v in processor.image_mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in processor.image_std),  # type: ignore[arg-type]
            resample=int(Image.Resampling.BICUBIC if processor.resample is None else processor.resample),
            rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
        )


class TextCache:
    """Text vectors seen lately (an assistant paging through results or refining a query repeats its texts); the
    rest go through the model in one pass."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size  # None: TEXT_CACHE_SIZE
        self._vectors: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], embed: "Callable[[Sequence[str]], Vectors]") -> Vectors:
        """Unit vectors of `texts`, those not cached from `embed` (called once, with each new text once)."""
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
            for text in known:
                self._vectors.move_to_end(text)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        fresh = embed(missing) if missing or not texts else np.zeros((0, 0), np.float32)
        if missing:
            with self._lock:
                for text, vector in zip(missing, fresh, strict=True):
                    known[text] = self._vectors[text] = vector
                while len(self._vectors) > (self.size or TEXT_CACHE_SIZE):
                    self._vectors.popitem(last=False)
        if not texts:
            return fresh
        return np.ascontiguousarray(np.stack([known[t] for t in texts]), dtype=np.float32)
