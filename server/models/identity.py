"""A model's identity: what its checkpoint holds, not what it is called.

The identity is a SHA-256 over the weight files' SHA-256s and the model config (without the keys that saving
rewrites: transformers version, dtype, source name). The hub name and a copy of the same snapshot share it; the same
name over other weights does not. Hashing 600 MB costs about a second, so file hashes are remembered by
(path, size, mtime, inode), and a file in the hub cache's `blobs/` is named by its SHA-256 already.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from server.atomic_files import write_atomically
from server.errors import ModelUnavailable
from server.models.files import CONFIG, weight_files

log = logging.getLogger(__name__)

PREFIX = "sha256:"
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_commit_hash"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_cache_lock = threading.Lock()


def model_identity(folder: Path, hash_cache: Path | None = None) -> str:
    """`sha256:<hex>` of the checkpoint in `folder`; `hash_cache` is a JSON file remembering file hashes."""
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Cannot read the model config {folder / CONFIG}: {exc}") from exc
    weights = weight_files(folder)
    if not weights:
        raise ModelUnavailable(f"The model folder {folder} has no complete set of weight files.")
    lines = [f"config {hashlib.sha256(_canonical(config)).hexdigest()}"]
    remembered = _read_cache(hash_cache)
    changed = False
    for path in weights:
        digest, fresh = _file_sha256(path, remembered)
        changed |= fresh
        lines.append(f"{path.name} {digest}")
    if changed and hash_cache is not None:
        _write_cache(hash_cache, remembered)
    return PREFIX + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def short(identity: str | None) -> str:
    """An identity shortened for messages: `sha256:1a2b3c4d5e6f`."""
    return "unknown" if not identity else identity[: len(PREFIX) + 12]


def _canonical(config: Any) -> bytes:
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _file_sha256(path: Path, remembered: dict[str, str]) -> tuple[str, bool]:
    """The file's SHA-256 and whether it had to be computed."""
    real = Path(os.path.realpath(path))
    # The hub cache stores large (LFS) files under their SHA-256, which the hub checked when it served them.
    if real.parent.name == "blobs" and real.parent.parent.name.startswith("models--") and _SHA256.fullmatch(real.name):
        return real.name, False
    try:
        stat = real.stat()
        key = f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}"
        if key in remembered:
            return remembered[key], False
        log.info("computing the SHA-256 of %s (once)", real)
        with open(real, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ModelUnavailable(f"Cannot read the model weights {real}: {exc.strerror or exc}.") from exc
    remembered[key] = digest
    return digest, True


def _read_cache(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items() if isinstance(v, str) and _SHA256.fullmatch(v)}
    return {}


def _write_cache(path: Path, remembered: dict[str, str]) -> None:
    # Best effort: a read-only index directory only costs hashing again next time.
    with _cache_lock, contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(path), **remembered}
        write_atomically(path, json.dumps(merged, indent=1).encode("utf-8"))
