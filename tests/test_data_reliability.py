"""Hostile cases for the MovieLens data path: the user's data directory, damaged files, killed fetches.

Each case uses real files, real processes and real sockets on 127.0.0.1: a
local server stands in for GroupLens (its URL and checksum are configured to
point at it), a socket that never answers stands in for a hung package index,
and privileges are really dropped (``capset``) to make files unreadable even
when the suite runs as root.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import towerkit
from towerkit.datasets import fetch, grouplens
from towerkit.errors import DataError
from towerkit.files import MARKER, mark, run_lock

from conftest import make_zip, run_cli, run_python, write_grouplens

# ---------------------------------------------------------------------------------------------
# Helpers


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every path under ``root`` with its bytes (None for a directory, the target for a link)."""
    def content(path: Path) -> bytes | str | None:
        if path.is_symlink():
            return os.readlink(path)
        return None if path.is_dir() else path.read_bytes()

    return {str(path.relative_to(root)): content(path) for path in sorted(root.rglob("*"))}


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


class _ZipHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits += 1
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def local_grouplens(tmp_path, monkeypatch):
    """Serves a small ml-100k.zip on 127.0.0.1 and points towerkit's GroupLens source at it.

    Yields the server; ``server.hits`` counts downloads and ``server.files``
    holds the GroupLens files it serves.
    """
    source = write_grouplens(tmp_path / "served" / "ml-100k", num_users=20, num_movies=15, num_ratings=120)
    files = {name: (source / name).read_bytes() for name in grouplens.GROUPLENS_FILES}
    server = http.server.HTTPServer(("127.0.0.1", 0), _ZipHandler)
    server.body = make_zip({f"ml-100k/{name}": data for name, data in files.items()})
    server.hits, server.files = 0, files
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setattr(fetch, "GROUPLENS_URL", f"http://127.0.0.1:{server.server_port}/ml-100k.zip")
    monkeypatch.setattr(fetch, "GROUPLENS_SHA256", hashlib.sha256(server.body).hexdigest())
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class CountingSocket:
    """A TCP listener on 127.0.0.1 that counts connections; ``answer=False`` holds them open forever."""

    def __init__(self, answer: bool = True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.answer:
                connection.close()

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture()
def network_trap():
    """Environment that routes every download (urllib, pip) to a local counting socket."""
    trap = CountingSocket()
    env = {
        "HTTPS_PROXY": trap.url, "HTTP_PROXY": trap.url, "https_proxy": trap.url, "http_proxy": trap.url,
        "PIP_INDEX_URL": f"{trap.url}/simple/", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "NO_PROXY": "",
    }
    trap.env = env
    yield trap
    trap.close()


# Run as root, the suite would read any file whatever its mode; drop every capability first,
# so that permissions apply as they do to any user.
DROP_PRIVILEGES = """
import ctypes, os
if os.geteuid() == 0:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
        raise SystemExit("capset failed: " + os.strerror(ctypes.get_errno()))
"""


def run_cli_unprivileged(*args: str, env: dict) -> subprocess.CompletedProcess:
    code = DROP_PRIVILEGES + f"""
import runpy, sys
sys.argv = ["towerkit", *{list(args)!r}]
runpy.run_module("towerkit.cli", run_name="__main__")
"""
    result = run_python(code, env=env, timeout=120)
    assert "capset failed" not in result.stderr, result.stderr
    return result


# ---------------------------------------------------------------------------------------------
# 1. Fetching never replaces or deletes the user's data directory.


def _user_dir_with_notes(root: Path, *keep: str) -> Path:
    """An ml-100k directory the user made: notes, a folder of their own, and some GroupLens files."""
    directory = root / "ml-100k"
    source = write_grouplens(root / "elsewhere", num_users=20, num_movies=15, num_ratings=120)
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_text("my notes\n")
    (directory / "mine").mkdir()
    (directory / "mine" / "a.csv").write_text("1,2\n")
    for name in keep:
        (directory / name).write_bytes((source / name).read_bytes())
    return directory


@pytest.mark.parametrize("entry", ["fetch", "load_dataset"])
@pytest.mark.parametrize("keep", [(), ("u.user",), ("u.item", "u.data")])
def test_fetch_into_a_users_incomplete_dir_keeps_everything_there(entry, keep, tmp_path, local_grouplens):
    directory = _user_dir_with_notes(tmp_path / "data", *keep)
    before = snapshot(directory)
    if entry == "fetch":
        fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    else:
        towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"))
    after = snapshot(directory)
    # Every path the user had is still there, byte for byte; only missing GroupLens files were added.
    assert {key: after[key] for key in before} == before
    assert set(after) - set(before) == set(grouplens.GROUPLENS_FILES) - set(keep)
    for name in set(grouplens.GROUPLENS_FILES) - set(keep):
        assert after[name] == local_grouplens.files[name]
    assert local_grouplens.hits == 1


def test_fetch_refuses_a_damaged_file_it_did_not_write_before_downloading(tmp_path, local_grouplens):
    directory = _user_dir_with_notes(tmp_path / "data", "u.user")
    (directory / "u.data").write_text("1\t2\t3\t881250949\n1\t2\tfive\t881250949\n")
    before = snapshot(directory)
    with pytest.raises(DataError) as info:
        fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    message = str(info.value)
    assert str(directory / "u.data") in message and "line 2" in message and "will not overwrite" in message
    assert "\n" not in message
    assert snapshot(directory) == before and local_grouplens.hits == 0


def test_fetch_refuses_a_folder_where_a_grouplens_file_belongs(tmp_path, local_grouplens):
    directory = _user_dir_with_notes(tmp_path / "data")
    (directory / "u.item").mkdir()
    before = snapshot(directory)
    with pytest.raises(DataError, match="u.item is not a regular file"):
        fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    assert snapshot(directory) == before and local_grouplens.hits == 0


def test_fetch_rewrites_its_own_damaged_files_but_nothing_else(tmp_path, local_grouplens):
    directory = tmp_path / "data" / "ml-100k"
    directory.mkdir(parents=True)
    mark(directory, fetch.DATA_KIND)
    (directory / "u.data").write_text("torn")  # a towerkit-written file, damaged since
    (directory / "notes.txt").write_text("added by the user later\n")
    fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    for name in grouplens.GROUPLENS_FILES:
        assert (directory / name).read_bytes() == local_grouplens.files[name]
    assert (directory / "notes.txt").read_text() == "added by the user later\n"
    assert sorted(p.name for p in directory.iterdir()) == sorted([MARKER, "notes.txt", *grouplens.GROUPLENS_FILES])


def test_a_fresh_fetch_marks_its_directory_and_leaves_no_temporary_files(tmp_path, local_grouplens):
    fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    names = sorted(p.name for p in (tmp_path / "data" / "ml-100k").iterdir())
    assert names == sorted([MARKER, *grouplens.GROUPLENS_FILES])


def test_a_failed_download_leaves_the_users_dir_as_it_was(tmp_path, local_grouplens):
    directory = _user_dir_with_notes(tmp_path / "data", "u.user")
    local_grouplens.body = b"not the zip that was promised"
    before = snapshot(tmp_path / "data")
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch.fetch_movielens_100k(tmp_path / "data", sources=("grouplens",), progress=None)
    assert snapshot(tmp_path / "data") == before and directory.is_dir()


# ---------------------------------------------------------------------------------------------
# 2. An unusable data directory fails before any download, with one clear error.


@pytest.mark.parametrize("layout", ["data dir is a file", "ml-100k is a file", "a parent is a file",
                                    "ml-100k is a broken link"])
def test_an_unusable_data_dir_fails_before_any_download(layout, tmp_path, local_grouplens):
    blocker = tmp_path / "blocker"
    blocker.write_text("the user's file\n")
    data_dir = {
        "data dir is a file": blocker,
        "ml-100k is a file": tmp_path,
        "a parent is a file": blocker / "deeper" / "data",
        "ml-100k is a broken link": tmp_path,
    }[layout]
    if layout == "ml-100k is a file":
        blocker = tmp_path / "ml-100k"
        blocker.write_text("the user's file\n")
    if layout == "ml-100k is a broken link":
        (tmp_path / "ml-100k").symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as info:
        fetch.fetch_movielens_100k(data_dir, sources=("grouplens",), progress=None)
    what = "a broken link or a special file" if layout.endswith("link") else "a file"
    shown = tmp_path / "ml-100k" if layout.endswith("link") else blocker
    assert f"{shown} is {what}, not a directory" in str(info.value) and "\n" not in str(info.value)
    assert local_grouplens.hits == 0 and snapshot(tmp_path) == before


@pytest.mark.parametrize("action", ["fetch", "info"])
def test_towerkit_data_pointing_at_a_file_is_one_line_before_any_network(action, tmp_path, network_trap):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_cli("data", action, "movielens-100k", env={**network_trap.env, "TOWERKIT_DATA": str(blocker)},
                     timeout=120)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "is a file, not a directory" in line and "TOWERKIT_DATA" in line
    assert network_trap.connections == [] and blocker.read_text() == "x"


def test_unwritable_home_with_the_default_data_dir_is_one_clear_error(tmp_path, network_trap):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    env = {**network_trap.env, "HOME": str(home), "TOWERKIT_DATA": "", "XDG_CACHE_HOME": ""}
    try:
        result = run_cli_unprivileged("data", "fetch", "movielens-100k", env=env)
    finally:
        home.chmod(0o755)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "Permission denied" in line and "TOWERKIT_DATA" in line and "Traceback" not in result.stderr
    assert network_trap.connections == [] and list(home.iterdir()) == []


@pytest.mark.parametrize("blocked", ["u.data", "ml-100k"])
def test_unreadable_data_is_one_clear_error(blocked, tmp_path, network_trap):
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=10, num_movies=8, num_ratings=30)
    target = directory / "u.data" if blocked == "u.data" else directory
    mode = stat.S_IMODE(target.stat().st_mode)
    target.chmod(0)
    try:
        result = run_cli_unprivileged("data", "info", "movielens-100k", "--data-dir", str(tmp_path / "data"),
                                      env=network_trap.env)
    finally:
        target.chmod(mode)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert str(target) in line and "Permission denied" in line
    assert network_trap.connections == []


# ---------------------------------------------------------------------------------------------
# 3. A killed fetch takes its pip child with it; the next fetch removes what it left.


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not dead, not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_killed_fetch_takes_pip_along_and_the_next_fetch_cleans_up(signal_name, tmp_path, monkeypatch):
    hung_index = CountingSocket(answer=False)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    decoy = temp_root / "towerkit-pip-1-not-ours"  # the user's, unmarked: never removed
    decoy.mkdir()
    env = {**os.environ, "TMPDIR": str(temp_root), "PIP_INDEX_URL": f"{hung_index.url}/simple/",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "60", "PIP_NO_CACHE_DIR": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = ("from towerkit.datasets import fetch; "
            f"fetch.fetch_movielens_100k({str(tmp_path / 'data')!r}, sources=('recbole',), progress=None)")
    towerkit_process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: hung_index.connections, 60), "pip never reached the index"
        pips = _children(towerkit_process.pid)
        assert len(pips) == 1
        pip_dirs = [p for p in temp_root.glob("towerkit-pip-*") if p != decoy]
        assert len(pip_dirs) == 1 and pip_dirs[0].name.startswith(f"towerkit-pip-{towerkit_process.pid}-")
        towerkit_process.send_signal(getattr(signal, signal_name))
        towerkit_process.wait(timeout=30)  # a loaded CI machine once took over 10 s
        assert _wait_for(lambda: not _alive(pips[0]), 5), "pip outlived the fetch that started it"
    finally:
        if towerkit_process.poll() is None:
            towerkit_process.kill()
            towerkit_process.wait()
        hung_index.close()
    # Ctrl-C lets towerkit clean up at once; a kill leaves the directory for the next fetch.
    assert pip_dirs[0].exists() == (signal_name != "SIGINT")
    # The next fetch (here one that finds its files present) removes the dead fetch's directory only.
    write_grouplens(tmp_path / "data" / "ml-100k", num_users=10, num_movies=8, num_ratings=30)
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    fetch.fetch_movielens_100k(tmp_path / "data", progress=None)
    # pip's own temporary files were inside the dead fetch's directory, so nothing else is left either.
    assert sorted(temp_root.iterdir()) == [decoy]


def test_a_pip_dir_of_a_running_fetch_is_left_alone(tmp_path):
    live = tmp_path / "towerkit-pip-123-live"
    live.mkdir()
    with run_lock(live, "towerkit data fetch"):
        mark(live, fetch.PIP_DIR_KIND)
        assert fetch.remove_stale_pip_dirs(tmp_path) == []
        assert live.is_dir()
    assert fetch.remove_stale_pip_dirs(tmp_path) == [live] and not live.exists()


def test_a_symlink_named_like_a_pip_dir_is_never_followed(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    mark(target, fetch.PIP_DIR_KIND)
    (target / "keep.txt").write_text("x")
    (tmp_path / "towerkit-pip-1-link").symlink_to(target)
    assert fetch.remove_stale_pip_dirs(tmp_path) == []
    assert (target / "keep.txt").read_text() == "x"


# ---------------------------------------------------------------------------------------------
# 4. Damaged GroupLens data is rejected as damaged, naming the file and line.

USER = "1|24|M|student|85711"
MOVIE = "|".join(["1", "Film 1 (1951)", "01-Jan-1995", "", "http://example.invalid/"] + ["0"] * 19)


def _movie(movie_id: str = "1", title: str = "Film 1 (1951)", date: str = "01-Jan-1995", flag: str = "0") -> str:
    return "|".join([movie_id, title, date, "", "http://example.invalid/", flag] + ["0"] * 18)


# case -> (file, line appended to the small data set, what the message must say)
DAMAGE = {
    "duplicate movie id": ("u.item", _movie("3", "Someone else (1990)"), "movie id 3 appears again (first on line 3)"),
    "duplicate user id": ("u.user", "2|30|F|writer|12345", "user id 2 appears again"),
    "gender X": ("u.user", "61|30|X|writer|12345", "gender 'X' is neither 'M' nor 'F'"),
    "gender lowercase": ("u.user", "61|30|m|writer|12345", "gender 'm'"),
    "age not a number": ("u.user", "61|thirty|M|writer|12345", "age 'thirty'"),
    "age zero": ("u.user", "61|0|M|writer|12345", "age '0'"),
    "age beyond any human": ("u.user", "61|999|M|writer|12345", "age '999'"),
    "age negative": ("u.user", "61|-4|M|writer|12345", "age '-4'"),
    "unknown occupation": ("u.user", "61|30|M|astronaut|12345", "occupation 'astronaut'"),
    "empty zip code": ("u.user", "61|30|M|writer|", "zip code ''"),
    "user id not a number": ("u.user", "x1|30|M|writer|12345", "user id 'x1'"),
    "timestamp beyond int64": ("u.data", "1\t1\t3\t99999999999999999999999", "timestamp '99999999999999999999999'"),
    "timestamp after 2100": ("u.data", "1\t1\t3\t5000000000", "timestamp '5000000000'"),
    "timestamp negative": ("u.data", "1\t1\t3\t-1", "timestamp '-1'"),
    "timestamp fractional": ("u.data", "1\t1\t3\t881250949.5", "timestamp '881250949.5'"),
    "rating a word": ("u.data", "1\t1\tfive\t881250949", "rating 'five'"),
    "rating zero": ("u.data", "1\t1\t0\t881250949", "rating '0'"),
    "rating six": ("u.data", "1\t1\t6\t881250949", "rating '6'"),
    "rating fractional": ("u.data", "1\t1\t4.5\t881250949", "rating '4.5'"),
    "rating nan": ("u.data", "1\t1\tnan\t881250949", "rating 'nan'"),
    "rating of an unknown user": ("u.data", "999\t1\t3\t881250949", "user id 999 is not in u.user"),
    "rating of an unknown movie": ("u.data", "1\t999\t3\t881250949", "movie id 999 is not in u.item"),
    "movie id with a leading zero": ("u.data", "1\t01\t3\t881250949", "movie id '01'"),
    "movie id zero": ("u.item", _movie("0"), "movie id '0'"),
    "genre flag 2": ("u.item", _movie("41", flag="2"), "genre flag '2' is neither 0 nor 1"),
    "release date nonsense": ("u.item", _movie("41", date="31-Foo-1995"), "release date '31-Foo-1995'"),
    "empty title": ("u.item", _movie("41", title=" "), "the title is empty"),
    "title with a NUL": ("u.item", _movie("41", title="Film\x00 (1999)"), "control character"),
    "empty line": ("u.data", "", "the line is empty"),
    "too few fields": ("u.data", "1\t2\t3", "3 fields where GroupLens has 4"),
    "too many fields": ("u.user", USER.replace("1|", "61|", 1) + "|extra", "6 fields where GroupLens has 5"),
    "not ASCII": ("u.data", "1\t2\t3\t88125094\u00e9", "is not ASCII"),
}


def _append(path: Path, line: str) -> int:
    """Appends one line (encoded as the file is) and returns its line number."""
    encoding = "iso-8859-1" if path.name == "u.item" else "utf-8"
    existing = path.read_bytes()
    path.write_bytes(existing + (line + "\n").encode(encoding))
    return existing.count(b"\n") + 1


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_grouplens_data_is_rejected_naming_file_and_line(case, tmp_path):
    name, line, expected = DAMAGE[case]
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=60, num_movies=40, num_ratings=300)
    number = _append(directory / name, line)
    before = snapshot(tmp_path / "data")
    with pytest.raises(DataError) as info:
        towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"), source="files")
    message = str(info.value)
    assert f"{directory / name} line {number} is malformed" in message, message
    assert expected in message and "\n" not in message
    assert snapshot(tmp_path / "data") == before


CLI_DAMAGE = {
    "duplicate movie id": ("u.item", _movie("5", "A different film (1980)"), "movie id 5 appears again"),
    "timestamp beyond int64": ("u.data", "1\t1\t3\t99999999999999999999999", "timestamp '99999999999999999999999'"),
    "non-numeric rating": ("u.data", "1\t1\tgood\t881250949", "rating 'good'"),
}


@pytest.mark.parametrize("case", sorted(CLI_DAMAGE))
def test_damaged_data_is_exit_2_and_one_line_on_the_cli(case, tmp_path):
    name, line, expected = CLI_DAMAGE[case]
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=20, num_movies=15, num_ratings=100)
    number = _append(directory / name, line)
    result = run_cli("data", "info", "movielens-100k", "--data-dir", str(tmp_path / "data"), timeout=120)
    assert result.returncode == 2
    assert f"{name} line {number} is malformed: {expected}" in one_line(result.stderr)


@pytest.mark.parametrize("name", grouplens.GROUPLENS_FILES)
def test_a_byte_order_mark_is_named_not_misread(name, tmp_path):
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=20, num_movies=15, num_ratings=100)
    (directory / name).write_bytes(b"\xef\xbb\xbf" + (directory / name).read_bytes())
    with pytest.raises(DataError, match=f"{name} line 1 is malformed: it starts with a UTF-8 byte-order mark"):
        towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"), source="files")


@pytest.mark.parametrize("ending", ["\r\n", "no final newline"])
def test_harmless_line_endings_still_load(ending, tmp_path):
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=20, num_movies=15, num_ratings=100)
    for name in grouplens.GROUPLENS_FILES:
        raw = (directory / name).read_bytes()
        (directory / name).write_bytes(raw.replace(b"\n", b"\r\n") if ending == "\r\n" else raw.rstrip(b"\n"))
    data = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"), source="files")
    assert len(data.interactions["user_id"]) == 100 and len(data.candidate_ids) == 15
    assert not any(title.endswith("\r") for title in data.candidate_ids)


TITLES = ["Misérables, Les (1995)", "Citizen Kane (1941)", "東京物語 (1953)", "Amélie (2001)", "Ça (1990)"]


@pytest.mark.parametrize("encoding", ["iso-8859-1", "utf-8"])
def test_titles_read_right_in_latin1_and_utf8(encoding, tmp_path):
    titles = [title for title in TITLES if encoding == "utf-8" or all(ord(c) < 256 for c in title)]
    directory = write_grouplens(tmp_path / "data" / "ml-100k", num_users=10, num_movies=len(titles), num_ratings=30)
    lines = [_movie(str(number), title) for number, title in enumerate(titles, start=1)]
    (directory / "u.item").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    data = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"), source="files")
    assert sorted(data.candidate_ids) == sorted(titles)
    assert set(data.interactions["movie_title"]) <= set(titles)


def test_grouplens_files_from_zip_reads_the_three_files():
    archive = make_zip({"ml-100k/u.data": "d", "ml-100k/u.item": "i", "ml-100k/u.user": "u", "ml-100k/README": "r"})
    assert fetch.grouplens_files_from_zip(archive) == {"u.data": b"d", "u.item": b"i", "u.user": b"u"}


# ---------------------------------------------------------------------------------------------
# Property-based: damaged lines either load as valid data or raise DataError, nothing else.

SMALL_USERS = [f"{u}|{20 + u}|{'MF'[u % 2]}|{occupation}|{10000 + u}"
               for u, occupation in enumerate(["student", "writer", "engineer", "none", "doctor", "artist"], start=1)]
SMALL_MOVIES = [_movie(str(m), f"Film {m} (19{50 + m})") for m in range(1, 6)]
SMALL_RATINGS = [f"{u}\t{m}\t{1 + (u + m) % 5}\t{880000000 + 7 * u + m}" for u in range(1, 7) for m in range(1, 6) if (u + m) % 3]
SMALL = {"u.user": SMALL_USERS, "u.item": SMALL_MOVIES, "u.data": SMALL_RATINGS}

_field_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_field_value = st.one_of(
    _field_text,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", " ", "1", "5", "0", "M", "F", "student", "nan", "inf", "1e3", "01", "2", "1.0"]),
)


@st.composite
def damaged_files(draw):
    """The small data set with one line of one file replaced by hostile content."""
    name = draw(st.sampled_from(sorted(SMALL)))
    lines = list(SMALL[name])
    index = draw(st.integers(0, len(lines) - 1))
    separator = grouplens.GROUPLENS_LAYOUT[name][0]
    kind = draw(st.sampled_from(["bytes", "fields", "one field"]))
    if kind == "bytes":
        line = draw(st.binary(max_size=60)).replace(b"\n", b"")
    elif kind == "fields":
        line = separator.join(draw(st.lists(_field_value, max_size=30))).encode("utf-8", "surrogatepass")
    else:
        fields = lines[index].split(separator)
        fields[draw(st.integers(0, len(fields) - 1))] = draw(_field_value)
        line = separator.join(fields).encode("utf-8")
    encoded = {n: [item.encode("latin-1") for item in SMALL[n]] for n in SMALL}
    encoded[name][index] = line.replace(b"\n", b" ")
    return {n: b"\n".join(rows) + b"\n" for n, rows in encoded.items()}


def _expect_valid(data) -> None:
    ratings = data.interactions["user_rating"]
    assert np.all((ratings >= 1) & (ratings <= 5)) and np.all(ratings == np.round(ratings))
    assert np.all((data.interactions["timestamp"] >= 0) & (data.interactions["timestamp"] <= grouplens.MAX_TIMESTAMP))
    assert np.all((data.interactions["raw_user_age"] >= 1) & (data.interactions["raw_user_age"] <= grouplens.MAX_AGE))
    assert all(title.strip() for title in data.candidate_ids)
    assert len(set(data.candidate_features["movie_id"])) == len(data.candidate_ids)
    assert set(data.interactions["movie_id"]) <= set(data.candidate_features["movie_id"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=damaged_files())
def test_damaged_lines_load_as_valid_data_or_raise_data_error(files):
    with tempfile.TemporaryDirectory() as root:
        directory = Path(root) / "ml-100k"
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        before = snapshot(Path(root))
        try:
            data = towerkit.load_dataset("movielens-100k", data_dir=root, source="files")
        except DataError as exc:
            assert "\n" not in str(exc) and "is malformed" in str(exc)
        else:
            _expect_valid(data)
        assert snapshot(Path(root)) == before


_title = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="|"), min_size=1,
                 max_size=20).filter(lambda t: t.strip())
_latin1_title = st.text(alphabet=st.characters(max_codepoint=255, blacklist_categories=("Cs", "Cc"),
                                               blacklist_characters="|"), min_size=1, max_size=20).filter(lambda t: t.strip())


@st.composite
def valid_files(draw):
    """A random valid data set and the values it must load as."""
    encoding = draw(st.sampled_from(["iso-8859-1", "utf-8"]))
    users = draw(st.lists(st.tuples(st.integers(1, grouplens.MAX_AGE), st.sampled_from("MF"),
                                    st.sampled_from(sorted(grouplens.GROUPLENS_OCCUPATIONS)),
                                    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,9}", fullmatch=True)),
                          min_size=1, max_size=5))
    titles = draw(st.lists(_title if encoding == "utf-8" else _latin1_title, min_size=1, max_size=5))
    ratings = draw(st.lists(st.tuples(st.integers(1, len(users)), st.integers(1, len(titles)), st.integers(1, 5),
                                      st.integers(0, grouplens.MAX_TIMESTAMP)), min_size=5, max_size=12))
    files = {
        "u.user": "".join(f"{i}|{a}|{g}|{o}|{z}\n" for i, (a, g, o, z) in enumerate(users, start=1)).encode("ascii"),
        "u.item": "".join(_movie(str(i), t) + "\n" for i, t in enumerate(titles, start=1)).encode(encoding),
        "u.data": "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings).encode("ascii"),
    }
    return files, titles, ratings


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=valid_files())
def test_valid_data_always_loads_with_its_values(generated):
    files, titles, ratings = generated
    with tempfile.TemporaryDirectory() as root:
        directory = Path(root) / "ml-100k"
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        data = towerkit.load_dataset("movielens-100k", data_dir=root, source="files")
    assert list(data.candidate_ids) == titles
    loaded = sorted(zip(data.interactions["user_id"], data.interactions["movie_title"],
                        data.interactions["user_rating"], data.interactions["timestamp"]))
    expected = sorted((str(u), titles[m - 1], float(r), t) for u, m, r, t in ratings)
    assert loaded == expected
