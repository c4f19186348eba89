"""clipsearch cluster index: a folder embedded on Ray into Parquet shards equals the single-machine index of it, each
object once, resumed and grown without re-embedding, bad files reported. One local Ray instance (conftest's
`local_ray`: on 127.0.0.2, with its own HOME and temporary folder) serves the whole module: starting one takes ~20 s
on 2 cores."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, save_color
from server.config import Settings
from server.errors import ClipSearchError, CollectionBusy, CollectionMismatch, ExtraMissing
from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
from server.service import ClipSearch
from server.store.shards import ShardStore

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
SMALL = ClusterOptions(block_rows=3, embed_batch=4, shard_rows=5, embedders=1)


def photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    colors = list(COLORS.values())
    return [
        save_color(folder / f"sub{i % 2}" / f"p{i:03d}.jpg", colors[i % len(colors)], size=(40 + i, 30 + i % 7))
        for i in range(start, start + count)
    ]


def shard_rows(index_dir: Path, name: str) -> list[str]:
    store = ShardStore(index_dir / name)
    return [p for shard in store.finished() for p in pq.read_table(shard, columns=["path"]).column("path").to_pylist()]


def test_vectors_equal_the_single_machine_index_and_each_object_is_in_one_shard_once(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    files = photos(folder, 14)
    index_dir = tmp_path / "index"
    report = cluster_index(folder, "archive", index_dir, EncoderRecipe(str(tiny_clip)), options=SMALL)
    assert (report.listed, report.embedded, report.failed, report.unchanged) == (14, 14, 0, 0)
    # A shard is written once it holds shard_rows (5) or more; how many rows over depends on how Ray batches them.
    sizes = [pq.read_metadata(shard).num_rows for shard in ShardStore(index_dir / "archive").finished()]
    assert report.shards_written == len(sizes) and sum(sizes) == 14 and all(size >= 5 for size in sizes[:-1])
    assert (report.cluster, report.nodes) == ("connected", 1)  # the module's instance, not one of its own
    assert sorted(shard_rows(index_dir, "archive")) == sorted(str(p.resolve()) for p in files)

    single = ClipSearch(Settings(index_dir=tmp_path / "single", model=str(tiny_clip), engine="onnx"))
    single.index_folder(folder, "one")
    _, paths, expected = single.collection("one").all_vectors()
    by_path = dict(zip((str(p) for p in paths), expected, strict=True))
    ids, vectors, archive_paths = ShardStore(index_dir / "archive").vectors()
    assert len(set(ids.tolist())) == 14
    got = np.stack([vectors[archive_paths.index(p)] for p in by_path])
    np.testing.assert_allclose(got, np.stack(list(by_path.values())), atol=1e-5)


def test_a_rerun_embeds_nothing_and_a_grown_folder_only_the_new_or_changed(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    files = photos(folder, 8)
    index_dir = tmp_path / "index"
    recipe = EncoderRecipe(str(tiny_clip))
    first = cluster_index(folder, "archive", index_dir, recipe, options=SMALL)
    # A shard is written once it holds shard_rows (5) or more: how many depends on how Ray batches the 8 rows.
    assert first.embedded == 8 and 1 <= first.shards_written <= 2

    # A write that was interrupted leaves only a temporary file, which no run trusts as a finished shard.
    (index_dir / "archive" / "shards" / ".shard-000002.parquet.1.1.tmp").write_bytes(b"half a shard")
    again = cluster_index(folder, "archive", index_dir, recipe, options=SMALL)
    reused = (again.listed, again.unchanged, again.embedded, again.shards_written, again.shards_reused)
    assert reused == (8, 8, 0, 0, first.shards_written)
    assert (again.cluster, again.nodes) == ("not needed", 0)  # nothing to embed: no Ray asked for

    photos(folder, 3, start=8)
    save_color(files[0], (1, 2, 3))  # changed: same path, new size and mtime
    os.utime(files[0], ns=(1, 1))
    grown = cluster_index(folder, "archive", index_dir, recipe, options=SMALL)
    assert (grown.listed, grown.unchanged, grown.embedded, grown.shards_written) == (11, 7, 4, 1)
    ids, vectors, paths = ShardStore(index_dir / "archive").vectors()
    assert sorted(paths) == sorted(str(p.resolve()) for p in folder.rglob("*.jpg"))
    assert len(set(ids.tolist())) == 11
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_corrupt_and_empty_files_are_skipped_with_their_reasons_and_retried_next_run(
    local_ray: None, tiny_clip: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    photos(folder, 4)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    report = cluster_index(folder, "archive", tmp_path / "index", EncoderRecipe(str(tiny_clip)), options=SMALL)
    assert (report.listed, report.embedded, report.failed) == (6, 4, 2)
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert reasons["empty.png"] == "file is empty"
    assert reasons["broken.jpg"].startswith(("cannot decode image", "not a recognised image format"))
    assert len(shard_rows(tmp_path / "index", "archive")) == 4
    again = cluster_index(folder, "archive", tmp_path / "index", EncoderRecipe(str(tiny_clip)), options=SMALL)
    assert (again.embedded, again.failed) == (0, 2)


def test_a_second_run_on_the_same_archive_is_refused_while_one_holds_it(tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photos(folder, 2)
    store = ShardStore(tmp_path / "index" / "archive")
    with store.writing("archive"), pytest.raises(CollectionBusy, match="being built by another run"):
        cluster_index(folder, "archive", tmp_path / "index", EncoderRecipe(str(tiny_clip)))


def test_an_archive_refuses_the_name_of_a_single_machine_collection(tiny_clip: Path, tmp_path: Path) -> None:
    (tmp_path / "index" / "default").mkdir(parents=True)
    (tmp_path / "index" / "default" / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CollectionMismatch, match="indexed on one machine"):
        cluster_index(tmp_path, "default", tmp_path / "index", EncoderRecipe(str(tiny_clip)))


def test_the_cli_prints_the_report_and_its_json(
    local_ray: None, tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli.main import main

    folder = tmp_path / "photos"
    photos(folder, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG nothing")
    index_dir = str(tmp_path / "index")
    options = ["--model", str(tiny_clip), "--index-dir", index_dir, "-c", "archive"]
    assert main(["cluster", "index", str(folder), *options]) == 0
    out = capsys.readouterr().out
    assert "listed 4, unchanged 0, embedded 3, failed 1" in out
    assert "shards written 1, reused 0" in out
    assert f"skipped {(folder / 'broken.png').resolve()}:" in out
    assert main(["cluster", "index", str(folder), *options, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["embedded"], again["unchanged"], again["shards_reused"]) == (0, 3, 1)


def test_without_the_extra_installed_the_command_says_what_to_install(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ExtraMissing, match=r"needs ray: pip install 'clipsearch\[cluster\]'"):
        cluster_index(tmp_path, "archive", tmp_path / "index", EncoderRecipe(str(tiny_clip)))
    assert not (tmp_path / "index").exists()


def test_gpus_get_a_torch_embedder_each_and_cpu_nodes_onnx_runtime_ones_sharing_their_cores() -> None:
    from server.indexing.cluster import plan_embedders

    recipe = EncoderRecipe("some/model")
    on_gpus = plan_embedders({"CPU": 32.0, "GPU": 4.0}, recipe, ClusterOptions())
    assert (on_gpus.embedders, on_gpus.gpus, on_gpus.recipe.device) == (4, 1.0, "cuda")
    on_cpus = plan_embedders({"CPU": 8.0}, recipe, ClusterOptions())
    assert (on_cpus.embedders, on_cpus.gpus, on_cpus.recipe.device, on_cpus.recipe.threads) == (4, 0.0, "cpu", 2)
    two_small_nodes = plan_embedders({"CPU": 2.0}, recipe, ClusterOptions(), nodes=2)
    assert (two_small_nodes.embedders, two_small_nodes.recipe.threads) == (2, 1)  # one each, a thread each
    asked = plan_embedders({"CPU": 32.0, "GPU": 4.0}, recipe, ClusterOptions(use_gpus=False))
    assert (asked.gpus, asked.recipe.device) == (0.0, "cpu")
    int8 = plan_embedders({"CPU": 32.0, "GPU": 4.0}, EncoderRecipe("some/model", precision="int8"), ClusterOptions())
    assert (int8.gpus, int8.recipe.device) == (0.0, "cpu")  # int8 towers are ONNX Runtime's


def test_a_gpu_embedder_without_cuda_says_what_to_install(tiny_clip: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ClipSearchError, match="install a CUDA build of torch"):
        EncoderRecipe(str(tiny_clip), device="cuda").make()
