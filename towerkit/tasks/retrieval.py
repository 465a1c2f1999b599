"""The retrieval task: in-batch softmax over dot-product scores (tfrs.tasks.Retrieval)."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerkit.errors import ConfigError

DEFAULT_KS = (1, 5, 10, 50, 100)


def _check_options(ks, temperature, num_hard_negatives) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ConfigError(f"ks must be a non-empty list of positive integers, got {list(ks)!r}.")
    if temperature is not None and (isinstance(temperature, bool) or not temperature > 0):
        raise ConfigError(f"temperature must be a positive number or None, got {temperature!r}.")
    if num_hard_negatives is not None and (
        isinstance(num_hard_negatives, bool)
        or not isinstance(num_hard_negatives, int)
        or num_hard_negatives <= 0
    ):
        raise ConfigError(
            f"num_hard_negatives must be a positive integer or None, got {num_hard_negatives!r}."
        )
    return ks


class RetrievalTask(tfrs.tasks.Retrieval):
    """``tfrs.tasks.Retrieval`` with options by config and a faster identical loss.

    TFRS computes the in-batch softmax loss as a categorical cross-entropy
    against a dense ``[B, B]`` identity label matrix. For the default loss this
    task computes the same value as ``sum_i(logsumexp(s_i) - s_ii)``, which
    needs no label matrix, with a hand-written gradient (see
    :func:`in_batch_softmax_loss`) that passes over the ``[B, B]`` scores far
    fewer times than automatic differentiation of ``reduce_logsumexp`` does,
    and over the batch's distinct candidates only (a batch of 8,192 MovieLens
    ratings names at most 1,682 movies; each repeat is counted in the softmax
    exactly as before). Hard-negative mining and accidental-hit removal take
    TFRS's own path.

    Args:
        candidates: Candidate embeddings (a ``tf.data.Dataset`` of batches, or a
            TFRS TopK layer) for ``FactorizedTopK`` metrics; None for no metrics.
        ks: The k of each top-k accuracy metric.
        temperature: Divides the logits; None leaves them as they are.
        logq_correction: Subtract log(sampling probability) of each in-batch
            candidate from its logit, using the candidates' training
            frequencies (set at assembly through :meth:`set_candidate_probabilities`).
        remove_accidental_hits: Mask in-batch negatives that share the
            positive's candidate id.
        num_hard_negatives: Keep only this many highest-scoring negatives.
        global_negatives: Under a multi-replica tf.distribute strategy, gather
            every replica's candidate embeddings (``all_gather``) so each
            query's softmax runs over the global batch, as on one device.
            Costs one all-gather of ``[global_batch, dim]`` per step and a
            ``[local_batch, global_batch]`` logits matrix per replica; without
            it each replica only sees its own slice as negatives.
        name: Layer name.

    Example:
        >>> task = towerkit.create_task("retrieval", temperature=0.1, logq_correction=True)
    """

    def __init__(
        self,
        candidates: Any = None,
        ks: Sequence[int] = DEFAULT_KS,
        temperature: float | None = None,
        logq_correction: bool = False,
        remove_accidental_hits: bool = False,
        num_hard_negatives: int | None = None,
        global_negatives: bool = False,
        name: str | None = None,
    ):
        ks = _check_options(ks, temperature, num_hard_negatives)
        if global_negatives and (num_hard_negatives is not None or remove_accidental_hits):
            raise ConfigError(
                "global_negatives works with the plain in-batch softmax only; drop num_hard_negatives "
                "and remove_accidental_hits, or global_negatives."
            )
        metrics = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=ks) if candidates is not None else None
        super().__init__(
            metrics=metrics,
            temperature=temperature,
            num_hard_negatives=num_hard_negatives,
            remove_accidental_hits=bool(remove_accidental_hits),
            name=name,
        )
        self.ks = ks
        self.logq_correction = bool(logq_correction)
        self.global_negatives = bool(global_negatives)
        self._probability_table = None

    @property
    def needs_candidate_ids(self) -> bool:
        return self.logq_correction or self._remove_accidental_hits

    def set_candidate_probabilities(self, probabilities: Mapping[str, float]) -> None:
        """Sets each candidate id's sampling probability, for logQ correction."""
        keys = np.array(list(probabilities), dtype=str)
        values = np.array([probabilities[k] for k in keys], dtype=np.float32)
        self._probability_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=float(values.min())
        )

    def call(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        sample_weight: tf.Tensor | None = None,
        candidate_sampling_probability: tf.Tensor | None = None,
        candidate_ids: tf.Tensor | None = None,
        compute_metrics: bool = True,
        compute_batch_metrics: bool = True,
        score_mask: tf.Tensor | None = None,
    ) -> tf.Tensor:
        if self.logq_correction and candidate_sampling_probability is None:
            if self._probability_table is None or candidate_ids is None:
                raise ConfigError(
                    "logq_correction needs candidate ids and their training frequencies; "
                    "assemble the model with data, or call set_candidate_probabilities()."
                )
            candidate_sampling_probability = self._probability_table.lookup(candidate_ids)
        positive_columns = None
        context = tf.distribute.get_replica_context()
        if self.global_negatives and context is not None and context.num_replicas_in_sync > 1:
            candidate_embeddings, positive_columns = _gather_global(candidate_embeddings, context)
            if candidate_sampling_probability is not None:
                candidate_sampling_probability, _ = _gather_global(candidate_sampling_probability, context)
        fast = (
            self._num_hard_negatives is None
            and not self._remove_accidental_hits
            and score_mask is None
            and not self._batch_metrics
            and query_embeddings.shape.rank == 2
        )
        if not fast:
            return super().call(
                query_embeddings,
                candidate_embeddings,
                sample_weight=sample_weight,
                candidate_sampling_probability=candidate_sampling_probability,
                candidate_ids=candidate_ids,
                compute_metrics=compute_metrics,
                compute_batch_metrics=compute_batch_metrics,
                score_mask=score_mask,
            )
        # Dividing the queries by the temperature divides every score, without a pass over [B, N].
        scaled_queries = query_embeddings if self._temperature is None else query_embeddings / self._temperature
        column_bias = None
        if candidate_sampling_probability is not None:
            # TFRS's SamplingProbablityCorrection: subtract log q, with q clipped to [1e-6, 1].
            column_bias = -tf.math.log(tf.clip_by_value(candidate_sampling_probability, 1e-6, 1.0))
        if positive_columns is None:
            positive_columns = tf.range(tf.shape(query_embeddings)[0])
        per_query = in_batch_softmax_loss(scaled_queries, candidate_embeddings, positive_columns, column_bias)
        if sample_weight is not None:
            per_query = per_query * tf.cast(tf.reshape(sample_weight, [-1]), per_query.dtype)
        loss = tf.reduce_sum(per_query)
        update_ops = self._update_metrics(loss, query_embeddings, candidate_embeddings, sample_weight, compute_metrics)
        with tf.control_dependencies(update_ops):
            return tf.identity(loss)

    def _update_metrics(self, loss, query_embeddings, candidate_embeddings, sample_weight, compute_metrics) -> list:
        """The loss metrics, and FactorizedTopK over this replica's own candidates when asked for."""
        update_ops = [metric.update_state(loss) for metric in self._loss_metrics]
        if compute_metrics:
            for metric in self._factorized_metrics:
                update_ops.append(metric.update_state(
                    query_embeddings, candidate_embeddings[: tf.shape(query_embeddings)[0]],
                    true_candidate_ids=None, sample_weight=sample_weight))
        return update_ops

    def get_config(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks),
            "temperature": self._temperature,
            "logq_correction": self.logq_correction,
            "remove_accidental_hits": self._remove_accidental_hits,
            "num_hard_negatives": self._num_hard_negatives,
            "global_negatives": self.global_negatives,
            "name": self.name,
        }


def in_batch_softmax_loss(query: tf.Tensor, candidates: tf.Tensor, positive_columns: tf.Tensor,
                          column_bias: tf.Tensor | None = None) -> tf.Tensor:
    """Per-query softmax cross-entropy over ``scores = query @ candidates^T + column_bias``, with a hand-written gradient.

    The loss of query ``i`` is ``logsumexp(scores_i) - scores_i[positive_i]``,
    equal in value and gradient (to float rounding) to automatic
    differentiation of ``tf.reduce_logsumexp``. That reads and writes the
    ``[B, N]`` scores about a dozen times (max, subtract, exp, sum, then the
    softmax, broadcasts and the positive's one-hot again in the backward
    pass); at B=8192 each pass moves 268 MB, so memory traffic, not the
    matmuls, sets the step time. Here the forward pass is the matmul, one
    fused softmax kernel and two row maxima, and the backward pass is two
    matmuls with the kept softmax: the upstream weights and the positive's
    ``-1`` are applied to the ``[B, d]`` embeddings, never to the ``[B, N]``
    matrix. Repeated candidate columns are first merged into one (see
    :func:`_distinct_columns`); each copy still gets its own exact gradient.

    Args:
        query: ``[B, d]`` query embeddings (already divided by any temperature).
        candidates: ``[N, d]`` candidate embeddings.
        positive_columns: ``[B]`` integer column of each query's positive candidate.
        column_bias: ``[N]`` added to every score of a column (e.g. ``-log q``
            for logQ correction); a constant, it gets no gradient.

    Returns:
        ``[B]`` per-query losses.
    """
    positive_columns = tf.cast(positive_columns, tf.int32)
    bias = None if column_bias is None else tf.stop_gradient(tf.cast(column_bias, candidates.dtype))

    @tf.custom_gradient
    def loss_of(queries, columns):
        distinct = _distinct_columns(columns, bias)
        scores = tf.linalg.matmul(queries, distinct.columns, transpose_b=True) + distinct.bias[None, :]
        row_max = tf.reduce_max(scores, axis=1)
        probabilities = tf.nn.softmax(scores)
        # log-sum-exp from the row's largest probability, 1 / sum(exp(s - max)):
        # exact, and never the log of an underflowed probability.
        log_normalizer = row_max - tf.math.log(tf.reduce_max(probabilities, axis=1))
        positives = tf.gather(columns, positive_columns)
        positive_scores = tf.reduce_sum(queries * positives, axis=1)
        if bias is not None:
            positive_scores += tf.gather(bias, positive_columns)

        def gradient(upstream):
            weights = tf.cast(upstream, queries.dtype)[:, None]
            weighted_queries = weights * queries
            query_gradient = weights * (tf.linalg.matmul(probabilities, distinct.columns) - positives)
            # Each copy of a merged column had 1/count of its probability.
            per_distinct = tf.linalg.matmul(probabilities, weighted_queries, transpose_a=True) / distinct.counts[:, None]
            column_gradient = tf.gather(per_distinct, distinct.index) - (
                tf.math.unsorted_segment_sum(weighted_queries, positive_columns, tf.shape(columns)[0]))
            return query_gradient, column_gradient

        return log_normalizer - positive_scores, gradient

    return loss_of(query, candidates)


class _DistinctColumns(NamedTuple):
    columns: tf.Tensor  # [U, d], the first copy of each distinct column
    bias: tf.Tensor  # [U], its bias plus log(count)
    counts: tf.Tensor  # [U]
    index: tf.Tensor  # [N], each original column's row in ``columns``


def _distinct_columns(columns: tf.Tensor, bias: tf.Tensor | None) -> _DistinctColumns:
    """Merges bitwise-identical candidate columns (same embedding, same bias) into one, weighted by its count.

    A batch of popular items repeats them: 8,192 MovieLens ratings name at most
    1,682 movies. ``sum_j exp(s_ij)`` over copies equals ``count * exp(s_iu)``,
    so one column with ``log(count)`` added to its bias gives the same softmax
    over a ``[B, U]`` instead of a ``[B, B]`` matrix.
    """
    key = columns if bias is None else tf.concat([columns, bias[:, None]], axis=1)
    _, index = tf.raw_ops.UniqueV2(x=tf.stop_gradient(key), axis=tf.constant([0], tf.int64))
    num_distinct = tf.maximum(tf.reduce_max(index) + 1, 0)  # an empty replica batch has none
    first = tf.math.unsorted_segment_min(tf.range(tf.shape(index)[0]), index, num_distinct)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(index, columns.dtype), index, num_distinct)
    distinct_bias = tf.math.log(counts)
    if bias is not None:
        distinct_bias += tf.gather(bias, first)
    return _DistinctColumns(tf.gather(columns, first), distinct_bias, counts, index)


def _gather_global(values: tf.Tensor, context: tf.distribute.ReplicaContext) -> tuple[tf.Tensor, tf.Tensor]:
    """Every replica's ``values`` in replica order, and where this replica's rows landed.

    Replicas may hold batches of different sizes (the last batch of an epoch),
    so the offset comes from the gathered sizes rather than the replica id alone.
    """
    local = tf.shape(values)[0]
    sizes = context.all_gather(tf.reshape(local, [1]), axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    return context.all_gather(values, axis=0), offset + tf.range(local)
