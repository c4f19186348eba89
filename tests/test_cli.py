"""The `clipsearch` command over a real (tiny) CLIP checkpoint, as a person or a script would run it."""

import argparse
import json
import shutil
from pathlib import Path

import pytest

from conftest import clipsearch, run_python, serving
from server.cli.commands import COMMANDS
from server.cli.main import main
from server.cli.parser import build_parser
from server.service import ClipSearch

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture
def cli_env(tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(tiny_clip))
    monkeypatch.setenv("CLIPSEARCH_INDEX_DIR", str(tmp_path / "index"))
    return []


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_index_search_similar_eval_and_collections_on_the_samples(
    cli_env: list[str], capsys: pytest.CaptureFixture[str]
):
    indexed = run_json(capsys, "index", str(SAMPLES))
    assert (indexed["indexed_total"], indexed["added"], indexed["failed"]) == (9, 9, 0)
    found = run_json(capsys, "search", "a cat on a sofa", "-k", "5")
    assert len(found["results"]) == 5
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    query = SAMPLES / "cat" / "chelsea.jpg"
    similar = run_json(capsys, "similar", str(query), "-k", "3")
    assert similar["results"][0]["path"] == str(query.resolve())
    assert similar["results"][0]["score"] >= 0.999
    evaluation = run_json(capsys, "eval", "--ks", "1", "3")
    assert evaluation["labels"] == 5 and evaluation["text_to_image"]["queries"] == 5
    # Labels with one image (cat, coffee, photographer) cannot be image queries.
    assert (evaluation["image_to_image"]["queries"], evaluation["image_to_image"]["skipped"]) == (6, 3)
    listing = run_json(capsys, "collections")
    assert [(c["name"], c["images"], c["dim"]) for c in listing["collections"]] == [("default", 9, 24)]


def test_tables_are_printed_for_people(cli_env: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["index", str(SAMPLES), "--collection", "s"]) == 0
    assert "Collection 's': 9 images" in capsys.readouterr().out
    assert main(["search", "rocket launch", "-c", "s", "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "taken", "path"] and len(lines) == 3
    assert lines[1].split()[2].startswith("20")  # the samples have no capture date: their file date stands in


def test_model_and_index_dir_options_override_the_environment(
    tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(tmp_path / "no-such-model"))
    chosen = tmp_path / "chosen-index"
    report = run_json(capsys, "index", str(SAMPLES / "space"), "--model", str(tiny_clip), "--index-dir", str(chosen))
    assert report["indexed_total"] == 3
    assert (chosen / "default" / "manifest.json").is_file()


def test_errors_are_one_line_with_exit_code_2(cli_env: list[str], capsys: pytest.CaptureFixture[str]):
    assert main(["search", "anything", "--collection", "missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipsearch: error: No collection named 'missing'")
    assert len(err.strip().splitlines()) == 1


def test_unavailable_model_names_the_model_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["index", str(SAMPLES), "--model", "openai/clip-vit-base-patch32", "--index-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "openai/clip-vit-base-patch32" in err and "CLIPSEARCH_MODEL" in err
    assert not (tmp_path / "default").exists()


def test_python_dash_m_server_runs_the_cli(tiny_clip: Path, tmp_path: Path):
    folder = tmp_path / "photos"
    shutil.copytree(SAMPLES / "textures", folder)
    done = clipsearch("index", str(folder), "--model", str(tiny_clip), "--index-dir", str(tmp_path / "idx"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["indexed_total"] == 3


def test_every_subcommand_is_dispatched_through_the_table() -> None:
    [subcommands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) == set(COMMANDS)


def test_the_command_runs_on_the_service_it_is_handed(
    fake_service: ClipSearch, color_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_service.index_folder(color_folder, "handed")
    assert main(["collections", "--json"], make_service=serving(fake_service)) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["images"], c["model"]) for c in listing["collections"]] == [
        ("handed", 15, "fake-color-encoder")
    ]


def test_the_parser_and_main_load_none_of_the_heavy_libraries() -> None:
    heavy = ("numpy", "PIL", "torch", "faiss", "onnxruntime", "mcp", "pydantic")
    code = f"import sys, server.cli.main; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = run_python("-c", code, check=True)
    assert done.stdout.strip() == "[]"  # `clipsearch --help` answers before any of them would load
