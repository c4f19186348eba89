"""The index directory: collections by name, opened (checking the model they were built with), created, listed."""

import re
from pathlib import Path

from server.errors import CollectionMismatch, CollectionNotFound, InvalidArgument
from server.limits import INDEX_TYPES
from server.models.identity import short
from server.store.collection import Collection
from server.store.manifest import MANIFEST, Manifest, load_manifest, write_manifest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_name(name: str) -> str:
    """Collection names become folder names: letters, digits, '.', '_', '-', no path tricks."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"Invalid collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (no path separators or '..')."
        )
    return name


class CollectionStore:
    """The index directory: opens, creates and lists collections, checking each manifest.

    `speaker` is how errors refer to the program using the store ("this command", "this server")."""

    def __init__(self, index_dir: Path, speaker: str = "this command") -> None:
        self.index_dir = index_dir
        self.speaker = speaker

    def exists(self, name: str) -> bool:
        return (self.index_dir / validate_name(name) / MANIFEST).is_file()

    def read_manifest(self, name: str) -> Manifest:
        folder = self.index_dir / validate_name(name)
        if not (folder / MANIFEST).exists():
            known = ", ".join(self.names()) or "none yet"
            raise CollectionNotFound(
                f"No collection named '{name}' in {self.index_dir} (collections: {known}). "
                "Index a folder into it first."
            )
        return load_manifest(folder, name)

    def open(
        self,
        name: str,
        model: str,
        dim: int | None = None,
        identity: str | None = None,
        family: str | None = None,
    ) -> Collection:
        """Open an existing collection, refusing one built with another model or dimension.

        A model is the same when its identity matches the recorded one, whatever it is called; without both
        identities (a version-1 collection, or a caller that knows only the name) the names must match."""
        manifest = self.read_manifest(name)
        if identity is not None and manifest.model_identity is not None:
            if identity != manifest.model_identity:
                raise CollectionMismatch(
                    f"Collection '{name}' was built with model '{manifest.model}' (weights "
                    f"{short(manifest.model_identity)}); {self.speaker} uses '{model}', a different checkpoint "
                    f"(weights {short(identity)}). Use the model the collection was built with, or another "
                    "collection name."
                )
        elif manifest.model != model:
            raise CollectionMismatch(
                f"Collection '{name}' was built with model '{manifest.model}' ({manifest.dim}-d); {self.speaker} "
                f"uses '{model}'. Use the same --model (a collection made before clipsearch recorded model "
                "identities opens under its model's name only, until its next indexing run), or another collection "
                "name."
            )
        if dim is not None and manifest.dim != dim:
            raise CollectionMismatch(
                f"Collection '{name}' holds {manifest.dim}-d vectors; the model '{model}' that {self.speaker} uses "
                f"makes {dim}-d vectors. Use the model the collection was built with, or another collection name."
            )
        return Collection(name, self.index_dir / name, manifest, identity, family)

    def create(
        self,
        name: str,
        model: str,
        dim: int,
        index_policy: str = "auto",
        identity: str | None = None,
        precision: str = "fp32",
        family: str | None = None,
    ) -> Collection:
        """Open the collection if it exists (checking its model), else create it."""
        folder = self.index_dir / validate_name(name)
        if (folder / MANIFEST).is_file():
            return self.open(name, model, dim, identity, family)
        folder.mkdir(parents=True, exist_ok=True)
        if index_policy not in INDEX_TYPES:
            raise InvalidArgument(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_policy!r}.")
        manifest = Manifest.new(model, dim, index_policy, identity, precision, family)
        write_manifest(folder, manifest)
        return Collection(name, folder, manifest, identity, family)

    def names(self) -> list[str]:
        if not self.index_dir.is_dir():
            return []
        return sorted(p.name for p in self.index_dir.iterdir() if (p / MANIFEST).is_file())
