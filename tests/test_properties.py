"""Property: every tool, called through the MCP client with any mix of valid and hostile arguments, answers with a
result or a readable tool error (never an unexpected exception), and the collections stay consistent and confined
to the allowed folder."""

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp.types as types
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import COLORS, FakeEncoder, mcp_client, save_color
from server.config import Settings
from server.results import CollectionList, EvaluationReport, IndexReport, SearchResponse
from server.service import ClipSearch
from server.store.collection_store import CollectionStore

GOOD, MAYBE, BAD = "good", "maybe", "bad"
# The logger the SDK reports a tool's unexpected (non-ToolError) exception on; ours log theirs under "server".
WATCHED_LOGGERS = ("mcp", "server")
RESULT_MODELS: dict[str, type[BaseModel]] = {
    "search_images_by_text": SearchResponse,
    "search_similar_images": SearchResponse,
    "index_folder": IndexReport,
    "evaluate_retrieval": EvaluationReport,
    "list_collections": CollectionList,
}


class ErrorRecords(logging.Handler):
    """Collects ERROR records from the watched loggers while attached."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()}: {root_cause(r.exc_info[1] if r.exc_info else None)!r}" for r in self.records
        ]


def root_cause(exc: BaseException | None) -> BaseException | None:
    while exc is not None and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@contextmanager
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    loggers = [logging.getLogger(name) for name in WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@dataclass(frozen=True)
class World:
    """A tmp folder: the allowed root with labelled colour images and traps, a private folder outside it, and the
    index directory beside both."""

    base: Path
    root: Path
    private: Path
    index_dir: Path
    images: tuple[Path, ...]

    @property
    def secret(self) -> Path:
        return self.private / "secret.jpg"


def make_world(base: Path) -> World:
    root, private = base / "photos", base / "private"
    images = [
        save_color(root / name / f"{name}_{i}.jpg", COLORS[name])
        for name in ("red", "green", "blue", "yellow")
        for i in range(2)
    ]
    save_color(private / "secret.jpg", COLORS["white"])
    (root / "notes.jpg").write_text("not an image", encoding="utf-8")
    (root / "escape.jpg").symlink_to(private / "secret.jpg")
    (root / "away").symlink_to(private, target_is_directory=True)
    truth = {
        "text_queries": [{"query": "red", "relevant": ["../red/red_0.jpg", "../red/red_1.jpg"]}],
        "image_queries": [{"image": "../green/green_0.jpg", "relevant": ["../green/green_1.jpg"]}],
    }
    (root / "gt").mkdir()
    (root / "gt" / "valid.json").write_text(json.dumps(truth), encoding="utf-8")
    (root / "gt" / "malformed.json").write_text('{"text_queries": [', encoding="utf-8")
    (root / "gt" / "wrong_shape.json").write_text('[1, 2, {"query": 3}]', encoding="utf-8")
    (root / "gt" / "no_queries.json").write_text("{}", encoding="utf-8")
    (root / "gt" / "latin1.json").write_bytes(b'{"text_queries": [{"query": "caf\xe9", "relevant": []}]}')
    (private / "outside.json").write_text(json.dumps(truth), encoding="utf-8")
    return World(base, root, private, base / "index", tuple(images))


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under a folder (links not followed) with its size and modification time."""
    entries = {}
    for path in folder.rglob("*"):
        info = path.lstat()
        entries[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return entries


def valid_name(name: Any) -> bool:
    """The documented collection-name rule: 1-64 letters, digits, '.', '_' or '-', starting alphanumeric, no '..'."""
    return (
        isinstance(name, str)
        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) is not None
        and ".." not in name
    )


def query_kind(query: Any) -> str:
    return GOOD if isinstance(query, str) and 0 < len(query) <= 2000 and query.split() else BAD


# --- strategies: each value comes with GOOD (must work), BAD (must be refused) or MAYBE ------------------------------


def tagged(kind: str, *values: Any) -> st.SearchStrategy[tuple[Any, str]]:
    return st.sampled_from(values).map(lambda v: (v, kind))


def classified(values: st.SearchStrategy[Any], judge: Any) -> st.SearchStrategy[tuple[Any, str]]:
    return values.map(lambda v: (v, judge(v)))


def mixed(
    valid: st.SearchStrategy[tuple[Any, str]], *invalid: st.SearchStrategy[tuple[Any, str]]
) -> st.SearchStrategy[tuple[Any, str]]:
    """Valid values two times in three, so that many calls are valid throughout and must succeed."""
    return st.sampled_from([valid, valid, st.one_of(*invalid)]).flatmap(lambda chosen: chosen)


def top_k() -> st.SearchStrategy[tuple[Any, str]]:
    return mixed(
        st.one_of(st.integers(1, 20), st.integers(1, 1000)).map(lambda k: (k, GOOD)),
        st.integers(-(10**30), 0).map(lambda k: (k, BAD)),
        st.integers(1001, 10**30).map(lambda k: (k, BAD)),
        tagged(BAD, 0, -1, 1001, 2**63, -(2**63), "abc", "", None, 2.5, [3]),
        tagged(MAYBE, "5", 3.0, True),
    )


def queries() -> st.SearchStrategy[tuple[Any, str]]:
    nice = st.one_of(
        st.sampled_from(["red", "a photo of a green thing", "ünïcödé 写真 🖼", "\u200b", "\x00red\x01", "{label}"]),
        st.text(min_size=1, max_size=40),
    )
    nasty = st.one_of(
        st.text(st.characters(categories=["Cc", "Zs", "Zl", "Zp"]), max_size=10),
        st.sampled_from(["", " ", "\t\n\r", "\x1c\x1d\x1e\x1f", "\u3000\u2028"]),
        st.integers(1990, 2010).map(lambda n: "r" * n),
        st.integers(0, 3000).map(lambda n: " " * n + "blue"),
        st.just("red " * 1250),
    )
    return mixed(classified(nice, query_kind), classified(nasty, query_kind), tagged(BAD, 5, None, ["red"]))


def collections(existing_is_good: bool) -> st.SearchStrategy[tuple[Any, str]]:
    """'default' always exists; other well-formed names may or may not (good where the tool creates them)."""
    fresh = GOOD if existing_is_good else MAYBE

    def judge(name: Any) -> str:
        return (GOOD if name == "default" else fresh) if valid_name(name) else BAD

    names = st.one_of(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True),
        st.sampled_from(["x" * 64, "colors", "Default", "CON", "a.b-c_d"]),
    )
    nasty = st.one_of(
        st.text(max_size=20),
        st.sampled_from(["", ".", "..", "a/b", "../x", "a\x00", "a\n", "x" * 65, "ünï", ".hidden", "-x", "a..b", " a"]),
    )
    return mixed(
        st.one_of(tagged(GOOD, "default"), classified(names, judge)), classified(nasty, judge), tagged(BAD, None, 7)
    )


def thumbnails() -> st.SearchStrategy[tuple[Any, str]]:
    return mixed(
        classified(st.integers(0, 10), lambda _: GOOD),
        classified(st.integers(-5, 20), lambda t: GOOD if 0 <= t <= 10 else BAD),
        tagged(BAD, "two", None),
    )


def booleans() -> st.SearchStrategy[tuple[Any, str]]:
    return mixed(
        st.booleans().map(lambda b: (b, GOOD)), tagged(MAYBE, "true", "no", 0, 1), tagged(BAD, "maybe", 2, None)
    )


def outside_text() -> st.SearchStrategy[str]:
    # Relative, or absolute somewhere no root is. '~user' forms are left to their own regression test below.
    return st.text(max_size=30).filter(lambda s: not s.startswith("~"))


def image_paths(world: World) -> st.SearchStrategy[tuple[Any, str]]:
    root = world.root
    return mixed(
        tagged(GOOD, *[str(p) for p in world.images], f"{root}/red/../green/green_1.jpg", f"{root}//blue/./blue_0.jpg"),
        tagged(
            BAD,
            "red/red_0.jpg",
            "",
            "/",
            str(world.secret),
            f"{root}/../private/secret.jpg",
            str(root / "escape.jpg"),
            str(root / "away" / "secret.jpg"),
            str(root),
            str(root / "red"),
            str(root / "missing.jpg"),
            str(root / "notes.jpg"),
            str(root / "gt" / "valid.json"),
            f"{root}/red/\x00.jpg",
            f"{root}/red/red_0.jpg\n",
            "~/x.jpg",
            None,
        ),
        outside_text().map(lambda s: (s, BAD)),
    )


def folders(world: World) -> st.SearchStrategy[tuple[Any, str]]:
    root = world.root
    return mixed(
        tagged(GOOD, str(root), f"{root}/", str(root / "red"), f"{root}/red/../blue", str(root / "gt")),
        tagged(
            BAD,
            "photos",
            "",
            str(world.private),
            f"{root}/..",
            f"{root}/../private",
            str(root / "away"),
            str(root / "missing"),
            str(root / "notes.jpg"),
            str(root / "red" / "red_0.jpg"),
            str(world.index_dir),
            f"{root}/\x00",
            "/",
            None,
        ),
        outside_text().map(lambda s: (s, BAD)),
    )


def index_types() -> st.SearchStrategy[tuple[Any, str]]:
    return mixed(tagged(GOOD, None, "auto", "flat", "ivf"), tagged(BAD, "IVF", "", "hnsw", 3, ["flat"]))


def ground_truths(world: World) -> st.SearchStrategy[tuple[Any, str]]:
    gt = world.root / "gt"
    return mixed(
        tagged(GOOD, "folders", str(gt / "valid.json"), f"{world.root}/red/../gt/valid.json"),
        tagged(
            BAD,
            "labels.json",
            "Folders",
            "",
            str(gt / "missing.json"),
            str(gt / "malformed.json"),
            str(gt / "wrong_shape.json"),
            str(gt / "no_queries.json"),
            str(gt / "latin1.json"),
            str(gt),
            str(world.private / "outside.json"),
            f"{world.root}/../private/outside.json",
            str(world.root / "red" / "red_0.jpg"),
            f"{gt}/\x00.json",
            None,
        ),
        outside_text().filter(lambda s: s != "folders").map(lambda s: (s, BAD)),
    )


def ks() -> st.SearchStrategy[tuple[Any, str]]:
    return mixed(
        st.lists(st.integers(1, 1000), min_size=1, max_size=20).map(lambda v: (v, GOOD)),
        tagged(BAD, [], [0], [-3, 5], [1001], [10**20], [1] * 21, "1,3", None, [[1]], [2.5]),
        tagged(MAYBE, ["3"], [1.0, 5]),
    )


def templates() -> st.SearchStrategy[tuple[Any, str]]:
    plain = st.text(st.characters(exclude_characters="{}"), max_size=40)
    return mixed(
        st.one_of(
            tagged(GOOD, "a photo of a {label}", "{label}", "{label} {label}", "ünï {label} ✓", "{{x}} {label}"),
            plain.map(lambda s: (s + " {label}", GOOD)),
        ),
        tagged(BAD, "no placeholder", "", "{label} {0}", "{label} {x}", "{label}{", "}{label}", "{0}", "{label!r}"),
        tagged(BAD, "{label}" + "x" * 200, 7, None),
    )


def plots() -> st.SearchStrategy[tuple[Any, str]]:
    # Plots cost about a second each (t-SNE), so they are drawn rarely.
    return st.sampled_from([False] * 7 + [True]).map(lambda p: (p, GOOD))


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any]
    expected: str  # GOOD: must succeed; BAD: must be a tool error; MAYBE: either


def judged(tool: str) -> Any:
    def make(drawn: dict[str, tuple[Any, str]]) -> Call:
        kinds = {kind for _, kind in drawn.values()}
        expected = BAD if BAD in kinds else MAYBE if MAYBE in kinds else GOOD
        return Call(tool, {name: value for name, (value, _) in drawn.items()}, expected)

    return make


def plots_need_a_valid_name(drawn: dict[str, tuple[Any, str]]) -> bool:
    # An invalid collection name with plots=True has its own regression test below.
    return not (drawn.get("plots", (False,))[0] and not valid_name(drawn.get("collection", ("default",))[0]))


def calls(world: World) -> st.SearchStrategy[Call]:
    search_options = {"k": top_k(), "collection": collections(existing_is_good=False), "thumbnails": thumbnails()}
    return st.one_of(
        st.fixed_dictionaries(
            {"folder": folders(world)},
            optional={
                "collection": collections(existing_is_good=True),
                "recursive": booleans(),
                "remove_missing": booleans(),
                "index_type": index_types(),
            },
        ).map(judged("index_folder")),
        st.fixed_dictionaries({"query": queries()}, optional=search_options).map(judged("search_images_by_text")),
        st.fixed_dictionaries({"image_path": image_paths(world)}, optional=search_options).map(
            judged("search_similar_images")
        ),
        st.fixed_dictionaries(
            {},
            optional={
                "collection": collections(existing_is_good=False),
                "ground_truth": ground_truths(world),
                "ks": ks(),
                "text_template": templates(),
                "plots": plots(),
            },
        )
        .filter(plots_need_a_valid_name)
        .map(judged("evaluate_retrieval")),
        st.just(Call("list_collections", {}, GOOD)),
        # A required argument left out.
        st.sampled_from(
            [
                Call("index_folder", {"collection": "default"}, BAD),
                Call("search_images_by_text", {"k": 3}, BAD),
                Call("search_similar_images", {"thumbnails": 1}, BAD),
            ]
        ),
    )


# --- checking one answer ----------------------------------------------------------------------------------------------


def inside(path: str | Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def check_answer(service: ClipSearch, world: World, call: Call, result: types.CallToolResult, known: set[str]) -> None:
    text = result.content[0].text if result.content and isinstance(result.content[0], types.TextContent) else ""
    if result.is_error:
        assert call.expected != GOOD, f"a valid call failed: {text}"
        # The SDK's text for an unexpected exception is the bare prefix; a domain error adds its explanation.
        prefix = f"Error executing tool {call.tool}: "
        assert text.startswith(prefix) and text[len(prefix) :].strip(), text
        return
    assert call.expected != BAD, f"an invalid call succeeded: {text}"
    content = result.structured_content
    assert content is not None
    RESULT_MODELS[call.tool].model_validate(content)
    if call.tool in ("search_images_by_text", "search_similar_images"):
        collection = service.collection(content["collection"])
        hits = content["results"]
        assert len(hits) == min(int(call.arguments.get("k", 10)), collection.count())
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        for hit in hits:
            assert inside(hit["path"], world.root) and collection.find_path(Path(hit["path"])) is not None, hit
        if call.tool == "search_images_by_text":
            assert content["query"] == " ".join(call.arguments["query"].split())
        images = [c for c in result.content if isinstance(c, types.ImageContent)]
        assert len(images) == min(call.arguments.get("thumbnails", 0), len(hits))
    elif call.tool == "index_folder":
        known.add(content["collection"])
        assert inside(content["folder"], world.root)
        assert content["indexed_total"] == service.collection(content["collection"]).count()
    elif call.tool == "evaluate_retrieval":
        assert content["images"] == service.collection(content["collection"]).count()
        assert content["ks"] == sorted({int(k) for k in call.arguments.get("ks", [1, 3, 5, 10])})
        if call.arguments.get("plots"):
            assert content["report_dir"] and Path(content["report_dir"]).is_relative_to(world.index_dir)
    else:
        listed = {c["name"]: c["images"] for c in content["collections"]}
        assert set(listed) == known
        assert all(count == service.collection(name).count() for name, count in listed.items())


def check_final_state(world: World, known: set[str], before: dict[str, dict[str, tuple[int, int]]]) -> None:
    """Collections reopen consistent, hold only images inside the root, and nothing was written anywhere else."""
    assert sorted(p.name for p in world.base.iterdir()) == ["index", "photos", "private"]
    assert {p.name for p in world.index_dir.iterdir()} == known
    store = CollectionStore(world.index_dir)
    assert set(store.names()) == known
    for name in known:
        collection = store.open(name, FakeEncoder.model_name)
        try:
            ids, paths, _ = collection.all_vectors()
            assert collection.count() == collection.ntotal == len(ids)
            for path in paths:
                assert path.is_file() and inside(path, world.root) and path.suffix == ".jpg", path
                assert path.name not in ("notes.jpg", "escape.jpg", "secret.jpg"), path
        finally:
            collection.close()
    assert tree(world.root) == before["root"] and tree(world.private) == before["private"]


def test_every_tool_answers_any_arguments_with_a_result_or_a_readable_error(tmp_path: Path):
    world = make_world(tmp_path)
    encoder = FakeEncoder()
    service = ClipSearch(Settings(index_dir=world.index_dir, model=encoder.model_name), encoder=encoder)
    before = {"root": tree(world.root), "private": tree(world.private)}
    known = {"default"}
    with (
        error_records() as errors,
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(mcp_client(service, [world.root])) as client,
    ):
        seeded = portal.call(client.call_tool, "index_folder", {"folder": str(world.root)})
        assert seeded.structured_content["indexed_total"] == len(world.images)
        assert seeded.structured_content["failed"] == 2  # notes.jpg and the symlink leading outside

        @settings(
            max_examples=100,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(calls(world), min_size=1, max_size=3))
        def run_calls(batch: list[Call]) -> None:
            for call in batch:
                note(f"{call.tool}({call.arguments!r}) expected {call.expected}")
                errors.records.clear()
                result = portal.call(client.call_tool, call.tool, call.arguments)
                assert not errors.records, errors.messages()
                check_answer(service, world, call, result, known)

        run_calls()
    check_final_state(world, known, before)


# --- regressions the property found: each input below makes a tool crash instead of answering ------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def call_once(world: World, tool: str, arguments: dict[str, Any]) -> tuple[types.CallToolResult, list[str]]:
    encoder = FakeEncoder()
    service = ClipSearch(Settings(index_dir=world.index_dir, model=encoder.model_name), encoder=encoder)
    with (
        error_records() as errors,
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(mcp_client(service, [world.root])) as client,
    ):
        assert not portal.call(client.call_tool, "index_folder", {"folder": str(world.root)}).is_error
        result = portal.call(client.call_tool, tool, arguments)
    return result, errors.messages()


def assert_readable_error(result: types.CallToolResult, errors: list[str], *phrases: str) -> None:
    assert not errors, errors
    text = result.content[0].text
    assert result.is_error and all(phrase in text for phrase in phrases), text


def test_an_invalid_collection_name_with_plots_is_a_readable_error(world: World):
    result, errors = call_once(world, "evaluate_retrieval", {"collection": "../x", "plots": True})
    assert_readable_error(result, errors, "Invalid collection name")


def test_a_ground_truth_under_an_unknown_users_home_is_a_readable_error(world: World):
    result, errors = call_once(world, "evaluate_retrieval", {"ground_truth": "~no-such-user-here/gt.json"})
    assert_readable_error(result, errors, "~no-such-user-here/gt.json")


def test_a_deeply_nested_ground_truth_file_is_a_readable_error(world: World):
    nested = world.root / "gt" / "nested.json"
    nested.write_text("[" * 100_000, encoding="utf-8")
    result, errors = call_once(world, "evaluate_retrieval", {"ground_truth": str(nested)})
    assert_readable_error(result, errors, str(nested))


@pytest.mark.parametrize(
    "spec",
    [
        {"text_queries": [{"query": "red", "relevant": ["../red/red_0.jpg", "red\x00.jpg"]}]},
        {"image_queries": [{"image": "x\x00.jpg", "relevant": ["../red/red_0.jpg"]}]},
    ],
    ids=["relevant", "image"],
)
def test_a_nul_character_in_a_ground_truth_path_does_not_crash_the_evaluation(world: World, spec: dict[str, Any]):
    truth = world.root / "gt" / "nul.json"
    truth.write_text(json.dumps(spec), encoding="utf-8")
    result, errors = call_once(world, "evaluate_retrieval", {"ground_truth": str(truth)})
    assert not errors, errors
    # Either reported as a path not in the collection (the rule for unknown paths) or refused with a reason.
    text = result.content[0].text
    assert not result.is_error or text.startswith("Error executing tool evaluate_retrieval: "), text
