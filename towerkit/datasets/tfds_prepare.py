"""MovieLens-100K in tfds' own row order, prepared offline from the GroupLens files.

tfds' ``movielens`` builder parses u.data and u.item with the same parsers
towerkit uses, then writes the records shuffled by a hash of each record's key;
that written order is the order the TFRS tutorial shuffles and splits. Running
the builder itself (its parser, features, writer and version) over the local
files reproduces it exactly, without tfds' download: only the step that would
download and extract the GroupLens zip is pointed at the directory that
already holds u.data, u.item and u.user.

The prepared data is cached in towerkit's data dir, in a towerkit-made
directory replaced atomically; a fingerprint of the source files makes a cache
prepared from other files be prepared again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from towerkit.errors import DataError
from towerkit.files import replace_dir, staging_dir, write_json

CACHE_NAME = "tfds-movielens-100k"
CACHE_KIND = "tfds-cache"
FINGERPRINT = "source.json"
CONFIGS = ("100k-ratings", "100k-movies")


def fingerprint(directory: Path, encoding: str) -> dict[str, str]:
    """sha256 of each GroupLens file, and the encoding u.item was read in."""
    digests = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in ("u.data", "u.item", "u.user")}
    return {**digests, "encoding": encoding}


def _offline_builder_class():
    """tfds' Movielens builder whose download step yields the local GroupLens directory instead."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.structured import movielens

    class OfflineMovielens(movielens.Movielens, skip_registration=True):
        name = "movielens"  # the same name, so the prepared data is tfds' movielens/100k-*
        grouplens_dir = ""

        def _split_generators(self, dl_manager):
            # tfds joins 'ml-100k' to the extracted archive's path; here that is the local directory itself.
            return [tfds.core.SplitGenerator(name=tfds.Split.TRAIN, gen_kwargs={"dir_path": self.grouplens_dir})]

    return OfflineMovielens


def prepared_dir(data_dir: Path, grouplens_dir: Path, encoding: str) -> Path:
    """Returns a tfds data dir holding movielens/100k-ratings and 100k-movies prepared from ``grouplens_dir``.

    Reuses the cache in ``data_dir`` when it was prepared from identical files.

    Raises:
        DataError: tfds could not prepare the files.
    """
    target = Path(data_dir) / CACHE_NAME
    wanted = fingerprint(grouplens_dir, encoding)
    try:
        if json.loads((target / FINGERPRINT).read_text(encoding="utf-8")) == wanted:
            return target
    except (OSError, ValueError):
        pass  # no cache, or an unreadable one: prepare again
    builder_class = _offline_builder_class()
    with staging_dir(target, CACHE_KIND) as staging:
        for config in CONFIGS:
            builder = builder_class(config=config, data_dir=str(staging))
            builder.grouplens_dir = str(grouplens_dir)
            try:
                # tfds prints its progress to stdout, which must stay clean for --json output.
                with contextlib.redirect_stdout(sys.stderr):
                    builder.download_and_prepare(download_dir=str(staging / "downloads"))
            except Exception as exc:  # noqa: BLE001 - any tfds failure is one data error
                raise DataError(f"tensorflow-datasets could not prepare movielens/{config} from {grouplens_dir} "
                                f"({type(exc).__name__}: {exc}); pass source='files' to use u.data's order.") from exc
        write_json(staging / FINGERPRINT, wanted)
        replace_dir(staging, target, CACHE_KIND)
    return target
