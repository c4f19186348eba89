"""Embedding on a Ray cluster (issue 25), the pipeline: `cluster_index` on one and on two 1-CPU worker nodes against
one `ClipSearch.index_folder` on the same machine; images/s, and the peak memory of each worker process and of the
object store.

    python -m bench.cluster --json [--images 200] [--clip DIR] [--rounds 2] [--runs 1] [--block-rows 16] [--pin]

The library: N photo-sized JPEGs (4000x3000, q90, bench.common.make_photos, kept in the temp folder), hard-linked
into a folder of the run's own. The checkpoint: random ViT-B/32 weights (bench.checkpoint, written once), ONNX
Runtime fp32 everywhere; its export is made once, before anything is timed, in `--cache` (kept between runs), and
every Ray worker is pointed at it (two actors exporting at once would cost about a minute).

In one process, `--rounds` times over in this order (so the three are compared at the same moment's load), each run
into a fresh collection or archive:
- single: `ClipSearch(Settings(..., engine="onnx")).index_folder(folder, ocr="off")` (the cluster reads no text, so
  neither does this): the embedding stage's images/s (IndexReport's `images_per_second`), and embedded / whole run;
- a cluster made with `ray.cluster_utils.Cluster` on loopback addresses, as tests/test_cluster_nodes.py makes one: a
  head on 127.0.0.2 with no CPUs (the GCS; the driver's object store), a worker node on 127.0.0.3 with 1 CPU, and
  `--runs` runs of `cluster_index` (the first meets fresh worker processes, as a first `clipsearch cluster index`
  does; later ones Ray's idle ones); then a fresh cluster, its two 1-CPU worker nodes (127.0.0.3, .4) added one at a
  time, and the runs again. ClusterOptions:
  one embedder per worker node, each holding `--embedder-cpus` 0.6 and each reading task `--reader-cpus` 0.4, so a
  node holds one of each and two embedders cannot share a node (found here, and since made `cluster.py`'s own
  defaults: at 0.25 and 0.5 Ray put both embedders on one node in a trial run; one embedder per two CPUs gave two
  1-CPU nodes one); `--block-rows` 16 rows per Ray block (the 256 it had then made 200 images one block: nothing
  for a second node to read; `cluster.py` now cuts at least four blocks per CPU); the rest as the CLI runs it. The
  report's `images_per_second` is embedded images over the Ray pipeline's wall time (Ray connected, the driver's encoder
  made, the listing written), `seconds` the whole call (with the archive's index where cluster_index builds one,
  `index_seconds`); `first_batch_after_s`, the first poll that saw an embedder at work (worker processes started,
  imports, encoders made), and `images_per_second_after_first_batch`, the rate from then to the pipeline's end.

A Ray node's CPU count is a scheduling label, not a limit: each node's processes may use every core. `--pin` puts
each worker node (its raylet, everything under it, and so every worker it starts) on a core of its own, as a 1-CPU
machine would be; the driver and the head are not pinned.

Memory, polled every 0.25 s during each cluster run: each Ray worker process under a worker node's raylet (found in
/proc as the raylet's descendants titled `ray::...`; Ray's two agents per node listed apart), its VmHWM (the kernel's
peak resident set, which counts the object store's shared pages the process mapped; reset at each run's start
through /proc/PID/clear_refs) and its largest RssAnon seen (private memory: the Python heap, ONNX Runtime's arenas);
the raylets' own VmHWM. Each node's object store: the pages of its shared-memory file (/dev/shm, unlinked, read
through the raylet's descriptor) ever written, since tmpfs allocates a page on its first write and the store's
allocator reuses freed space before writing new: the most its objects held at once, rounded up by fragmentation, over
the node's life (so the first run of each cluster is that run's own); and the bytes spilled to disk (the spill
folders' sizes, polled). Ray's own figure, `object_store_bytes_used`, is read over gRPC (`grpcio`, not a dependency
of the `cluster` extra). The single run's peak is this process's VmHWM over that run.

CPU: each run's CPU seconds of the worker nodes' processes (raylets, agents and workers, per process as polled) and
of this process (the driver), and the whole machine's busy cores from /proc/stat, to tell a cluster that idles from
one that shares saturated cores. The 1-minute load average is recorded before each run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, machine, make_photos

MIB = 1024 * 1024
HEAD_ADDRESS = "127.0.0.2"  # Ray rewrites 127.0.0.1 and localhost to the machine's outward address
WORKER_ADDRESSES = ("127.0.0.3", "127.0.0.4")
POLL_SECONDS = 0.25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# /proc readings.


def status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status in kB (absent fields left out; a process gone: empty)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return found
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found


def title(pid: int) -> str:
    """The process's command line as `ps` shows it (Ray workers set theirs to `ray::<what they run>`)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def cpu_seconds_of(pid: int) -> float:
    """User and system CPU seconds of one process so far (0 when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_map() -> dict[int, list[int]]:
    """Every process's children, from each /proc/PID/stat's parent field."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores together since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return float(sum(values) - idle), float(sum(values))


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak(pid: int | str = "self") -> None:
    """Start VmHWM again from the current RSS (Linux: 5 written to clear_refs)."""
    with suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="utf-8")


# The cluster.


@contextmanager
def local_cluster(object_store_mb: int) -> Iterator[tuple[Any, Path]]:
    """A head on 127.0.0.2 with no CPUs, connected to, and Ray's folder; worker nodes are added by the caller. Ray's
    files, its note of the current cluster and its token live under a folder of this run's own (HOME and RAY_TMPDIR
    pointed there)."""
    import ray
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="cs-bench-"))  # short: Ray's socket paths must fit in 107 bytes
    names = ("HOME", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "AWS_EC2_METADATA_DISABLED")
    saved = {key: os.environ.get(key) for key in names}
    os.environ.update(
        HOME=str(temp), RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true"
    )
    head = {
        "num_cpus": 0,
        "node_ip_address": HEAD_ADDRESS,
        "include_dashboard": False,
        "object_store_memory": object_store_mb * MIB,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        ray.init(address=cluster.address, configure_logging=False, logging_level=logging.WARNING)
        yield cluster, temp
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


def add_worker(cluster: Any, address: str, object_store_mb: int) -> Any:
    """One more 1-CPU worker node, waited for."""
    node = cluster.add_node(num_cpus=1, node_ip_address=address, object_store_memory=object_store_mb * MIB)
    cluster.wait_for_nodes()
    return node


def raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def pin(raylet: int, core: int) -> None:
    """Every thread of the raylet and of the processes under it on `core` alone; workers it starts later inherit
    it. A node of one core, as a 1-CPU machine would be (Ray's CPU count is only a scheduling label)."""
    for pid in [raylet, *descendants(raylet, children_map())]:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with suppress(OSError):
                os.sched_setaffinity(int(task.name), {core})


def allowed_cpus(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.startswith("Cpus_allowed_list:")]
    return lines[0].split(":", 1)[1].strip() if lines else ""


def plasma_file(raylet: int) -> str | None:
    """The raylet's descriptor of its object store's shared-memory file (/dev/shm, unlinked), as a /proc path."""
    folder = Path(f"/proc/{raylet}/fd")
    for fd in folder.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "/plasma" in target:
            return str(fd)
    return None


def touched_mb(descriptor: str | None) -> float:
    """Pages of an object store's file ever written (tmpfs allocates a page on its first write and keeps it)."""
    if descriptor is None:
        return float("nan")
    try:
        return round(os.stat(descriptor).st_blocks * 512 / MIB, 1)
    except OSError:
        return float("nan")


@dataclass
class WorkerPeak:
    node: str
    cpus: str
    titles: set[str] = field(default_factory=set)
    hwm_kb: int = 0
    anon_kb: int = 0


AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # a node's own helpers, there whatever runs


class MemoryWatch:
    """Polls the worker nodes' processes and the spill folders in a thread while a run lasts; reads each node's
    object store file before and after."""

    def __init__(self, raylets: dict[str, int], ray_folder: Path) -> None:
        self.raylets = raylets  # node address -> raylet pid, the head's included
        self.ray_folder = ray_folder
        self.stores = {node: plasma_file(pid) for node, pid in raylets.items()}
        self.workers: dict[int, WorkerPeak] = {}
        self.cpu_first: dict[int, float] = {}  # pid -> CPU seconds when first seen (0 for a process new in the run)
        self.cpu_last: dict[int, float] = {}
        self.spilled_peak = 0
        self.first_batch_s: float | None = None  # after the run's start, the first poll that saw an embedder at work
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        children = children_map()
        for pid in self._processes(children):  # each run's peaks from its own start
            reset_peak(pid)
        self.store_start = {node: touched_mb(fd) for node, fd in self.stores.items()}
        for pid in self._processes(children):
            self.cpu_first[pid] = self.cpu_last[pid] = cpu_seconds_of(pid)
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.store_end = {node: touched_mb(fd) for node, fd in self.stores.items()}
        # A process that exited between two polls loses at most a poll's worth of its CPU time.
        self.cpu_seconds = sum(last - self.cpu_first.get(pid, 0.0) for pid, last in self.cpu_last.items())

    def _workers_of(self) -> dict[str, int]:
        return {node: pid for node, pid in self.raylets.items() if node != HEAD_ADDRESS}

    def _processes(self, children: dict[int, list[int]]) -> list[int]:
        return [pid for raylet in self._workers_of().values() for pid in [raylet, *descendants(raylet, children)]]

    def _poll(self) -> None:
        self.polls += 1
        children = children_map()
        for pid in self._processes(children):
            seconds = cpu_seconds_of(pid)
            if seconds:
                self.cpu_last[pid] = max(seconds, self.cpu_last.get(pid, 0.0))
        for node, raylet in self._workers_of().items():
            for pid in descendants(raylet, children):
                name = title(pid).split(" ")[0]
                if not name.startswith("ray::"):
                    continue
                figures = status_kb(pid, ("VmHWM", "RssAnon"))
                if not figures:
                    continue
                peak = self.workers.setdefault(pid, WorkerPeak(node, allowed_cpus(pid)))
                peak.titles.add(name)
                if self.first_batch_s is None and "_Embedder" in name and name.endswith(".submit"):
                    self.first_batch_s = round(time.monotonic() - self.started, 1)
                peak.hwm_kb = max(peak.hwm_kb, figures.get("VmHWM", 0))
                peak.anon_kb = max(peak.anon_kb, figures.get("RssAnon", 0))
        spilled = 0
        for path in self.ray_folder.rglob("*"):
            if "ray_spilled_objects" in str(path):
                with suppress(OSError):
                    spilled += path.stat().st_size if path.is_file() else 0
        self.spilled_peak = max(self.spilled_peak, spilled)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._poll()

    def summary(self) -> dict[str, object]:
        workers, agents = [], []
        for pid, peak in sorted(self.workers.items()):
            busy = sorted(t for t in peak.titles if t != "ray::IDLE")
            record = {
                "node": peak.node,
                "pid": pid,
                "cpus": peak.cpus,
                "ran": ", ".join(busy) or "idle",
                "vm_hwm_mb": round(peak.hwm_kb / 1024, 1),
                "max_rss_anon_mb": round(peak.anon_kb / 1024, 1),
                "cpu_s": round(self.cpu_last.get(pid, 0.0) - self.cpu_first.get(pid, 0.0), 1),
            }
            (agents if set(busy) & set(AGENTS) else workers).append(record)
        raylets = {node: status_kb(pid, ("VmHWM",)).get("VmHWM", 0) for node, pid in self._workers_of().items()}
        return {
            "workers": workers,
            "agents": agents,
            "raylet_vm_hwm_mb": {node: round(kb / 1024, 1) for node, kb in raylets.items()},
            "raylet_cpu_s": {
                node: round(self.cpu_last.get(pid, 0.0) - self.cpu_first.get(pid, 0.0), 1)
                for node, pid in self._workers_of().items()
            },
            "object_store_touched_mb": {
                node: {"before": self.store_start[node], "after": self.store_end[node]} for node in self.stores
            },
            "object_store_touched_sum_mb": round(sum(self.store_end.values()), 1),
            "spilled_peak_mb": round(self.spilled_peak / MIB, 1),
            "polls": self.polls,
        }


# The runs.


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """The load before, and the machine's busy cores and this process's CPU seconds over the block."""
    figures = {"load_1min_before": round(os.getloadavg()[0], 2)}
    busy, total = machine_busy()
    cpu = own_cpu_seconds()
    yield figures
    busy_end, total_end = machine_busy()
    figures["machine_busy_cores"] = round((busy_end - busy) / (total_end - total) * (os.cpu_count() or 1), 2)
    figures["driver_cpu_s"] = round(own_cpu_seconds() - cpu, 1)


def single_run(service: Any, folder: Path, name: str) -> dict[str, object]:
    """One `index_folder` into a new collection, text reading off."""
    reset_peak()
    with measured() as figures:
        report = service.index_folder(folder, collection=name, ocr="off")
    hwm = status_kb(os.getpid(), ("VmHWM",)).get("VmHWM", 0)
    return {
        **figures,
        "embedded": report.embedded,
        "images_per_second": report.images_per_second,
        "seconds": report.seconds,
        "embedded_per_whole_second": round(report.embedded / report.seconds, 2),
        "peak_rss_mb": round(hwm / 1024, 1),
    }


def cluster_run(
    folder: Path, index_dir: Path, name: str, recipe: Any, options: Any, watch: MemoryWatch
) -> dict[str, object]:
    """One `cluster_index` into a new archive on the connected cluster."""
    from server.indexing.cluster import cluster_index

    with measured() as figures, watch:
        report = cluster_index(folder, name, index_dir, recipe, None, options, exclude=[index_dir])
    if report.failed:
        raise SystemExit(f"{report.failed} images failed: {report.failures[:3]}")
    # The archive's own index, built after the pipeline where cluster_index builds one (in its seconds).
    index_seconds = getattr(report, "index_seconds", 0.0)
    steady = None
    if watch.first_batch_s is not None:
        steady = round(report.embedded / max(report.seconds - index_seconds - watch.first_batch_s, 1e-3), 2)
    return {
        **figures,
        "nodes": report.nodes,
        "embedded": report.embedded,
        "images_per_second": report.images_per_second,
        "pipeline_seconds": round(report.embedded / report.images_per_second, 2),
        "seconds": report.seconds,
        "index_seconds": index_seconds,
        "first_batch_after_s": watch.first_batch_s,
        "images_per_second_after_first_batch": steady,
        "embedded_per_whole_second": round(report.embedded / report.seconds, 2),
        "worker_nodes_cpu_s": round(watch.cpu_seconds, 1),
        "memory": watch.summary(),
    }


def mean(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(np.mean([run[key] for run in runs])), 2)


def table(result: dict[str, Any]) -> str:
    """The runs and the ratios as plain text."""
    lines = [
        f"{'run':<18} {'load':>5} {'images/s':>9} {'whole s':>8} {'1st batch s':>11} {'busy cores':>10} "
        f"{'peak MB (worst worker)':>23}"
    ]
    for label, runs in (("single", result["single"]), *result["cluster"].items()):
        for number, run in enumerate(runs, 1):
            if "memory" in run:
                worst = max((w["vm_hwm_mb"] for w in run["memory"]["workers"]), default=0.0)
                store = run["memory"]["object_store_touched_sum_mb"]
                memory = f"{worst:.0f} (store {store:.0f})"
            else:
                memory = f"{run['peak_rss_mb']:.0f} (process)"
            first = run.get("first_batch_after_s", "")
            lines.append(
                f"{label + ' ' + str(number):<18} {run['load_1min_before']:>5} {run['images_per_second']:>9} "
                f"{run['seconds']:>8} {first if first is not None else '-':>11} {run['machine_busy_cores']:>10} "
                f"{memory:>23}"
            )
    lines.append("")
    lines.extend(f"{key}: {value}" for key, value in result["ratios"].items())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clip", type=Path, help="ViT-B/32 checkpoint (default: random weights, written once)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of single, 1 node, 2 nodes")
    parser.add_argument("--runs", type=int, default=1, help="cluster_index runs per cluster in a round")
    parser.add_argument("--block-rows", type=int, default=16, help="rows per Ray block (ClusterOptions.block_rows)")
    parser.add_argument("--embedder-cpus", type=float, default=0.6, help="ClusterOptions.embedder_cpus")
    parser.add_argument("--reader-cpus", type=float, default=0.4, help="ClusterOptions.reader_cpus")
    parser.add_argument("--object-store-mb", type=int, default=512, help="each node's object store")
    parser.add_argument("--pin", action="store_true", help="each worker node's processes on a core of its own")
    parser.add_argument("--photos", type=Path, help="folder for the generated 12 MP JPEGs (kept between runs)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench-cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import server.indexing.cluster as cluster_module
    from server.config import Settings
    from server.encoders.onnx_export import cache_root
    from server.indexing.cluster import ClusterOptions, EncoderRecipe
    from server.service import MODEL_HASHES_FILE, ClipSearch

    scratch = Path(tempfile.gettempdir())
    checkpoint = args.clip
    if checkpoint is None:
        from bench.checkpoint import write_random_clip

        checkpoint = scratch / "clipsearch-bench-clip-vit-b-32"
        if not (checkpoint / "config.json").is_file():
            write_random_clip(checkpoint, "vit-b-32")
    model = str(checkpoint.resolve())
    os.environ["CLIPSEARCH_CACHE"] = str(args.cache)  # inherited by the raylets and their workers
    started = time.perf_counter()
    sources = make_photos(args.photos or scratch / "clipsearch-bench-photos", args.images)
    generated = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="cs-bench-cluster-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for path in sources:
            os.link(path, folder / path.name)
        index_dir = Path(tmp) / "index"
        service = ClipSearch(Settings(index_dir=index_dir, model=model, engine="onnx"))
        encoder = service.encoder
        # Untimed: the export (once, in --cache), ONNX Runtime's first run at this batch shape.
        encoder.encode_pixels(np.zeros((32, 3, encoder.input_size, encoder.input_size), np.float32))
        recipe = EncoderRecipe(model, hash_cache=index_dir / MODEL_HASHES_FILE, export_cache=cache_root())

        single: list[dict[str, object]] = []
        cluster: dict[str, list[dict[str, object]]] = {"1 worker node": [], "2 worker nodes": []}
        for round_number, count in itertools.product(range(1, args.rounds + 1), (0, 1, 2)):
            if count == 0:
                single.append(single_run(service, folder, f"single-{round_number}"))
                continue
            # A fresh cluster each time: its object stores' pages count from its first run.
            with local_cluster(args.object_store_mb) as (ray_cluster, ray_folder):
                raylets = {HEAD_ADDRESS: raylet_pid(ray_cluster.head_node)}
                for core, address in enumerate(WORKER_ADDRESSES[:count]):  # one at a time
                    raylets[address] = raylet_pid(add_worker(ray_cluster, address, args.object_store_mb))
                    if args.pin:
                        pin(raylets[address], core % (os.cpu_count() or 1))
                options = ClusterOptions(
                    block_rows=args.block_rows,
                    embedders=count,
                    embedder_cpus=args.embedder_cpus,
                    reader_cpus=args.reader_cpus,
                )
                label = f"{count} worker node" + ("s" if count > 1 else "")
                for run in range(1, args.runs + 1):
                    name = f"nodes{count}-{round_number}-{run}"
                    watch = MemoryWatch(raylets, ray_folder)
                    cluster[label].append(
                        {"round": round_number, **cluster_run(folder, index_dir, name, recipe, options, watch)}
                    )

    one, two = cluster.values()
    ips = {"single": mean(single, "images_per_second"), "one": mean(one, "images_per_second")}
    ips["two"] = mean(two, "images_per_second")
    result: dict[str, Any] = {
        "benchmark": "cluster",
        "machine": machine(),
        "library": {"images": len(sources), "size": "4000x3000 JPEG q90", "generation_s": round(generated, 1)},
        "checkpoint": model,
        "code": str(Path(cluster_module.__file__).resolve().parent.parent.parent),  # a snapshot of the tree, or not
        "options": {
            "block_rows": args.block_rows,
            "embed_batch": ClusterOptions().embed_batch,
            "embedders": "one per worker node",
            "embedder_cpus": args.embedder_cpus,
            "reader_cpus": args.reader_cpus,
            "worker_nodes_pinned_to_a_core": args.pin,
        },
        "object_store_mb_per_node": args.object_store_mb,
        "single": single,
        "cluster": cluster,
        "ratios": {
            "two_nodes_over_one (target >= 1.7)": round(ips["two"] / ips["one"], 2),
            "two_nodes_over_one, each round": [
                round(
                    mean([r for r in two if r["round"] == n], "images_per_second")
                    / mean([r for r in one if r["round"] == n], "images_per_second"),
                    2,
                )
                for n in range(1, args.rounds + 1)
            ],
            "two_nodes_over_one, after the first batch": round(
                mean(two, "images_per_second_after_first_batch") / mean(one, "images_per_second_after_first_batch"), 2
            ),
            "one_node_over_single": round(ips["one"] / ips["single"], 2),
            "two_nodes_over_single": round(ips["two"] / ips["single"], 2),
            "single_drift (last / first)": round(single[-1]["images_per_second"] / single[0]["images_per_second"], 2),
        },
        "load_1min_after": round(os.getloadavg()[0], 2),
    }
    if args.json:
        emit(result, True)
    else:
        print(table(result))


if __name__ == "__main__":
    main()
