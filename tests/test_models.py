"""Assembly by name in both model styles, feature checks, and the assembly example."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

import towerkit
from conftest import fit_small
from towerkit.errors import ConfigError, FeatureError
from towerkit.models import RetrievalModel, TrainStepRetrievalModel, candidate_embeddings_dataset


def test_assemble_by_name_mapping_and_object(synthetic):
    model = towerkit.assemble(query="user", candidate={"name": "movie", "embedding_dim": 32},
                              task=towerkit.create_task("retrieval"), data=synthetic)
    assert isinstance(model, tfrs.Model) and isinstance(model, RetrievalModel)
    assert model.query_tower.vocabulary is not None and model.candidate_tower.vocabulary is not None
    assert model.feature_keys == ("user_id", "movie_title")
    assert isinstance(towerkit.assemble(data=synthetic, style="train_step"), TrainStepRetrievalModel)


def test_both_styles_give_identical_metrics(synthetic):
    tfrs_model, tfrs_history = fit_small(synthetic, "tfrs")
    step_model, step_history = fit_small(synthetic, "train_step")
    np.testing.assert_allclose(tfrs_history["loss"], step_history["loss"], rtol=1e-5)
    assert tfrs_history["loss"][-1] < tfrs_history["loss"][0]
    np.testing.assert_allclose(
        tfrs_model.query_tower.get_weights()[0], step_model.query_tower.get_weights()[0], rtol=1e-5)
    assert towerkit.evaluate_topk(tfrs_model, synthetic) == towerkit.evaluate_topk(step_model, synthetic)


def test_training_logs_hide_metrics_that_were_not_computed(synthetic):
    _, quiet = fit_small(synthetic, epochs=1)
    _, loud = fit_small(synthetic, epochs=1, train_metrics=True)
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
