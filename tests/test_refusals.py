"""Every refusal the README promises (README.md and the pages it links as its sections), each with a test.

Where each is tested (file::test; "here" is this file):

README.md
- `search`/`similar` `-k` outside 1-1000: here, test_search_and_similar_refuse_a_k_outside_1_to_1000_before_any_work
- an option value outside its listed choices (`--index-type`, `--precision`, `--sort`, `--engine`): here,
  test_an_option_value_outside_its_documented_choices_is_refused_before_any_work
- `--json` on `serve`, the one command without it: here, test_serve_is_the_one_command_that_refuses_json
- `eval -c` more than five times: here, test_eval_compares_at_most_five_collections_and_writes_nothing_when_refused
  (the core: test_compare.py::test_too_many_repeated_or_unknown_collections_are_refused)
- `CLIPSEARCH_ENGINE` other than auto/onnx/torch: here,
  test_an_unknown_engine_in_the_environment_is_refused_naming_the_engines
- errors are one line, exit code 2: test_cli.py::test_errors_are_one_line_with_exit_code_2
- the first run without network: test_cli.py::test_unavailable_model_names_the_model_and_the_fix,
  test_first_run.py::test_missing_model_without_network_is_one_error_line
- paths outside the allowed roots: test_mcp.py::test_paths_outside_the_roots_are_refused_before_anything_is_read
- no roots at all, file tools say how to allow a folder: `index_folder` in
  test_mcp.py::test_without_any_roots_file_tools_say_how_to_configure_them; every other file tool here,
  test_without_any_roots_every_file_tool_refuses_saying_how_to_allow_a_folder

README.md, "On a home server", and docs/mcp.md "Over HTTP" (all in test_http.py)
- no token, a wrong, revoked or truncated token, another scheme, on every path and method:
  test_no_method_on_any_path_answers_without_a_valid_token; revoked while the server runs:
  test_a_token_revoked_while_the_server_runs_is_refused_from_its_next_request; a token in the URL:
  test_a_token_in_the_query_string_is_refused_even_beside_a_valid_header; another token's session, resource reads
  and app-only tools: test_a_session_answers_only_the_token_that_opened_it
- a read-only token indexing, watching or cancelling:
  test_a_read_only_token_searches_but_never_indexes_cancels_or_watches
- a non-loopback address without a token: test_serving_beyond_loopback_without_a_token_refuses_to_start; TLS by
  halves: test_tls_needs_both_the_certificate_and_its_key
- hostile Host or Origin: test_a_hostile_host_or_origin_is_refused_before_any_tool_runs; bodies over 4 MiB and
  malformed JSON: test_malformed_json_and_a_huge_body_get_4xx_and_the_server_keeps_answering; calls past a token's
  limit: test_calls_past_a_tokens_limit_get_a_clear_error_and_other_tokens_go_on
- client-declared roots over HTTP: test_client_declared_roots_are_ignored_over_http

docs/mcp.md
- missing folder, unreadable image, relative path:
  test_mcp.py::test_missing_folder_and_unreadable_query_image_are_tool_errors,
  test_jobs.py::test_index_folder_outside_the_roots_or_missing_is_refused_before_any_job
- unknown or invalid collection, empty query, k, ks, template, relative ground truth:
  test_mcp.py::test_bad_arguments_come_back_as_readable_tool_errors
- model unavailable: test_encoder_pool.py::test_an_unknown_model_offline_fails_the_job_naming_the_model
- unknown job id: test_jobs.py::test_unknown_or_malformed_job_ids_are_tool_errors_naming_the_valid_ones
- the tools table's other ranges (query 1-2000 characters, thumbnails 0-10, wait_seconds 0-50, threshold (0, 1],
  max_bits 0-64, max_groups 1-1000, collections 2-5): here,
  test_mcp_parameters_past_their_documented_range_are_tool_errors_and_nothing_is_made; max_side:
  test_view.py; paths and side of get_thumbnails:
  test_gallery.py::test_get_thumbnails_refuses_too_many_paths_or_a_silly_size;
  that the CLI states the same bounds: test_limits.py
- `model` not a hub id, or a folder outside the roots:
  test_encoder_pool.py::test_a_bad_model_request_is_a_tool_error_before_any_job
- `model` other than an existing collection's: the core in
  test_indexer.py::test_asking_a_collection_for_another_model_is_refused_naming_both; over MCP here,
  test_index_folder_asking_an_existing_collection_for_another_model_is_refused_and_starts_no_job
- a refused, missing or unreadable thumbnail path answered with its reason:
  test_gallery.py::test_get_thumbnails_returns_jpegs_in_order_and_a_reason_for_each_path_it_refuses
- a crashed job whose folder is not under `--root` is not resumed:
  test_jobs.py::test_a_crashed_job_is_only_marked_interrupted_without_resume_or_outside_the_roots

docs/search.md
- bad filter values (dates, place, radius, folder outside the roots or not in the collection, min_score, offset):
  test_filters.py::test_bad_filter_values_are_tool_errors_that_say_what_to_fix
- a folder filter naming a missing folder or one holding none of the collection's images (search and duplicates):
  test_filters.py::test_a_folder_filter_that_would_answer_nothing_is_a_tool_error_naming_the_collections_folders
- bad weights and empty terms: test_composition.py::test_bad_terms_are_refused_saying_why; more than 16 terms:
  test_composition.py::test_too_many_terms_are_refused; terms that cancel:
  test_composition.py::test_terms_that_cancel_exactly_are_refused;
  image terms outside the roots: test_composition.py::test_tools_refuse_image_terms_outside_the_roots_or_too_many_terms
- view_image outside the roots, not an image, max_side:
  test_view.py::test_bad_paths_and_sizes_are_refused_and_nothing_outside_the_roots_is_opened
- a `text` filter or text query without a word or over 200 characters, `min_score` of a text search outside 0-1:
  test_text_queries.py::test_an_empty_or_too_long_text_is_refused_saying_what_to_fix,
  test_text_queries.py::test_the_cli_refuses_an_empty_or_too_long_text_with_exit_code_2,
  test_text_queries.py::test_the_cli_refuses_a_text_score_outside_0_to_1_before_any_work; FTS syntax taken as
  text: test_text_queries.py::test_fts_syntax_in_a_query_or_filter_is_text_never_an_sql_error

docs/safety.md
- a ground-truth file outside the roots: test_mcp.py::test_ground_truth_file_outside_the_roots_is_refused; query
  images it names outside them: test_evaluate.py::test_image_query_outside_the_allowed_folders_is_skipped_not_read
- thumbnails of results outside the roots: test_mcp.py::test_thumbnails_of_results_outside_the_roots_are_not_read
- symlinked files leading outside the roots: test_indexer.py::test_symlink_leading_outside_the_roots_is_not_read
- decompression bombs: test_bad_files.py::test_decompression_bomb_in_a_folder_is_never_decoded
- a second indexing run while another holds the collection: the core in
  test_concurrency.py::test_a_collection_held_by_another_process_refuses_indexing_until_released; `clipsearch index`
  here, test_clipsearch_index_on_a_collection_another_run_is_writing_is_refused_and_adds_nothing. Over MCP a second
  run is not refused but joins or queues (the page said "refused" for the same server too; corrected):
  test_concurrency.py::test_a_second_index_call_for_a_folder_being_indexed_returns_the_same_job,
  test_jobs.py::test_a_job_for_another_folder_of_the_collection_waits_for_the_running_one, and a job waits for
  another process's run: here, test_an_index_job_on_a_collection_another_run_is_writing_waits_for_it_instead_of_failing

docs/models.md
- NaFlex SigLIP 2 and remote-code checkpoints:
  test_model_families.py::test_what_cannot_run_is_refused_saying_why_and_what_can
- `--engine onnx` with a failed export:
  test_onnx_engine.py::test_asking_for_the_onnx_engine_by_name_makes_a_failed_export_an_error_naming_the_fix
- int8 too far from fp32 (no collection made):
  test_precision.py::test_int8_that_strays_too_far_from_fp32_is_refused_and_creates_no_collection
- another precision for a collection:
  test_precision.py::test_a_collection_refuses_vectors_of_another_precision_and_names_a_new_collection,
  test_precision.py::test_index_folder_over_mcp_takes_a_precision_for_a_new_collection
- int8 with `--engine torch`:
  test_precision.py::test_int8_with_the_torch_engine_asked_for_by_name_says_which_engine_to_use
- another checkpoint under the collection's model:
  test_model_identity.py::test_other_weights_under_the_collections_model_folder_are_refused_naming_both
- missing or partial model files:
  test_model_files.py::test_partial_cache_offline_is_reported_as_incomplete_with_the_fix,
  test_model_files.py::test_folder_missing_files_names_what_it_lacks,
  test_encoder.py::test_a_folder_with_neither_processor_file_is_refused_naming_both

docs/evaluation.md
- a missing file, invalid JSON, a wrong shape, no queries:
  test_evaluate.py::test_malformed_ground_truth_files_are_refused_with_a_clear_message,
  test_evaluate.py::test_missing_ground_truth_file_is_refused
- collections of different images compared:
  test_compare.py::test_collections_holding_different_images_are_refused_listing_the_difference

docs/how-it-works.md
- a manifest of a newer format: test_manifest.py::test_a_manifest_of_a_newer_format_is_refused_saying_what_to_do
"""

import builtins
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import COLORS, SAMPLES, FakeEncoder, call, error_text, mcp_client, save_color, serving, with_encoder
from server.cli.main import main
from server.service import ClipSearch


class NoService:
    """A service factory that records being asked: a refusal made by the parser must come before any service."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, settings: Any, **options: Any) -> ClipSearch:
        self.made += 1
        raise AssertionError("the command reached the service")


def refused_by_parser(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `clipsearch argv`, which the parser must refuse with exit code 2 before making a service; its stderr."""
    factory = NoService()
    with pytest.raises(SystemExit) as exited:
        main(argv, make_service=factory)
    assert exited.value.code == 2
    assert factory.made == 0
    return capsys.readouterr().err


# --- the command line -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["search", "red"], ["similar", "photo.jpg"]])
@pytest.mark.parametrize("k", ["0", "1001"])
def test_search_and_similar_refuse_a_k_outside_1_to_1000_before_any_work(
    command: list[str], k: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused_by_parser([*command, "-k", k], capsys)
    assert f"argument -k: must be between 1 and 1000, got {k}" in err


@pytest.mark.parametrize(
    ("argv", "option", "value", "choices"),
    [
        (["index", "photos", "--index-type", "hnsw"], "--index-type", "hnsw", ("auto", "flat", "ivf")),
        (["index", "photos", "--precision", "int4"], "--precision", "int4", ("fp32", "int8")),
        (["search", "red", "--sort", "random"], "--sort", "random", ("score", "taken", "taken_asc")),
        (["search", "red", "--engine", "gpu"], "--engine", "gpu", ("auto", "onnx", "torch")),
    ],
)
def test_an_option_value_outside_its_documented_choices_is_refused_before_any_work(
    argv: list[str], option: str, value: str, choices: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused_by_parser(argv, capsys)
    assert f"argument {option}: invalid choice: '{value}'" in err
    assert all(f"'{choice}'" in err for choice in choices), err


def test_serve_is_the_one_command_that_refuses_json(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused_by_parser(["serve", "--json"], capsys)
    assert "unrecognized arguments: --json" in err


def test_eval_compares_at_most_five_collections_and_writes_nothing_when_refused(
    fake_service: ClipSearch, color_folder: Path, index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_service.index_folder(color_folder)
    plots = tmp_path / "plots"

    code = main(["eval", *["-c", "default"] * 6, "--plots", str(plots)], make_service=serving(fake_service))

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("clipsearch: error: At most 5 collections can be compared at once, got 6")
    assert len(err.strip().splitlines()) == 1
    assert not plots.exists() and not (index_dir / "default" / "evaluations").exists()


def test_an_unknown_engine_in_the_environment_is_refused_naming_the_engines(
    tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPSEARCH_ENGINE", "gpu")
    index = tmp_path / "index"

    code = main(["index", str(SAMPLES / "space"), "-c", "space", "--model", str(tiny_clip), "--index-dir", str(index)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "clipsearch: error: Unknown engine 'gpu'; choose one of auto, onnx, torch."
    assert not (index / "space").exists()


def test_clipsearch_index_on_a_collection_another_run_is_writing_is_refused_and_adds_nothing(
    fake_service: ClipSearch, color_folder: Path, index_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_service.index_folder(color_folder)
    save_color(color_folder / "red" / "red_new.jpg", COLORS["red"])
    argv = ["index", str(color_folder), "--index-dir", str(index_dir), "--model", FakeEncoder.model_name]

    with fake_service.collection("default").writer():  # another run holds the collection
        code = main(argv, make_service=with_encoder())

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "clipsearch: error: Collection 'default' is being indexed by another run; try again when that run finishes."
    )
    assert fake_service.collection("default").count() == 3 * len(COLORS)


# --- the MCP tools ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments", "parameter", "expected"),
    [
        ("search_images_by_text", {"query": "x" * 2001}, "query", "at most 2000 characters"),
        ("search_images_by_text", {"query": "red", "thumbnails": 11}, "thumbnails", "less than or equal to 10"),
        (
            "search_similar_images",
            {"image_path": "/a.jpg", "thumbnails": -1},
            "thumbnails",
            "greater than or equal to 0",
        ),
        ("index_folder", {"folder": "/photos", "wait_seconds": 51}, "wait_seconds", "less than or equal to 50"),
        ("index_status", {"wait_seconds": 51}, "wait_seconds", "less than or equal to 50"),
        ("find_duplicates", {"wait_seconds": 51}, "wait_seconds", "less than or equal to 50"),
        ("find_duplicates", {"threshold": 0}, "threshold", "greater than 0"),
        ("find_duplicates", {"threshold": 1.01}, "threshold", "less than or equal to 1"),
        ("find_duplicates", {"max_bits": 65}, "max_bits", "less than or equal to 64"),
        ("find_duplicates", {"max_groups": 0}, "max_groups", "greater than or equal to 1"),
        ("find_duplicates", {"max_groups": 1001}, "max_groups", "less than or equal to 1000"),
        ("evaluate_retrieval", {"collections": ["a"]}, "collections", "at least 2 items"),
        ("evaluate_retrieval", {"collections": list("abcdef")}, "collections", "at most 5 items"),
    ],
)
async def test_mcp_parameters_past_their_documented_range_are_tool_errors_and_nothing_is_made(
    fake_service: ClipSearch,
    index_dir: Path,
    tmp_path: Path,
    tool: str,
    arguments: dict[str, Any],
    parameter: str,
    expected: str,
) -> None:
    async with mcp_client(fake_service, [tmp_path]) as client:
        result = await call(client, tool, **arguments)

    message = error_text(result)
    assert parameter in message and expected in message, message
    assert fake_service.store.names() == []
    assert not index_dir.exists() or not any(index_dir.iterdir())


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path passed to open() from now until the test ends."""
    seen: list[str] = []
    real_open = builtins.open

    def spying_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spying_open)
    return seen


def filled_in(value: Any, names: dict[str, Path]) -> Any:
    """A tool argument with its `{name}` placeholders replaced by the test's paths."""
    if isinstance(value, list):
        return [filled_in(item, names) for item in value]
    return value.format(**names) if isinstance(value, str) else value


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("search_similar_images", {"image_path": "{red}"}),
        ("view_image", {"path": "{red}"}),
        ("search_images_by_text", {"query": "red", "folder": "{folder}/red"}),
        ("search_images_by_text", {"query": "red", "and_images": ["{red}"]}),
        ("find_duplicates", {"folder": "{folder}/red"}),
        ("evaluate_retrieval", {"ground_truth": "{truth}"}),
        ("index_folder", {"folder": "{folder}", "collection": "new", "model": "{folder}"}),
    ],
)
async def test_without_any_roots_every_file_tool_refuses_saying_how_to_allow_a_folder(
    fake_service: ClipSearch,
    fake_encoder: FakeEncoder,
    color_folder: Path,
    opened: list[str],
    tool: str,
    arguments: dict[str, Any],
) -> None:
    fake_service.index_folder(color_folder)  # from the terminal, where nothing is confined
    truth = color_folder / "truth.json"
    truth.write_text(json.dumps({"text_queries": [{"query": "red", "relevant": ["red/red_0.jpg"]}]}), encoding="utf-8")
    names = {"red": color_folder / "red" / "red_0.jpg", "folder": color_folder, "truth": truth}
    filled = {key: filled_in(value, names) for key, value in arguments.items()}
    encoded = fake_encoder.images_encoded

    async with mcp_client(fake_service) as client:  # no --root, and a client that declares no roots
        opened.clear()
        result = await call(client, tool, **filled)

    message = error_text(result)
    assert "No folders are allowed yet" in message and "--root" in message and "CLIPSEARCH_ROOTS" in message
    assert not [p for p in opened if p.startswith(str(color_folder))]
    assert fake_encoder.images_encoded == encoded
    assert fake_service.store.names() == ["default"]


@pytest.mark.anyio
async def test_index_folder_asking_an_existing_collection_for_another_model_is_refused_and_starts_no_job(
    fake_service: ClipSearch, color_folder: Path, index_dir: Path
) -> None:
    fake_service.index_folder(color_folder)
    manifest = (index_dir / "default" / "manifest.json").read_bytes()

    async with mcp_client(fake_service, [color_folder]) as client:
        refused = await call(client, "index_folder", folder=str(color_folder), model="someone/another-model")
        jobs = await call(client, "index_status")

    message = error_text(refused)
    assert "Collection 'default' was built with model 'fake-color-encoder'" in message
    assert "cannot take 'someone/another-model'" in message
    assert "Index into a new collection name to use that model, e.g. 'default-another-model'" in message
    assert jobs.structured_content["jobs"] == []  # type: ignore[index]
    assert (index_dir / "default" / "manifest.json").read_bytes() == manifest
    assert fake_service.collection("default").count() == 3 * len(COLORS)


@pytest.mark.anyio
async def test_an_index_job_on_a_collection_another_run_is_writing_waits_for_it_instead_of_failing(
    fake_service: ClipSearch, color_folder: Path
) -> None:
    fake_service.index_folder(color_folder)
    save_color(color_folder / "red" / "red_new.jpg", COLORS["red"])
    other_run = ClipSearch(fake_service.settings, encoder=FakeEncoder())  # as `clipsearch index` in another process

    async with mcp_client(fake_service, [color_folder]) as client:
        with other_run.collection("default").writer():
            started = await call(client, "index_folder", folder=str(color_folder), wait_seconds=1)
            job_id = started.structured_content["job_id"]  # type: ignore[index]
            held = (await call(client, "index_status", job_id=job_id)).structured_content
        for _ in range(20):
            listing = await call(client, "index_status", job_id=job_id, wait_seconds=2)
            if listing.structured_content["jobs"][0]["state"] == "done":  # type: ignore[index]
                break

    assert not started.is_error and started.structured_content["state"] in ("queued", "running")  # type: ignore[index]
    assert held["jobs"][0]["note"] == "waiting for another indexing run on this collection to finish"  # type: ignore[index]
    done = listing.structured_content["jobs"][0]  # type: ignore[index]
    assert done["state"] == "done" and (done["report"]["added"], done["report"]["indexed_total"]) == (1, 16)
