"""The image-text model families clipsearch runs, told apart by the checkpoint's own files, never by its name.

A family says which transformers class holds the model and how its text is fed: CLIP pads each batch to its longest
text and truncates at the text tower's context (77), SigLIP pads every text to its context (64), SigLIP 2 also
lowercases (it was trained on lowercased text). SigLIP 2's fixed-resolution checkpoints declare model type `siglip`
like SigLIP 1 and are told apart by their Gemma tokenizer. Other transformers dual encoders (a model class with
`get_image_features` and `get_text_features`) run as CLIP does. Code shipped inside a checkpoint is never run.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from server.errors import ModelUnavailable

SUPPORTED = (
    "CLIP (OpenAI, LAION, DFN, MetaCLIP 1 checkpoints), SigLIP, SigLIP 2 (fixed-resolution checkpoints), "
    "MetaCLIP 2, and other transformers image-text dual encoders whose class has get_image_features and "
    "get_text_features"
)


@dataclass(frozen=True)
class Family:
    key: str  # "clip", "siglip", "siglip2", "metaclip2", or another dual encoder's model type
    label: str
    model_class: str  # the transformers class that loads the checkpoint
    pad_to_context: bool = False  # pad every text to the context length (SigLIP) instead of to the batch's longest
    lowercase: bool = False


CLIP = Family("clip", "CLIP", "CLIPModel")
SIGLIP = Family("siglip", "SigLIP", "SiglipModel", pad_to_context=True)
SIGLIP2 = Family("siglip2", "SigLIP 2", "SiglipModel", pad_to_context=True, lowercase=True)
METACLIP2 = Family("metaclip2", "MetaCLIP 2", "MetaClip2Model")
_BY_MODEL_TYPE = {"clip": CLIP, "metaclip_2": METACLIP2}


def detect(folder: Path, name: str) -> Family:
    """The family of the checkpoint in `folder` (called `name` in messages); refuses what clipsearch cannot run."""
    config = _read_json(folder / "config.json", name)
    model_type = config.get("model_type")
    if "auto_map" in config:
        _refuse(name, "it needs code shipped inside the checkpoint (auto_map), which clipsearch never runs")
    if not isinstance(model_type, str):
        _refuse(name, "its config.json names no model_type")
    if model_type == "siglip":
        tokenizer = _read_json(folder / "tokenizer_config.json", name, required=False).get("tokenizer_class")
        return SIGLIP2 if isinstance(tokenizer, str) and tokenizer.startswith("Gemma") else SIGLIP
    if model_type == "siglip2":
        _refuse(name, "it is a NaFlex SigLIP 2 checkpoint (variable resolution, needing patch masks)")
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    return _other_dual_encoder(model_type, name)


def model_class(family: Family) -> Any:
    import transformers

    try:
        return getattr(transformers, family.model_class)
    except (AttributeError, ImportError) as exc:
        raise ModelUnavailable(f"transformers cannot load {family.model_class} here: {exc}") from exc


def _other_dual_encoder(model_type: str, name: str) -> Family:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    class_name = MODEL_MAPPING_NAMES.get(model_type)
    if not isinstance(class_name, str):
        _refuse(name, f"transformers knows no model of type '{model_type}'")
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None or not all(hasattr(cls, m) for m in ("get_image_features", "get_text_features")):
        _refuse(name, f"'{model_type}' ({class_name}) is not an image-text dual encoder")
    return Family(model_type, class_name, class_name)


def _read_json(path: Path, name: str, required: bool = True) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        _refuse(name, f"it has no {path.name}")
    except (OSError, ValueError) as exc:
        _refuse(name, f"its {path.name} cannot be read ({exc})")
    if not isinstance(value, dict):
        _refuse(name, f"its {path.name} is not a JSON object")
    return value


def _refuse(name: str, why: str) -> NoReturn:
    raise ModelUnavailable(f"Cannot use the model '{name}': {why}. clipsearch runs {SUPPORTED}.")
