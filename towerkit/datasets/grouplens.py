"""Checks MovieLens-100K files in the GroupLens layout before tfds' parsers read them.

tfds' parsers trust their input: a short row is silently padded, a movie id
listed twice silently relabels every rating of it, an unknown gender becomes
"female", and a timestamp beyond int64 fails deep inside NumPy. This module
reads each file once, checks every field of every line against what GroupLens
ships, and raises one :class:`DamagedFileError` naming the first bad file and
line. It imports neither TensorFlow nor tfds, so ``towerkit data fetch`` can
check a user's files before downloading anything.

Encodings: ``u.data`` and ``u.user`` are ASCII. GroupLens ships ``u.item`` in
ISO-8859-1; a ``u.item`` that is valid UTF-8 and holds non-ASCII bytes was
re-saved as UTF-8 (by an editor or a converter), and is read as such so that
its titles come out right.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from towerkit.errors import DataError

GROUPLENS_FILES = ("u.data", "u.item", "u.user")

# GroupLens u.item genre flag order.
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

# The 21 occupations of GroupLens' u.occupation, the keys of tfds' label map.
GROUPLENS_OCCUPATIONS = frozenset({
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
})

# File -> (separator, fields per line) of the GroupLens layout.
GROUPLENS_LAYOUT = {"u.data": ("\t", 4), "u.item": ("|", 5 + len(GROUPLENS_GENRES)), "u.user": ("|", 5)}

MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01 UTC: no rating comes from later than that.
MAX_AGE = 120
MAX_ID = 999_999_999

FIX = "delete the file and run `towerkit data fetch movielens-100k`"

_ID = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
_RATING_LINE = re.compile(r"([1-9][0-9]{0,8})\t([1-9][0-9]{0,8})\t([1-5])\t([0-9]{1,10})", re.ASCII)
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_RELEASE_DATE = re.compile(rf"(0[1-9]|[12][0-9]|3[01])-({_MONTHS})-(18[89][0-9]|19[0-9][0-9]|20[0-9][0-9])", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ZIP_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,9}", re.ASCII)


class DamagedFileError(DataError):
    """A GroupLens file is unreadable or damaged; ``path``, ``line`` and ``problem`` say where and how.

    Its message is one sentence: ``PATH line N is malformed: PROBLEM; delete
    the file and run `towerkit data fetch movielens-100k`.``
    """

    def __init__(self, path: Path, line: int | None, problem: str, remedy: str = FIX):
        self.path, self.line, self.problem = Path(path), line, problem
        where = f"{self.path} line {line} is malformed" if line else f"{self.path} is unusable"
        super().__init__(f"{where}: {problem}; {remedy}.")


class _LineProblem(Exception):
    """Raised by a line check; the caller adds the file and line number."""


def item_encoding(raw: bytes) -> str:
    """``"utf-8"`` if ``raw`` is valid UTF-8 with non-ASCII bytes, else GroupLens' ``"iso-8859-1"``."""
    if raw.isascii():
        return "iso-8859-1"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "iso-8859-1"
    return "utf-8"


def read_lines(path: str | Path) -> tuple[list[str], str]:
    """The lines of one GroupLens file, decoded, and the encoding used.

    Raises:
        DamagedFileError: The file cannot be read, or ``u.data``/``u.user`` is not ASCII.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DamagedFileError(
            path, None, f"it cannot be read ({exc.strerror or exc})", "make it readable, or delete it and fetch again"
        ) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DamagedFileError(path, 1, "it starts with a UTF-8 byte-order mark, which GroupLens files never have",
                               "save it without the mark, or delete it and fetch again")
    if path.name == "u.item":
        encoding = item_encoding(raw)
    else:
        encoding = "ascii"
        try:
            raw.decode("ascii")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise DamagedFileError(path, line, f"it is not ASCII, which GroupLens {path.name} always is") from None
    lines = raw.decode(encoding).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines], encoding


def _fields(line: str, name: str) -> list[str]:
    separator, expected = GROUPLENS_LAYOUT[name]
    if not line:
        raise _LineProblem("the line is empty, which GroupLens lines never are")
    fields = line.split(separator)
    if len(fields) != expected:
        raise _LineProblem(f"{len(fields)} fields where GroupLens has {expected}")
    return fields


def _check_id(value: str, what: str) -> str:
    if not _ID.fullmatch(value):
        raise _LineProblem(f"{what} {value!r} is not a whole number from 1 to {MAX_ID} (digits only, no leading zero)")
    return value


def _check_lines(path: Path, lines: list[str], check: Callable[[list[str], int], None]) -> None:
    """Runs ``check(fields, number)`` on each line, turning a problem into a DamagedFileError."""
    for number, line in enumerate(lines, start=1):
        try:
            check(_fields(line, path.name), number)
        except _LineProblem as problem:
            raise DamagedFileError(path, number, str(problem)) from None


def check_users(path: str | Path) -> set[str]:
    """Checks ``u.user`` (id|age|gender|occupation|zip code); returns its user ids."""
    path = Path(path)
    lines, _ = read_lines(path)
    first_line: dict[str, int] = {}

    def check(fields: list[str], number: int) -> None:
        user_id, age, gender, occupation, zip_code = fields
        _check_id(user_id, "user id")
        if user_id in first_line:
            raise _LineProblem(f"user id {user_id} appears again (first on line {first_line[user_id]})")
        if not (age.isdigit() and len(age) <= 3 and 1 <= int(age) <= MAX_AGE):
            raise _LineProblem(f"age {age!r} is not a whole number from 1 to {MAX_AGE}")
        if gender not in ("M", "F"):
            raise _LineProblem(f"gender {gender!r} is neither 'M' nor 'F'")
        if occupation not in GROUPLENS_OCCUPATIONS:
            raise _LineProblem(f"occupation {occupation!r} is not one of GroupLens' {len(GROUPLENS_OCCUPATIONS)}")
        if not _ZIP_CODE.fullmatch(zip_code):
            raise _LineProblem(f"zip code {zip_code!r} is not 1 to 10 letters, digits or dashes")
        first_line[user_id] = number

    _check_lines(path, lines, check)
    return set(first_line)


def check_movies(path: str | Path) -> tuple[set[str], str]:
    """Checks ``u.item`` (id|title|release date|video date|URL|19 genre flags); returns its ids and encoding."""
    path = Path(path)
    lines, encoding = read_lines(path)
    first_line: dict[str, int] = {}

    def check(fields: list[str], number: int) -> None:
        movie_id, title, release_date = fields[:3]
        _check_id(movie_id, "movie id")
        if movie_id in first_line:
            raise _LineProblem(f"movie id {movie_id} appears again (first on line {first_line[movie_id]})")
        if not title.strip():
            raise _LineProblem("the title is empty")
        if _CONTROL.search(title):
            raise _LineProblem(f"the title {title!r} holds a control character")
        if release_date and not _RELEASE_DATE.fullmatch(release_date):
            raise _LineProblem(f"release date {release_date!r} is not a date like 01-Jan-1995")
        for genre, flag in zip(GROUPLENS_GENRES, fields[5:]):
            if flag not in ("0", "1"):
                raise _LineProblem(f"the {genre} genre flag {flag!r} is neither 0 nor 1")
        first_line[movie_id] = number

    _check_lines(path, lines, check)
    return set(first_line), encoding


def _rating_problem(fields: list[str]) -> str:
    """Why a u.data line that failed the fast pattern is wrong, field by field."""
    user_id, movie_id, rating, timestamp = fields
    try:
        _check_id(user_id, "user id")
        _check_id(movie_id, "movie id")
    except _LineProblem as problem:
        return str(problem)
    if rating not in ("1", "2", "3", "4", "5"):
        return f"rating {rating!r} is not a whole number from 1 to 5"
    return f"timestamp {timestamp!r} is not a whole number of seconds from 0 to {MAX_TIMESTAMP} (the year 2100)"


def check_ratings(path: str | Path, users: set[str] | None = None, movies: set[str] | None = None) -> int:
    """Checks ``u.data`` (user id, movie id, rating, timestamp, tab-separated); returns its line count.

    Args:
        path: The ``u.data`` file.
        users: User ids of ``u.user``; each rating must name one. None skips the check.
        movies: Movie ids of ``u.item``; each rating must name one. None skips the check.
    """
    path = Path(path)
    lines, _ = read_lines(path)

    def check(fields: list[str], number: int) -> None:
        match = _RATING_LINE.fullmatch("\t".join(fields))
        if match is None or int(match.group(4)) > MAX_TIMESTAMP:
            raise _LineProblem(_rating_problem(fields))
        if users is not None and fields[0] not in users:
            raise _LineProblem(f"user id {fields[0]} is not in u.user")
        if movies is not None and fields[1] not in movies:
            raise _LineProblem(f"movie id {fields[1]} is not in u.item")

    _check_lines(path, lines, check)
    return len(lines)


def check_file(path: str | Path) -> None:
    """Checks one GroupLens file on its own (no cross-file ids), chosen by its name."""
    path = Path(path)
    if path.name == "u.data":
        check_ratings(path)
    elif path.name == "u.item":
        check_movies(path)
    elif path.name == "u.user":
        check_users(path)
    else:
        raise DataError(f"{path} is not a GroupLens file; expected one of {', '.join(GROUPLENS_FILES)}.")


def check_directory(directory: str | Path) -> str:
    """Checks u.user, u.item and u.data together, ratings against the ids they name.

    Returns:
        The encoding of ``u.item`` (``"iso-8859-1"`` as GroupLens ships it, or ``"utf-8"``).

    Raises:
        DamagedFileError: The first bad file and line.
    """
    directory = Path(directory)
    users = check_users(directory / "u.user")
    movies, encoding = check_movies(directory / "u.item")
    if not check_ratings(directory / "u.data", users, movies):
        raise DamagedFileError(directory / "u.data", None, "it holds no ratings")
    return encoding
