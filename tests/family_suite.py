"""The behaviour every supported model family must show, run by one test module per family (test_family_*.py).

Each module makes its fixtures with `family_fixtures`: `checkpoint` (a tiny random checkpoint of its family, written
by its own transformers classes with a real tokenizer of its family's class), `other` (another one, seed 1),
`family` (the key `model_families.detect` must give) and `text_rules` (how the family's text must be fed), then
imports the tests below.
Everything goes through the production path: TransformersEncoder, ClipSearch and the MCP tools.
"""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import mcp_client
from server.config import Settings
from server.encoders.protocol import normalize
from server.encoders.torch_engine import TransformersEncoder
from server.service import ClipSearch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TEXTS = [
    "a red car",
    "A Photo of a CAT on the sofa",
    "Ein Hund im Schnee",
    "一只狗在雪地里",
    "猫がソファで寝ている",
    "",
]


__all__ = [  # what each family's module takes with `from family_suite import *`, so its tests run there
    "family_fixtures",
    "test_a_checkpoint_missing_weights_is_refused_not_filled_with_random_ones",
    "test_a_checkpoint_saved_the_transformers_5_way_searches_as_the_hub_layout_does",
    "test_another_model_for_the_collection_is_refused",
    "test_family_is_told_from_the_checkpoint_files",
    "test_indexes_and_searches_by_text_and_image_through_the_tools",
    "test_preprocessing_equals_the_checkpoints_own_image_processor",
    "test_texts_are_fed_as_the_family_was_trained",
    "workspace",
]


def family_fixtures(
    key: str, write: Callable[[Path, str, int], Path], lowercase: bool, pad_to_context: bool
) -> tuple[Any, Any, Any, Any]:
    """The fixtures `checkpoint`, `other`, `family` and `text_rules` for one family."""

    def written(factory: pytest.TempPathFactory, seed: int) -> Path:
        return write(factory.mktemp(f"{key}-{seed}"), "tiny", seed)

    @pytest.fixture(scope="module")
    def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return written(tmp_path_factory, 0)

    @pytest.fixture(scope="module")
    def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return written(tmp_path_factory, 1)

    @pytest.fixture
    def family() -> str:
        return key

    @pytest.fixture
    def text_rules() -> dict[str, Any]:
        return {"lowercase": lowercase, "pad_to_context": pad_to_context}

    return checkpoint, other, family, text_rules


@pytest.fixture
def workspace(tmp_path: Path, checkpoint: Path) -> Path:
    """One allowed root holding the photos, the checkpoint and an outside copy of each photo (query images)."""
    root = tmp_path / "root"
    shutil.copytree(SAMPLES, root / "photos", ignore=shutil.ignore_patterns("*.md"))
    shutil.copytree(checkpoint, root / "model")
    queries = root / "queries"
    queries.mkdir()
    for photo in (root / "photos").rglob("*.jpg"):
        shutil.copy(photo, queries / f"{photo.parent.name}-{photo.name}")
    return root


def test_family_is_told_from_the_checkpoint_files(checkpoint: Path, family: str) -> None:
    assert TransformersEncoder(str(checkpoint)).family.key == family


def test_preprocessing_equals_the_checkpoints_own_image_processor(checkpoint: Path) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint, local_files_only=True)
    encoder = TransformersEncoder(str(checkpoint))
    rng = np.random.default_rng(0)
    for size in [(640, 480), (333, 517), (224, 224), (1000, 97)]:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(encoder.preprocess(image), expected, atol=1e-5)


def test_texts_are_fed_as_the_family_was_trained(checkpoint: Path, text_rules: dict[str, Any]) -> None:
    import torch
    from transformers import AutoTokenizer

    from server.models.families import detect, model_class

    encoder = TransformersEncoder(str(checkpoint))
    got = encoder.encode_texts(TEXTS)
    # The family's rules, applied here by hand to the checkpoint's own tokenizer and model.
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = model_class(detect(checkpoint, "test")).from_pretrained(checkpoint, local_files_only=True).eval()
    context = model.config.text_config.max_position_embeddings
    texts = [t.lower() for t in TEXTS] if text_rules["lowercase"] else TEXTS
    padding = "max_length" if text_rules["pad_to_context"] else True
    tokens = tokenizer(texts, padding=padding, truncation=True, max_length=context, return_tensors="pt")
    with torch.inference_mode():
        output = model.get_text_features(**tokens)
    expected = normalize(getattr(output, "pooler_output", output).numpy())
    assert got.shape == (len(TEXTS), encoder.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    unknown = tokenizer.unk_token_id
    for text in ("一只狗在雪地里", "猫がソファで寝ている"):  # non-Latin text reaches the model as real tokens
        ids = tokenizer(text)["input_ids"]
        assert any(i != unknown and i not in tokenizer.all_special_ids for i in ids)


@pytest.mark.anyio
async def test_indexes_and_searches_by_text_and_image_through_the_tools(workspace: Path, tmp_path: Path) -> None:
    model = str(workspace / "model")
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model="openai/clip-vit-base-patch32"))
    photos = sorted((workspace / "photos").rglob("*.jpg"))
    async with mcp_client(service, [workspace]) as client:
        indexed = await client.call_tool(
            "index_folder", {"folder": str(workspace / "photos"), "collection": "family", "model": model}
        )
        assert not indexed.is_error, indexed.content
        assert indexed.structured_content["state"] == "done"  # type: ignore[index]
        found = {}
        for query in ("a cat on a sofa", "一只猫", "猫の写真"):
            result = await client.call_tool("search_images_by_text", {"query": query, "collection": "family", "k": 3})
            assert not result.is_error, result.content
            found[query] = result.structured_content["results"]  # type: ignore[index]
        listed = await client.call_tool("list_collections", {})
        # Self-retrieval: a copy of each photo outside the collection is embedded afresh and must find its original.
        firsts = []
        for photo in photos:
            copy = workspace / "queries" / f"{photo.parent.name}-{photo.name}"
            similar = await client.call_tool(
                "search_similar_images", {"image_path": str(copy), "collection": "family", "k": 1}
            )
            assert not similar.is_error, similar.content
            firsts.append(similar.structured_content["results"][0])  # type: ignore[index]

    assert all(len(hits) == 3 for hits in found.values())
    collections = listed.structured_content["collections"]  # type: ignore[index]
    assert [(c["name"], c["model"], c["images"]) for c in collections] == [("family", model, len(photos))]
    assert [Path(hit["path"]).name for hit in firsts] == [p.name for p in photos]
    assert min(hit["score"] for hit in firsts) >= 0.999
    manifest = service.store.read_manifest("family")
    assert manifest.model == model and manifest.dim == service.encoders.get(model).dim


@pytest.mark.anyio
async def test_another_model_for_the_collection_is_refused(workspace: Path, tmp_path: Path, other: Path) -> None:
    shutil.copytree(other, workspace / "other-model")
    service = ClipSearch(Settings(index_dir=tmp_path / "index", model="openai/clip-vit-base-patch32"))
    folder = str(workspace / "photos")
    async with mcp_client(service, [workspace]) as client:
        first = await client.call_tool(
            "index_folder", {"folder": folder, "collection": "family", "model": str(workspace / "model")}
        )
        refused = await client.call_tool(
            "index_folder", {"folder": folder, "collection": "family", "model": str(workspace / "other-model")}
        )
        outside = await client.call_tool(
            "index_folder", {"folder": folder, "collection": "new", "model": str(tmp_path / "elsewhere")}
        )

    assert not first.is_error, first.content
    assert refused.is_error and "it cannot take" in refused.content[0].text  # type: ignore[union-attr]
    assert outside.is_error and "outside" in outside.content[0].text  # type: ignore[union-attr]
    assert service.collection("family").count() == 9


def test_a_checkpoint_missing_weights_is_refused_not_filled_with_random_ones(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from server.errors import ModelUnavailable

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    tensors = load_file(broken / "model.safetensors")
    dropped = sorted(name for name in tensors if "text" in name and name.endswith("weight"))[0]
    del tensors[dropped]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ModelUnavailable, match="weights lack 1 tensors"):
        TransformersEncoder(str(broken)).encode_texts(["a cat"])


def saved_the_transformers_5_way(checkpoint: Path, folder: Path) -> Path:
    """`checkpoint` with its processor saved by today's `save_pretrained`: `processor_config.json` (the image
    processor under "image_processor") and no `preprocessor_config.json`."""
    from transformers import AutoProcessor

    shutil.copytree(checkpoint, folder)
    (folder / "preprocessor_config.json").unlink()
    saved = folder.parent / f"{folder.name}-processor"
    AutoProcessor.from_pretrained(checkpoint, local_files_only=True).save_pretrained(saved)
    assert not (saved / "preprocessor_config.json").exists()
    shutil.copy(saved / "processor_config.json", folder / "processor_config.json")
    return folder


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_checkpoint_saved_the_transformers_5_way_searches_as_the_hub_layout_does(
    checkpoint: Path, tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    resaved = saved_the_transformers_5_way(checkpoint, tmp_path / "resaved")
    results = {}
    for name, model in (("hub", checkpoint), ("resaved", resaved)):
        service = ClipSearch(Settings(index_dir=tmp_path / name, model=str(model), engine=engine))
        service.index_folder(SAMPLES)
        by_text = service.search_text("a photo of a cat", k=9)
        by_image = service.search_image(SAMPLES / "cat" / "chelsea.jpg", k=9)
        results[name] = [[(hit.path, hit.score) for hit in r.results] for r in (by_text, by_image)]

    for hub, resaved_hits in zip(results["hub"], results["resaved"], strict=True):
        assert [path for path, _ in resaved_hits] == [path for path, _ in hub]
        np.testing.assert_allclose([s for _, s in resaved_hits], [s for _, s in hub], atol=1e-5)
