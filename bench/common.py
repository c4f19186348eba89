"""Shared benchmark helpers: machine description, timing statistics, photo-sized test images."""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def machine() -> str:
    """CPU model, cores and Python: every figure is only meaningful next to this."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}; {os.cpu_count()} CPUs; Python {platform.python_version()}"


def emit(result: dict[str, object], as_json: bool) -> None:
    """Print a benchmark's result: one JSON line for scripts, or indented JSON for people."""
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))


def proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB there), in MB."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far: VmHWM, not ru_maxrss, which a process started by a large one
    (fork, then exec) inherits from it, so a benchmark's child would report its parent's peak."""
    return proc_status_mb("VmHWM")


# Runs a command and prints its peak RSS: measured from a small launcher, since a child forked from a big process
# would start from that process's peak.
_LAUNCHER = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)


def whole_process(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process running `command`; its failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[-6:])} failed: {done.stderr[-2000:]}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p95_ms": round(float(np.percentile(values, 95)), 3)}


def make_photos(folder: Path, count: int, size: tuple[int, int] = (4000, 3000), quality: int = 90) -> list[Path]:
    """`count` distinct photo-sized JPEGs (default 12 MP) made from the sample photos, rotated and mirrored."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SAMPLES.rglob("*.jpg"))
    paths = []
    for i in range(count):
        target = folder / f"photo_{i:05d}.jpg"
        if not target.exists():
            with Image.open(sources[i % len(sources)]) as source:
                image = source.convert("RGB")
            if (i // len(sources)) % 2:
                image = ImageOps.mirror(image)
            image = image.rotate((i // (2 * len(sources))) * 7 % 360, expand=False)
            image.resize(size, Image.Resampling.BICUBIC).save(target, "JPEG", quality=quality)
        paths.append(target)
    return paths
