"""A collection's `manifest.json`: its format version, model (name, identity and family), the precision of its
vectors, dimension, metric and index. Older versions are read, and migrated by the collection's first write."""

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.atomic_files import write_atomically
from server.errors import CollectionMismatch
from server.limits import OCR_POLICIES, PRECISIONS
from server.store.faiss_index import IndexSpec

MANIFEST = "manifest.json"
# 2: the manifest records the model's identity (content hash), not only its name; 3: and its vectors' precision;
# 4: and the model's family (clip, siglip, siglip2, metaclip2, ...); 5: and whether text in photos is read (ocr);
# 6: the index may be "ivfpq", an archive built on a cluster (store/ondisk_index.py), which release 5 cannot read
SCHEMA_VERSION = 6
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)  # older ones are migrated to 6 by the first write (Manifest.upgraded)


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    model: str
    dim: int
    metric: str
    index_type: str  # the index in use: "flat", "ivf", or an archive's "ivfpq"
    created: str
    index_policy: str = "auto"  # what the user asked for: "auto", "flat" or "ivf"
    index_params: dict[str, Any] = field(default_factory=dict)
    model_identity: str | None = None  # models/identity.py; None only in version-1 manifests
    precision: str = "fp32"  # of every vector in the collection (limits.PRECISIONS); versions 1-2 made fp32 only
    family: str | None = None  # models/families.py's key; None before version 4, or for a model without one
    ocr: str = "auto"  # limits.OCR_POLICIES: text read after a cheap first pass, in every image, or not at all

    @classmethod
    def new(
        cls,
        model: str,
        dim: int,
        index_policy: str = "auto",
        model_identity: str | None = None,
        precision: str = "fp32",
        family: str | None = None,
        ocr: str = "auto",
    ) -> "Manifest":
        # Every collection starts Flat; IVF needs vectors to train on, so it is built at the end of a write.
        created = datetime.now(UTC).isoformat()
        return cls(
            SCHEMA_VERSION,
            model,
            dim,
            "inner_product",
            "flat",
            created,
            index_policy,
            model_identity=model_identity,
            precision=precision,
            family=family,
            ocr=ocr,
        )

    @property
    def spec(self) -> IndexSpec:
        return IndexSpec(self.index_type, dict(self.index_params))

    def upgraded(self, identity: str | None, family: str | None = None) -> "Manifest | None":
        """This manifest migrated to the current version, or None if there is nothing to migrate (or no way to).
        Version 1 named its model only: the identity of the model now writing, opened under that same name, is
        recorded, so copies of it under other names open the collection from then on (without one, a version-1
        manifest stays as it is). Version 2 made fp32 vectors only, which is the precision it already reads as.
        Versions 1-3 did not record the family: that of the model now writing (the collection's own) is. Versions
        1-4 read no text in photos: they gain the default, `ocr` "auto", and their images are read by the next run."""
        recorded = self.model_identity or identity
        known = self.family or family
        if recorded is None or (self.schema_version == SCHEMA_VERSION and known == self.family):
            return None
        return replace(self, schema_version=SCHEMA_VERSION, model_identity=recorded, family=known)


def load_manifest(folder: Path, name: str) -> Manifest:
    """Read and check a collection's manifest.json."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionMismatch(f"Collection '{name}' has an unreadable manifest ({path}): {exc}") from exc
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise CollectionMismatch(
            f"Collection '{name}' uses format version {data.get('schema_version')}; this clipsearch reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Re-index into a new collection name, or update clipsearch."
        )
    required = ("schema_version", "model", "dim", "metric", "index_type", "created")
    optional = {
        key: data[key]
        for key in ("index_policy", "index_params", "model_identity", "precision", "family", "ocr")
        if key in data
    }
    if optional.get("precision", "fp32") not in PRECISIONS:
        raise CollectionMismatch(
            f"Collection '{name}' holds vectors of precision {optional['precision']!r}; this clipsearch knows "
            f"{', '.join(PRECISIONS)}. Update clipsearch, or re-index into a new collection name."
        )
    if optional.get("ocr", "auto") not in OCR_POLICIES:
        raise CollectionMismatch(
            f"Collection '{name}' asks for text reading {optional['ocr']!r}; this clipsearch knows "
            f"{', '.join(OCR_POLICIES)}. Update clipsearch, or set it again with --ocr."
        )
    return Manifest(**{key: data[key] for key in required}, **optional)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_atomically(folder / MANIFEST, json.dumps(asdict(manifest), indent=2).encode("utf-8"))
