"""The `clipsearch` subcommands, one function each, found by name in `COMMANDS`. Each imports what it needs when it
runs, so the parser and `--help` load none of it, and makes its service with the factory `main` was given."""

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import IndexingCancelled
from server.limits import DEFAULT_COLLECTION

if TYPE_CHECKING:
    from pydantic import BaseModel

    from server.config import Settings
    from server.models.files import DownloadTracker
    from server.search.composition import Extras
    from server.search.filters import ResultOrder, SearchFilter
    from server.service import ClipSearch

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class ServiceFactory(Protocol):
    """Makes the service a command runs on from the settings (and, for some commands, how a download is shown and
    how messages name the program); `real_service` by default, a fake in tests."""

    def __call__(
        self, settings: "Settings", *, downloads: "DownloadTracker | None" = None, speaker: str = ...
    ) -> "ClipSearch": ...


def real_service(settings: "Settings", **options: Any) -> "ClipSearch":
    """`server.service.ClipSearch`, imported only once a command needs it."""
    from server.service import ClipSearch

    return ClipSearch(settings, **options)


Command = Callable[[argparse.Namespace, "Settings", ServiceFactory], int]


def _service(settings: "Settings", make_service: ServiceFactory) -> "ClipSearch":
    """The service of a command run in a terminal: a first run's model download is shown on stderr."""
    from server.cli.terminal import DownloadDisplay
    from server.models.files import DownloadTracker

    return make_service(settings, downloads=DownloadTracker([DownloadDisplay()]))


def _show(result: "BaseModel", as_json: bool, flush: bool = False) -> None:
    from server.cli.render import render

    print(result.model_dump_json(indent=2) if as_json else render(result), flush=flush)


def index_folder(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch index`: with a progress bar; Ctrl-C stops after the current batch, keeping what was committed."""
    from server.cli.render import render
    from server.cli.terminal import ProgressBar, StopOnInterrupt

    service = _service(settings, make_service)
    with ProgressBar(enabled=not args.json) as bar, StopOnInterrupt() as stop:
        try:
            model = settings.model if args.model else None  # explicit: refused for a collection of another model
            result = service.index_folder(
                args.folder,
                args.collection,
                args.recursive,
                args.remove_missing,
                progress=bar,
                index_type=args.index_type,
                cancel=stop,
                model=model,
                precision=args.precision,
                ocr=args.ocr,
            )
        except IndexingCancelled as exc:
            bar.close()
            print(render(exc.report), file=sys.stderr)
            print("clipsearch: stopped; everything committed stays, run it again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.watch:
        _show(result, args.json, flush=True)
        return _watch_until_interrupted(service, settings, Path(result.folder), args)
    _show(result, args.json)
    return 0


def _watch_until_interrupted(
    service: "ClipSearch", settings: "Settings", folder: Path, args: argparse.Namespace
) -> int:
    """`index --watch`: the same watcher and jobs as the server's, in the foreground; each run's summary printed."""
    from server.cli.render import render
    from server.indexing.background import Background
    from server.indexing.jobs import ACTIVE

    background = Background.over(settings.index_dir, lambda: service)
    jobs, watcher = background.jobs, background.watcher
    watcher.watch(folder, args.collection, args.recursive, args.remove_missing)
    print(f"clipsearch: watching {folder}; changes are indexed as they settle. Ctrl-C to stop.", file=sys.stderr)
    reported = {job.job_id for job in jobs.recent().jobs}  # earlier runs were reported by whoever made them
    try:
        while True:
            jobs.wait(None, 1.0)
            for job in reversed(jobs.recent().jobs):
                if job.state not in ACTIVE and job.job_id not in reported:
                    reported.add(job.job_id)
                    if job.report is not None and job.started is not None:
                        print(job.report.model_dump_json() if args.json else render(job.report), flush=True)
            for watched in watcher.watched():
                if watched.state == "stopped":
                    print(f"clipsearch: error: stopped watching {watched.folder}: {watched.note}", file=sys.stderr)
                    return EXIT_ERROR
    except KeyboardInterrupt:
        background.close()
        print("clipsearch: stopped watching", file=sys.stderr)
        return 0


def _search_options(service: "ClipSearch", args: argparse.Namespace) -> tuple["SearchFilter", "ResultOrder", "Extras"]:
    """The filter, order and --and/--not/--like/--unlike terms shared by `search` and `similar`."""
    from server.search.composition import Extras
    from server.search.filters import ResultOrder

    filters = service.make_filter(
        args.collection,
        args.folder,
        args.after,
        args.before,
        args.near,
        args.radius_km,
        args.camera,
        text=args.text,
        media=args.media,
    )
    order = ResultOrder(args.min_score, args.sort, args.offset, args.diverse)
    flags = Extras(*(tuple(getattr(args, n)) for n in ("and_texts", "not_texts", "and_images", "not_images")))
    return filters, order, flags


def search(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch search`: by text, composed from rclip's infix form and the flags."""
    from dataclasses import astuple

    from server.search.composition import Extras, split_infix

    service = _service(settings, make_service)
    filters, order, flags = _search_options(service, args)
    text, infix = split_infix(args.query)  # rclip's "horse + stripes - grass"
    extras = Extras(*(a + b for a, b in zip(astuple(infix), astuple(flags), strict=True)))
    _show(service.search_text(text, args.k, args.collection, filters, order, extras), args.json)
    return 0


def similar(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch similar`: by example image."""
    service = _service(settings, make_service)
    filters, order, flags = _search_options(service, args)
    result = service.search_image(
        args.image, args.k, args.collection, filters=filters, order=order, extras=flags, time_seconds=args.time_seconds
    )
    _show(result, args.json)
    return 0


def text_in_images(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch text`: photos ranked by how well the text read in them matches the query."""
    from server.search.filters import ResultOrder

    service = _service(settings, make_service)
    filters = service.make_filter(
        args.collection, args.folder, args.after, args.before, args.near, args.radius_km, args.camera
    )
    order = ResultOrder(args.min_score, args.sort, args.offset)
    _show(service.search_text_in_images(args.query, args.k, args.collection, filters, order), args.json)
    return 0


def evaluate(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch eval`: one collection's retrieval quality, or several compared side by side."""
    service = _service(settings, make_service)
    plots_dir = args.plots.expanduser().absolute() if args.plots else None
    ground_truth = args.ground_truth if args.ground_truth == "folders" else str(Path(args.ground_truth).expanduser())
    names = args.collection or [DEFAULT_COLLECTION]
    plots = plots_dir is not None
    if len(names) > 1:
        result = service.compare(names, ground_truth, args.ks, args.template, report_dir=plots_dir, plots=plots)
    else:
        result = service.evaluate(names[0], ground_truth, args.ks, args.template, report_dir=plots_dir, plots=plots)
    _show(result, args.json)
    return 0


def duplicates(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch duplicates`: groups of copies, or with --print0 only the paths of those not kept."""
    from server.cli.terminal import ProgressBar
    from server.library.duplicates import DuplicateQuery, non_keepers

    service = _service(settings, make_service)
    folder = Path(args.folder) if args.folder else None
    query = DuplicateQuery(folder, args.threshold, args.max_bits, args.exact_only, args.max_groups, args.offset)
    with ProgressBar(enabled=not (args.json or args.print0)) as bar:
        report = service.find_duplicates(
            args.collection, query, progress=lambda done, total: bar.count(done, total, "comparing")
        )
    if args.print0:
        sys.stdout.buffer.write(b"".join(os.fsencode(path) + b"\0" for path in non_keepers(report)))
        return 0
    _show(report, args.json)
    return 0


def collections(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch collections`."""
    _show(_service(settings, make_service).list_collections(), args.json)
    return 0


def models(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch models`: the recommended models; loads none of them."""
    from server.models.recommended import list_models

    _show(list_models(settings.model), args.json)
    return 0


def jobs(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch jobs`: the recent indexing jobs' records, read from disk; makes no service unless one must run."""
    from server.indexing.background import Background

    listing = Background.over(settings.index_dir, lambda: make_service(settings)).jobs.recent()
    _show(listing, args.json)
    return 0


def serve(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch serve`: the MCP server on stdio, or over HTTP with --http. The handshake waits for nothing: the
    service is made on first use, and jobs, watches and the model start up in a thread."""
    from server.indexing.background import Background
    from server.mcp_server.server import build_server
    from server.mcp_server.support import lazy
    from server.models.files import DownloadTracker, LoggingListener
    from server.paths import PathGuard

    # A first run's download is logged to stderr (the client's log), whatever the verbosity.
    logging.getLogger("server.models.files").setLevel(logging.INFO)
    downloads = DownloadTracker([LoggingListener()])
    service = lazy(lambda: make_service(settings, downloads=downloads, speaker="this server"))
    background = Background.over(settings.index_dir, service)
    # Over HTTP a client's declared roots name its own disk, never the server's: only --root counts.
    server = build_server(service, settings.roots, downloads, background, client_roots=args.http is None)

    def start_up() -> None:
        # Jobs a stopped server left running go on, and watched folders are watched (under the configured roots
        # only); then the model loads, so the first search does not wait for it. The handshake waits for none of it.
        background.start_up(PathGuard(settings.roots), args.resume, args.watch)
        service().warm_up()

    if args.http is not None:
        return _serve_http(args, settings, server, start_up)
    threading.Thread(target=start_up, name="clipsearch-start-up", daemon=True).start()
    server.run("stdio")
    return 0


def _serve_http(args: argparse.Namespace, settings: "Settings", server: Any, start_up: Callable[[], None]) -> int:
    """`serve --http`: one process for every client (one model, one job manager, one set of watches), until
    Ctrl-C or SIGTERM; stdout gets the URL and the lines to connect Claude Code and VS Code."""
    from server.mcp_server.http_transport import HttpOptions, parse_listen, serve_http
    from server.tokens import TokenStore

    host, port = parse_listen(args.http)
    options = HttpOptions(
        host=host,
        port=port,
        allowed_hosts=tuple(args.allowed_host),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        calls_per_token=args.calls_per_token,
        log_queries=args.log_queries,
    )
    if not settings.roots:
        print("clipsearch: no --root: searches work, but no folder can be indexed or read over HTTP", file=sys.stderr)
    started = lambda: threading.Thread(target=start_up, name="clipsearch-start-up", daemon=True).start()  # noqa: E731
    say = lambda line: print(line, flush=True)  # noqa: E731
    serve_http(server, options, TokenStore(settings.index_dir), say, started, args.access_log)
    return 0


def token(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch token add|list|revoke`: the HTTP server's tokens, in the index directory (hashes only)."""
    from server.tokens import TokenStore

    store = TokenStore(settings.index_dir)
    if args.token_action == "add":
        secret = store.add(args.name, args.read_only)
        rights = "read-only" if args.read_only else "read and write"
        print(f"clipsearch: token '{args.name}' ({rights}); shown this once, only its hash is kept:", file=sys.stderr)
        print(secret, flush=True)
    elif args.token_action == "revoke":
        store.revoke(args.name)
        print(f"clipsearch: token '{args.name}' revoked; a running server refuses it from its next request")
    else:
        entries = store.entries()
        if args.json:
            import json

            listed = [{"name": e.name, "read_only": e.read_only, "created": e.created} for e in entries]
            print(json.dumps({"tokens": listed}, indent=2))
        elif not entries:
            print("No tokens. Make one with 'clipsearch token add NAME'.")
        else:
            for e in entries:
                print(f"{e.name:<24} {'read-only' if e.read_only else 'read-write':<10} {e.created}")
    return 0


def cluster(args: argparse.Namespace, settings: "Settings", make_service: ServiceFactory) -> int:
    """`clipsearch cluster index`: a folder or an S3 prefix embedded on a Ray cluster into an archive's Parquet
    shards."""
    service = make_service(settings)
    s3 = {"s3_endpoint": args.s3_endpoint, "s3_region": args.s3_region, "s3_anonymous": args.s3_anonymous}
    report = service.cluster_index(args.source, args.collection, args.address, cpu_only=args.cpu_only, **s3)
    _show(report, args.json)
    return 0


COMMANDS: dict[str, Command] = {
    "index": index_folder,
    "search": search,
    "similar": similar,
    "text": text_in_images,
    "eval": evaluate,
    "duplicates": duplicates,
    "collections": collections,
    "models": models,
    "jobs": jobs,
    "serve": serve,
    "token": token,
    "cluster": cluster,
}
