"""The generic ``features`` tower: one encoder per column, for any dataset's columns.

As a query tower it reads the query id plus the columns of the ``queries``
table; as a candidate tower, the candidate id plus the columns of the
``candidates`` table. Which side it is on comes from ``side`` (or from
:meth:`FeaturesTower.bind_dataset`, when the assembler tells it); ``columns``
names the columns outright instead. Each column's encoder comes from
``encoders`` or is inferred from its type (see
:func:`towerkit.towers.encoders.infer_encoder`); the id column is an ``id``
encoder, the dataset's timestamp column and date/time-typed columns a
``timestamp`` encoder.

Recipe example::

    [candidate_tower]
    name = "features"
    side = "candidate"
    encoders = { genre = "categorical", tags = { encoder = "multi", delimiter = ";" }, price = { encoder = "numeric", buckets = 10 } }
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from towerkit.errors import ConfigError, FeatureError
from towerkit.towers.base import Tower, check_positive_int
from towerkit.towers.encoders import SKIP, create_encoder, infer_encoder

SIDES = ("query", "candidate")
COMBINE = ("sum", "concat")


def _encoder_spec(column: str, spec: Any) -> tuple[str, dict[str, Any]]:
    """``"numeric"`` or ``{encoder = "numeric", buckets = 10}`` -> (name, options)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("encoder"), str):
        return spec["encoder"], {k: v for k, v in spec.items() if k != "encoder"}
    raise ConfigError(f"encoders.{column} must be an encoder name or a table with an 'encoder' key, got {spec!r}; "
                      f"e.g. encoders = {{ {column} = \"categorical\" }}.")


@tf.keras.utils.register_keras_serializable(package="towerkit")
class FeaturesTower(Tower):
    """One encoder per column, summed (or concatenated and projected) into ``[batch, embedding_dim]``.

    Args:
        side: ``"query"`` or ``"candidate"``: read that side's id plus its
            table's columns (needs a dataset that declares them, such as
            ``interactions``).
        columns: The columns to read, the id first; overrides ``side``'s defaults.
        encoders: Column -> encoder name, or a table ``{encoder = NAME, **options}``.
            ``"skip"`` leaves a default column out; a column not in the
            defaults is added (e.g. an interaction-level column).
        embedding_dim: Output width (and each encoder's width).
        combine: ``"sum"`` adds the encoders' outputs; ``"concat"``
            concatenates them and projects through Dense ``layers``.
        layers: Dense widths after concatenation (the last is the output width).
        state: The resolved columns, encoders and their learned state, as
            ``get_config`` records them; rebuilds the tower without data.
    """

    def __init__(self, side: str | None = None, columns: Sequence[str] | None = None,
                 encoders: Mapping[str, Any] | None = None, embedding_dim: int = 32, combine: str = "sum",
                 layers: Sequence[int] | None = None, state: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        if side is not None and side not in SIDES:
            raise ConfigError(f"side must be 'query' or 'candidate', got {side!r}.")
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}.")
        if columns is not None and (isinstance(columns, str) or not columns
                                    or not all(isinstance(c, str) and c for c in columns)):
            raise ConfigError(f"columns must be a non-empty list of column names, id first, got {columns!r}.")
        if layers is not None:
            layers = [check_positive_int(width, "each of layers") for width in layers]
            if combine != "concat" or not layers:
                raise ConfigError("layers needs combine = 'concat' and at least one width, e.g. layers = [64, 32].")
        self.side, self.combine, self.layer_widths = side, combine, layers
        self.requested_columns = None if columns is None else list(columns)
        if encoders is not None and not isinstance(encoders, Mapping):
            raise ConfigError(f"encoders must be a table of column = encoder, got {encoders!r}; e.g. "
                              "encoders = { genre = \"categorical\" }.")
        self.encoder_specs = {c: _encoder_spec(c, s) for c, s in dict(encoders or {}).items()}
        self.columns: list[str] | None = None
        # The column the default "id" encoder goes to: the side's id, or the first of `columns`.
        self.id_column: str | None = None
        self.encoders: dict[str, tf.keras.layers.Layer] = {}
        self.projection = None
        if state:
            self._restore(state)
        elif self.requested_columns is not None:
            self.id_column = self.requested_columns[0]
            self.columns = self._with_extra(self.requested_columns)

    # Columns ----------------------------------------------------------------------------------
    def _with_extra(self, columns: Sequence[str]) -> list[str]:
        """Default columns, minus skipped ones, plus encoder-named extras."""
        chosen = [c for c in columns if self.encoder_specs.get(c, ("",))[0] != SKIP]
        extras = [c for c, (name, _) in self.encoder_specs.items() if name != SKIP and c not in chosen]
        return list(dict.fromkeys(chosen + extras))

    def bind_dataset(self, data: Any, role: str) -> None:
        """Takes this tower's default columns from a dataset, for the given role.

        An assembler that knows which role the tower plays calls this before
        reading ``feature_keys``; then the tower needs no options at all.
        """
        if self.columns is None:
            self.side = self.side or role
            self._use_side_columns(data)

    def _use_side_columns(self, source: Any) -> None:
        defaults = self._side_columns(source)
        self.id_column, self.columns = defaults[0], self._with_extra(defaults)

    def _side_columns(self, source: Any) -> list[str]:
        if self.side is None:
            raise ConfigError("the features tower needs side = \"query\" or side = \"candidate\" (or columns = "
                              "[...], id first) to know which columns to read.")
        if not hasattr(source, "query_feature_columns"):
            raise ConfigError(f"side = {self.side!r} needs a dataset that says which columns belong to each side "
                              "(such as 'interactions'); for this dataset name them with columns = [...], id first.")
        if self.side == "query":
            return [source.query_id_key, *source.query_feature_columns]
        return [source.candidate_id_key, *source.candidate_feature_columns]

    @property
    def feature_keys(self) -> tuple[str, ...]:
        # Until the tower knows its columns (at adapt), it claims none.
        return tuple(self.columns or ())

    @property
    def is_adapted(self) -> bool:
        return bool(self.encoders)

    @property
    def vocabulary(self) -> list[str] | None:
        """The id column's vocabulary (what `recommend` checks unknown ids against)."""
        first = self.encoders.get(self.columns[0]) if self.columns else None
        return getattr(first, "vocabulary", None) if getattr(first, "registered_name", "") == "id" else None

    # Adapting ---------------------------------------------------------------------------------
    def adapt(self, features: Mapping[str, Any]) -> None:
        if self.encoders:
            return
        if self.columns is None:
            self._use_side_columns(features)
        missing = [c for c in self.columns if c not in features]
        if missing:
            raise FeatureError(f"tower '{self.component_name}' reads column(s) {', '.join(map(repr, missing))}, which the data "
                               f"does not have; columns: {', '.join(sorted(features))}.")
        times = set(getattr(features, "time_columns", ()))
        for column in self.columns:
            values = features[column]
            name, options = self.encoder_specs.get(column, (None, {}))
            if name is None:
                name = "id" if column == self.id_column else "timestamp" if column in times else infer_encoder(values)
            encoder = create_encoder(name, column, self.embedding_dim, **options)
            encoder.check(values)
            encoder.adapt(values)
            self.encoders[column] = encoder
        self._build_projection()

    def _build_projection(self) -> None:
        if self.combine == "concat":
            widths = self.layer_widths or [self.embedding_dim]
            self.projection = tf.keras.Sequential(
                [tf.keras.layers.Dense(w, activation="relu") for w in widths[:-1]] + [tf.keras.layers.Dense(widths[-1])],
                name="projection")

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.columns = list(state["columns"])
        for column in self.columns:
            name, config = state["encoders"][column]
            config = {k: v for k, v in config.items() if k not in ("feature", "embedding_dim", "name", "trainable",
                                                                   "dtype")}
            self.encoders[column] = create_encoder(name, column, self.embedding_dim, **config)
        self._build_projection()

    # Running ----------------------------------------------------------------------------------
    def call(self, features: Any) -> tf.Tensor:
        if not self.encoders:
            raise ConfigError(f"tower '{self.component_name}' has not been adapted; assemble it with data first.")
        inputs = self.select(features)
        outputs = [self.encoders[c](inputs[c]) for c in self.columns]
        if self.combine == "sum":
            return tf.add_n(outputs) if len(outputs) > 1 else outputs[0]
        return self.projection(tf.concat(outputs, axis=-1))

    def get_config(self) -> dict[str, Any]:
        state = None
        if self.encoders:
            state = {"columns": list(self.columns),
                     "encoders": {c: [e.registered_name, e.get_config()] for c, e in self.encoders.items()}}
        return {**super().get_config(), "side": self.side, "columns": self.requested_columns,
                "encoders": {c: {"encoder": n, **dict(o)} for c, (n, o) in self.encoder_specs.items()},
                "combine": self.combine, "layers": self.layer_widths, "state": state}


def features_tower(side: str | None = None, columns: Sequence[str] | None = None,
                   encoders: Mapping[str, Any] | None = None, embedding_dim: int = 32, combine: str = "sum",
                   layers: Sequence[int] | None = None) -> FeaturesTower:
    """Builds the generic tower: one encoder per column of its side (or of ``columns``).

    Args:
        side: Which side's columns to read by default: "query" or "candidate".
            ``"query"`` reads the query id plus the ``queries`` table's
            columns, ``"candidate"`` the candidate id plus the ``candidates``
            table's columns.
        columns: The columns to read instead, id first.
        encoders: Per column, an encoder name or a table {encoder = NAME, ...options}.
            Names: ``id``, ``categorical``, ``multi``, ``numeric``, ``text``,
            ``timestamp``, registered ones, or ``skip`` to leave a column out.
        embedding_dim: Output width (and each encoder's).
        combine: How encoder outputs are combined: "sum" or "concat" (then projected).
        layers: Dense widths after concatenation (needs combine = "concat").

    Example:
        >>> tower = towerkit.create_tower("features", side="candidate", encoders={"genre": "categorical"})
    """
    name = f"{side}_features" if side else "features"
    return FeaturesTower(side, columns, encoders, embedding_dim, combine, layers, name=name)
