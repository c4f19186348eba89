"""Bearer tokens for the HTTP server: made, listed and revoked by `clipsearch token`, checked on every request.

Only each token's SHA-256 is kept, in `<index_dir>/tokens.json` (owner-only, written atomically). A token is 256
random bits, not a password a person chose, so no slow KDF is needed: nobody can guess its way back from the hash,
and a fast hash keeps checking a request cheap. The file is read again whenever it changes on disk (its inode, size
or mtime), so a revocation by another process holds from the next request, without a restart."""

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from server.atomic_files import write_atomically_with
from server.errors import InvalidArgument, TokenFileUnreadable

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
VERSION = 1
PREFIX = "cs_"  # tells a clipsearch token apart in a config file or a secret scanner
TOKEN_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TokenEntry:
    """One token as stored: its name, whether it may only read, when it was made, and its hash."""

    name: str
    read_only: bool
    created: str
    sha256: str


@dataclass(frozen=True)
class Holder:
    """Who a valid token belongs to: its name and whether it may only read."""

    name: str
    read_only: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_token_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"Invalid token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'.")
    return name


class TokenStore:
    """The index directory's tokens: `add`, `entries`, `revoke`, and `holder` (the check a request goes through)."""

    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / TOKENS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None
        self._cached: tuple[TokenEntry, ...] = ()

    def add(self, name: str, read_only: bool = False) -> str:
        """Make a token named `name`; returns it, the only time it is ever seen (only its hash is kept)."""
        validate_token_name(name)
        entries = self._read()
        if any(e.name == name for e in entries):
            raise InvalidArgument(f"A token named {name!r} exists already; revoke it first or choose another name.")
        token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        self._write((*entries, TokenEntry(name, read_only, created, hash_token(token))))
        return token

    def revoke(self, name: str) -> TokenEntry:
        """Remove the token named `name`; a server refuses it from its next request."""
        entries = self._read()
        kept = tuple(e for e in entries if e.name != name)
        if len(kept) == len(entries):
            raise InvalidArgument(f"No token is named {name!r} (see 'clipsearch token list').")
        self._write(kept)
        return next(e for e in entries if e.name == name)

    def entries(self) -> tuple[TokenEntry, ...]:
        """The tokens as stored (names, rights, dates; never a token)."""
        return self._read()

    def configured(self) -> bool:
        """Whether any token exists (a server with none may listen on loopback only)."""
        return bool(self._current())

    def holder(self, token: str) -> Holder | None:
        """Whose token this is, or None: compared in constant time against every stored hash, so neither the
        answer's timing nor its order tells how much of a hash matched. A damaged file admits nobody."""
        presented = hash_token(token)
        found: TokenEntry | None = None
        for entry in self._current():
            if hmac.compare_digest(presented, entry.sha256):
                found = entry
        return Holder(found.name, found.read_only) if found else None

    def _current(self) -> tuple[TokenEntry, ...]:
        """The entries, read again only when the file changed (or disappeared) since last read."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._seen:
                try:
                    self._cached = self._read() if stamp else ()
                except TokenFileUnreadable:
                    log.warning("%s is unreadable: every request is refused until it is fixed", self.path)
                    self._cached = ()
                self._seen = stamp
            return self._cached

    def _read(self) -> tuple[TokenEntry, ...]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise TokenFileUnreadable(f"{self.path} cannot be read as a token file: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("tokens"), list):
            raise TokenFileUnreadable(f"{self.path} is not a version-{VERSION} token file.")
        try:
            return tuple(
                TokenEntry(str(t["name"]), bool(t["read_only"]), str(t["created"]), str(t["sha256"]))
                for t in data["tokens"]
            )
        except (KeyError, TypeError) as exc:
            raise TokenFileUnreadable(f"{self.path} has a malformed entry: {exc}") from exc

    def _write(self, entries: tuple[TokenEntry, ...]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": VERSION,
            "tokens": [
                {"name": e.name, "read_only": e.read_only, "created": e.created, "sha256": e.sha256} for e in entries
            ],
        }
        payload = (json.dumps(data, indent=2) + "\n").encode("utf-8")

        def write(handle: BinaryIO) -> None:
            os.fchmod(handle.fileno(), 0o600)  # before a byte is written
            handle.write(payload)

        write_atomically_with(self.path, write)
