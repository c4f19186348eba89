"""A model is who it is: the hub name and a copy of its snapshot open each other's collections; other weights under
a familiar name are refused; collections from the previous release (name only) keep working and migrate."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import server.models.identity as identity_module
from bench.checkpoint import write_random_clip
from conftest import HUB_NAME
from server.cli.main import main
from server.errors import CollectionMismatch
from server.models.identity import model_identity
from server.store.collection_store import CollectionStore
from server.store.manifest import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
V1_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_collection"
V1_WEIGHTS_SHA256 = "c06c2a628cf42cfa5c861055834867d46a8a3598fa7771ceb3207de24bb81e1b"  # fixtures/v1_collection/README


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny checkpoint of the same shape: other weights (seed 1)."""
    return write_random_clip(tmp_path_factory.mktemp("other-clip"), "tiny", seed=1)


def copy_snapshot(snapshot: Path, target: Path) -> Path:
    """A plain copy of a cache snapshot (links followed), as a user carries it to an offline machine."""
    shutil.copytree(snapshot, target, symlinks=False)
    return target


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    return err


# --- identity -------------------------------------------------------------------------------------------------------


def test_cache_snapshot_and_a_plain_copy_have_one_identity(cached_model: Path, tmp_path: Path) -> None:
    copy = copy_snapshot(cached_model, tmp_path / "copy")

    assert (cached_model / "model.safetensors").is_symlink() and not (copy / "model.safetensors").is_symlink()
    assert model_identity(cached_model) == model_identity(copy)
    assert model_identity(copy).startswith("sha256:") and len(model_identity(copy)) == len("sha256:") + 64


def test_other_weights_or_another_architecture_change_the_identity(
    tiny_clip: Path, other_clip: Path, tmp_path: Path
) -> None:
    reshaped = copy_snapshot(tiny_clip, tmp_path / "reshaped")
    config = json.loads((reshaped / "config.json").read_text(encoding="utf-8"))
    config["projection_dim"] = 25
    (reshaped / "config.json").write_text(json.dumps(config), encoding="utf-8")

    identities = {model_identity(tiny_clip), model_identity(other_clip), model_identity(reshaped)}

    assert len(identities) == 3


def test_resaving_the_config_with_another_transformers_version_keeps_the_identity(
    tiny_clip: Path, tmp_path: Path
) -> None:
    resaved = copy_snapshot(tiny_clip, tmp_path / "resaved")
    config = json.loads((resaved / "config.json").read_text(encoding="utf-8"))
    config["transformers_version"] = "4.0.0"
    config["_name_or_path"] = "/somewhere/else"
    (resaved / "config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")

    assert model_identity(resaved) == model_identity(tiny_clip)


def test_weight_hashes_are_computed_once_then_remembered(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = copy_snapshot(tiny_clip, tmp_path / "copy")
    remembered = tmp_path / "index" / "model-hashes.json"
    hashed: list[str] = []
    real_digest = hashlib.file_digest

    def counting_digest(handle, digest):  # type: ignore[no-untyped-def]
        hashed.append(handle.name)
        return real_digest(handle, digest)

    monkeypatch.setattr(identity_module.hashlib, "file_digest", counting_digest)

    first = model_identity(copy, remembered)
    second = model_identity(copy, remembered)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b" ")  # new size, mtime
    third = model_identity(copy, remembered)

    assert first == second != third
    assert [Path(name).name for name in hashed] == ["model.safetensors", "model.safetensors"]


def test_hub_cache_weights_are_named_by_their_hash_and_not_read(
    cached_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> object:
        raise AssertionError("the blob's name is its SHA-256; nothing needs hashing")

    monkeypatch.setattr(identity_module.hashlib, "file_digest", refuse)

    assert model_identity(cached_model).startswith("sha256:")


def test_sharded_weights_are_all_part_of_the_identity(tiny_clip: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for path in tiny_clip.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, sharded / path.name)
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"first half")
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"second half")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    before = model_identity(sharded)

    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"other half")

    assert model_identity(sharded) != before


# --- collections follow the identity ---------------------------------------------------------------------------------


def test_hub_name_and_snapshot_folder_open_each_others_collections_with_identical_results(
    cached_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = str(tmp_path / "index")
    copy = str(copy_snapshot(cached_model, tmp_path / "copy"))
    cli_json(capsys, "index", str(SAMPLES), "--index-dir", index, "--model", HUB_NAME, "-c", "by-name")
    cli_json(capsys, "index", str(SAMPLES), "--index-dir", index, "--model", copy, "-c", "by-folder")

    answers = {
        (collection, model): cli_json(
            capsys, "search", "a rocket", "-k", "9", "--index-dir", index, "--model", model, "-c", collection
        )["results"]
        for collection in ("by-name", "by-folder")
        for model in (HUB_NAME, str(cached_model), copy)
    }

    first = answers[("by-name", HUB_NAME)]
    assert len(first) == 9
    assert all(results == first for results in answers.values())


def test_other_weights_under_the_collections_model_folder_are_refused_naming_both(
    cached_model: Path, other_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = str(tmp_path / "index")
    folder = copy_snapshot(cached_model, tmp_path / "my-model")
    cli_json(capsys, "index", str(SAMPLES), "--index-dir", index, "--model", str(folder))
    shutil.copy(other_clip / "model.safetensors", folder / "model.safetensors")  # weights replaced in place

    message = cli_error(capsys, "search", "a rocket", "--index-dir", index, "--model", str(folder))

    assert message.startswith("clipsearch: error: Collection 'default' was built with model")
    assert f"this command uses '{folder}', a different checkpoint" in message
    assert message.count("(weights sha256:") == 2
    assert message.count("\n") == 1


# --- the previous release's collections --------------------------------------------------------------------------


@pytest.fixture
def v1_index(tmp_path: Path) -> Path:
    index = tmp_path / "index"
    shutil.copytree(V1_FIXTURE / "default", index / "default")
    return index


def expected(name: str) -> list[dict[str, object]]:
    return json.loads((V1_FIXTURE / name).read_text(encoding="utf-8"))["results"]


def assert_same_results(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert [(r["rank"], r["path"]) for r in got] == [(r["rank"], r["path"]) for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


def test_previous_release_collection_opens_and_searches_unchanged(
    cached_model: Path, v1_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = (cached_model / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == V1_WEIGHTS_SHA256  # the checkpoint the fixture was written with
    manifest_before = (v1_index / "default" / "manifest.json").read_bytes()
    common = ["--index-dir", str(v1_index), "--model", HUB_NAME, "-k", "9"]

    by_text = cli_json(capsys, "search", "a rocket launching", *common)
    by_image = cli_json(capsys, "similar", str(SAMPLES / "cat" / "chelsea.jpg"), *common)

    assert_same_results(by_text["results"], expected("search_text.json"))
    assert_same_results(by_image["results"], expected("search_image.json"))
    assert (v1_index / "default" / "manifest.json").read_bytes() == manifest_before  # reading never writes


def test_previous_release_collection_searches_with_its_recorded_model_and_gains_its_identity_when_written(
    cached_model: Path, v1_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = str(copy_snapshot(cached_model, tmp_path / "copy"))
    photos = shutil.copytree(SAMPLES, tmp_path / "photos")  # not where the fixture's photos were: 9 more entries

    # --model is the default for new collections; this one searches with the model it records, by name.
    before = cli_json(capsys, "search", "a rocket", "-k", "9", "--index-dir", str(v1_index), "--model", copy)
    still_v1 = json.loads((v1_index / "default" / "manifest.json").read_text(encoding="utf-8"))
    cli_json(capsys, "index", str(photos), "--index-dir", str(v1_index), "--model", HUB_NAME)
    after = cli_json(capsys, "search", "a rocket launching", "-k", "18", "--index-dir", str(v1_index), "--model", copy)

    assert len(before["results"]) == 9 and still_v1["schema_version"] == 1
    manifest = json.loads((v1_index / "default" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["schema_version"] == SCHEMA_VERSION == 6 and manifest["precision"] == "fp32"
    assert manifest["model"] == HUB_NAME
    assert manifest["model_identity"] == model_identity(cached_model)
    # The copies borrow the catalogued vectors (same content), so old and new entries score alike per photo.
    assert len(after["results"]) == 18
    old_scores = {Path(str(r["path"])).name: r["score"] for r in expected("search_text.json")}
    for hit in after["results"]:
        assert hit["score"] == pytest.approx(old_scores[Path(str(hit["path"])).name], abs=1e-5)


def test_store_migrates_a_version_1_manifest_on_the_first_write_only(v1_index: Path) -> None:
    store = CollectionStore(v1_index)
    identity = "sha256:" + "12" * 32

    opened = store.open("default", HUB_NAME, identity=identity)
    assert opened.manifest.schema_version == 1 and opened.manifest.model_identity is None
    with opened.writer():
        pass
    reopened = CollectionStore(v1_index).open("default", "/any/name/for/it", identity=identity)

    assert reopened.manifest.schema_version == SCHEMA_VERSION and reopened.manifest.model_identity == identity
    assert reopened.count() == 9
    with pytest.raises(CollectionMismatch, match="a different checkpoint"):
        CollectionStore(v1_index).open("default", HUB_NAME, identity="sha256:" + "34" * 32)
