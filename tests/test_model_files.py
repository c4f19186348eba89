"""server/models/files.py: a cached model never touches the network; a missing one is downloaded once, with progress,
or fails fast with a clear message. All against a local fake hub or closed ports: no network."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import server.models.files as model_files
from bench.fakehub import FakeHub, silent_endpoint
from conftest import HUB_NAME
from server.encoders.torch_engine import TransformersEncoder
from server.errors import ModelUnavailable
from server.models.files import DownloadPlan, DownloadState, DownloadTracker, find_local, locate

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A download listener that keeps everything it is told."""

    def __init__(self) -> None:
        self.plans: list[DownloadPlan] = []
        self.states: list[DownloadState] = []
        self.ends: list[bool] = []

    def started(self, plan: DownloadPlan) -> None:
        self.plans.append(plan)

    def advanced(self, state: DownloadState) -> None:
        self.states.append(state)

    def ended(self, state: DownloadState, ok: bool) -> None:
        self.ends.append(ok)


@pytest.fixture
def silent_port() -> Iterator[tuple[str, list[socket.socket]]]:
    with silent_endpoint() as endpoint:
        yield endpoint


def closed_port_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


def tiny_files(tiny_clip: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in tiny_clip.iterdir()}


# --- cache first ---------------------------------------------------------------------------------------------------


def test_cached_model_is_found_and_loaded_without_any_request_to_the_hub(
    cached_model: Path, fake_hub: FakeHub, tiny_clip: Path
) -> None:
    found = locate(HUB_NAME)
    encoder = TransformersEncoder(HUB_NAME)
    vectors = encoder.encode_texts(["a red car"])

    assert found.source == "cache" and found.folder == cached_model
    assert vectors.shape == (1, 24)
    np.testing.assert_allclose(vectors, TransformersEncoder(str(tiny_clip)).encode_texts(["a red car"]), atol=1e-6)
    assert fake_hub.requests == []


def test_cached_model_with_the_hub_unreachable_loads_without_waiting_for_it(
    cached_model: Path, silent_port: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, accepted = silent_port
    monkeypatch.setenv("HF_ENDPOINT", endpoint)

    encoder = TransformersEncoder(HUB_NAME)
    _ = encoder.dim

    assert encoder.files.source == "cache"
    assert accepted == []  # not even one connection attempt


# --- first run: one download, with its size and progress -----------------------------------------------------------


def test_first_run_downloads_the_needed_files_once_reporting_size_and_progress(
    fake_hub: FakeHub, tiny_clip: Path
) -> None:
    recorder = Recorder()

    first = locate(HUB_NAME, DownloadTracker([recorder]))
    requests_after_first = list(fake_hub.requests)
    second = locate(HUB_NAME, DownloadTracker([recorder]))

    sizes = tiny_files(tiny_clip)
    assert first.source == "download" and second.source == "cache" and first.folder == second.folder
    [plan] = recorder.plans
    assert dict(plan.files) == sizes
    assert plan.total_bytes == sum(sizes.values())
    assert "this happens once" in plan.describe() and str(plan.cache_dir) in plan.describe()
    done = [s.done_bytes for s in recorder.states]
    assert done == sorted(done) and done[-1] == plan.total_bytes
    assert recorder.ends == [True]
    assert fake_hub.requests == requests_after_first  # the second run asked nothing
    for name in sizes:
        assert (first.folder / name).read_bytes() == (tiny_clip / name).read_bytes()


def test_download_plan_takes_one_weight_format_and_skips_what_the_encoder_never_reads(
    fake_hub: FakeHub, tiny_clip: Path
) -> None:
    files = dict(fake_hub.repos[HUB_NAME])
    files["pytorch_model.bin"] = b"old format, never needed"
    files["tf_model.h5"] = b"tensorflow weights"
    files["README.md"] = b"# model card"
    fake_hub.repos[HUB_NAME] = files
    recorder = Recorder()

    locate(HUB_NAME, DownloadTracker([recorder]))

    assert sorted(name for name, _ in recorder.plans[0].files) == sorted(p.name for p in tiny_clip.iterdir())
    assert not any("tf_model" in r or "pytorch_model" in r or "README" in r for r in fake_hub.requests)


def test_a_hub_repository_saved_the_transformers_5_way_downloads_and_is_then_found_in_the_cache(
    fake_hub: FakeHub, tiny_clip: Path
) -> None:
    files = dict(fake_hub.repos[HUB_NAME])
    settings = files.pop("preprocessor_config.json")
    files["processor_config.json"] = b'{"processor_class": "CLIPProcessor", "image_processor": ' + settings + b"}"
    fake_hub.repos[HUB_NAME] = files

    first = locate(HUB_NAME)
    second = find_local(HUB_NAME)

    assert first.source == "download" and (first.folder / "processor_config.json").is_file()
    assert second is not None and second.folder == first.folder


def test_two_processes_starting_with_an_empty_cache_both_load_one_intact_copy(
    fake_hub: FakeHub, hf_home: Path, tiny_clip: Path
) -> None:
    # Each body stops half-way until both processes are downloading, so their downloads overlap.
    fake_hub.chunk_delay = threading.Event()
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_ENDPOINT": fake_hub.endpoint, "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    code = (
        "from server.encoders.torch_engine import TransformersEncoder; "
        "e = TransformersEncoder('openai/clip-vit-base-patch32'); "
        "print(e.files.source, e.dim, e.model_identity)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    wait = threading.Event()
    for _ in range(300):
        if sum("model.safetensors" in r for r in fake_hub.requests) >= 2 or any(p.poll() is not None for p in procs):
            break
        wait.wait(0.1)
    fake_hub.chunk_delay.set()
    outputs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    identities = {out.split()[2] for out, _ in outputs}
    assert len(identities) == 1
    assert all(out.split()[1] == "24" for out, _ in outputs)
    storage = hf_home / "hub" / "models--openai--clip-vit-base-patch32"
    assert not list((storage / "blobs").glob("*.incomplete"))
    snapshot = next((storage / "snapshots").iterdir())
    expected = hashlib.sha256((tiny_clip / "model.safetensors").read_bytes()).hexdigest()
    assert hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest() == expected


# --- failing fast and clearly ---------------------------------------------------------------------------------------


def test_missing_model_with_a_silent_hub_fails_after_one_attempt_within_the_timeout(
    hf_home: Path, silent_port: tuple[str, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, accepted = silent_port
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(model_files, "METADATA_TIMEOUT_SECONDS", 0.5)

    with pytest.raises(ModelUnavailable) as raised:
        locate(HUB_NAME)

    message = str(raised.value)
    assert len(accepted) == 1  # one request, no back-off retries
    assert f"Cannot load the model '{HUB_NAME}': it is not in the Hugging Face cache" in message
    assert "the hub cannot be reached" in message and "CLIPSEARCH_MODEL" in message


def test_missing_model_with_the_network_down_is_one_well_formed_message(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())

    with pytest.raises(ModelUnavailable) as raised:
        TransformersEncoder(HUB_NAME).encode_texts(["a cat"])

    message = str(raised.value)
    assert "the hub cannot be reached (" in message and "Connection refused" in message
    assert ".." not in message and "\n" not in message
    assert message.endswith(".")


def test_model_the_hub_does_not_know_says_so(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelUnavailable, match="the hub has no such model"):
        locate("someone/no-such-model")


def test_partial_cache_offline_is_reported_as_incomplete_with_the_fix(
    cached_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = (cached_model / "model.safetensors").resolve()
    weights.unlink()  # the snapshot's link now points nowhere, as after an interrupted download
    (weights.parent / f"{weights.name}.incomplete").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelUnavailable) as raised:
        TransformersEncoder(HUB_NAME).encode_texts(["a cat"])

    message = str(raised.value)
    assert "is incomplete: it lacks model weights" in message
    assert "1 interrupted download(s)" in message
    assert "HF_HUB_OFFLINE is set" in message and "CLIPSEARCH_MODEL" in message


def test_partial_cache_online_fetches_only_what_is_missing(
    cached_model: Path, fake_hub: FakeHub, tiny_clip: Path
) -> None:
    (cached_model / "model.safetensors").resolve().unlink()
    recorder = Recorder()

    found = locate(HUB_NAME, DownloadTracker([recorder]))

    assert found.folder == cached_model
    assert recorder.plans[0].files == (("model.safetensors", (tiny_clip / "model.safetensors").stat().st_size),)
    assert (cached_model / "model.safetensors").read_bytes() == (tiny_clip / "model.safetensors").read_bytes()


def test_unreadable_cache_is_a_clear_error(cached_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which reads anything: the refusal a normal user gets is simulated at the read.
    real_read_text = Path.read_text

    def refuse_refs(self: Path, *args: object, **kwargs: object) -> str:
        if self.parent.name == "refs":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse_refs)

    with pytest.raises(ModelUnavailable, match=r"Cannot read the Hugging Face cache at .*permission denied"):
        locate(HUB_NAME)


def test_a_path_that_is_not_a_folder_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="neither a folder nor a Hugging Face model id"):
        locate(str(tmp_path / "no" / "such" / "checkpoint"))


def test_folder_missing_files_names_what_it_lacks(tiny_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_clip / "config.json").read_bytes())

    with pytest.raises(ModelUnavailable) as raised:
        locate(str(folder))

    message = str(raised.value)
    assert "preprocessor_config.json" in message and "model weights" in message and "tokenizer files" in message
