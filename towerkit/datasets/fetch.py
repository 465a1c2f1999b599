"""Fetching MovieLens-100K into towerkit's data dir, verified and atomic.

Two sources, tried in order:

1. The GroupLens zip, with a short timeout and no retries. Its sha256 is the
   one tensorflow-datasets records for the same URL.
2. The copy of MovieLens-100K inside the RecBole 1.2.1 wheel, fetched through
   pip's configured index (``pip download recbole==1.2.1 --no-deps``). Its
   files are verified by sha256 and converted to the GroupLens layout.

Everything is written to a temporary sibling directory and renamed into place
only after verification, so an interrupted fetch leaves nothing that a later
run would trust.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

from towerkit.errors import DataError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
GROUPLENS_FILES = ("u.data", "u.item", "u.user")

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}

# GroupLens u.item genre flag order.
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)

Progress = Callable[[str], None]


def default_data_dir() -> Path:
    """``$TOWERKIT_DATA``, else ``$XDG_CACHE_HOME/towerkit`` (``~/.cache/towerkit``)."""
    if os.environ.get("TOWERKIT_DATA"):
        return Path(os.environ["TOWERKIT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "towerkit"


def movielens_dir(data_dir: Path | str | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / "ml-100k"


def has_grouplens_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in GROUPLENS_FILES)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_movielens_100k(
    data_dir: Path | str | None = None,
    *,
    progress: Progress | None = _stderr,
    grouplens_timeout: float = 5.0,
    sources: tuple[str, ...] = ("grouplens", "recbole"),
) -> Path:
    """Downloads MovieLens-100K in the GroupLens layout and returns its directory.

    Args:
        data_dir: towerkit's data dir (default :func:`default_data_dir`).
        progress: Called with one-line progress messages; None for silence.
        grouplens_timeout: Seconds to wait for GroupLens before falling back.
        sources: Which sources to try, in order.

    Raises:
        DataError: No source could be fetched and verified.
    """
    say = progress or (lambda message: None)
    target = movielens_dir(data_dir)
    if has_grouplens_files(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in sources:
        try:
            if source == "grouplens":
                say(f"towerkit: fetching {GROUPLENS_URL} ...")
                files = _grouplens_files(_download(GROUPLENS_URL, grouplens_timeout, say))
            elif source == "recbole":
                say(f"towerkit: fetching MovieLens-100K from the {RECBOLE_REQUIREMENT} wheel via pip ...")
                files = recbole_to_grouplens(_recbole_members(_pip_download_recbole(progress is not None)))
            else:
                raise DataError(f"unknown source '{source}'; sources are grouplens and recbole.")
        except (DataError, OSError) as exc:
            errors.append(f"{source}: {exc}")
            say(f"towerkit: {source} failed ({exc})")
            continue
        write_atomically(target, files)
        say(f"towerkit: MovieLens-100K ready in {target}")
        return target
    raise DataError(
        "could not fetch MovieLens-100K (" + "; ".join(errors) + f"); place u.data, u.item and "
        f"u.user from ml-100k.zip in {target} and run again."
    )


def _download(url: str, timeout: float, say: Progress) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            buffer = io.BytesIO()
            shown = -1
            while chunk := response.read(1 << 16):
                buffer.write(chunk)
                if total:
                    percent = buffer.tell() * 100 // total
                    if percent // 10 != shown:
                        shown = percent // 10
                        say(f"towerkit: downloaded {percent}% of {total / 1e6:.1f} MB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot download {url}: {exc}") from exc
    data = buffer.getvalue()
    if sha256_of(data) != GROUPLENS_SHA256:
        raise DataError(f"checksum mismatch for {url}: got sha256 {sha256_of(data)}")
    return data


def _safe_member(name: str) -> bool:
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts


def _grouplens_files(zip_bytes: bytes) -> dict[str, bytes]:
    """Reads u.data, u.item and u.user out of ml-100k.zip, refusing unsafe paths."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile as exc:
        raise DataError(f"ml-100k.zip is not a valid zip ({exc})") from exc
    files = {}
    for member in archive.namelist():
        if not _safe_member(member):
            raise DataError(f"ml-100k.zip contains the unsafe path '{member}'; refusing to extract it")
        base = member.rsplit("/", 1)[-1]
        if base in GROUPLENS_FILES:
            files[base] = archive.read(member)
    missing = set(GROUPLENS_FILES) - set(files)
    if missing:
        raise DataError(f"ml-100k.zip lacks {', '.join(sorted(missing))}")
    return files


def _progress_stream() -> Any:
    """Where pip's own progress bar goes: our stderr when it is a real file, else nowhere."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def _pip_download_recbole(show_progress: bool) -> bytes:
    with tempfile.TemporaryDirectory(prefix="towerkit-pip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT,
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp,
        ]
        if not show_progress:
            command.append("-q")
        try:
            subprocess.run(command, check=True, timeout=600, text=True, stderr=subprocess.PIPE,
                           stdout=_progress_stream() if show_progress else subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            raise DataError(f"pip download failed: {exc.stderr.strip()[-300:]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DataError("pip download timed out after 600 s") from exc
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise DataError("pip download produced no recbole wheel")
        data = wheels[0].read_bytes()
    if sha256_of(data) != RECBOLE_WHEEL_SHA256:
        raise DataError(f"checksum mismatch for the RecBole wheel: got sha256 {sha256_of(data)}")
    return data


def _recbole_members(wheel_bytes: bytes) -> dict[str, bytes]:
    files = {}
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as archive:
        for name, digest in RECBOLE_FILES.items():
            data = archive.read(RECBOLE_PREFIX + name)
            if sha256_of(data) != digest:
                raise DataError(f"checksum mismatch for {name} in the RecBole wheel")
            files[name] = data
    return files


def _typed_rows(data: bytes, name: str, columns: int) -> list[list[str]]:
    lines = data.decode("utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line]
    for number, row in enumerate(rows, start=2):
        if len(row) != columns:
            raise DataError(f"{name} line {number} has {len(row)} columns, expected {columns}")
    return rows


def recbole_to_grouplens(files: dict[str, bytes]) -> dict[str, bytes]:
    """Converts RecBole's typed TSV files to GroupLens u.data, u.item and u.user."""
    inter = _typed_rows(files["ml-100k.inter"], "ml-100k.inter", 4)
    u_data = "".join(f"{u}\t{i}\t{int(float(r))}\t{int(float(t))}\n" for u, i, r, t in inter)

    items = []
    for item_id, title, year, genres in _typed_rows(files["ml-100k.item"], "ml-100k.item", 4):
        # RecBole stores GroupLens' "Title (Year)" as two columns; item 267's
        # title, "unknown", has no year (RecBole spells it "unkonwn").
        full_title = f"{title} ({year})" if year.isdigit() else "unknown"
        tokens = set(genres.split())
        flags = ["1" if genre in tokens else "0" for genre in GROUPLENS_GENRES]
        # Release date, video release date and IMDb URL are not in RecBole's copy.
        items.append("|".join([item_id, full_title, "", "", "", *flags]))
    u_item = "\n".join(items) + "\n"

    users = _typed_rows(files["ml-100k.user"], "ml-100k.user", 5)
    u_user = "".join("|".join(row) + "\n" for row in users)
    return {
        "u.data": u_data.encode("ascii"),
        # GroupLens ships u.item in ISO-8859-1, and tfds decodes it as such.
        "u.item": u_item.encode("iso-8859-1"),
        "u.user": u_user.encode("ascii"),
    }


def make_staging_dir(target: Path) -> Path:
    """A hidden temporary sibling of ``target``, with the permissions ``mkdir`` would give it.

    ``mkdtemp`` makes directories private (0700); the finished directory should
    be readable like any other the user creates (e.g. by a serving process).
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


def write_atomically(target: Path, files: dict[str, bytes]) -> None:
    """Writes files into ``target`` through a temporary sibling and a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(target)
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
