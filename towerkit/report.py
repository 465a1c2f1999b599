"""Human-facing reports of a run: report.png (curves) and report.md (summary)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from towerkit.evaluation import evaluate_topk

CURVE_KS = (10, 100)


class EpochEvaluation(tf.keras.callbacks.Callback):
    """Adds exact test top-k to each epoch's logs, for the curves in report.png.

    The time it takes is recorded in ``seconds`` so the fit time can be reported without it.
    """

    def __init__(self, data: Any, ks: Sequence[int] = CURVE_KS):
        super().__init__()
        self.data, self.ks, self.seconds = data, tuple(ks), 0.0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        start = time.perf_counter()
        results = evaluate_topk(self.model, self.data, self.ks)
        if logs is not None:
            logs.update({f"test_top_{k}": results[f"top_{k}"] for k in self.ks})
        self.seconds += time.perf_counter() - start


def write_png(path: Path, history: dict[str, list[float]], metrics: dict[str, Any]) -> bool:
    """Plots loss and test top-k per epoch, with each baseline as a reference line.

    Returns False when matplotlib is not installed (the report is then skipped).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    figure, (loss_axes, topk_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, history.get("loss", []), "o-")
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="loss")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for color, k in zip(colors, CURVE_KS):
        key = f"test_top_{k}"
        if key in history:
            topk_axes.plot(epochs, history[key], "o-", color=color, label=f"model top-{k}")
        for style, baseline in zip(("--", ":"), ("popularity", "cooccurrence")):
            value = metrics.get(baseline, {}).get(f"top_{k}")
            if value is not None:
                topk_axes.axhline(value, color=color, linestyle=style, label=f"{baseline} top-{k}")
    topk_axes.set(title="exact test top-k accuracy", xlabel="epoch", ylabel="accuracy")
    topk_axes.legend(fontsize=8)
    for axes in (loss_axes, topk_axes):
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"towerkit run: {metrics.get('recipe', '')}")
    figure.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    os.replace(staging, path)
    return True


def _table(metrics: dict[str, Any], prefix: str) -> list[str]:
    rows = [(name, metrics[key]) for name, key in
            [("model", "test"), ("popularity", "popularity"), ("co-occurrence", "cooccurrence")]
            if key in metrics]
    if prefix:
        rows = [(name, metrics[f"{key}_excluding_train"]) for name, key in
                [("model", "test"), ("popularity", "popularity")] if f"{key}_excluding_train" in metrics]
    if not rows:
        return []
    ks = sorted(rows[0][1], key=lambda key: int(key.split("_")[1]))
    lines = ["| | " + " | ".join(k.replace("_", "-") for k in ks) + " |", "| --- " * (len(ks) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in ks) + " |" for name, values in rows]
    return lines


def write_markdown(path: Path, metrics: dict[str, Any], examples: dict[str, list[str]]) -> None:
    """A short summary: data, results against baselines, timings and example recommendations."""
    info, timing = metrics["dataset"], metrics["timing"]
    lines = [
        f"# towerkit run: {metrics['recipe']}",
        "",
        f"Dataset `{info['name']}`: {info['interactions']:,} interactions ({info['train']:,} train, "
        f"{info['test']:,} test), {info['queries']:,} queries, {info['candidates']:,} candidates.",
        "",
        "## Exact test top-k accuracy over all candidates",
        "",
        *_table(metrics, ""),
        "",
    ]
    excluded = _table(metrics, "excl")
    if excluded:
        lines += ["With each user's training items excluded:", "", *excluded, ""]
    lines += [
        "## Time",
        "",
        f"Load {timing.get('load_seconds', 0):.1f} s, fit {timing.get('fit_seconds', 0):.1f} s, "
        f"evaluate {timing.get('evaluate_seconds', 0):.2f} s, index {timing.get('index_seconds', 0):.2f} s, "
        f"total {timing.get('total_seconds', 0):.1f} s.",
        "",
        "## Example recommendations",
        "",
    ]
    for query, items in examples.items():
        lines.append(f"- **{query}**: " + "; ".join(items))
    lines += ["", "![curves](report.png)", ""]
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("\n".join(lines), encoding="utf-8")
    os.replace(staging, path)
