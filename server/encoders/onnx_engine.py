"""The ONNX Runtime engine: `OnnxEncoder`, the `Encoder` protocol over a model's exported text and vision towers
(`onnx_export`). A process that searches needs onnxruntime, `tokenizers` and numpy only: torch and transformers are
imported only to export, or when the export is refused and torch stays the engine. int8 (opt-in per collection)
runs the quantised towers; it needs no torch at all. `resolve_engine` says which engine `auto` means here."""

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.encoders.onnx_export import (
    EXPORT_FORMAT,
    Export,
    ExportRefused,
    cache_root,
    export_into,
    find_or_build,
    preprocessing_of,
    quantize_into,
    session_options,
    token_arrays,
)
from server.encoders.protocol import Preprocessing, TextCache, Vectors, normalize
from server.encoders.torch_engine import TransformersEncoder
from server.errors import InvalidArgument, ModelUnavailable
from server.limits import ENGINES, PRECISIONS

log = logging.getLogger(__name__)


def resolve_engine(requested: str) -> str:
    """'onnx' or 'torch' for a requested engine: auto is ONNX Runtime on CPU, torch where CUDA is (checked without
    importing torch) or onnxruntime is not installed."""
    if requested not in ENGINES:
        raise InvalidArgument(f"Unknown engine {requested!r}; choose one of {', '.join(ENGINES)}.")
    has_runtime = importlib.util.find_spec("onnxruntime") is not None
    if requested == "onnx" and not has_runtime:
        raise ModelUnavailable("The onnx engine needs onnxruntime: pip install onnxruntime (or use --engine torch).")
    if requested == "torch" or not has_runtime:
        return "torch"
    if requested == "auto" and _has_cuda():
        return "torch"
    return "onnx"


def _has_cuda() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


class OnnxEncoder:
    """The `Encoder` on ONNX Runtime, over a torch `reference` that exports (once) and stands in if it must.

    With `strict` (the engine was asked for by name), an export that fails is an error naming the fix; otherwise
    it is one warning, and torch does the work. An int8 encoder is always strict: torch cannot stand in for it
    (a collection's vectors all come from one precision)."""

    def __init__(
        self,
        reference: TransformersEncoder,
        cache: Path | None = None,
        strict: bool = False,
        precision: str = "fp32",
        threads: int | None = None,  # ONNX Runtime's intra-op threads; None: one per core
    ) -> None:
        if precision not in PRECISIONS:
            raise InvalidArgument(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
        self.reference = reference
        self.model_name = reference.model_name
        self.batch_size = reference.batch_size
        self.cache = cache or cache_root()
        self.precision = precision
        self.strict = strict or precision != "fp32"
        self.threads = threads
        self._lock = threading.Lock()
        self._export: Export | None = None
        self._decided = False
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._preprocessing: Preprocessing | None = None
        self._texts = TextCache()

    @property
    def model_identity(self) -> str:
        return self.reference.model_identity

    @property
    def family_key(self) -> str:
        return self.reference.family_key

    @property
    def engine(self) -> str:
        """'onnx', or 'torch' where the export was refused."""
        return "onnx" if self._ready() else "torch"

    @property
    def dim(self) -> int:
        ready = self._ready()
        return ready.dim if ready else self.reference.dim

    @property
    def input_size(self) -> int:
        return self._image_preprocessing().input_size if self._ready() else self.reference.input_size

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        if not self._ready():
            return self.reference.preprocess(image)
        return self._image_preprocessing()(image)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> Vectors:
        ready = self._ready()
        if not ready:
            return self.reference.encode_pixels(batch)
        session = self._session("vision")
        outputs = [
            session.run(None, {"pixel_values": np.ascontiguousarray(batch[i : i + self.batch_size], np.float32)})[0]
            for i in range(0, len(batch), self.batch_size)
        ]
        return normalize(np.concatenate(outputs) if outputs else np.zeros((0, ready.dim), np.float32))

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        if not self._ready():
            return self.reference.encode_texts(texts)
        return self._texts.encode(texts, self._embed_texts)

    def load_text_tower(self) -> None:
        """Load the text tower now (the server's warm-up: searches come first)."""
        if self._ready():
            self._session("text")
            self._text_tokenizer()

    def _embed_texts(self, texts: Sequence[str]) -> Vectors:
        ready = self._ready()
        assert ready is not None
        session, tokenizer = self._session("text"), self._text_tokenizer()
        outputs = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            feeds = token_arrays(tokenizer, batch, ready.lowercase)
            outputs.append(session.run(None, {name: feeds[name] for name in ready.text_inputs})[0])
        return normalize(np.concatenate(outputs) if outputs else np.zeros((0, ready.dim), np.float32))

    # --- the export, found or made --------------------------------------------------------------------------

    def _ready(self) -> Export | None:
        if not self._decided:
            with self._lock:
                if not self._decided:
                    self._export = self._find_or_make()
                    self._decided = True
        return self._export

    @property
    def folder(self) -> Path:
        return self._folder(self.precision)

    def _folder(self, precision: str) -> Path:
        suffix = "" if precision == "fp32" else f"-{precision}"
        return self.cache / f"{self.model_identity.split(':')[-1][:40]}-f{EXPORT_FORMAT}{suffix}"

    def _find_or_make(self) -> Export | None:
        def fp32(folder: Path) -> Export:
            return find_or_build(folder, self.model_identity, lambda work: export_into(self.reference, work))

        try:
            if self.precision == "fp32":
                return fp32(self.folder)
            base = self._folder("fp32")  # made (or found) only when the int8 export must be made
            return find_or_build(
                self.folder, self.model_identity, lambda work: quantize_into(base, fp32(base), work, self.model_name)
            )
        except (ExportRefused, OSError) as exc:
            what = "int8 version" if self.precision == "int8" else "export"
            reason = f"the ONNX {what} of '{self.model_name}' failed ({exc})"
            if self.precision == "int8":
                raise ModelUnavailable(
                    f"{reason[0].upper()}{reason[1:]}. int8 collections need it; index into a collection without "
                    "--precision int8 instead."
                ) from exc
            if self.strict:
                raise ModelUnavailable(
                    f"{reason[0].upper()}{reason[1:]}. Use --engine torch (or CLIPSEARCH_ENGINE=torch)."
                ) from exc
            log.warning("%s; using torch for this model", reason)
            return None

    def _session(self, tower: str) -> Any:
        with self._lock:
            if tower not in self._sessions:
                import onnxruntime

                options = session_options(self.threads)
                path = str(self.folder / f"{tower}.onnx")
                self._sessions[tower] = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            return self._sessions[tower]

    def _text_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return self._tokenizer

    def _image_preprocessing(self) -> Preprocessing:
        if self._preprocessing is None:
            ready = self._ready()
            assert ready is not None
            self._preprocessing = preprocessing_of(ready)
        return self._preprocessing
