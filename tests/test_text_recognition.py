"""Text in photos with the real PP-OCRv4 weights the rapidocr-onnxruntime wheel ships: a rendered line is read, a
photo without text yields nothing, a very long screenshot costs a bounded number of tiles and says what it left,
the model's identity follows its files, and a missing or damaged model is a TextModelUnavailable."""

import itertools
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench.ocr import fold
from server.encoders.text_recognition import MODEL_FILES, TILE_ASPECT, RapidOcrRecognizer, default_model_dir, plan_tiles
from server.errors import TextModelUnavailable

pytest.importorskip("rapidocr_onnxruntime")


@pytest.fixture(scope="module")
def recognizer() -> RapidOcrRecognizer:
    return RapidOcrRecognizer()


def font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's own scalable font: no system fonts needed.
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def with_line(image: Image.Image, text: str, at: tuple[int, int], size: int = 40) -> Image.Image:
    ImageDraw.Draw(image).text(at, text, font=font(size), fill=(20, 20, 25))
    return image


def sky(size: tuple[int, int] = (1024, 768)) -> Image.Image:
    ramp = np.linspace(0, 1, size[1], dtype=np.float32)[:, None, None]
    pixels = np.array([70, 130, 200], np.float32) * (1 - ramp) + np.array([200, 180, 120], np.float32) * ramp
    return Image.fromarray(np.broadcast_to(pixels, (size[1], size[0], 3)).astype(np.uint8))


def photo_without_text(size: tuple[int, int] = (1024, 768)) -> Image.Image:
    image = sky(size)
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 200, 500, 600), fill=(40, 110, 50))
    draw.rectangle((600, 300, 900, 700), fill=(150, 90, 60))
    return image.filter(ImageFilter.GaussianBlur(2))


def test_a_rendered_boarding_pass_line_is_read_word_for_word(recognizer: RapidOcrRecognizer) -> None:
    image = with_line(Image.new("RGB", (900, 300), (240, 238, 230)), "BOARDING PASS LH 1234", (60, 120))
    read = recognizer.read(image)
    assert len(read.lines) == 1
    line = read.lines[0]
    # PP-OCRv4 sometimes drops the spaces between capitals; the text filter compares without them.
    assert fold(line.text) == "boardingpasslh1234"
    assert line.confidence > 0.9
    xs, ys = [p[0] for p in line.box], [p[1] for p in line.box]
    assert 40 <= min(xs) < 80 and 500 < max(xs) < 700 and 100 <= min(ys) < 135 and 150 < max(ys) < 180
    assert read.note is None


def test_lines_come_top_to_bottom(recognizer: RapidOcrRecognizer) -> None:
    image = Image.new("RGB", (800, 600), (255, 255, 255))
    with_line(image, "Receipt total", (50, 400))
    with_line(image, "Corner bakery", (50, 80))
    assert [fold(line.text) for line in recognizer.read(image).lines] == ["cornerbakery", "receipttotal"]


def test_a_photo_without_text_yields_no_lines(recognizer: RapidOcrRecognizer) -> None:
    assert recognizer.read(photo_without_text()).lines == ()


def test_the_cheap_pass_passes_a_sign_and_not_a_plain_sky(recognizer: RapidOcrRecognizer) -> None:
    # It may pass a text-free photo with hard shapes (detection alone sees text-like blobs): that costs a full
    # reading, not recall.
    assert recognizer.likely_has_text(sky()) is False
    assert recognizer.likely_has_text(with_line(photo_without_text(), "WIFI PASSWORD", (300, 100), 48)) is True


def test_a_line_across_two_tiles_is_read_once(recognizer: RapidOcrRecognizer) -> None:
    image = Image.new("RGB", (1000, 5000), (250, 250, 250))
    tiles, note = plan_tiles(image.size, 8)
    boundary = int(tiles[0].keep[1])
    assert len(tiles) == 3 and note is None
    with_line(image, "Booking code QX7", (100, boundary - 20))
    with_line(image, "Order 48213", (100, 4600))
    texts = [fold(line.text) for line in recognizer.read(image).lines]
    assert texts == ["bookingcodeqx7", "order48213"]


def test_a_very_long_screenshot_is_read_in_bounded_tiles_and_says_what_it_left(
    recognizer: RapidOcrRecognizer,
) -> None:
    image = Image.new("RGB", (1080, 100_000), (255, 255, 255))
    with_line(image, "First message", (60, 200))
    with_line(image, "Last message", (60, 99_000))
    started = time.perf_counter()
    read = RapidOcrRecognizer(max_tiles=3)
    read._engine = recognizer._loaded()
    result = read.read(image)
    assert time.perf_counter() - started < 15  # three tiles of 1080 x ~2200, each detected at 960 px
    assert [fold(line.text) for line in result.lines] == ["firstmessage"]
    assert result.note is not None and "100000" in result.note and "3 tiles" in result.note


def test_a_page_crowded_with_text_boxes_reads_a_bounded_number_and_says_how_many_it_left(
    recognizer: RapidOcrRecognizer,
) -> None:
    page = Image.new("RGB", (1200, 1200), (255, 255, 255))
    for row in range(30):
        for column in range(3):
            with_line(page, f"item {row}{column}", (40 + 400 * column, 20 + 39 * row), size=26)
    bounded = RapidOcrRecognizer(max_lines=12)
    bounded._engine = recognizer._loaded()

    result = bounded.read(page)
    everything = recognizer.read(page)

    assert len(everything.lines) > 40 and everything.note is None
    assert 0 < len(result.lines) <= 12
    assert result.note is not None and "more text boxes left unread (at most 12 per part" in result.note
    assert {line.text for line in result.lines} <= {line.text for line in everything.lines}


@pytest.mark.parametrize("size", [(1080, 100_000), (100_000, 40), (30_000, 30_000), (3, 5000), (1, 1)])
def test_tiles_are_bounded_in_number_and_size_and_cover_in_order(size: tuple[int, int]) -> None:
    tiles, note = plan_tiles(size, 8)
    short_side = min(size)
    assert 1 <= len(tiles) <= 8
    for tile in tiles:
        left, top, right, bottom = tile.crop
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
        if len(tiles) > 1:
            assert max(right - left, bottom - top) <= TILE_ASPECT * short_side + 2 * max(1, short_side // 8) + 1
    keeps = [tile.keep for tile in tiles]
    assert keeps[0][0] == -math.inf and all(a[1] == b[0] for a, b in itertools.pairwise(keeps))
    assert (note is None) == (keeps[-1][1] == math.inf)


def test_a_thin_strip_is_read_without_error(recognizer: RapidOcrRecognizer) -> None:
    assert recognizer.read(Image.new("RGB", (4000, 6), (128, 128, 128))).lines == ()
    assert recognizer.read(Image.new("L", (1, 1), 0)).lines == ()


def test_the_identity_is_stable_and_follows_the_model_files_and_settings(tmp_path: Path) -> None:
    first, again = RapidOcrRecognizer(), RapidOcrRecognizer()
    assert first.identity == again.identity and first.identity.startswith("sha256:")
    assert RapidOcrRecognizer(detect_side=960).identity != first.identity
    copy = tmp_path / "models"
    copy.mkdir()
    for name in MODEL_FILES.values():
        shutil.copyfile(default_model_dir() / name, copy / name)
    assert RapidOcrRecognizer(model_dir=copy).identity == first.identity
    with open(copy / MODEL_FILES["rec"], "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01")
    assert RapidOcrRecognizer(model_dir=copy).identity != first.identity


def test_a_missing_model_is_a_text_model_unavailable(tmp_path: Path) -> None:
    missing = RapidOcrRecognizer(model_dir=tmp_path)
    with pytest.raises(TextModelUnavailable, match="missing"):
        _ = missing.identity
    with pytest.raises(TextModelUnavailable, match="missing"):
        missing.read(Image.new("RGB", (64, 64)))


def test_a_corrupt_model_is_a_text_model_unavailable(tmp_path: Path) -> None:
    (tmp_path / MODEL_FILES["det"]).symlink_to(default_model_dir() / MODEL_FILES["det"])
    (tmp_path / MODEL_FILES["rec"]).write_bytes(b"not an onnx model" * 100)
    with pytest.raises(TextModelUnavailable, match="could not be loaded"):
        RapidOcrRecognizer(model_dir=tmp_path).read(Image.new("RGB", (64, 64)))
