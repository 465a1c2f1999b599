"""A built ScaNN index holds its searcher once: the searcher ScaNN built is freed after serializing."""

import json

from conftest import run_python

CANDIDATES = 200_000
DIM = 32
# What a leaked searcher holds: its float32 rows (for rescoring) and one code byte per 2 dimensions.
SEARCHER_BYTES = CANDIDATES * (DIM * 4 + DIM // 2)
BUILDS = 8

# Measured in a fresh interpreter: how a long-lived test process's allocator got to where it is
# (the files a pytest worker ran before) moves its resident set by as much as a leak would.
MEASURE = f"""
import gc, json
import numpy as np
import towerkit

def resident_bytes():
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

def build_and_query(candidates, query):
    index = towerkit.create_index("scann", k=5, num_leaves=100, num_leaves_to_search=10)
    index.index(candidates)
    return index(query)[1].numpy()

BUILDS = {BUILDS}
candidates = np.random.default_rng(0).normal(size=({CANDIDATES}, {DIM})).astype(np.float32)
query = candidates[:1]
for _ in range(2):  # the first builds' one-off costs (tracing, thread pools, the allocators' pools)
    build_and_query(candidates, query)
gc.collect()
before = resident_bytes()
shapes = []
for _ in range(BUILDS):
    shapes.append(list(build_and_query(candidates, query).shape))
    gc.collect()
print(json.dumps({{"growth": resident_bytes() - before, "shapes": shapes}}))
"""


def test_rebuilding_an_index_does_not_keep_the_built_searchers():
    result = run_python(MEASURE)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["shapes"] == [[1, 5]] * BUILDS
    # Each build used to leave the searcher ScaNN built registered in TensorFlow's resource
    # manager (38 to 57 MB a build here, 300 MB or more over these 8); now the resident set moves
    # within the allocators' slack and does not grow: -13 to +32 MB quiet, 87 MB once on a
    # loaded machine (over the 3 searchers' 86 MB this allowed when it measured 4 builds).
    assert measured["growth"] < 4 * SEARCHER_BYTES, measured
