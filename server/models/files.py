"""Where a model's files come from: a local folder, the Hugging Face cache, or one download into that cache.

A cached model is used as it is, without touching the network: the hub library's own lookups retry an unreachable
hub with back-off for every file, which offline costs minutes per command. Only a model that is missing (or
incomplete) in the cache is fetched, once, after one metadata request with a short timeout, through the hub
library (its cache layout and file locks, so concurrent first runs do not corrupt the cache). Progress goes to a
`DownloadTracker`, which the CLI turns into a progress bar and the MCP server into log lines and notifications.
"""

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from server.atomic_files import write_atomically
from server.errors import InvalidArgument, ModelUnavailable, first_line

if TYPE_CHECKING:
    from server.paths import PathGuard

log = logging.getLogger(__name__)

METADATA_TIMEOUT_SECONDS = 5.0
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"  # transformers 5 saves the image processor under its "image_processor"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
OFFLINE_HELP = (
    "offline, point --model or CLIPSEARCH_MODEL at a local folder holding the checkpoint in Hugging Face format "
    "(config.json, weights, tokenizer and preprocessor_config.json or processor_config.json)"
)


@dataclass(frozen=True)
class ModelFiles:
    """A checkpoint on local disk: `folder` holds its config, weights, tokenizer and preprocessor config."""

    name: str
    folder: Path
    source: str  # "folder", "cache" or "download"


@dataclass(frozen=True)
class DownloadPlan:
    """What a first run fetches: files not yet cached, with their sizes in bytes."""

    model: str
    files: tuple[tuple[str, int], ...]
    cache_dir: Path

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        return (
            f"downloading the model {self.model} ({megabytes(self.total_bytes)} MB, {len(self.files)} files) from "
            f"the Hugging Face hub into {self.cache_dir}; this happens once, later runs start from the cache"
        )


@dataclass(frozen=True)
class DownloadState:
    """A snapshot of the download in progress."""

    model: str
    done_bytes: int
    total_bytes: int

    def describe(self) -> str:
        return f"downloading the model {self.model}, {megabytes(self.done_bytes)} of {megabytes(self.total_bytes)} MB"


def megabytes(count: int) -> int:
    return round(count / 1_000_000)


class DownloadListener(Protocol):
    def started(self, plan: DownloadPlan) -> None: ...

    def advanced(self, state: DownloadState) -> None: ...

    def ended(self, state: DownloadState, ok: bool) -> None: ...


class DownloadTracker:
    """The state of the model download, if one is running, for whoever waits on it (thread-safe)."""

    def __init__(self, listeners: Sequence[DownloadListener] = ()) -> None:
        self._listeners = list(listeners)
        self._lock = threading.Lock()
        self._plan: DownloadPlan | None = None
        self._done = 0

    def state(self) -> DownloadState | None:
        """The running download, or None when nothing is being downloaded."""
        with self._lock:
            if self._plan is None:
                return None
            return DownloadState(self._plan.model, min(self._done, self._plan.total_bytes), self._plan.total_bytes)

    def start(self, plan: DownloadPlan) -> None:
        with self._lock:
            self._plan, self._done = plan, 0
        for listener in self._listeners:
            listener.started(plan)

    def advance(self, count: int) -> None:
        with self._lock:
            self._done += count
        state = self.state()
        if state is not None:
            for listener in self._listeners:
                listener.advanced(state)

    def end(self, ok: bool) -> None:
        state = self.state()
        with self._lock:
            self._plan = None
        if state is not None:
            for listener in self._listeners:
                listener.ended(state, ok)

    def bar_class(self) -> type:
        """A tqdm stand-in for the hub library: every byte it reports advances this tracker."""
        tracker = self

        class Bar:
            def __init__(self, *args: object, **kwargs: Any) -> None:
                self.n = 0
                self.total = kwargs.get("total")
                if initial := int(kwargs.get("initial") or 0):
                    self.update(initial)

            def update(self, n: float | None = 1) -> None:
                self.n += int(n or 0)
                tracker.advance(int(n or 0))

            def __enter__(self) -> "Bar":
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def __getattr__(self, name: str) -> Callable[..., None]:
                # close, refresh, set_postfix_str, update_transfer, ...: nothing to show here.
                return lambda *args, **kwargs: None

        return Bar


class LoggingListener:
    """Download progress as log lines (the MCP server's stderr): the plan, every tenth, the end."""

    def __init__(self) -> None:
        self._tenths = -1

    def started(self, plan: DownloadPlan) -> None:
        self._tenths = 0
        log.info("%s", plan.describe())

    def advanced(self, state: DownloadState) -> None:
        tenths = state.done_bytes * 10 // max(state.total_bytes, 1)
        if tenths > self._tenths:
            self._tenths = tenths
            log.info("%s", state.describe())

    def ended(self, state: DownloadState, ok: bool) -> None:
        if ok:
            log.info("downloaded the model %s (%d MB)", state.model, megabytes(state.total_bytes))
        else:
            log.warning("the download of the model %s stopped at %d MB", state.model, megabytes(state.done_bytes))


def quiet_hub() -> None:
    """The hub library logs through its own handler and, by default, through the root logger too (every line
    twice), and warns about retries a user cannot act on: keep its errors only, once."""
    import warnings

    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    hub_logging.disable_propagation()
    warnings.filterwarnings("ignore", module="huggingface_hub")


def missing_files(folder: Path) -> list[str]:
    """What a checkpoint folder lacks to be loaded (a broken link counts as missing)."""
    missing = [] if (folder / CONFIG).is_file() else [CONFIG]
    if not (folder / PREPROCESSOR).is_file() and not (folder / PROCESSOR).is_file():
        missing.append(f"the image processor's settings ({PREPROCESSOR} or {PROCESSOR})")
    if not weight_files(folder):
        missing.append("model weights (model.safetensors or pytorch_model.bin)")
    has_tokenizer = (folder / "tokenizer.json").is_file() or any(
        (folder / name).is_file() for name in ("spiece.model", "tokenizer.model", "sentencepiece.bpe.model")
    )
    if not has_tokenizer and not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        missing.append("tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    return missing


def image_processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's settings of a checkpoint: `preprocessor_config.json` as the hub has long served it, or
    the `image_processor` entry of `processor_config.json`, all that transformers 5's `save_pretrained` writes.
    ValueError naming the file when it is not JSON or holds no image processor with sizes, or both when neither is
    there."""
    for name, entry in ((PREPROCESSOR, None), (PROCESSOR, "image_processor")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"its {name} cannot be read as JSON ({first_line(exc)})") from exc
        if entry is not None:
            config = config.get(entry) if isinstance(config, dict) else None
            if config is None:
                raise ValueError(f"its {name} has no '{entry}' entry")
        if not isinstance(config, dict):
            raise ValueError(f"its {name} is not a JSON object" + (f" under '{entry}'" if entry else ""))
        if not isinstance(config.get("size"), dict | int):
            raise ValueError(f"its {name} gives the image processor no size")
        return config
    raise ValueError(f"it has neither {PREPROCESSOR} nor {PROCESSOR} (the image processor's settings)")


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would load from `folder`, single or sharded; [] if any is missing."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return []
            paths = [folder / shard for shard in shards]
            return paths if paths and all(p.is_file() for p in paths) else []
    return []


def locate(name: str, downloads: DownloadTracker | None = None) -> ModelFiles:
    """The local files of model `name` (a folder, or a hub id: from the cache, else downloaded once). A folder is
    an absolute path (the CLI makes a relative one absolute first): a relative name is a hub id, never a folder
    relative to wherever the server happens to run."""
    folder = Path(name).expanduser()
    if folder.is_absolute() and folder.is_dir():
        return _checked_folder(name, folder, "folder")
    if not _is_repo_id(name):
        raise ModelUnavailable(
            f"Cannot load the model '{name}': it is neither a folder nor a Hugging Face model id (owner/name). "
            f"Point --model or CLIPSEARCH_MODEL at a checkpoint folder or a hub model id."
        )
    cached, problem = _cached_snapshot(name)
    if cached is not None:
        return ModelFiles(name, cached, "cache")
    return ModelFiles(name, _download(name, problem, downloads or DownloadTracker()), "download")


def requested_model(name: str, guard: "PathGuard") -> str:
    """A model asked for by a client: a hub id as given, or a checkpoint folder, which must lie inside the allowed
    roots (a client must not make the server read arbitrary folders); the folder comes back resolved."""
    text = name.strip()
    if text.startswith(("/", "~", ".")):
        folder = guard.check(text)
        if not folder.is_dir():
            raise InvalidArgument(f"Model folder '{name}' does not exist or is not a folder.")
        return str(folder)
    if not _is_repo_id(text):
        raise InvalidArgument(
            f"Model '{name}' is neither a Hugging Face model id (owner/name, e.g. 'google/siglip2-base-patch16-224') "
            "nor the absolute path of a checkpoint folder."
        )
    return text


def find_local(name: str) -> ModelFiles | None:
    """The local files of model `name` without any network access: its folder, or its complete copy in the hub
    cache; None when it would have to be downloaded."""
    folder = Path(name).expanduser()
    if folder.is_absolute() and folder.is_dir():
        return _checked_folder(name, folder, "folder")
    if not _is_repo_id(name):
        return None
    cached, _ = _cached_snapshot(name)
    return ModelFiles(name, cached, "cache") if cached is not None else None


def _checked_folder(name: str, folder: Path, source: str) -> ModelFiles:
    try:
        missing = missing_files(folder)
    except PermissionError as exc:
        raise ModelUnavailable(f"Cannot read the model folder '{folder}': {exc.strerror}.") from exc
    if missing:
        raise ModelUnavailable(
            f"Cannot load the model '{name}': the folder {folder} lacks {', '.join(missing)}. Point --model or "
            "CLIPSEARCH_MODEL at a complete checkpoint folder in Hugging Face format."
        )
    return ModelFiles(name, folder.resolve(), source)


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def cache_dir() -> Path:
    """The hub cache folder in use (HF_HUB_CACHE, HF_HOME/hub, or ~/.cache/huggingface/hub), read at call time."""
    if explicit := os.environ.get("HF_HUB_CACHE"):
        return Path(explicit).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _storage(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _cached_snapshot(repo_id: str) -> tuple[Path | None, str]:
    """The cached snapshot of the main revision if complete; else None and what is wrong with the cache."""
    storage = _storage(repo_id)
    try:
        ref = storage / "refs" / "main"
        if not ref.is_file():
            return None, "it is not in the Hugging Face cache"
        snapshot = storage / "snapshots" / ref.read_text(encoding="utf-8").strip()
        missing = missing_files(snapshot) if snapshot.is_dir() else ["every file"]
        partial = sorted(p.name for p in (storage / "blobs").glob("*.incomplete"))
    except PermissionError as exc:
        raise ModelUnavailable(
            f"Cannot read the Hugging Face cache at {storage}: permission denied ({exc.filename}). Give your user "
            "read access to it, or point HF_HOME at a cache you can read."
        ) from exc
    if not missing:
        return snapshot, ""
    problem = f"its copy in the Hugging Face cache ({snapshot}) is incomplete: it lacks {', '.join(missing)}"
    if partial:
        problem += f"; {len(partial)} interrupted download(s) were left in {storage / 'blobs'}"
    return None, problem


def _download(repo_id: str, problem: str, downloads: DownloadTracker) -> Path:
    def unavailable(reason: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"Cannot load the model '{repo_id}': {reason}. The first run downloads it from the Hugging Face hub, "
            f"which needs the network once; {OFFLINE_HELP}."
        )

    if _offline():
        raise unavailable(f"{problem}, and HF_HUB_OFFLINE is set")
    quiet_hub()
    import httpx2
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=_endpoint()).model_info(repo_id, files_metadata=True, timeout=METADATA_TIMEOUT_SECONDS)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        reason = "the hub has no such model (or it is private)" if status in (401, 404) else first_line(exc)
        raise unavailable(f"{problem}, and {reason}") from exc
    except (httpx2.HTTPError, OSError) as exc:
        raise unavailable(f"{problem}, and the hub cannot be reached ({first_line(exc)})") from exc
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    wanted = _files_to_fetch(sizes)
    if not any(name in wanted for name in WEIGHT_FILES) and not any(".index.json" in name for name in wanted):
        raise ModelUnavailable(f"Cannot load the model '{repo_id}': its hub repository has no PyTorch weights.")
    snapshot = _storage(repo_id) / "snapshots" / str(info.sha)
    todo = tuple((name, sizes[name]) for name in wanted if not (snapshot / name).is_file())
    if not todo:  # every file is there already; only the main ref was missing
        _point_main_at(repo_id, str(info.sha))
        return snapshot
    plan = DownloadPlan(repo_id, todo, cache_dir())
    downloads.start(plan)
    ok = False
    try:
        for name, _ in todo:
            hf_hub_download(
                repo_id,
                name,
                revision=info.sha,
                cache_dir=cache_dir(),
                endpoint=_endpoint(),
                tqdm_class=downloads.bar_class(),
            )
        ok = True
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise unavailable(f"the download stopped ({first_line(exc)}); run the command again to resume it") from exc
    finally:
        downloads.end(ok)
    _point_main_at(repo_id, str(info.sha))
    cached, later_problem = _cached_snapshot(repo_id)
    if cached is None:
        raise unavailable(later_problem)
    return cached


def _point_main_at(repo_id: str, commit: str) -> None:
    """Record the revision just fetched as the cache's `main`, as the hub library's snapshot download does, so the
    next run finds it without asking (written atomically: a concurrent reader never sees half a hash)."""
    refs = _storage(repo_id) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    write_atomically(refs / "main", commit.encode("utf-8"))


def _files_to_fetch(sizes: dict[str, int]) -> list[str]:
    """The repository files a transformers dual encoder needs: config, preprocessor, tokenizer, one weight format."""
    wanted = [name for name in (CONFIG, PREPROCESSOR, PROCESSOR, *TOKENIZER_FILES) if name in sizes]
    for weights in WEIGHT_FILES:
        if weights in sizes:
            return [*wanted, weights]
        index = f"{weights}.index.json"
        if index in sizes:
            stem = weights.rsplit(".", 1)[0]
            shards = sorted(n for n in sizes if n.startswith(f"{stem}-") and n.endswith(weights.rsplit(".", 1)[1]))
            return [*wanted, index, *shards]
    return wanted
