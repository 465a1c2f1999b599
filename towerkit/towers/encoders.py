"""Column encoders for the generic ``features`` tower: one column in, ``[batch, embedding_dim]`` out.

Built-in encoders:

* ``id``: StringLookup plus Embedding, with an out-of-vocabulary row;
* ``categorical``: the same, for a feature column with its own vocabulary;
* ``multi``: a delimited string (``"a|b"``) or a list (joined on reading), mean-pooled;
* ``numeric``: standardized then projected, or bucketized by quantiles (``buckets = N``);
* ``text``: bag of words (mean of word embeddings);
* ``timestamp``: seconds since the epoch, standardized in float64 (or bucketized).

Third-party encoders register with :func:`register_encoder`, typically from a
plugin's ``register_towers`` hook (which runs when plugins load), e.g.::

    @towerkit.hookimpl
    def register_towers(register):
        from towerkit.towers.encoders import register_encoder
        register_encoder("my-text", MyTextEncoder)

An encoder factory takes ``(feature, embedding_dim, **options)`` and returns a
Keras layer with ``adapt(values)``, ``check(values)`` and ``call(values)``;
:class:`Encoder` provides the plumbing.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError, DuplicateComponentError

# Lists read from Parquet/JSON are joined with this separator (see towerkit.datasets.tabular).
LIST_SEPARATOR = "\x1f"
DEFAULT_DELIMITER = "|"
# Kinds of NumPy dtype, named for error messages.
DTYPE_NAMES = {"U": "text", "S": "text", "O": "objects", "i": "integers", "u": "integers", "f": "floats",
               "b": "booleans"}


def _as_strings(values: tf.Tensor) -> tf.Tensor:
    values = tf.convert_to_tensor(values)
    if values.dtype == tf.string:
        return values
    if values.dtype == tf.bool:
        return tf.where(values, "true", "false")
    return tf.strings.as_string(values)


def _numpy_strings(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    if values.dtype == bool:
        return np.where(values, "true", "false")
    return values.astype(str)


class Encoder(tf.keras.layers.Layer):
    """Base class: one feature column -> ``[batch, embedding_dim]``.

    Subclasses set ``accepts`` (NumPy dtype kinds they can encode) and
    ``accepts_text`` (how to say so), learn state in :meth:`adapt` and put it
    in ``get_config`` so a saved tower can be rebuilt without data.

    Args:
        feature: The column this encoder reads.
        embedding_dim: Output width.
    """

    accepts = "Uifub"
    accepts_text = "any column"

    def __init__(self, feature: str, embedding_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature, self.embedding_dim = feature, embedding_dim

    @property
    def encoder_name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    def check(self, values: np.ndarray) -> None:
        """Raises ConfigError when the column's type does not fit this encoder."""
        kind = np.asarray(values).dtype.kind
        if kind not in self.accepts:
            raise ConfigError(
                f"encoder '{self.encoder_name}' does not fit column {self.feature!r}, which holds "
                f"{DTYPE_NAMES.get(kind, kind)}; it takes {self.accepts_text}, so choose another encoder "
                f"(e.g. '{infer_encoder(values)}') for it.")

    def adapt(self, values: np.ndarray) -> None:
        """Learns vocabularies or statistics from the column's values."""

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "embedding_dim": self.embedding_dim}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class IdEncoder(Encoder):
    """Lookup plus embedding; unknown values share ``num_oov_buckets`` rows.

    Args:
        vocabulary: Known values as strings; learned by :meth:`adapt` if None.
        num_oov_buckets: Rows for unknown values.
    """

    accepts = "Uiub"
    accepts_text = "text, integers or booleans"

    def __init__(self, feature: str, embedding_dim: int, vocabulary: Sequence[str] | None = None,
                 num_oov_buckets: int = 1, **kwargs: Any):
        super().__init__(feature, embedding_dim, **kwargs)
        self.num_oov_buckets = num_oov_buckets
        self.vocabulary = None if vocabulary is None else [str(v) for v in vocabulary]
        if self.vocabulary is not None:
            self._build_layers()

    def adapt(self, values: np.ndarray) -> None:
        if self.vocabulary is None:
            self.vocabulary = np.unique(_numpy_strings(values)).tolist()
            self._build_layers()

    def _build_layers(self) -> None:
        if not self.vocabulary:
            raise ConfigError(f"column {self.feature!r} has no values to build a vocabulary from.")
        self.lookup = tf.keras.layers.StringLookup(vocabulary=self.vocabulary, mask_token=None,
                                                   num_oov_indices=self.num_oov_buckets)
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + self.num_oov_buckets, self.embedding_dim)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(_as_strings(values)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary": self.vocabulary, "num_oov_buckets": self.num_oov_buckets}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class CategoricalEncoder(IdEncoder):
    """A categorical feature column: its own lookup and embedding (as :class:`IdEncoder`)."""


@tf.keras.utils.register_keras_serializable(package="towerkit")
class MultiEncoder(Encoder):
    """Several values in one cell (``"a|b"``, or a list) -> the mean of their embeddings.

    Args:
        delimiter: What separates values; by default the list separator where
            the column came from lists, else ``"|"``.
        vocabulary: Known values; learned by :meth:`adapt` if None.
    """

    accepts = "U"
    accepts_text = "text (delimited values) or lists"

    def __init__(self, feature: str, embedding_dim: int, delimiter: str | None = None,
                 vocabulary: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(feature, embedding_dim, **kwargs)
        if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
            raise ConfigError(f"delimiter of column {feature!r} must be a non-empty string, got {delimiter!r}.")
        self.delimiter = delimiter
        self.vocabulary = None if vocabulary is None else [str(v) for v in vocabulary]
        if self.vocabulary is not None:
            self._build_layers()

    def adapt(self, values: np.ndarray) -> None:
        if self.vocabulary is not None:
            return
        distinct = np.unique(np.asarray(values).reshape(-1)).tolist()
        if self.delimiter is None:
            self.delimiter = LIST_SEPARATOR if any(LIST_SEPARATOR in v for v in distinct) else DEFAULT_DELIMITER
        tokens = {t.strip() for v in distinct for t in v.split(self.delimiter)}
        self.vocabulary = sorted(t for t in tokens if t) or ["[empty]"]
        self._build_layers()

    def _build_layers(self) -> None:
        self.lookup = tf.keras.layers.StringLookup(vocabulary=self.vocabulary, mask_token=None)
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + 1, self.embedding_dim)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        tokens = tf.strings.split(_as_strings(values), sep=self.delimiter)
        tokens = tf.ragged.map_flat_values(tf.strings.strip, tokens)
        weights = tf.ragged.map_flat_values(lambda t: tf.cast(tf.not_equal(t, ""), tf.float32), tokens)
        embedded = tf.ragged.map_flat_values(lambda t: self.embedding(self.lookup(t)), tokens)
        total = tf.reduce_sum(embedded * tf.expand_dims(weights, -1), axis=1)
        count = tf.reduce_sum(weights, axis=1, keepdims=True)
        return total / tf.maximum(count, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "delimiter": self.delimiter, "vocabulary": self.vocabulary}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class NumericEncoder(Encoder):
    """A number, standardized (in float64, so timestamps keep their precision) and projected.

    With ``buckets``, the number is bucketized at quantile boundaries and
    each bucket has an embedding instead. Missing values (NaN) become the mean.

    Args:
        buckets: Quantile buckets (0 for a standardized value).
        mean, std, boundaries: Learned by :meth:`adapt` if None.
    """

    accepts = "iufb"
    accepts_text = "numbers or booleans"

    def __init__(self, feature: str, embedding_dim: int, buckets: int = 0, mean: float | None = None,
                 std: float | None = None, boundaries: Sequence[float] | None = None, **kwargs: Any):
        super().__init__(feature, embedding_dim, **kwargs)
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
            raise ConfigError(f"buckets of column {feature!r} must be a non-negative integer, got {buckets!r}.")
        self.buckets, self.mean, self.std = buckets, mean, std
        self.boundaries = None if boundaries is None else [float(b) for b in boundaries]
        if buckets:
            self.embedding = tf.keras.layers.Embedding(buckets + 1, embedding_dim)
        else:
            self.projection = tf.keras.layers.Dense(embedding_dim)

    def adapt(self, values: np.ndarray) -> None:
        numbers = np.asarray(values, dtype=np.float64).reshape(-1)
        numbers = numbers[np.isfinite(numbers)]
        if self.mean is None:
            self.mean = float(numbers.mean()) if len(numbers) else 0.0
            std = float(numbers.std()) if len(numbers) else 0.0
            self.std = std if std > 0 else 1.0
        if self.buckets and self.boundaries is None:
            quantiles = np.linspace(0, 1, self.buckets + 1)[1:-1]
            self.boundaries = np.unique(np.quantile(numbers, quantiles)).tolist() if len(numbers) else []

    def call(self, values: tf.Tensor) -> tf.Tensor:
        numbers = tf.cast(values, tf.float64)
        numbers = tf.where(tf.math.is_finite(numbers), numbers, tf.constant(self.mean, tf.float64))
        if self.buckets:
            return self.embedding(tf.raw_ops.Bucketize(input=numbers, boundaries=self.boundaries))
        standardized = tf.cast((numbers - self.mean) / self.std, tf.float32)
        return self.projection(tf.reshape(standardized, [-1, 1]))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "buckets": self.buckets, "mean": self.mean, "std": self.std,
                "boundaries": self.boundaries}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class TimestampEncoder(NumericEncoder):
    """Seconds since the epoch, standardized in float64 (or bucketized with ``buckets``)."""

    accepts = "iuf"
    accepts_text = "seconds since the epoch (numbers)"


@tf.keras.utils.register_keras_serializable(package="towerkit")
class TextEncoder(Encoder):
    """Free text -> the mean of its word embeddings (a bag of words).

    Args:
        max_tokens: Vocabulary size cap (the most frequent words).
        vocabulary: Known words; learned by :meth:`adapt` if None.
    """

    accepts = "U"
    accepts_text = "text"

    def __init__(self, feature: str, embedding_dim: int, max_tokens: int = 20_000,
                 vocabulary: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(feature, embedding_dim, **kwargs)
        self.max_tokens = max_tokens
        self.vocabulary = None if vocabulary is None else [str(v) for v in vocabulary]
        if self.vocabulary is not None:
            self._build_layers()

    def adapt(self, values: np.ndarray) -> None:
        if self.vocabulary is None:
            vectorizer = tf.keras.layers.TextVectorization(max_tokens=self.max_tokens)
            vectorizer.adapt(tf.constant(np.unique(np.asarray(values).reshape(-1))))
            # The first two entries are padding and OOV, which the layer adds itself.
            self.vocabulary = [str(t) for t in vectorizer.get_vocabulary()[2:]] or ["[empty]"]
            self._build_layers()

    def _build_layers(self) -> None:
        self.vectorizer = tf.keras.layers.TextVectorization(vocabulary=self.vocabulary)
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + 2, self.embedding_dim, mask_zero=True)
        self.pooling = tf.keras.layers.GlobalAveragePooling1D()

    def call(self, values: tf.Tensor) -> tf.Tensor:
        tokens = self.vectorizer(tf.reshape(_as_strings(values), [-1]))
        return self.pooling(self.embedding(tokens), mask=tf.not_equal(tokens, 0))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_tokens": self.max_tokens, "vocabulary": self.vocabulary}


ENCODERS: dict[str, Callable[..., Encoder]] = {
    "id": IdEncoder,
    "categorical": CategoricalEncoder,
    "multi": MultiEncoder,
    "numeric": NumericEncoder,
    "text": TextEncoder,
    "timestamp": TimestampEncoder,
}
# A column given this encoder is left out of the tower.
SKIP = "skip"


def register_encoder(name: str, factory: Callable[..., Encoder], *, override: bool = False) -> None:
    """Makes an encoder available by name to the ``features`` tower.

    Args:
        name: The name recipes use, e.g. ``encoders = {title = "my-text"}``.
        factory: ``factory(feature, embedding_dim, **options)`` returning a
            layer with ``adapt(values)``, ``check(values)`` and ``call(values)``
            (subclass :class:`Encoder`).
        override: Replace an existing encoder of that name.

    Raises:
        DuplicateComponentError: The name is taken by another factory.
    """
    if not isinstance(name, str) or not name or name == SKIP:
        raise ConfigError(f"an encoder name must be a non-empty string other than '{SKIP}', got {name!r}.")
    if not callable(factory):
        raise ConfigError(f"encoder '{name}' needs a callable factory, got {type(factory).__name__}.")
    if name in ENCODERS and ENCODERS[name] is not factory and not override:
        raise DuplicateComponentError(f"encoder '{name}' is already registered; pick another name or pass "
                                      "override=True.")
    ENCODERS[name] = factory


def create_encoder(name: str, feature: str, embedding_dim: int, **options: Any) -> Encoder:
    """Builds a registered encoder for one column.

    Raises:
        ConfigError: The name is unknown, or an option is not accepted.
    """
    if name not in ENCODERS:
        close = difflib.get_close_matches(str(name), list(ENCODERS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown encoder {name!r} for column {feature!r}; {hint}encoders: "
                          f"{', '.join(sorted(ENCODERS))} (or '{SKIP}' to leave the column out).")
    try:
        encoder = ENCODERS[name](feature, embedding_dim, name=f"{name}_{_layer_safe(feature)}", **options)
    except TypeError as exc:
        raise ConfigError(f"encoder '{name}' of column {feature!r} rejects its options {sorted(options)} "
                          f"({exc}).") from None
    encoder.registered_name = name
    return encoder


def _layer_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text) or "column"


def infer_encoder(values: np.ndarray) -> str:
    """The default encoder for a feature column, from its dtype and values.

    Booleans and integers with at most 20 distinct values are categorical,
    other numbers numeric. Text is multi-valued when its cells hold a list
    separator (or ``|`` in at least a tenth of them), free text when cells
    average three or more words, else categorical.
    """
    array = np.asarray(values).reshape(-1)
    kind = array.dtype.kind
    if kind == "b":
        return "categorical"
    if kind in "iu":
        return "categorical" if len(np.unique(array[:100_000])) <= 20 else "numeric"
    if kind == "f":
        return "numeric"
    distinct = np.unique(array[:100_000]).tolist()
    if not distinct:
        return "categorical"
    if any(LIST_SEPARATOR in v for v in distinct):
        return "multi"
    if sum(DEFAULT_DELIMITER in v for v in distinct) >= 0.1 * len(distinct):
        return "multi"
    if np.mean([len(v.split()) for v in distinct]) >= 3:
        return "text"
    return "categorical"
