"""The fast paths of training and evaluation give the results of the slow ones (issue 18).

Each optimisation is checked against the computation it replaces: the hand
gradient of the in-batch softmax against automatic differentiation and against
TFRS, and the benchmarks' measuring helpers on known inputs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

import towerkit
from towerkit.tasks.retrieval import in_batch_softmax_loss

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchlib():
    spec = importlib.util.spec_from_file_location("benchlib", BENCHMARKS / "benchlib.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchlib", module)
    spec.loader.exec_module(module)
    return module


def _autodiff_loss(query, candidates, columns, bias):
    scores = tf.linalg.matmul(query, candidates, transpose_b=True) + bias[None, :]
    return tf.reduce_logsumexp(scores, axis=1) - tf.gather(scores, columns, axis=1, batch_dims=1)


@pytest.mark.parametrize("columns", ["diagonal", "scattered"])
def test_hand_gradient_equals_automatic_differentiation(columns):
    rng = np.random.default_rng(0)
    # Large scores check the max subtraction: a plain exp would overflow.
    query = tf.constant(rng.normal(size=(40, 6)) * 4, tf.float32)
    candidates = tf.constant(rng.normal(size=(56, 6)) * 4, tf.float32)
    bias = tf.constant(-np.log(rng.uniform(0.001, 0.5, size=56)), tf.float32)
    positives = tf.range(40) if columns == "diagonal" else tf.constant(rng.integers(0, 56, size=40), tf.int32)
    weights = tf.constant(rng.uniform(0.1, 2.0, size=40), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([query, candidates])
        ours = tf.reduce_sum(weights * in_batch_softmax_loss(query, candidates, positives, bias))
        reference = tf.reduce_sum(weights * _autodiff_loss(query, candidates, positives, bias))
    assert np.isfinite(ours.numpy())
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6)
    for ours_gradient, reference_gradient in zip(tape.gradient(ours, [query, candidates]),
                                                 tape.gradient(reference, [query, candidates])):
        np.testing.assert_allclose(ours_gradient.numpy(), reference_gradient.numpy(), rtol=1e-4, atol=1e-4)


def test_repeated_candidates_are_merged_without_changing_loss_or_gradients():
    """Popular items repeat within a batch; merged columns give every copy the gradient it had on its own."""
    rng = np.random.default_rng(2)
    distinct = rng.normal(size=(5, 4)) * 2
    rows = np.array([0, 1, 0, 2, 0, 3, 1, 4, 4, 2, 0, 3])  # repeats, as item ids repeat in a batch
    candidates = tf.constant(distinct[rows], tf.float32)
    query = tf.constant(rng.normal(size=(12, 4)) * 2, tf.float32)
    # Rows 7 and 8 hold the same embedding but different biases: they must stay apart.
    bias = tf.constant(np.where(np.arange(12) == 8, 1.5, -np.log(0.05 + rows / 10)), tf.float32)
    weights = tf.constant(rng.uniform(0.1, 2.0, size=12), tf.float32)
    for column_bias in (None, bias):
        reference_bias = tf.zeros(12) if column_bias is None else column_bias
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([query, candidates])
            ours = tf.reduce_sum(weights * in_batch_softmax_loss(query, candidates, tf.range(12), column_bias))
            reference = tf.reduce_sum(weights * _autodiff_loss(query, candidates, tf.range(12), reference_bias))
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6)
        for ours_gradient, reference_gradient in zip(tape.gradient(ours, [query, candidates]),
                                                     tape.gradient(reference, [query, candidates])):
            np.testing.assert_allclose(ours_gradient.numpy(), reference_gradient.numpy(), rtol=1e-5, atol=1e-5)


def test_an_empty_batch_has_zero_loss_and_empty_gradients():
    """Under a multi-replica strategy the last batch may leave a replica without examples."""
    query, candidates = tf.zeros([0, 4]), tf.zeros([0, 4])
    with tf.GradientTape() as tape:
        tape.watch([query, candidates])
        loss = tf.reduce_sum(in_batch_softmax_loss(query, candidates, tf.range(0), tf.zeros([0])))
    assert float(loss) == 0.0
    assert [g.shape.as_list() for g in tape.gradient(loss, [query, candidates])] == [[0, 4], [0, 4]]


def test_hand_gradient_survives_an_underflowing_positive():
    """A positive scored far below the rest has softmax probability 0.0 in float32; its loss stays finite."""
    query = tf.constant([[50.0], [1.0]])
    candidates = tf.constant([[-50.0], [50.0]])  # query 0 scores -2500 for its positive, 2500 for the other
    with tf.GradientTape() as tape:
        tape.watch(query)
        loss = in_batch_softmax_loss(query, candidates, tf.range(2))
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy()[0], 5000.0, rtol=1e-6)
    assert np.all(np.isfinite(tape.gradient(total, query).numpy()))


@pytest.mark.parametrize("options", [{}, {"temperature": 0.1}])
def test_task_gradients_equal_tfrs_gradients(options):
    rng = np.random.default_rng(1)
    query = tf.constant(rng.normal(size=(48, 8)), tf.float32)
    candidates = tf.constant(rng.normal(size=(48, 8)), tf.float32)
    probability = tf.constant(rng.uniform(0.001, 0.1, size=48), tf.float32)
    weights = tf.constant(rng.uniform(0.1, 2.0, size=48), tf.float32)
    ours_task, tfrs_task = towerkit.create_task("retrieval", **options), tfrs.tasks.Retrieval(**options)
    gradients = []
    for task in (ours_task, tfrs_task):
        with tf.GradientTape() as tape:
            tape.watch([query, candidates])
            loss = task(query, candidates, sample_weight=weights, candidate_sampling_probability=probability,
                        compute_metrics=False)
        gradients.append([g.numpy() for g in tape.gradient(loss, [query, candidates])])
    for ours, theirs in zip(*gradients):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_backward_pass_is_two_matmuls_and_no_pass_over_the_score_matrix():
    """The gradient graph holds the three matmuls and one softmax, but no exp, one-hot or scatter over [B, N]."""

    @tf.function
    def step(query, candidates):
        with tf.GradientTape() as tape:
            tape.watch([query, candidates])
            loss = tf.reduce_sum(in_batch_softmax_loss(query, candidates, tf.range(tf.shape(query)[0])))
        return tape.gradient(loss, [query, candidates])

    spec = tf.TensorSpec([None, 8], tf.float32)
    ops = [op.type for op in step.get_concrete_function(spec, spec).graph.get_operations()]
    assert sum(op in ("MatMul", "BatchMatMulV2") for op in ops) == 3
    assert ops.count("Softmax") == 1
    assert not {"Exp", "OneHot", "TensorScatterSub", "MatrixDiagPartV3", "SoftmaxCrossEntropyWithLogits"} & set(ops)


def test_steps_per_execution_trains_the_same_weights(synthetic):
    histories, weights = [], []
    for steps in (1, 4):
        tf.keras.utils.set_random_seed(11)
        model = towerkit.assemble(data=synthetic)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1), steps_per_execution=steps)
        dataset = tf.data.Dataset.from_tensor_slices(synthetic.train_features(model.feature_keys)).batch(512)
        histories.append(model.fit(dataset, epochs=2, verbose=0).history["loss"])
        weights.append(model.query_tower.get_weights()[0])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-5, atol=1e-7)


def test_recipe_steps_per_execution_reaches_the_compiled_model(synthetic):
    from towerkit import config as recipe_config
    from towerkit.models import build_model

    raw, origin = recipe_config.load_recipe("basic-retrieval")
    raw = recipe_config.apply_overrides(raw, ["train.steps_per_execution=8"])
    model = build_model(recipe_config.resolve(raw, origin), synthetic)
    dataset = tf.data.Dataset.from_tensor_slices(synthetic.train_features(model.feature_keys)).batch(256)
    batches = int(dataset.cardinality())

    class CountExecutions(tf.keras.callbacks.Callback):
        calls = 0

        def on_train_batch_end(self, batch, logs=None):
            CountExecutions.calls += 1

    model.fit(dataset, epochs=1, verbose=0, callbacks=[CountExecutions()])
    # Keras reports to batch callbacks once per execution of 8 steps.
    assert batches > 8 and CountExecutions.calls == -(-batches // 8)
    with pytest.raises(towerkit.TowerkitError, match="steps_per_execution"):
        recipe_config.resolve(recipe_config.apply_overrides(raw, ["train.steps_per_execution=0"]), origin)


def test_embedding_traces_each_tower_once(synthetic):
    from towerkit.embedding import embed, traced

    model = towerkit.assemble(data=synthetic)
    # Three batch shapes: two full batches of 64 and a remainder, then a different row count.
    embed(model.candidate_tower, {"movie_title": synthetic.candidate_ids}, batch_size=32)
    embed(model.candidate_tower, {"movie_title": synthetic.candidate_ids[:50]}, batch_size=64)
    assert traced(model.candidate_tower).experimental_get_tracing_count() == 1


def test_summary_statistics_and_interleaving():
    benchlib = _benchlib()
    summary = benchlib.summarize([3.0, 1.0, 2.0, 10.0])
    assert summary["median"] == 2.5 and summary["min"] == 1.0 and summary["max"] == 10.0 and summary["runs"] == 4
    order = []
    results = benchlib.interleave({"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 2.0},
                                  repeats=3)
    assert order == ["a", "b", "b", "a", "a", "b"]  # alternating which side goes first
    assert results == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_machine_description_names_cpu_threads_and_load():
    description = _benchlib().describe_machine()
    for field in ("cpu model", "cpu flags", "cores", "load average", "threads", "tensorflow"):
        assert field in description, field
    assert description["cores"] >= 1


def test_check_mode_fails_on_a_missed_target(tmp_path, capsys):
    benchlib = _benchlib()
    passed = benchlib.Check("ratio >= 2", 2.5, ">=", 2.0)
    missed = benchlib.Check("ratio >= 5", 4.0, ">=", 5.0)
    assert passed.ok and not missed.ok
    assert benchlib.finish([passed], check=True) == 0
    assert benchlib.finish([passed, missed], check=True) == 1
    assert benchlib.finish([passed, missed], check=False) == 0
    output = capsys.readouterr().out
    assert "FAIL  ratio >= 5 (4)" in output and "PASS  ratio >= 2 (2.5)" in output


def test_step_bench_runs_end_to_end_and_reports_the_machine(capsys):
    """The step benchmark at a tiny size: every row measured, the machine described, a PASS or FAIL line."""
    spec = importlib.util.spec_from_file_location("step_bench", BENCHMARKS / "step_bench.py")
    step_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_bench)
    status = step_bench.main(["--batch", "128", "--dim", "8", "--rounds", "3", "--steps", "1",
                              "--dataset", "synthetic", "--no-write"])
    output = capsys.readouterr().out
    for row in ("bare, autodiff", "bare, hand gradient", "towerkit training step", "cpu flags", "load average"):
        assert row in output, row
    verdict = [line for line in output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdict) == 1 and "towerkit step <= 1.5x the bare step" in verdict[0]
    assert status == 0  # without --check a missed target is reported, not an error
    with pytest.raises(SystemExit):
        step_bench.main(["--rounds", "2", "--no-write"])  # fewer than three runs is refused
