"""The torch engine: a transformers image-text model embedding images and text into one L2-normalised float32
space. The real model loads once, lazily.

One path serves every family in `models/families.py` (CLIP, SigLIP, SigLIP 2, MetaCLIP 2, other transformers dual
encoders): the family picks the model class and the text handling; the image preprocessing is read from the
checkpoint's own processor config and reproduced here (tested equal to the processor)."""

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.encoders.protocol import Preprocessing, TextCache, Vectors, normalize
from server.errors import ModelUnavailable, first_line
from server.models.families import Family, detect, model_class
from server.models.files import DownloadTracker, ModelFiles, image_processor_config, locate, quiet_hub

log = logging.getLogger(__name__)

_LOADING = threading.Lock()


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

    @property
    def family_key(self) -> str:
        """The family's key, told from the checkpoint's config and tokenizer files without loading the weights."""
        if self._loaded is not None:
            return self._loaded.family.key
        return detect(self.files.folder, self.files.name).key

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
        # local_files_only: the folder is complete (models/files.py checked it), so nothing may go to the network.
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
            "preprocessor_config.json or processor_config.json)."
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

    config = image_processor_config(folder)
    name = config.get("image_processor_type")
    if not isinstance(name, str) or not name.endswith(("ImageProcessor", "ImageProcessorFast")):
        raise ValueError("its image processor settings name no image processor type")
    pil = getattr(transformers, name.removesuffix("Fast") + "Pil", None)
    if pil is None:
        raise ValueError(f"its image processor {name} has no PIL version in transformers")
    return pil.from_dict(config)


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
