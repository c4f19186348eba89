"""The family behaviour suite (family_suite.py) on CLIP (OpenAI, LAION, DFN, MetaCLIP 1 checkpoints): CLIPModel,
CLIPTokenizer (byte-level BPE)."""

from pathlib import Path
from typing import Any

import pytest
from family_suite import (  # noqa: F401 - the imported tests run in this module
    test_another_model_for_the_collection_is_refused,
    test_family_is_told_from_the_checkpoint_files,
    test_indexes_and_searches_by_text_and_image_through_the_tools,
    test_preprocessing_equals_the_checkpoints_own_image_processor,
    test_texts_are_fed_as_the_family_was_trained,
    workspace,
)

from bench.checkpoint import write_random_clip as write


def _written(factory: pytest.TempPathFactory, seed: int) -> Path:
    folder = factory.mktemp(f"clip-{seed}")
    return write(folder, "tiny", seed=seed)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _written(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _written(tmp_path_factory, 1)


@pytest.fixture
def family() -> str:
    return "clip"


@pytest.fixture
def text_rules() -> dict[str, Any]:
    return {"lowercase": False, "pad_to_context": False}
