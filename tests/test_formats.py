"""Phone and camera formats: HEIC/HEIF and AVIF indexed like JPEGs; RAW files by their embedded preview with the
`raw` extra, reported (not ignored) without it, and left out when a developed JPEG/HEIC of the same shot is beside
them."""

import io
from pathlib import Path

import pytest
from PIL import Image

import server.images.decode as images
from conftest import COLORS, FakeEncoder, save_color
from server.errors import ImageUnreadable
from server.images.decode import decode, is_image_name
from server.indexing.scan import scan_folder
from server.service import ClipSearch


def save_as(path: Path, color: tuple[int, int, int], fmt: str, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.mark.parametrize("suffix, fmt", [(".heic", "HEIF"), (".HEIF", "HEIF"), (".avif", "AVIF")])
def test_heic_and_avif_files_count_as_images_and_decode_upright_with_their_size(
    tmp_path: Path, suffix: str, fmt: str
) -> None:
    path = save_as(tmp_path / f"phone{suffix}", COLORS["red"], fmt, size=(64, 48))

    decoded = decode(path.read_bytes())

    assert is_image_name(path)
    assert (decoded.width, decoded.height) == (64, 48) and decoded.image.mode == "RGB"
    red, green, blue = decoded.image.resize((1, 1)).getpixel((0, 0))  # type: ignore[misc]
    assert red > 180 and green < 60 and blue < 60  # lossy, but red


def test_a_folder_of_heic_and_avif_photos_is_indexed_and_searchable(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, tmp_path: Path
) -> None:
    folder = tmp_path / "phone"
    save_as(folder / "a.heic", COLORS["red"], "HEIF")
    save_as(folder / "b.avif", COLORS["blue"], "AVIF")
    save_color(folder / "c.jpg", COLORS["green"])

    report = fake_service.index_folder(folder)
    hits = fake_service.search_text("blue", k=1).results

    assert (report.added, report.failed, report.embedded) == (3, 0, 3)
    assert Path(hits[0].path).name == "b.avif"


def test_an_oversized_heic_is_refused_before_its_pixels_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_as(tmp_path / "big.heic", COLORS["white"], "HEIF", size=(128, 128))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)

    with pytest.raises(ImageUnreadable, match="too large to decode safely"):
        decode(path.read_bytes())


def test_raw_files_without_the_extra_are_reported_with_how_to_index_them(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "camera"
    (folder).mkdir()
    (folder / "IMG_0001.CR2").write_bytes(b"not really raw, never decoded")
    save_color(folder / "other.jpg", COLORS["red"])
    monkeypatch.setattr(images, "raw_supported", lambda: False)

    report = fake_service.index_folder(folder)

    assert report.added == 1 and report.failed == 1
    assert report.failures[0].path.endswith("IMG_0001.CR2")
    assert report.failures[0].reason == "install clipsearch[raw] to index RAW files"


def test_raw_files_are_indexed_by_their_embedded_preview(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    (folder / "DSC_0001.NEF").write_bytes(b"raw bytes stand-in")
    preview = io.BytesIO()
    Image.new("RGB", (96, 64), COLORS["blue"]).save(preview, format="JPEG")
    read: list[bytes] = []

    def fake_preview(data: bytes) -> bytes:
        read.append(data)
        return preview.getvalue()

    monkeypatch.setattr(images, "raw_supported", lambda: True)
    monkeypatch.setattr(images, "raw_preview", fake_preview)

    report = fake_service.index_folder(folder)
    [hit] = fake_service.search_text("blue", k=1).results

    # Its preview is decoded to embed it, then once more by the text stage's first pass.
    assert (report.added, report.failed) == (1, 0) and read == [b"raw bytes stand-in"] * 2
    assert Path(hit.path).name == "DSC_0001.NEF"


def test_an_unreadable_raw_file_is_skipped_with_the_readers_reason(tmp_path: Path) -> None:
    pytest.importorskip("rawpy", reason="the raw extra is part of the test install")

    with pytest.raises(ImageUnreadable, match="cannot read RAW file"):
        decode(b"II*\x00 definitely not a camera file", raw=True)


def test_a_raw_file_beside_a_jpeg_or_heic_of_the_same_name_is_left_out_and_counted(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "camera"
    save_color(folder / "IMG_0002.JPG", COLORS["red"])
    (folder / "IMG_0002.CR3").write_bytes(b"raw twin of the JPEG")
    save_as(folder / "IMG_0003.heic", COLORS["green"], "HEIF")
    (folder / "img_0003.dng").write_bytes(b"raw twin of the HEIC, other case")
    (folder / "IMG_0004.ARW").write_bytes(b"a RAW alone")
    monkeypatch.setattr(images, "raw_supported", lambda: False)

    scan = scan_folder(folder)
    report = fake_service.index_folder(folder)

    assert sorted(p.name for p in scan.raw_with_sibling) == ["IMG_0002.CR3", "img_0003.dng"]
    assert report.skipped_raw_with_sibling == 2
    assert report.added == 2 and [f.path.rsplit("/", 1)[1] for f in report.failures] == ["IMG_0004.ARW"]
