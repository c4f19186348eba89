"""Pydantic result models shared by the MCP tools and the CLI's --json output."""

import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def _printable(text: str) -> str:
    # File names need not be UTF-8; JSON must be. Undecodable bytes are shown as \xNN escapes.
    if any("\udc80" <= c <= "\udcff" for c in text):
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


PathText = Annotated[str, AfterValidator(_printable)]


class Failure(BaseModel):
    path: PathText = Field(description="File that was skipped")
    reason: str = Field(description="Why it could not be indexed")


class IndexReport(BaseModel):
    collection: str
    folder: PathText
    indexed_total: int = Field(description="Images in the collection after this run")
    added: int = Field(description="New files embedded (or given the vector of identical content)")
    updated: int = Field(description="Known paths whose content changed")
    moved: int = Field(description="Files renamed or moved; their vectors were reused, not re-embedded")
    unchanged: int
    removed: int = Field(description="Catalogued files under the folder that no longer exist")
    failed: int
    failures: list[Failure] = Field(description="The first 50 failures")
    embedded: int = Field(description="Images that went through the model in this run")
    seconds: float
    images_per_second: float = Field(description="Embedded images per second of wall time")


class SearchHit(BaseModel):
    rank: int = Field(ge=1)
    path: PathText
    score: float = Field(description="Cosine similarity between query and image, in [-1, 1]")


class SearchResponse(BaseModel):
    collection: str
    query: PathText = Field(description="The text query, or the query image's path")
    results: list[SearchHit] = Field(description="Best first")


class DirectionMetrics(BaseModel):
    map: float = Field(description="Mean average precision over the full ranking of the collection")
    recall_at: dict[int, float] = Field(description="Mean fraction of a query's relevant images in its top k")
    queries: int = Field(description="Queries evaluated")
    skipped: int = Field(description="Queries skipped because they have no relevant image besides themselves")


class EvaluationReport(BaseModel):
    collection: str
    ground_truth: str
    images: int
    labels: int
    text_template: str
    text_to_image: DirectionMetrics
    image_to_image: DirectionMetrics


class CollectionInfo(BaseModel):
    name: str
    images: int
    model: str
    dim: int
    index_type: str


class CollectionList(BaseModel):
    index_dir: str
    collections: list[CollectionInfo]
