"""Shared fixtures: small generated data, real plugin installs, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import towerkit  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"

# GroupLens genre flag order in u.item.
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
OCCUPATIONS = ["student", "writer", "engineer", "none", "doctor"]


def write_grouplens(directory: Path, num_users: int = 60, num_movies: int = 40, num_ratings: int = 1500,
                    seed: int = 0) -> Path:
    """Writes a small MovieLens-100K in the GroupLens layout (u.data, u.item, u.user)."""
    if num_ratings > num_users * num_movies:
        raise ValueError("more ratings than (user, movie) pairs")
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "u.user", "w", encoding="iso-8859-1") as handle:
        for user in range(1, num_users + 1):
            handle.write(f"{user}|{rng.integers(12, 70)}|{'MF'[user % 2]}|{OCCUPATIONS[user % 5]}|{10000 + user:05d}\n")
    with open(directory / "u.item", "w", encoding="iso-8859-1") as handle:
        for movie in range(1, num_movies + 1):
            # Accented titles check that u.item is read as ISO-8859-1, as GroupLens ships it.
            title = f"Film {movie} ({1950 + movie})" if movie % 7 else f"Misérables {movie} ({1990 + movie % 9})"
            flags = ["0"] * len(GENRES)
            flags[1 + movie % 18] = "1"
            handle.write("|".join([str(movie), title, "01-Jan-1995", "", "http://example.invalid/", *flags]) + "\n")
    popularity = 1.0 / np.arange(1, num_movies + 1)
    popularity /= popularity.sum()
    pairs = set()
    with open(directory / "u.data", "w", encoding="ascii") as handle:
        while len(pairs) < num_ratings:
            user = int(rng.integers(1, num_users + 1))
            movie = int(rng.choice(num_movies, p=popularity)) + 1
            if (user, movie) in pairs:
                continue
            pairs.add((user, movie))
            handle.write(f"{user}\t{movie}\t{rng.integers(1, 6)}\t{880000000 + len(pairs)}\n")
    return directory


@pytest.fixture()
def data_dir(tmp_path, monkeypatch) -> Path:
    """A towerkit data dir holding a small GroupLens-layout MovieLens."""
    write_grouplens(tmp_path / "data" / "ml-100k")
    monkeypatch.setenv("TOWERKIT_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def small_movielens(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_grouplens(directory / "ml-100k")
    return towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files")


@pytest.fixture(scope="session")
def small_leave_last(tmp_path_factory):
    """A small GroupLens set split leave-last, each row with its latest 5 earlier movies (``movie_history``)."""
    directory = tmp_path_factory.mktemp("leave_last")
    write_grouplens(directory / "ml-100k")
    return towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files", split="leave-last",
                                 history_length=5)


@pytest.fixture(scope="session")
def synthetic():
    return towerkit.load_dataset("synthetic", num_users=200, num_items=80, num_interactions=6000, seed=3)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """Installs the test plugin packages with pip into a folder, so their entry points are real."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target),
         str(PLUGINS / "towerkit-test-hashing"), str(PLUGINS / "towerkit-test-broken")],
        check=True,
    )
    return target


TINY_RECIPE = {
    "dataset": {"name": "synthetic", "num_users": 150, "num_items": 60, "num_interactions": 4000},
    "query_tower": {"name": "user", "embedding_dim": 16},
    "candidate_tower": {"name": "movie", "embedding_dim": 16},
    "task": {"name": "retrieval"},
    "train": {"epochs": 2, "batch_size": 512},
    "index": {"name": "brute-force", "k": 10},
    "export": {"example_query": "user 3"},
}


def recipe_text(**sections: dict) -> str:
    """A small synthetic-data recipe as TOML; each keyword updates one section."""
    from towerkit.config import to_toml

    merged = {name: dict(values) for name, values in TINY_RECIPE.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return to_toml(merged)


def make_zip(members: dict) -> bytes:
    """A zip archive in memory, with the given member names and contents."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def run_python(code: str, *, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs Python code in a fresh interpreter and returns the completed process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=str(ROOT))


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs the towerkit CLI as a user would, in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "towerkit.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(cwd or ROOT))


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mounts a tmpfs of ``size`` at ``path``; False where this user may not mount (then the test skips)."""
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def full_disk(tmp_path):
    """A real, tiny file system (48 KiB tmpfs) that fills up: ENOSPC from the kernel, not a mock."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "48k"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def free_ports(count: int) -> list[int]:
    """Ports of 127.0.0.1 that were free a moment ago (bound, read, released)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train_on_two_workers(recipe: Path, output: Path, timeout: int = 400) -> list[tuple[str, str]]:
    """Runs `towerkit train --strategy multi-worker` as two worker processes on 127.0.0.1.

    Asserts both exit 0; returns each worker's (stdout, stderr).
    """
    import json

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "towerkit.cli", "train", str(recipe), "--strategy", "multi-worker",
                 "-o", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                env=env))
        results = [worker.communicate(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (_, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
    return results


def train_recipe(folder: Path, name: str, text: str) -> Path:
    """Writes a recipe into ``folder``, trains it with the CLI, and returns the run directory."""
    (folder / f"{name}.toml").write_text(text)
    result = run_cli("train", str(folder / f"{name}.toml"), "-o", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return folder / "run"


def fit_small(data, style: str = "tfrs", epochs: int = 2, seed: int = 7, train_metrics: bool = False, **parts):
    """Assembles a model on ``data`` and fits it briefly with fixed seeds; returns (model, history)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = towerkit.assemble(data=data, style=style, train_metrics=train_metrics, **parts)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    dataset = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(1024)
    return model, model.fit(dataset, epochs=epochs, verbose=0).history
