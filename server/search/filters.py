"""Search filters as one typed value: checked once, turned into catalog SQL (which picks the ids a FAISS selector
then searches among) and a place test. Also how results are ordered and paged.

Dates: a bound given as a date covers that whole day (`taken_after=2024-06-01, taken_before=2024-06-30` is all of
June); a datetime is exact (after inclusive, before exclusive). A bound without an offset compares with a photo's
local time as written; a bound with an offset compares instants (a photo without an offset is then read as UTC).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from server.errors import InvalidArgument
from server.limits import LATITUDE, LONGITUDE, MAX_TEXT_FILTER_CHARS, MEDIA, MIN_SCORE, OFFSET, RADIUS_KM, SORTS
from server.store.schema import under_folder
from server.store.text_search import contains_pattern, match_sql, words_of

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class TimeBound:
    """One end of a date range: local wall-clock text (no offset given) or an instant (offset given)."""

    local: str | None = None  # YYYY-MM-DDTHH:MM:SS.ffffff
    utc: float | None = None

    @classmethod
    def parse(cls, text: str, name: str, end: bool) -> "TimeBound":
        value = text.strip()
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                start = datetime.combine(day + timedelta(days=1) if end else day, datetime.min.time())
                return cls(local=start.isoformat(timespec="microseconds"))
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidArgument(
                f"{name} must be an ISO 8601 date or date and time (e.g. 2024-06-01 or 2024-06-01T18:30:00+02:00), "
                f"got {text!r}."
            ) from exc
        if moment.tzinfo is None:
            return cls(local=moment.isoformat(timespec="microseconds"))
        return cls(utc=moment.timestamp())

    def as_utc(self) -> float:
        """For comparing two bounds of different kinds: local time read as UTC, as photos without offsets are."""
        if self.utc is not None:
            return self.utc
        return datetime.fromisoformat(str(self.local)).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class SearchFilter:
    """Which images a search may return. Empty means all."""

    folder: Path | None = None
    taken_after: TimeBound | None = None
    taken_before: TimeBound | None = None
    near: tuple[float, float] | None = None
    radius_km: float | None = None
    camera: str | None = None
    text: str | None = None  # words the photo's recognised text holds (store/text_search.py)
    media: str = "all"  # limits.MEDIA: photos and videos, photos only, or videos only

    @classmethod
    def parse(
        cls,
        folder: Path | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        near: tuple[float, float] | None = None,
        radius_km: float | None = None,
        camera: str | None = None,
        text: str | None = None,
        media: str = "all",
    ) -> "SearchFilter":
        """Check and normalise the caller's values (the folder is checked against the roots by the caller)."""
        after = TimeBound.parse(taken_after, "taken_after", end=False) if taken_after else None
        before = TimeBound.parse(taken_before, "taken_before", end=True) if taken_before else None
        if after and before and after.as_utc() >= before.as_utc():
            raise InvalidArgument(f"taken_after ({taken_after}) must be before taken_before ({taken_before}).")
        if near is not None:
            latitude, longitude = near
            if not (LATITUDE.allows(latitude) and LONGITUDE.allows(longitude)):
                raise InvalidArgument(
                    f"near must be a latitude in [-90, 90] and a longitude in [-180, 180], got {latitude}, {longitude}."
                )
            if radius_km is None:
                raise InvalidArgument("near needs radius_km, the distance in kilometres around that place.")
        if radius_km is not None:
            if near is None:
                raise InvalidArgument("radius_km needs near, the place to measure from.")
            RADIUS_KM.check(radius_km)
        wanted = camera.strip() if camera else None
        if text is not None:
            if len(text) > MAX_TEXT_FILTER_CHARS:
                raise InvalidArgument(f"text is at most {MAX_TEXT_FILTER_CHARS} characters, got {len(text)}.")
            if not words_of(text):
                raise InvalidArgument("text needs at least one word to look for in the photos' recognised text.")
        if media not in MEDIA:
            raise InvalidArgument(f"media must be one of {', '.join(MEDIA)}, got {media!r}.")
        return cls(folder, after, before, near, radius_km, wanted or None, text, media)

    @property
    def active(self) -> bool:
        values = (self.folder, self.taken_after, self.taken_before, self.near, self.camera, self.text)
        return any(v is not None for v in values) or self.media != "all"

    def sql(self, cameras: Sequence[str] | None = None) -> tuple[str, list[Any]]:
        """A WHERE clause over the catalog's `images` table (indexed columns first) and its parameters. Given the
        collection's distinct `cameras`, the camera filter becomes an indexed `IN` over the names that match, not a
        pattern scan of every row."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.folder is not None:
            clause, bounds = under_folder(self.folder)
            clauses.append(clause)
            params += bounds
        for bound, op in ((self.taken_after, ">="), (self.taken_before, "<")):
            if bound is not None:
                column, value = ("taken_local", bound.local) if bound.local is not None else ("taken_utc", bound.utc)
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if self.near is not None and self.radius_km is not None:
            latitude, longitude = self.near
            spread = math.degrees(self.radius_km / EARTH_RADIUS_KM)
            clauses.append("latitude BETWEEN ? AND ?")
            params += [latitude - spread, latitude + spread]
            shrink = math.cos(math.radians(min(89.9, abs(latitude) + spread)))
            lon_spread = spread / shrink if shrink > 0 else 360.0
            if lon_spread < 180 and longitude - lon_spread >= -180 and longitude + lon_spread <= 180:
                clauses.append("longitude BETWEEN ? AND ?")
                params += [longitude - lon_spread, longitude + lon_spread]
            else:
                clauses.append("longitude IS NOT NULL")
        if self.camera is not None and cameras is not None:
            matching = [name for name in cameras if self.camera.casefold() in name.casefold()]
            clauses.append(f"camera IN ({', '.join('?' * len(matching))})" if matching else "0")
            params += matching
        elif self.camera is not None:
            clauses.append("camera LIKE ? ESCAPE '\\'")
            params.append(contains_pattern(self.camera))
        if self.text is not None:
            clause, words = match_sql(words_of(self.text))
            clauses.append(clause)
            params += words
        if self.media != "all":
            clauses.append("kind IS NULL" if self.media == "photos" else "kind = 'video'")
        return " AND ".join(clauses) or "1", params

    def keeps_place(self, latitude: float | None, longitude: float | None) -> bool:
        """The exact great-circle test behind the SQL bounding box."""
        if self.near is None or self.radius_km is None:
            return True
        if latitude is None or longitude is None:
            return False
        return distance_km(self.near, (latitude, longitude)) <= self.radius_km


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle (haversine) distance between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class ResultOrder:
    """What happens to the relevant results: a score floor, the order, and the page."""

    min_score: float | None = None
    sort: str = "score"
    offset: int = 0
    diverse: bool = False  # near-duplicates folded into the best of them (duplicates.collapse)

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise InvalidArgument(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}.")
        OFFSET.check(self.offset)
        if self.min_score is not None and not MIN_SCORE.allows(self.min_score):
            raise InvalidArgument(f"min_score must be a cosine similarity in [-1, 1], got {self.min_score}.")
