"""server/models/families.py: families are told from the checkpoint's files; what cannot run is refused, saying why
and what can."""

import json
from pathlib import Path

import pytest

from server.errors import ModelUnavailable
from server.models.families import CLIP, METACLIP2, SIGLIP, SIGLIP2, SUPPORTED, detect


def checkpoint(tmp_path: Path, config: dict[str, object], tokenizer_class: str | None = None) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if tokenizer_class is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}), "utf-8")
    return folder


@pytest.mark.parametrize(
    ("model_type", "tokenizer_class", "family"),
    [
        ("clip", "CLIPTokenizer", CLIP),
        ("siglip", "SiglipTokenizer", SIGLIP),
        ("siglip", "GemmaTokenizer", SIGLIP2),  # SigLIP 2 fixed-resolution checkpoints say "siglip"
        ("siglip", "GemmaTokenizerFast", SIGLIP2),
        ("metaclip_2", "XLMRobertaTokenizer", METACLIP2),
    ],
)
def test_family_comes_from_model_type_and_tokenizer_class_not_the_name(
    tmp_path: Path, model_type: str, tokenizer_class: str, family: object
) -> None:
    folder = checkpoint(tmp_path, {"model_type": model_type}, tokenizer_class)
    assert detect(folder, "google/siglip2-looking-name") == family


def test_another_transformers_dual_encoder_runs_the_clip_way(tmp_path: Path) -> None:
    family = detect(checkpoint(tmp_path, {"model_type": "chinese_clip"}), "m")
    assert (family.model_class, family.pad_to_context, family.lowercase) == ("ChineseCLIPModel", False, False)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"model_type": "siglip2"}, "NaFlex"),
        ({"model_type": "clip", "auto_map": {"AutoModel": "modeling_x.X"}}, "code shipped inside the checkpoint"),
        ({"model_type": "bert"}, "not an image-text dual encoder"),
        ({"model_type": "no_such_model"}, "transformers knows no model of type 'no_such_model'"),
        ({"architectures": ["X"]}, "names no model_type"),
    ],
)
def test_what_cannot_run_is_refused_saying_why_and_what_can(tmp_path: Path, config: dict[str, object], why: str):
    with pytest.raises(ModelUnavailable) as refused:
        detect(checkpoint(tmp_path, config), "some/model")
    assert why in str(refused.value) and "'some/model'" in str(refused.value)
    assert SUPPORTED in str(refused.value)


def test_an_unreadable_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelUnavailable, match=r"config\.json cannot be read"):
        detect(folder, "m")
