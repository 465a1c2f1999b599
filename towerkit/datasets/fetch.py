"""Fetching MovieLens-100K into towerkit's data dir, verified, without touching the user's files.

Two sources, tried in order:

1. The GroupLens zip, with a short timeout and no retries. Its sha256 is the
   one tensorflow-datasets records for the same URL.
2. The copy of MovieLens-100K inside the RecBole 1.2.1 wheel, fetched through
   pip's configured index (``pip download recbole==1.2.1 --no-deps``). Its
   files are verified by sha256 and converted to the GroupLens layout.

Before anything is downloaded, the data directory is checked: it must be a
directory (or creatable as one) and writable, and any GroupLens file already
there that towerkit did not write must be valid, since towerkit will keep it.
Only ``u.data``, ``u.item`` and ``u.user`` are ever written, each atomically
through :func:`towerkit.files.write_file`; nothing else in the directory is
touched. A directory towerkit creates carries a ``data`` marker, so a later
fetch may rewrite its files.

``pip download`` runs in its own process group and dies with towerkit, even on
SIGKILL; its temporary ``towerkit-pip-*`` directory, left behind only by a
killed fetch, is removed by the next fetch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

from towerkit.files import MARKER, is_locked, mark, marker_kind, run_lock, write_file
from towerkit.datasets.grouplens import GROUPLENS_FILES, GROUPLENS_GENRES, DamagedFileError, check_file
from towerkit.errors import DataError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
DATA_KIND = "data"  # files.mark kind of a data directory towerkit created
PIP_DIR_PREFIX = "towerkit-pip-"
PIP_DIR_KIND = "pip-download"

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}

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
    """Whether u.data, u.item and u.user are all regular files in ``directory``.

    Raises:
        DataError: ``directory`` cannot be searched (no permission).
    """
    try:
        return all((Path(directory) / name).is_file() for name in GROUPLENS_FILES)
    except OSError as exc:
        raise DataError(f"cannot read {directory} ({exc.strerror or exc}); make it readable or set TOWERKIT_DATA.") from None


def _remedy(data_dir: Path | str | None) -> str:
    """What the user should change when the data directory is unusable, by how they chose it."""
    if data_dir:
        return "choose a writable data directory"
    if os.environ.get("TOWERKIT_DATA"):
        return "point TOWERKIT_DATA at a writable directory"
    return "set TOWERKIT_DATA to a writable directory (the default lies under $XDG_CACHE_HOME or $HOME)"


def check_target(target: Path, data_dir: Path | str | None = None) -> None:
    """Fails, before any download, when ``target`` cannot become towerkit's MovieLens directory.

    Every existing part of the path must be a directory, the nearest existing
    one writable, and each GroupLens file already in an unmarked ``target``
    valid, since towerkit will keep it rather than overwrite it.

    Raises:
        DataError: One sentence naming the path and what to do.
    """
    remedy = _remedy(data_dir)
    try:
        existing = next(path for path in (target, *target.parents) if path.exists() or path.is_symlink())
        if not existing.is_dir():
            what = "a file" if existing.is_file() else "a broken link or a special file"
            raise DataError(
                f"{existing} is {what}, not a directory, so MovieLens cannot be stored in {target}; {remedy}."
            )
        with tempfile.TemporaryFile(dir=existing):
            pass  # proves we may create files there, where os.access cannot (root, read-only mounts)
        if existing == target:
            _check_existing_files(target)
    except OSError as exc:
        raise DataError(
            f"cannot write MovieLens to {target} ({exc.strerror or exc}); {remedy}."
        ) from None


def _check_existing_files(target: Path) -> None:
    ours = marker_kind(target) == DATA_KIND
    for name in GROUPLENS_FILES:
        path = target / name
        if not (path.exists() or path.is_symlink()):
            continue
        if not path.is_file():
            raise DataError(f"{path} is not a regular file, so towerkit cannot write {name} there; move it away and run again.")
        if ours:
            continue  # towerkit wrote it and will rewrite it
        try:
            check_file(path)
        except DamagedFileError as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise DataError(
                f"{path} is not a valid GroupLens {name} ({where}{exc.problem}) and towerkit did not write it, "
                "so it will not overwrite it; move it away and run again."
            ) from None


def install_files(target: Path, contents: dict[str, bytes]) -> None:
    """Writes GroupLens files into ``target``, touching nothing else in it.

    A ``target`` towerkit creates is marked as its own, so all three files are
    written; in a directory the user made, files already there (checked by
    :func:`check_target`) are kept and only the missing ones written.
    """
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target} ({exc.strerror or exc}); choose a writable data directory.") from None
    written = []
    try:
        if created:
            mark(target, DATA_KIND)
        ours = marker_kind(target) == DATA_KIND
        for name in GROUPLENS_FILES:
            path = target / name
            if ours or not path.exists():
                write_file(path, contents[name])
                written.append(path)
    except BaseException:
        if created:  # leave no half-filled directory of ours behind
            for path in [*written, target / MARKER]:
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                target.rmdir()
        raise


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
    remove_stale_pip_dirs()
    if has_grouplens_files(target):
        return target
    check_target(target, data_dir)
    errors = []
    for source in sources:
        try:
            contents = _fetch_from(source, grouplens_timeout, say, progress is not None)
        except (DataError, OSError) as exc:
            errors.append(f"{source}: {exc}")
            say(f"towerkit: {source} failed ({exc})")
            continue
        install_files(target, contents)
        say(f"towerkit: MovieLens-100K ready in {target}")
        return target
    raise DataError(
        "could not fetch MovieLens-100K (" + "; ".join(errors) + f"); place u.data, u.item and "
        f"u.user from ml-100k.zip in {target} and run again."
    )


def _fetch_from(source: str, grouplens_timeout: float, say: Progress, show_progress: bool) -> dict[str, bytes]:
    if source == "grouplens":
        say(f"towerkit: fetching {GROUPLENS_URL} ...")
        return grouplens_files_from_zip(_download(GROUPLENS_URL, grouplens_timeout, say))
    if source == "recbole":
        say(f"towerkit: fetching MovieLens-100K from the {RECBOLE_REQUIREMENT} wheel via pip ...")
        return recbole_to_grouplens(_recbole_members(_pip_download_recbole(show_progress)))
    raise DataError(f"unknown source '{source}'; sources are grouplens and recbole.")


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


def grouplens_files_from_zip(zip_bytes: bytes) -> dict[str, bytes]:
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


# Run as `python -c PIP_LAUNCHER PARENT_PID pip-args...`: asks the kernel to SIGKILL
# pip when towerkit dies (even by SIGKILL), then becomes pip. Done in a launcher
# rather than a preexec_fn, which is unsafe in a process with TensorFlow's threads.
PIP_LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # towerkit died before the death signal was armed
os.execv(sys.executable, [sys.executable, "-m", "pip", *sys.argv[2:]])
"""


def remove_stale_pip_dirs(temp_root: str | os.PathLike | None = None) -> list[Path]:
    """Removes ``towerkit-pip-*`` directories that a killed fetch left in the temp dir.

    Only directories towerkit made (marked, owned by this user) whose fetch is
    over (their lock is free) are removed.

    Returns:
        The directories removed.
    """
    root = Path(temp_root or tempfile.gettempdir())
    removed = []
    try:
        candidates = list(root.glob(PIP_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            stale = (
                path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
                and marker_kind(path) == PIP_DIR_KIND and not is_locked(path)
            )
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _pip_dir() -> Any:
    """A marked, locked temporary directory for pip, named after this process."""
    path = Path(tempfile.mkdtemp(prefix=f"{PIP_DIR_PREFIX}{os.getpid()}-"))
    try:
        # Locked before it is marked, so no other fetch ever sees it marked and unlocked while in use.
        with run_lock(path, "towerkit data fetch"):
            mark(path, PIP_DIR_KIND)
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_pip(arguments: list[str], show_progress: bool, timeout: float, temp_dir: Path) -> None:
    """Runs pip in its own process group, which dies with towerkit on any exit path.

    pip's own temporary files go to ``temp_dir``, so they leave with it.
    """
    command = [sys.executable, "-c", PIP_LAUNCHER, str(os.getpid()), *arguments]
    process = subprocess.Popen(
        command, start_new_session=True, text=True, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(temp_dir)},
        stdout=_progress_stream() if show_progress else subprocess.DEVNULL,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download timed out after {timeout:.0f} s") from None
    finally:
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        tail = " ".join((stderr or "").split())[-300:]
        raise DataError(f"pip download failed (exit {process.returncode}): {tail}")


def _pip_download_recbole(show_progress: bool, timeout: float = 600) -> bytes:
    with _pip_dir() as tmp:
        (tmp / "wheel").mkdir()
        (tmp / "tmp").mkdir()
        arguments = [
            "download", RECBOLE_REQUIREMENT, "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(tmp / "wheel"),
        ]
        _run_pip(arguments if show_progress else [*arguments, "-q"], show_progress, timeout, tmp / "tmp")
        wheels = list((tmp / "wheel").glob("recbole-*.whl"))
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
