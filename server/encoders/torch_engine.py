"""Image-text encoders: images and text into one L2-normalised float32 space. The real model loads once, lazily.

One path serves every family in `model_families` (CLIP, SigLIP, SigLIP 2, MetaCLIP 2, other transformers dual
encoders): the family picks the model class and the text handling; the image preprocessing is read from the
checkpoint's own processor config and reproduced here (tested equal to the processor)."""

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.errors import ModelUnavailable, first_line
from server.models.families import Family, detect, model_class
from server.models.files import PREPROCESSOR, DownloadTracker, ModelFiles, locate, quiet_hub

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
_LOADING = threading.Lock()
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


class TransformersEncoder:
    """A transformers image-text model with its tokenizer; weights load on first use, once, whatever thread asks.

    The files are found (or downloaded once, reported to `downloads`) before loading; `hash_cache` remembers the
    weight hashes behind `model_identity`."""

    precision = "fp32"

    def __init__(
        self,
        model_name: str,
        device: str | None = None,
        batch_size: int = 32,
        downloads: DownloadTracker | None = None,
        hash_cache: Path | None = None,
    ) -> None:
        self.model_name = model_name
        self.batch_size = batch_size
        self.downloads = downloads or DownloadTracker()
        self._hash_cache = hash_cache
        self._device_request = device
        self._lock = threading.Lock()
        self._files: ModelFiles | None = None
        self._identity: str | None = None
        self._loaded: _Loaded | None = None
        self._texts = TextCache()

    @property
    def files(self) -> ModelFiles:
        """The checkpoint's local files, found once (downloading them the first time)."""
        if self._files is None:
            with self._lock:
                if self._files is None:
                    self._files = locate(self.model_name, self.downloads)
        return self._files

    @property
    def model_identity(self) -> str:
        if self._identity is None:
            from server.models.identity import model_identity

            folder = self.files.folder
            with self._lock:
                if self._identity is None:
                    self._identity = model_identity(folder, self._hash_cache)
        return self._identity

    @property
    def dim(self) -> int:
        return self._load().dim

    @property
    def input_size(self) -> int:
        return self._load().preprocessing.input_size

    @property
    def device(self) -> str:
        return self._load().device

    @property
    def family(self) -> Family:
        return self._load().family

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        return self._load().preprocessing(image)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> Vectors:
        import torch

        loaded = self._load()
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.batch_size]))
                chunk = chunk.to(loaded.device, dtype=loaded.dtype)
                features = _features(loaded.model.get_image_features(pixel_values=chunk))
                outputs.append(features.float().cpu().numpy())
        return normalize(np.concatenate(outputs) if outputs else np.zeros((0, loaded.dim), np.float32))

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._texts.encode(texts, self._embed_texts)

    def _embed_texts(self, texts: Sequence[str]) -> Vectors:
        import torch

        loaded = self._load()
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                tokens = loaded.tokens(batch, return_tensors="pt").to(loaded.device)
                features = _features(loaded.model.get_text_features(**tokens))
                outputs.append(features.float().cpu().numpy())
        return normalize(np.concatenate(outputs) if outputs else np.zeros((0, loaded.dim), np.float32))

    def torch_parts(self) -> "_Loaded":
        """The loaded torch model, its tokenizer, family and preprocessing (what the ONNX export starts from)."""
        return self._load()

    def _load(self) -> "_Loaded":
        if self._loaded is None:
            files = self.files
            with self._lock:
                if self._loaded is None:
                    with _LOADING:  # one model at a time: transformers' lazy imports are not safe to race
                        self._loaded = _load_model(files, self._device_request)
        return self._loaded


@dataclass(frozen=True)
class _Loaded:
    """A model loaded in torch, with what its text and images need."""

    family: Family
    model: Any
    tokenizer: Any
    preprocessing: Preprocessing
    device: str
    dtype: Any
    dim: int
    context_length: int

    def tokens(self, texts: Sequence[str], **options: Any) -> Any:
        """The tokenizer's output for `texts` by the family's rules: lower-cased where it was trained so, padded to
        the context or to the longest text, truncated to the context."""
        return self.tokenizer(
            [t.lower() for t in texts] if self.family.lowercase else list(texts),
            padding="max_length" if self.family.pad_to_context else True,
            truncation=True,
            max_length=self.context_length,
            **options,
        )


def _features(output: Any) -> Any:
    # transformers 5 returns a model output whose pooler_output holds the projected features; 4.x returned a tensor.
    return getattr(output, "pooler_output", output)


def _load_model(files: ModelFiles, device: str | None) -> _Loaded:
    family = detect(files.folder, files.name)
    log.info("loading %s model %s from %s", family.label, files.name, files.folder)
    import torch
    from transformers import AutoTokenizer

    quiet_libraries()
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if chosen.startswith("cuda") else torch.float32
    folder = files.folder
    try:
        # local_files_only: the folder is complete (model_files checked it), so nothing may go to the network.
        loader = model_class(family)
        model, info = loader.from_pretrained(folder, dtype=dtype, output_loading_info=True, local_files_only=True)
        # transformers fills absent weights with random values; a half-loaded model would search at random.
        missing = info.get("missing_keys") or []
        if missing:
            raise ValueError(f"its weights lack {len(missing)} tensors (e.g. {sorted(missing)[0]})")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if len(tokenizer) <= 3:
            raise ValueError("it has no tokenizer files (vocab.json/merges.txt, tokenizer.json or spiece.model)")
        preprocessing = Preprocessing.of(_image_processor(folder))
        model = model.to(chosen).eval()
        context = int(model.config.text_config.max_position_embeddings)
        with torch.inference_mode():  # the embedding size, as the model itself gives it
            probe = tokenizer(["a"], padding="max_length", truncation=True, max_length=context, return_tensors="pt")
            dim = int(_features(model.get_text_features(**probe.to(chosen))).shape[-1])
    except (OSError, ValueError, RuntimeError, ImportError, AttributeError, TypeError) as exc:
        raise ModelUnavailable(
            f"Cannot load the {family.label} model '{files.name}': {first_line(exc)}. Point --model or "
            "CLIPSEARCH_MODEL at a checkpoint in Hugging Face format (config.json, weights, tokenizer and "
            "preprocessor_config.json)."
        ) from exc
    return _Loaded(
        family=family,
        model=model,
        tokenizer=tokenizer,
        preprocessing=preprocessing,
        device=chosen,
        dtype=dtype,
        dim=dim,
        context_length=context,
    )


def _image_processor(folder: Path) -> Any:
    """The checkpoint's image processor, in its PIL flavour (the default one needs torchvision)."""
    import transformers

    config = json.loads((folder / PREPROCESSOR).read_text(encoding="utf-8"))
    name = config.get("image_processor_type") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name.endswith(("ImageProcessor", "ImageProcessorFast")):
        raise ValueError(f"its {PREPROCESSOR} names no image processor")
    pil = getattr(transformers, name.removesuffix("Fast") + "Pil", None)
    if pil is None:
        raise ValueError(f"its image processor {name} has no PIL version in transformers")
    return pil.from_pretrained(folder, local_files_only=True)


def quiet_libraries() -> None:
    """Keep transformers' and the hub's progress bars, advice and warnings (nothing a user can act on) out of the
    CLI's stderr and the MCP client's log; our own messages say what matters."""
    import warnings

    from transformers.utils import logging as hf_logging

    quiet_hub()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for module in ("transformers", "torch"):
        warnings.filterwarnings("ignore", module=module)
