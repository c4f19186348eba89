"""server/encoders/pool.py and choosing a model per collection: each model made once, copies of one checkpoint
shared, at most `capacity` kept (least recently used dropped); bad model requests refused with what to do."""

import shutil
from pathlib import Path

import pytest

from conftest import FakeEncoder, mcp_client
from server.encoders.pool import EncoderPool
from server.service import ClipSearch


def fake(name: str, identity: str) -> FakeEncoder:
    encoder = FakeEncoder()
    encoder.model_name = name
    encoder.model_identity = "sha256:" + identity * 32  # type: ignore[misc]
    return encoder


class Maker:
    """Makes fakes by name, counting what it made; names ending in '-copy' are the same checkpoint as without."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, name: str, precision: str = "fp32") -> FakeEncoder:
        self.made.append(name if precision == "fp32" else f"{name}@{precision}")
        base = name.removesuffix("-copy")
        encoder = fake(name, {"a": "aa", "b": "bb", "c": "cc"}[base])
        encoder.precision = precision  # type: ignore[misc]
        return encoder


def test_each_model_is_made_once_and_two_names_of_one_checkpoint_share_an_encoder() -> None:
    maker = Maker()
    pool = EncoderPool(maker, capacity=2)

    first, again, copy = pool.get("a"), pool.get("a"), pool.get("a-copy")

    assert first is again is copy
    assert maker.made == ["a", "a-copy"]  # the copy's files were identified, its weights never loaded apart


def test_least_recently_used_model_is_dropped_beyond_capacity() -> None:
    maker = Maker()
    pool = EncoderPool(maker, capacity=2)
    a = pool.get("a")
    pool.get("b")
    assert pool.get("a") is a  # a is now the most recent
    pool.get("c")  # drops b, the least recently used

    assert pool.loaded() == ["a", "c"]
    pool.get("b")
    assert maker.made == ["a", "b", "c", "b"] and pool.loaded() == ["c", "b"]


def test_a_models_int8_and_fp32_encoders_are_kept_apart_and_int8_copies_share_one() -> None:
    maker = Maker()
    pool = EncoderPool(maker, capacity=3)

    fp32, int8, int8_copy = pool.get("a"), pool.get("a", "int8"), pool.get("a-copy", "int8")

    assert fp32 is not int8 and int8 is int8_copy
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert maker.made == ["a", "a@int8", "a-copy@int8"] and pool.loaded() == ["a", "a-copy"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("not a model id!", "neither a Hugging Face model id"),
        ("relative/../../etc", "neither a Hugging Face model id"),
        ("/etc", "outside the folders this server may read"),
    ],
)
async def test_a_bad_model_request_is_a_tool_error_before_any_job(
    fake_service: ClipSearch, color_folder: Path, model: str, message: str
) -> None:
    async with mcp_client(fake_service, [color_folder]) as client:
        refused = await client.call_tool("index_folder", {"folder": str(color_folder), "model": model})
        jobs = await client.call_tool("index_status", {})

    assert refused.is_error and message in refused.content[0].text  # type: ignore[union-attr]
    assert jobs.structured_content["jobs"] == []  # type: ignore[index]


@pytest.mark.anyio
async def test_an_unknown_model_offline_fails_the_job_naming_the_model(
    fake_service: ClipSearch, color_folder: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    async with mcp_client(fake_service, [color_folder]) as client:
        failed = await client.call_tool(
            "index_folder", {"folder": str(color_folder), "collection": "new", "model": "nobody/no-such-model"}
        )

    assert failed.is_error
    assert "Cannot load the model 'nobody/no-such-model'" in failed.content[0].text  # type: ignore[union-attr]
    assert not fake_service.store.exists("new")


def test_a_relative_name_is_never_a_folder_where_the_server_runs(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_home: Path
) -> None:
    from server.errors import ModelUnavailable
    from server.models.files import find_local, locate, requested_model
    from server.paths import PathGuard

    shutil.copytree(tiny_clip, tmp_path / "ckpt")  # a complete checkpoint in the working folder, outside the roots
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert requested_model("ckpt", PathGuard([tmp_path / "photos"])) == "ckpt"  # taken as a hub id
    assert find_local("ckpt") is None
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        locate("ckpt")
