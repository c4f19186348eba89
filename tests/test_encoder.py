"""server/encoders/torch_engine.py: TransformersEncoder over a tiny random-weight CLIP checkpoint, through the
production loading path."""

import json
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import server.encoders.protocol as protocol_module
import server.encoders.torch_engine as encoder_module
from server.encoders.protocol import normalize
from server.encoders.torch_engine import TransformersEncoder
from server.errors import ModelUnavailable

PROJECTION_DIM = 24  # conftest.write_tiny_clip
PREPROCESS_TOLERANCE = 1e-5  # observed max abs difference against transformers: 4.8e-7 (float32 rounding)


@pytest.fixture(scope="module")
def encoder(tiny_clip: Path) -> TransformersEncoder:
    return TransformersEncoder(str(tiny_clip))


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode_images(encoder: TransformersEncoder, images: list[Image.Image]) -> np.ndarray:
    return encoder.encode_pixels(np.stack([encoder.preprocess(image) for image in images]))


def assert_unit_rows(vectors: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)


def copy_checkpoint(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if not path.name.startswith(skip):
            shutil.copy(path, target / path.name)
    return target


# --- loading and shapes -----------------------------------------------------------------------------------------


def test_dim_and_input_size_come_from_the_checkpoint(encoder: TransformersEncoder, tiny_clip: Path) -> None:
    config = json.loads((tiny_clip / "config.json").read_text(encoding="utf-8"))

    assert encoder.dim == config["projection_dim"] == PROJECTION_DIM
    assert encoder.input_size == 224
    assert encoder.device == "cpu"


def test_image_vectors_are_unit_float32_rows_of_model_dim(encoder: TransformersEncoder) -> None:
    vectors = encode_images(encoder, [noise_image((64, 48), seed) for seed in range(3)])

    assert vectors.dtype == np.float32
    assert vectors.shape == (3, PROJECTION_DIM)
    assert vectors.flags["C_CONTIGUOUS"]
    assert_unit_rows(vectors)


def test_text_vectors_are_unit_float32_rows_of_model_dim(encoder: TransformersEncoder) -> None:
    vectors = encoder.encode_texts(["a red car", "a dog on a beach", "x"])

    assert vectors.dtype == np.float32
    assert vectors.shape == (3, PROJECTION_DIM)
    assert vectors.flags["C_CONTIGUOUS"]
    assert_unit_rows(vectors)


def test_empty_inputs_give_empty_matrices_of_model_dim(encoder: TransformersEncoder) -> None:
    no_texts = encoder.encode_texts([])
    no_images = encoder.encode_pixels(np.zeros((0, 3, 224, 224), np.float32))

    assert no_texts.shape == no_images.shape == (0, PROJECTION_DIM)
    assert no_texts.dtype == no_images.dtype == np.float32


def test_normalize_scales_rows_to_unit_length_and_leaves_zero_rows_zero() -> None:
    out = normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64))

    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


# --- determinism ------------------------------------------------------------------------------------------------


def test_same_image_gives_the_same_vector_twice(encoder: TransformersEncoder) -> None:
    image = noise_image((80, 60), seed=7)

    first = encode_images(encoder, [image])
    second = encode_images(encoder, [image])

    np.testing.assert_array_equal(first, second)


def test_different_images_give_different_vectors(encoder: TransformersEncoder) -> None:
    vectors = encode_images(encoder, [noise_image((64, 64), 1), Image.new("RGB", (64, 64), (230, 20, 20))])

    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


def test_same_text_gives_the_same_vector_and_different_texts_differ(encoder: TransformersEncoder) -> None:
    first = encoder.encode_texts(["a red car", "a blue boat"])
    second = encoder.encode_texts(["a red car", "a blue boat"])

    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0] - first[1]).max() > 1e-3


def test_batching_does_not_change_vectors(tiny_clip: Path, encoder: TransformersEncoder) -> None:
    small_batches = TransformersEncoder(str(tiny_clip), batch_size=2)
    images = [noise_image((50 + 10 * i, 70), seed=i) for i in range(5)]
    texts = ["red", "a much longer description of a small green boat", "sky", "x y z", "the end"]

    np.testing.assert_allclose(encode_images(small_batches, images), encode_images(encoder, images), rtol=0, atol=1e-5)
    # Padding a short text next to long ones must not change its vector.
    np.testing.assert_allclose(
        small_batches.encode_texts(texts), np.vstack([encoder.encode_texts([t]) for t in texts]), rtol=0, atol=1e-5
    )


# --- long text --------------------------------------------------------------------------------------------------


def test_text_beyond_the_context_is_truncated_not_an_error(encoder: TransformersEncoder) -> None:
    # The tiny tokenizer has no merges: "hello" is 5 tokens, so 15 words fill the 75 slots between BOS and EOS.
    long_text = " ".join(["hello"] * 500)
    fits_exactly = " ".join(["hello"] * 15)
    one_word_short = " ".join(["hello"] * 14)

    vectors = encoder.encode_texts([long_text, fits_exactly, one_word_short])

    assert vectors.shape == (3, PROJECTION_DIM)
    assert_unit_rows(vectors)
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=0, atol=1e-6)
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-4


def test_long_texts_sharing_their_first_80_words_encode_identically(encoder: TransformersEncoder) -> None:
    shared = " ".join(f"word{i}" for i in range(80))
    first = shared + " " + " ".join(["apples"] * 420)
    second = shared + " " + " ".join(["oranges and pears"] * 140)

    vectors = encoder.encode_texts([first, second])

    assert_unit_rows(vectors)
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=0, atol=1e-6)


# --- lazy, single load ------------------------------------------------------------------------------------------


def test_model_loads_once_however_many_threads_ask(tiny_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_load = encoder_module._load_model

    def counting_load(files, device: str | None):  # type: ignore[no-untyped-def]
        calls.append(str(files.folder))
        return real_load(files, device)

    monkeypatch.setattr(encoder_module, "_load_model", counting_load)
    fresh = TransformersEncoder(str(tiny_clip))
    assert calls == []  # construction alone loads nothing
    workers = 6
    start = threading.Barrier(workers, timeout=30)
    image = noise_image((40, 40), seed=3)

    def work(i: int) -> np.ndarray:
        start.wait()
        if i % 2:
            return np.vstack([fresh.encode_texts(["a cat"]), fresh.encode_texts(["a cat"])])
        pixels = np.stack([fresh.preprocess(image)])
        return np.vstack([fresh.encode_pixels(pixels), fresh.encode_pixels(pixels)])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(work, range(workers)))

    assert calls == [str(tiny_clip)]
    for i, result in enumerate(results):
        # Tolerance, not equality: concurrent calls may split torch's intra-op work differently.
        np.testing.assert_allclose(result, results[i % 2], rtol=0, atol=1e-6)
        np.testing.assert_allclose(result[0], result[1], rtol=0, atol=1e-6)


# --- preprocessing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        (224, 224),
        (300, 225),
        (225, 300),
        (640, 480),
        (479, 641),
        (1000, 223),
        (37, 100),
        (50, 50),
        (3, 500),
        (301, 224),
        (224, 301),
    ],
)
def test_preprocessing_matches_transformers_clip_image_processor(
    encoder: TransformersEncoder, tiny_clip: Path, size: tuple[int, int]
) -> None:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip)
    image = noise_image(size, seed=size[0] * 1000 + size[1])

    ours = encoder.preprocess(image)
    theirs = processor(images=image, return_tensors="np").pixel_values[0]

    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=PREPROCESS_TOLERANCE)


# --- failing to load --------------------------------------------------------------------------------------------


def assert_names_model_and_remedy(error: ModelUnavailable, model_name: str) -> None:
    message = str(error)
    assert model_name in message
    assert "CLIPSEARCH_MODEL" in message
    assert "--model" in message


def test_missing_model_folder_raises_model_unavailable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-checkpoint")
    encoder = TransformersEncoder(missing)

    with pytest.raises(ModelUnavailable) as raised:
        _ = encoder.dim

    assert_names_model_and_remedy(raised.value, missing)
    assert encoder._loaded is None


def test_uncached_hub_model_offline_raises_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "clipsearch-tests/no-such-clip-model"
    encoder = TransformersEncoder(name)

    with pytest.raises(ModelUnavailable) as raised:
        encoder.encode_texts(["a red car"])

    assert_names_model_and_remedy(raised.value, name)
    assert encoder._loaded is None


def test_folder_without_weights_raises_model_unavailable_instead_of_random_weights(
    tiny_clip: Path, tmp_path: Path
) -> None:
    folder = copy_checkpoint(tiny_clip, tmp_path / "no-weights", skip=("model.safetensors",))
    encoder = TransformersEncoder(str(folder))

    with pytest.raises(ModelUnavailable) as raised:
        encoder.encode_texts(["a red car"])

    assert_names_model_and_remedy(raised.value, str(folder))


def test_folder_without_preprocessor_config_raises_model_unavailable(tiny_clip: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_clip, tmp_path / "no-preprocessor", skip=("preprocessor_config.json",))

    with pytest.raises(ModelUnavailable) as raised:
        _ = TransformersEncoder(str(folder)).dim

    assert_names_model_and_remedy(raised.value, str(folder))


def test_a_folder_with_neither_processor_file_is_refused_naming_both(tiny_clip: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_clip, tmp_path / "no-processor", skip=("preprocessor_config.json",))

    with pytest.raises(ModelUnavailable) as raised:
        _ = TransformersEncoder(str(folder)).dim

    assert "preprocessor_config.json or processor_config.json" in str(raised.value)


@pytest.mark.parametrize(
    "content, named",
    [
        ("{not json", "its processor_config.json cannot be read as JSON"),
        ('{"processor_class": "CLIPProcessor"}', "its processor_config.json has no 'image_processor' entry"),
        (
            '{"image_processor": {"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 32}}}',
            "its processor_config.json gives the image processor no size",
        ),
    ],
)
def test_a_broken_processor_config_is_refused_naming_the_file_and_nothing_is_written(
    tiny_clip: Path, tmp_path: Path, content: str, named: str
) -> None:
    folder = copy_checkpoint(tiny_clip, tmp_path / "broken-processor", skip=("preprocessor_config.json",))
    (folder / "processor_config.json").write_text(content, encoding="utf-8")
    before = sorted(p.name for p in folder.iterdir())

    with pytest.raises(ModelUnavailable) as raised:
        _ = TransformersEncoder(str(folder)).dim

    assert named in str(raised.value) and str(folder) in str(raised.value)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_weights_file_without_the_vision_tower_raises_model_unavailable(tiny_clip: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = copy_checkpoint(tiny_clip, tmp_path / "text-weights-only")
    weights = load_file(tiny_clip / "model.safetensors")
    text_only = {name: value for name, value in weights.items() if "vision" not in name}
    assert 0 < len(text_only) < len(weights)
    save_file(text_only, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ModelUnavailable):
        _ = TransformersEncoder(str(folder)).dim


def test_text_only_clip_checkpoint_raises_model_unavailable(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path / "clip-text-only"
    CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=PROJECTION_DIM,
            vocab_size=514,
        )
    ).save_pretrained(folder)
    for path in tiny_clip.iterdir():
        if path.name.startswith(("tokenizer", "preprocessor")):
            shutil.copy(path, folder / path.name)

    with pytest.raises(ModelUnavailable):
        _ = TransformersEncoder(str(folder)).dim


def test_folder_without_tokenizer_files_raises_model_unavailable(tiny_clip: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_clip, tmp_path / "no-tokenizer", skip=("tokenizer",))

    with pytest.raises(ModelUnavailable):
        TransformersEncoder(str(folder)).encode_texts(["a red car", "a blue boat"])


def test_texts_seen_lately_are_not_embedded_again_and_the_cache_stays_bounded(
    encoder: TransformersEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol_module, "TEXT_CACHE_SIZE", 3)
    embedded: list[str] = []
    real = encoder._embed_texts

    def counting(texts: Sequence[str]) -> np.ndarray:
        embedded.extend(texts)
        return real(texts)

    monkeypatch.setattr(encoder, "_embed_texts", counting)
    first = encoder.encode_texts(["a cat", "a dog", "a cat"])
    again = encoder.encode_texts(["a dog", "a cat", "a bird"])
    encoder.encode_texts(["a fish", "a horse"])  # pushes the two least recently used out
    encoder.encode_texts(["a dog", "a fish"])

    assert embedded == ["a cat", "a dog", "a bird", "a fish", "a horse", "a dog"]
    np.testing.assert_array_equal(again[:2], first[[1, 0]])
    assert first.shape == (3, encoder.dim) and first.dtype == np.float32
