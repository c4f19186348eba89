"""The `clipsearch` command: the same core calls as the MCP tools, with tables for people and --json for scripts.

`main` parses, sets up logging and settings, runs the subcommand from `commands.COMMANDS` and turns errors into
exit codes; the parser lives in `parser.py`, the subcommands in `commands.py`, the terminal display in `terminal.py`."""

import logging
import sys
from collections.abc import Sequence

from server.cli.commands import COMMANDS, EXIT_ERROR, EXIT_INTERRUPTED, ServiceFactory, real_service
from server.cli.parser import build_parser
from server.errors import ClipSearchError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "main"]


def main(argv: Sequence[str] | None = None, make_service: ServiceFactory = real_service) -> int:
    """Run `clipsearch argv`; the exit code. `make_service(settings, **options)` makes the service the command runs
    on (default: `server.service.ClipSearch`), so tests can hand in one over a fake encoder."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from server.config import Settings

    settings = Settings.load(args.model, args.index_dir, getattr(args, "root", None), args.engine)
    try:
        return COMMANDS[args.command](args, settings, make_service)
    except ClipSearchError as exc:
        print(f"clipsearch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("clipsearch: interrupted; the collection keeps its last committed state", file=sys.stderr)
        return EXIT_INTERRUPTED
