"""What each model family costs on this machine, with random weights: memory, indexing speed, text-query latency.

    python -m bench.models --checkpoints /tmp/bench-checkpoints [--families clip siglip siglip2 metaclip2]
        [--images 32] [--queries 30] [--engine torch|onnx] [--json]

For each family a checkpoint with the real base architecture and random weights is written into `--checkpoints`
once (bench/checkpoint.py for CLIP ViT-B/32, bench/families.py for SigLIP base-patch16-256 with its 250k vocabulary,
SigLIP 2 base-patch16-256 with 256k, MetaCLIP 2 worldwide B/32 with 901k) and reused on later runs. `--images`
640×480 JPEGs (gradients under noise) are generated once per run. Each family is then measured in a process of its
own, through the production path (`ClipSearch` with `Settings(index_dir=<fresh>, model=<checkpoint folder>,
engine=--engine)`; torch by default, the engine of the first published figures; with onnx the export is made in the
user's cache folder on the first run, so load_s includes it then, and later runs start from it):

- identity_s: `service.encoder`, the service's first use of the model: finding its files and hashing the weights
  for its identity (a fresh index dir has no remembered hashes).
- load_s: then the first call that needs the weights (`encoder.dim`: model, tokenizer, processor, a probe), with
  torch and transformers already imported (import_s). The first query of a new process waits identity_s + load_s.
- images_per_s: `index_folder` wall time over the images (after one warm-up batch of the model, so the figure is
  the steady state; the identity is already known).
- text_query: `search_text` end to end (tokenise, text tower, search, lookup), k=10, p50/p95 over `--queries`
  distinct single queries after one warm-up query.
- text_query_first_ms: the warm-up query, the first after indexing.
- other_cpus_index, other_cpus_queries: CPUs kept busy by other processes meanwhile (from /proc/stat). Torch runs
  one thread per core; a busy neighbour stalls its parallel regions, so latencies balloon (p95 of seconds seen):
  trust a run only where these stay near 0.
- peak_rss_mb: the child's peak resident memory (VmHWM) over the whole run; peak_rss_load_mb the same right after
  loading, rss_loaded_mb the resident memory then. VmHWM rather than ru_maxrss: after a fork or vfork, ru_maxrss
  can carry the parent's peak. Resident memory is split into anonymous (RssAnon: activations, copies) and
  file-backed (RssFile: safetensors weights mapped from the file, resident only once touched, so a large text
  embedding table counts only for the rows the queries used) after loading and at the end.
- checkpoint_mb, parameters (from the safetensors headers, split into text tower, vision tower and the rest).

Random weights: the cost is the real architecture's, the results are meaningless. The CLIP checkpoint's tokenizer
has a byte-level vocabulary unless `--bpe` gives CLIP's BPE file, so its text embedding is smaller than the real
model's (49,408 rows) and its texts are longer in tokens.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import emit, machine, percentiles, proc_status_mb

FAMILIES = ("clip", "siglip", "siglip2", "metaclip2")
ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "bench"
SEED = 0
CHILD_TIMEOUT_S = 1800

QUERIES: tuple[str, ...] = (
    "a dog running on the grass",
    "a cat sleeping on a red sofa",
    "two children playing football on the beach at sunset",
    "a bowl of fresh fruit on a wooden table",
    "snow on the mountains above a quiet lake",
    "an old car parked in front of a yellow house",
    "a woman riding a bicycle through the city at night",
    "a birthday cake with candles",
    "fireworks over a river",
    "a plate of spaghetti",
    "a rocket launching",
    "people hiking in the forest",
    "a lighthouse on a rocky coast",
    "a baby laughing",
    "a crowded train station",
    "autumn leaves in a park",
    "a sailing boat on the sea",
    "a portrait of an old man with a beard",
    "ein Hund läuft über die grüne Wiese",
    "une photo d'un chat qui dort sur un canapé",
    "一只猫睡在红色的沙发上",
    "公園の芝生の上を犬が走っている",
    "a screenshot of a spreadsheet",
    "a handwritten receipt",
    "a wedding ceremony in a church",
    "a horse in a field at dawn",
    "a city skyline at night with lights reflected in the water",
    "a close-up of a flower with a bee",
    "a street market with fruit stalls",
    "a snowman in a garden",
    "a kitchen with white cabinets",
    "a dog wearing sunglasses",
)


# --- parent: checkpoints, images, one child per family ---------------------------------------------------------------


def checkpoint_name(family: str, bpe: Path | None) -> str:
    if family == "clip":
        return "clip-vit-b-32-bpe" if bpe else "clip-vit-b-32"
    return f"{family}-base"


def ensure_checkpoint(cache: Path, family: str, bpe: Path | None) -> tuple[Path, float | None]:
    """The family's random checkpoint in `cache`, written (in a process of its own) if missing; with the seconds the
    writing took, None when reused. A half-written folder is never taken for a checkpoint: writing goes to a
    `.partial` folder that is renamed when complete."""
    folder = cache / checkpoint_name(family, bpe)
    if folder.is_dir():
        return folder, None
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    if family == "clip":
        command = ["-m", "bench.checkpoint", str(partial), "--size", "vit-b-32", *(["--bpe", str(bpe)] if bpe else [])]
    else:
        command = ["-m", "bench.families", str(partial), "--family", family, "--size", "base", "--seed", str(SEED)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"writing the {family} checkpoint failed: {last_line(done.stderr, done.returncode)}")
    partial.rename(folder)
    return folder, time.perf_counter() - started


def safetensors_parameters(folder: Path) -> dict[str, Any]:
    """Parameter counts from the safetensors headers (no weights read): total, per tower, and the dtypes."""
    counts = {"text": 0, "vision": 0, "other": 0}
    dtypes: set[str] = set()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            dtypes.add(tensor["dtype"])
            part = "text" if name.startswith("text") else "vision" if name.startswith(("vision", "visual")) else "other"
            counts[part] += int(np.prod(tensor["shape"], dtype=np.int64))
    return {
        "parameters_m": round(sum(counts.values()) / 1e6, 2),
        "text_parameters_m": round(counts["text"] / 1e6, 2),
        "vision_parameters_m": round(counts["vision"] / 1e6, 2),
        "other_parameters": counts["other"],
        "weights_dtype": ",".join(sorted(dtypes)),
    }


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def make_images(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> None:
    """`count` distinct 640×480 JPEGs: a random colour gradient under random noise, as photos neither flat nor
    pure noise."""
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    x = np.linspace(0, 1, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    for i in range(count):
        start, across, down = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
        pixels = start + (across - start) * x + (down - start) * y
        pixels += rng.normal(0, 24, (height, width, 3)).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        image.save(folder / f"image_{i:05d}.jpg", "JPEG", quality=90)


def last_line(stderr: str, code: int) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {code}"


def measure_in_child(family: str, checkpoint: Path, images: Path, queries: int, engine: str) -> dict[str, Any]:
    """Run the measurement for one checkpoint in a fresh process and return its JSON (or the error)."""
    command = [
        sys.executable,
        "-m",
        "bench.models",
        "--child",
        "--model",
        str(checkpoint),
        "--photos",
        str(images),
        "--queries",
        str(queries),
        "--engine",
        engine,
        "--json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if done.returncode != 0 or not done.stdout.strip():
        return {"error": last_line(done.stderr, done.returncode)}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 2)
    return result


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "images": args.images,
        "image_size": "640x480 JPEG",
        "queries": args.queries,
        "families": {},
    }
    with tempfile.TemporaryDirectory(prefix="clipsearch-bench-models-") as work:
        images = Path(work) / "images"
        make_images(images, args.images)
        for family in args.families:
            checkpoint, written_s = ensure_checkpoint(args.checkpoints, family, args.bpe)
            entry: dict[str, Any] = {
                "checkpoint": str(checkpoint),
                "checkpoint_written_s": None if written_s is None else round(written_s, 1),
                "checkpoint_mb": folder_mb(checkpoint),
                **safetensors_parameters(checkpoint),
            }
            entry.update(measure_in_child(family, checkpoint, images, args.queries, args.engine))
            out["families"][family] = entry
    out["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


# --- child: one model, measured through the production path ----------------------------------------------------------


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU seconds busy machine-wide, CPU seconds of this process), for `other_cpus`."""
    fields = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    own = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), busy, own.user + own.system


def other_cpus(since: tuple[float, float, float]) -> float:
    """How many CPUs other processes kept busy, on average, since the snapshot: with 2 cores and 2 torch threads,
    anything near 1 means the figures measured contention as much as the model."""
    now = cpu_snapshot()
    wall = now[0] - since[0]
    return round(max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / wall, 2) if wall > 0 else 0.0


def measure(model: Path, images: Path, queries: int, engine: str = "torch") -> dict[str, Any]:
    started = time.perf_counter()
    import torch
    import transformers  # noqa: F401  (imported here so load_s is the model's own cost)

    from server.config import Settings
    from server.encoders.onnx_engine import OnnxEncoder
    from server.service import ClipSearch

    import_s = time.perf_counter() - started
    count = sum(1 for p in images.iterdir() if p.suffix == ".jpg")
    with tempfile.TemporaryDirectory(prefix="clipsearch-bench-index-") as index_dir:
        service = ClipSearch(Settings(index_dir=Path(index_dir), model=str(model.resolve()), engine=engine))

        # The service's first use of its model: the pool finds the files and hashes the weights (identity), then
        # the weights load on the first call that needs them.
        started = time.perf_counter()
        encoder = service.encoder
        identity_s = time.perf_counter() - started
        started = time.perf_counter()
        dim = encoder.dim
        load_s = time.perf_counter() - started
        loaded_memory = {
            "rss_loaded_mb": proc_status_mb("VmRSS"),
            "rss_anon_loaded_mb": proc_status_mb("RssAnon"),
            "rss_file_loaded_mb": proc_status_mb("RssFile"),
            "peak_rss_load_mb": proc_status_mb("VmHWM"),
        }

        # One batch through the image tower first: the first forward pass allocates and picks kernels.
        size = encoder.input_size
        batch = min(count, getattr(encoder, "batch_size", 32))
        encoder.encode_pixels(np.zeros((batch, 3, size, size), np.float32))

        snapshot = cpu_snapshot()
        started = time.perf_counter()
        report = service.index_folder(images, collection=COLLECTION)
        index_s = time.perf_counter() - started
        peak_index = proc_status_mb("VmHWM")
        other_cpus_index = other_cpus(snapshot)
        if report.embedded != count:
            raise SystemExit(f"indexed {report.embedded} of {count} images")

        texts = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(queries)]
        started = time.perf_counter()
        if not service.search_text("a warm-up query", 10, COLLECTION).results:
            raise SystemExit("a text query found nothing")
        first_query_ms = (time.perf_counter() - started) * 1000
        latencies = []
        snapshot = cpu_snapshot()
        for text in texts:
            started = time.perf_counter()
            service.search_text(text, 10, COLLECTION)
            latencies.append((time.perf_counter() - started) * 1000)
        other_cpus_queries = other_cpus(snapshot)

        end_memory = {
            "peak_rss_mb": proc_status_mb("VmHWM"),
            "rss_anon_end_mb": proc_status_mb("RssAnon"),
            "rss_file_end_mb": proc_status_mb("RssFile"),
        }
        # What the model is, from the torch reference (with onnx this loads it now, after every figure was read).
        reference = encoder.reference if isinstance(encoder, OnnxEncoder) else encoder
        loaded = reference.torch_parts()  # type: ignore[attr-defined]
        parameters = sum(p.numel() for p in loaded.model.parameters())
        return {
            "model_family": loaded.family.key,
            "model_class": type(loaded.model).__name__,
            "engine": encoder.engine if isinstance(encoder, OnnxEncoder) else "torch",
            "device": loaded.device,
            "torch_threads": torch.get_num_threads(),
            "dim": dim,
            "input_size": size,
            "context_length": loaded.context_length,
            "parameters_loaded_m": round(parameters / 1e6, 2),
            "import_s": round(import_s, 2),
            "load_s": round(load_s, 2),
            "identity_s": round(identity_s, 2),
            **loaded_memory,
            "peak_rss_index_mb": peak_index,
            **end_memory,
            "index_s": round(index_s, 2),
            "images_per_s": round(report.embedded / index_s, 2),
            "text_query_first_ms": round(first_query_ms, 1),
            "text_query": percentiles(latencies),
            "other_cpus_index": other_cpus_index,
            "other_cpus_queries": other_cpus_queries,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=Path(tempfile.gettempdir()) / "clipsearch-bench-checkpoints",
        help="folder the random checkpoints are written to once and reused from (each 0.6-2.4 GB)",
    )
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--bpe", type=Path, help="CLIP's bpe_simple_vocab_16e6.txt.gz, for its real tokenizer")
    parser.add_argument("--engine", choices=["torch", "onnx"], default="torch", help="what runs the models")
    parser.add_argument("--json", action="store_true")
    # The child process's side: one checkpoint, measured, one JSON line out.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.model is None or args.photos is None:
            parser.error("--child needs --model and --photos")
        emit(measure(args.model, args.photos, args.queries, args.engine), as_json=True)
        return
    emit(run_all(args), args.json)


if __name__ == "__main__":
    main()
