"""A towerkit test plugin: a `bag-of-ids` tower. towerkit-test-clash-b registers the same name."""

import towerkit


@towerkit.hookimpl
def register_towers(register):
    register("bag-of-ids", "towerkit_test_clash_a.tower:BagOfIdsTower",
             description="Hashed id embedding (the winner of the name clash).")
