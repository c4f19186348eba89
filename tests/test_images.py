"""server/images/decode.py: upright RGB decoding of every mode, draft decoding, refusal of bad files, thumbnails."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from server.errors import ImageUnreadable
from server.images.decode import THUMBNAIL_MAX_SIDE, decode, is_image_name, read_file, thumbnail_jpeg, to_rgb

RED = (220, 20, 20)
BLUE = (20, 20, 220)
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def left_red_right_blue(size: tuple[int, int]) -> Image.Image:
    """A landscape picture whose left half is red and right half blue, so any rotation is visible."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels, "RGB")


def jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(left_red_right_blue(size), "JPEG", quality=95, exif=exif)


def assert_close_color(actual: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 30) -> None:
    assert len(actual) == 3
    assert max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance, (actual, expected)


def pixel_at(image: Image.Image, fx: float, fy: float) -> tuple[int, ...]:
    """The pixel at a fractional position, away from edges where JPEG blurs the colour boundary."""
    return image.getpixel((int(image.width * fx), int(image.height * fy)))  # type: ignore[return-value]


def pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]  # type: ignore[misc]


def png_declaring_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height pixels."""
    data = bytearray(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- EXIF orientation -------------------------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise_and_reports_upright_size() -> None:
    decoded = decode(jpeg_with_orientation((60, 40), 6))

    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (40, 60)
    assert (decoded.width, decoded.height) == (40, 60)
    # Turning clockwise puts the stored left half (red) on top.
    assert_close_color(pixel_at(decoded.image, 0.5, 0.2), RED)
    assert_close_color(pixel_at(decoded.image, 0.5, 0.8), BLUE)


def test_exif_orientation_8_rotates_anticlockwise_and_reports_upright_size() -> None:
    decoded = decode(jpeg_with_orientation((60, 40), 8))

    assert decoded.image.size == (40, 60)
    assert (decoded.width, decoded.height) == (40, 60)
    # Turning anticlockwise puts the stored left half (red) at the bottom.
    assert_close_color(pixel_at(decoded.image, 0.5, 0.2), BLUE)
    assert_close_color(pixel_at(decoded.image, 0.5, 0.8), RED)


def test_exif_orientation_3_turns_the_image_half_way_without_swapping_sides() -> None:
    decoded = decode(jpeg_with_orientation((60, 40), 3))

    assert decoded.image.size == (60, 40)
    assert (decoded.width, decoded.height) == (60, 40)
    assert_close_color(pixel_at(decoded.image, 0.2, 0.5), BLUE)
    assert_close_color(pixel_at(decoded.image, 0.8, 0.5), RED)


def test_exif_orientation_is_applied_after_draft_decoding_of_a_large_jpeg() -> None:
    decoded = decode(jpeg_with_orientation((3000, 2000), 6), min_side=224)

    assert (decoded.width, decoded.height) == (2000, 3000)
    assert decoded.image.height > decoded.image.width
    assert min(decoded.image.size) >= 224
    assert max(decoded.image.size) <= 3000 // 4
    assert_close_color(pixel_at(decoded.image, 0.5, 0.2), RED)
    assert_close_color(pixel_at(decoded.image, 0.5, 0.8), BLUE)


# --- every mode to RGB ------------------------------------------------------------------------------------------


def test_palette_png_transparent_pixels_become_white() -> None:
    palette_image = Image.new("P", (2, 1), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette_image.putpixel((1, 0), 1)
    data = encode(palette_image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"

    decoded = decode(data).image

    assert decoded.mode == "RGB"
    assert pixels(decoded) == [(255, 255, 255), (255, 0, 0)]


def test_rgba_png_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), value)

    decoded = decode(encode(rgba, "PNG")).image

    assert decoded.mode == "RGB"
    transparent, opaque, half = pixels(decoded)
    assert transparent == (255, 255, 255)
    assert opaque == (0, 0, 255)
    assert_close_color(half, (127, 127, 127), tolerance=1)


def test_greyscale_with_alpha_is_composited_over_white() -> None:
    la = Image.new("LA", (3, 1))
    for x, value in enumerate([(0, 0), (0, 255), (0, 128)]):
        la.putpixel((x, 0), value)
    data = encode(la, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"

    decoded = decode(data).image

    assert decoded.mode == "RGB"
    transparent, opaque, half = pixels(decoded)
    assert transparent == (255, 255, 255)
    assert opaque == (0, 0, 0)
    assert_close_color(half, (127, 127, 127), tolerance=1)


@pytest.mark.parametrize(
    ("image", "key"),
    [(Image.new("L", (2, 1), 0), 0), (Image.new("RGB", (2, 1), (0, 0, 0)), (0, 0, 0))],
    ids=["greyscale", "rgb"],
)
def test_colour_key_transparency_in_greyscale_and_rgb_png_becomes_white(image: Image.Image, key: object) -> None:
    image = image.copy()
    image.putpixel((1, 0), 100 if image.mode == "L" else (10, 20, 30))
    data = encode(image, "PNG", transparency=key)
    assert Image.open(io.BytesIO(data)).info["transparency"] == key

    decoded = decode(data).image

    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_decodes_to_matching_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    cmyk.paste((255, 0, 0, 0), (8, 0, 16, 16))
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    decoded = decode(data).image

    assert decoded.mode == "RGB"
    assert_close_color(decoded.getpixel((2, 8)), (255, 255, 255), tolerance=8)  # type: ignore[arg-type]
    assert_close_color(decoded.getpixel((13, 8)), (0, 255, 255), tolerance=8)  # type: ignore[arg-type]


def test_sixteen_bit_greyscale_png_is_scaled_from_65535_to_255() -> None:
    values = np.array([[65535, 32768, 0, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    decoded = decode(data).image

    assert decoded.mode == "RGB"
    white, mid, black, dark = (p[0] for p in pixels(decoded))
    assert all(len(set(p)) == 1 for p in pixels(decoded))
    assert white == 255
    assert abs(mid - 128) <= 1
    assert black == 0
    assert dark == 3  # 1000 / 65535 * 255


def test_32_bit_integer_image_keeps_8_bit_values_and_scales_wider_ranges_to_its_peak() -> None:
    narrow = Image.fromarray(np.array([[0, 100, 200, 255]], dtype=np.int32))
    dark = Image.fromarray(np.array([[0, 50, 100]], dtype=np.int32))
    wide = Image.fromarray(np.array([[0, 1000, 2000]], dtype=np.int32))
    assert narrow.mode == dark.mode == wide.mode == "I"

    assert pixels(to_rgb(narrow)) == [(0, 0, 0), (100, 100, 100), (200, 200, 200), (255, 255, 255)]
    assert pixels(to_rgb(dark)) == [(0, 0, 0), (50, 50, 50), (100, 100, 100)]
    assert pixels(to_rgb(wide)) == [(0, 0, 0), (127, 127, 127), (255, 255, 255)]


def test_float_image_keeps_8_bit_values_and_scales_a_higher_peak_to_255() -> None:
    narrow = Image.fromarray(np.array([[0.0, 127.6, 255.0]], dtype=np.float32))
    wide = Image.fromarray(np.array([[0.0, 127.6, 255.0, 300.0]], dtype=np.float32))
    assert narrow.mode == wide.mode == "F"

    assert pixels(to_rgb(narrow)) == [(0, 0, 0), (127, 127, 127), (255, 255, 255)]
    assert [p[0] for p in pixels(to_rgb(wide))] == [0, 108, 216, 255]


def test_bilevel_and_greyscale_images_become_grey_rgb() -> None:
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    grey = Image.new("L", (1, 1), 77)

    assert pixels(decode(encode(bilevel, "PNG")).image) == [(0, 0, 0), (255, 255, 255)]
    assert pixels(to_rgb(grey)) == [(77, 77, 77)]
    assert to_rgb(bilevel).mode == to_rgb(grey).mode == "RGB"


# --- animations -------------------------------------------------------------------------------------------------

FRAME_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_animated_gif_decodes_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in FRAME_COLORS]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    decoded = decode(data)

    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (16, 16)
    assert set(pixels(decoded.image)) == {FRAME_COLORS[0]}


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow cannot write WebP")
def test_animated_webp_decodes_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in FRAME_COLORS]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    decoded = decode(data)

    assert decoded.image.mode == "RGB"
    assert set(pixels(decoded.image)) == {FRAME_COLORS[0]}


# --- draft decoding ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_side", [224, 256, 600])
def test_draft_decoding_keeps_shorter_side_at_least_min_side_and_reports_original_size(min_side: int) -> None:
    data = encode(left_red_right_blue((3000, 2000)), "JPEG", quality=90)

    decoded = decode(data, min_side=min_side)

    assert (decoded.width, decoded.height) == (3000, 2000)
    assert decoded.image.mode == "RGB"
    assert min(decoded.image.size) >= min_side
    # DCT scaling is by 1/2, 1/4 or 1/8, so the decode is at most twice the size asked for.
    assert min(decoded.image.size) < 2 * min_side
    assert decoded.image.width * 2 == decoded.image.height * 3
    assert_close_color(pixel_at(decoded.image, 0.2, 0.5), RED)


def test_without_min_side_a_jpeg_decodes_at_full_size() -> None:
    decoded = decode(encode(left_red_right_blue((600, 400)), "JPEG"))

    assert decoded.image.size == (600, 400)


def test_min_side_does_not_shrink_non_jpeg_images() -> None:
    decoded = decode(encode(left_red_right_blue((600, 400)), "PNG"), min_side=100)

    assert decoded.image.size == (600, 400)


# --- bad inputs -------------------------------------------------------------------------------------------------


def test_zero_byte_file_is_unreadable(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    with pytest.raises(ImageUnreadable, match="empty"):
        read_file(empty)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_unreadable(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise, "RGB"), fmt)

    with pytest.raises(ImageUnreadable, match="truncated"):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [
        b"a shopping list, not a picture\n" * 20,
        b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n",
        b"\x89PNG\r\n\x1a\n",
    ],
    ids=["text", "html", "pdf", "png-signature-only"],
)
def test_non_image_bytes_are_unreadable_as_unrecognised_format(data: bytes) -> None:
    with pytest.raises(ImageUnreadable, match="not a recognised image format"):
        decode(data)


@pytest.mark.parametrize("side", [30000, 10000], ids=["over-error-limit", "over-warning-limit"])
def test_decompression_bomb_is_refused_before_pixels_are_decoded(side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_declaring_size(side, side)
    assert len(data) < 100
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> object:
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)

    with pytest.raises(ImageUnreadable, match="too large to decode safely") as raised:
        decode(data)

    assert f"{side * side} pixels" in str(raised.value) or f"{side}x{side} pixels" in str(raised.value)
    assert loads == []


def test_a_patched_png_header_within_the_pixel_limit_fails_as_truncated_not_as_a_bomb() -> None:
    # Control for the bomb test: the same construction below the limit is read and fails for lack of data.
    with pytest.raises(ImageUnreadable, match="truncated"):
        decode(png_declaring_size(300, 300))


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ImageUnreadable, match="No such file"):
        read_file(tmp_path / "gone.jpg")


def test_directory_is_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like.jpg"
    folder.mkdir()

    with pytest.raises(ImageUnreadable, match="directory"):
        read_file(folder)


def test_read_file_returns_the_bytes_and_enforces_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ten.bin"
    path.write_bytes(b"0123456789")

    assert read_file(path) == b"0123456789"
    assert read_file(path, max_bytes=10) == b"0123456789"
    with pytest.raises(ImageUnreadable, match="larger than 9 bytes"):
        read_file(path, max_bytes=9)


# --- thumbnails -------------------------------------------------------------------------------------------------


def test_thumbnail_is_a_small_upright_jpeg_of_an_exif_rotated_photo(tmp_path: Path) -> None:
    source = tmp_path / "portrait.jpg"
    source.write_bytes(jpeg_with_orientation((3000, 2000), 6))

    data = thumbnail_jpeg(source)

    assert data[:3] == b"\xff\xd8\xff"
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG"
    assert thumb.size == (171, THUMBNAIL_MAX_SIDE)
    # Pixels are already upright, so the thumbnail must not carry an orientation tag a viewer would apply again.
    assert thumb.getexif().get(ORIENTATION, 1) == 1
    rgb = thumb.convert("RGB")
    assert_close_color(pixel_at(rgb, 0.5, 0.2), RED)
    assert_close_color(pixel_at(rgb, 0.5, 0.8), BLUE)


def test_thumbnail_does_not_enlarge_a_small_image(tmp_path: Path) -> None:
    source = tmp_path / "small.png"
    left_red_right_blue((100, 50)).save(source)

    thumb = Image.open(io.BytesIO(thumbnail_jpeg(source)))

    assert thumb.format == "JPEG"
    assert thumb.size == (100, 50)


def test_thumbnail_of_an_unreadable_file_raises_image_unreadable(tmp_path: Path) -> None:
    source = tmp_path / "notes.jpg"
    source.write_text("not an image", encoding="utf-8")

    with pytest.raises(ImageUnreadable, match="not a recognised image format"):
        thumbnail_jpeg(source)


# --- file names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a.jpg",
        "b.JPEG",
        "c.jpe",
        "d.png",
        "e.WebP",
        "f.gif",
        "g.bmp",
        "h.tif",
        "i.TIFF",
        "dir.with.dots/j.Jpg",
        "k.HEIC",
        "l.heif",
        "m.avif",
        "n.CR2",
        "o.dng",
    ],
)
def test_image_extensions_count_as_images_whatever_their_case(name: str) -> None:
    assert is_image_name(Path(name)) is True


@pytest.mark.parametrize(
    "name", ["notes.txt", "doc.pdf", "photo.xmp", "archive.jpg.zip", "jpg", "no_suffix", ".jpg", "movie.mp4"]
)
def test_other_names_do_not_count_as_images(name: str) -> None:
    assert is_image_name(Path(name)) is False
