"""The `clipsearch` command line: every subcommand, option and default, bounds and choices from server/limits.py.

Imports nothing heavy, so `clipsearch --help` answers at once; each option's `dest` is the MCP parameter's name."""

import argparse
from pathlib import Path

from server.limits import (
    DEFAULT_COLLECTION,
    DEFAULT_K,
    DEFAULT_KS,
    DEFAULT_MAX_GROUPS,
    DEFAULT_MIN_TEXT_SCORE,
    DEFAULT_NEAR_BITS,
    DEFAULT_TEMPLATE,
    DEFAULT_THRESHOLD,
    ENGINES,
    GROUP_OFFSET,
    GROUPS,
    INDEX_TYPES,
    MAX_BITS,
    MAX_COMPARED,
    MAX_TEXT_FILTER_CHARS,
    MEDIA,
    MIN_COMPARED,
    MIN_SCORE,
    OCR_POLICIES,
    OFFSET,
    PRECISIONS,
    RADIUS_KM,
    SORTS,
    TEXT_SCORE,
    THRESHOLD,
    TIME_SECONDS,
    TOP_K,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `clipsearch`; `args.command` names the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        help="Model for new collections: hub id or local folder (env CLIPSEARCH_MODEL; see 'clipsearch models'); "
        "a collection always searches with the model it was built with",
    )
    common.add_argument("--index-dir", help="Where collections live (env CLIPSEARCH_INDEX_DIR)")
    common.add_argument(
        "--engine",
        choices=ENGINES,
        help="What runs the model: auto (ONNX Runtime on CPU, torch on CUDA), onnx or torch (env CLIPSEARCH_ENGINE)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="Log progress details to stderr")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="Print the structured result as JSON")
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--collection", "-c", default=DEFAULT_COLLECTION, help="Collection name (default: %(default)s)")
    filtered = argparse.ArgumentParser(add_help=False)  # every search's: how many, which images, in what order
    filtered.add_argument("-k", type=TOP_K.arg(int), default=DEFAULT_K, help="Number of results (default: %(default)s)")
    filtered.add_argument("--folder", help="Only images under this folder")
    filtered.add_argument("--after", help="Only photos taken on/after this date or datetime (ISO 8601)")
    filtered.add_argument("--before", help="Only photos taken before this datetime, or on/before this date")
    filtered.add_argument("--camera", help="Only photos whose camera make/model contains this (any case)")
    filtered.add_argument("--near", metavar="LAT,LON", type=_place, help="Only photos taken near this place")
    filtered.add_argument("--radius-km", type=RADIUS_KM.arg(float), help="Distance around --near, in kilometres")
    filtered.add_argument("--sort", choices=SORTS, default="score", help="Order of the k most relevant")
    filtered.add_argument("--offset", type=OFFSET.arg(int), default=0, help="Skip this many results (paging)")
    topk = argparse.ArgumentParser(add_help=False, parents=[filtered])  # the searches by meaning
    topk.add_argument(
        "--text",
        help=f"Only photos whose recognised text holds every one of these words, any case, parts of words too "
        f"(at most {MAX_TEXT_FILTER_CHARS} characters)",
    )
    topk.add_argument(
        "--media", choices=MEDIA, default="all", help="Photos, videos (each once, at its best moment) or all"
    )
    topk.add_argument("--min-score", type=MIN_SCORE.arg(float), help="Drop results under this cosine similarity")
    topk.add_argument("--diverse", action="store_true", help="Fold near-duplicates into the best of them")
    weight = " (repeatable; a weight prefix like '2:' or '0.5:' scales it)"
    for flag, dest, what in (
        ("--and", "and_texts", "Also like this text"),
        ("--not", "not_texts", "But not like this text"),
        ("--like", "and_images", "Also like this image"),
        ("--unlike", "not_images", "But not like this image"),
    ):
        topk.add_argument(flag, dest=dest, action="append", default=[], help=what + weight)

    parser = argparse.ArgumentParser(prog="clipsearch", description="Search your own images by text or by example.")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", parents=[common, output, named], help="Index a folder's images")
    index.add_argument("folder")
    index.add_argument("--no-recursive", dest="recursive", action="store_false", help="Skip subfolders")
    index.add_argument(
        "--keep-missing", dest="remove_missing", action="store_false", help="Keep entries for files that vanished"
    )
    index.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        help="Search index: flat (exact), ivf (approximate), auto (ivf from 150,000 images); default: keep",
    )
    index.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="Vectors of a new collection: fp32 (default) or int8 (quantised, about 2x faster on a CPU); "
        "a collection keeps its own",
    )
    index.add_argument(
        "--ocr",
        choices=OCR_POLICIES,
        help="Text in photos, read after embedding: auto (images a quick first pass finds text in; the default), "
        "on (every image), off; default: keep the collection's",
    )
    index.add_argument(
        "--watch", action="store_true", help="After indexing, keep the collection in sync with the folder until Ctrl-C"
    )
    search = commands.add_parser("search", parents=[common, output, named, topk], help="Find images by description")
    search.add_argument(
        "query", help="What to find; rclip's 'horse + stripes - grass' form composes texts (and images)"
    )
    similar = commands.add_parser("similar", parents=[common, output, named, topk], help="Find images like an image")
    similar.add_argument("image", help="An image, or a video (with --at, one of its moments)")
    similar.add_argument(
        "--at",
        dest="time_seconds",
        metavar="SECONDS",
        type=TIME_SECONDS.arg(float),
        help="With a video: the moment to search from, in seconds from its start",
    )
    text = commands.add_parser(
        "text",
        parents=[common, output, named, filtered],
        help="Find photos by the text read in them (signs, screenshots, receipts); OCR slips tolerated",
    )
    text.add_argument("query", help="Words to find in the photos' text, as they would appear (e.g. 'wifi password')")
    text.add_argument(
        "--min-score",
        type=TEXT_SCORE.arg(float),
        default=DEFAULT_MIN_TEXT_SCORE,
        help="Drop results whose text matches less: 1 the exact words, 0.8 every word apart (default: %(default)s)",
    )
    evaluate = commands.add_parser("eval", parents=[common, output], help="Measure retrieval quality")
    evaluate.add_argument(
        "--collection",
        "-c",
        action="append",
        help=f"Collection (default: {DEFAULT_COLLECTION}); give {MIN_COMPARED}-{MAX_COMPARED} (-c a -c b) to compare "
        "their models side by side",
    )
    evaluate.add_argument(
        "--ground-truth", default="folders", help="'folders' (labels are subfolder names) or a ground-truth JSON file"
    )
    evaluate.add_argument(
        "--ks", type=TOP_K.arg(int), nargs="+", default=list(DEFAULT_KS), help="Cut-offs k for the @k metrics"
    )
    evaluate.add_argument("--template", default=DEFAULT_TEMPLATE, help="Text query per label (default: %(default)r)")
    evaluate.add_argument(
        "--plots", metavar="DIR", type=Path, help="Write report.json, report.md, score histogram and t-SNE map to DIR"
    )
    duplicates = commands.add_parser(
        "duplicates", parents=[common, output, named], help="Find exact and near-duplicate images (changes nothing)"
    )
    duplicates.add_argument("--folder", help="Only images under this folder")
    duplicates.add_argument(
        "--threshold",
        type=THRESHOLD.arg(float),
        default=DEFAULT_THRESHOLD,
        help="Cosine from which images may be near twins",
    )
    duplicates.add_argument(
        "--max-bits",
        type=MAX_BITS.arg(int),
        default=DEFAULT_NEAR_BITS,
        help=f"Perceptual hash bits (of {MAX_BITS.most}) a near pair may differ by",
    )
    duplicates.add_argument("--exact-only", action="store_true", help="Only byte-identical copies")
    duplicates.add_argument(
        "--max-groups",
        type=GROUPS.arg(int),
        default=DEFAULT_MAX_GROUPS,
        help=f"Groups to list ({GROUPS.least}-{GROUPS.most})",
    )
    duplicates.add_argument("--offset", type=GROUP_OFFSET.arg(int), default=0, help="Skip this many groups")
    duplicates.add_argument(
        "--print0", action="store_true", help="Print only the non-keepers' paths, NUL-separated (for xargs -0)"
    )
    commands.add_parser("collections", parents=[common, output], help="List collections")
    commands.add_parser(
        "models", parents=[common, output], help="List the recommended models, their published quality and cost"
    )
    commands.add_parser("jobs", parents=[common, output], help="List the MCP server's recent indexing jobs")
    serve = commands.add_parser(
        "serve", parents=[common], help="Run the MCP server on stdio, or over HTTP for several assistants (--http)"
    )
    serve.add_argument(
        "--root", action="append", default=[], help="Folder the server may read (repeatable; env CLIPSEARCH_ROOTS)"
    )
    serve.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="Do not resume indexing jobs that were interrupted when a server stopped",
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        help="Keep every folder indexed into any collection (under --root) in sync while the server runs",
    )
    _http_options(serve)
    tokens = commands.add_parser("token", help="Manage the HTTP server's bearer tokens (in the index directory)")
    token_actions = tokens.add_subparsers(dest="token_action", required=True)
    add = token_actions.add_parser(
        "add", parents=[common], help="Make a token and print it, once (only its hash is kept)"
    )
    add.add_argument("name", help="Who holds it (letters, digits, . _ -), e.g. 'laptop' or 'alice-claude'")
    add.add_argument("--read-only", action="store_true", help="May search, view, list and evaluate; never index")
    token_actions.add_parser(
        "list", parents=[common, output], help="List the tokens' names and rights (never the tokens)"
    )
    revoke = token_actions.add_parser(
        "revoke", parents=[common], help="Revoke a token; a running server refuses it at once"
    )
    revoke.add_argument("name")
    cluster = commands.add_parser("cluster", help="Embed an archive on a Ray cluster (pip install clipsearch[cluster])")
    cluster_actions = cluster.add_subparsers(dest="cluster_action", required=True)
    cluster_index = cluster_actions.add_parser(
        "index",
        parents=[common, output, named],
        help="Embed a folder every node sees into Parquet shards (only what no finished shard holds), then index "
        "them on disk (IVF-PQ) for serve and search",
    )
    cluster_index.add_argument(
        "source",
        help="A folder on storage every node of the cluster sees, or s3://bucket/prefix (credentials from "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    )
    cluster_index.add_argument(
        "--address", help="The Ray cluster (e.g. 10.0.0.5:6379 or ray://head:10001); default: a local Ray instance"
    )
    cluster_index.add_argument(
        "--cpu-only",
        action="store_true",
        help="Embed on CPUs (ONNX Runtime) even where the cluster has GPUs (default: one embedder per GPU, torch)",
    )
    s3 = cluster_index.add_argument_group("an s3:// source")
    s3.add_argument(
        "--s3-endpoint", metavar="URL", help="An S3-compatible store (e.g. http://minio:9000); default: AWS S3"
    )
    s3.add_argument("--s3-region", help="The bucket's region (default: AWS_REGION, else found for AWS)")
    s3.add_argument("--s3-anonymous", action="store_true", help="Send no credentials (a public bucket)")
    return parser


def _http_options(serve: argparse.ArgumentParser) -> None:
    """`serve --http` and what goes with it (server/mcp_server/http_transport.py)."""
    http = serve.add_argument_group("over HTTP")
    http.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        nargs="?",
        const="127.0.0.1:8765",
        help="Serve MCP over Streamable HTTP at http://HOST:PORT/mcp for every client at once (default "
        "127.0.0.1:8765); requests need a token ('clipsearch token add'); only --root folders are readable",
    )
    http.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="A host name clients use to reach the server (Host/Origin checks; repeatable), e.g. nas.local",
    )
    http.add_argument("--tls-cert", type=Path, help="Serve HTTPS with this certificate (PEM; with --tls-key)")
    http.add_argument("--tls-key", type=Path, help="The certificate's private key (PEM)")
    http.add_argument("--access-log", type=Path, metavar="FILE", help="Append the access log here (default: stderr)")
    http.add_argument(
        "--log-queries", action="store_true", help="Also log each call's arguments (queries, paths) in the access log"
    )
    http.add_argument(
        "--calls-per-token",
        type=_calls_at_once,
        default=16,
        help="Calls one token may have running at once (default: %(default)s)",
    )


def _calls_at_once(text: str) -> int:
    """1-1000: not a tool parameter, so not a limits.Bound (those are checked against the MCP schemas)."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 1-1000, got {value}")
    return value


def _place(text: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in decimal degrees, got {text!r}") from exc
    return latitude, longitude
