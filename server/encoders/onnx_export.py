"""Making and checking ONNX exports: a model's text and vision towers exported once from the torch reference,
checked against it (cosine ≥ 0.99999 on probe texts and images, identical token ids), and cached per model identity;
int8 towers are the fp32 export dynamically quantised (weights int8 per channel, activations quantised on the fly),
checked against fp32 on the same probes and cached beside it.

Cache layout: `<cache>/onnx/<identity>-f<format>[-int8]/` holding `text.onnx`, `vision.onnx`, `tokenizer.json`
and, written last, `export.json` (sizes, SHA-256 and mtimes of the files; the tokenizer's rules; the
preprocessing). An export is built in a hidden temporary folder and renamed into place, so an export killed
half-way or racing another process never leaves a folder that a later run trusts."""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from server.atomic_files import write_atomically
from server.encoders.fast_tokenizers import NoFastTokenizer, fast_tokenizer
from server.encoders.protocol import Preprocessing, Vectors, normalize
from server.encoders.torch_engine import TransformersEncoder
from server.models.files import weight_files

log = logging.getLogger(__name__)

# Bump when what an export holds changes: older exports are then made again (and removed). 2: weights in a
# memory-mapped file beside each tower.
EXPORT_FORMAT = 2


ENV_CACHE = "CLIPSEARCH_CACHE"


MIN_COSINE = 0.99999


INT8_MIN_COSINE = 0.98  # int8 against fp32 on the probes; lower means the quantisation broke the model


# Peak memory of an export, as a multiple of the weight files: measured 3.2x (SigLIP base), 3.4x (MetaCLIP 2 B/32),
# 3.9x (CLIP B/32). An export killed for memory would be tried again, and killed again, on every run.
EXPORT_MEMORY_FACTOR = 4.0


META = "export.json"


TOWERS = ("text", "vision")


OPSET = 17


PROBE_TEXTS = (
    "a photo of a cat",
    "",
    "A Bicycle by the BEACH at sunset, 2019!",
    "東京の夜景 and a 🚲 emoji",
    "naïve café crème brûlée",
    "one two three " * 40,  # longer than the context: truncated
)


class ExportRefused(Exception):
    """The towers cannot be exported or do not match the torch reference."""


def cache_root() -> Path:
    """Where exports live: $CLIPSEARCH_CACHE/onnx, else the user's cache folder."""
    configured = os.environ.get(ENV_CACHE)
    if configured:
        return Path(configured).expanduser() / "onnx"
    from platformdirs import user_cache_path

    return user_cache_path("clipsearch", appauthor=False) / "onnx"


@dataclass(frozen=True)
class Export:
    """What `export.json` records of one export."""

    model_identity: str
    dim: int
    context_length: int
    lowercase: bool
    text_inputs: tuple[str, ...]
    preprocessing: dict[str, Any]
    files: dict[str, dict[str, Any]]  # name -> {size, sha256, mtime_ns}
    min_cosine: float  # against the torch reference (fp32), or against the fp32 export (int8)
    precision: str = "fp32"


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime's options for our sessions: quiet, not spinning, `threads` intra-op threads (None: its default,
    one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    # Idle ORT threads would otherwise spin for a while after each run, taking the cores FAISS searches with next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def token_arrays(tokenizer: Any, texts: Sequence[str], lowercase: bool = False) -> dict[str, npt.NDArray[np.int64]]:
    """The text tower's inputs (ids and mask, int64) for `texts`, lower-cased first for families trained so."""
    encoded = tokenizer.encode_batch([t.lower() for t in texts] if lowercase else list(texts))
    return {
        "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64),
    }


def read_export(folder: Path) -> Export | None:
    """The export in `folder` if it is complete and intact: every file the size recorded, and where a file's mtime
    changed since, its SHA-256 too. Anything else (absent, half-written, truncated, edited) is None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        export = Export(**{**meta, "text_inputs": tuple(meta["text_inputs"])})
        for name, recorded in export.files.items():
            stat = (folder / name).stat()
            if stat.st_size != recorded["size"]:
                log.warning("the ONNX export %s is damaged (%s has the wrong size); exporting again", folder, name)
                return None
            if stat.st_mtime_ns != recorded["mtime_ns"] and _sha256(folder / name) != recorded["sha256"]:
                log.warning("the ONNX export %s is damaged (%s changed); exporting again", folder, name)
                return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return export


def find_or_build(folder: Path, identity: str, build: Callable[[Path], Export]) -> Export:
    """The intact export of `identity` in `folder`, or a new one `build` makes (a damaged one is set aside first)."""
    found = read_export(folder)
    if found is not None and found.model_identity == identity:
        return found
    if folder.exists():  # damaged or stale: set aside, then made again
        _remove(folder)
    return make_export(folder, build)


def make_export(folder: Path, build: Callable[[Path], Export]) -> Export:
    """Build an export into a hidden folder beside `folder` (`build` writes the files and checks them), then rename
    it into place: readers see a whole export or none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder.parent)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        export = build(work)
        try:
            os.rename(work, folder)
        except OSError:
            found = read_export(folder)  # another process finished first: theirs is as good
            if found is None:
                raise
            _remove(work)
            return found
        _remove_older_formats(folder)
        return export
    except BaseException:
        _remove(work)
        raise


def export_into(reference: TransformersEncoder, work: Path) -> Export:
    _check_memory(weight_files(reference.files.folder))
    import torch

    log.warning(
        "exporting '%s' to ONNX, once per model (about 10 s for ViT-B/32 on 2 cores); later runs start from it",
        reference.model_name,
    )
    parts = reference.torch_parts()
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(fast_tokenizer(parts.tokenizer).to_str())
    except NoFastTokenizer as exc:
        raise ExportRefused(str(exc)) from exc
    tokenizer.enable_truncation(max_length=parts.context_length)
    pad_id = parts.tokenizer.pad_token_id
    if pad_id is None:
        raise ExportRefused("its tokenizer has no padding token")
    length = parts.context_length if parts.family.pad_to_context else None
    tokenizer.enable_padding(pad_id=pad_id, pad_token=parts.tokenizer.pad_token, length=length)
    tokenizer.save(str(work / "tokenizer.json"))
    text_inputs = tuple(n for n in ("input_ids", "attention_mask") if n in parts.tokenizer.model_input_names)
    _check_tokens(parts, tokenizer)

    model = parts.model.float().cpu() if parts.device != "cpu" else parts.model
    probe = token_arrays(tokenizer, ["a photo", "two words here"])
    text_args = tuple(torch.from_numpy(probe[name]) for name in text_inputs)
    size = parts.preprocessing.crop_height or parts.preprocessing.height or parts.preprocessing.shortest_edge
    width = parts.preprocessing.crop_width or parts.preprocessing.width or parts.preprocessing.shortest_edge
    pixels = torch.zeros((2, 3, size, width), dtype=torch.float32)
    towers = {
        "text": (_tower(model, "get_text_features", text_inputs), text_args, text_inputs),
        "vision": (_tower(model, "get_image_features", ("pixel_values",)), (pixels,), ("pixel_values",)),
    }
    for name, (tower, args, inputs) in towers.items():
        axes = {i: {0: "batch", 1: "tokens"} if i != "pixel_values" else {0: "batch"} for i in inputs}
        raw = work / f"raw-{name}"  # the exporter writes a tower over 2 GB as many files: kept apart, then joined
        raw.mkdir()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's advice about the model's Python branches
                torch.onnx.export(
                    tower,
                    args,
                    str(raw / f"{name}.onnx"),
                    input_names=list(inputs),
                    output_names=["embeds"],
                    dynamic_axes={**axes, "embeds": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            _with_external_weights(raw / f"{name}.onnx", work / f"{name}.onnx")
        except Exception as exc:  # the exporter raises many kinds; all mean the same here
            raise ExportRefused(f"the {name} tower did not export: {str(exc).splitlines()[0][:200]}") from exc
        finally:
            shutil.rmtree(raw, ignore_errors=True)
    export = Export(
        model_identity=reference.model_identity,
        dim=parts.dim,
        context_length=parts.context_length,
        lowercase=parts.family.lowercase,
        text_inputs=text_inputs,
        preprocessing=asdict(parts.preprocessing),
        files={},
        min_cosine=0.0,
    )
    theirs = _probe_vectors(export, reference.encode_texts, reference.encode_pixels)
    ours = _probe_vectors(export, *_onnx_encoders(work, export))
    cosine = _min_cosine(ours, theirs)
    if not cosine >= MIN_COSINE:
        raise ExportRefused(f"its ONNX towers differ from torch (cosine {cosine:.6f} < {MIN_COSINE})")
    return _seal(work, replace(export, min_cosine=cosine))


def _check_memory(weights: Sequence[Path]) -> None:
    """Refuse an export this machine has too little free memory for, rather than be killed half-way."""
    needed = EXPORT_MEMORY_FACTOR * sum(path.stat().st_size for path in weights)
    available = available_memory()
    if available is not None and available < needed:
        raise ExportRefused(
            f"exporting needs about {needed / 1e9:.1f} GB of free memory and {available / 1e9:.1f} GB is available"
        )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _with_external_weights(source: Path, target: Path) -> None:
    """Save the graph at `source` as `target` with its weights in one file beside it (`<target>.data`): ONNX
    Runtime memory-maps such a file, so a session opens in a fraction of the time and only the weights in use (the
    rows of a large vocabulary's embedding a query touches) become resident."""
    import onnx

    model = onnx.load(str(source))  # with the exporter's own external files, if it wrote any
    onnx.save_model(model, str(target), save_as_external_data=True, location=f"{target.name}.data")


def quantize_into(base: Path, fp32: Export, work: Path, name: str) -> Export:
    """The fp32 export `fp32` in `base`, dynamically quantised to int8 into `work`, checked against it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _check_memory([base / file for file in fp32.files])  # not measured for quantising: the export's factor
    log.warning("making the int8 version of '%s', once per model (about 10 s for ViT-B/32 on 2 cores)", name)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing on the root logger
    try:
        for tower in TOWERS:
            quantize_dynamic(
                base / f"{tower}.onnx",
                work / f"{tower}.onnx",
                weight_type=QuantType.QInt8,
                per_channel=True,
                use_external_data_format=True,  # memory-mapped, as the fp32 weights are
            )
    except Exception as exc:  # the quantiser raises what onnx raises
        raise ExportRefused(f"quantisation failed: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        root.setLevel(level)
    shutil.copyfile(base / "tokenizer.json", work / "tokenizer.json")
    export = replace(fp32, precision="int8", files={})
    cosine = _min_cosine(
        _probe_vectors(export, *_onnx_encoders(work, export)), _probe_vectors(fp32, *_onnx_encoders(base, fp32))
    )
    if not cosine >= INT8_MIN_COSINE:
        raise ExportRefused(f"its int8 towers differ too much from fp32 (cosine {cosine:.4f} < {INT8_MIN_COSINE})")
    return _seal(work, replace(export, min_cosine=cosine))


def _seal(work: Path, export: Export) -> Export:
    """Record every file's size and hash (the towers, the tokenizer, and the external weight files the exporter
    writes beside a tower over 2 GB) and write `export.json`, last."""
    files = {}
    for path in sorted(p for p in work.iterdir() if p.is_file() and p.name != META):
        stat = path.stat()
        files[path.name] = {"size": stat.st_size, "sha256": _sha256(path), "mtime_ns": stat.st_mtime_ns}
    sealed = replace(export, files=files)
    write_atomically(work / META, json.dumps(asdict(sealed), indent=2).encode("utf-8"))
    return sealed


def _tower(model: Any, method: str, names: Sequence[str]) -> Any:
    """One tower as a module with positional inputs, for the exporter's tracer (the model a submodule, so its
    weights are the graph's weights)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            output = getattr(self.model, method)(**dict(zip(names, inputs, strict=True)))
            return getattr(output, "pooler_output", output)

    return Tower().eval()


def _check_tokens(parts: Any, tokenizer: Any) -> None:
    theirs = parts.tokens(PROBE_TEXTS)["input_ids"]
    ours = token_arrays(tokenizer, PROBE_TEXTS, parts.family.lowercase)["input_ids"].tolist()
    if [list(ids) for ids in theirs] != ours:
        raise ExportRefused("its `tokenizers` version gives other token ids than transformers")


TextFn = Callable[[Sequence[str]], Vectors]


PixelFn = Callable[[npt.NDArray[np.float32]], Vectors]


def _probe_vectors(export: Export, texts: TextFn, pixels: PixelFn) -> tuple[Vectors, Vectors]:
    """One encoder's vectors of the probe texts and of four probe images (noise of several shapes)."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, size=(48 + 16 * i, 64, 3), dtype=np.uint8)).resize((300, 240 + 20 * i))
        for i in range(4)
    ]
    preprocessing = preprocessing_of(export)
    return texts(list(PROBE_TEXTS)), pixels(np.stack([preprocessing(image) for image in images]))


def _onnx_encoders(folder: Path, export: Export) -> tuple[TextFn, PixelFn]:
    """Text and pixel encoders over the towers in `folder`, in fresh sessions (for checking an export)."""
    import onnxruntime
    from tokenizers import Tokenizer

    options = session_options()
    text = onnxruntime.InferenceSession(str(folder / "text.onnx"), options, providers=["CPUExecutionProvider"])
    vision = onnxruntime.InferenceSession(str(folder / "vision.onnx"), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def encode_texts(texts: Sequence[str]) -> Vectors:
        feeds = token_arrays(tokenizer, texts, export.lowercase)
        return normalize(text.run(None, {n: feeds[n] for n in export.text_inputs})[0])

    def encode_pixels(batch: npt.NDArray[np.float32]) -> Vectors:
        return normalize(vision.run(None, {"pixel_values": batch})[0])

    return encode_texts, encode_pixels


def _min_cosine(ours: tuple[Vectors, Vectors], theirs: tuple[Vectors, Vectors]) -> float:
    return float(min((a * b).sum(axis=1).min() for a, b in zip(ours, theirs, strict=True)))


def preprocessing_of(export: Export) -> Preprocessing:
    fields = dict(export.preprocessing)
    fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
    return Preprocessing(**fields)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_older_formats(folder: Path) -> None:
    """A new export replaces the same model's exports of earlier formats (each up to a few GB)."""
    identity, _, rest = folder.name.partition("-f")
    suffix = rest.removeprefix(str(EXPORT_FORMAT))
    for old in range(1, EXPORT_FORMAT):
        stale = folder.with_name(f"{identity}-f{old}{suffix}")
        if stale.exists():
            _remove(stale)


def _remove_stale(cache: Path, age_s: float = 3600) -> None:
    """Delete what killed exports left behind (hidden folders untouched for an hour; a live export writes on)."""
    now = time.time()
    for leftover in [*cache.glob(".export-*"), *cache.glob(".removed-*")]:
        try:
            if now - leftover.stat().st_mtime > age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _remove(folder: Path) -> None:
    """Rename a folder aside first (so no reader sees it half-deleted), then delete it."""
    aside = folder.with_name(f".removed-{folder.name}-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)
