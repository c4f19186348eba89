"""The `clipsearch` command: the same core calls as the MCP tools, with tables for people and --json for scripts."""

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from server.indexing.indexer import IndexProgress

from server.cli.render import render
from server.config import PRECISIONS
from server.errors import ClipSearchError, IndexingCancelled
from server.limits import DEFAULT_COLLECTION, DEFAULT_KS, DEFAULT_TEMPLATE
from server.models.files import DownloadPlan, DownloadState, megabytes

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        help="Model for new collections: hub id or local folder (env CLIPSEARCH_MODEL; see 'clipsearch models'); "
        "a collection always searches with the model it was built with",
    )
    common.add_argument("--index-dir", help="Where collections live (env CLIPSEARCH_INDEX_DIR)")
    common.add_argument(
        "--engine",
        choices=("auto", "onnx", "torch"),
        help="What runs the model: auto (ONNX Runtime on CPU, torch on CUDA), onnx or torch (env CLIPSEARCH_ENGINE)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="Log progress details to stderr")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="Print the structured result as JSON")
    named = argparse.ArgumentParser(add_help=False)
    named.add_argument("--collection", "-c", default=DEFAULT_COLLECTION, help="Collection name (default: %(default)s)")
    topk = argparse.ArgumentParser(add_help=False)
    topk.add_argument("-k", type=int, default=10, help="Number of results (default: %(default)s)")
    topk.add_argument("--folder", help="Only images under this folder")
    topk.add_argument("--after", help="Only photos taken on/after this date or datetime (ISO 8601)")
    topk.add_argument("--before", help="Only photos taken before this datetime, or on/before this date")
    topk.add_argument("--camera", help="Only photos whose camera make/model contains this (any case)")
    topk.add_argument("--near", metavar="LAT,LON", type=_place, help="Only photos taken near this place")
    topk.add_argument("--radius-km", type=float, help="Distance around --near, in kilometres")
    topk.add_argument("--min-score", type=float, help="Drop results under this cosine similarity")
    topk.add_argument(
        "--sort", choices=["score", "taken", "taken_asc"], default="score", help="Order of the k most relevant"
    )
    topk.add_argument("--offset", type=int, default=0, help="Skip this many results (paging)")
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
        choices=["auto", "flat", "ivf"],
        help="Search index: flat (exact), ivf (approximate), auto (ivf from 150,000 images); default: keep",
    )
    index.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="Vectors of a new collection: fp32 (default) or int8 (quantised, about 2x faster on a CPU); "
        "a collection keeps its own",
    )
    index.add_argument(
        "--watch", action="store_true", help="After indexing, keep the collection in sync with the folder until Ctrl-C"
    )
    search = commands.add_parser("search", parents=[common, output, named, topk], help="Find images by description")
    search.add_argument("text", help="What to find; rclip's 'horse + stripes - grass' form composes texts (and images)")
    similar = commands.add_parser("similar", parents=[common, output, named, topk], help="Find images like an image")
    similar.add_argument("image")
    evaluate = commands.add_parser("eval", parents=[common, output], help="Measure retrieval quality")
    evaluate.add_argument(
        "--collection",
        "-c",
        action="append",
        help=f"Collection (default: {DEFAULT_COLLECTION}); give 2-5 (-c a -c b) to compare their models side by side",
    )
    evaluate.add_argument(
        "--ground-truth", default="folders", help="'folders' (labels are subfolder names) or a ground-truth JSON file"
    )
    evaluate.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="Cut-offs k for the @k metrics")
    evaluate.add_argument("--template", default=DEFAULT_TEMPLATE, help="Text query per label (default: %(default)r)")
    evaluate.add_argument(
        "--plots", metavar="DIR", type=Path, help="Write report.json, report.md, score histogram and t-SNE map to DIR"
    )
    duplicates = commands.add_parser(
        "duplicates", parents=[common, output, named], help="Find exact and near-duplicate images (changes nothing)"
    )
    duplicates.add_argument("--folder", help="Only images under this folder")
    duplicates.add_argument("--threshold", type=float, default=0.95, help="Cosine from which images may be near twins")
    duplicates.add_argument(
        "--max-bits", type=int, default=20, help="Perceptual hash bits (of 64) a near pair may differ by"
    )
    duplicates.add_argument("--exact-only", action="store_true", help="Only byte-identical copies")
    duplicates.add_argument("--max-groups", type=int, default=100, help="Groups to list (1-1000)")
    duplicates.add_argument("--offset", type=int, default=0, help="Skip this many groups")
    duplicates.add_argument(
        "--print0", action="store_true", help="Print only the non-keepers' paths, NUL-separated (for xargs -0)"
    )
    commands.add_parser("collections", parents=[common, output], help="List collections")
    commands.add_parser(
        "models", parents=[common, output], help="List the recommended models, their published quality and cost"
    )
    commands.add_parser("jobs", parents=[common, output], help="List the MCP server's recent indexing jobs")
    serve = commands.add_parser("serve", parents=[common], help="Run the MCP server on stdio")
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
    return parser


def _place(text: str) -> tuple[float, float]:
    try:
        latitude, longitude = (float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in decimal degrees, got {text!r}") from exc
    return latitude, longitude


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from server.config import Settings

    settings = Settings.load(args.model, args.index_dir, getattr(args, "root", None), args.engine)
    try:
        if args.command == "serve":
            return _serve(settings, args.resume, args.watch)
        return _run_command(args, settings)
    except ClipSearchError as exc:
        print(f"clipsearch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("clipsearch: interrupted; the collection keeps its last committed state", file=sys.stderr)
        return EXIT_INTERRUPTED


def _serve(settings: Any, resume: bool = True, watch: bool = False) -> int:
    from server.indexing.jobs import JobManager
    from server.indexing.watch import FolderWatcher
    from server.mcp_server.server import build_server
    from server.mcp_server.support import lazy
    from server.models.files import DownloadTracker, LoggingListener
    from server.paths import PathGuard

    # A first run's download is logged to stderr (the client's log), whatever the verbosity.
    logging.getLogger("server.models.files").setLevel(logging.INFO)
    downloads = DownloadTracker([LoggingListener()])

    def make_service() -> Any:
        from server.service import ClipSearch

        return ClipSearch(settings, downloads=downloads, speaker="this server")

    service = lazy(make_service)
    jobs = JobManager(settings.index_dir, service)
    watcher = FolderWatcher(jobs, exclude=(settings.index_dir,))
    server = build_server(service, settings.roots, downloads, jobs, watcher)
    guard = PathGuard(settings.roots) if settings.roots else None

    def start_up() -> None:
        # Jobs a stopped server left running go on (under the configured roots only); then the model loads, so
        # the first search does not wait for it. The handshake waits for none of this.
        jobs.recover(guard, resume)
        if watch:
            _watch_recorded_folders(settings.index_dir, jobs, watcher, guard)
        service().warm_up()

    threading.Thread(target=start_up, name="clipsearch-start-up", daemon=True).start()
    server.run("stdio")
    return 0


def _watch_recorded_folders(index_dir: Path, jobs: Any, watcher: Any, guard: Any) -> None:
    """`serve --watch`: every folder indexed into any collection, under the configured roots, is watched, and
    indexed once now for what changed while no server ran."""
    from server.store.collection import CollectionStore, recorded_folders

    log = logging.getLogger("server.indexing.watch")
    if guard is None:
        log.warning("--watch needs --root (or CLIPSEARCH_ROOTS): no folder is watched")
        return
    for name in CollectionStore(index_dir).names():
        for folder in recorded_folders(index_dir / name):
            if folder.is_dir() and guard.allows(folder):
                watcher.watch(folder, name, guard=guard)
                jobs.start(folder, name, guard=guard, again=True)


def _run_command(args: argparse.Namespace, settings: Any) -> int:
    from server.models.files import DownloadTracker
    from server.service import ClipSearch

    if args.command == "models":
        from server.models.recommended import list_models

        models = list_models(settings.model)
        print(models.model_dump_json(indent=2) if args.json else render(models))
        return 0
    if args.command == "jobs":
        from server.indexing.jobs import JobManager

        listing = JobManager(settings.index_dir, lambda: ClipSearch(settings)).recent()
        print(listing.model_dump_json(indent=2) if args.json else render(listing))
        return 0
    service = ClipSearch(settings, downloads=DownloadTracker([_DownloadDisplay()]))
    result: BaseModel
    if args.command == "index":
        with _ProgressBar(enabled=not args.json) as bar, _StopOnInterrupt() as stop:
            try:
                model = settings.model if args.model else None  # explicit: refused for a collection of another model
                result = service.index_folder(
                    args.folder,
                    args.collection,
                    args.recursive,
                    args.remove_missing,
                    None,
                    bar,
                    args.index_type,
                    stop,
                    model,
                    args.precision,
                )
            except IndexingCancelled as exc:
                bar.close()
                print(render(exc.report), file=sys.stderr)
                print("clipsearch: stopped; everything committed stays, run it again to continue", file=sys.stderr)
                return EXIT_INTERRUPTED
        if args.watch:
            print(result.model_dump_json(indent=2) if args.json else render(result), flush=True)
            return _watch_until_interrupted(service, settings, Path(result.folder), args)
    elif args.command in ("search", "similar"):
        from dataclasses import astuple

        from server.search.composition import Extras, split_infix
        from server.search.filters import ResultOrder

        filters = service.make_filter(
            args.collection, args.folder, args.after, args.before, args.near, args.radius_km, args.camera
        )
        order = ResultOrder(args.min_score, args.sort, args.offset, args.diverse)
        flags = Extras(*(tuple(getattr(args, n)) for n in ("and_texts", "not_texts", "and_images", "not_images")))
        if args.command == "search":
            text, infix = split_infix(args.text)  # rclip's "horse + stripes - grass"
            extras = Extras(*(a + b for a, b in zip(astuple(infix), astuple(flags), strict=True)))
            result = service.search_text(text, args.k, args.collection, filters, order, extras)
        else:
            result = service.search_image(args.image, args.k, args.collection, None, filters, order, flags)
    elif args.command == "eval":
        plots_dir = args.plots.expanduser().absolute() if args.plots else None
        ground_truth = (
            args.ground_truth if args.ground_truth == "folders" else str(Path(args.ground_truth).expanduser())
        )
        names = args.collection or [DEFAULT_COLLECTION]
        if len(names) > 1:
            result = service.compare(
                names, ground_truth, args.ks, args.template, None, plots_dir, plots_dir is not None
            )
        else:
            result = service.evaluate(
                names[0], ground_truth, args.ks, args.template, None, plots_dir, plots_dir is not None
            )
    elif args.command == "duplicates":
        from server.library.duplicates import DuplicateQuery, non_keepers

        folder = Path(args.folder) if args.folder else None
        query = DuplicateQuery(folder, args.threshold, args.max_bits, args.exact_only, args.max_groups, args.offset)
        report = service.find_duplicates(args.collection, query)
        if args.print0:
            sys.stdout.buffer.write(b"".join(os.fsencode(path) + b"\0" for path in non_keepers(report)))
            return 0
        result = report
    else:
        result = service.list_collections()
    print(result.model_dump_json(indent=2) if args.json else render(result))
    return 0


def _watch_until_interrupted(service: Any, settings: Any, folder: Path, args: argparse.Namespace) -> int:
    """`index --watch`: the same watcher and jobs as the server's, in the foreground; each run's summary printed."""
    from server.indexing.jobs import JobManager
    from server.indexing.watch import FolderWatcher

    jobs = JobManager(settings.index_dir, lambda: service)
    watcher = FolderWatcher(jobs, exclude=(settings.index_dir,))
    watcher.watch(folder, args.collection, args.recursive, args.remove_missing)
    print(f"clipsearch: watching {folder}; changes are indexed as they settle. Ctrl-C to stop.", file=sys.stderr)
    reported = {job.job_id for job in jobs.recent().jobs}  # earlier runs were reported by whoever made them
    try:
        while True:
            jobs.wait(None, 1.0)
            for job in reversed(jobs.recent().jobs):
                if job.state not in ("queued", "running") and job.job_id not in reported:
                    reported.add(job.job_id)
                    if job.report is not None and job.started is not None:
                        print(job.report.model_dump_json() if args.json else render(job.report), flush=True)
            for watched in watcher.watched():
                if watched.state == "stopped":
                    print(f"clipsearch: error: stopped watching {watched.folder}: {watched.note}", file=sys.stderr)
                    return EXIT_ERROR
    except KeyboardInterrupt:
        watcher.close()
        for job in jobs.recent().jobs:
            if job.state in ("queued", "running"):
                jobs.cancel(job.job_id)
        print("clipsearch: stopped watching", file=sys.stderr)
        return 0


class _DownloadDisplay:
    """A first run's model download on stderr: one line saying what and how big, then a bar on a terminal or a
    line per tenth elsewhere (logs, pipes)."""

    def __init__(self) -> None:
        self.terminal = sys.stderr.isatty()
        self._bar: Any = None
        self._tenths = 0

    def started(self, plan: DownloadPlan) -> None:
        print(f"clipsearch: {plan.describe()}.", file=sys.stderr, flush=True)
        self._tenths = 0
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="model"
            )

    def advanced(self, state: DownloadState) -> None:
        if self._bar is not None:
            self._bar.update(state.done_bytes - self._bar.n)
            return
        tenths = state.done_bytes * 10 // max(state.total_bytes, 1)
        if tenths > self._tenths:
            self._tenths = tenths
            print(f"clipsearch: {state.describe()}", file=sys.stderr, flush=True)

    def ended(self, state: DownloadState, ok: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if ok:
            print(f"clipsearch: model downloaded ({megabytes(state.total_bytes)} MB).", file=sys.stderr, flush=True)


class _ProgressBar:
    """tqdm on stderr, fed by the indexer's progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None

    def __enter__(self) -> "_ProgressBar":
        return self

    def __call__(self, progress: "IndexProgress") -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=progress.to_process, unit="img", file=sys.stderr, desc="indexing")
        self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StopOnInterrupt(threading.Event):
    """Ctrl-C during indexing: the first asks the run to stop after its current batch (and commit it); a second
    interrupts at once (the uncommitted batch is lost, the collection stays consistent)."""

    def __enter__(self) -> "_StopOnInterrupt":
        import signal

        self._previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.is_set():
            raise KeyboardInterrupt
        print("\nclipsearch: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)
        self.set()

    def __exit__(self, *exc: object) -> None:
        import signal

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
