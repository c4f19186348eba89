"""Where collections live, which model to use, which folders the server may read: from arguments, then env."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
ENV_MODEL = "CLIPSEARCH_MODEL"
ENV_INDEX_DIR = "CLIPSEARCH_INDEX_DIR"
ENV_ROOTS = "CLIPSEARCH_ROOTS"
ENV_ENGINE = "CLIPSEARCH_ENGINE"


def default_index_dir() -> Path:
    """The checkout's `index_data/` when running from a checkout, else a per-user data folder.

    Found from the package's location, not the working directory: MCP clients start servers from arbitrary folders.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "index_data").is_dir():
        return checkout / "index_data"
    from platformdirs import user_data_path

    return user_data_path("clipsearch", appauthor=False) / "index_data"


def resolve_model_name(model: str) -> str:
    """A local checkpoint folder is recorded by its absolute path; a hub name stays as given."""
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return str(candidate.resolve())
    return model


@dataclass(frozen=True)
class Settings:
    index_dir: Path
    model: str
    roots: tuple[Path, ...] = ()
    engine: str = "auto"  # auto: ONNX Runtime on CPU, torch on CUDA (see onnx_engine.resolve_engine)

    @classmethod
    def load(
        cls,
        model: str | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        roots: Sequence[str | os.PathLike[str]] | None = None,
        engine: str | None = None,
    ) -> "Settings":
        """Explicit arguments win over the environment, which wins over defaults."""
        chosen_model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        chosen_dir = index_dir or os.environ.get(ENV_INDEX_DIR)
        directory = Path(chosen_dir).expanduser().resolve() if chosen_dir else default_index_dir()
        if roots:
            root_list = [str(r) for r in roots]
        else:
            root_list = [r for r in os.environ.get(ENV_ROOTS, "").split(os.pathsep) if r.strip()]
        resolved_roots = tuple(Path(r).expanduser().resolve() for r in root_list)
        chosen_engine = engine or os.environ.get(ENV_ENGINE) or "auto"
        return cls(
            index_dir=directory, model=resolve_model_name(chosen_model), roots=resolved_roots, engine=chosen_engine
        )
