"""The interactions dataset with stream = true: Parquet shards read batch by batch, split row by row."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import towerkit
from conftest import run_cli, train_on_two_workers

from towerkit.errors import ConfigError, DataError

RECIPE = """
[dataset]
name = "interactions"
path = "{path}"
query_id = "user"
candidate_id = "item"
timestamp = "ts"
stream = true
{extra}
[query_tower]
name = "features"
side = "query"
[candidate_tower]
name = "features"
side = "candidate"
[task]
name = "retrieval"
[train]
epochs = 2
batch_size = 256
shuffle_buffer = 2000
[evaluate]
max_queries = 40
[index]
name = "brute-force"
k = 5
[export]
example_query = "u3"
"""


def _log(rows: int, seed: int = 0, users: int = 120, items: int = 60) -> pa.Table:
    """Users prefer the items of their own group, so a model has something to learn."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, size=rows)
    item = (user % 6) * (items // 6) + rng.integers(0, items // 6, size=rows)
    return pa.table({"user": [f"u{u}" for u in user], "item": item.astype(np.int64),
                     "ts": np.arange(rows, dtype=np.int64) + 1_700_000_000})


def _shards(directory: Path, table: pa.Table, count: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, count + 1).astype(int)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(start, stop - start), directory / f"part-{number:03d}.parquet")
    return directory


def _stream(path, **options):
    return towerkit.load_dataset("interactions", path=str(path), query_id="user", candidate_id="item",
                                 timestamp="ts", stream=True, **options)


def _recipe(tmp_path: Path, path: Path, extra: str = "") -> Path:
    recipe = tmp_path / "stream.toml"
    recipe.write_text(RECIPE.format(path=path, extra=extra))
    return recipe


def test_train_streams_shards_end_to_end_and_reports_the_evaluation_sample(tmp_path):
    shards = _shards(tmp_path / "events", _log(6000), 4)
    output = tmp_path / "run"
    result = run_cli("train", str(_recipe(tmp_path, shards)), "--output", str(output), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    dataset = metrics["dataset"]
    assert dataset["stream"] is True and dataset["files"] == 4
    assert dataset["interactions"] == 6000 and dataset["train"] + dataset["test"] == 6000
    assert 0.15 < dataset["test"] / 6000 < 0.25  # the hash split's share is close to test_fraction
    assert metrics["test_sample"]["queries"] == 40 and metrics["test_sample"]["test_queries"] > 40
    assert "on a sample of 40 of" in result.stdout
    # Users prefer their group's 10 of 60 items: a trained model ranks the held-out item well above chance.
    assert metrics["test"]["model"]["all"]["top_5"] > 0.2
    answer = run_cli("recommend", "--model", str(output / "model"), "--user", "u3", "-k", "3", "--json")
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert [row["id"] for row in json.loads(answer.stdout)] == metrics["example"]["top"]


def test_the_random_split_is_the_same_however_the_rows_are_sharded(tmp_path):
    table = _log(3000)
    one = _stream(_shards(tmp_path / "one", table, 1))
    many = _stream(_shards(tmp_path / "many", table, 7))
    assert one.describe()["test"] == many.describe()["test"]
    test_pairs = lambda data: sorted(zip(data.interactions["user"][data.test_rows].tolist(),
                                         data.interactions["ts"][data.test_rows].tolist()))
    assert test_pairs(one) == test_pairs(many)
    other_seed = _stream(tmp_path / "one", seed=7)
    assert test_pairs(other_seed) != test_pairs(one)


def test_two_input_pipelines_read_disjoint_files_that_cover_every_training_row(tmp_path):
    import tensorflow as tf

    table = _log(4000)
    data = _stream(_shards(tmp_path / "events", table, 5))
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        stream = data.train_stream(["user", "ts"], 256, shuffle_buffer=500, seed=1, input_context=context)
        seen.append(np.concatenate([batch["ts"].numpy() for batch in stream]))
    files_of = [set(((times - 1_700_000_000) // 800).tolist()) for times in seen]  # 800 rows per shard
    assert files_of == [{0, 2, 4}, {1, 3}]
    assert len(seen[0]) + len(seen[1]) == data.describe()["train"]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_temporal_split_under_stream_cuts_the_last_share_of_time(tmp_path):
    table = _log(2000)
    data = _stream(_shards(tmp_path / "events", table, 3), split="temporal", test_fraction=0.25)
    data.sample_test_queries(None)
    times = data.interactions["ts"]
    assert times[data.test_rows].min() > times[data.train_rows].max()
    pq.write_table(table, tmp_path / "whole.parquet")
    in_memory = towerkit.load_dataset("interactions", path=str(tmp_path / "whole.parquet"), query_id="user",
                                      candidate_id="item", timestamp="ts", split="temporal", test_fraction=0.25)
    assert data.describe()["test"] == len(in_memory.test_rows) > 0


MEMORY_PROBE = """
import resource, sys
import towerkit
data = towerkit.load_dataset("interactions", path=sys.argv[1], query_id="user", candidate_id="item",
                             stream=True, test_fraction=0.01)
data.sample_test_queries(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = sum(len(batch["note"]) for batch in data.train_stream(["user", "item", "note"], 1024,
                                                              shuffle_buffer=2000, seed=0))
print(rows, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(directory: Path) -> tuple[int, int]:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(directory)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows, before, after = map(int, result.stdout.split()[-3:])
    return rows, after


def test_peak_memory_does_not_grow_with_the_number_of_files(tmp_path):
    # Each shard carries 30K rows of a 500-byte text column (about 15 MB): loading 16 shards whole
    # would take 180 MB more than loading 4. The stream reads at most 4 shards at a time.
    rows = 30_000
    note = pa.array(["x" * 500] * rows)
    rng = np.random.default_rng(0)
    for count, name in ((4, "few"), (16, "many")):
        folder = tmp_path / name
        folder.mkdir()
        for number in range(count):
            pq.write_table(pa.table({"user": rng.integers(0, 500, rows), "item": rng.integers(0, 100, rows),
                                     "note": note}), folder / f"part-{number}.parquet", compression="none")
    few_rows, few_peak = _peak_kib(tmp_path / "few")
    many_rows, many_peak = _peak_kib(tmp_path / "many")
    assert many_rows > 3.8 * few_rows  # every training row of every shard went through the stream
    # Allocator noise aside, the peak stays put (measured: within about 30 MB).
    assert many_peak - few_peak < 60 * 1024, (few_peak, many_peak)


def _bad_stream_input(events: Path, case: str) -> dict:
    """Writes the bad input of ``case`` under ``events``; returns the extra dataset options it needs."""
    if case == "csv":
        _shards(events, _log(100), 1)
        (events / "more.csv").write_text("user,item,ts\nu1,1,5\n")
    elif case == "empty-dir":
        events.mkdir()
    elif case == "leave-last":
        _shards(events, _log(100), 1)
        return {"split": "leave-last"}
    elif case == "missing-column":
        events.mkdir()
        pq.write_table(_log(100).rename_columns(["user", "product", "ts"]), events / "part-0.parquet")
    else:
        _shards(events, _log(100), 1)
        pq.write_table(_log(100).drop(["ts"]), events / "part-9.parquet")
    return {}


@pytest.mark.parametrize("case, fragment", [
    ("csv", "trains from Parquet shards"),
    ("empty-dir", "no .csv/.tsv/.parquet/.jsonl file"),
    ("leave-last", "leave-last"),
    ("missing-column", "is not a column"),
    ("schemas-differ", "same columns and types"),
])
def test_bad_stream_input_is_one_clear_error(tmp_path, case, fragment):
    events = tmp_path / "events"
    extra = _bad_stream_input(events, case)
    with pytest.raises((ConfigError, DataError), match=re.escape(fragment)) as raised:
        _stream(events, **extra)
    assert "\n" not in str(raised.value)


def test_bad_stream_input_on_the_cli_exits_2_and_writes_nothing(tmp_path):
    # One case end to end (every case above raises before any work, so they share this path).
    events = tmp_path / "events"
    _bad_stream_input(events, "schemas-differ")
    output = tmp_path / "run"
    result = run_cli("train", str(_recipe(tmp_path, events)), "--output", str(output))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "same columns and types" in result.stderr and result.stderr.count("\n") <= 2, result.stderr
    assert not output.exists()


def test_stream_errors_from_python(tmp_path):
    with pytest.raises(ConfigError, match="stream must be true or false"):
        towerkit.load_dataset("interactions", path=str(tmp_path), query_id="user", candidate_id="item",
                              stream="yes")
    with pytest.raises(DataError, match="does not exist"):
        _stream(tmp_path / "nowhere")


def test_max_queries_samples_test_queries_of_an_in_memory_dataset(tmp_path):
    from towerkit.evaluation import sample_test_queries

    pq.write_table(_log(2000), tmp_path / "events.parquet")
    data = towerkit.load_dataset("interactions", path=str(tmp_path / "events.parquet"), query_id="user",
                                 candidate_id="item")
    sampled = sample_test_queries(data, 10, seed=3)
    queries = data.interactions["user"]
    assert len(np.unique(queries[sampled.test_rows])) == 10
    assert set(sampled.test_rows.tolist()) <= set(data.test_rows.tolist())
    # All test rows of each sampled query are kept; training is untouched.
    kept = np.isin(queries[data.test_rows], queries[sampled.test_rows])
    assert len(sampled.test_rows) == kept.sum() and sampled.train_rows is data.train_rows
    assert sampled.evaluation_sample == {"queries": 10, "test_queries": len(np.unique(queries[data.test_rows])),
                                         "max_queries": 10}
    with pytest.raises(ConfigError, match="max_queries"):
        sample_test_queries(data, 0)


def test_two_workers_stream_their_own_shards_and_the_chief_exports(tmp_path):
    shards = _shards(tmp_path / "events", _log(4000), 4)
    recipe = _recipe(tmp_path, shards)
    output = tmp_path / "run"
    results = train_on_two_workers(recipe, output)
    assert "2 replicas" in results[0][0]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["dataset"]["stream"] is True and metrics["test"]["model"]["all"]["top_5"] > 0


def test_a_negative_max_queries_is_refused_before_any_work(tmp_path):
    shards = _shards(tmp_path / "events", _log(200), 1)
    recipe = _recipe(tmp_path, shards)
    recipe.write_text(recipe.read_text().replace("max_queries = 40", "max_queries = -1"))
    result = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "evaluate.max_queries" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
