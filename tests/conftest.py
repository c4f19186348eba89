"""Shared fixtures and helpers: a tiny real CLIP checkpoint on disk, a deterministic fake encoder, image folders,
MCP clients of our server, a bounded wait, services for the CLI, and `python` in a child process."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp.types as types
import numpy as np
import numpy.typing as npt
import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from PIL import Image

from bench.checkpoint import write_random_clip
from bench.fakehub import FakeHub, serve
from server.config import Settings
from server.encoders.protocol import normalize
from server.indexing.background import Background
from server.indexing.sources import S3Source
from server.mcp_server.server import build_server
from server.service import ClipSearch
from server.store.collection import Collection
from server.store.writer import NewImage

os.environ["HF_HUB_OFFLINE"] = "1"
# ONNX exports of the test checkpoints go to one folder per test run, never the user's cache.
os.environ["CLIPSEARCH_CACHE"] = tempfile.mkdtemp(prefix="clipsearch-test-cache-")
os.environ["TRANSFORMERS_OFFLINE"] = "1"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 200, 30),
    "blue": (25, 30, 220),
    "yellow": (230, 220, 30),
    "white": (245, 245, 245),
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_clip(tmp_path_factory.mktemp("tiny-clip"), "tiny")


class FakeEncoder:
    """Deterministic stand-in for CLIP: an image's vector is its mean colour; colour words map to their colour."""

    model_name = "fake-color-encoder"
    precision = "fp32"
    model_identity = "sha256:" + "fc" * 32
    dim = 3
    input_size = 16

    def __init__(self) -> None:
        self.images_encoded = 0
        self.texts_encoded: list[str] = []

    def preprocess(self, image: Image.Image) -> npt.NDArray[np.float32]:
        pixels = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0
        return pixels.reshape(-1, 3).mean(axis=0).astype(np.float32)

    def encode_pixels(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.images_encoded += len(batch)
        return normalize(batch)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts_encoded.extend(texts)
        rows = []
        for text in texts:
            words = [w for w in text.lower().split() if w in COLORS]
            rows.append(COLORS[words[-1]] if words else (1.0, 1.0, 1.0))
        return normalize(np.asarray(rows, dtype=np.float32))


FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def install_previous_collection(fixture: str, tmp_path: Path) -> tuple[Path, Path]:
    """A collection an earlier release wrote (tests/fixtures/<fixture>/default, made from the samples checked out at
    /work/main) copied to an index folder, with the sample photos copied beside it and the catalog pointed at them,
    sizes and times untouched, as a library moved as a whole. Returns (index folder, photos folder)."""
    import shutil
    import sqlite3

    index, photos = tmp_path / "index", tmp_path / "photos"
    shutil.copytree(FIXTURES / fixture / "default", index / "default")
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
    with sqlite3.connect(index / "default" / "catalog.sqlite") as conn:
        for image_id, path, mtime_ns in conn.execute("SELECT id, path, mtime_ns FROM images").fetchall():
            moved = str(photos / Path(os.fsdecode(path)).relative_to("/work/main/samples"))
            conn.execute("UPDATE images SET path = ? WHERE id = ?", (os.fsencode(moved), image_id))
            os.utime(moved, ns=(mtime_ns, mtime_ns))
        conn.execute("UPDATE folders SET path = ?", (os.fsencode(str(photos)),))
    conn.close()
    return index, photos


def previous_release_service(fixture: str, tiny_clip: Path, tmp_path: Path) -> tuple[Any, Path, Path, dict[str, Any]]:
    """A service over a collection an earlier release wrote (`install_previous_collection`), with the tests' tiny
    checkpoint standing in under the model name that release recorded. Returns (service, photos folder, manifest
    path, the manifest as written)."""
    import json

    from server.config import Settings
    from server.encoders.torch_engine import TransformersEncoder
    from server.service import ClipSearch

    index, photos = install_previous_collection(fixture, tmp_path)
    path = index / "default" / "manifest.json"
    before = json.loads(path.read_text(encoding="utf-8"))
    service = ClipSearch(Settings(index_dir=index, model=str(before["model"])))
    service.encoders.add(TransformersEncoder(str(tiny_clip)), str(before["model"]))  # where that release had it
    return service, photos, path, before


def assert_answers_as_recorded(fixture: str, by_text: Any, by_image: Any) -> None:
    """The text and image searches gave the top 9 that release recorded in its fixture, scores within 1e-5."""
    import json

    for answer, recorded in ((by_text, "search_text.json"), (by_image, "search_image.json")):
        expected = json.loads((FIXTURES / fixture / recorded).read_text(encoding="utf-8"))["results"]
        assert [Path(h.path).name for h in answer.results] == [Path(r["path"]).name for r in expected]
        assert [h.score for h in answer.results] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def fake_collection_listed(name: str, images: int, index_type: str) -> dict[str, Any]:
    """How list_collections shows a collection the fake encoder built."""
    return {
        "name": name,
        "images": images,
        "model": "fake-color-encoder",
        "model_identity": FakeEncoder.model_identity,
        "precision": "fp32",
        "family": None,  # the fake encoder has no checkpoint to tell it from
        "dim": 3,
        "index_type": index_type,
    }


def save_color(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> Path:
    """An image of one colour with a little seeded noise, so each file has distinct content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(os.fsencode(path)[-8:].ljust(8, b"\0"), "little") % (2**32)
    noise = np.random.default_rng(seed).integers(-12, 13, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format=fmt)
    return path


def image(path: str | Path, content: str, size: int = 1000, mtime_ns: int = 1) -> NewImage:
    """A catalog entry for a file that need not exist; `content` stands in for its hash."""
    return NewImage(path=Path(path), size=size, mtime_ns=mtime_ns, hash=content, width=64, height=48)


def fill(collection: Collection, vectors: npt.NDArray[np.float32], folder: str = "/photos") -> list[Path]:
    """Adds one fake image per vector, in one commit; returns their paths in order."""
    paths = [Path(f"{folder}/img_{i:04d}.jpg") for i in range(len(vectors))]
    with collection.writer() as w:
        for i, (path, vector) in enumerate(zip(paths, vectors, strict=True)):
            w.add(image(path, f"hash-{folder}-{i}"), vector)
    return paths


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """photos/<colour>/<colour>_<i>.jpg: three images per colour, labelled by folder."""
    root = tmp_path / "photos"
    for name, rgb in COLORS.items():
        for i in range(3):
            save_color(root / name / f"{name}_{i}.jpg", rgb)
    return root


class FakeRecognizer:
    """Stand-in for OCR: an image "shows" the text registered for its mean colour (within 8 levels; `save_color`
    images). Records every first pass and full read; `miss_first_pass` makes the first pass say no to every image."""

    identity = "sha256:" + "0c" * 32

    def __init__(self, texts: dict[tuple[int, int, int], str] | None = None, miss_first_pass: bool = False) -> None:
        self.texts = dict(texts or {})
        self.miss_first_pass = miss_first_pass
        self.probed: list[tuple[int, int, int]] = []
        self.read_colors: list[tuple[int, int, int]] = []

    def _shown(self, image: Image.Image) -> tuple[tuple[int, int, int], str | None]:
        mean = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
        color = (round(mean[0]), round(mean[1]), round(mean[2]))
        for known, text in self.texts.items():
            if max(abs(a - b) for a, b in zip(known, color, strict=True)) <= 8:
                return known, text
        return color, None

    def likely_has_text(self, image: Image.Image) -> bool:
        color, text = self._shown(image)
        self.probed.append(color)
        return text is not None and not self.miss_first_pass

    def read(self, image: Image.Image) -> Any:
        from server.encoders.text_recognition import RecognisedText, TextLine

        color, text = self._shown(image)
        self.read_colors.append(color)
        if text is None:
            return RecognisedText()
        box = ((0.0, 0.0), (float(image.width), 0.0), (float(image.width), 10.0), (0.0, 10.0))
        return RecognisedText(tuple(TextLine(line, box, 0.9) for line in text.split("\n")))


@dataclass(frozen=True)
class LocalS3:
    """A local S3-compatible store (moto's server) and the key of its one user."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def source(self, uri: str, **environ: str) -> S3Source:
        from server.indexing.sources import open_source

        keys = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return open_source(uri, endpoint=self.endpoint, environ=environ or keys)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def local_s3() -> Iterator[LocalS3]:
    """moto's S3 on 127.0.0.1 with a user whose key may do anything; then every request must carry a valid key."""
    import boto3
    import requests
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **setup)
    iam.create_user(UserName="reader")
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()  # auth from now on
    try:
        yield LocalS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        server.stop()


@pytest.fixture(scope="session")
def ray_home() -> Iterator[Path]:
    """One HOME for every local Ray instance of the run: Ray keeps the token it made for the first in the process
    and writes none for the next, whose GCS must find it where the first put it (~/.ray/auth_token)."""
    home = Path(tempfile.mkdtemp(prefix="cs-ray-home-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(ray_home: Path) -> Iterator[None]:
    """One local Ray instance for the module (a process holds one Ray connection; test_cluster_nodes.py makes a
    cluster of its own), on 127.0.0.2; token auth writes its token under the run's HOME, not the user's."""
    import ray

    from server.indexing.cluster import LOCAL_NODE_ADDRESS

    temp = Path(tempfile.mkdtemp(prefix="cs-ray-"))
    with environment(HOME=str(ray_home), RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true"):
        ray.init(
            _node_ip_address=LOCAL_NODE_ADDRESS,
            _temp_dir=str(temp),
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            configure_logging=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Environment variables set for the block, then put back as they were (unset ones unset again)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def block_pictures(
    folder: Path, count: int, start: int = 0, groups: int = 3, size: tuple[int, int] = (48, 40), prefix: str = "part"
) -> list[Path]:
    """Distinct PNGs (4×4 blocks of random colour, seeded by number), so that no two vectors tie; spread over
    `groups` subfolders `<prefix><n>`."""
    paths = []
    for i in range(start, start + count):
        blocks = np.random.default_rng(i).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        path = folder / f"{prefix}{i % groups}" / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths


def archive_against_exact(
    service: ClipSearch, collection: str, query: str, k: int = 10
) -> tuple[Any, dict[str, float], float]:
    """An archive's top `k` for a text query, every listed object's exact cosine with it (the shards' float32
    vectors) by path, and the exact k-th best score."""
    from server.store.shards import ShardStore

    hits = service.search_text(query, k=k, collection=collection).results
    vector = service.encoder_for(service.collection(collection)).encode_texts([query])[0]
    _, vectors, paths = ShardStore(service.settings.index_dir / collection).vectors()
    exact = dict(zip(paths, (vectors @ vector).tolist(), strict=True))
    return hits, exact, sorted(exact.values(), reverse=True)[k - 1]


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def fake_service(index_dir: Path, fake_encoder: FakeEncoder) -> ClipSearch:
    return ClipSearch(Settings(index_dir=index_dir, model=fake_encoder.model_name), encoder=fake_encoder)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- a Hugging Face cache and hub, without network ---------------------------------------------------------------

HUB_NAME = "openai/clip-vit-base-patch32"


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home for this test, with offline mode off (as on a user's laptop)."""
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # The hub library reads offline mode once, at import (conftest set it for every other test).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return home


@pytest.fixture
def fake_hub(tiny_clip: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A local hub serving the tiny checkpoint as `openai/clip-vit-base-patch32`; HF_ENDPOINT points at it."""
    hub = FakeHub()
    hub.add_folder(HUB_NAME, tiny_clip)
    with serve(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        yield hub


@pytest.fixture
def cached_model(fake_hub: FakeHub) -> Path:
    """The tiny checkpoint downloaded into the test's Hugging Face cache under the hub name; the hub's request log
    is cleared afterwards. Returns the snapshot folder."""
    from server.models.files import locate

    folder = locate(HUB_NAME).folder
    fake_hub.requests.clear()
    return folder


# --- MCP clients of our server ------------------------------------------------------------------------------------


def mcp_client(
    service: ClipSearch,
    roots: Sequence[Path] = (),
    *,
    background: Background | None = None,
    apps: bool = False,
    **options: Any,
) -> Client:
    """An in-memory client of `build_server(service, roots, background=...)`, to use as `async with`; `apps`
    negotiates MCP Apps, `options` go to the client (`list_roots_callback`, ...)."""
    server = build_server(service, roots=roots, background=background)
    return apps_client(server, **options) if apps else Client(server, **options)


def apps_client(server: Any, **options: Any) -> Client:
    """A client that negotiated MCP Apps, as Claude, ChatGPT or VS Code do."""
    return Client(server, extensions=[advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})], **options)


async def call(client: Client, name: str, **arguments: Any) -> types.CallToolResult:
    return await client.call_tool(name, arguments)


def error_text(result: types.CallToolResult) -> str:
    """The message of a tool call that must have failed."""
    assert result.is_error, result
    return result.content[0].text  # type: ignore[union-attr]


def until(condition: Callable[[], object], what: str, seconds: float = 20.0) -> None:
    """Wait for `condition()` to hold, failing the test (naming `what`) after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.02)


# --- services for the CLI (`main(argv, make_service=...)`) -------------------------------------------------------


def with_encoder(make_encoder: Callable[[], Any] = FakeEncoder) -> Callable[..., ClipSearch]:
    """The real service over a fresh `make_encoder()` instead of a model."""
    return lambda settings, **options: ClipSearch(settings, encoder=make_encoder(), **options)


def serving(service: ClipSearch) -> Callable[..., ClipSearch]:
    """This one service, whatever settings the command was given."""
    return lambda settings, **options: service


# --- python in a child process -------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
IMPORTED = "print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)), file=sys.stderr)"


def run_python(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python *args` in a child process with `env` (default: this one's), its output captured as text."""
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=check
    )


def clipsearch(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m server *args`: the command as a person runs it."""
    return run_python("-m", "server", *args, env=env)


def clipsearch_imports(
    *args: str, env: Mapping[str, str], modules: tuple[str, ...] = ("torch", "transformers")
) -> subprocess.CompletedProcess[str]:
    """The command run in a child process that then lists, as JSON on stderr's last line, which of `modules` it
    imported (read it with `imported`)."""
    probe = (
        "import sys, json; from server.cli.main import main; code = main(sys.argv[1:]); "
        f"{IMPORTED.format(modules=modules)}; sys.exit(code)"
    )
    return run_python("-c", probe, *args, env=env)


def imported(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The modules a `clipsearch_imports` run imported."""
    import json

    return json.loads(done.stderr.strip().splitlines()[-1])
