"""The package's layers, read from the source: each wing imports only wings below it, nothing imports in a circle,
the core never imports the MCP SDK, and the things done one way stay done one way."""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parent.parent / "server"
BOTTOM = ("errors", "config", "limits", "results", "paths", "atomic_files", "tokens")
WINGS = ("images", "models", "encoders", "store", "library", "search", "indexing", "evaluation")
ADAPTERS = ("mcp_server", "cli")  # the CLI may start the MCP server; never the other way round
ADAPTER_FACING = {  # what the adapters may take from the wings: value types and small services, never the machinery
    "server.indexing.background",  # Background: jobs and the watcher
    "server.indexing.jobs",  # job states
    "server.search.composition",  # Extras, the infix form
    "server.search.filters",  # SearchFilter, ResultOrder
    "server.library.duplicates",  # DuplicateQuery, the non-keepers of a report
    "server.models.files",  # DownloadTracker and what it reports, a client's model request
    "server.models.recommended",  # the recommended models
    "server.evaluation.report",  # the figures of a report as table rows
}


def rank(module: str) -> int:
    """0 for the bottom, then each wing in order, then the service, then the adapters."""
    part = module.split(".")[1] if module.count(".") else ""
    if part in BOTTOM or module in ("server", "server.__main__"):
        return 0 if part in BOTTOM else len(WINGS) + 3
    if part in WINGS:
        return 1 + WINGS.index(part)
    if part == "service":
        return len(WINGS) + 1
    return len(WINGS) + 2 + ADAPTERS.index(part)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SERVER.rglob("*.py")):
        parts = path.relative_to(SERVER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, *, type_checking: bool = True) -> Iterator[str]:
    """Every module of ours that `path` imports, at the top or inside functions (and under TYPE_CHECKING unless
    told otherwise)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "server":
                yield from (f"server.{alias.name}" for alias in node.names)
            elif node.module.startswith("server."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("server."))


def owner(imported: str, known: dict[str, Path]) -> str:
    """The module an import names (`server.store.collection.Collection` is not a module; its owner is)."""
    while imported not in known and "." in imported:
        imported = imported.rsplit(".", 1)[0]
    return imported


def test_the_top_of_server_holds_about_a_dozen_modules() -> None:
    top = sorted(p.name for p in SERVER.glob("*.py"))
    assert len(top) <= 12, top


def test_no_module_imports_a_layer_above_its_own() -> None:
    known = modules()
    upward = [
        f"{name} -> {target}"
        for name, path in known.items()
        for target in (owner(i, known) for i in imports(path))
        if rank(target) > rank(name)
    ]
    assert upward == []


def test_no_wing_and_no_bottom_module_imports_an_adapter_or_the_mcp_sdk() -> None:
    offenders = []
    for name, path in modules().items():
        if rank(name) >= len(WINGS) + 2:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            named = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            offenders += [f"{name} imports {n}" for n in named if n == "mcp" or n.startswith("mcp.")]
    assert offenders == []


def test_the_adapters_reach_the_core_through_the_service_and_a_few_value_types() -> None:
    known = modules()
    reached = {
        f"{name} -> {target}"
        for name, path in known.items()
        if rank(name) >= len(WINGS) + 2
        for target in (owner(i, known) for i in imports(path, type_checking=False))
        if 1 <= rank(target) <= len(WINGS) and target not in ADAPTER_FACING
    }
    assert reached == set()


def test_nothing_imports_in_a_circle() -> None:
    known = modules()
    graph = {
        name: {owner(i, known) for i in imports(path, type_checking=False)} - {name} for name, path in known.items()
    }
    # A package's __init__ is imported by its modules' imports, but ours import nothing, so edges are the imports.
    circles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_each_wing_says_what_it_offers() -> None:
    for wing in (*WINGS, *ADAPTERS):
        init = SERVER / wing / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"server/{wing}/__init__.py has no docstring"
        listed = set(re.findall(r"`([a-z_]+)`", doc))
        files = {p.stem for p in (SERVER / wing).glob("*.py")} - {"__init__"}
        assert files <= listed, f"server/{wing}: {sorted(files - listed)} not named in its docstring"


@pytest.mark.parametrize(
    "pattern, why",
    [
        (r"PathGuard \| None", "a guard is always given; PathGuard.unconfined() where nothing is confined"),
        (r"if guard else", "a guard is always given; PathGuard.unconfined() where nothing is confined"),
        (r"os\.replace\(", "atomic writes go through atomic_files.write_atomically"),
        (r"\._apply_commit\(", "the writer is handed how to apply a commit, it calls no private method"),
    ],
)
def test_things_done_one_way_stay_done_one_way(pattern: str, why: str) -> None:
    hits = [
        f"{path.relative_to(SERVER.parent)}:{number}"
        for path in SERVER.rglob("*.py")
        if path.name != "atomic_files.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(pattern, line)
    ]
    assert hits == [], why
