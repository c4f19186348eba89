"""server/images/metadata.py and the catalog's metadata: capture time, place and camera exactly as written in the files;
bad metadata never stops indexing; older catalogs are upgraded and filled in without re-embedding."""

import io
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import server.images.decode  # noqa: F401 - registers the HEIF/AVIF openers
from conftest import COLORS, FakeEncoder, save_color
from server.images.metadata import read_metadata
from server.service import ClipSearch
from server.store.collection_store import CollectionStore
from server.store.schema import CATALOG_VERSION


def exif_with(
    original: str | None = None,
    subsec: str | None = None,
    offset: str | None = None,
    digitized: str | None = None,
    plain: str | None = None,
    gps: tuple[str, tuple[float, float, float], str, tuple[float, float, float]] | None = None,
    make: Any = None,
    model: Any = None,
    orientation: int | None = None,
) -> Image.Exif:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    for tag, value in ((0x9003, original), (0x9291, subsec), (0x9011, offset), (0x9004, digitized)):
        if value is not None:
            sub[tag] = value
    for tag, value in ((0x0132, plain), (0x010F, make), (0x0110, model), (0x0112, orientation)):
        if value is not None:
            exif[tag] = value
    if gps is not None:
        block = exif.get_ifd(0x8825)
        block[1], block[2], block[3], block[4] = gps
    return exif


def jpeg(exif: Image.Exif | None = None, size: tuple[int, int] = (64, 48), xmp: bytes | None = None) -> bytes:
    out = io.BytesIO()
    options: dict[str, Any] = {"exif": exif} if exif is not None else {}
    if xmp is not None:
        options["xmp"] = xmp
    Image.new("RGB", size, COLORS["green"]).save(out, format="JPEG", **options)
    return out.getvalue()


MTIME_NS = 1_700_000_000 * 10**9


def test_original_time_with_subseconds_and_offset_place_and_camera_come_back_as_written() -> None:
    data = jpeg(
        exif_with(
            original="2024:06:01 14:03:22",
            subsec="120",
            offset="+02:00",
            gps=("S", (33.0, 51.0, 54.0), "W", (70.0, 39.0, 0.0)),
            make="Canon",
            model="Canon EOS 5D Mark IV",
        )
    )

    meta = read_metadata(data, MTIME_NS)

    assert (meta.taken, meta.taken_source) == ("2024-06-01T14:03:22.120+02:00", "exif")
    assert meta.taken_local == "2024-06-01T14:03:22.120000"
    assert meta.taken_utc == pytest.approx(1717243402.12)
    assert (meta.latitude, meta.longitude) == (pytest.approx(-33.865), pytest.approx(-70.65))
    assert meta.camera == "Canon EOS 5D Mark IV"
    assert (meta.width, meta.height) == (64, 48)


@pytest.mark.parametrize(
    "exif, xmp, taken, source",
    [
        (exif_with(digitized="2023:01:02 03:04:05"), None, "2023-01-02T03:04:05", "exif"),
        (exif_with(plain="2022:05:06 07:08:09"), None, "2022-05-06T07:08:09", "exif"),
        (None, b'<x:xmpmeta><rdf:Description xmp:CreateDate="2021-04-05T06:07:08+01:00"/></x:xmpmeta>',
         "2021-04-05T06:07:08+01:00", "xmp"),
        (exif_with(original="0000:00:00 00:00:00"), None, None, "file_mtime"),
        (exif_with(original="1970:01:01 00:00:00"), None, None, "file_mtime"),
        (exif_with(original="2024:13:45 99:00:00"), None, None, "file_mtime"),
        (None, None, None, "file_mtime"),
    ],
)  # fmt: skip
def test_capture_time_falls_back_in_order_and_rejects_placeholders(
    exif: Image.Exif | None, xmp: bytes | None, taken: str | None, source: str
) -> None:
    meta = read_metadata(jpeg(exif, xmp=xmp), MTIME_NS)

    assert meta.taken_source == source
    if taken is not None:
        assert meta.taken == taken
    else:  # the file's modification time stands in, marked as such
        assert meta.taken_utc == pytest.approx(MTIME_NS / 1e9)


def test_offsetless_time_is_local_and_read_as_utc_for_instants() -> None:
    meta = read_metadata(jpeg(exif_with(original="2024:06:01 14:03:22")), MTIME_NS)

    assert meta.taken == "2024-06-01T14:03:22"
    assert meta.taken_utc == pytest.approx(1717250602.0)  # 14:03:22 UTC


@pytest.mark.parametrize(
    "gps",
    [
        ("N", (0.0, 0.0, 0.0), "E", (0.0, 0.0, 0.0)),  # 0,0: a camera with no fix
        ("N", (95.0, 0.0, 0.0), "E", (10.0, 0.0, 0.0)),  # no such latitude
    ],
)
def test_impossible_positions_are_dropped(gps: Any) -> None:
    meta = read_metadata(jpeg(exif_with(original="2024:06:01 14:03:22", gps=gps)), MTIME_NS)

    assert (meta.latitude, meta.longitude) == (None, None)
    assert meta.taken_source == "exif"


def test_rotated_photos_report_their_upright_size() -> None:
    meta = read_metadata(jpeg(exif_with(orientation=6), size=(64, 48)), MTIME_NS)

    assert (meta.width, meta.height) == (48, 64)


def test_heic_and_avif_metadata_is_read_like_jpeg() -> None:
    exif = exif_with(original="2024:06:01 14:03:22", offset="+02:00", make="Apple", model="iPhone 13 Pro")
    for fmt in ("HEIF", "AVIF"):
        out = io.BytesIO()
        Image.new("RGB", (64, 48), COLORS["blue"]).save(out, format=fmt, exif=exif.tobytes())

        meta = read_metadata(out.getvalue(), MTIME_NS)

        assert (meta.taken, meta.camera) == ("2024-06-01T14:03:22+02:00", "Apple iPhone 13 Pro"), fmt


def test_hostile_metadata_leaves_what_is_unreadable_unknown_and_never_raises() -> None:
    broken = exif_with(original=b"\xff\xfe2024:06:01", make=b"\xff\xfeCanon\x00\x00", model=12345)
    huge_xmp = b"<x:xmpmeta>" + b" " * (50 * 1024 * 1024) + b'xmp:CreateDate="2020-01-01T00:00:00"</x:xmpmeta>'
    truncated = jpeg(exif_with(original="2024:06:01 14:03:22"))[:200]

    results = [read_metadata(data, MTIME_NS) for data in (jpeg(broken), huge_xmp, truncated, b"", b"\x00" * 10)]

    assert all(r.taken_source in ("exif", "file_mtime") for r in results)
    assert results[0].camera is None or "Canon" in results[0].camera
    assert results[1].taken_source == "file_mtime"  # a date beyond the first MB of a packet is not searched for


def test_metadata_is_read_without_decoding_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    loads: list[Any] = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real(self))
    png = io.BytesIO()
    Image.new("RGB", (64, 48)).save(png, format="PNG")

    for data in (jpeg(exif_with(original="2024:06:01 14:03:22")), png.getvalue()):
        read_metadata(data, MTIME_NS)

    assert loads == []


# --- in the catalog ------------------------------------------------------------------------------------------------


def test_indexed_photos_carry_their_metadata_into_search_results(fake_service: ClipSearch, tmp_path: Path) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    exif = exif_with(original="2024:08:15 19:45:00", offset="+02:00", make="Apple", model="iPhone 15")
    Image.new("RGB", (64, 48), COLORS["red"]).save(folder / "beach.jpg", exif=exif)
    save_color(folder / "plain.jpg", COLORS["blue"])

    fake_service.index_folder(folder)
    [hit] = fake_service.search_text("red", k=1).results

    assert (hit.taken, hit.taken_source, hit.camera) == ("2024-08-15T19:45:00+02:00", "exif", "Apple iPhone 15")
    assert (hit.width, hit.height, hit.latitude) == (64, 48, None)


def test_a_catalog_without_metadata_gains_it_on_the_next_run_without_embedding(
    fake_service: ClipSearch,
    fake_encoder: FakeEncoder,
    color_folder: Path,
    index_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dated = color_folder / "red" / "red_0.jpg"
    Image.new("RGB", (64, 48), COLORS["red"]).save(dated, exif=exif_with(original="2019:03:04 05:06:07"))
    fake_service.index_folder(color_folder)
    with sqlite3.connect(index_dir / "default" / "catalog.sqlite") as conn:  # as an upgraded older catalog is
        conn.execute("UPDATE images SET taken = NULL, taken_source = NULL, taken_local = NULL, meta_read = NULL")
    encoded = fake_encoder.images_encoded
    reads: list[int] = []
    real_open = open

    def spy(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "b" in mode and str(file).endswith(".jpg"):
            real_read = handle.read
            handle.read = lambda n=-1: reads.append(n) or real_read(n)
        return handle

    service = ClipSearch(fake_service.settings, encoder=fake_encoder)
    monkeypatch.setattr("builtins.open", spy)
    report = service.index_folder(color_folder)
    monkeypatch.undo()

    assert (report.embedded, report.unchanged, report.added) == (0, 15, 0)
    assert fake_encoder.images_encoded == encoded
    assert reads and all(n == 512 * 1024 for n in reads)  # headers only
    hits = {Path(h.path).name: h for h in service.search_text("red", k=15).results}
    assert hits["red_0.jpg"].taken == "2019-03-04T05:06:07"
    assert all(h.taken_source in ("exif", "file_mtime") for h in hits.values())


def test_catalog_from_the_previous_release_is_upgraded_on_open_keeping_every_id_and_vector(
    tmp_path: Path,
) -> None:
    import shutil

    fixture = Path(__file__).resolve().parent / "fixtures" / "v1_collection" / "default"
    index = tmp_path / "index"
    shutil.copytree(fixture, index / "default")
    with sqlite3.connect(index / "default" / "catalog.sqlite") as conn:
        before = conn.execute("SELECT id, path, vector FROM images ORDER BY id").fetchall()

    collection = CollectionStore(index).open("default", "openai/clip-vit-base-patch32")
    collection.close()

    with sqlite3.connect(index / "default" / "catalog.sqlite") as conn:
        after = conn.execute("SELECT id, path, vector FROM images ORDER BY id").fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()
        unread = conn.execute("SELECT COUNT(*) FROM images WHERE meta_read IS NULL").fetchone()
    assert after == before and len(after) == 9
    assert version == (str(CATALOG_VERSION),) and unread == (9,)


def test_a_catalog_from_a_newer_release_is_refused(fake_service: ClipSearch, color_folder: Path, index_dir: Path):
    from server.errors import CollectionMismatch

    fake_service.index_folder(color_folder)
    with sqlite3.connect(index_dir / "default" / "catalog.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'catalog_version'")

    with pytest.raises(CollectionMismatch, match="catalog version 99, newer than this clipsearch reads"):
        CollectionStore(index_dir).open("default", FakeEncoder.model_name)
    assert os.path.exists(index_dir / "default" / "catalog.sqlite")
