"""Images ranked by how well the text read in them matches a query (`search_text_in_images`): "what's the code in
that screenshot" answered from the catalog, without looking at any image.

The query and each photo's text are compared folded (store/text_search.py: no case, no accents). A photo's score, in
[0, 1], says how its text holds the query:

- 1.0: the query as written, as whole words ("lh 1234" in "Flight LH 1234");
- 0.95: the query as written, inside longer words ("1234" in "LH 12345");
- 0.9: the query with the spaces and punctuation between its letters ignored, as whole words, the way OCR slips or
  people write ("lh1234" finds "LH 1234" and "LH-1234", "wi fi password" finds "WiFi Password");
- 0.85: the same inside longer words;
- 0.8: every word of the query, apart or in another order;
- under 0.7: 0.7 × the share of the query's letter triples (spaces and punctuation ignored) found together in one
  stretch of the text about as long as the query: "passw0rd" against "Password" shares 3 of 6, 0.35.

Photos under the minimum score (DEFAULT_MIN_TEXT_SCORE, 0.35: half the triples) are left out; equal scores are
ordered newest first (capture time; photos without one last).

Candidates come from the catalog's FTS5 trigram index, never from reading every text: the photos holding every word
(as the `text` filter matches them), newest first, and those sharing the most of the query's triples, with and
without its spaces (FTS5's bm25 over the triples), CANDIDATES of each, more when paging deep; the other filters apply
in the same queries. A query of fewer than three letters (spaces ignored) has no triples: only photos holding every
word are candidates, and a photo sharing few of a long query's triples with thousands of others may be missed.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidArgument
from server.limits import DEFAULT_MIN_TEXT_SCORE, MAX_TEXT_FILTER_CHARS, TEXT_SCORE, TOP_K
from server.results import SearchResponse
from server.search.filters import ResultOrder, SearchFilter
from server.search.hits import search_response, sorted_by, word_spans
from server.store.collection import Collection, Hit
from server.store.schema import METADATA_COLUMNS
from server.store.text_search import FoldedText, match_sql, words_of

CANDIDATES = 500  # photos taken from each of the two candidate queries (twice the page's depth when deeper)
MAX_OCCURRENCES = 64  # of one triple in one text, looked at for the best stretch: a page of text has fewer
PARTIAL_WEIGHT = 0.7  # the most a photo holding only part of the query scores
_GAP = r"[\W_]{0,3}"  # what may stand between two letters when spaces and punctuation are ignored
_NOT_LETTERS = re.compile(r"[\W_]+")
_LETTER = re.compile(r"[^\W_]")
_COLUMNS = ", ".join(f"images.{c}" for c in ("id", "path", "width", "height", *METADATA_COLUMNS))
_PLACE = slice(4 + METADATA_COLUMNS.index("latitude"), 4 + METADATA_COLUMNS.index("longitude") + 1)  # of a row

Span = tuple[int, int]


@dataclass(frozen=True)
class TextQuery:
    """A query for text in photos, folded, with what it is matched with."""

    folded: str  # the words, one space apart
    words: tuple[str, ...]
    letters: str  # the words without spaces or punctuation
    triples: tuple[str, ...]  # distinct three-letter pieces of `letters`, in order
    phrase_whole: re.Pattern[str]
    joined: re.Pattern[str] | None  # the letters, with spaces or punctuation between them or not
    joined_whole: re.Pattern[str] | None
    word_patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def parse(cls, query: str) -> "TextQuery":
        """Check and fold the query: at most MAX_TEXT_FILTER_CHARS characters, at least one word."""
        if len(query) > MAX_TEXT_FILTER_CHARS:
            raise InvalidArgument(
                f"The query is {len(query)} characters long; text in photos is searched for at most "
                f"{MAX_TEXT_FILTER_CHARS} (a few words from it are enough)."
            )
        words = tuple(words_of(query))
        if not words:
            raise InvalidArgument("The query is empty; give the words to look for in the photos' text.")
        folded = " ".join(words)
        letters = _NOT_LETTERS.sub("", folded)
        joined = _GAP.join(re.escape(c) for c in letters) if letters else None
        return cls(
            folded=folded,
            words=words,
            letters=letters,
            triples=tuple(dict.fromkeys(letters[i : i + 3] for i in range(len(letters) - 2))),
            phrase_whole=re.compile(_whole(re.escape(folded), folded)),
            joined=re.compile(joined) if joined else None,
            joined_whole=re.compile(_whole(joined, letters)) if joined else None,
            word_patterns=tuple(
                re.compile(_GAP.join(re.escape(c) for c in _NOT_LETTERS.sub("", w)) or re.escape(w)) for w in words
            ),
        )

    def score(self, text: str) -> float:
        """How well the folded `text` holds the query, in [0, 1] (the module's docstring says what each value means)."""
        return self._match(text, spans=False)[0]

    def spans(self, text: FoldedText) -> list[Span]:
        """Where the query matches, as spans of the text's folded form."""
        return self._match(text.folded, spans=True)[1]

    def _match(self, text: str, spans: bool) -> tuple[float, list[Span]]:
        if self.folded in text:
            score = 1.0 if self.phrase_whole.search(text) else 0.95
            return score, _occurrences(text, self.folded) if spans else []
        if self.joined is not None and self.joined_whole is not None and self.joined.search(text):
            score = 0.9 if self.joined_whole.search(text) else 0.85
            return score, [m.span() for m in self.joined.finditer(text)] if spans else []
        if all(pattern.search(text) for pattern in self.word_patterns):
            return 0.8, [m.span() for p in self.word_patterns for m in p.finditer(text)] if spans else []
        if not self.triples:
            return 0.0, []
        letters = _NOT_LETTERS.sub("", text)
        found_together, start, end = self._best_stretch(letters)
        score = round(PARTIAL_WEIGHT * found_together / len(self.triples), 6)  # 0.35, not 0.34999999999999998
        if not spans or not found_together:
            return score, []
        kept = [m.start() for m in _LETTER.finditer(text)]  # where each of `letters` stands in `text`
        return score, [(kept[start], kept[end - 1] + 1)]

    def _best_stretch(self, letters: str) -> tuple[int, int, int]:
        """The most distinct triples of the query found in one stretch of `letters` at most a third longer than the
        query, and that stretch's start and end."""
        places: list[tuple[int, int]] = []
        for number, triple in enumerate(self.triples):
            at, seen = letters.find(triple), 0
            while at >= 0 and seen < MAX_OCCURRENCES:
                places.append((at, number))
                at, seen = letters.find(triple, at + 1), seen + 1
        places.sort()
        reach = len(self.letters) - 3 + max(2, len(self.letters) // 3)  # the furthest apart two triples may start
        inside: dict[int, int] = {}
        best, left = (0, 0, 0), 0
        for at, number in places:
            inside[number] = inside.get(number, 0) + 1
            while at - places[left][0] > reach:
                dropped = places[left][1]
                inside[dropped] -= 1
                if not inside[dropped]:
                    del inside[dropped]
                left += 1
            if len(inside) > best[0]:
                best = (len(inside), places[left][0], at + 3)
        return best


def search_texts(
    collection: Collection,
    query: str,
    k: int = 10,
    filters: SearchFilter | None = None,
    order: ResultOrder | None = None,
) -> SearchResponse:
    """The k images whose recognised text best matches `query`, best first (equal scores newest first), among those
    the filters let through; `order.min_score` (default DEFAULT_MIN_TEXT_SCORE) is a text-match score here."""
    TOP_K.check(k)
    wanted = TextQuery.parse(query)
    order = order or ResultOrder()
    if order.diverse:
        raise InvalidArgument("diverse is not offered for text in photos; it folds look-alikes, not texts.")
    least = TEXT_SCORE.check(DEFAULT_MIN_TEXT_SCORE if order.min_score is None else order.min_score)
    filters = filters or SearchFilter()
    need = order.offset + k
    ranked: list[Hit] = []
    for row in _candidates(collection, wanted, filters, max(CANDIDATES, 2 * need)).values():
        score = wanted.score(row[-1])
        if score >= least and score > 0:
            image_id, path, *details = row[:-1]
            ranked.append(Hit(score, image_id, Path(os.fsdecode(path)), *details))
    ranked.sort(key=lambda h: (-h.score, h.taken_utc is None, -(h.taken_utc or 0.0), -h.id))
    page = sorted_by(ranked[:need], order.sort)[order.offset : need]
    extra = words_of(filters.text) if filters.text else []
    marks = word_spans(extra)
    return search_response(
        collection, " ".join(query.split()), page, {}, order.offset, lambda text: wanted.spans(text) + marks(text)
    )


def _candidates(
    collection: Collection, wanted: TextQuery, filters: SearchFilter, limit: int
) -> dict[int, tuple[Any, ...]]:
    """The photos worth scoring, by id: their catalog details, then their folded text."""
    where, params = filters.sql(collection.cameras() if filters.camera else None)
    keep = filters.keeps_place if filters.near else None
    every_word, word_params = match_sql(wanted.words)
    rows = collection.query(
        f"SELECT {_COLUMNS}, (SELECT body FROM text_search WHERE rowid = images.id) FROM images "
        f"WHERE {every_word} AND ({where}) ORDER BY images.taken_utc DESC, images.id DESC LIMIT ?",
        [*word_params, *params, limit],
    )
    triples = list(dict.fromkeys([*wanted.triples, *_triples(wanted.folded)]))
    if wanted.triples:
        rows += collection.query(
            f"SELECT {_COLUMNS}, text_search.body FROM text_search JOIN images ON images.id = text_search.rowid "
            f"WHERE text_search MATCH ? AND ({where}) ORDER BY bm25(text_search) LIMIT ?",
            [" OR ".join('"' + t.replace('"', '""') + '"' for t in triples), *params, limit],
        )
    return {row[0]: row for row in rows if row[-1] is not None and (keep is None or keep(*row[_PLACE]))}


def _triples(text: str) -> list[str]:
    return [text[i : i + 3] for i in range(len(text) - 2)]


def _occurrences(text: str, needle: str) -> list[Span]:
    found, at = [], text.find(needle)
    while at >= 0:
        found.append((at, at + len(needle)))
        at = text.find(needle, at + len(needle))
    return found


def _whole(pattern: str, text: str) -> str:
    """`pattern` (matching `text`) as whole words: not preceded by a letter or digit where `text` starts with one,
    nor followed by one where it ends with one."""
    before = r"(?<!\w)" if re.match(r"\w", text) else ""
    after = r"(?!\w)" if re.search(r"\w$", text) else ""
    return f"{before}(?:{pattern}){after}"
