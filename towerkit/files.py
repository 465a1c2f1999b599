"""The one path through which towerkit writes anything: atomic files, owned directories, run locks.

The rule this module enforces: towerkit never deletes, moves or overwrites a
path it did not create. Every directory towerkit creates (a run, an export, a
data directory) holds a small marker file, :data:`MARKER`, naming what it is;
only such a directory may later be replaced or written into by towerkit.

* :func:`write_file` writes one file through a hidden temporary sibling and a
  rename, so a reader sees the old content or the new, never a torn file.
* :func:`staging_dir` / :func:`replace_dir` build a directory beside its
  target and swap it in with one atomic ``renameat2(RENAME_EXCHANGE)``, so a
  kill at any moment leaves either the old directory or the new one in place.
  Where the file system cannot exchange, two renames are used and
  :func:`recover` (called before every replace) puts a stranded old copy back.
* :func:`run_lock` holds an ``flock`` on a run directory, so two runs never
  write into one directory; the kernel drops it when a process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from towerkit.errors import TowerkitError

MARKER = ".towerkit"
LOCK_FILE = ".towerkit.lock"
_STAGING_INFIX = ".tmp-"
_BACKUP_INFIX = ".old-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OwnershipError(TowerkitError):
    """A path exists that towerkit did not create, so it will not replace it."""


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


def os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed write, without TensorFlow's op decoration."""
    text = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
    for reason in ("No space left on device", "Permission denied", "Read-only file system", "Disk quota exceeded"):
        if reason in text:
            return reason
    return text.split(" [Op:")[0].rsplit("; ", 1)[-1]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes ``data`` to ``path`` atomically: a temporary sibling, fsync, then one rename.

    Raises:
        TowerkitError: The write failed (disk full, no permission); no partial
            or temporary file is left behind.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        handle, staging = tempfile.mkstemp(prefix=f".{target.name}{_STAGING_INFIX}", dir=target.parent)
    except OSError as exc:
        raise TowerkitError(f"cannot write {target} ({_describe_os_error(exc)}); choose a writable location.") from exc
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(staging, _default_mode())
        os.replace(staging, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        if isinstance(exc, OSError):
            raise TowerkitError(
                f"writing {target} failed ({_describe_os_error(exc)}); free some space or choose another location."
            ) from exc
        raise
    return target


def write_json(path: str | os.PathLike, value: object) -> Path:
    """Writes ``value`` as indented, key-sorted JSON through :func:`write_file`."""
    return write_file(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def mark(directory: str | os.PathLike, kind: str) -> None:
    """Records that towerkit created ``directory`` and what it holds (run, export, data)."""
    write_json(Path(directory) / MARKER, {"created_by": "towerkit", "kind": kind})


def marker_kind(directory: str | os.PathLike) -> str | None:
    """The kind recorded in a towerkit-created directory, or None if towerkit did not create it."""
    path = Path(directory) / MARKER
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    kind = value.get("kind") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def check_replaceable(target: str | os.PathLike, kind: str, *, legacy_files: tuple[str, ...] = ()) -> None:
    """Raises :class:`OwnershipError` unless ``target`` is absent or a towerkit-made ``kind`` directory.

    Args:
        target: The path towerkit is about to replace.
        kind: The marker kind it must carry (e.g. ``"export"``).
        legacy_files: Files whose presence also proves towerkit wrote the
            directory (exports written before markers existed hold ``towerkit.json``).
    """
    path = Path(target)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        found = marker_kind(path)
        if found == kind or (found is None and legacy_files and all((path / f).is_file() for f in legacy_files)):
            return
        what = f"a towerkit {found} directory" if found else "a directory towerkit did not create"
    else:
        what = "a file" if path.is_file() else "not a directory"
    raise OwnershipError(
        f"{path} already exists and is {what}, so towerkit will not replace it; "
        "choose another output path or move it away yourself."
    )


def _new_staging(target: Path, kind: str) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_STAGING_INFIX}", dir=target.parent))
        os.chmod(staging, _dir_mode())
        mark(staging, kind)
    except OSError as exc:
        raise TowerkitError(f"cannot write to {target.parent} ({_describe_os_error(exc)}); choose a writable location.") from exc
    return staging


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike, kind: str) -> Iterator[Path]:
    """A marked temporary sibling of ``target`` to build a directory in; removed if the block fails."""
    staging = _new_staging(Path(target), kind)
    try:
        # Held while the directory is built, so a concurrent recover() leaves it alone.
        with run_lock(staging, "towerkit write"):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike, kind: str, *, legacy_files: tuple[str, ...] = ()) -> Path:
    """Moves a finished ``staging`` directory to ``target``, replacing only a towerkit-made ``kind`` there.

    After a kill at any point, ``target`` holds the old directory or the new
    one; a stranded old copy (two-rename fallback) is restored by :func:`recover`.
    """
    staging, target = Path(staging), Path(target)
    try:
        recover(target)
        check_replaceable(target, kind, legacy_files=legacy_files)
        if not target.exists():
            os.rename(staging, target)
            return target
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old directory
            return target
        backup = staging.with_name(staging.name.replace(_STAGING_INFIX, _BACKUP_INFIX, 1))
        os.rename(target, backup)
        os.rename(staging, target)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise TowerkitError(f"replacing {target} failed ({_describe_os_error(exc)}); the previous copy is unchanged.") from exc
        raise
    return target


def _leftovers(target: Path, infix: str) -> list[Path]:
    prefix = f".{target.name}{infix}"
    try:
        return [p for p in target.parent.iterdir() if p.name.startswith(prefix) and marker_kind(p) is not None]
    except OSError:
        return []


def recover(target: str | os.PathLike) -> None:
    """Cleans up after an interrupted write to ``target``: restores a stranded old copy, removes dead staging.

    Only marked directories (towerkit's own) are touched.
    """
    target = Path(target)
    backups = sorted(_leftovers(target, _BACKUP_INFIX), key=lambda p: p.stat().st_mtime)
    if backups and not target.exists():
        os.rename(backups.pop(), target)
    for leftover in backups + [p for p in _leftovers(target, _STAGING_INFIX) if not _in_use(p)]:
        shutil.rmtree(leftover, ignore_errors=True)


def _in_use(staging: Path) -> bool:
    """A staging directory is live while the process that made it holds its lock."""
    return is_locked(staging)


def is_locked(directory: str | os.PathLike) -> bool:
    """Whether some process holds :func:`run_lock` on ``directory``."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, what: str = "towerkit run") -> Iterator[None]:
    """Holds an exclusive lock on ``directory`` for the block; a second holder gets a clear error.

    The lock is an ``flock`` on ``directory/.towerkit.lock``: the kernel
    releases it when the process exits or is killed, so it is never stuck.
    """
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TowerkitError(f"cannot lock {directory} ({_describe_os_error(exc)}); choose a writable output path.") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise TowerkitError(
                f"another {what} (pid {holder}) is writing to {directory}; wait for it to finish "
                "or choose another output path."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
