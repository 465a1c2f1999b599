"""The synthetic dataset: ids held as codes, train_stream, and the streamed mode (issue 19)."""

import resource

import numpy as np
import tensorflow as tf

import towerkit
from towerkit.datasets.base import CodedColumns, to_tf_dataset
from towerkit.export import save_export
from towerkit.models import build_index
from towerkit.serving import load_export

ALL_KEYS = ("movie_genres", "movie_id", "movie_title", "timestamp", "user_id", "user_rating")


def _values(batch):
    return {k: v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy().tolist() for k, v in batch.items()}


def _small_stream(seed=5, **options):
    return towerkit.load_dataset("synthetic", num_users=300, num_items=120, num_interactions=40_000, seed=seed,
                                 streamed=True, materialised_rows=3_000, **options)


def test_id_columns_are_codes_and_read_as_the_same_strings(synthetic):
    columns = synthetic.interactions
    assert isinstance(columns, CodedColumns)
    titles, movie_ids, users = columns["movie_title"], columns["movie_id"], columns["user_id"]
    assert titles.dtype.kind == users.dtype.kind == "U"
    # Each row's title and id name the same item, and every id is of the candidate set.
    assert (np.char.add("item ", movie_ids) == titles).all()
    assert set(titles) <= set(synthetic.candidate_ids)
    assert all(u.startswith("user ") and 0 <= int(u[5:]) < 200 for u in users[:500])
    rows = synthetic.train_rows[:50]
    sliced = synthetic.train_features(["user_id", "movie_title"])
    assert sliced["user_id"][:50].tolist() == users[rows].tolist()
    assert sliced["movie_title"][:50].tolist() == titles[rows].tolist()
    adapt = synthetic.adapt_features()
    assert adapt["movie_title"].tolist() == synthetic.candidate_ids.tolist()
    assert adapt["user_id"].tolist() == users.tolist()


def test_train_stream_gives_the_cached_slice_pipelines_batches_in_every_epoch(synthetic):
    tf.random.set_seed(0)
    old = to_tf_dataset(synthetic.train_features(ALL_KEYS)).shuffle(1000, seed=3).batch(256).cache()
    tf.random.set_seed(0)
    new = synthetic.train_stream(ALL_KEYS, 256, shuffle_buffer=1000, seed=3)
    assert new.element_spec == old.element_spec
    for _ in range(2):
        pairs = list(zip(old, new))
        assert len(pairs) == -(-len(synthetic.train_rows) // 256)
        for a, b in pairs:
            assert _values(a) == _values(b)


def test_model_trained_from_train_stream_exports_original_ids(synthetic, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(data=synthetic)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    model.fit(synthetic.train_stream(model.feature_keys, 512, shuffle_buffer=10_000, seed=0), epochs=2, verbose=0)
    index = build_index(model, synthetic, {"name": "brute-force", "k": 10})
    users = ["user 1", "user 7", "nobody"]
    _, expected = index({"user_id": tf.constant(users)})
    target = save_export(index, tmp_path / "model", query_feature_keys=["user_id"], metadata={"recipe": "t"})
    _, ids = load_export(target).recommend({"user_id": users})
    assert np.asarray(ids).tolist() == expected.numpy().tolist()
    assert {i.decode() for i in np.asarray(ids).ravel()} <= set(synthetic.candidate_ids)


def test_streamed_batches_are_deterministic_with_the_seed_and_shaped_like_in_memory(synthetic):
    first = next(iter(_small_stream().train_stream(ALL_KEYS, 512, shuffle_buffer=20_000, seed=1)))
    again = next(iter(_small_stream().train_stream(ALL_KEYS, 512, shuffle_buffer=20_000, seed=1)))
    other = next(iter(_small_stream(seed=6).train_stream(ALL_KEYS, 512, shuffle_buffer=20_000, seed=1)))
    assert _values(first) == _values(again)
    assert _values(first)["user_id"] != _values(other)["user_id"]
    assert set(first) == set(ALL_KEYS)
    spec = synthetic.train_stream(ALL_KEYS, 512, shuffle_buffer=1000, seed=1).element_spec
    for key in ALL_KEYS:
        assert first[key].dtype == spec[key].dtype and first[key].shape[0] == 512
    titles = [t.decode() for t in first["movie_title"].numpy()]
    assert [f"item {i.decode()}" for i in first["movie_id"].numpy()] == titles
    assert all(0 <= int(u.decode()[5:]) < 300 for u in first["user_id"].numpy())
    assert first["movie_genres"].to_list() == [[int(g[0])] for g in
                                               _small_stream().candidate_features["movie_genres"][
                                                   [int(t[5:]) for t in titles]]]


def test_streamed_epoch_has_every_training_row_once_and_is_sharded_by_input_context():
    data = _small_stream()
    assert data.num_train_rows == 32_000 and len(data.train_rows) == 2_400 and len(data.test_rows) == 600
    sizes = [int(b["user_id"].shape[0]) for b in data.train_stream(["user_id"], 1000, shuffle_buffer=8192, seed=2)]
    assert sum(sizes) == 32_000 and max(sizes) == 1000
    shards = [list(data.train_stream(["timestamp"], 1000, shuffle_buffer=8192, seed=2,
                                     input_context=tf.distribute.InputContext(2, i, 2))) for i in (0, 1)]
    # Two pipelines feeding two replicas: each batch is a replica's share of the global batch of 1,000.
    assert max(int(b["timestamp"].shape[0]) for shard in shards for b in shard) == 500
    whole = np.concatenate([b["timestamp"].numpy() for b in data.train_stream(["timestamp"], 1000,
                                                                               shuffle_buffer=8192, seed=2)])
    halves = np.concatenate([b["timestamp"].numpy() for shard in shards for b in shard])
    assert sorted(whole.tolist()) == sorted(halves.tolist())
    # The materialised training rows are the stream's own first rows; test rows are generated apart.
    info = data.describe()
    assert info["interactions"] == 40_000 and info["train"] == 32_000 and info["materialised"]["test"] == 600


def test_streamed_training_memory_stays_flat():
    data = towerkit.load_dataset("synthetic", num_users=20_000, num_items=20_000, num_interactions=3_000_000,
                                 genres=False, streamed=True, materialised_rows=2_000)
    batches = iter(data.train_stream(["user_id", "movie_title"], 4096, shuffle_buffer=100_000, seed=0))
    for _ in range(40):
        next(batches)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = 0
    for batch in batches:
        rows += int(batch["user_id"].shape[0])
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rows == data.num_train_rows - 40 * 4096
    # 2.2M rows of two string columns would be over 100 MiB if they were held.
    assert growth_mib < 40, growth_mib


def test_streamed_vocabularies_cover_every_id_and_a_model_trains():
    data = _small_stream(genres=False)
    assert len(data.vocabularies["user_id"]) == 300 and len(data.vocabularies["movie_title"]) == 120
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(data=data)
    assert len(model.query_tower.vocabulary) == 300
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    history = model.fit(data.train_stream(model.feature_keys, 1024, shuffle_buffer=8192, seed=0), epochs=2,
                        verbose=0).history
    assert history["loss"][1] < history["loss"][0]


def test_column_gathers_only_the_rows_asked_for():
    """data.column(key, rows) reads a coded column's rows without materialising the whole column first."""
    import tracemalloc

    data = towerkit.load_dataset("synthetic", num_users=50_000, num_items=5_000, num_interactions=200_000,
                                 genres=False)
    rows = data.test_rows[:3]
    whole = data.interactions["user_id"]
    assert data.column("user_id", rows).tolist() == whole[rows].tolist()
    assert data.column("timestamp", rows).tolist() == data.interactions["timestamp"][rows].tolist()
    assert data.column("user_id").tolist() == whole.tolist()
    tracemalloc.start()
    data.column("user_id", rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < whole.nbytes / 20, (peak, whole.nbytes)
