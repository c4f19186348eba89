"""The search tools' parameters: their types, limits and descriptions, shared by both search tools."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from server.limits import (
    DEFAULT_MIN_TEXT_SCORE,
    LATITUDE,
    LONGITUDE,
    MAX_CAMERA_CHARS,
    MAX_QUERY_CHARS,
    MAX_TERMS,
    MAX_TEXT_FILTER_CHARS,
    MIN_SCORE,
    OFFSET,
    RADIUS_KM,
    TERM_WEIGHT,
    TEXT_SCORE,
    THUMBNAILS,
    TIME_SECONDS,
    TOP_K,
)

TopK = Annotated[int, Field(**TOP_K.schema(), description=f"Number of results, {TOP_K.least}-{TOP_K.most}")]
Thumbnails = Annotated[
    int, Field(**THUMBNAILS.schema(), description="Also return the top N hits as small JPEG images you can see")
]


class Place(BaseModel):
    latitude: float = Field(**LATITUDE.schema())
    longitude: float = Field(**LONGITUDE.schema())


FolderFilter = Annotated[
    str | None, Field(description="Only images under this folder (absolute path, inside the allowed folders)")
]
TakenAfter = Annotated[
    str | None,
    Field(
        description="Only photos taken on or after this ISO 8601 date or datetime; a date covers its whole day, "
        "without an offset it is the photo's local time, with one an instant"
    ),
]
TakenBefore = Annotated[
    str | None, Field(description="Only photos taken before this ISO 8601 datetime, or on or before this date")
]
Near = Annotated[Place | None, Field(description="Only photos taken within radius_km of this place (GPS)")]
RadiusKm = Annotated[float | None, Field(**RADIUS_KM.schema(), description="Distance around `near`, in kilometres")]
Camera = Annotated[
    str | None,
    Field(max_length=MAX_CAMERA_CHARS, description="Camera make/model contains this, any case (e.g. 'iphone')"),
]
Media = Annotated[
    Literal["all", "photos", "videos"],
    Field(description="'photos' or 'videos' only; 'all' (default) both: a video is found once, at its best moment"),
]
TimeSeconds = Annotated[
    float | None,
    Field(
        **TIME_SECONDS.schema(),
        description="With a video as the example: the moment to search from, in seconds (omitted: its first frame)",
    ),
]
TextFilter = Annotated[
    str | None,
    Field(
        max_length=MAX_TEXT_FILTER_CHARS,
        description="Only photos whose recognised text (OCR, read at indexing) holds every one of these words, any "
        "case or accents, parts of words too (e.g. 'lh 1234'); each result then shows that text, words marked",
    ),
]
MinScore = Annotated[
    float | None, Field(**MIN_SCORE.schema(), description="Drop results with a lower cosine similarity")
]
Sort = Annotated[
    Literal["score", "taken", "taken_asc"],
    Field(description="'score' (best first), 'taken' (the k most relevant, newest first) or 'taken_asc'"),
]
Offset = Annotated[int, Field(**OFFSET.schema(), description="Skip this many results (paging)")]

_TermText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
_TERMS = (
    f"(at most {MAX_TERMS - 1}; an optional weight prefix {TERM_WEIGHT.least:g}-{TERM_WEIGHT.most:g} "
    "like '2:' or '0.5:', default 1)"
)
AndTexts = Annotated[
    list[_TermText] | None,
    Field(max_length=MAX_TERMS - 1, description=f"Also like these texts, e.g. ['sunset', '2:night'] {_TERMS}"),
]
NotTexts = Annotated[
    list[_TermText] | None,
    Field(max_length=MAX_TERMS - 1, description=f"But not like these texts, e.g. ['people', 'grass'] {_TERMS}"),
]
AndImages = Annotated[
    list[_TermText] | None,
    Field(
        max_length=MAX_TERMS - 1,
        description=f"Also like these images (absolute paths inside the allowed folders) {_TERMS}",
    ),
]
NotImages = Annotated[
    list[_TermText] | None,
    Field(max_length=MAX_TERMS - 1, description=f"But not like these images (absolute paths) {_TERMS}"),
]
Diverse = Annotated[
    bool,
    Field(
        description="Fold near-duplicates (bursts, copies) into the best of them, each result saying how many it "
        "stands for in `also`, so one scene does not fill the page"
    ),
]
TextQuery = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TEXT_FILTER_CHARS,
        description="Words to find in the photos' text, as they would appear (e.g. 'wifi password', 'LH 1234')",
    ),
]
TextMinScore = Annotated[
    float,
    Field(
        **TEXT_SCORE.schema(),
        description=f"Drop results whose text matches less (default {DEFAULT_MIN_TEXT_SCORE}: about half the "
        "query's letters in one place; 0.8 and up: every word)",
    ),
]
