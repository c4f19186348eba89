"""Indexing a real, messy photo folder: every bad file is indexed or skipped with a reason, and the run completes."""

import builtins
import errno
import io
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

import server.images.decode
import server.indexing.indexer
from conftest import COLORS, FakeEncoder, save_color
from server.config import Settings
from server.service import ClipSearch

# A failing file's reason must name what went wrong, in words a user can act on.
BAD_FILE_REASONS = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "notes.jpg": "not a recognised image format",
    "page.jpg": "not a recognised image format",
    "invoice.jpg": "not a recognised image format",
    "bomb.png": "too large to decode safely",
    "bomb_10k.png": "too large to decode safely",
    "locked.jpg": "Permission denied",
    "broken.jpg": "No such file",
    "loop_a.jpg": "symbolic links",
    "loop_b.jpg": "symbolic links",
    "vanishing.jpg": "No such file",
    "bro\\xeaken.png": "not a recognised image format",  # a non-UTF-8 name, as reports show it
}
NON_UTF8_NAME = b"caf\xe9.jpg"
ODD_VALID_NAMES = {
    "deep16.png",
    "cmyk.jpg",
    "palette_alpha.png",
    "grey.jpg",
    "animated.gif",
    "animated.webp",
    os.fsdecode(NON_UTF8_NAME),
}
DENIED = os.strerror(errno.EACCES)
GOOD_NAMES = {"red.jpg", "green.jpg", "blue.jpg", "really_png.jpg", "SHOUT.JPG"}


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def png_declaring_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height pixels."""
    data = bytearray(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def deny_reading(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """What chmod 000 does for a normal user (tests run as root, where it does not): open() fails with EACCES."""

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if Path(os.fsdecode(file)).name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(server.images.decode, "open", guarded_open, raising=False)


def before_reading(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[Path], None]) -> list[Path]:
    """Run `action` on the file called `name` just before the indexer reads it (after the folder scan)."""
    real_read = server.indexing.indexer.read_file
    touched: list[Path] = []

    def read_after_action(path: Path, *args: Any, **kwargs: Any) -> bytes:
        if path.name == name and path not in touched:
            touched.append(path)
            action(path)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(server.indexing.indexer, "read_file", read_after_action)
    return touched


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of every image whose pixels Pillow decodes: a bomb must never get here."""
    loads: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self: ImageFile.ImageFile) -> Any:
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return loads


def build_messy_folder(root: Path) -> None:
    """Good photos, odd-but-valid images, bad files, symlink traps and stray images in the index directory."""
    for name in ("red", "green", "blue"):
        save_color(root / "good" / f"{name}.jpg", COLORS[name])
    save_color(root / "really_png.jpg", COLORS["yellow"], fmt="PNG")  # misnamed but a real image
    save_color(root / "SHOUT.JPG", COLORS["white"])

    odd = root / "odd"
    odd.mkdir()
    ramp = np.linspace(0, 65535, 40 * 30, dtype=np.uint16).reshape(30, 40)
    Image.fromarray(ramp).save(odd / "deep16.png")
    Image.new("CMYK", (40, 30), (0, 230, 230, 10)).save(odd / "cmyk.jpg")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 20, 200, 30] + [0, 0, 0] * 254)
    palette.paste(0, (0, 0, 16, 32))
    palette.save(odd / "palette_alpha.png", transparency=0)
    noise_image((40, 30), 1).convert("L").save(odd / "grey.jpg")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[1].save(odd / "animated.webp", save_all=True, append_images=frames[2:], duration=100, lossless=True)
    save_color(Path(os.fsdecode(os.path.join(os.fsencode(odd), NON_UTF8_NAME))), COLORS["blue"], size=(30, 20))

    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    whole_jpeg = encode(noise_image((64, 64), 2), "JPEG")
    (bad / "truncated.jpg").write_bytes(whole_jpeg[: len(whole_jpeg) // 2])
    whole_png = encode(noise_image((64, 64), 3), "PNG")
    (bad / "truncated.png").write_bytes(whole_png[: len(whole_png) // 2])
    (bad / "notes.jpg").write_text("a shopping list, not a picture\n" * 20, encoding="utf-8")
    (bad / "page.jpg").write_text("<!DOCTYPE html>\n<html><body>Not found</body></html>\n", encoding="utf-8")
    (bad / "invoice.jpg").write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n")
    (bad / "bomb.png").write_bytes(png_declaring_size(30000, 30000))
    (bad / "bomb_10k.png").write_bytes(png_declaring_size(10000, 10000))
    save_color(bad / "locked.jpg", COLORS["red"])
    save_color(bad / "vanishing.jpg", COLORS["green"])
    Path(os.fsdecode(os.path.join(os.fsencode(bad), b"bro\xeaken.png"))).write_bytes(b"not a png either")

    traps = root / "traps"
    traps.mkdir()
    (traps / "broken.jpg").symlink_to(traps / "no_such_target.jpg")
    (traps / "loop_a.jpg").symlink_to(traps / "loop_b.jpg")
    (traps / "loop_b.jpg").symlink_to(traps / "loop_a.jpg")
    (traps / "alias.jpg").symlink_to(root / "good" / "red.jpg")  # same file twice: indexed once
    (traps / "back").symlink_to(root, target_is_directory=True)  # folder loop
    (traps / "album.jpg").symlink_to(traps, target_is_directory=True)  # a folder with an image name

    save_color(root / "idx" / "stray.jpg", COLORS["red"])
    save_color(root / "idx" / "default" / "stray.png", COLORS["blue"], fmt="PNG")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_messy_folder_indexes_every_valid_image_and_skips_each_bad_file_with_its_reason(
    fake_encoder: FakeEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = tmp_path / "photos"
    build_messy_folder(folder)
    service = ClipSearch(Settings(index_dir=folder / "idx", model=fake_encoder.model_name), fake_encoder)
    deny_reading(monkeypatch, "locked.jpg")
    before_reading(monkeypatch, "vanishing.jpg", Path.unlink)

    report = service.index_folder(folder)

    valid = GOOD_NAMES | ODD_VALID_NAMES
    assert report.indexed_total == report.added == report.embedded == len(valid) == 12
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert report.failed == len(report.failures) == len(BAD_FILE_REASONS)
    assert set(reasons) == set(BAD_FILE_REASONS)
    for name, words in BAD_FILE_REASONS.items():
        assert words.lower() in reasons[name].lower(), (name, reasons[name])
    collection = service.collection("default")
    _, paths, vectors = collection.all_vectors()
    assert sorted(p.name for p in paths) == sorted(valid)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert collection.count() == collection.ntotal == 12
    assert "bro\\\\xeaken.png" in report.model_dump_json()  # undecodable bytes reach JSON as \\xNN escapes

    again = service.index_folder(folder)

    assert (again.unchanged, again.indexed_total) == (12, 12)
    assert (again.added, again.updated, again.moved, again.removed, again.embedded) == (0, 0, 0, 0, 0)
    assert {Path(f.path).name for f in again.failures} == set(BAD_FILE_REASONS) - {"vanishing.jpg"}
    assert collection.count() == collection.ntotal == 12


def test_unreadable_file_is_skipped_with_a_permission_reason_and_the_rest_indexed(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    locked = color_folder / "red" / "red_1.jpg"
    deny_reading(monkeypatch, locked.name)

    report = fake_service.index_folder(color_folder)

    assert (report.indexed_total, report.added, report.failed) == (14, 14, 1)
    assert Path(report.failures[0].path) == locked
    assert report.failures[0].reason == "cannot read file: Permission denied"
    assert fake_service.collection("default").find_path(locked) is None


def test_previously_indexed_file_that_becomes_unreadable_is_removed_and_never_returned(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    fake_service.index_folder(color_folder)
    target = color_folder / "red" / "red_0.jpg"
    assert str(target) in [h.path for h in fake_service.search_text("red", k=3).results]
    mtime = target.stat().st_mtime_ns
    save_color(target, COLORS["blue"], size=(70, 50))
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))
    deny_reading(monkeypatch, target.name)

    report = fake_service.index_folder(color_folder)

    assert (report.removed, report.failed, report.indexed_total) == (1, 1, 14)
    assert "Permission denied" in report.failures[0].reason
    collection = fake_service.collection("default")
    assert collection.find_path(target) is None
    assert collection.count() == collection.ntotal == 14
    for query in COLORS:
        assert str(target) not in {h.path for h in fake_service.search_text(query, k=1000).results}

    monkeypatch.undo()
    readable_again = fake_service.index_folder(color_folder)

    assert (readable_again.added, readable_again.failed, readable_again.indexed_total) == (1, 0, 15)
    assert str(target) in [h.path for h in fake_service.search_text("blue", k=4).results]


def test_symlink_loops_and_broken_symlinks_are_skipped_with_reasons_and_folder_loops_are_not_followed(
    fake_service: ClipSearch, tmp_path: Path
):
    folder = tmp_path / "photos"
    save_color(folder / "ok.jpg", COLORS["red"])
    save_color(folder / "sub" / "deeper.jpg", COLORS["green"])
    (folder / "a.jpg").symlink_to(folder / "b.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    (folder / "self.jpg").symlink_to(folder / "self.jpg")
    (folder / "broken.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)
    (folder / "sub" / "here").symlink_to(folder / "sub", target_is_directory=True)

    report = fake_service.index_folder(folder)

    assert (report.indexed_total, report.added) == (2, 2)
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert set(reasons) == {"a.jpg", "b.jpg", "self.jpg", "broken.jpg"}
    for loop in ("a.jpg", "b.jpg", "self.jpg"):
        assert "Too many levels of symbolic links" in reasons[loop]
    assert "No such file" in reasons["broken.jpg"]
    _, paths, _ = fake_service.collection("default").all_vectors()
    assert sorted(paths) == [folder / "ok.jpg", folder / "sub" / "deeper.jpg"]


def test_file_that_vanishes_between_scan_and_read_is_a_failure_and_the_run_completes(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    gone = color_folder / "green" / "green_2.jpg"
    vanished = before_reading(monkeypatch, gone.name, Path.unlink)

    report = fake_service.index_folder(color_folder)

    assert vanished == [gone]
    assert (report.indexed_total, report.added, report.failed) == (14, 14, 1)
    assert Path(report.failures[0].path) == gone
    assert report.failures[0].reason == "cannot read file: No such file or directory"
    collection = fake_service.collection("default")
    assert collection.count() == collection.ntotal == 14


def test_previously_indexed_file_that_vanishes_while_being_reread_loses_its_old_vector(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    fake_service.index_folder(color_folder)
    target = color_folder / "yellow" / "yellow_1.jpg"
    mtime = target.stat().st_mtime_ns
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))
    before_reading(monkeypatch, target.name, Path.unlink)

    report = fake_service.index_folder(color_folder)

    assert (report.removed, report.failed, report.indexed_total) == (1, 1, 14)
    assert str(target) not in {h.path for h in fake_service.search_text("yellow", k=1000).results}
    collection = fake_service.collection("default")
    assert collection.count() == collection.ntotal == 14


def test_file_rewritten_between_scan_and_read_is_indexed_by_the_content_read_and_settles_next_run(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    target = color_folder / "red" / "red_2.jpg"
    rewritten_mtime = target.stat().st_mtime_ns + 5 * 10**9

    def rewrite_as_blue(path: Path) -> None:
        save_color(path, COLORS["blue"], size=(80, 60))
        os.utime(path, ns=(rewritten_mtime, rewritten_mtime))

    before_reading(monkeypatch, target.name, rewrite_as_blue)
    first = fake_service.index_folder(color_folder)

    assert (first.added, first.failed) == (15, 0)
    assert str(target) in [h.path for h in fake_service.search_text("blue", k=4).results]
    monkeypatch.undo()
    encoded = fake_encoder.images_encoded

    second = fake_service.index_folder(color_folder)

    assert (second.unchanged, second.updated, second.added, second.embedded) == (15, 0, 0, 0)
    assert fake_encoder.images_encoded == encoded
    assert fake_service.collection("default").find_path(target).mtime_ns == rewritten_mtime


def test_copy_made_while_its_modified_original_is_deleted_mid_run_stays_indexed(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A move done as copy + delete (as across file systems) of a photo edited since the last run, during a run.
    folder = tmp_path / "photos"
    original = save_color(folder / "photo.jpg", COLORS["red"])
    save_color(folder / "other.jpg", COLORS["blue"])
    fake_service.index_folder(folder)
    mtime = original.stat().st_mtime_ns
    os.utime(original, ns=(mtime + 10**9, mtime + 10**9))
    copy = folder / "a_copy.jpg"
    shutil.copy(original, copy)
    before_reading(monkeypatch, copy.name, lambda _: original.unlink())

    report = fake_service.index_folder(folder)

    assert [Path(f.path).name for f in report.failures] == ["photo.jpg"]
    assert fake_service.collection("default").find_path(copy) is not None
    assert report.indexed_total == 2


def test_file_caught_half_written_fails_as_truncated_and_is_indexed_once_complete(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    target = color_folder / "white" / "white_0.jpg"
    whole = target.read_bytes()
    mtime = target.stat().st_mtime_ns
    before_reading(monkeypatch, target.name, lambda path: path.write_bytes(whole[: len(whole) // 2]))

    first = fake_service.index_folder(color_folder)

    assert (first.indexed_total, first.failed) == (14, 1)
    assert "truncated" in first.failures[0].reason.lower()
    monkeypatch.undo()
    target.write_bytes(whole)
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))

    second = fake_service.index_folder(color_folder)

    assert (second.added, second.failed, second.indexed_total) == (1, 0, 15)


def test_changed_content_with_the_same_size_and_a_new_mtime_is_updated(
    fake_service: ClipSearch, fake_encoder: FakeEncoder, tmp_path: Path
):
    # Same size and same mtime would go unnoticed (the size+mtime shortcut); a new mtime alone must be enough.
    folder = tmp_path / "photos"
    target = save_color(folder / "swatch.bmp", COLORS["red"], fmt="BMP")
    save_color(folder / "other.bmp", COLORS["green"], fmt="BMP")
    fake_service.index_folder(folder)
    size, mtime = target.stat().st_size, target.stat().st_mtime_ns
    save_color(target, COLORS["blue"], fmt="BMP")
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))
    assert target.stat().st_size == size
    encoded = fake_encoder.images_encoded

    report = fake_service.index_folder(folder)

    assert (report.updated, report.unchanged, report.embedded, report.indexed_total) == (1, 1, 1, 2)
    assert fake_encoder.images_encoded == encoded + 1
    assert fake_service.search_text("blue", k=1).results[0].path == str(target)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_in_a_folder_is_never_decoded(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = tmp_path / "photos"
    save_color(folder / "fine.png", COLORS["green"], fmt="PNG")
    (folder / "bomb.png").write_bytes(png_declaring_size(30000, 30000))
    (folder / "bomb_10k.png").write_bytes(png_declaring_size(10000, 10000))
    assert (folder / "bomb.png").stat().st_size < 100
    loads = count_loads(monkeypatch)

    report = fake_service.index_folder(folder)

    assert report.indexed_total == 1
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert "30000x30000 pixels" in reasons["bomb.png"] or "900000000 pixels" in reasons["bomb.png"]
    assert "10000x10000 pixels" in reasons["bomb_10k.png"]
    assert loads and set(loads) == {(64, 48)}  # the counter sees decodes: only the good picture's


def test_images_inside_the_index_directory_are_never_indexed_even_through_a_symlink(
    fake_encoder: FakeEncoder, color_folder: Path
):
    index_dir = color_folder / "idx"
    service = ClipSearch(Settings(index_dir=index_dir, model=fake_encoder.model_name), fake_encoder)
    stray = save_color(index_dir / "stray.jpg", COLORS["red"])
    save_color(index_dir / "default" / "deep" / "stray.png", COLORS["blue"], fmt="PNG")
    (color_folder / "link_to_stray.jpg").symlink_to(stray)
    (color_folder / "index_alias").symlink_to(index_dir, target_is_directory=True)

    first = service.index_folder(color_folder)
    save_color(index_dir / "default" / "written_later.jpg", COLORS["white"])
    second = service.index_folder(color_folder)

    assert (first.indexed_total, first.failed) == (15, 0)
    assert (second.indexed_total, second.unchanged, second.added, second.failed) == (15, 15, 0, 0)
    _, paths, _ = service.collection("default").all_vectors()
    assert not [p for p in paths if p.is_relative_to(index_dir)]


def test_images_in_a_folder_that_cannot_be_listed_for_one_run_keep_their_entries(
    fake_service: ClipSearch, color_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    fake_service.index_folder(color_folder)
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(os.fsdecode(path)).name == "red":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(server.indexing.indexer.os, "scandir", scandir)

    report = fake_service.index_folder(color_folder)

    assert [(Path(f.path).name, f.reason) for f in report.failures] == [("red", "cannot list folder: " + DENIED)]
    assert (report.removed, report.indexed_total) == (0, 15)


def test_named_pipe_called_jpg_is_ignored_without_blocking(fake_service: ClipSearch, tmp_path: Path):
    folder = tmp_path / "photos"
    save_color(folder / "ok.jpg", COLORS["red"])
    pipe = folder / "pipe.jpg"
    os.mkfifo(pipe)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(report=fake_service.index_folder(folder)), daemon=True)

    worker.start()
    worker.join(timeout=10)
    blocked = worker.is_alive()
    if blocked:  # a reader is stuck in open(): give it EOF so the run, and this test, can finish
        with open(pipe, "wb"):
            pass
        worker.join(timeout=10)

    assert not blocked, "indexing blocked on a named pipe"
    assert (result["report"].indexed_total, result["report"].failed) == (1, 0)
