"""Human-facing reports of a run: report.png (curves) and report.md (summary).

Both read the metrics schema that the train job writes to metrics.json:
``metrics["test"][system]`` is a :class:`towerkit.evaluation.TopK` as JSON.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from towerkit import files
from towerkit.evaluation import TopK, evaluate_topk

CURVE_KS = (10, 100)
PNG_NAME = "report.png"


class EpochEvaluation(tf.keras.callbacks.Callback):
    """Adds exact test top-k (``test_top_K``) to each epoch's logs, for history.csv and report.png.

    The time it takes is recorded in ``seconds`` so the fit time can be reported without it.
    """

    def __init__(self, data: Any, ks: Sequence[int]):
        super().__init__()
        self.data, self.ks, self.seconds = data, tuple(ks), 0.0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        start = time.perf_counter()
        results = evaluate_topk(self.model, self.data, self.ks)
        if logs is not None:
            logs.update({f"test_{key}": value for key, value in results.all.items()})
        self.seconds += time.perf_counter() - start


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_png(path: Path, history: dict[str, list[float]], metrics: dict[str, Any]) -> bool:
    """Plots loss and test top-k per epoch, with each baseline as a reference line.

    Returns:
        False when matplotlib is not installed (no file is written then).
    """
    plt = _pyplot()
    if plt is None:
        return False
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    figure, (loss_axes, topk_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, history.get("loss", []), "o-")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="loss")
    baselines = {name: TopK.from_json(value) for name, value in metrics["test"].items() if name != "model"}
    for color, k in zip(["tab:blue", "tab:orange"], CURVE_KS):
        if f"test_top_{k}" in history:
            topk_axes.plot(epochs, history[f"test_top_{k}"], "o-", color=color, label=f"model top-{k}")
        for style, (name, result) in zip(("--", ":", "-."), baselines.items()):
            if f"top_{k}" in result.all:
                topk_axes.axhline(result.all[f"top_{k}"], color=color, linestyle=style, label=f"{name} top-{k}")
    topk_axes.set(title="exact test top-k accuracy", xlabel="epoch", ylabel="accuracy")
    topk_axes.legend(fontsize=8)
    for axes in (loss_axes, topk_axes):
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"towerkit run: {metrics.get('recipe', '')}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    plt.close(figure)
    files.write_file(path, buffer.getvalue())
    return True


def _table(results: dict[str, TopK], excluding_train: bool) -> list[str]:
    rows = [(name, result.excluding_train if excluding_train else result.all) for name, result in results.items()]
    rows = [(name, values) for name, values in rows if values]
    if not rows:
        return []
    keys = list(rows[0][1])
    lines = ["| | " + " | ".join(k.replace("_", "-") for k in keys) + " |", "| --- " * (len(keys) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |" for name, values in rows]


def _timing_line(timing: dict[str, float]) -> str:
    return (f"Load {timing.get('load_seconds', 0):.1f} s, fit {timing.get('fit_seconds', 0):.1f} s, "
            f"evaluate {timing.get('evaluate_seconds', 0):.2f} s, index {timing.get('index_seconds', 0):.2f} s, "
            f"total {timing.get('total_seconds', 0):.1f} s.")


def write_markdown(path: Path, metrics: dict[str, Any], examples: dict[str, list[str]], has_png: bool) -> None:
    """A short summary: data, results against baselines, timings and example recommendations."""
    info = metrics["dataset"]
    results = {name: TopK.from_json(value) for name, value in metrics["test"].items()}
    lines = [
        f"# towerkit run: {metrics['recipe']}", "",
        f"Dataset `{info['name']}`: {info['interactions']:,} interactions ({info['train']:,} train, "
        f"{info['test']:,} test), {info['queries']:,} queries, {info['candidates']:,} candidates.", "",
        "## Exact test top-k accuracy over all candidates", "", *_table(results, False), "",
    ]
    excluded = _table(results, True)
    if excluded:
        lines += ["With each query's training items excluded:", "", *excluded, ""]
    lines += ["## Time", "", _timing_line(metrics["timing"]), "", "## Example recommendations", ""]
    lines += [f"- **{query}**: " + "; ".join(items) for query, items in examples.items()]
    if has_png:
        lines += ["", f"![curves]({PNG_NAME})"]
    else:
        lines += ["", f"(No {PNG_NAME}: matplotlib is not installed; `pip install matplotlib` for the curves.)"]
    files.write_file(path, "\n".join(lines) + "\n")
