"""Index backends at a million candidates: build time, latency, throughput and recall, in interleaved runs.

Candidates, as the TFRS efficient-serving tutorial builds them:
  * tutorial: the trained MovieLens movie embeddings, each repeated 1,000 times
    with a U(0, 1) multiplier (about 1.68M candidates, d=32), queried with the
    trained user embeddings;
  * gaussian: 1M x 32 standard normal candidates and queries (a worst case:
    no cluster structure for ScaNN's tree to exploit).

Three sides per data set -- brute force, ScaNN with its defaults, and ScaNN tuned to a
recall target (``index.target_recall``, issue 17) -- each built afresh and measured
``--runs`` times, interleaved (A B C, C B A, ...), so that load from elsewhere hits all
alike. Per side: build time (for the tuned side, tuning included), single-query latency
(median of 200), time for a batch of 1,000 queries and recall@10 against exact search;
reported as median [min-max] over the runs. Speed-ups are brute force over ScaNN within
each round. A BLAS matmul plus ``argpartition`` reference (also the exact answers) is
timed once per data set.

Tuning never sees the measured queries: the tutorial's users are split in two, the tuning
uses one half (as training queries) and the measured queries are drawn from the other; the
gaussian set tunes on a separate Gaussian sample.

Usage: python benchmarks/index_bench.py --check          # full size; exit 1 if a target is missed
       python benchmarks/index_bench.py --repeats 30 --gaussian 50000 --runs 1   # a quick, small run
       python benchmarks/index_bench.py --plot docs/scann_tradeoff.png          # also the trade-off sweep

Full-size runs (without --plot) write their output to benchmarks/results/index_bench.txt.

Targets (issue 4): on the tutorial candidates, default ScaNN recall@10 >= 0.95 with
single-query latency at least 10x lower than brute force; batched brute force within 2x
of BLAS + argpartition.
Targets (issue 17): tuned to target_recall 0.99 on the tutorial candidates, recall@10 >=
0.99 at >= 20x lower single-query latency than brute force; tuned to 0.95 on 1M gaussian
candidates, recall@10 >= 0.95 at >= 5x. Each on the median of the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import towerkit  # noqa: E402  (selects Keras 2)
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from towerkit import config as recipe_config  # noqa: E402
from towerkit.embedding import embed  # noqa: E402
from towerkit.models import make_optimizer  # noqa: E402
from towerkit.pipeline import training_dataset  # noqa: E402

K = 10
SINGLE_QUERIES = 200
BATCH_QUERIES = 1000
CHUNK = 100  # queries per brute-force matmul, to keep [chunk, N] scores in memory


def trained_embeddings() -> tuple[np.ndarray, np.ndarray]:
    raw, origin = recipe_config.load_recipe("retrieval")
    config = recipe_config.resolve(raw, origin)
    data = towerkit.load_dataset("movielens-100k")
    tf.keras.utils.set_random_seed(42)
    # The tutorial's towers read the user id and the movie title only (no history, whatever the recipe says).
    query = {key: value for key, value in config["query_tower"].items() if key != "history"}
    model = towerkit.assemble(query=query, candidate=dict(config["candidate_tower"]),
                              task=dict(config["task"]), data=data)
    model.compile(optimizer=make_optimizer("adagrad", 0.1))
    model.fit(training_dataset(data, model.feature_keys, 2048, 100_000, 42), epochs=6, verbose=0)
    users = embed(model.query_tower, {"user_id": np.unique(data.interactions["user_id"])}).numpy()
    movies = embed(model.candidate_tower, {"movie_title": data.candidate_ids}).numpy()
    return users, movies


def tutorial_candidates(movies: np.ndarray, repeats: int, rng: np.random.Generator) -> np.ndarray:
    tiled = np.tile(movies, (repeats, 1))
    return (tiled * rng.uniform(0.0, 1.0, size=(len(tiled), 1))).astype(np.float32)


def exact_topk(queries: np.ndarray, candidates: np.ndarray, k: int = K) -> np.ndarray:
    """The BLAS reference: matmul then argpartition, in chunks of queries."""
    out = []
    for start in range(0, len(queries), CHUNK):
        scores = queries[start : start + CHUNK] @ candidates.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(out)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def single_latency(search, queries: np.ndarray) -> float:
    search(queries[:1])  # trace / warm up
    times = []
    for query in queries[:SINGLE_QUERIES]:
        start = time.perf_counter()
        search(query[None, :])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batched(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    search(queries[:CHUNK])
    start = time.perf_counter()
    ids = np.concatenate([search(queries[s : s + CHUNK]) for s in range(0, len(queries), CHUNK)])
    return time.perf_counter() - start, ids


def backend_search(index):
    call = tf.function(lambda q: index(q, k=K)[1], input_signature=[tf.TensorSpec([None, None], tf.float32)])
    return lambda q: call(tf.constant(q)).numpy()


def call_floor():
    """The harness without an index: what a tf.function call costs by itself, in the same way."""
    call = tf.function(lambda q: tf.math.top_k(q, k=K)[1], input_signature=[tf.TensorSpec([None, None], tf.float32)])
    return lambda q: call(tf.constant(q)).numpy()


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))


def measure(index, build: float, queries: np.ndarray, batch_queries: np.ndarray, exact: np.ndarray) -> dict:
    """One side's figures for one run: build, single-query latency, batch time, recall@10."""
    search = backend_search(index)
    single = single_latency(search, queries)
    batch, ids = batched(search, batch_queries)
    return {"build": build, "single": single, "batch": batch, "recall": recall(ids, exact),
            "parameters": index.parameters()}


def sides(candidates: np.ndarray, queries: np.ndarray, tuning: np.ndarray, target: float, exact: np.ndarray):
    """The three sides of a data set: each call builds its index afresh and measures it."""
    batch_queries = queries[:BATCH_QUERIES]

    def brute_force() -> dict:
        build, index = timed(lambda: towerkit.create_index("brute-force", k=K).index(candidates))
        return measure(index, build, queries, batch_queries, exact)

    def scann_default() -> dict:
        build, index = timed(lambda: towerkit.create_index("scann", k=K).index(candidates))
        return measure(index, build, queries, batch_queries, exact)

    def scann_tuned() -> dict:
        index = towerkit.create_index("scann", k=K, target_recall=target)

        def build():
            index.tune_with(tuning)
            index.index(candidates)

        return measure(index, timed(build)[0], queries, batch_queries, exact)

    return {"brute-force": brute_force, "scann default": scann_default,
            f"scann target_recall={target}": scann_tuned}


def cell(values: list[float], unit: float = 1.0, digits: int = 2) -> str:
    return benchlib.timing_cell(benchlib.summarize(values), unit, digits)


def bench(report: benchlib.Report, name: str, candidates: np.ndarray, queries: np.ndarray, tuning: np.ndarray,
          target: float, runs: int) -> dict:
    """Measures the three sides ``runs`` times, interleaved; prints the table and returns the figures."""
    report.say(f"\n== {name}: {len(candidates):,} candidates x {candidates.shape[1]}, {len(queries):,} measured "
               f"queries, {len(tuning):,} tuning queries, {runs} interleaved runs")
    batch_queries = queries[:BATCH_QUERIES]
    blas_time, exact = timed(exact_topk, batch_queries, candidates)
    report.say(f"BLAS matmul + argpartition, batch of {len(batch_queries)} (once, the exact answers): "
               f"{blas_time:.3f} s")
    results = benchlib.interleave(sides(candidates, queries, tuning, target, exact), runs)
    report.table(["side", "build s", "single ms", "batch s", "recall@10"], [
        (side, cell([r["build"] for r in rows]), cell([r["single"] for r in rows], 1e3, 3),
         cell([r["batch"] for r in rows], 1.0, 3), cell([r["recall"] for r in rows], 1.0, 3))
        for side, rows in results.items()], width=24)
    floor = single_latency(call_floor(), queries)
    report.say(f"floor: the same single-query call around top_k of the query itself (no index): {floor * 1e3:.3f} ms")
    brute, default, tuned = results.values()
    default_ratio = [b["single"] / s["single"] for b, s in zip(brute, default)]
    tuned_ratio = [b["single"] / s["single"] for b, s in zip(brute, tuned)]
    report.say(f"single-query speed-up over brute force, per round: default ScaNN {cell(default_ratio, 1.0, 1)}x, "
               f"tuned ScaNN {cell(tuned_ratio, 1.0, 1)}x")
    report.say(f"default ScaNN: {chosen(default[0]['parameters'], ('num_leaves', 'num_leaves_to_search'))}")
    for run, row in enumerate(tuned, 1):
        keys = ("num_leaves", "dimensions_per_block", "num_leaves_to_search", "num_reordering_candidates",
                "reached_recall", "recall_lower_bound", "target_reached", "tuned_latency_ms", "block_size_latency_ms")
        report.say(f"tuned ScaNN, run {run}: {chosen(row['parameters'], keys)}")
    median = lambda values: statistics.median(values)  # noqa: E731
    return {"scann_recall": median([r["recall"] for r in default]), "latency_ratio": median(default_ratio),
            "blas_ratio": median([r["batch"] for r in brute]) / blas_time,
            "tuned_recall": median([r["recall"] for r in tuned]), "tuned_ratio": median(tuned_ratio),
            "tuned_recall_min": min(r["recall"] for r in tuned), "tuned_ratio_min": min(tuned_ratio),
            "default_parameters": default[0]["parameters"], "exact": exact,
            "brute_single": median([r["single"] for r in brute])}


def chosen(parameters: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{key} {parameters[key]}" for key in keys if key in parameters)


def sweep(report: benchlib.Report, candidates: np.ndarray, queries: np.ndarray, exact: np.ndarray,
          num_leaves: int) -> list[tuple[int, float, float]]:
    """Default ScaNN's trade-off over num_leaves_to_search (one run each, for the plot only)."""
    points = []
    for leaves in (4, 8, 16, 32, 64, 128, 256):
        index = towerkit.create_index("scann", k=K, num_leaves=num_leaves, num_leaves_to_search=leaves)
        index.index(candidates)
        search = backend_search(index)
        latency = single_latency(search, queries)
        points.append((leaves, latency, recall(batched(search, queries[:BATCH_QUERIES])[1], exact)))
        report.say(f"  sweep num_leaves_to_search={leaves:5d}: single {latency * 1e3:7.3f} ms  "
                   f"recall@10 {points[-1][2]:.3f}")
    return points


def plot(points: list[tuple[int, float, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [p for p in points if p[0] > 0]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([p[1] * 1e3 for p in sweep], [p[2] for p in sweep], "o-", label="ScaNN, num_leaves_to_search")
    for leaves, latency, value in sweep:
        axes.annotate(str(leaves), (latency * 1e3, value), textcoords="offset points", xytext=(4, -10), fontsize=8)
    brute = points[0]
    axes.axvline(brute[1] * 1e3, color="grey", linestyle="--", label=f"brute force ({brute[1] * 1e3:.1f} ms)")
    axes.set_xscale("log")
    axes.set_xlabel("single-query latency (ms, log scale)")
    axes.set_ylabel("recall@10 vs exact")
    axes.set_title("ScaNN on 1.68M MovieLens-derived candidates (d=32)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def tutorial_data(repeats: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates, measured queries, tuning queries): the users split in two, so tuning never sees a measured one."""
    users, movies = trained_embeddings()
    order = rng.permutation(len(users))
    tuning, held_out = users[order[: len(users) // 2]], users[order[len(users) // 2:]]
    queries = held_out[rng.integers(0, len(held_out), size=max(BATCH_QUERIES, SINGLE_QUERIES))]
    return tutorial_candidates(movies, repeats, rng), queries, tuning


def checks(tutorial: dict, gaussian: dict) -> list[benchlib.Check]:
    found = [
        benchlib.Check("tutorial: default ScaNN recall@10 >= 0.95", tutorial["scann_recall"], ">=", 0.95),
        benchlib.Check("tutorial: default ScaNN single-query latency >= 10x lower than brute force",
                       tutorial["latency_ratio"], ">=", 10),
        benchlib.Check("tutorial: batched brute force within 2x of BLAS + argpartition", tutorial["blas_ratio"],
                       "<=", 2),
        benchlib.Check("tutorial: ScaNN target_recall=0.99 reaches recall@10 >= 0.99 (median)",
                       tutorial["tuned_recall"], ">=", 0.99),
        benchlib.Check("tutorial: ScaNN target_recall=0.99 single-query latency >= 20x lower than brute force "
                       "(median)", tutorial["tuned_ratio"], ">=", 20),
    ]
    if gaussian:
        found += [
            benchlib.Check("gaussian: ScaNN target_recall=0.95 reaches recall@10 >= 0.95 (median)",
                           gaussian["tuned_recall"], ">=", 0.95),
            benchlib.Check("gaussian: ScaNN target_recall=0.95 single-query latency >= 5x lower than brute force "
                           "(median)", gaussian["tuned_ratio"], ">=", 5),
        ]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000, help="copies of each movie embedding")
    parser.add_argument("--gaussian", type=int, default=1_000_000, help="gaussian candidates (0 to skip)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each side (default 3)")
    parser.add_argument("--plot", help="also sweep default ScaNN and write the trade-off PNG here")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    args = parser.parse_args()
    report = benchlib.Report("index_bench", sys.argv[1:])
    report.machine("machine before")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    candidates, queries, tuning = tutorial_data(args.repeats, rng)
    tutorial = bench(report, "tutorial", candidates, queries, tuning, 0.99, args.runs)
    if args.plot:
        points = sweep(report, candidates, queries, tutorial["exact"], tutorial["default_parameters"]["num_leaves"])
        plot([(0, tutorial["brute_single"], 1.0), *points], args.plot)
    del candidates
    gaussian = {}
    if args.gaussian:
        candidates = rng.normal(size=(args.gaussian, 32)).astype(np.float32)
        tuning = rng.normal(size=(1000, 32)).astype(np.float32)  # separate from the measured queries
        gaussian = bench(report, "gaussian", candidates, rng.normal(size=(BATCH_QUERIES, 32)).astype(np.float32),
                         tuning, 0.95, args.runs)
    report.say()
    report.machine("machine after")
    report.say(f"wall time {time.perf_counter() - start:.0f} s")
    status = benchlib.finish(checks(tutorial, gaussian), args.check, report)
    if args.repeats == 1000 and args.gaussian == 1_000_000 and args.runs >= 3 and not args.plot:
        report.say(f"wrote {report.write()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
