"""A towerkit plugin: a tower that hashes ids into a fixed number of bins."""

import towerkit


@towerkit.hookimpl
def register_towers(register):
    register(
        "hashed-id",
        "towerkit_test_hashing.tower:HashedIdTower",
        aliases=("hashed",),
        description="Any string id hashed into num_bins embedding rows.",
    )
