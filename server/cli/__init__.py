"""The `clipsearch` command: `main` (parse, dispatch, exit codes), `parser` (options and bounds), `commands` (one
function per subcommand, found through `COMMANDS`), `terminal` (download and progress display, Ctrl-C) and `render`
(plain-text tables). Imports `service` and the bottom layer."""
