"""Confinement: the server reads only under its allowed roots, checked on fully resolved paths."""

import os
from collections.abc import Iterable
from pathlib import Path

from server.errors import InvalidArgument, PathNotAllowed

ROOTS_HELP = (
    "Configure the folders this server may read with `clipsearch serve --root DIR` (repeatable) "
    "or the CLIPSEARCH_ROOTS environment variable, or use an MCP client that declares roots."
)


class PathGuard:
    """Allows a path only when its fully resolved form (symlinks followed) lies under one of the roots.

    `PathGuard.unconfined()` allows every path (the command line reads what its user names); a confined guard with
    no roots allows none."""

    def __init__(self, roots: Iterable[Path], confined: bool = True) -> None:
        self.roots: tuple[Path, ...] = tuple(Path(r).resolve() for r in roots)
        self.confined = confined

    @classmethod
    def unconfined(cls) -> "PathGuard":
        return cls((), confined=False)

    def allows(self, path: Path) -> bool:
        """True when the resolved path is one of the roots or lies beneath one (always, unconfined)."""
        if not self.confined:
            return True
        try:
            real = Path(os.path.realpath(path))
        except (OSError, ValueError):
            return False
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def check(self, path: str | Path) -> Path:
        """Return the resolved absolute path, or raise PathNotAllowed without touching the file's contents.
        Unconfined, a relative path or `~` is taken as a shell would."""
        raw = Path(path)
        if not self.confined:
            return Path(os.path.realpath(raw.expanduser()))
        if not raw.is_absolute():
            raise InvalidArgument(
                f"'{path}' is a relative path; give an absolute path (the server's folder is arbitrary)."
            )
        if not self.roots:
            raise PathNotAllowed(f"No folders are allowed yet, so '{path}' cannot be read. {ROOTS_HELP}")
        if not self.allows(raw):
            allowed = ", ".join(str(r) for r in self.roots)
            raise PathNotAllowed(f"'{path}' is outside the folders this server may read ({allowed}). {ROOTS_HELP}")
        return Path(os.path.realpath(raw))


UNCONFINED = PathGuard.unconfined()
