"""A towerkit test plugin: another `bag-of-ids` tower, which loses the name clash and is broken."""

import towerkit


@towerkit.hookimpl
def register_towers(register):
    register("bag-of-ids", "towerkit_test_clash_b.tower:BagOfIdsTower",
             description="A tower with a shape mistake (the loser of the name clash).")
