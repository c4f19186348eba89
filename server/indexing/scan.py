"""Which files a folder holds for indexing: image files by resolved path, each with its size and mtime, skipping
hidden entries, excluded folders, symlinks leading outside the allowed roots, and RAW files beside their camera's
JPEG or HEIC."""

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.images.decode import RAW_SIBLING_EXTENSIONS, is_image_name, is_raw_name
from server.images.video import is_video_name
from server.paths import UNCONFINED, PathGuard
from server.results import Failure


@dataclass(frozen=True)
class FileStat:
    path: Path
    size: int
    mtime_ns: int


@dataclass
class Scan:
    files: list[FileStat]
    failures: list[Failure]
    unlisted: list[Path]  # folders that could not be listed: what they hold is unknown, not gone
    raw_with_sibling: list[Path] = field(default_factory=list)  # RAW files left out for their JPEG/HEIC twin


def scan_folder(
    folder: Path, recursive: bool = True, exclude: Sequence[Path] = (), guard: PathGuard = UNCONFINED
) -> Scan:
    """Image files under `folder` by their resolved paths, skipping hidden entries, `exclude`d folders and
    symlinks that lead outside the guard's roots. Symlinked folders are not followed (no loops)."""
    excluded = {Path(os.path.realpath(p)) for p in exclude}
    found: dict[Path, FileStat] = {}
    failures: list[Failure] = []
    unlisted: list[Path] = []
    pending = [folder]
    while pending:
        directory = pending.pop()
        if Path(os.path.realpath(directory)) in excluded:
            continue
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            failures.append(Failure(path=str(directory), reason=f"cannot list folder: {exc.strerror or exc}"))
            unlisted.append(Path(os.path.realpath(directory)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(path)
                    continue
                if not is_image_name(path) and not is_video_name(path):
                    continue
                real = Path(os.path.realpath(path))
                if not guard.allows(real):
                    failures.append(Failure(path=str(path), reason="symlink leads outside the allowed folders"))
                    continue
                info = os.stat(real)
            except OSError as exc:
                failures.append(Failure(path=str(path), reason=f"cannot read file: {exc.strerror or exc}"))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if any(real.is_relative_to(e) for e in excluded):
                continue
            found.setdefault(real, FileStat(real, info.st_size, info.st_mtime_ns))
    twins = _raw_with_sibling(found)
    files = sorted((f for f in found.values() if f.path not in twins), key=lambda f: f.path)
    return Scan(files, failures, unlisted, sorted(twins))


def _raw_with_sibling(found: dict[Path, FileStat]) -> set[Path]:
    """RAW files whose folder holds a JPEG or HEIC of the same name (any case): the camera's developed copy."""
    developed = {(path.parent, path.stem.lower()) for path in found if path.suffix.lower() in RAW_SIBLING_EXTENSIONS}
    return {path for path in found if is_raw_name(path) and (path.parent, path.stem.lower()) in developed}
