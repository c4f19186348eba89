"""The ONNX Runtime engine: exports that match torch for every family, token ids identical to transformers', a
search process that never imports torch or transformers, and caches that are damaged, unwritable or killed
mid-export never trusted."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.checkpoint import write_random_clip
from bench.families import write_random_metaclip2, write_random_siglip, write_random_siglip2
from conftest import COLORS, clipsearch, clipsearch_imports, imported, save_color
from server.encoders import onnx_engine, onnx_export
from server.encoders.fast_tokenizers import NoFastTokenizer
from server.encoders.onnx_engine import OnnxEncoder, resolve_engine
from server.encoders.onnx_export import read_export, token_arrays
from server.encoders.torch_engine import TransformersEncoder
from server.errors import InvalidArgument, ModelUnavailable

FAMILIES: dict[str, Callable[[Path], Path]] = {
    "clip": write_random_clip,
    "siglip": write_random_siglip,  # a slow SentencePiece tokenizer, converted by server/encoders/fast_tokenizers.py
    "siglip2": write_random_siglip2,
    "metaclip2": write_random_metaclip2,
}


def varied_texts(n: int = 300) -> list[str]:
    """Short and long, cased, accented, CJK, emoji, punctuation, whitespace-only and empty strings."""
    rng = np.random.default_rng(7)
    pieces = [
        "a",
        "photo",
        "of",
        "The",
        "CAT",
        "bicycle",
        "beach",
        "naïve",
        "café",
        "東京",
        "夜景",
        "🚲",
        "🏖️",
        "!",
        "?",
        ",",
        "2019",
        "  ",
        "\t",
        "Ü",
        "ß",
        "résumé",
        "o'clock",
        "e-mail",
        "x" * 30,
        "über",
        "Ça",
    ]
    texts = ["", " ", "a", "A photo of a cat.", "one two three " * 50]
    while len(texts) < n:
        words = rng.choice(pieces, size=int(rng.integers(1, 25)))
        texts.append(" ".join(words) if rng.random() < 0.7 else "".join(words))
    return texts


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OnnxEncoder:
    folder = FAMILIES[request.param](tmp_path_factory.mktemp(request.param))
    encoder = OnnxEncoder(TransformersEncoder(str(folder)), cache=tmp_path_factory.mktemp("cache"), strict=True)
    assert encoder.engine == "onnx"
    return encoder


def test_every_family_exports_towers_that_match_torch(exported: OnnxEncoder):
    reference = exported.reference
    texts = varied_texts(40)
    ours, theirs = exported.encode_texts(texts), reference.encode_texts(texts)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (60 + i, 80, 3), dtype=np.uint8)) for i in range(6)]
    pixels = np.stack([exported.preprocess(im) for im in images])
    np.testing.assert_array_equal(pixels, np.stack([reference.preprocess(im) for im in images]))
    ours_images, theirs_images = exported.encode_pixels(pixels), reference.encode_pixels(pixels)
    assert exported.dim == reference.dim and exported.input_size == reference.input_size
    assert (ours * theirs).sum(axis=1).min() >= 0.99999
    assert (ours_images * theirs_images).sum(axis=1).min() >= 0.99999


def test_a_model_whose_tokenizer_has_no_tokenizers_version_stays_on_torch_and_says_why(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def no_version(tokenizer: object) -> object:
        raise NoFastTokenizer("its tokenizer has no `tokenizers` version (as a new family's might not)")

    monkeypatch.setattr(onnx_export, "fast_tokenizer", no_version)
    folder = tiny
    quiet = OnnxEncoder(TransformersEncoder(str(folder)), cache=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="server.encoders.onnx_engine"):
        vectors = quiet.encode_texts(["a red car"])
    assert quiet.engine == "torch" and vectors.shape == (1, quiet.dim)
    assert "no `tokenizers` version" in caplog.text and "using torch" in caplog.text
    with pytest.raises(ModelUnavailable, match="--engine torch"):
        OnnxEncoder(TransformersEncoder(str(folder)), cache=tmp_path / "cache", strict=True).encode_texts(["a"])


def test_tokenisation_gives_exactly_the_ids_of_the_transformers_tokenizer(exported: OnnxEncoder):
    parts = exported.reference.torch_parts()
    theirs = parts.tokens(varied_texts())
    ours = token_arrays(exported._text_tokenizer(), varied_texts(), parts.family.lowercase)
    assert ours["input_ids"].tolist() == [list(ids) for ids in theirs["input_ids"]]
    if "attention_mask" in theirs:
        assert ours["attention_mask"].tolist() == [list(m) for m in theirs["attention_mask"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_clip(tmp_path_factory.mktemp("tiny-onnx"))


def test_a_damaged_export_is_noticed_and_made_again(tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    first = OnnxEncoder(TransformersEncoder(str(tiny)), cache=tmp_path)
    expected = first.encode_texts(["a red car"])
    sealed = read_export(first.folder)
    assert sealed is not None and set(sealed.files) == {p.name for p in first.folder.iterdir()} - {"export.json"}
    text = first.folder / "text.onnx"
    size = text.stat().st_size
    with text.open("r+b") as f:
        f.truncate(size // 2)
    assert read_export(first.folder) is None
    second = OnnxEncoder(TransformersEncoder(str(tiny)), cache=tmp_path)
    np.testing.assert_allclose(second.encode_texts(["a red car"]), expected, atol=1e-6)
    assert second.engine == "onnx" and text.stat().st_size == size
    # A file edited in place (same size, new mtime) is caught by its hash.
    with text.open("r+b") as f:
        f.seek(size - 64)
        f.write(b"\0" * 64)
    with caplog.at_level(logging.WARNING):
        assert read_export(first.folder) is None
    assert "damaged" in caplog.text


def test_an_unwritable_cache_falls_back_to_torch_with_one_warning(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    encoder = OnnxEncoder(TransformersEncoder(str(tiny)), cache=blocked / "onnx")
    with caplog.at_level(logging.WARNING, logger="server.encoders.onnx_engine"):
        vectors = encoder.encode_texts(["a red car"])
        encoder.encode_texts(["a blue boat"])
    assert encoder.engine == "torch" and vectors.shape == (1, encoder.dim)
    assert [r.message for r in caplog.records if "using torch" in r.message] == [caplog.records[-1].message]


def test_asking_for_the_onnx_engine_by_name_makes_a_failed_export_an_error_naming_the_fix(tiny: Path, tmp_path: Path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    encoder = OnnxEncoder(TransformersEncoder(str(tiny)), cache=blocked / "onnx", strict=True)
    with pytest.raises(ModelUnavailable, match="--engine torch"):
        encoder.encode_texts(["a red car"])


def test_engine_choice(monkeypatch: pytest.MonkeyPatch):
    assert resolve_engine("torch") == "torch"
    assert resolve_engine("onnx") == "onnx"
    with pytest.raises(InvalidArgument):
        resolve_engine("tensorflow")
    monkeypatch.setattr(onnx_engine.importlib.util, "find_spec", lambda name: None)
    assert resolve_engine("auto") == "torch"
    with pytest.raises(ModelUnavailable, match="pip install onnxruntime"):
        resolve_engine("onnx")


def test_search_never_imports_torch_and_gives_the_torch_engines_results(tiny: Path, tmp_path: Path):
    photos = tmp_path / "photos"
    for name, rgb in COLORS.items():
        save_color(photos / f"{name}.jpg", rgb)
    env = {**os.environ, "CLIPSEARCH_CACHE": str(tmp_path / "cache"), "CLIPSEARCH_INDEX_DIR": str(tmp_path / "idx")}
    indexed = clipsearch("index", str(photos), "--model", str(tiny), env=env)
    assert indexed.returncode == 0, indexed.stderr
    runs = {}
    for engine in ("onnx", "torch"):
        done = clipsearch_imports("search", "a red photo", "-k", "5", "--json", "--engine", engine, env=env)
        assert done.returncode == 0, done.stderr
        runs[engine] = (json.loads(done.stdout), imported(done))
    (onnx_hits, onnx_imports), (torch_hits, torch_imports) = runs["onnx"], runs["torch"]
    assert onnx_imports == [] and torch_imports == ["torch", "transformers"]
    assert [h["path"] for h in onnx_hits["results"]] == [h["path"] for h in torch_hits["results"]]
    for ours, theirs in zip(onnx_hits["results"], torch_hits["results"], strict=True):
        assert abs(ours["score"] - theirs["score"]) < 1e-5


def test_an_export_killed_mid_way_leaves_nothing_the_next_run_uses(tiny: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    script = (
        "import sys; from pathlib import Path; from server.encoders.torch_engine import TransformersEncoder; "
        "from server.encoders.onnx_engine import OnnxEncoder; "
        "OnnxEncoder(TransformersEncoder(sys.argv[1]), cache=Path(sys.argv[2])).encode_texts(['a'])"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tiny), str(cache)])
    deadline = time.monotonic() + 120
    try:
        while not any(cache.glob(".export-*/*.onnx")):  # killed once the export is writing its files
            assert child.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing under a name a reader trusts
    leftover = next(cache.glob(".export-*"))
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))  # as if killed two hours ago
    encoder = OnnxEncoder(TransformersEncoder(str(tiny)), cache=cache)
    assert encoder.encode_texts(["a"]).shape == (1, encoder.dim) and encoder.engine == "onnx"
    assert not leftover.exists()  # what the killed export left is cleared by the next export


def test_a_text_search_that_loads_its_tower_beside_the_index_still_reports_a_failed_export(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from server.config import Settings
    from server.service import ClipSearch

    photos = tmp_path / "photos"
    for name, rgb in COLORS.items():
        save_color(photos / f"{name}.jpg", rgb)
    ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny), engine="torch")).index_folder(photos)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(blocked))
    fresh = ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny), engine="onnx"))

    with pytest.raises(ModelUnavailable, match="--engine torch"):
        fresh.search_text("a red photo")
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    again = ClipSearch(Settings(index_dir=tmp_path / "index", model=str(tiny), engine="onnx"))
    assert len(again.search_text("a red photo").results) == len(COLORS)


def test_a_new_export_replaces_the_same_models_exports_of_earlier_formats(tiny: Path, tmp_path: Path):
    encoder = OnnxEncoder(TransformersEncoder(str(tiny)), cache=tmp_path)
    identity = encoder.folder.name.partition("-f")[0]
    older, other_model = tmp_path / f"{identity}-f1", tmp_path / f"{'0' * 40}-f1"
    for folder in (older, other_model):
        folder.mkdir()
        (folder / "text.onnx").write_bytes(b"an export of an earlier format")

    encoder.encode_texts(["a"])

    assert encoder.engine == "onnx" and encoder.folder.name == f"{identity}-f{onnx_export.EXPORT_FORMAT}"
    assert not older.exists() and other_model.exists()
    assert (encoder.folder / "text.onnx.data").stat().st_size > (encoder.folder / "text.onnx").stat().st_size


def test_an_export_the_machine_has_too_little_memory_for_is_refused_before_it_starts(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(onnx_export, "available_memory", lambda: 1_000_000)  # 1 MB free
    quiet = OnnxEncoder(TransformersEncoder(str(tiny)), cache=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="server.encoders.onnx_engine"):
        assert quiet.encode_texts(["a red car"]).shape == (1, quiet.dim)
    assert quiet.engine == "torch" and "GB of free memory" in caplog.text
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    with pytest.raises(ModelUnavailable, match=r"free memory.*--engine torch"):
        OnnxEncoder(TransformersEncoder(str(tiny)), cache=tmp_path / "cache", strict=True).encode_texts(["a"])
