"""Which images are relevant to which query: from folder labels, or from a JSON file the user writes.

Queries refer to images by their row in one snapshot of the collection (`Collection.all_vectors()` order).
"""

import json
import os
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from server.errors import GroundTruthError, InvalidArgument
from server.limits import DEFAULT_TEMPLATE
from server.paths import UNCONFINED, PathGuard

MAX_REPORTED = 50


@dataclass(frozen=True)
class TextQuery:
    text: str
    relevant: list[int]


@dataclass(frozen=True)
class ImageQuery:
    path: Path
    relevant: list[int]
    row: int | None  # the query's own row when it is in the collection: never counted as a result


@dataclass
class GroundTruth:
    source: str
    text_queries: list[TextQuery] = field(default_factory=list)
    image_queries: list[ImageQuery] = field(default_factory=list)
    skipped_text: list[str] = field(default_factory=list)
    skipped_image: list[str] = field(default_factory=list)
    unknown_paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # per row, for plots; None when unlabelled


def label_text(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text query for a label: its last folder name, underscores and dashes as spaces."""
    name = label.rsplit("/", 1)[-1]
    return template.format(label=name.replace("_", " ").replace("-", " "))


def folder_label(path: Path, roots: Sequence[Path]) -> str | None:
    """The parent folder relative to the outermost indexed folder holding the image; None directly in a root."""
    for root in roots:
        if path.is_relative_to(root):
            parent = path.parent.relative_to(root)
            return parent.as_posix() if parent.parts else None
    return path.parent.name or None


def check_template(template: str) -> str:
    """A template is text with '{label}' placeholders only (no other fields, conversions or format specs)."""
    if "{label}" not in template:
        raise InvalidArgument("The text template must contain '{label}', e.g. 'a photo of a {label}'.")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as exc:
        raise InvalidArgument(f"The text template {template!r} is not usable: {exc}") from exc
    if any(name is not None and (name != "label" or spec or conversion) for name, spec, conversion in fields):
        raise InvalidArgument(
            f"The text template {template!r} is not usable: its only placeholder may be '{{label}}' "
            "(write '{{' for a literal brace)."
        )
    return template


def from_folders(paths: Sequence[Path], roots: Sequence[Path], template: str = DEFAULT_TEMPLATE) -> GroundTruth:
    """Labels from folders: one text query per label, every image of a label with others is an image query."""
    check_template(template)
    truth = GroundTruth(source="folders")
    truth.labels = [folder_label(p, roots) for p in paths]
    members: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(truth.labels):
        if label is None:
            truth.skipped_image.append(f"{paths[row]}: not inside a subfolder, so it has no label")
        else:
            members[label].append(row)
    for label in sorted(members):
        rows = members[label]
        truth.text_queries.append(TextQuery(label_text(label, template), rows))
        if len(rows) < 2:
            truth.skipped_image.append(f"{paths[rows[0]]}: the only image labelled '{label}'")
            continue
        for row in rows:
            truth.image_queries.append(ImageQuery(paths[row], [r for r in rows if r != row], row))
    if not members:
        raise GroundTruthError("No image lies in a labelled subfolder; 'folders' needs images in subfolders.")
    return truth


class _TextEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    relevant: list[str]


class _ImageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    relevant: list[str]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text_queries: list[_TextEntry] = []
    image_queries: list[_ImageEntry] = []


def from_json(file: Path, paths: Sequence[Path], guard: PathGuard = UNCONFINED) -> GroundTruth:
    """Queries and their relevant images from a JSON file; paths are relative to the file or absolute.

    Relevant paths missing from the collection are reported, not fatal; a query left with none is skipped.
    """
    if "\0" in str(file):
        raise GroundTruthError("The ground-truth path contains a NUL character.")
    checked = guard.check(file)
    try:
        data = json.loads(checked.read_text(encoding="utf-8"))
        spec = _File.model_validate(data)
    except FileNotFoundError as exc:
        raise GroundTruthError(f"Ground-truth file '{file}' does not exist.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"Cannot read ground-truth file '{file}': {exc}") from exc
    except json.JSONDecodeError as exc:
        raise GroundTruthError(f"Ground-truth file '{file}' is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise GroundTruthError(f"Ground-truth file '{file}' is nested too deeply to be a ground-truth file.") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise GroundTruthError(
            f"Ground-truth file '{file}' does not match the expected shape "
            '{"text_queries": [{"query": ..., "relevant": [...]}], "image_queries": [{"image": ..., "relevant": '
            f"[...]}}]}}: {problems}"
        ) from exc
    if not spec.text_queries and not spec.image_queries:
        raise GroundTruthError(f"Ground-truth file '{file}' holds no queries.")
    base = checked.parent
    rows = {p: i for i, p in enumerate(paths)}
    truth = GroundTruth(source=str(checked), labels=[None] * len(paths))
    unknown: dict[str, None] = {}

    def locate(entry: str) -> Path | None:
        """The resolved path an entry names, or None when it cannot name a file (e.g. a NUL character)."""
        try:
            return Path(os.path.realpath(base / entry))
        except (ValueError, OSError):
            return None

    def resolve(entries: list[str]) -> list[int]:
        found = []
        for entry in entries:
            path = locate(entry)
            if path is not None and path in rows:
                found.append(rows[path])
            else:
                unknown[entry] = None
        return sorted(set(found))

    for text_entry in spec.text_queries:
        relevant = resolve(text_entry.relevant)
        if not text_entry.query.strip():
            truth.skipped_text.append("a text query is empty")
        elif relevant:
            truth.text_queries.append(TextQuery(text_entry.query.strip(), relevant))
        else:
            truth.skipped_text.append(f"{text_entry.query!r}: none of its relevant images is in the collection")
    for image_entry in spec.image_queries:
        image = locate(image_entry.image)
        if image is None:
            truth.skipped_image.append(f"{image_entry.image!r}: not a usable path")
            continue
        own = rows.get(image)
        relevant = [r for r in resolve(image_entry.relevant) if r != own]
        if relevant:
            truth.image_queries.append(ImageQuery(image, relevant, own))
        else:
            truth.skipped_image.append(f"{image_entry.image}: no relevant image other than itself is in the collection")
    truth.unknown_paths = list(unknown)
    return truth
