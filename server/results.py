"""Pydantic result models shared by the MCP tools and the CLI's --json output."""

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel


def _printable(text: str) -> str:
    # File names need not be UTF-8; JSON must be. Undecodable bytes are shown as \xNN escapes.
    if any("\udc80" <= c <= "\udcff" for c in text):
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


PathText = Annotated[str, AfterValidator(_printable)]


class Failure(BaseModel):
    path: PathText = Field(description="File that was skipped")
    reason: str = Field(description="Why it could not be indexed")


class IndexReport(BaseModel):
    collection: str
    folder: PathText
    indexed_total: int = Field(description="Images in the collection after this run")
    added: int = Field(description="New files embedded (or given the vector of identical content)")
    updated: int = Field(description="Known paths whose content changed")
    moved: int = Field(description="Files renamed or moved; their vectors were reused, not re-embedded")
    unchanged: int
    removed: int = Field(description="Catalogued files under the folder that no longer exist")
    failed: int
    failures: list[Failure] = Field(description="The first 50 failures")
    embedded: int = Field(description="Images that went through the model in this run")
    skipped_raw_with_sibling: int = Field(
        0, description="RAW files not indexed because a JPEG/HEIC of the same name beside them was"
    )
    seconds: float = Field(description="Wall time of the whole run, both stages")
    images_per_second: float = Field(description="Embedded images per second of the embedding stage's wall time")
    ocr: str = Field("auto", description="Whether text in photos is read: auto (after a first pass), on, off")
    text_to_read: int = Field(0, description="Images whose text was due in this run (new, changed, or never read)")
    text_read: int = Field(0, description="Images read in full for text in this run")
    text_first_pass_only: int = Field(0, description="Images the cheap first pass found no text in (not read in full)")
    text_found: int = Field(0, description="Images read in this run that hold text")
    text_seconds: float = Field(0.0, description="Wall time of the text stage")
    text_images_per_second: float = Field(0.0, description="Images per second through the text stage")
    text_note: str | None = Field(None, description="Why text was not read (e.g. the OCR model missing), if so")
    text_problems: list[Failure] = Field(
        default_factory=list, description="The first 50 images whose text was read in part or not at all, and why"
    )


class Moment(BaseModel):
    """A moment of a video: its time from the start, and how well it matched."""

    time_seconds: float
    score: float


class SearchHit(BaseModel):
    rank: int = Field(ge=1)
    path: PathText
    score: float = Field(
        description="Cosine similarity between query and image, in [-1, 1]; for search_text_in_images, how well the "
        "photo's recognised text matches the query, in [0, 1] (1: the exact words)"
    )
    taken: str | None = Field(None, description="Capture time as written in the file (ISO 8601; offset if known)")
    taken_source: str | None = Field(
        None, description="Where 'taken' came from: exif, xmp, quicktime or container (videos), or file_mtime"
    )
    width: int | None = Field(None, description="Upright width in pixels")
    height: int | None = None
    camera: str | None = Field(None, description="Camera make and model")
    latitude: float | None = None
    longitude: float | None = None
    also: int | None = Field(None, description="With diverse=true: how many near-duplicates this result stands for")
    text: str | None = Field(
        None,
        description="When text was read in the photo: at most 300 characters of it on one line, around the words "
        "matched (the text filter's or the text query's), else its start",
    )
    text_marks: list[list[int]] | None = Field(
        None,
        description="[start, end) offsets in `text` (characters, i.e. code points) of each place the words match, "
        "in order; empty when nothing was asked of the text; None when `text` is",
    )
    kind: Literal["photo", "video"] = Field("photo", description="A photo, or a video found at its best moment")
    time_seconds: float | None = Field(
        None, description="A video's moment that matched best, in seconds from its start (view_image shows it)"
    )
    duration_seconds: float | None = Field(None, description="A video's length in seconds")
    other_moments: list[Moment] | None = Field(
        None, description="A video's other matching moments (at most three), best first"
    )


class SearchResponse(BaseModel):
    collection: str
    query: PathText = Field(description="The text query, or the query image's path")
    results: list[SearchHit] = Field(description="Best first")


class QueryResult(BaseModel):
    query: PathText = Field(description="The query text, or the query image's path")
    relevant: int = Field(description="Relevant images in the collection")
    ap: float = Field(description="Average precision over the full ranking")
    rr: float = Field(description="Reciprocal rank of the first relevant image")
    recall_at: dict[int, float]
    precision_at: dict[int, float]
    hit_rate_at: dict[int, float]
    ndcg_at: dict[int, float]
    relevant_ranks: list[int] = Field(description="1-based ranks of the relevant images in the full ranking")
    top: list[PathText] = Field(description="The top results, best first (as many as the largest k)")


class DirectionMetrics(BaseModel):
    map: float = Field(description="Mean average precision over the full ranking of the collection")
    mrr: float = Field(description="Mean reciprocal rank of the first relevant image")
    recall_at: dict[int, float] = Field(description="Mean fraction of a query's relevant images in its top k")
    hit_rate_at: dict[int, float] = Field(description="Fraction of queries with a relevant image in the top k")
    precision_at: dict[int, float] = Field(description="Mean fraction of the top k that is relevant")
    ndcg_at: dict[int, float] = Field(description="Mean binary-relevance nDCG at k")
    queries: int = Field(description="Queries evaluated")
    skipped: int = Field(description="Queries that could not be evaluated (reasons in notes)")
    worst: list[QueryResult] = Field(description="The lowest-AP queries, worst first (all of them in report.json)")


class ComparedCollection(BaseModel):
    collection: str
    model: str
    precision: str = Field("fp32", description="Of the collection's vectors: fp32 or int8")
    dim: int
    text_to_image: DirectionMetrics
    image_to_image: DirectionMetrics
    images_per_second: float = Field(description="Image embedding speed measured now on this machine (decode + model)")
    text_query_ms: float = Field(description="Median text search time measured now on this machine (model + search)")


class EvaluationReport(BaseModel):
    collection: str
    ground_truth: str = Field(description="'folders' or the ground-truth file used")
    images: int
    labels: int | None = Field(description="Distinct folder labels ('folders' ground truth only)")
    text_template: str
    ks: list[int]
    text_to_image: DirectionMetrics
    image_to_image: DirectionMetrics
    unknown_paths: list[PathText] = Field(description="Ground-truth paths not in the collection (first 50)")
    unknown_count: int
    notes: list[str] = Field(description="Why queries were skipped (first 50)")
    seconds: float
    report_dir: PathText | None = Field(description="Folder holding report.json, report.md and the plots, if written")
    plots: list[PathText] = Field(default_factory=list)
    comparison: list[ComparedCollection] | None = Field(
        None,
        description="When several collections (one per model) were evaluated: each one's figures side by side; "
        "the fields above are then the first collection's",
    )


class CollectionInfo(BaseModel):
    name: str
    images: int
    model: str
    model_identity: str | None = Field(
        None, description="sha256 of the model's weights and config; None until a collection made before 0.2 is written"
    )
    precision: str = Field("fp32", description="Of its vectors: fp32, or int8 (quantised towers, faster)")
    family: str | None = Field(
        None,
        description="The model's family (clip, siglip, siglip2, metaclip2, ...); None until a collection made "
        "before it was recorded is next indexed",
    )
    dim: int
    index_type: str


class CollectionList(BaseModel):
    index_dir: str
    collections: list[CollectionInfo]


class Thumbnail(BaseModel):
    path: PathText
    jpeg_base64: str | None = Field(None, description="A small upright JPEG, base64")
    error: str | None = Field(None, description="Why there is no thumbnail (refused, missing or unreadable)")


class ThumbnailPage(BaseModel):
    side: int = Field(description="Longest side of each JPEG, in pixels")
    thumbnails: list[Thumbnail] = Field(description="In the order asked")


class TextLineView(BaseModel):
    text: str
    box: list[list[float]] = Field(description="Four corners [x, y] in the original's pixels, clockwise from top left")
    confidence: float = Field(description="The recogniser's confidence, 0-1")


class ImageView(BaseModel):
    path: PathText
    width: int = Field(description="Upright size of the original, in pixels")
    height: int
    shown_width: int = Field(description="Size of the JPEG returned")
    shown_height: int
    jpeg_bytes: int
    taken: str | None
    taken_source: str | None
    latitude: float | None
    longitude: float | None
    camera: str | None
    collections: list[str] = Field(description="Collections that hold this image")
    text: str | None = Field(
        None,
        description="The text read in the photo, line by line in reading order ('' when it was read and holds none); "
        "None when no collection holding it has read it",
    )
    lines: list[TextLineView] | None = Field(None, description="The lines of `text`, in reading order")
    text_note: str | None = Field(None, description="What part of the photo was left unread, if any")
    kind: Literal["photo", "video"] = "photo"
    time_seconds: float | None = Field(None, description="A video's moment shown, in seconds from its start")
    duration_seconds: float | None = Field(None, description="A video's length in seconds")


class DuplicateMember(BaseModel):
    path: PathText
    size: int = Field(description="File size in bytes")
    width: int
    height: int
    taken: str | None
    taken_utc: float | None = Field(description="Capture time as seconds since 1970 (UTC), for ordering")


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"] = Field(description="'exact': byte-identical copies; 'near': look-alikes")
    members: list[DuplicateMember]
    keeper: PathText = Field(description="The suggested one to keep")
    keeper_reason: str


class DuplicatesProgress(BaseModel):
    compared: int = Field(description="Images whose neighbours have been compared so far")
    total: int = Field(description="Images in scope")


class DuplicateReport(BaseModel):
    collection: str
    state: Literal["done", "running"] = Field(
        "done", description="'running': the groups are still being computed; call again (same arguments) for them"
    )
    job_id: str | None = Field(None, description="While running: the computation, which cancel_indexing stops")
    progress: DuplicatesProgress | None = Field(None, description="While running: how far the comparison is")
    generation: int = Field(0, description="The collection's commit the groups describe (never an older one's)")
    threshold: float
    max_bits: int = Field(description="Most differing bits of the 64-bit perceptual hash allowed in a near pair")
    exact_only: bool
    images: int = Field(description="Images examined")
    groups_total: int
    images_in_groups: int
    offset: int
    groups: list[DuplicateGroup] = Field(description="Largest groups first; this page of them")
    notes: list[str]
    seconds: float = Field(description="Time the groups took to compute (0 while running)")


class Figure(BaseModel):
    metric: str
    value: float
    source: str


class ModelInfo(BaseModel):
    model: str = Field(description="Hugging Face id, to pass as index_folder's model or --model")
    family: str
    languages: str
    parameters_m: int = Field(description="Parameters, millions (both towers)")
    download_mb: int
    download_estimated: bool = Field(description="True when the size is parameters × 4 bytes, not a file listing")
    dim: int = Field(description="Embedding dimension")
    image_size: int
    figures: list[Figure] = Field(description="Published quality figures, each with its source")
    advice: str
    downloaded: bool = Field(description="Already in the local Hugging Face cache (usable offline)")


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobProgress(BaseModel):
    found: int = Field(0, description="Images found in the folder")
    to_process: int = Field(0, description="Images new or changed since the last run (the rest are unchanged)")
    done: int = Field(0, description="Images of those processed so far")
    embedded: int = Field(0, description="Images that went through the model so far")
    failed: int = Field(0, description="Files skipped as unreadable so far")
    images_per_second: float = Field(0.0, description="Processed images per second so far")
    eta_seconds: float | None = Field(None, description="Estimated seconds left, once there is a rate to go by")
    stage: str = Field("embedding", description="embedding (first), then text (reading text in photos)")
    text_to_read: int = Field(0, description="Images whose text the text stage reads")
    text_done: int = Field(0, description="Of those, read so far")
    text_images_per_second: float = Field(0.0, description="Images per second through the text stage so far")
    text_eta_seconds: float | None = Field(None, description="Estimated seconds left in the text stage")


class JobStatus(BaseModel):
    job_id: str
    collection: str
    folder: PathText
    state: JobState
    recursive: bool
    remove_missing: bool
    index_type: str | None
    model: str | None = None
    precision: str | None = Field(None, description="Of a new collection's vectors, if asked (else fp32)")
    created: str
    started: str | None = None
    finished: str | None = None
    progress: JobProgress
    report: IndexReport | None = Field(None, description="The run's report once it ended (partial if cancelled)")
    error: str | None = None
    note: str | None = Field(None, description="What the job is waiting for, or what happened to it")
    resumed: int = Field(0, description="Times the job was resumed after its server stopped mid-run")


class WatchedFolder(BaseModel):
    folder: PathText
    collection: str
    state: Literal["watching", "stopped"]
    since: str
    note: str | None = Field(None, description="Why watching stopped")
    last_job: str | None = Field(None, description="The job that indexed its latest changes")
    pending: bool = Field(False, description="Changes seen and not yet indexed (waiting for them to settle)")


DuplicatesState = Literal["running", "done", "cancelled", "failed"]


class DuplicatesJob(BaseModel):
    """A find_duplicates comparison, run as a job of its own, as this server remembers it (until it stops)."""

    kind: Literal["duplicates"] = "duplicates"
    job_id: str
    collection: str
    generation: int = Field(description="The collection's commit being compared")
    folder: PathText | None = Field(None, description="Only images under this folder (None: the whole collection)")
    threshold: float
    max_bits: int
    exact_only: bool
    state: DuplicatesState
    created: str
    finished: str | None = None
    progress: DuplicatesProgress
    groups_total: int | None = Field(None, description="Groups found, once done")
    error: str | None = None
    note: str | None = Field(None, description="Why it was cancelled, or what became of its groups")
    next_step: str = Field(description="What to call next")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Indexing jobs, newest first")
    watched: list[WatchedFolder] = Field(default_factory=list, description="Folders kept in sync by this server")
    duplicates: list[DuplicatesJob] = Field(
        default_factory=list, description="find_duplicates comparisons of this server, newest first"
    )


class StoppedJob(RootModel[JobStatus | DuplicatesJob]):
    """What cancel_indexing answers: the indexing job, or the duplicates comparison, as it stands after the request."""

    model_config = ConfigDict(json_schema_extra={"type": "object"})  # MCP wants an object at a tool schema's root


class IndexFolderResult(BaseModel):
    """A finished run's report (state 'done'), or a job still under way and how to follow it."""

    state: JobState
    job_id: str
    collection: str
    folder: PathText
    progress: JobProgress
    next_step: str = Field(description="What to call next")
    error: str | None = None
    watching: bool = Field(False, description="Whether the server keeps the collection in sync with this folder")
    indexed_total: int | None = Field(None, description="Images in the collection after the run (when done)")
    added: int | None = None
    updated: int | None = None
    moved: int | None = None
    unchanged: int | None = None
    removed: int | None = None
    failed: int | None = None
    failures: list[Failure] | None = None
    embedded: int | None = None
    skipped_raw_with_sibling: int | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    ocr: str | None = None
    text_to_read: int | None = None
    text_read: int | None = None
    text_first_pass_only: int | None = None
    text_found: int | None = None
    text_seconds: float | None = None
    text_images_per_second: float | None = None
    text_note: str | None = None
    text_problems: list[Failure] | None = None


class ClusterIndexReport(BaseModel):
    """`clipsearch cluster index`: a source embedded on a Ray cluster into Parquet shards."""

    collection: str
    source: PathText
    cluster: str = Field(
        description="Where it ran: 'local' (a Ray instance started for the run), the address, or 'not needed'"
    )
    nodes: int = Field(description="Nodes of the cluster that had CPUs or GPUs (0: nothing to embed, none asked)")
    listed: int = Field(description="Images the listing found")
    unchanged: int = Field(description="Images whose path, size and mtime already sat in a finished shard")
    embedded: int = Field(description="Images that went through the model in this run")
    failed: int
    failures: list[Failure] = Field(description="The first 50 objects skipped, with why")
    shards_written: int
    shards_reused: int = Field(description="Finished shards of earlier runs still holding listed images")
    seconds: float
    images_per_second: float = Field(description="Embedded images per second of the run's Ray stage")
    index_type: str | None = Field(
        None, description="The archive's search index ('ivfpq': IVF-PQ on disk, reranked); None: nothing to search"
    )
    index_built: bool = Field(False, description="Whether this run (re)built it; False: it already held the listing")
    index_vectors: int = 0
    index_nprobe: int | None = Field(None, description="Lists probed per query, calibrated to recall@10 >= 0.9")
    index_recall_at_10: float | None = Field(None, description="Measured against exact search over the shards")
    index_seconds: float = 0.0
