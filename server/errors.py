"""Domain errors raised by the core. Their messages are written for the person who must act on them."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.results import IndexReport


class ClipSearchError(Exception):
    """Base of every anticipated failure; adapters show its message as is."""


class InvalidArgument(ClipSearchError):
    """An argument is out of range or malformed (empty query, bad k, bad collection name)."""


class PathNotAllowed(ClipSearchError):
    """A path lies outside the roots this server may read, or no roots are configured."""


class FileMissing(ClipSearchError):
    """A folder or file named by the caller does not exist or is the wrong kind."""


class SourceUnreachable(ClipSearchError):
    """An archive's source (an S3 endpoint) could not be reached, or refused the credentials it was given."""


class ClusterUnreachable(ClipSearchError):
    """The Ray cluster at an address could not be joined (not running there, or a token it did not take)."""


class ImageUnreadable(ClipSearchError):
    """A file could not be decoded as an image."""


class VideoUnreadable(ImageUnreadable):
    """A video file could not be read: damaged, truncated, no video stream, or beyond what is decoded safely."""


class ModelUnavailable(ClipSearchError):
    """The CLIP weights could not be loaded (offline and not cached, or not a CLIP checkpoint)."""


class TextModelUnavailable(ClipSearchError):
    """The text recognition (OCR) package or its model files are missing or damaged; images are indexed without text."""


class ExtraMissing(ClipSearchError):
    """An optional part of clipsearch was asked for and its packages are not installed (pip install clipsearch[...])."""


class CollectionNotFound(ClipSearchError):
    """No collection of that name exists in the index directory."""


class CollectionMismatch(ClipSearchError):
    """The collection was built with another model, dimension or format version."""


class CollectionBusy(ClipSearchError):
    """Another indexing run holds the collection's write lock."""


class JobNotFound(InvalidArgument):
    """No job or background computation has that id (or it is malformed)."""


class IndexingCancelled(ClipSearchError):
    """An indexing run was stopped on request; what it committed stays. Carries the partial report."""

    def __init__(self, report: "IndexReport") -> None:
        super().__init__(f"Indexing of {report.folder} into '{report.collection}' was cancelled.")
        self.report = report


class DuplicatesCancelled(ClipSearchError):
    """A duplicates computation stopped on request, or for a newer commit's; nothing of it is kept."""

    def __init__(self) -> None:
        super().__init__(
            "The search for duplicates was stopped (asked to, or the collection changed meanwhile); ask again."
        )


class GroundTruthError(ClipSearchError):
    """The evaluation ground truth is missing, malformed or yields no usable query."""


class TokenFileUnreadable(ClipSearchError):
    """The HTTP server's token file is damaged or of another version; no token is accepted until it is fixed."""


class UnsafeToServe(ClipSearchError):
    """The HTTP server was asked to listen where anyone could reach it, with nothing to keep them out."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, for quoting in our own sentences: without the trailing period they add
    themselves (library messages often end with one already)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(" .")
