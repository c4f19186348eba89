"""Search results as the tools return them: each hit with what the catalog knows of its image and, when text has been
read in the photo, a snippet of that text (at most 300 characters, around the match) with the places the query's
words match marked as [start, end) offsets of the snippet. The texts of a page's hits are read in one query."""

from collections.abc import Callable, Sequence
from typing import Any

from server.results import Moment, SearchHit, SearchResponse
from server.store.collection import Collection, Hit
from server.store.hits import path_text
from server.store.text_search import FoldedText, excerpt, texts_by_id

Spans = Callable[[FoldedText], list[tuple[int, int]]]
"""Where a photo's text matches what was asked of it, as spans of its folded form."""


def word_spans(words: Sequence[str]) -> Spans:
    """Every place any of the folded `words` occurs (how the `text` filter matches them: as substrings)."""

    def spans(text: FoldedText) -> list[tuple[int, int]]:
        return [span for word in words for span in text.occurrences(word)]

    return spans


def sorted_by(hits: list[Hit], sort: str) -> list[Hit]:
    """The relevant hits in the order asked: as ranked ('score'), or newest ('taken') or oldest ('taken_asc') first,
    images without a date last."""
    if sort == "score":
        return hits
    newest = sort == "taken"
    dated = sorted((h for h in hits if h.taken_utc is not None), key=lambda h: h.taken_utc or 0.0, reverse=newest)
    return dated + [h for h in hits if h.taken_utc is None]


def _video_fields(hit: Hit) -> dict[str, Any]:
    if not hit.is_video:
        return {}
    return {
        "kind": "video",
        "time_seconds": hit.time_seconds,
        "duration_seconds": None if hit.duration is None else round(hit.duration, 3),
        "other_moments": [Moment(time_seconds=m.time_seconds, score=round(m.score, 6)) for m in hit.other_moments],
    }


def search_response(
    collection: Collection,
    query: str,
    hits: Sequence[Hit],
    also: dict[int, int] | None = None,
    offset: int = 0,
    spans: Spans | None = None,
) -> SearchResponse:
    """The page of `hits` (ranked from `offset` + 1) as a `SearchResponse`; `also` counts the near-duplicates each
    stands for, `spans` says where each text matches (nowhere: its start is shown, nothing marked)."""
    spans = spans or word_spans(())
    texts = texts_by_id(collection.query, [hit.id for hit in hits]) if hits else {}
    results = []
    for rank, hit in enumerate(hits, start=offset + 1):
        snippet: str | None = None
        marks: list[list[int]] | None = None
        stored = texts.get(hit.id)
        if stored is not None and stored.text.lines:
            folded = FoldedText.of(stored.text.text)
            if folded.flat:
                snippet, marks = excerpt(folded, spans(folded))
        results.append(
            SearchHit(
                rank=rank,
                path=path_text(hit.path),
                score=round(hit.score, 6),
                taken=hit.taken,
                taken_source=hit.taken_source,
                width=hit.width or None,
                height=hit.height or None,
                camera=hit.camera,
                latitude=hit.latitude,
                longitude=hit.longitude,
                also=(also or {}).get(hit.id),
                text=snippet,
                text_marks=marks,
                **_video_fields(hit),
            )
        )
    return SearchResponse(collection=collection.name, query=query, results=results)
