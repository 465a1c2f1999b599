"""The train job as stages: each stage does what the hand-written job would, and nothing else."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

import towerkit
from towerkit import config as recipe_config
from towerkit import pipeline
from towerkit.evaluation import TopK, evaluate_all
from towerkit.models import build_model
from towerkit.runs import open_run

RECIPE = {
    "dataset": {"name": "synthetic", "num_users": 120, "num_items": 50, "num_interactions": 3000, "seed": 4},
    "query_tower": {"name": "user", "embedding_dim": 8},
    "candidate_tower": {"name": "movie", "embedding_dim": 8},
    "task": {"name": "retrieval", "logq_correction": True},
    "train": {"epochs": 2, "batch_size": 256, "seed": 11},
    "evaluate": {"ks": [1, 10, 50]},
    "index": {"name": "brute-force", "k": 5},
    "export": {"example_query": "user 3"},
}


def _by_hand(config):
    """The tutorial's job written out: load, assemble, fit with the same seeds, evaluate."""
    data = towerkit.load_dataset("synthetic", **{k: v for k, v in config["dataset"].items() if k != "name"})
    tf.keras.utils.set_random_seed(config["train"]["seed"])
    model = build_model(config, data)
    train = config["train"]
    dataset = pipeline.training_dataset(data, model.feature_keys, train["batch_size"], train["shuffle_buffer"],
                                        train["seed"])
    history = model.fit(dataset, epochs=train["epochs"], verbose=0).history
    evaluation = config["evaluate"]
    return history, evaluate_all(model, data, evaluation["ks"], evaluation["exclude_train"], evaluation["batch_size"])


def test_the_staged_job_matches_the_job_written_by_hand(tmp_path):
    config = recipe_config.resolve(json.loads(json.dumps(RECIPE)), "test")
    config["evaluate"]["every_epoch"] = False  # the hand-written job has no per-epoch curves
    staged = pipeline.run(config, tmp_path / "run", log=lambda message: None, verbose=0)
    history, results = _by_hand(config)
    np.testing.assert_allclose(staged.metrics["history"]["loss"], history["loss"], rtol=1e-6)
    assert {name: TopK.from_json(value) for name, value in staged.metrics["test"].items()} == results
    # Reopened from its checkpoint, the evaluate stage gives the very numbers the train job wrote.
    reopened = open_run(tmp_path / "run", lambda message: None)
    pipeline.stage_evaluate(reopened)
    assert reopened.metrics["test"] == staged.metrics["test"]

