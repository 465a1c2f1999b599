"""Assembly by name in both model styles, feature checks, and the assembly example."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

import towerkit
from towerkit.errors import ConfigError, FeatureError
from towerkit.models import RetrievalModel, TrainStepRetrievalModel, candidate_embeddings_dataset


def _train(data, style="tfrs", epochs=2, seed=7, train_metrics=False, **parts):
    tf.keras.utils.set_random_seed(seed)
    model = towerkit.assemble(data=data, style=style, train_metrics=train_metrics, **parts)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    dataset = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(1024)
    history = model.fit(dataset, epochs=epochs, verbose=0).history
    return model, history


def test_assemble_by_name_mapping_and_object(synthetic):
    model = towerkit.assemble(query="user", candidate={"name": "movie", "embedding_dim": 32},
                              task=towerkit.create_task("retrieval"), data=synthetic)
    assert isinstance(model, tfrs.Model) and isinstance(model, RetrievalModel)
    assert model.query_tower.vocabulary is not None and model.candidate_tower.vocabulary is not None
    assert model.feature_keys == ("user_id", "movie_title")
    assert isinstance(towerkit.assemble(data=synthetic, style="train_step"), TrainStepRetrievalModel)


def test_both_styles_give_identical_metrics(synthetic):
    tfrs_model, tfrs_history = _train(synthetic, "tfrs")
    step_model, step_history = _train(synthetic, "train_step")
    np.testing.assert_allclose(tfrs_history["loss"], step_history["loss"], rtol=1e-5)
    assert tfrs_history["loss"][-1] < tfrs_history["loss"][0]
    np.testing.assert_allclose(
        tfrs_model.query_tower.get_weights()[0], step_model.query_tower.get_weights()[0], rtol=1e-5)
    assert towerkit.evaluate_topk(tfrs_model, synthetic) == towerkit.evaluate_topk(step_model, synthetic)


def test_training_logs_hide_metrics_that_were_not_computed(synthetic):
    _, quiet = _train(synthetic, epochs=1)
    _, loud = _train(synthetic, epochs=1, train_metrics=True)
    assert not any("top_" in key for key in quiet)
    assert any("top_10" in key for key in loud)


def test_missing_feature_is_one_clear_error(synthetic):
    with pytest.raises(FeatureError) as info:
        towerkit.assemble(query={"name": "user", "feature": "user_age"}, data=synthetic)
    message = str(info.value)
    assert "'user_age'" in message and "available keys" in message and "user_id" in message


def test_bad_style_and_bad_tower_objects(synthetic):
    with pytest.raises(ConfigError, match="style must be one of"):
        towerkit.assemble(data=synthetic, style="keras")
    with pytest.raises(ConfigError, match="needs a 'name' key"):
        towerkit.assemble(query={"embedding_dim": 3}, data=synthetic)
    with pytest.raises(ConfigError, match="must be a towerkit Tower"):
        towerkit.assemble(query=tf.keras.layers.Dense(3), data=synthetic)


def test_factorized_metric_candidates_cover_the_whole_set(synthetic):
    tower = towerkit.create_tower("movie", embedding_dim=4)
    tower.adapt(synthetic.adapt_features())
    total = sum(int(batch.shape[0]) for batch in candidate_embeddings_dataset(synthetic, tower))
    assert total == len(synthetic.candidate_ids)


def test_the_assembly_example_runs():
    from conftest import ROOT, run_python

    result = run_python(f"import runpy, sys; sys.argv = ['x', 'synthetic']; "
                        f"runpy.run_path({str(ROOT / 'examples' / 'assemble_by_name.py')!r}, run_name='__main__')")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top 3 for user" in result.stdout and "popularity" in result.stdout
