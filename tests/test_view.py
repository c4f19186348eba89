"""view_image: one photo, upright, within the size bounds, with its metadata and collections; nothing outside the
allowed folders is opened."""

import builtins
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_metadata import exif_with, jpeg

from conftest import mcp_client
from server.service import ClipSearch


def shown(result: Any) -> Image.Image:
    image_blocks = [c for c in result.content if c.type == "image"]
    assert len(image_blocks) == 1 and image_blocks[0].mime_type == "image/jpeg"
    import base64

    return Image.open(io.BytesIO(base64.b64decode(image_blocks[0].data)))


@pytest.mark.anyio
async def test_a_photo_comes_back_upright_within_bounds_with_its_metadata_and_collections(
    fake_service: ClipSearch, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    gps = ("N", (52.0, 31.0, 12.0), "E", (13.0, 24.0, 0.0))
    exif = exif_with(
        original="2024:08:03 18:04:05", offset="+02:00", gps=gps, make="Apple", model="iPhone 15", orientation=6
    )
    photo = folder / "sign.jpg"
    photo.write_bytes(jpeg(exif, size=(800, 600)))  # stored sideways: upright it is 600×800
    fake_service.index_folder(folder)
    async with mcp_client(fake_service, [folder]) as client:
        result = await client.call_tool("view_image", {"path": str(photo), "max_side": 400})

    assert not result.is_error, result.content
    view = result.structured_content
    assert (view["width"], view["height"]) == (600, 800)  # type: ignore[index]
    assert (view["shown_width"], view["shown_height"]) == (300, 400)  # type: ignore[index]
    assert shown(result).size == (300, 400)
    assert view["taken"] == "2024-08-03T18:04:05+02:00" and view["camera"] == "Apple iPhone 15"  # type: ignore[index]
    assert view["latitude"] == pytest.approx(52.52) and view["longitude"] == pytest.approx(13.4)  # type: ignore[index]
    assert view["collections"] == ["default"]  # type: ignore[index]


@pytest.mark.anyio
async def test_a_large_noisy_photo_stays_under_one_megabyte(fake_service: ClipSearch, tmp_path: Path) -> None:
    photo = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    async with mcp_client(fake_service, [tmp_path]) as client:
        result = await client.call_tool("view_image", {"path": str(photo), "max_side": 2048})

    assert not result.is_error, result.content
    assert result.structured_content["jpeg_bytes"] <= 1_000_000  # type: ignore[index]
    assert max(shown(result).size) <= 2048 and result.structured_content["collections"] == []  # type: ignore[index]


@pytest.mark.anyio
async def test_bad_paths_and_sizes_are_refused_and_nothing_outside_the_roots_is_opened(
    fake_service: ClipSearch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(jpeg())
    (inside / "notes.txt").write_text("not an image", encoding="utf-8")
    allowed = inside / "ok.jpg"
    allowed.write_bytes(jpeg())
    opened: list[str] = []
    real_open = builtins.open

    def spying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spying_open)
    async with mcp_client(fake_service, [inside]) as client:
        calls = {
            "outside": {"path": str(secret)},
            "folder": {"path": str(inside)},
            "text": {"path": str(inside / "notes.txt")},
            "missing": {"path": str(inside / "gone.jpg")},
            "tiny": {"path": str(allowed), "max_side": 32},
            "huge": {"path": str(allowed), "max_side": 4096},
        }
        results = {name: await client.call_tool("view_image", args) for name, args in calls.items()}
        control = await client.call_tool("view_image", {"path": str(allowed)})

    assert all(r.is_error for r in results.values())
    assert "outside the folders" in results["outside"].content[0].text  # type: ignore[union-attr]
    assert "not an image file" in results["folder"].content[0].text  # type: ignore[union-attr]
    assert "not an image file" in results["text"].content[0].text  # type: ignore[union-attr]
    assert "does not exist" in results["missing"].content[0].text  # type: ignore[union-attr]
    assert all("max_side" in results[n].content[0].text for n in ("tiny", "huge"))  # type: ignore[union-attr]
    assert not control.is_error and str(allowed) in opened  # the spy sees what is read
    assert str(secret) not in opened
