"""Assembly of registered components into a trainable two-tower model.

Two styles, as the TFRS tutorial shows:

* ``style="tfrs"``: a ``tfrs.Model`` subclass whose ``compute_loss`` runs the
  towers and the task.
* ``style="train_step"``: a plain ``tf.keras.Model`` overriding ``train_step``
  and ``test_step``.

With the same seeds both give the same weights and metrics.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerkit.datasets.base import to_tf_dataset
from towerkit.embedding import candidate_columns, embed_candidates
from towerkit.config import OPTIMIZERS, STYLES
from towerkit.errors import ConfigError, FeatureError
from towerkit.components import get_registry
from towerkit.contracts import check_assembly, component_label
from towerkit.tasks.self_score import SelfScorePenalty, check_self_score_weight



class _TwoTower:
    """What both model styles share: the towers, the task, and the forward pass."""

    def _setup(self, query_tower, candidate_tower, task, train_metrics: bool, self_score=None) -> None:
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = task
        self.train_metrics = bool(train_metrics)
        # A plain object, not a layer: it owns no weights, only reads the towers'.
        self.self_score = self_score

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.query_tower.feature_keys + self.candidate_tower.feature_keys))

    def _without_idle_metrics(self, logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Drops the top-k metrics from training logs when they were not computed."""
        if self.train_metrics:
            return logs
        idle = {m.name for metric in getattr(self.task, "factorized_metrics", []) for m in metric.metrics}
        return {k: v for k, v in logs.items() if k not in idle}

    def _task_loss(self, features: Mapping[str, tf.Tensor], training: bool) -> tf.Tensor:
        # The penalty runs the candidate tower on the history's items. It must come first: a Keras 2
        # layer called outside a model call drops the add_loss terms (L2) of its previous call, so the
        # towers' own calls below leave the batch's regularization exactly as without the penalty.
        penalty = self.self_score(features) if training and self.self_score is not None else None
        query_embeddings = self.query_tower(features)
        candidate_embeddings = self.candidate_tower(features)
        extra = {}
        if getattr(self.task, "needs_candidate_ids", False):
            extra["candidate_ids"] = features[self.candidate_tower.feature_keys[0]]
        # FactorizedTopK scores every candidate for every example; during
        # training that triples the step time, so it is off unless asked for.
        compute_metrics = self.train_metrics or not training
        loss = self.task(query_embeddings, candidate_embeddings, compute_metrics=compute_metrics, **extra)
        return loss if penalty is None else loss + penalty


class RetrievalModel(_TwoTower, tfrs.Model):
    """A two-tower retrieval model in the ``tfrs.Model`` style.

    Args:
        query_tower: Maps query features to embeddings.
        candidate_tower: Maps candidate features to embeddings.
        task: Computes the loss (and metrics) from both embeddings.
        train_metrics: Also compute the task's metrics in training steps.
    """

    def __init__(self, query_tower, candidate_tower, task, train_metrics: bool = False, self_score=None):
        super().__init__()
        self._setup(query_tower, candidate_tower, task, train_metrics, self_score)

    def compute_loss(self, features, training: bool = False) -> tf.Tensor:
        return self._task_loss(features, training)

    def train_step(self, features):
        return self._without_idle_metrics(super().train_step(features))


class TrainStepRetrievalModel(_TwoTower, tf.keras.Model):
    """The same model as a plain Keras model with its own train_step/test_step."""

    def __init__(self, query_tower, candidate_tower, task, train_metrics: bool = False, self_score=None):
        super().__init__()
        self._setup(query_tower, candidate_tower, task, train_metrics, self_score)

    def _loss_terms(self, features, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """The task loss and the layers' regularization losses, as the tutorial's train_step has them."""
        loss = self._task_loss(features, training=training)
        return loss, tf.add_n(self.losses) if self.losses else tf.constant(0.0)

    def _step_metrics(self, loss: tf.Tensor, regularization_loss: tf.Tensor) -> dict[str, tf.Tensor]:
        metrics = {metric.name: metric.result() for metric in self.metrics}
        metrics.update(loss=loss, regularization_loss=regularization_loss, total_loss=loss + regularization_loss)
        return metrics

    def train_step(self, features):
        with tf.GradientTape() as tape:
            loss, regularization_loss = self._loss_terms(features, training=True)
            total_loss = loss + regularization_loss
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._without_idle_metrics(self._step_metrics(loss, regularization_loss))

    def test_step(self, features):
        return self._step_metrics(*self._loss_terms(features, training=False))


def _build(kind: str, spec: Any, **defaults: Any) -> Any:
    """Builds a component from a name, a ``{"name": ..., **config}`` mapping, or an object."""
    if isinstance(spec, str):
        return get_registry(kind).create(spec, **defaults)
    if isinstance(spec, Mapping):
        config = dict(spec)
        if "name" not in config:
            raise ConfigError(
                f"a {get_registry(kind).noun} given as a mapping needs a 'name' key, got keys "
                f"{', '.join(config) or '(none)'}; e.g. {{'name': 'user', 'embedding_dim': 32}}."
            )
        name = config.pop("name")
        for key, value in defaults.items():
            config.setdefault(key, value)
        return get_registry(kind).create(name, **config)
    return spec


def candidate_embeddings_dataset(data, candidate_tower, batch_size: int = 128) -> tf.data.Dataset:
    """The candidate set mapped through the candidate tower, as the tutorial feeds FactorizedTopK."""
    columns = candidate_columns(data, candidate_tower.feature_keys)
    return to_tf_dataset(columns).batch(batch_size).map(candidate_tower)


def assemble(
    query: Any = "user",
    candidate: Any = "movie",
    task: Any = "retrieval",
    data: Any = None,
    style: str = "tfrs",
    train_metrics: bool = False,
    self_score_penalty: float = 0.0,
) -> tf.keras.Model:
    """Builds a two-tower retrieval model from registered components.

    Args:
        query: The query tower: a registered name, a mapping
            ``{"name": NAME, **config}``, or a built layer.
        candidate: The candidate tower, in the same forms.
        task: The task, in the same forms.
        data: A dataset (e.g. from :func:`towerkit.load_dataset`). Towers adapt
            their vocabularies to it, its feature keys are checked, the task's
            metrics run over its candidates, and logQ probabilities come from
            its training frequencies.
        style: ``"tfrs"`` for a ``tfrs.Model`` subclass, ``"train_step"`` for a
            plain Keras model with its own ``train_step``/``test_step``.
        train_metrics: Compute the task's top-k metrics during training too.
        self_score_penalty: Above 0, adds :class:`~towerkit.tasks.self_score.SelfScorePenalty`
            with this weight to the training loss (needs ``data`` and a history-pooling query tower).

    Returns:
        A Keras model exposing ``.query_tower``, ``.candidate_tower`` and ``.task``.

    Raises:
        FeatureError: A tower reads a feature the dataset does not have.
        UnknownComponentError: A name is not registered.

    Example:
        >>> data = towerkit.load_dataset("movielens-100k")
        >>> model = towerkit.assemble(query="user", candidate="movie", task="retrieval", data=data)
        >>> model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    """
    if style not in STYLES:
        raise ConfigError(f"style must be one of {', '.join(STYLES)}, got {style!r}.")
    self_score_penalty = check_self_score_weight(self_score_penalty)
    query_tower, candidate_tower = _build_towers(query, candidate)
    if data is not None:
        _fit_towers_to(data, query_tower, candidate_tower)
    check_assembly(query_tower, candidate_tower, data)  # one clear error for a broken tower, not one at fit
    if isinstance(task, (str, Mapping)):
        defaults = {"candidates": candidate_embeddings_dataset(data, candidate_tower)} if data is not None else {}
        task = _build("tasks", task, **defaults)
    if getattr(task, "logq_correction", False) and data is not None:
        task.set_candidate_probabilities(data.candidate_train_frequencies())
    self_score = None
    if self_score_penalty:
        if data is None:
            raise ConfigError("self_score_penalty needs the data to look history items up in its candidate table; "
                              "pass data= to assemble, or set self_score_penalty to 0.")
        self_score = SelfScorePenalty(self_score_penalty, query_tower, candidate_tower, data.candidate_features)
    model_class = RetrievalModel if style == "tfrs" else TrainStepRetrievalModel
    return model_class(query_tower, candidate_tower, task, train_metrics=train_metrics, self_score=self_score)


def _build_towers(query: Any, candidate: Any) -> tuple[Any, Any]:
    """Both towers, the candidate first (a query tower may share its tables)."""
    candidate_tower = _build("towers", candidate)
    if isinstance(query, Mapping) and query.get("share_with") == "candidate":
        query = {**query, "share_with": candidate_tower}
    query_tower = _build("towers", query)
    for role, tower in (("query", query_tower), ("candidate", candidate_tower)):
        if not isinstance(tower, tf.keras.layers.Layer) or not hasattr(tower, "feature_keys"):
            raise ConfigError(
                f"the {role} tower must be a towerkit Tower (a Keras layer with feature_keys), got "
                f"{type(tower).__name__}; register it as a tower or subclass towerkit.Tower."
            )
    return query_tower, candidate_tower


def _fit_towers_to(data: Any, query_tower: Any, candidate_tower: Any) -> None:
    """Lets towers pick their columns, checks the features they read, and adapts their vocabularies."""
    for role, tower in (("query", query_tower), ("candidate", candidate_tower)):
        # A generic tower (e.g. `features`) reads the columns of its side of the data.
        if callable(getattr(tower, "bind_dataset", None)):
            tower.bind_dataset(data, role)
    data.check_features(query_tower.feature_keys, f"query tower '{component_label(query_tower)}'")
    data.check_features(candidate_tower.feature_keys, f"candidate tower '{component_label(candidate_tower)}'")
    missing = [k for k in candidate_tower.feature_keys if k not in data.candidate_features]
    if missing:
        raise FeatureError(
            f"candidate tower '{component_label(candidate_tower)}' needs {', '.join(missing)}, which the "
            f"candidate set of '{data.name}' lacks; candidate keys: {', '.join(data.candidate_feature_keys)}."
        )
    adapt_values = data.adapt_features()
    query_tower.adapt(adapt_values)
    candidate_tower.adapt(adapt_values)


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """A Keras optimizer by recipe name (``adagrad``, ``adam``, ...; see ``towerkit.config.OPTIMIZERS``)."""
    try:
        class_name = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}.") from None
    return getattr(tf.keras.optimizers, class_name)(learning_rate=learning_rate)


def build_model(config: Mapping[str, Any], data: Any) -> tf.keras.Model:
    """Assembles and compiles the model a resolved recipe describes."""
    model = assemble(
        query=dict(config["query_tower"]),
        candidate=dict(config["candidate_tower"]),
        task=dict(config["task"]),
        data=data,
        style=config["model"]["style"],
        train_metrics=config["model"]["train_metrics"],
        self_score_penalty=config["model"].get("self_score_penalty", 0.0),
    )
    model.compile(optimizer=make_optimizer(config["optimizer"]["name"], config["optimizer"]["learning_rate"]),
                  steps_per_execution=config["train"].get("steps_per_execution", 1))
    return model


def build_index(model: Any, data: Any, section: Mapping[str, Any]) -> Any:
    """Indexes every candidate of ``data`` under its id, with the model's query tower in front."""
    options = {key: value for key, value in section.items() if key != "name"}
    index = get_registry("indexes").create(section["name"], query_model=model.query_tower, **options)
    if getattr(index, "wants_tuning_queries", False):
        # An index tuned to a recall target (scann's target_recall) measures it on the training queries.
        index.tune_with({key: data.column(key, data.train_rows) for key in model.query_tower.feature_keys})
    embeddings = embed_candidates(model.candidate_tower, data)
    index.index(embeddings, identifiers=tf.constant(data.candidate_ids.astype(str)))
    return index
