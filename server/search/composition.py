"""Composed queries, as in rclip: a main text or image plus weighted extra texts and images, wanted or not.

Each term is embedded and L2-normalised, multiplied by its weight; wanted terms are added, unwanted ones subtracted,
and the sum normalised: results are ranked by cosine to that vector. A term may carry a weight prefix, `"2:night"` or
`"0.5:/photos/a.jpg"` (0.1-10, default 1). The command line also takes rclip's infix form, `"horse + stripes -
grass"`, where a quoted part keeps a literal `+` or `-`.
"""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from server.errors import InvalidArgument
from server.limits import MAX_TERMS, TERM_WEIGHT

_WEIGHTED = re.compile(r"^(\d+(?:\.\d+)?):(?!\d)(.*)$", re.DOTALL)  # "10:30 clock" is a time, not a weight


@dataclass(frozen=True)
class Term:
    text: str | None  # a text term, or
    image: Path | None  # an image term
    weight: float  # negative for an unwanted term
    time_seconds: float | None = None  # of a video image term: that moment (None: its poster frame)

    def describe(self) -> str:
        sign = "-" if self.weight < 0 else "+"
        size = abs(self.weight)
        prefix = "" if size == 1 else f"{size:g}:"
        return f"{sign} {prefix}{self.text if self.text is not None else self.image}"


@dataclass(frozen=True)
class Extras:
    """The optional extra terms of a search, as given (weight prefixes not yet read)."""

    and_texts: tuple[str, ...] = ()
    not_texts: tuple[str, ...] = ()
    and_images: tuple[str, ...] = ()
    not_images: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.and_texts or self.not_texts or self.and_images or self.not_images)

    def count(self) -> int:
        return len(self.and_texts) + len(self.not_texts) + len(self.and_images) + len(self.not_images)


def weighted(item: str) -> tuple[float, str]:
    """`"2:night"` → (2.0, "night"); `"night"` → (1.0, "night"); refuses empty terms and weights out of range."""
    match = _WEIGHTED.match(item.strip())
    weight, value = (float(match[1]), match[2]) if match else (1.0, item)
    if not TERM_WEIGHT.allows(weight):
        raise InvalidArgument(
            f"The weight of '{item}' is {weight:g}; weights go from {TERM_WEIGHT.least:g} to {TERM_WEIGHT.most:g}."
        )
    value = value.strip()
    if not value:
        raise InvalidArgument(f"The query term '{item}' is empty; give a text or an image path after the weight.")
    return weight, value


def extra_terms(extras: Extras) -> tuple[list[Term], list[tuple[float, str]]]:
    """The text terms, and the image terms as (signed weight, path as given) for the caller to check and resolve."""
    if extras.count() + 1 > MAX_TERMS:
        raise InvalidArgument(f"A query takes at most {MAX_TERMS} terms in all, got {extras.count() + 1}.")
    texts = [Term(value, None, w) for w, value in map(weighted, extras.and_texts)]
    texts += [Term(value, None, -w) for w, value in map(weighted, extras.not_texts)]
    images = [(w, value) for w, value in map(weighted, extras.and_images)]
    images += [(-w, value) for w, value in map(weighted, extras.not_images)]
    return texts, images


def split_infix(query: str) -> tuple[str, Extras]:
    """rclip's infix form: `"horse + stripes - grass"` → ("horse", and_texts=("stripes",), not_texts=("grass",)).
    Operators stand alone between spaces; a quoted part is taken literally. A part naming an existing image file
    becomes an image term."""
    if not re.search(r"(^|\s)[+-](\s|$)", query):
        return query, Extras()
    lexer = shlex.shlex(query, posix=True)
    lexer.quotes, lexer.whitespace_split, lexer.commenters = '"', True, ""  # "kid's party" keeps its apostrophe
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise InvalidArgument(f"Cannot read the query {query!r}: {exc} (close the quote).") from exc
    parts: list[tuple[str, list[str]]] = [("+", [])]
    for token in tokens:
        if token in ("+", "-"):
            if not parts[-1][1]:
                raise InvalidArgument(f"'{token}' in {query!r} needs a term on both sides (e.g. 'beach + sunset').")
            parts.append((token, []))
        else:
            parts[-1][1].append(token)
    if not parts[-1][1]:
        raise InvalidArgument(f"{query!r} ends with '{parts[-1][0]}'; give a term after it.")
    main = " ".join(parts[0][1])
    wanted: tuple[list[str], list[str]] = ([], [])  # texts, images
    unwanted: tuple[list[str], list[str]] = ([], [])
    for sign, words in parts[1:]:
        term = " ".join(words)
        kind = 1 if _is_image_file(term) else 0
        (wanted if sign == "+" else unwanted)[kind].append(term)
    return main, Extras(tuple(wanted[0]), tuple(unwanted[0]), tuple(wanted[1]), tuple(unwanted[1]))


def _is_image_file(term: str) -> bool:
    from server.images.decode import is_image_name

    _, value = weighted(term)
    path = Path(value).expanduser()
    return is_image_name(path) and path.is_file()
