"""clipsearch cluster index on a cluster of several nodes (ray.cluster_utils.Cluster on loopback addresses: a head
with no CPUs and two 1-CPU workers): a worker node removed mid-run, the run still ends with every object exactly once;
2,000 images from a local S3 store equal the single-machine index, and the archive's search agrees with exact search.
Its own module: a process holds one Ray connection, and test_cluster.py's is a single local instance."""

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import LocalS3, archive_against_exact, block_pictures, clipsearch, environment, save_color, until
from server.config import Settings
from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
from server.results import ClusterIndexReport
from server.service import ClipSearch
from server.store.shards import ShardStore

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    # Three Ray nodes on 2 cores: their start timed out in a clean-clone CI run on a loaded machine (the GCS port
    # file never came), so they run on request only until that is understood.
    pytest.mark.skipif(
        os.environ.get("CLIPSEARCH_RAY_NODE_TESTS") != "1", reason="set CLIPSEARCH_RAY_NODE_TESTS=1 to run"
    ),
]

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[Any, Any]]:
    """A head on 127.0.0.2 with no CPUs, workers on 127.0.0.3 and .4 (added one at a time); Ray's files, its
    current-cluster note and its token under folders of this module's own."""
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="cs-nodes-"))
    (temp / "ray").mkdir()
    variables = {"HOME": str(temp), "RAY_TMPDIR": str(temp), "RAY_USAGE_STATS_ENABLED": "0"}
    with environment(**variables, AWS_EC2_METADATA_DISABLED="true"):
        head = {"num_cpus": 0, "node_ip_address": "127.0.0.2", "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args={**head, "object_store_memory": 100 * MIB})
        try:
            workers = tuple(
                cluster.add_node(num_cpus=1, node_ip_address=address, object_store_memory=100 * MIB)
                for address in ("127.0.0.3", "127.0.0.4")
            )
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, configure_logging=False)
            yield cluster, workers
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def test_the_command_embeds_on_the_cluster_at_the_address_it_is_given(
    two_workers: tuple[Any, Any], tiny_clip: Path, tmp_path: Path
) -> None:
    cluster, _ = two_workers
    folder = tmp_path / "photos"
    for i in range(6):
        save_color(folder / f"p{i}.jpg", (200, 10 * i, 40))
    index_dir = tmp_path / "index"
    options = ("-c", "archive", "--model", str(tiny_clip), "--index-dir", str(index_dir), "--json")
    done = clipsearch("cluster", "index", str(folder), *options, "--address", cluster.address)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["cluster"], report["nodes"], report["embedded"]) == (cluster.address, 2, 6)
    assert len(paths_in(ShardStore(index_dir / "archive"))) == 6


def paths_in(store: ShardStore) -> list[str]:
    return [p for shard in store.finished() for p in pq.read_table(shard, columns=["path"]).column("path").to_pylist()]


def test_2000_images_from_s3_on_two_worker_nodes_equal_the_single_machine_index_and_search_within_recall(
    two_workers: tuple[Any, Any], local_s3: LocalS3, tiny_clip: Path, tmp_path: Path
) -> None:
    """The issue's acceptance run: 2,000 images in a local S3 store, embedded on two 1-CPU worker nodes, equal a
    single-machine `clipsearch index` of the same files (cosine >= 0.99999), and the archive's top 10 agrees with
    exact search over its shards within the calibrated recall."""
    folder = tmp_path / "photos"
    block_pictures(folder, 2000, groups=10, size=(40, 32), prefix="d")
    client = local_s3.client()
    client.create_bucket(Bucket="archive")
    for path in sorted(folder.rglob("*.png")):
        client.put_object(Bucket="archive", Key=f"all/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())

    index_dir = tmp_path / "index"
    options = ClusterOptions(block_rows=64, embed_batch=32, shard_rows=512, embedders=2)
    recipe = EncoderRecipe(str(tiny_clip))
    report = cluster_index(local_s3.source("s3://archive/all"), "big", index_dir, recipe, None, options)
    assert (report.listed, report.embedded, report.failed, report.nodes) == (2000, 2000, 0, 2)
    assert report.index_type == "ivfpq" and (report.index_recall_at_10 or 0) >= 0.9

    single = ClipSearch(Settings(index_dir=tmp_path / "single", model=str(tiny_clip), engine="onnx"))
    single.index_folder(folder, "one", ocr="off")
    _, paths, expected = single.collection("one").all_vectors()
    by_name = {p.relative_to(folder.resolve()).as_posix(): v for p, v in zip(paths, expected, strict=True)}
    _, vectors, uris = ShardStore(index_dir / "big").vectors()
    got = {uri.removeprefix("s3://archive/all/"): v for uri, v in zip(uris, vectors, strict=True)}
    assert sorted(got) == sorted(by_name)
    cosines = np.sum(np.stack([got[n] for n in by_name]) * np.stack(list(by_name.values())), axis=1)
    assert cosines.min() >= 0.99999

    service = ClipSearch(Settings(index_dir=index_dir, model=str(tiny_clip), engine="onnx"))
    agreed = []
    for query in ("a red square", "blue and green", "a dark picture", "bright colours", "a grey pattern"):
        hits, exact, tenth = archive_against_exact(service, "big", query)
        agreed += [exact[h.path] >= tenth - 2e-3 for h in hits]
    assert np.mean(agreed) >= 0.9


def test_a_worker_node_lost_mid_run_still_leaves_every_object_in_the_shards_exactly_once(
    two_workers: tuple[Any, Any], tiny_clip: Path, tmp_path: Path
) -> None:
    # Last of the tests on the module's cluster: it leaves it one worker node short.
    cluster, (_, second) = two_workers
    folder = tmp_path / "photos"
    files = [save_color(folder / f"p{i:03d}.jpg", (10 + i, 200 - i, 90), size=(48 + i % 9, 36)) for i in range(120)]
    assert int(ray.cluster_resources()["CPU"]) == 2
    index_dir = tmp_path / "index"
    options = ClusterOptions(block_rows=4, embed_batch=4, shard_rows=2, embedders=2)
    outcome: dict[str, ClusterIndexReport | BaseException] = {}

    def build() -> None:
        try:
            outcome["report"] = cluster_index(
                folder, "archive", index_dir, EncoderRecipe(str(tiny_clip)), None, options
            )
        except BaseException as exc:
            outcome["error"] = exc

    run = threading.Thread(target=build)
    run.start()
    store = ShardStore(index_dir / "archive")
    until(lambda: store.finished(), "the first shard", seconds=120)
    cluster.remove_node(second)
    assert len(paths_in(store)) < len(files), "the run had finished before the node was removed"
    run.join(timeout=240)
    assert not run.is_alive(), "the run did not finish after its node was lost"
    report = outcome.get("report")
    assert isinstance(report, ClusterIndexReport), outcome.get("error")
    assert (report.listed, report.embedded, report.failed) == (120, 120, 0)
    assert sorted(paths_in(store)) == sorted(str(p.resolve()) for p in files)
    assert report.shards_written == len(store.finished())


def test_a_cluster_with_token_auth_turns_away_a_run_without_its_token_clearly_and_takes_one_with_it(
    tiny_clip: Path, tmp_path: Path
) -> None:
    """A head started by `ray start` with RAY_AUTH_MODE=token (as a real cluster is): the command without the token
    fails with what to set (exit 2), with it embeds; the head is stopped by its own processes, never `ray stop`."""
    import secrets
    import signal
    import subprocess

    temp = Path(tempfile.mkdtemp(prefix="cs-auth-"))
    token = secrets.token_hex(16)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(HOME=str(temp / "home"), RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true")
    with_token = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = ["--head", "--node-ip-address=127.0.0.6", "--port=6397", "--num-cpus=2", "--include-dashboard=false"]
    started = subprocess.run(
        [ray_cli, "start", *head, f"--temp-dir={temp / 'ray'}", "--object-store-memory=100000000"],
        env=with_token,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        folder = tmp_path / "photos"
        for i in range(4):
            save_color(folder / f"p{i}.jpg", (30 * i, 100, 200))
        options = ("-c", "archive", "--model", str(tiny_clip), "--index-dir", str(tmp_path / "index"), "--json")
        refused = clipsearch("cluster", "index", str(folder), *options, "--address", "127.0.0.6:6397", env=base)
        assert refused.returncode == 2
        assert "Cannot join the Ray cluster at 127.0.0.6:6397" in refused.stderr
        assert "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in refused.stderr
        done = clipsearch("cluster", "index", str(folder), *options, "--address", "127.0.0.6:6397", env=with_token)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["embedded"] == 4
    finally:
        for pid in _pids_mentioning(str(temp / "ray"), "127.0.0.6"):  # workers name only the node's address
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _pids_mentioning(*texts: str) -> list[int]:
    """The processes whose command line names one of `texts` (a head's temp folder, its node address)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                line = (entry / "cmdline").read_bytes()
                if any(text.encode() in line for text in texts):
                    found.append(int(entry.name))
    return found
