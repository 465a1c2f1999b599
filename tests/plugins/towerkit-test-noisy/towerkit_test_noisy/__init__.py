"""A towerkit test plugin that prints at import and in its hook (stdout must stay clean for --json)."""

import towerkit

print("noisy plugin imported")


@towerkit.hookimpl
def register_towers(register):
    print("noisy hook ran")
    register("noisy-id", "towerkit_test_noisy.tower:noisy_tower", description="Prints when its module loads.")
