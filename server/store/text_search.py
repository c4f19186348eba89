"""The text recognised in photos, as the catalog stores and matches it.

Each image read has one row in `texts` (the OCR model's identity, the text in reading order, its lines as JSON; an
empty text when none was found, so the image is not read again) and, when it has text, one in `text_search`, an FTS5
table with the trigram tokenizer over the text *folded*: compatibility-decomposed, accents and other combining marks
dropped, case-folded, runs of white space made one space. A query is folded the same way and each of its words
matched as a substring (a quoted FTS5 string, which the trigram index answers, for words of three characters or
more; `LIKE` for shorter ones), so "lh 1234" finds "Flight LH 1234", "creme" finds "Crème" and "北京" finds
"北京欢迎你". Words are bound as parameters, quoted (FTS) or escaped (`LIKE`): FTS syntax (`"`, `*`,
`NEAR`, `OR`) is matched literally.

SQLite 3.40 (Python 3.11's) has the trigram tokenizer but not its `remove_diacritics` option (3.45), hence the folding
here.
"""

import functools
import json
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.encoders.text_recognition import RecognisedText, TextLine
from server.store.schema import under_folder

SNIPPET_CHARS = 300
_SPACE = re.compile(r"\s+")
_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r")  # NUL and other controls dropped


@dataclass(frozen=True)
class StoredText:
    """What was read in one photo (lines in reading order, and a note on what was left unread), and by which model."""

    model: str
    text: RecognisedText


def fold(text: str) -> str:
    """The form texts are matched in: NFKD, combining marks dropped, case-folded, white space collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_CONTROL))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACE.sub(" ", bare.casefold()).strip()


def words_of(query: str) -> list[str]:
    """The folded words a `text` filter asks for (empty when there are none)."""
    return [word for word in fold(query).split(" ") if word]


def match_sql(words: Sequence[str]) -> tuple[str, list[Any]]:
    """A condition on `images.id`: the image's text holds every word, as a substring of its folded text. Words of
    three characters or more are one FTS5 `MATCH` of quoted strings (the trigram index); shorter ones a `LIKE` each
    (a scan of the matching rows)."""
    long_words = [w for w in words if len(w) >= 3]
    conditions, params = [], []
    if long_words:
        conditions.append("text_search MATCH ?")
        params.append(" ".join('"' + w.replace('"', '""') + '"' for w in long_words))
    for word in (w for w in words if len(w) < 3):
        conditions.append("body LIKE ? ESCAPE '\\'")
        params.append(contains_pattern(word))
    return f"id IN (SELECT rowid FROM text_search WHERE {' AND '.join(conditions)})", params


def text_json(text: RecognisedText) -> str:
    """The lines (text, 4-point box, confidence) and note as the catalog keeps them."""
    lines = [
        {"text": line.text, "box": [list(point) for point in line.box], "confidence": round(line.confidence, 4)}
        for line in text.lines
    ]
    return json.dumps({"lines": lines, "note": text.note}, ensure_ascii=False)


def text_from_json(raw: str) -> RecognisedText:
    stored = json.loads(raw)
    lines = tuple(
        TextLine(str(line["text"]), tuple((float(x), float(y)) for x, y in line["box"]), float(line["confidence"]))  # type: ignore[arg-type]
        for line in stored["lines"]
    )
    return RecognisedText(lines, stored.get("note"))


Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""`Collection.query`: rows of a read-only query on the catalog."""


def texts_by_id(query: Query, ids: Sequence[int]) -> dict[int, StoredText]:
    """What was read in each of `ids` that has been read, by id."""
    found: dict[int, StoredText] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        rows = query(f"SELECT id, model, lines FROM texts WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        for image_id, model, lines in rows:
            found[int(image_id)] = StoredText(model, text_from_json(lines))
    return found


def unread(query: Query, model: str) -> list[int]:
    """The images not read yet by `model` (never read, or read by another model), in id order."""
    rows = query(
        "SELECT images.id FROM images LEFT JOIN texts ON texts.id = images.id "
        "WHERE texts.id IS NULL OR texts.model != ? ORDER BY images.id",
        (model,),
    )
    return [int(row[0]) for row in rows]


@dataclass(frozen=True)
class Unread:
    """A catalogued image whose text is still to be read: its id, path and content hash as catalogued."""

    id: int
    path: Path
    hash: str


def unread_under(query: Query, models: Sequence[str], folder: Path, recursive: bool = True) -> list[Unread]:
    """The images under `folder` (directly in it, when not `recursive`) not read yet by any of `models` (never read,
    or read by another model), in id order."""
    clause, bounds = under_folder(folder)
    rows = query(
        "SELECT images.id, images.path, images.hash FROM images LEFT JOIN texts ON texts.id = images.id "
        f"WHERE (texts.id IS NULL OR texts.model NOT IN ({','.join('?' * len(models))})) AND {clause} "
        "AND images.kind IS NULL "  # photos only: a video's frames are not read for text
        "ORDER BY images.id",
        (*models, *bounds),
    )
    found = (Unread(int(image_id), Path(os.fsdecode(path)), str(content)) for image_id, path, content in rows)
    return [item for item in found if recursive or item.path.parent == folder]


@functools.lru_cache(maxsize=65_536)
def _folded_char(character: str) -> str:
    return " " if character == " " else fold(character)


@dataclass(frozen=True)
class FoldedText:
    """A text on one line (`flat`: control characters dropped, white space made one space) and its folded form,
    folded character by character so that `origin` tells, for each folded character, the offset in `flat` it came
    from: a match found in the folded form can be marked in the original."""

    flat: str
    folded: str
    origin: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> "FoldedText":
        flat = _SPACE.sub(" ", text.translate(_CONTROL)).strip()
        parts = [_folded_char(c) for c in flat]
        return cls(flat, "".join(parts), tuple(i for i, part in enumerate(parts) for _ in part))

    def occurrences(self, needle: str) -> list[tuple[int, int]]:
        """Every place the folded `needle` occurs (folded offsets, start and end, not overlapping)."""
        found: list[tuple[int, int]] = []
        at = self.folded.find(needle) if needle else -1
        while at >= 0:
            found.append((at, at + len(needle)))
            at = self.folded.find(needle, at + len(needle))
        return found

    def in_flat(self, start: int, end: int) -> tuple[int, int]:
        """A span of the folded form as the span of `flat` it came from."""
        return self.origin[start], self.origin[end - 1] + 1


def excerpt(
    text: FoldedText, spans: Sequence[tuple[int, int]], width: int = SNIPPET_CHARS
) -> tuple[str, list[list[int]]]:
    """At most `width` characters of the flat text around the first of `spans` (folded offsets; its start when
    there are none), and the spans inside it as [start, end) offsets of the excerpt, in order, overlaps merged."""
    places = sorted({text.in_flat(a, b) for a, b in spans if b > a})
    start = 0
    if len(text.flat) > width:
        centre = places[0][0] if places else 0
        start = max(0, min(centre - width // 3, len(text.flat) - width))
        if places and places[0][1] > start + width:  # a long first match: from its start
            start = max(0, min(places[0][0], len(text.flat) - width))
    marks: list[list[int]] = []
    for a, b in places:
        if a < start or b > start + width:
            continue
        if marks and a - start <= marks[-1][1]:
            marks[-1][1] = max(marks[-1][1], b - start)
        else:
            marks.append([a - start, b - start])
    return text.flat[start : start + width], marks


def snippet(text: str, words: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """At most `width` characters of `text` around the first place any of the folded `words` occurs (its start when
    none does), on one line."""
    folded = FoldedText.of(text)
    return excerpt(folded, [span for word in words for span in folded.occurrences(word)], width)[0]


def contains_pattern(word: str) -> str:
    """A `LIKE ... ESCAPE '\\'` pattern matching `word` anywhere, its own `%`, `_` and `\\` taken literally."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
