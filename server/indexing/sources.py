"""Where an archive's objects come from: a folder every node sees, or an S3 prefix (AWS or an S3-compatible store
such as MinIO or Ceph) read through pyarrow's S3 filesystem. A source lists its images as the archive's keys (id,
uri, size, mtime) and reads one object's bytes; it is a frozen dataclass, pickled to the Ray tasks that read. S3
credentials live only in that value, in memory: never in its repr, the archive's files or the report."""

import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from server.errors import FileMissing, ImageUnreadable, InvalidArgument, SourceUnreachable, first_line
from server.images.decode import RAW_SIBLING_EXTENSIONS, is_image_name, is_raw_name, read_file
from server.images.video import is_video_name
from server.indexing.scan import scan_folder
from server.results import Failure
from server.store.shards import Key, object_id

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

S3_SCHEME = "s3://"
# Low, so a wrong endpoint or credentials fail within seconds rather than after the SDK's minutes of retries.
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 5.0
ATTEMPTS = 2
_NOT_EMBEDDED = "videos are not embedded on a cluster yet"
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
_REFUSED = {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "INVALID_CLIENT_TOKEN_ID"}
_REFUSED_STATUS = {"401", "403"}


class Source(Protocol):
    """Where the objects come from, as the cluster run needs it."""

    def describe(self) -> str:
        """The source as the report names it (a resolved folder, s3://bucket/prefix); never credentials."""
        ...

    def check(self) -> None:
        """Raise a domain error now if the source cannot be listed (missing, unreachable, refused)."""
        ...

    def listing(self) -> tuple[list[Key], list[Failure]]:
        """The images as (id, uri, size, mtime_ns), and what was left out with why."""
        ...

    def read(self, uri: str) -> bytes:
        """One listed object's bytes; ImageUnreadable with the reason when it cannot be read."""
        ...


@dataclass(frozen=True)
class FolderSource:
    """A folder every node sees at the same path (NFS, a shared disk), scanned as the single-machine indexer does."""

    folder: Path
    exclude: tuple[Path, ...] = ()

    def describe(self) -> str:
        return str(self.folder)

    def check(self) -> None:
        if not self.folder.is_dir():
            raise FileMissing(f"Folder '{self.folder}' does not exist or is not a folder.")

    def listing(self) -> tuple[list[Key], list[Failure]]:
        scan = scan_folder(self.folder, exclude=self.exclude)
        failures = list(scan.failures)
        keys: list[Key] = []
        for file in scan.files:
            text = str(file.path)
            if not is_image_name(file.path):
                failures.append(Failure(path=text, reason=_NOT_EMBEDDED))
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                failures.append(Failure(path=text, reason="file name is not UTF-8 (Parquet stores UTF-8 text)"))
                continue
            keys.append((object_id(text), text, file.size, file.mtime_ns))
        return keys, failures

    def read(self, uri: str) -> bytes:
        return read_file(Path(uri))


@dataclass(frozen=True)
class S3Source:
    """The objects under `s3://bucket/prefix`. No credentials (or `anonymous`): anonymous requests. `endpoint`:
    an S3-compatible store's URL (http:// or https://), path-style; None: AWS."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False

    def describe(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def check(self) -> None:
        from pyarrow.fs import FileType

        try:
            bucket = _filesystem(self).get_file_info(self.bucket)
        except OSError as exc:
            raise self._fault(exc) from exc
        if bucket.type == FileType.NotFound:
            raise FileMissing(f"Bucket '{self.bucket}' does not exist{self._at()}.")
        if self.prefix:
            try:
                found = _filesystem(self).get_file_info(f"{self.bucket}/{self.prefix}")
            except OSError as exc:
                raise self._fault(exc) from exc
            if found.type == FileType.NotFound:
                raise FileMissing(f"Nothing under {self.describe()}{self._at()}.")

    def listing(self) -> tuple[list[Key], list[Failure]]:
        from pyarrow.fs import FileSelector, FileType

        base = f"{self.bucket}/{self.prefix}".rstrip("/")
        try:
            infos = _filesystem(self).get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise self._fault(exc) from exc
        found: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns)
        failures: list[Failure] = []
        for info in infos:
            if info.type != FileType.File:
                continue
            key = info.path[len(self.bucket) + 1 :]
            if any(part.startswith(".") for part in key.split("/")):
                continue  # hidden, as in a folder
            if is_video_name(Path(key)):
                failures.append(Failure(path=self._uri(key), reason=_NOT_EMBEDDED))
            elif is_image_name(Path(key)):
                # The listing's LastModified is the object's version: an object written again gets a new one.
                found[key] = (int(info.size or 0), int(info.mtime_ns or 0))
        twins = _raw_with_sibling(found)
        uris = [(self._uri(key), size, mtime) for key, (size, mtime) in sorted(found.items()) if key not in twins]
        return [(object_id(uri), uri, size, mtime) for uri, size, mtime in uris], failures

    def read(self, uri: str) -> bytes:
        path = uri.removeprefix(S3_SCHEME)
        try:
            with _filesystem(self).open_input_stream(path) as stream:
                data = stream.read()
        except FileNotFoundError as exc:
            raise ImageUnreadable("object no longer exists") from exc
        except OSError as exc:
            raise ImageUnreadable(f"cannot read object: {first_line(exc)}") from exc
        if not data:
            raise ImageUnreadable("object is empty")
        return bytes(data)

    def _uri(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"

    def _at(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else " on AWS S3"

    def _fault(self, exc: OSError) -> Exception:
        """pyarrow's error for a request that failed, as the domain error the person can act on."""
        reason = first_line(exc)
        match = _AWS_ERROR.search(reason)
        code, status = (match.group(1), match.group(2)) if match else ("", None)
        if code == "NETWORK_CONNECTION":
            return SourceUnreachable(
                f"Cannot reach the S3 endpoint{self._at()} (no connection within {ATTEMPTS} attempts of "
                f"{CONNECT_TIMEOUT_S:g} s): check --s3-endpoint and the network. {reason}."
            )
        if code == "NO_SUCH_BUCKET":
            return FileMissing(f"Bucket '{self.bucket}' does not exist{self._at()}.")
        if code in _REFUSED or status in _REFUSED_STATUS:
            given = "anonymous requests" if self._anonymous() else "the credentials in AWS_ACCESS_KEY_ID"
            return SourceUnreachable(
                f"S3{self._at()} refused {given} for bucket '{self.bucket}': set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY to a key that may read it. {reason}."
            )
        return SourceUnreachable(f"Cannot list {self.describe()}{self._at()}: {reason}.")

    def _anonymous(self) -> bool:
        return self.anonymous or not (self.access_key and self.secret_key)


def open_source(
    text: str,
    exclude: Sequence[Path] = (),
    endpoint: str | None = None,
    region: str | None = None,
    anonymous: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> FolderSource | S3Source:
    """The source `text` names: `s3://bucket/prefix` (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    and AWS_SESSION_TOKEN unless `anonymous`; the region also from AWS_REGION), else a folder."""
    if not text.startswith(S3_SCHEME):
        if endpoint or region or anonymous:
            raise InvalidArgument(
                f"The S3 options (endpoint, region, anonymous) are for an s3:// source, not '{text}'."
            )
        return folder_source(Path(text).expanduser(), exclude)
    bucket, _, prefix = text.removeprefix(S3_SCHEME).partition("/")
    if not bucket or any(c.isspace() for c in bucket):
        raise InvalidArgument(f"'{text}' names no bucket; write s3://bucket/prefix.")
    if endpoint is not None:
        _endpoint_parts(endpoint)  # refused now, not on a worker
    source = S3Source(
        bucket,
        prefix.strip("/"),
        endpoint=endpoint.rstrip("/") if endpoint else None,
        region=region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        anonymous=anonymous,
    )
    if anonymous:
        return source
    return replace(
        source,
        access_key=environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=environ.get("AWS_SESSION_TOKEN") or None,
    )


def folder_source(folder: Path, exclude: Sequence[Path] = ()) -> FolderSource:
    """A folder by its resolved path (the path each node opens)."""
    return FolderSource(Path(os.path.realpath(folder)), tuple(exclude))


def _endpoint_parts(endpoint: str) -> tuple[str, str]:
    """(scheme, host[:port]) of an endpoint URL; a bare host[:port] is https."""
    scheme, sep, rest = endpoint.rstrip("/").partition("://")
    if not sep:
        scheme, rest = "https", endpoint.rstrip("/")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise InvalidArgument(f"S3 endpoint '{endpoint}' is not http(s)://host[:port].")
    return scheme, rest


@functools.cache
def _filesystem(source: S3Source) -> "S3FileSystem":
    """One S3 filesystem per source and process (Ray reuses worker processes across tasks)."""
    # The AWS SDK would otherwise ask the cloud metadata address (169.254.169.254) for a region or credentials.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem, resolve_s3_region

    region = source.region
    if region is None:  # AWS finds a bucket's region; an S3-compatible store takes any
        region = resolve_s3_region(source.bucket) if not source.endpoint else "us-east-1"
    options: dict[str, object] = {
        "region": region,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
        "retry_strategy": AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
    }
    if source.endpoint:
        options["scheme"], options["endpoint_override"] = _endpoint_parts(source.endpoint)
    if source._anonymous():
        options["anonymous"] = True
    else:
        options.update(access_key=source.access_key, secret_key=source.secret_key, session_token=source.session_token)
    return S3FileSystem(**options)  # type: ignore[arg-type]


def _raw_with_sibling(keys: Mapping[str, object]) -> set[str]:
    """RAW objects beside a JPEG or HEIC of the same name (any case): the camera's developed copy, as in a folder."""
    paths = {key: PurePosixPath(key) for key in keys}
    developed = {(p.parent, p.stem.lower()) for p in paths.values() if p.suffix.lower() in RAW_SIBLING_EXTENSIONS}
    return {key for key, p in paths.items() if is_raw_name(Path(key)) and (p.parent, p.stem.lower()) in developed}
