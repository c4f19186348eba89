"""Embedding a folder on a Ray cluster into an archive's Parquet shards (`shards`): the source listed into a manifest,
files read, decoded and preprocessed in CPU tasks, embedded by an actor pool of ONNX Runtime encoders, the vectors
written as shards by the driver, each object once. Ray is an edge here, like the CLI: the tasks call the same
`decode`, `read_metadata` and encoder the single-machine indexer does; Ray Data schedules, retries and moves data.

Without an address a local Ray instance is started on a loopback address of its own (usage statistics off, its own
temporary folder), so the same command is the recipe for a first try. Ray and pyarrow are imported inside functions:
`pip install clipsearch[cluster]`."""

import collections
import contextlib
import functools
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.encoders.protocol import Encoder
from server.errors import ClipSearchError, ClusterUnreachable, CollectionMismatch, ExtraMissing, first_line
from server.images.decode import content_hash, decode, is_raw_name
from server.images.metadata import read_metadata
from server.indexing.archive_build import ArchiveIndex, build_archive_index
from server.indexing.sources import Source, folder_source
from server.results import ClusterIndexReport, Failure
from server.store.collection_store import validate_name
from server.store.ondisk_index import KIND as ARCHIVE_KIND
from server.store.ondisk_index import Runner
from server.store.shards import ARCHIVE_FILE, ArchiveInfo, Key, ShardStore, shard_schema

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

LOCAL_NODE_ADDRESS = "127.0.0.2"  # Ray rewrites 127.0.0.1 and localhost to the machine's outward address
MAX_FAILURES_SHOWN = 50


@dataclass(frozen=True)
class EncoderRecipe:
    """How each worker makes its encoder: the ONNX Runtime engine on CPU, or torch on the GPU Ray gave the actor
    (`device` "cuda"); pickled to the nodes, made there once per worker process."""

    model: str
    precision: str = "fp32"
    hash_cache: Path | None = None  # model-hashes.json, so a worker does not rehash the weights
    export_cache: Path | None = None  # None: the worker's own (CLIPSEARCH_CACHE or the user cache)
    device: str = "cpu"
    threads: int | None = None  # ONNX Runtime's intra-op threads; None: one per core of the node

    def make(self) -> Encoder:
        from server.encoders.onnx_engine import OnnxEncoder
        from server.encoders.torch_engine import TransformersEncoder

        if self.device != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise ClipSearchError(
                    "A GPU embedder found no CUDA device: install a CUDA build of torch on the cluster's GPU nodes, "
                    "or run with --cpu-only."
                )
            return TransformersEncoder(self.model, device=self.device, hash_cache=self.hash_cache)
        reference = TransformersEncoder(self.model, hash_cache=self.hash_cache)
        return OnnxEncoder(
            reference, cache=self.export_cache, strict=True, precision=self.precision, threads=self.threads
        )


@dataclass(frozen=True)
class EmbedPlan:
    """The actor pool a run asks Ray for: how many embedders, the CPUs and GPUs each holds, and their recipe."""

    embedders: int
    cpus: float
    gpus: float
    recipe: EncoderRecipe


def plan_embedders(
    resources: Mapping[str, float], recipe: EncoderRecipe, options: "ClusterOptions", nodes: int = 1
) -> EmbedPlan:
    """One embedder per GPU where the cluster has GPUs (torch there; int8 towers are ONNX Runtime's, so an int8
    archive stays on CPUs), else one per two CPUs and at least one per node (`nodes` with CPUs), on ONNX Runtime
    with the cluster's cores shared among them: ONNX Runtime's default, a thread per core of the machine, for each
    of several embedders on one machine cut their throughput 2.2-3.3x in bench.cluster's measurement."""
    gpus = int(resources.get("GPU", 0))
    if gpus >= 1 and options.use_gpus and recipe.precision == "fp32":
        return EmbedPlan(options.embedders or gpus, options.embedder_cpus, 1.0, replace(recipe, device="cuda"))
    cpus = float(resources.get("CPU", 1.0))
    embedders = options.embedders or max(1, nodes, int(cpus // 2))
    threads = recipe.threads or max(1, int(cpus // embedders))
    return EmbedPlan(embedders, options.embedder_cpus, 0.0, replace(recipe, threads=threads))


@dataclass(frozen=True)
class ClusterOptions:
    """How the work is cut: rows per Ray block (the unit a task reads and retries), images per model call, rows per
    shard, and the actor pool (None: one embedder per two CPUs of the cluster)."""

    block_rows: int = 256
    embed_batch: int = 32
    shard_rows: int = 8192
    embedders: int | None = None
    # Fractional: actors holding every CPU would leave none to the reading tasks (and a pipeline hangs). Unequal, so
    # Ray Data keeps decoding in tasks of its own instead of fusing it into the actors. More than half a CPU each, so
    # two embedders never share a 1-CPU node (at 0.25 Ray put both on one of two nodes: bench.cluster).
    embedder_cpus: float = 0.6
    reader_cpus: float = 0.4
    use_gpus: bool = True  # embed on the cluster's GPUs when it has any


def cluster_index(
    source: "Path | Source",
    name: str,
    index_dir: Path,
    recipe: EncoderRecipe,
    address: str | None = None,
    options: ClusterOptions = ClusterOptions(),
    exclude: Sequence[Path] = (),
) -> ClusterIndexReport:
    """Embed the images of `source` (a folder, `exclude` left out, or a `Source`: sources.py) into archive `name`
    on the Ray cluster at `address` (None: this process's Ray connection, else a local instance started for the
    run). Objects already in a finished shard with the same path, size and mtime are not embedded again;
    unreadable ones are reported and skipped."""
    started = time.monotonic()
    validate_name(name)
    _require_the_extra()
    if isinstance(source, Path):
        source = folder_source(source, exclude)
    source.check()  # a missing bucket, a wrong endpoint or key: said now, before the archive's folder is touched
    folder = index_dir / name
    if (folder / "manifest.json").exists() and not (folder / ARCHIVE_FILE).exists():
        raise CollectionMismatch(
            f"'{name}' is a collection indexed on one machine; give the cluster's archive another name."
        )
    store = ShardStore(folder)
    with store.writing(name):
        keys, failures = source.listing()  # first: a listing that fails leaves no record of a new archive
        encoder = recipe.make()
        info = ArchiveInfo(recipe.model, encoder.model_identity, recipe.precision, encoder.dim)  # exports, once
        store.check_or_record(name, info)
        store.write_listing(keys)
        done = store.done()
        todo = [key for key in keys if key not in done]
        reused = {done[key] for key in keys if key in done}
        embedded, written, nodes, embed_seconds, where = 0, 0, 0, 0.0, "not needed"
        family = getattr(encoder, "family_key", None)
        index: ArchiveIndex | None = None
        if todo:  # a Ray instance takes ~20 s to start on 2 cores: none for a run with nothing to embed
            with _ray(address) as where:
                nodes = _nodes()
                began = time.monotonic()
                embedded, written = _embed(store, source, todo, recipe, encoder, info.dim, options, failures, nodes)
                embed_seconds = time.monotonic() - began
                tasks = _in_ray_tasks(options.reader_cpus)
                index = build_archive_index(store, name, source.describe(), info, family, tasks)
        else:  # nothing new: the index is made here only if missing or out of date (files that vanished)
            index = build_archive_index(store, name, source.describe(), info, family)
    return ClusterIndexReport(
        collection=name,
        source=source.describe(),
        cluster=where,
        nodes=nodes,
        listed=len(keys),
        unchanged=len(keys) - len(todo),
        embedded=embedded,
        failed=len(failures),
        failures=failures[:MAX_FAILURES_SHOWN],
        shards_written=written,
        shards_reused=len(reused),
        seconds=round(time.monotonic() - started, 3),
        images_per_second=round(embedded / embed_seconds, 2) if embed_seconds > 0 else 0.0,
        index_type=ARCHIVE_KIND if index else None,
        index_built=bool(index and index.built),
        index_vectors=index.vectors if index else 0,
        index_nprobe=index.nprobe if index else None,
        index_recall_at_10=index.recall_at_10 if index else None,
        index_seconds=index.seconds if index else 0.0,
    )


def _require_the_extra() -> None:
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExtraMissing(
            f"clipsearch cluster needs {' and '.join(missing)}: pip install 'clipsearch[cluster]' on every node."
        )


@contextlib.contextmanager
def _ray(address: str | None) -> Iterator[str]:
    """Connected to Ray for the block: the connection this process has, the cluster at `address`, or a local
    instance on a loopback address of its own, stopped afterwards. Yields where it runs."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # the AWS SDK would look for credentials off-machine
    import ray

    if ray.is_initialized():
        yield address or "connected"
        return
    temp: str | None = None
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
        except ConnectionError as exc:
            raise ClusterUnreachable(_unreachable(address, exc)) from exc
    else:
        temp = tempfile.mkdtemp(prefix="clipsearch-ray-")  # short: Ray's socket paths must fit in 107 bytes
        ray.init(
            _node_ip_address=LOCAL_NODE_ADDRESS,
            _temp_dir=temp,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    try:
        yield address or "local"
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _in_ray_tasks(cpus: float, in_flight: int = 4) -> Runner:
    """A `Runner` of Ray tasks (`cpus` each), a few in flight, results in order; the trained index sent once."""

    def run(fn: Callable[..., bytes], calls: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
        import ray

        remote = ray.remote(num_cpus=cpus)(fn)
        sent: dict[int, Any] = {}
        pending: collections.deque[Any] = collections.deque()
        for first, *rest in calls:
            if id(first) not in sent:
                sent.clear()
                sent[id(first)] = ray.put(first)
            pending.append(remote.remote(sent[id(first)], *rest))
            if len(pending) >= in_flight:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())

    return run


def _unreachable(address: str, exc: Exception) -> str:
    """Why a cluster could not be joined, and the two usual causes: no cluster there, or a token it expects."""
    if os.environ.get("RAY_AUTH_MODE") == "token" and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        token = "this run sent the token in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH: is it the cluster's?"
    else:
        token = (
            "if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            "RAY_AUTH_TOKEN_PATH) here as on its nodes"
        )
    return f"Cannot join the Ray cluster at {address} ({first_line(exc)}): is it running there? {token}."


def _nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU")))


def _embed(
    store: ShardStore,
    source: Source,
    todo: list[Key],
    recipe: EncoderRecipe,
    encoder: Encoder,
    dim: int,
    options: ClusterOptions,
    failures: list[Failure],
    nodes: int,
) -> tuple[int, int]:
    """Run the pipeline over `todo`; shards written by the driver as rows arrive, each id once (a retried task may
    deliver a row again). Returns (embedded, shards written)."""
    import pyarrow as pa
    import ray
    import ray.data
    from PIL import Image

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Ray Data's per-run INFO lines (plans, log folders) and its note on the bars would crowd the report.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    shape = tuple(encoder.preprocess(Image.new("RGB", (encoder.input_size, encoder.input_size))).shape)
    resources = ray.cluster_resources()
    plan = plan_embedders(resources, recipe, options, nodes)
    # At least four blocks per CPU, so that every node has reading to do even in a small run.
    block_rows = max(1, min(options.block_rows, math.ceil(len(todo) / (4 * max(1.0, resources.get("CPU", 1.0))))))
    blocks = [_key_table_of(todo[i : i + block_rows]) for i in range(0, len(todo), block_rows)]
    dataset = (
        ray.data.from_arrow(blocks)
        .map_batches(
            _prepare,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=options.reader_cpus,
            fn_kwargs={"recipe": recipe, "shape": shape, "source": source},
        )
        .map_batches(
            _Embedder,
            batch_format="pyarrow",
            batch_size=options.embed_batch,
            num_cpus=plan.cpus,
            num_gpus=plan.gpus or None,
            compute=ray.data.ActorPoolStrategy(size=plan.embedders),
            fn_constructor_kwargs={"recipe": plan.recipe, "shape": shape},
        )
    )
    schema = shard_schema(dim)
    seen: set[int] = set()
    pending: list[pa.Table] = []
    rows = embedded = written = 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        errors = batch.column("error").to_pylist()
        ids = batch.column("id").to_pylist()
        keep = []
        for i, (row_id, error) in enumerate(zip(ids, errors, strict=True)):
            if row_id in seen:
                continue
            seen.add(row_id)
            if error is not None:
                failures.append(Failure(path=batch.column("path")[i].as_py(), reason=error))
            else:
                keep.append(i)
        if keep:
            pending.append(batch.take(keep).select(schema.names).cast(schema))
            rows += len(keep)
            embedded += len(keep)
        if rows >= options.shard_rows:
            store.write_shard(pa.concat_tables(pending))
            pending, rows, written = [], 0, written + 1
    if pending:
        store.write_shard(pa.concat_tables(pending))
        written += 1
    return embedded, written


def _key_table_of(keys: Sequence[Key]) -> "pa.Table":
    import pyarrow as pa

    columns = list(zip(*keys, strict=True))
    return pa.table(
        {
            "id": pa.array(columns[0], pa.int64()),
            "path": pa.array(columns[1], pa.string()),
            "size": pa.array(columns[2], pa.int64()),
            "mtime_ns": pa.array(columns[3], pa.int64()),
        }
    )


@functools.cache
def _encoder(recipe: EncoderRecipe) -> Encoder:
    """One encoder per worker process and recipe (Ray reuses worker processes across tasks)."""
    return recipe.make()


def _prepare(batch: "pa.Table", recipe: EncoderRecipe, shape: tuple[int, ...], source: Source) -> "pa.Table":
    """A Ray task: each object read once from its source, hashed, its metadata read, decoded and preprocessed as
    the single-machine indexer does; one that cannot be gets its reason in `error` and zero pixels."""
    import pyarrow as pa

    encoder = _encoder(recipe)
    n = batch.num_rows
    pixels = np.zeros((n, *shape), np.float32)
    types = _prepared_types()
    out: dict[str, list[Any]] = {name: [None] * n for name in types}
    paths, mtimes = batch.column("path").to_pylist(), batch.column("mtime_ns").to_pylist()
    for i, (path, mtime_ns) in enumerate(zip(paths, mtimes, strict=True)):
        try:
            data = source.read(path)
            out["hash"][i] = content_hash(data)
            metadata = read_metadata(data, mtime_ns)
            decoded = decode(data, min_side=encoder.input_size, raw=is_raw_name(Path(path)))
            pixels[i] = encoder.preprocess(decoded.image)
            out["width"][i], out["height"][i] = decoded.width, decoded.height
            for field in ("taken", "taken_source", "taken_local", "taken_utc", "latitude", "longitude", "camera"):
                out[field][i] = getattr(metadata, field)
        except ClipSearchError as exc:
            out["error"][i] = str(exc)
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            out["error"][i] = f"unexpected error: {type(exc).__name__}: {exc}"
    for name, kind in types.items():
        batch = batch.append_column(name, pa.array(out[name], kind))
    flat = pa.array(pixels.reshape(-1), pa.float32())
    return batch.append_column("pixels", pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape))))


def _prepared_types() -> dict[str, Any]:
    """The Arrow types of the columns `_prepare` adds (besides the pixels)."""
    import pyarrow as pa

    strings = ("hash", "taken", "taken_source", "taken_local", "camera", "error")
    return {
        **{name: pa.string() for name in strings},
        "width": pa.int32(),
        "height": pa.int32(),
        "taken_utc": pa.float64(),
        "latitude": pa.float64(),
        "longitude": pa.float64(),
    }


class _Embedder:
    """A Ray actor: the recipe's encoder, made once, embedding the prepared rows of each batch (failed rows get a
    zero vector and are dropped by the driver)."""

    def __init__(self, recipe: EncoderRecipe, shape: tuple[int, ...]) -> None:
        self.encoder = _encoder(recipe)
        self.dim = self.encoder.dim
        self.shape = shape

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        n = batch.num_rows
        column = batch.column("pixels").combine_chunks()
        pixels = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(n, *self.shape)
        ok = np.asarray([e is None for e in batch.column("error").to_pylist()], dtype=bool)
        vectors = np.zeros((n, self.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_pixels(pixels[ok])
        flat = pa.array(vectors.reshape(-1), pa.float32())
        batch = batch.drop_columns(["pixels"])
        return batch.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, self.dim))
