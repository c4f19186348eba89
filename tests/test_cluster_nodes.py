"""clipsearch cluster index on a cluster of several nodes (ray.cluster_utils.Cluster on loopback addresses: a head
with no CPUs and two 1-CPU workers): a worker node removed mid-run, the run still ends with every object exactly once.
Its own module: a process holds one Ray connection, and test_cluster.py's is a single local instance."""

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import clipsearch, save_color, until
from server.indexing.cluster import ClusterOptions, EncoderRecipe, cluster_index
from server.results import ClusterIndexReport
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
    names = ("HOME", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "AWS_EC2_METADATA_DISABLED")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        HOME=str(temp), RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true"
    )
    head = {"num_cpus": 0, "node_ip_address": "127.0.0.2", "include_dashboard": False, "object_store_memory": 100 * MIB}
    cluster = Cluster(initialize_head=True, head_node_args=head)
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
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
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


def test_a_worker_node_lost_mid_run_still_leaves_every_object_in_the_shards_exactly_once(
    two_workers: tuple[Any, Any], tiny_clip: Path, tmp_path: Path
) -> None:
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


def paths_in(store: ShardStore) -> list[str]:
    return [p for shard in store.finished() for p in pq.read_table(shard, columns=["path"]).column("path").to_pylist()]
