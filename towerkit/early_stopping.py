"""Choosing the epoch on validation: exact validation top-k after each epoch, keeping the best weights.

The test split never takes part: the dataset's ``validation_rows`` (carved from
train by ``validation_fraction``) are ranked against every candidate, exactly
as :func:`towerkit.evaluate_topk` ranks the test split.
"""

from __future__ import annotations

import re
import time
from typing import Any

import tensorflow as tf

from towerkit.errors import ConfigError
from towerkit.evaluation import evaluate_topk

METRIC = re.compile(r"^top_([1-9][0-9]*)$")


def metric_k(metric: str) -> int:
    """The k of a ``top_K`` metric name; raises ConfigError for anything else."""
    match = METRIC.match(str(metric))
    if not match:
        raise ConfigError(f"train.early_stopping_metric must be 'top_K' with K a positive integer "
                          f"(e.g. 'top_100'), got {metric!r}.")
    return int(match.group(1))


class ValidationEarlyStopping(tf.keras.callbacks.Callback):
    """Stops when validation top-k has not improved for ``patience`` epochs, and restores the best epoch's weights.

    Adds ``val_top_K`` to each epoch's logs (so history.csv shows it).

    Args:
        data: A dataset with non-empty ``validation_rows``.
        patience: Epochs without improvement before stopping.
        metric: ``"top_K"``, ranked over all candidates (training items not excluded).
        batch_size: Examples embedded at once.

    Attributes:
        best_epoch: The 1-based epoch whose weights the model holds after training (0 before any).
        best_value: Its validation metric.
        seconds: Time spent evaluating, so it can be left out of the fit time.
    """

    def __init__(self, data: Any, patience: int, metric: str = "top_100", batch_size: int = 4096):
        super().__init__()
        if not len(getattr(data, "validation_rows", ())):
            raise ConfigError(f"early stopping needs validation rows, and dataset '{data.name}' has none; "
                              "set its validation_fraction above 0 (e.g. dataset.validation_fraction = 0.1).")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"train.early_stopping_patience must be a positive integer, got {patience!r}.")
        self.data, self.patience, self.metric = data, patience, metric
        self.k, self.batch_size = metric_k(metric), batch_size
        self.best_epoch, self.best_value, self.best_weights = 0, float("-inf"), None
        self.seconds = 0.0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        start = time.perf_counter()
        value = evaluate_topk(self.model, self.data, [self.k], batch_size=self.batch_size, split="validation").all[self.metric]
        if logs is not None:
            logs[f"val_{self.metric}"] = value
        if value > self.best_value:
            self.best_epoch, self.best_value, self.best_weights = epoch + 1, value, self.model.get_weights()
        elif epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True
        self.seconds += time.perf_counter() - start

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def summary(self) -> dict[str, Any]:
        """``{"best_epoch": ..., "val_top_K": ...}`` for metrics.json."""
        return {"best_epoch": self.best_epoch, f"val_{self.metric}": self.best_value}
