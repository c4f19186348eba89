"""server/indexing/text_stage.py: text in photos read as an indexing run's second stage, after the embeddings are
committed; incremental (never read twice, kept on a move, read again on a change), `ocr` auto/on/off per collection,
faults (a missing model, a recogniser failing on one image, a changed file, a kill) losing nothing."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeEncoder, FakeRecognizer, save_color
from server.config import Settings
from server.errors import IndexingCancelled, InvalidArgument, TextModelUnavailable
from server.indexing.indexer import IndexProgress
from server.service import ClipSearch
from server.store.text_search import texts_by_id

TESTS = Path(__file__).resolve().parent
RED, GREEN, BLUE, GREY = (200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)
TEXTS = {RED: "Boarding pass LH 1234", BLUE: "Lidl\nTotal 12,50 EUR"}


def service_with(tmp_path: Path, recognizer: Any) -> ClipSearch:
    encoder = FakeEncoder()
    settings = Settings(index_dir=tmp_path / "index", model=encoder.model_name)
    return ClipSearch(settings, encoder=encoder, recognizer=recognizer)


def library(folder: Path) -> Path:
    """Two photos with text (red, blue), two without (green, grey), as PNG so colours stay exact."""
    for name, color in (("pass", RED), ("park", GREEN), ("receipt", BLUE), ("wall", GREY)):
        save_color(folder / f"{name}.png", color, fmt="PNG")
    return folder


def stored(service: ClipSearch, collection: str = "default") -> dict[str, str]:
    """Each catalogued file name → the text stored for it (read, possibly empty); unread files left out."""
    target = service.collection(collection)
    rows = target.query("SELECT id, path FROM images", ())
    texts = texts_by_id(target.query, [int(r[0]) for r in rows])
    import os

    return {Path(os.fsdecode(path)).name: texts[int(i)].text.text for i, path in rows if int(i) in texts}


def test_text_is_read_after_every_embedding_is_committed_and_searchable(tmp_path: Path) -> None:
    service = service_with(tmp_path, FakeRecognizer(TEXTS))
    photos = library(tmp_path / "photos")
    seen: list[tuple[str, int]] = []

    def progress(p: IndexProgress) -> None:
        if p.stage == "text" and not any(stage == "text" for stage, _ in seen):
            # The first text progress: description search already holds the whole folder.
            seen.append(("searchable", len(service.search_text("red", k=10).results)))
        seen.append((p.stage, p.text_done if p.stage == "text" else p.done))

    report = service.index_folder(photos, progress=progress)

    stages = [stage for stage, _ in seen if stage != "searchable"]
    assert stages == sorted(stages, key=lambda s: s == "text")  # every embedding step before any text step
    assert ("searchable", 4) in seen
    assert [done for stage, done in seen if stage == "text"][-1] == 4
    assert stored(service) == {
        "pass.png": "Boarding pass LH 1234",
        "receipt.png": "Lidl\nTotal 12,50 EUR",
        "park.png": "",
        "wall.png": "",
    }
    assert (report.text_to_read, report.text_read, report.text_first_pass_only, report.text_found) == (4, 2, 2, 2)
    assert report.ocr == "auto" and report.text_note is None and report.text_images_per_second > 0


def test_auto_reads_in_full_only_what_the_first_pass_flags_and_on_reads_everything(tmp_path: Path) -> None:
    auto, on = FakeRecognizer(TEXTS), FakeRecognizer(TEXTS)
    photos = library(tmp_path / "photos")

    service_with(tmp_path / "a", auto).index_folder(photos)
    report = service_with(tmp_path / "b", on).index_folder(photos, ocr="on")

    assert sorted(auto.read_colors) == sorted([RED, BLUE]) and len(auto.probed) == 4
    assert sorted(on.read_colors) == sorted([RED, GREEN, BLUE, GREY]) and on.probed == []
    assert report.ocr == "on" and report.text_read == 4 and report.text_found == 2


def test_turning_ocr_on_later_reads_in_full_what_the_first_pass_passed_over_and_nothing_is_embedded(
    tmp_path: Path,
) -> None:
    recognizer = FakeRecognizer(TEXTS, miss_first_pass=True)  # the first pass misses every image
    service = service_with(tmp_path, recognizer)
    photos = library(tmp_path / "photos")

    first = service.index_folder(photos)
    recognizer.miss_first_pass = False
    second = service.index_folder(photos, ocr="on")
    third = service.index_folder(photos)
    manifest = json.loads((tmp_path / "index" / "default" / "manifest.json").read_text(encoding="utf-8"))

    assert first.text_found == 0 and first.text_first_pass_only == 4
    assert second.embedded == 0 and second.text_read == 4 and second.text_found == 2
    assert stored(service)["pass.png"] == "Boarding pass LH 1234"
    assert third.text_to_read == 0 and manifest["ocr"] == "on"  # the setting is kept until changed


def test_ocr_off_reads_nothing_keeps_what_was_read_and_is_recorded(tmp_path: Path) -> None:
    recognizer = FakeRecognizer(TEXTS)
    service = service_with(tmp_path, recognizer)
    photos = library(tmp_path / "photos")

    service.index_folder(photos)
    save_color(photos / "new.png", RED, size=(60, 40), fmt="PNG")
    probes_before = len(recognizer.probed)
    report = service.index_folder(photos, ocr="off")
    manifest = json.loads((tmp_path / "index" / "default" / "manifest.json").read_text(encoding="utf-8"))

    assert report.added == 1 and report.ocr == "off" and report.text_to_read == 0
    assert len(recognizer.probed) == probes_before and "new.png" not in stored(service)
    assert stored(service)["pass.png"] == "Boarding pass LH 1234"  # earlier text still searchable
    assert manifest["ocr"] == "off"
    with pytest.raises(InvalidArgument, match="ocr must be one of auto, on, off"):
        service.index_folder(photos, ocr="sometimes")


def test_unchanged_files_are_never_read_twice_a_moved_file_keeps_its_text_a_changed_one_is_read_again(
    tmp_path: Path,
) -> None:
    recognizer = FakeRecognizer({**TEXTS, GREEN: "Park entrance"})
    service = service_with(tmp_path, recognizer)
    photos = library(tmp_path / "photos")
    service.index_folder(photos)
    recognizer.probed.clear()
    recognizer.read_colors.clear()

    unchanged = service.index_folder(photos)
    looked_at_unchanged = list(recognizer.probed)
    (photos / "sub").mkdir()
    shutil.move(photos / "pass.png", photos / "sub" / "boarding.png")
    save_color(photos / "receipt.png", GREEN, size=(70, 50), fmt="PNG")  # new content under the old name
    changed = service.index_folder(photos)

    assert unchanged.text_to_read == 0 and looked_at_unchanged == [] == unchanged.text_problems
    assert changed.moved == 1 and changed.updated == 1 and changed.text_to_read == 1
    assert recognizer.read_colors == [GREEN]
    texts = stored(service)
    assert texts["boarding.png"] == "Boarding pass LH 1234" and texts["receipt.png"] == "Park entrance"
    assert "Lidl" not in json.dumps(texts)


class Unavailable(FakeRecognizer):
    @property
    def identity(self) -> str:  # type: ignore[override]
        raise TextModelUnavailable("The text recognition model is missing: /nowhere/det.onnx.")


class BreaksOnRead(FakeRecognizer):
    """Loads fine, then finds its model file corrupt at the first full read."""

    def read(self, image: Any) -> Any:
        raise TextModelUnavailable("Cannot load the text recognition model: corrupt file")


@pytest.mark.parametrize("broken", [Unavailable, BreaksOnRead])
def test_a_missing_or_corrupt_ocr_model_is_reported_once_and_loses_nothing(tmp_path: Path, broken: type) -> None:
    service = service_with(tmp_path, broken(TEXTS))
    photos = library(tmp_path / "photos")

    report = service.index_folder(photos)
    found = service.search_text("red", k=2)
    service.recognizer = FakeRecognizer(TEXTS)  # the model repaired
    service.indexer = None
    repaired = service.index_folder(photos)

    assert report.added == 4 and report.failed == 0 and report.embedded == 4
    assert report.text_note is not None and "model" in report.text_note and report.text_found == 0
    assert Path(found.results[0].path).name == "pass.png"
    assert "pass.png" not in stored(service) or stored(service)["pass.png"] == "Boarding pass LH 1234"
    assert repaired.text_found == 2 and stored(service)["pass.png"] == "Boarding pass LH 1234"


class FailsOnGreen(FakeRecognizer):
    def read(self, image: Any) -> Any:
        color, _ = self._shown(image)
        if color == GREEN:
            raise RuntimeError("recogniser bug")
        return super().read(image)


def test_a_recogniser_failing_on_one_image_reports_it_and_reads_the_others(tmp_path: Path) -> None:
    service = service_with(tmp_path, FailsOnGreen(TEXTS))
    photos = library(tmp_path / "photos")

    report = service.index_folder(photos, ocr="on")
    again = service.index_folder(photos, ocr="on")

    assert report.indexed_total == 4 and report.failed == 0
    assert [(Path(p.path).name, "recogniser bug" in p.reason) for p in report.text_problems] == [("park.png", True)]
    assert stored(service)["pass.png"] == "Boarding pass LH 1234" and stored(service)["park.png"] == ""
    assert again.text_to_read == 0  # not retried until the file changes


class ChangesAFile(FakeRecognizer):
    """While the first image is read, another file is rewritten with new content (same name)."""

    def __init__(self, texts: dict[tuple[int, int, int], str], victim: Path) -> None:
        super().__init__(texts)
        self.victim = victim

    def likely_has_text(self, image: Any) -> bool:
        if self.victim.exists() and not self.probed:
            save_color(self.victim, RED, size=(90, 30), fmt="PNG")
        return super().likely_has_text(image)


def test_a_file_changed_between_the_stages_gets_no_text_until_it_is_embedded_again(tmp_path: Path) -> None:
    photos = library(tmp_path / "photos")
    service = service_with(tmp_path, ChangesAFile(TEXTS, photos / "wall.png"))

    service.index_folder(photos)
    first = stored(service)
    second_run = service.index_folder(photos)

    assert "wall.png" not in first  # its bytes no longer match what was embedded
    assert second_run.updated == 1 and stored(service)["wall.png"] == "Boarding pass LH 1234"


def test_cancelling_in_the_text_stage_commits_what_was_read_and_the_next_run_reads_the_rest(tmp_path: Path) -> None:
    recognizer = FakeRecognizer(TEXTS)
    service = service_with(tmp_path, recognizer)
    photos = library(tmp_path / "photos")
    cancel = threading.Event()

    def progress(p: IndexProgress) -> None:
        if p.stage == "text" and p.text_done == 2:
            cancel.set()

    with pytest.raises(IndexingCancelled) as stopped:
        service.index_folder(photos, progress=progress, cancel=cancel)
    partial = stored(service)
    rest = service.index_folder(photos)

    assert stopped.value.report.embedded == 4 and len(partial) == 2
    assert rest.embedded == 0 and rest.text_to_read == 2 and len(stored(service)) == 4


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from conftest import FakeEncoder, FakeRecognizer
    from server.config import Settings
    from server.service import ClipSearch

    class Slow(FakeRecognizer):
        def likely_has_text(self, image):
            print("READING", flush=True)
            time.sleep(0.05)
            return super().likely_has_text(image)

    encoder = FakeEncoder()
    recognizer = Slow({texts!r})
    service = ClipSearch(Settings(index_dir=Path({index!r}), model=encoder.model_name), encoder,
                         recognizer=recognizer)
    service.indexer = None
    from server.indexing.indexer import Indexer
    service.indexer = Indexer(encoder, workers=2, batch_size=4, commit_every=6, recognizer=recognizer)
    service.indexer.text_stage.commit_every = 3
    report = service.index_folder({folder!r})
    print("DONE", report.text_to_read, flush=True)
    """
)


def test_a_run_killed_in_the_text_stage_resumes_where_it_stopped_with_no_text_on_another_image(
    tmp_path: Path,
) -> None:
    from test_crash import assert_consistent

    photos = tmp_path / "photos"
    colors = {}
    for i in range(24):
        color = (20 + 9 * i, 40, 200 - 7 * i)
        save_color(photos / f"p{i:02}.png", color, fmt="PNG")
        if i % 3 == 0:
            colors[color] = f"label {i:02}"
    index = tmp_path / "index"
    code = CHILD.format(root=str(TESTS.parent), tests=str(TESTS), index=str(index), folder=str(photos), texts=colors)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for count, line in enumerate(child.stdout, start=1):
        if line.startswith("READING") and count >= 14:
            child.send_signal(signal.SIGKILL)
            break
    child.stdout.close()
    child.wait(timeout=60)

    assert assert_consistent(index) == 24  # every image embedded and committed before any text was read
    service = service_with(tmp_path, FakeRecognizer(colors))
    read_before = stored(service)
    resumed = service.index_folder(photos)
    read_after = stored(service)

    assert 0 < len(read_before) < 24 and resumed.embedded == 0
    assert resumed.text_to_read == 24 - len(read_before)
    assert len(read_after) == 24
    for name, text in read_after.items():  # each image's own text, or none
        i = int(name[1:3])
        assert text == (f"label {i:02}" if i % 3 == 0 else "")


class SteppedRecognizer(FakeRecognizer):
    """Each full read waits until the test lets it through."""

    def __init__(self, texts: dict[tuple[int, int, int], str]) -> None:
        super().__init__(texts)
        self.permits = threading.Semaphore(0)
        self.waiting = 0

    def read(self, image: Any) -> Any:
        self.waiting += 1
        if not self.permits.acquire(timeout=20):
            raise RuntimeError("the test never let this read through")
        return super().read(image)


@pytest.mark.anyio
async def test_over_mcp_the_job_shows_the_text_stage_and_its_report_counts_what_was_read(tmp_path: Path) -> None:
    from conftest import call, mcp_client, until
    from server.indexing.background import Background
    from server.indexing.jobs import JobManager
    from server.indexing.watch import FolderWatcher

    recognizer = SteppedRecognizer(TEXTS)
    service = service_with(tmp_path, recognizer)
    jobs = JobManager(service.store.index_dir, lambda: service)
    photos = library(tmp_path / "photos")
    async with mcp_client(service, [photos], background=Background(jobs, FolderWatcher(jobs))) as client:
        started = await call(client, "index_folder", folder=str(photos), ocr="on", wait_seconds=0)
        job_id = started.structured_content["job_id"]
        until(lambda: recognizer.waiting >= 1, "the text stage reached its first read")
        recognizer.permits.release()
        until(lambda: jobs.status(job_id).progress.text_done >= 1, "one image read")
        during = await call(client, "index_status", job_id=job_id)
        searched = await call(client, "search_images_by_text", query="red", k=10)
        for _ in range(10):
            recognizer.permits.release()
        for _ in range(30):  # index_status returns when the job finishes or changes: follow it to its end
            finished = await call(client, "index_status", job_id=job_id, wait_seconds=2)
            if finished.structured_content["jobs"][0]["state"] != "running":
                break

    progress = during.structured_content["jobs"][0]["progress"]
    assert progress["stage"] == "text" and progress["text_to_read"] == 4 and 1 <= progress["text_done"] < 4
    assert progress["done"] == progress["to_process"] == 4  # the embedding stage's figures stay
    assert "now reading the text" in during.content[0].text  # type: ignore[union-attr]
    assert len(searched.structured_content["results"]) == 4  # description search has every image meanwhile
    job = finished.structured_content["jobs"][0]
    assert job["state"] == "done" and job["report"]["text_found"] == 2 and job["report"]["ocr"] == "on"
    assert job["progress"]["text_done"] == 4
    manifest = json.loads((tmp_path / "index" / "default" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["ocr"] == "on"


def test_clipsearch_index_ocr_sets_the_collections_text_reading_and_reports_the_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli.main import main

    photos = library(tmp_path / "photos")
    recognizer = FakeRecognizer(TEXTS)

    def make_service(settings: Settings, **options: Any) -> ClipSearch:
        return ClipSearch(settings, encoder=FakeEncoder(), recognizer=recognizer, **options)

    options = ["--index-dir", str(tmp_path / "index"), "--model", FakeEncoder.model_name]
    code = main(["index", str(photos), *options, "--ocr", "on"], make_service=make_service)
    shown = capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["index", str(photos), *options, "--ocr", "never"], make_service=make_service)
    error = capsys.readouterr().err

    assert code == 0 and "text: 4 of 4 images read" in shown and "2 hold text" in shown
    assert len(recognizer.read_colors) == 4 and recognizer.probed == []
    assert refused.value.code == 2 and "--ocr" in error and "invalid choice" in error
