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

import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.encoders.text_recognition import RecognisedText, TextLine

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


def snippet(text: str, words: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """At most `width` characters of `text` around the first place any of the folded `words` occurs (its start when
    none does), on one line."""
    flat = _SPACE.sub(" ", text.translate(_CONTROL)).strip()
    if len(flat) <= width:
        return flat
    folded = [fold(c) for c in flat]  # per character, so that a match maps back to the original's offsets
    positions = [i for i, f in enumerate(folded) for _ in f]
    haystack = "".join(folded)
    found = [at for at in (haystack.find(word) for word in words if word) if at >= 0]
    centre = positions[min(found)] if found else 0
    start = max(0, min(centre - width // 3, len(flat) - width))
    return flat[start : start + width]


def contains_pattern(word: str) -> str:
    """A `LIKE ... ESCAPE '\\'` pattern matching `word` anywhere, its own `%`, `_` and `\\` taken literally."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
