"""The interactions dataset: reading your own files, splits, bad input, the features tower, inspect."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import towerkit
from towerkit.datasets.interactions import InteractionsDataset
from towerkit.errors import ConfigError, DataError

EVENTS = "user,item,ts\n1,a,100\n2,b,200\n1,c,300\n3,a,400\n2,a,500\n3,c,600\n1,b,700\n2,c,800\n3,b,900\n1,a,950\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _load(path, **options):
    options.setdefault("query_id", "user")
    options.setdefault("candidate_id", "item")
    return towerkit.load_dataset("interactions", path=str(path), **options)


def _pairs(data, rows):
    return set(zip(data.interactions[data.query_id_key][rows].tolist(),
                   data.interactions[data.candidate_id_key][rows].tolist()))


# --- Reading ------------------------------------------------------------------------------------


def test_ids_keep_their_text_and_integers_become_their_decimal_text(tmp_path):
    csv_data = _load(_write(tmp_path / "e.csv", "user,item\n007,10\n8,11\n007,12\n9,10\n8,12\n"))
    assert csv_data.interactions["user"].tolist() == ["007", "8", "007", "9", "8"]
    assert csv_data.interactions["user"].dtype.kind == "U"
    table = pa.table({"user": pa.array([7, 8, 7, 9, 8], pa.int64()), "item": ["x", "y", "z", "x", "z"]})
    pq.write_table(table, tmp_path / "e.parquet")
    parquet_data = _load(tmp_path / "e.parquet")
    assert parquet_data.interactions["user"].tolist() == [str(v) for v in [7, 8, 7, 9, 8]]
    assert sorted(parquet_data.candidate_ids.tolist()) == ["x", "y", "z"]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".tsv", ".parquet", ".jsonl", ".jsonl.gz"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    rows = [line.split(",") for line in EVENTS.strip().splitlines()[1:]]
    path = tmp_path / f"events{suffix}"
    if suffix.startswith(".parquet"):
        pq.write_table(pa.table({"user": [r[0] for r in rows], "item": [r[1] for r in rows],
                                 "ts": [int(r[2]) for r in rows]}), path)
    else:
        if suffix.startswith(".jsonl"):
            text = "".join(json.dumps({"user": r[0], "item": r[1], "ts": int(r[2])}) + "\n" for r in rows)
        else:
            text = EVENTS.replace(",", "\t") if suffix == ".tsv" else EVENTS
        data = text.encode("utf-8")
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    data = _load(path, timestamp="ts")
    assert data.interactions["user"].tolist() == [r[0] for r in rows]
    assert data.interactions["item"].tolist() == [r[1] for r in rows]
    assert data.interactions["ts"].tolist() == [int(r[2]) for r in rows]


def test_a_directory_or_glob_of_shards_reads_every_shard_in_name_order(tmp_path):
    lines = EVENTS.strip().splitlines()
    _write(tmp_path / "shards" / "part-0.csv", "\n".join([lines[0], *lines[1:5]]) + "\n")
    _write(tmp_path / "shards" / "part-1.csv", "\n".join([lines[0], *lines[5:]]) + "\n")
    _write(tmp_path / "shards" / "_SUCCESS", "")
    whole = _load(_write(tmp_path / "whole.csv", EVENTS))
    for path in (tmp_path / "shards", tmp_path / "shards" / "part-*.csv"):
        sharded = _load(path)
        assert sharded.interactions["user"].tolist() == whole.interactions["user"].tolist()
        assert len(sharded.sources) == 2


def test_candidates_and_queries_tables_join_their_columns(tmp_path):
    events = _write(tmp_path / "e.csv", EVENTS)
    items = _write(tmp_path / "items.csv", "item,genre\nc,drama\nb,comedy\na,drama\nd,horror\n")
    users = _write(tmp_path / "users.csv", "user,age\n1,30\n2,40\n3,50\n")
    data = _load(events, candidates=str(items), queries=str(users))
    # The candidate set is the candidates table, in its order, including never-seen 'd'.
    assert data.candidate_ids.tolist() == ["c", "b", "a", "d"]
    genre_of = dict(zip(data.candidate_features["item"].tolist(), data.candidate_features["genre"].tolist()))
    assert data.interactions["genre"].tolist() == [genre_of[i] for i in data.interactions["item"].tolist()]
    assert data.interactions["age"].tolist() == [int(u) * 10 + 20 for u in data.interactions["user"].tolist()]
    assert data.candidate_feature_columns == ("genre",) and data.query_feature_columns == ("age",)


def test_duplicated_rows_are_kept_and_counted(tmp_path):
    data = _load(_write(tmp_path / "e.csv", "user,item,ts\n1,a,5\n1,a,5\n1,a,6\n2,b,1\n1,a,5\n3,c,2\n"),
                 timestamp="ts")
    assert len(data.interactions["user"]) == 6
    assert data.duplicate_rows == 2


def test_from_arrow_matches_the_file(tmp_path):
    path = _write(tmp_path / "e.csv", EVENTS)
    table = pa.table({"user": ["1", "2", "1", "3", "2", "3", "1", "2", "3", "1"],
                      "item": ["a", "b", "c", "a", "a", "c", "b", "c", "b", "a"]})
    from_table = InteractionsDataset.from_arrow(table, query_id="user", candidate_id="item")
    from_file = _load(path)
    assert _pairs(from_table, from_table.train_rows) == _pairs(from_file, from_file.train_rows)
    assert from_table.test_rows.tolist() == from_file.test_rows.tolist()


def test_a_csv_column_whose_type_changes_after_the_first_block_reads_as_one_type(tmp_path):
    import pyarrow.csv as pacsv

    from towerkit.datasets.tabular import read_table

    # 200k lines exceed the readers' first 1 MiB block; only the last line's score is not an integer.
    lines = [f"{i % 97},{i % 13},{i}" for i in range(200_000)] + ["5,6,2.5"]
    path = _write(tmp_path / "e.csv", "user,item,score\n" + "\n".join(lines) + "\n")
    table = read_table(path, ["user", "item"])
    assert table.schema.field("score").type == pa.float64()
    assert table.equals(pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={"user": pa.string(), "item": pa.string()})))
    data = _load(path)
    assert data.interactions["score"][-1] == 2.5 and data.interactions["user"][-1] == "5"


# --- Ids held as codes ---------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [
    [12, 3, 100, 3, 7, 12, 1000, 0, 10, 9],            # a dense range: coded by a lookup table
    [5, 10**15, -3, 5, 42, 10**15 + 7, 0, -30, 9, 42],  # a wide range with negatives: hashed
    ["b", "a", "007", "b", "10", "9", "a", "é", "10", "x"],
])
def test_ids_are_held_as_codes_and_read_back_as_the_same_text_in_the_same_order(tmp_path, ids):
    items = [f"i{i % 4}" for i in range(len(ids))]
    pq.write_table(pa.table({"user": ids, "item": items, "ts": list(range(len(ids)))}), tmp_path / "e.parquet")
    data = _load(tmp_path / "e.parquet", timestamp="ts", test_fraction=0.3)
    texts = [str(i) for i in ids]
    table, codes = data.interactions.coded["user"]
    assert codes.dtype == np.int32 and len(codes) == len(ids)
    assert data.interactions["user"].tolist() == texts
    assert table.tolist() == np.unique(texts).tolist() == data.vocabularies["user"].tolist()
    assert data.train_features(["user"])["user"].tolist() == [texts[r] for r in data.train_rows]
    assert data.test_features()["item"].tolist() == [items[r] for r in data.test_rows]
    assert data.describe()["queries"] == len(set(texts))


def test_text_order_of_integers_is_computed_as_the_text_sorts():
    from towerkit.datasets.tabular import decimal_text_order

    rng = np.random.default_rng(0)
    for high in (10, 1000, 10**9, 10**17, 2**62):
        numbers = np.unique(rng.integers(0, high, size=2000))
        rng.shuffle(numbers)
        assert numbers[decimal_text_order(numbers)].astype(str).tolist() == np.sort(numbers.astype(str)).tolist()
    edge = np.array([0, 1, 10, 100, 2, 19, 9, 99, -5, -50, -6, 10**18])
    assert edge[decimal_text_order(edge)].astype(str).tolist() == np.sort(edge.astype(str)).tolist()


def test_coded_counts_match_counts_on_the_text(tmp_path):
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 30, size=400), rng.integers(0, 12, size=400)
    users[50:60], items[50:60] = users[40], items[40]  # repeated rows
    pq.write_table(pa.table({"user": users, "item": items}), tmp_path / "e.parquet")
    data = _load(tmp_path / "e.parquet")
    train_items = items[data.train_rows].astype(str)
    distinct, counts = np.unique(train_items, return_counts=True)
    frequencies = data.candidate_train_frequencies()
    assert list(frequencies) == distinct.tolist()
    assert np.allclose(list(frequencies.values()), counts / counts.sum())
    pairs = list(zip(users.tolist(), items.tolist()))
    assert data.duplicate_rows == len(pairs) - len(set(pairs))


def test_in_memory_training_batches_are_the_generic_pipelines_batches(tmp_path):
    from towerkit.datasets.base import to_tf_dataset

    rng = np.random.default_rng(2)
    table = pa.table({"user": rng.integers(0, 50, size=300), "item": [f"i{v}" for v in rng.integers(0, 20, size=300)],
                      "ts": np.arange(300)})
    data = InteractionsDataset.from_arrow(table, query_id="user", candidate_id="item", timestamp="ts")
    keys = ("item", "ts", "user")
    coded = list(data.train_stream(keys, 64, shuffle_buffer=100, seed=3).as_numpy_iterator())
    generic = list(to_tf_dataset(data.train_features(keys)).shuffle(100, seed=3).batch(64).as_numpy_iterator())
    assert len(coded) == len(generic) == 4
    for ours, theirs in zip(coded, generic):
        assert {k: v.tolist() for k, v in ours.items()} == {k: v.tolist() for k, v in theirs.items()}


# --- Splits -------------------------------------------------------------------------------------


def test_validation_is_carved_from_train_never_from_test(tmp_path):
    path = _write(tmp_path / "e.csv", "user,item\n" + "".join(f"{i % 7},{i % 11}\n" for i in range(200)))
    plain = _load(path)
    with_validation = _load(path, validation_fraction=0.1)
    assert with_validation.test_rows.tolist() == plain.test_rows.tolist()
    assert len(with_validation.validation_rows) == 20
    assert set(with_validation.train_rows) | set(with_validation.validation_rows) == set(plain.train_rows)
    assert not set(with_validation.train_rows) & set(with_validation.validation_rows)
    validation = with_validation.validation_features(["user"])["user"]
    assert validation.tolist() == with_validation.interactions["user"][with_validation.validation_rows].tolist()
    with pytest.raises(towerkit.FeatureError, match="'usr'"):
        with_validation.validation_features(["usr"])


def test_temporal_split_cuts_the_last_share_of_time(tmp_path):
    data = _load(_write(tmp_path / "e.csv", EVENTS), timestamp="ts", split="temporal", test_fraction=0.2,
                 validation_fraction=0.1)
    times = data.interactions["ts"]
    # Time runs 100..950: test is after 950 - 0.2 * 850 = 780, validation after 695.
    assert sorted(times[data.test_rows].tolist()) == [800, 900, 950]
    assert times[data.validation_rows].tolist() == [700]
    assert times[data.train_rows].max() < times[data.validation_rows].min()


def test_leave_last_holds_out_each_querys_last_interactions(tmp_path):
    data = _load(_write(tmp_path / "e.csv", EVENTS + "4,a,50\n"), timestamp="ts", split="leave-last", leave_last=2)
    test = data.interactions["ts"][data.test_rows].tolist()
    # Users 1, 2, 3 keep 100/300, 200, 400 in train; their last two by time are test.
    assert sorted(test) == [500, 600, 700, 800, 900, 950]
    # User 4 has one interaction, so it stays in train.
    assert "4" in data.interactions["user"][data.train_rows].tolist()


# --- Bad input: one clear error each, nothing written --------------------------------------------


def _parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


BAD_INPUTS = {
    "missing column": (lambda d: _write(d / "e.csv", EVENTS), {"candidate_id": "itme"},
                       ConfigError, ["'itme'", "did you mean 'item'", "user, item, ts"]),
    "empty file": (lambda d: _write(d / "e.csv", ""), {}, DataError, ["e.csv is empty"]),
    "header only": (lambda d: _write(d / "e.csv", "user,item\n"), {}, DataError, ["has no rows"]),
    "empty id": (lambda d: _write(d / "e.csv", "user,item\n1,a\n,b\n"), {}, DataError,
                 ["e.csv row 2 (line 3)", "empty id", "'user'"]),
    "null id": (lambda d: _parquet(d / "e.parquet", pa.table({"user": ["1", None], "item": ["a", "b"]})), {},
                DataError, ["e.parquet row 2", "empty id"]),
    "float ids": (lambda d: _parquet(d / "e.parquet", pa.table({"user": [1.5, 2.0], "item": ["a", "b"]})), {},
                  DataError, ["ids must be strings or integers"]),
    "bad timestamp": (lambda d: _write(d / "e.csv", "user,item,ts\n1,a,2024-01-01\n2,b,yesterday\n"),
                      {"timestamp": "ts"}, DataError, ["row 2", "'yesterday'", "ISO 8601"]),
    "missing timestamp": (lambda d: _write(d / "e.csv", "user,item,ts\n1,a,5\n2,b,\n"), {"timestamp": "ts"},
                          DataError, ["row 2", "no timestamp"]),
    "mixed types jsonl": (lambda d: _write(d / "e.jsonl", '{"user": "1", "item": "a", "n": 1}\n'
                                           '{"user": "2", "item": "b", "n": "two"}\n'), {}, DataError,
                          ["mixes value types"]),
    "mixed types csv": (lambda d: _write(d / "e.csv", "user,item,n\n1,a,1\n2,b,2\n3,c,3\n4,d,x\n"), {},
                        DataError, ["'n' mixes numbers and text", "row 4", "'x'"]),
    "mixed types across shards": (
        lambda d: (_write(d / "s" / "a.jsonl", '{"user": "1", "item": "a", "n": 1}\n'),
                   _write(d / "s" / "b.jsonl", '{"user": "2", "item": "b", "n": "x"}\n'))[0].parent,
        {}, DataError, ["'n' mixes value types", "a.jsonl", "b.jsonl"]),
    "non-UTF-8": (lambda d: _write(d / "e.csv", b"user,item\n1,caf\xe9\n2,b\n"), {}, DataError,
                  ["not valid UTF-8", "line 2"]),
    "candidates missing ids": (
        lambda d: (_write(d / "e.csv", EVENTS), _write(d / "items.csv", "item,genre\na,x\nb,y\n"))[0],
        {"candidates": "items.csv"}, DataError, ["items.csv lacks 1 item value", "'c'"]),
    "candidates id twice": (
        lambda d: (_write(d / "e.csv", EVENTS), _write(d / "items.csv", "item,genre\na,x\nb,y\nc,z\nb,w\n"))[0],
        {"candidates": "items.csv"}, DataError, ["holds id 'b' twice", "row 2", "row 4"]),
    "ragged row": (lambda d: _write(d / "e.csv", "user,item\n1,a\n2,b,extra\n"), {}, DataError,
                   ["cannot read", "e.csv", "Expected 2 columns, got 3"]),
    "feature column clash": (
        lambda d: (_write(d / "e.csv", EVENTS), _write(d / "items.csv", "item,user\na,x\nb,y\nc,z\n"))[0],
        {"candidates": "items.csv"}, DataError, ["'user' of", "items.csv also exist"]),
    "glob matches nothing": (lambda d: d / "nothing-*.csv", {}, DataError, ["matches no"]),
    "no test rows": (lambda d: _write(d / "e.csv", "user,item,ts\n1,a,5\n2,b,5\n1,b,5\n"),
                     {"timestamp": "ts", "split": "temporal"}, DataError, ["leaves no test rows"]),
    "no train rows": (lambda d: _write(d / "e.csv", "user,item\n1,a\n"), {"test_fraction": 0.9}, DataError,
                      ["leaves no train rows"]),
    "unknown split": (lambda d: _write(d / "e.csv", EVENTS), {"split": "temporl"}, ConfigError,
                      ["did you mean 'temporal'"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, case):
    make, options, error, fragments = BAD_INPUTS[case]
    path = make(tmp_path)
    options = {k: str(tmp_path / v) if k in ("candidates", "queries") else v for k, v in options.items()}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(error) as raised:
        _load(path, **options)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --- The features tower --------------------------------------------------------------------------

ITEMS = ("item,genre,tags,price,title,launched\n"
         "a,x,p|q,1.5,the big one,2020-01-01\nb,y,q,2,a small red thing,2021-06-01\n"
         "c,x,,3,and another long title,2022-03-04\n")


@pytest.fixture()
def with_tables(tmp_path):
    events = _write(tmp_path / "e.csv", EVENTS)
    items = _write(tmp_path / "items.csv", ITEMS)
    users = _write(tmp_path / "users.csv", "user,age,vip\n1,30,true\n2,41,false\n3,22,true\n")
    return _load(events, timestamp="ts", candidates=str(items), queries=str(users))


def _encoder_names(tower):
    return {column: encoder.registered_name for column, encoder in tower.encoders.items()}


def test_features_tower_reads_its_sides_columns_with_inferred_encoders(with_tables):
    model = towerkit.assemble(query={"name": "features", "side": "query"},
                              candidate={"name": "features", "side": "candidate", "embedding_dim": 32},
                              data=with_tables)
    assert model.query_tower.feature_keys == ("user", "age", "vip")
    assert _encoder_names(model.candidate_tower) == {"item": "id", "genre": "categorical", "tags": "multi",
                                                     "price": "numeric", "title": "text", "launched": "timestamp"}
    assert _encoder_names(model.query_tower) == {"user": "id", "age": "categorical", "vip": "categorical"}
    outputs = model.candidate_tower({k: with_tables.candidate_features[k] for k in model.candidate_tower.feature_keys})
    assert outputs.shape == (3, 32)
    # Candidates with the same genre share that part of their embedding, so they differ from unrelated ones.
    assert not np.allclose(outputs[0], outputs[1])


def test_encoders_are_chosen_per_column_and_skip_or_add_columns(with_tables):
    tower = towerkit.create_tower("features", side="query", encoders={
        "age": {"encoder": "numeric", "buckets": 4}, "vip": "skip", "ts": "timestamp"})
    tower.adapt(with_tables.adapt_features())
    assert tower.feature_keys == ("user", "age", "ts")
    assert _encoder_names(tower) == {"user": "id", "age": "numeric", "ts": "timestamp"}
    assert tower.encoders["age"].boundaries and tower.vocabulary == ["1", "2", "3"]
    batch = {k: with_tables.interactions[k][:4] for k in tower.feature_keys}
    assert tower(batch).shape == (4, 32)


def test_multi_valued_cells_pool_their_values():
    from towerkit.towers.encoders import create_encoder

    encoder = create_encoder("multi", "tags", 4)
    encoder.adapt(np.array(["a|b", "b", ""]))
    out = encoder(tf_constant(["a|b", "a", "b", "", "zz"])).numpy()
    np.testing.assert_allclose(out[0], (out[1] + out[2]) / 2, rtol=1e-5)
    assert np.allclose(out[3], 0.0)


def tf_constant(values):
    import tensorflow as tf

    return tf.constant(values)


def test_a_saved_tower_config_rebuilds_the_same_tower(with_tables):
    from towerkit.towers.columns import FeaturesTower

    tower = towerkit.create_tower("features", side="candidate", combine="concat", layers=[16, 8])
    tower.adapt(with_tables.adapt_features())
    columns = {k: with_tables.candidate_features[k] for k in tower.feature_keys}
    first = tower(columns)
    clone = FeaturesTower.from_config(json.loads(json.dumps(tower.get_config())))
    clone(columns)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(columns), first, rtol=1e-6)
    assert first.shape == (3, 8)


@pytest.mark.parametrize("column, encoder", [("title", "numeric"), ("price", "text"), ("price", "multi"),
                                             ("genre", "timestamp"), ("price", "categorical")])
def test_an_encoder_that_does_not_fit_the_column_type_is_one_clear_error(with_tables, column, encoder):
    tower = towerkit.create_tower("features", side="candidate", encoders={column: encoder})
    with pytest.raises(ConfigError) as raised:
        tower.adapt(with_tables.adapt_features())
    message = str(raised.value)
    assert f"encoder '{encoder}' does not fit column '{column}'" in message and "\n" not in message


def test_unknown_encoder_and_missing_side_are_clear_errors(with_tables, small_movielens):
    with pytest.raises(ConfigError, match="did you mean 'categorical'"):
        towerkit.create_tower("features", side="candidate", encoders={"genre": "categorcal"}).adapt(
            with_tables.adapt_features())
    with pytest.raises(ConfigError, match='side = "query"'):
        towerkit.create_tower("features").adapt(with_tables.adapt_features())
    with pytest.raises(ConfigError, match="columns = "):
        towerkit.create_tower("features", side="query").adapt(small_movielens.adapt_features())
    # Named columns work on any dataset.
    tower = towerkit.create_tower("features", columns=["user_id", "user_gender"])
    tower.adapt(small_movielens.adapt_features())
    assert _encoder_names(tower) == {"user_id": "id", "user_gender": "categorical"}


def test_bound_to_a_dataset_the_tower_needs_no_options(with_tables):
    tower = towerkit.create_tower("features")
    tower.bind_dataset(with_tables, "candidate")
    assert tower.feature_keys == ("item", "genre", "tags", "price", "title", "launched")


def test_third_party_encoders_register_by_name(with_tables):
    import tensorflow as tf

    from towerkit.towers import encoders

    class LengthEncoder(encoders.Encoder):
        accepts, accepts_text = "U", "text"

        def __init__(self, feature, embedding_dim, **kwargs):
            super().__init__(feature, embedding_dim, **kwargs)
            self.dense = tf.keras.layers.Dense(embedding_dim)

        def call(self, values):
            return self.dense(tf.cast(tf.strings.length(values), tf.float32)[:, None])

    encoders.register_encoder("length", LengthEncoder)
    try:
        with pytest.raises(towerkit.DuplicateComponentError):
            encoders.register_encoder("length", lambda *a, **k: None)
        tower = towerkit.create_tower("features", side="candidate", encoders={"title": "length"})
        tower.adapt(with_tables.adapt_features())
        assert isinstance(tower.encoders["title"], LengthEncoder)
        assert tower({k: with_tables.candidate_features[k] for k in tower.feature_keys}).shape == (3, 32)
    finally:
        encoders.ENCODERS.pop("length")


# --- inspect and the starter recipe --------------------------------------------------------------


def test_inspect_reports_schema_counts_duplicates_time_and_top_candidates(tmp_path):
    from towerkit.datasets.profile import inspect

    events = _write(tmp_path / "events.csv", "user_id,item,ts,device\n" + "".join(
        f"u{i % 4},i{(i * 7) % 5},{1_700_000_000 + 3600 * i},{'web' if i % 3 else 'app'}\n" for i in range(40))
        + "u0,i0,1700000000,app\n")
    items = _write(tmp_path / "items.csv", "item,genre\n" + "".join(f"i{j},g{j % 2}\n" for j in range(6)))
    report = inspect(events, candidates=str(items))
    assert (report["query_id"], report["candidate_id"], report["timestamp"]) == ("user_id", "item", "ts")
    assert report["guessed"] == ["query_id", "candidate_id", "timestamp"]
    assert (report["rows"], report["queries"], report["candidates"], report["candidates_with_interactions"]) == (41, 4, 6, 5)
    assert report["duplicate_rows"] == 1
    # 4 users x 5 items each way: (i*7)%5 walks every item for every user.
    pairs = {(f"u{i % 4}", f"i{(i * 7) % 5}") for i in range(40)}
    assert report["density"] == pytest.approx(len(pairs) / (4 * 6))
    assert report["time_range"]["first"] == "2023-11-14T22:13:20Z"
    assert report["top_candidates"][0] == {"id": "i0", "count": 9, "share": pytest.approx(9 / 41)}
    encoders = {c["name"]: (c["role"], c["encoder"]) for c in report["columns"]}
    assert encoders == {"user_id": ("query id", "id"), "item": ("candidate id", "id"), "ts": ("timestamp", "timestamp"),
                        "device": ("interaction feature", "categorical"), "genre": ("candidate feature", "categorical")}
    json.dumps(report)
    from towerkit.datasets.profile import format_report

    text = format_report(report)
    assert "41 interactions" in text and "guessed: query_id, candidate_id, timestamp" in text
    assert "genre" in text and "duplicate rows 1 (kept)" in text and "i0 (9, 22.0%)" in text


def test_inspect_says_which_option_to_pass_when_it_cannot_guess(tmp_path):
    from towerkit.datasets.profile import inspect

    with pytest.raises(DataError, match="pass query_id .columns: a, b"):
        inspect(_write(tmp_path / "e.csv", "a,b\n1,2\n"))


def test_the_starter_recipe_trains_as_it_is(tmp_path):
    from towerkit import config as recipe_config
    from towerkit.datasets.profile import starter_recipe
    from towerkit.pipeline import run

    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, size=600)
    items = (users % 6) * 4 + rng.integers(0, 4, size=600)
    events = _write(tmp_path / "events.csv", "user,item,ts\n" + "".join(
        f"{u},item {i},{1000 + n}\n" for n, (u, i) in enumerate(zip(users, items))))
    catalog = _write(tmp_path / "items.csv", "item,genre\n" + "".join(f"item {j},g{j // 4}\n" for j in range(24)))
    text = starter_recipe(events, candidates=str(catalog), text_columns=["item"])
    recipe = _write(tmp_path / "my.toml", text)
    raw, origin = recipe_config.load_recipe(str(recipe))
    raw["train"]["epochs"] = 2
    config = recipe_config.resolve(raw, origin)
    ctx = run(config, tmp_path / "run", log=lambda line: None, verbose=0)
    assert ctx.model.candidate_tower.feature_keys == ("item", "genre")
    assert (tmp_path / "run" / "model").is_dir()
    assert ctx.metrics["example"]["query"] == config["export"]["example_query"]


# --- Claims: same split and quality as movielens-100k; a category column helps -------------------


def _top(result, key):
    return getattr(result, "all", result)[key]


def _train_and_score(data, query, candidate, ks, epochs=3, batch_size=128, learning_rate=0.1):
    import tensorflow as tf

    from towerkit.evaluation import evaluate_topk

    tf.keras.utils.set_random_seed(1)
    model = towerkit.assemble(query=query, candidate=candidate, data=data)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate))
    rows = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys))
    model.fit(rows.shuffle(10_000, seed=1).batch(batch_size), epochs=epochs, verbose=0)
    return evaluate_topk(model, data, ks=ks)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_movielens_written_out_trains_to_the_same_split_and_quality(data_dir, tmp_path, suffix):
    movielens = towerkit.load_dataset("movielens-100k", data_dir=str(data_dir), source="files")
    columns = {key: movielens.interactions[key] for key in ("user_id", "movie_id", "timestamp")}
    path = tmp_path / f"ratings{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table(columns), path)
    else:
        path.write_text("user_id,movie_id,timestamp\n" + "".join(
            f"{u},{m},{t}\n" for u, m, t in zip(*columns.values())), encoding="utf-8")
    data = _load(path, query_id="user_id", candidate_id="movie_id", timestamp="timestamp")
    for rows, expected in ((data.train_rows, movielens.train_rows), (data.test_rows, movielens.test_rows)):
        assert sorted(_pairs(data, rows)) == sorted(set(zip(movielens.interactions["user_id"][expected].tolist(),
                                                            movielens.interactions["movie_id"][expected].tolist())))
    assert sorted(data.candidate_ids.tolist()) == sorted(movielens.candidate_features["movie_id"].tolist())
    query, candidate = ({"name": "id-embedding", "feature": key} for key in ("user_id", "movie_id"))
    ks = [5, 10, 20]
    ours = _train_and_score(data, query, candidate, ks=ks)
    theirs = _train_and_score(movielens, query, candidate, ks=ks)
    for k in ks:
        assert abs(_top(ours, f"top_{k}") - _top(theirs, f"top_{k}")) <= 0.005
    # The fixture has no personal signal, so the numbers are low; they must still be non-trivial to compare.
    assert 0 < _top(ours, "top_20") < 1


def _planted_categories(num_users=60, num_items=600, num_categories=20, per_user=40, seed=0):
    """Each user picks items only from two liked categories; items are too many to learn by id alone."""
    rng = np.random.default_rng(seed)
    item_category = rng.integers(0, num_categories, size=num_items)
    users, items = [], []
    for user in range(num_users):
        pool = np.flatnonzero(np.isin(item_category, rng.choice(num_categories, size=2, replace=False)))
        users += [f"u{user}"] * per_user
        items += [f"i{j}" for j in rng.choice(pool, size=per_user)]
    catalog = pa.table({"item": [f"i{j}" for j in range(num_items)], "category": [f"c{c}" for c in item_category]})
    return InteractionsDataset.from_arrow(pa.table({"user": users, "item": items}), "user", "item",
                                          candidates=catalog)


def test_a_planted_category_column_is_learned_better_than_ids_alone():
    data = _planted_categories()
    query = {"name": "features", "side": "query", "embedding_dim": 16}
    scores = {}
    for label, encoders in (("with", {}), ("without", {"category": "skip"})):
        candidate = {"name": "features", "side": "candidate", "embedding_dim": 16, "encoders": encoders}
        scores[label] = _top(_train_and_score(data, query, candidate, ks=[50], epochs=15, learning_rate=0.2),
                             "top_50")
    # Measured 0.83 with the category and 0.71 without (seed 0); seeds 1 and 2 give margins of 0.09 and 0.15.
    assert scores["with"] > scores["without"] + 0.05, scores


def test_text_columns_keep_their_text_and_allow_stray_words(tmp_path):
    path = _write(tmp_path / "e.csv", "user,item,zip\n1,a,02139\n2,b,10001\n3,a,K1A0B1\n")
    data = _load(path, text_columns=["zip"])
    assert data.interactions["zip"].tolist() == ["02139", "10001", "K1A0B1"]
    with pytest.raises(DataError, match="'zip' mixes numbers and text"):
        _load(path)


def test_an_empty_feature_column_loads_as_one_empty_category(tmp_path):
    data = _load(_write(tmp_path / "e.csv", "user,item,note\n1,a,\n2,b,\n1,b,\n"))
    assert data.interactions["note"].tolist() == ["", "", ""]


@pytest.mark.parametrize("options, fragment", [
    ({"text_columns": "zip"}, "text_columns must be a list"),
    ({"query_id": ""}, "query_id must name a column"),
    ({"query_id": "item"}, "two different columns"),
    ({"split": "temporal"}, "needs timestamp"),
    ({"split": "leave-last", "timestamp": "ts", "test_fraction": 0.1}, "does not apply"),
    ({"test_fraction": 0.6, "validation_fraction": 0.4}, "must be below 1"),
    ({"shuffle": "fast"}, "shuffle must be one of"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_dataset_options_are_one_clear_config_error(tmp_path, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _load(_write(tmp_path / "e.csv", EVENTS), **options)


def test_bad_tower_options_are_one_clear_config_error():
    for options, fragment in (({"side": "both"}, "side must be"), ({"encoders": "genre"}, "encoders must be a table"),
                              ({"columns": "user"}, "columns must be a non-empty list"),
                              ({"encoders": {"genre": 3}}, "encoders.genre must be"),
                              ({"layers": [8]}, "layers needs combine")):
        with pytest.raises(ConfigError, match=fragment):
            towerkit.create_tower("features", **options)


# --- The plugin contracts hold for the built-ins ------------------------------------------------


def test_the_interactions_dataset_meets_the_dataset_contract(with_tables):
    from towerkit.testing import check_dataset_contract

    check_dataset_contract(with_tables)


@pytest.mark.parametrize("side, combine", [("query", "sum"), ("candidate", "concat")])
def test_the_features_tower_meets_the_tower_contract(with_tables, tmp_path, side, combine):
    from towerkit.testing import check_tower_contract

    tower = towerkit.create_tower("features", side=side, combine=combine)
    tower.adapt(with_tables.adapt_features())
    table = with_tables.query_features if side == "query" else with_tables.candidate_features
    check_tower_contract(tower, {k: table[k].tolist() for k in tower.feature_keys}, tmp_path)


def test_list_columns_become_multi_valued_features(tmp_path):
    events = _write(tmp_path / "e.csv", EVENTS)
    pq.write_table(pa.table({"item": ["a", "b", "c"], "tags": [["x", "y"], ["y"], []]}), tmp_path / "items.parquet")
    data = _load(events, candidates=str(tmp_path / "items.parquet"))
    tower = towerkit.create_tower("features", side="candidate", embedding_dim=4, encoders={"item": "skip"})
    tower.adapt(data.adapt_features())
    assert _encoder_names(tower) == {"tags": "multi"} and tower.encoders["tags"].vocabulary == ["x", "y"]
    out = tower({"tags": data.candidate_features["tags"]}).numpy()
    encoder = tower.encoders["tags"]
    import tensorflow as tf

    single = encoder(tf.constant(["x", "y"])).numpy()
    np.testing.assert_allclose(out[0], single.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out[1], single[1], rtol=1e-5)
    assert np.allclose(out[2], 0.0)


def test_any_small_file_loads_or_is_one_towerkit_error(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    directory = tmp_path_factory.mktemp("fuzz")
    cell = st.one_of(st.text(alphabet="ab1 2.-:TZ,\"\n\\|;", max_size=6), st.integers(-5, 10**12).map(str))
    rows = st.lists(st.lists(cell, min_size=1, max_size=4).map(",".join), max_size=8)
    options = st.fixed_dictionaries({}, optional={"timestamp": st.just("ts"),
                                                  "split": st.sampled_from(["random", "temporal", "leave-last"]),
                                                  "validation_fraction": st.sampled_from([0.0, 0.1, 0.5])})

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(header=st.sampled_from(["user,item,ts,x", "user,item", "user,ts"]), lines=rows, raw=st.binary(max_size=16),
           options=options, as_bytes=st.booleans())
    def load(header, lines, raw, options, as_bytes):
        path = directory / "e.csv"
        path.write_bytes(header.encode() + b"\n" + (raw if as_bytes else "\n".join(lines).encode()))
        try:
            _load(path, **options)
        except towerkit.TowerkitError as error:
            assert "\n" not in str(error)

    load()


def test_training_batches_under_a_multi_replica_context_are_per_replica():
    """Two replicas fed by one pipeline: each batch is half the global batch, and every row still comes once."""
    import tensorflow as tf

    table = pa.table({"user": [f"u{i % 37}" for i in range(1000)], "item": [i % 53 for i in range(1000)]})
    data = InteractionsDataset.from_arrow(table, "user", "item")
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    whole = list(data.train_stream(["user"], 100, shuffle_buffer=1000, seed=1))
    halves = list(data.train_stream(["user"], 100, shuffle_buffer=1000, seed=1, input_context=context))
    assert max(int(b["user"].shape[0]) for b in whole) == 100
    assert max(int(b["user"].shape[0]) for b in halves) == 50
    assert sorted(np.concatenate([b["user"].numpy() for b in halves]).tolist()) == sorted(
        np.concatenate([b["user"].numpy() for b in whole]).tolist())
