"""Comparing models on the same photos: evaluate_retrieval(collections=[...]), `clipsearch eval -c a -c b`, and the
refusals (different images, too many, unknown)."""

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from conftest import COLORS, FakeEncoder, mcp_client, serving
from server.encoders.protocol import normalize
from server.errors import CollectionNotFound, InvalidArgument
from server.service import ClipSearch


class RedOnlyEncoder(FakeEncoder):
    """Another, worse 'model': it sees only the red channel, so colours with little red look alike."""

    model_name = "fake-washed-out"
    model_identity = "sha256:" + "0a" * 32

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.images_encoded += len(batch)
        grey = np.full(len(batch), 0.5, dtype=np.float32)
        return normalize(np.stack([batch[:, 0], grey, grey], axis=1))


@pytest.fixture
def two_models(fake_service: ClipSearch, color_folder: Path) -> ClipSearch:
    washed = RedOnlyEncoder()
    fake_service.encoders.add(washed)
    fake_service.index_folder(color_folder, collection="sharp")
    fake_service.index_folder(color_folder, collection="washed", model=washed.model_name)
    return fake_service


@pytest.mark.anyio
async def test_tool_compares_two_models_side_by_side_with_each_ones_exact_figures(
    two_models: ClipSearch, color_folder: Path
) -> None:
    async with mcp_client(two_models, [color_folder]) as client:
        result = await client.call_tool("evaluate_retrieval", {"collections": ["sharp", "washed"], "plots": True})

    assert not result.is_error, result.content
    report = result.structured_content
    rows = {row["collection"]: row for row in report["comparison"]}  # type: ignore[index]
    assert [rows["sharp"]["model"], rows["washed"]["model"]] == ["fake-color-encoder", "fake-washed-out"]
    for name in ("sharp", "washed"):
        alone = two_models.evaluate(name)
        assert rows[name]["text_to_image"] == alone.text_to_image.model_dump(mode="json")
        assert rows[name]["image_to_image"] == alone.image_to_image.model_dump(mode="json")
        assert rows[name]["images_per_second"] > 0 and rows[name]["text_query_ms"] > 0
    assert rows["sharp"]["image_to_image"]["map"] != rows["washed"]["image_to_image"]["map"]
    written = Path(report["report_dir"])  # type: ignore[index]
    markdown = (written / "report.md").read_text(encoding="utf-8")
    assert "| Model | fake-color-encoder | fake-washed-out |" in markdown
    assert (written / "sharp" / "report.md").is_file() and (written / "washed" / "report.md").is_file()
    assert len(report["plots"]) >= 2  # type: ignore[index]
    assert "'washed' (fake-washed-out): text→image mAP" in result.content[0].text  # type: ignore[union-attr]


def test_collections_holding_different_images_are_refused_listing_the_difference(
    fake_service: ClipSearch, color_folder: Path, tmp_path: Path
) -> None:
    fake_service.index_folder(color_folder, collection="all")
    part = tmp_path / "part"
    shutil.copytree(color_folder / "red", part / "red")
    fake_service.index_folder(part, collection="some")

    with pytest.raises(InvalidArgument) as refused:
        fake_service.compare(["all", "some"])

    message = str(refused.value)
    assert "must hold the same images" in message
    assert f"{3 * len(COLORS)} of 'all' images are not in 'some'" in message
    assert "3 of 'some' images are not in 'all'" in message


def test_too_many_repeated_or_unknown_collections_are_refused(two_models: ClipSearch) -> None:
    with pytest.raises(InvalidArgument, match="At most 5 collections"):
        two_models.compare(["sharp", "washed"] * 3)
    with pytest.raises(InvalidArgument, match="compared once"):
        two_models.compare(["sharp", "sharp"])
    with pytest.raises(CollectionNotFound):
        two_models.compare(["sharp", "nowhere"])


def test_cli_eval_with_two_collections_prints_them_side_by_side(
    two_models: ClipSearch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli.main import main

    assert main(["eval", "-c", "sharp", "-c", "washed"], make_service=serving(two_models)) == 0
    out = capsys.readouterr().out

    assert f"Models compared on the same {3 * len(COLORS)} images" in out
    header = next(line for line in out.splitlines() if "sharp" in line and "washed" in line)
    assert header.split() == ["sharp", "washed"]
    assert any(line.startswith("t→i mAP") for line in out.splitlines())
    assert "washed: fake-washed-out (3-d, fp32)" in out
