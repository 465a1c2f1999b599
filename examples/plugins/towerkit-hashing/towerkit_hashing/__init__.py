"""towerkit-hashing: registers the `hashing` tower."""

import towerkit


@towerkit.hookimpl
def register_towers(register):
    register(
        "hashing",
        "towerkit_hashing.tower:HashingTower",
        description="Any string id hashed into num_bins embedding rows (no vocabulary).",
    )
