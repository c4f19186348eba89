"""Shared fixtures: a tiny real CLIP checkpoint on disk, a deterministic fake encoder, and image folders."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from server.config import Settings
from server.encoder import normalize
from server.service import ClipSearch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 200, 30),
    "blue": (25, 30, 220),
    "yellow": (230, 220, 30),
    "white": (245, 245, 245),
}


def write_tiny_clip(folder: Path) -> Path:
    """A CLIP checkpoint with random weights: the real CLIPModel, CLIPTokenizer and preprocessor config, tiny."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=24,
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


class FakeEncoder:
    """Deterministic stand-in for CLIP: an image's vector is its mean colour; colour words map to their colour."""

    model_name = "fake-color-encoder"
    dim = 3
    input_size = 16

    def __init__(self) -> None:
        self.images_encoded = 0
        self.texts_encoded: list[str] = []

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        pixels = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
        return pixels.reshape(-1, 3).mean(axis=0).astype(np.float32)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.images_encoded += len(batch)
        return normalize(batch)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts_encoded.extend(texts)
        rows = []
        for text in texts:
            words = [w for w in text.lower().split() if w in COLORS]
            rows.append(COLORS[words[-1]] if words else (1.0, 1.0, 1.0))
        return normalize(np.asarray(rows, dtype=np.float32))


def save_color(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> Path:
    """An image of one colour with a little seeded noise, so each file has distinct content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(str(path).encode()[-8:].ljust(8, b"\0"), "little") % (2**32)
    noise = np.random.default_rng(seed).integers(-12, 13, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format=fmt)
    return path


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """photos/<colour>/<colour>_<i>.jpg: three images per colour, labelled by folder."""
    root = tmp_path / "photos"
    for name, rgb in COLORS.items():
        for i in range(3):
            save_color(root / name / f"{name}_{i}.jpg", rgb)
    return root


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def fake_service(index_dir: Path, fake_encoder: FakeEncoder) -> ClipSearch:
    return ClipSearch(Settings(index_dir=index_dir, model=fake_encoder.model_name), encoder=fake_encoder)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
