"""A towerkit test plugin that prints at import and in its hook (stdout must stay clean for --json),
and looks a registry up from its hook."""

import towerkit

print("noisy plugin imported")


@towerkit.hookimpl
def register_towers(register):
    # Looking a registry up while plugins load sees the components loaded so far.
    print(f"noisy hook ran after {len(towerkit.list_towers())} towers")
    register("noisy-id", "towerkit_test_noisy.tower:noisy_tower", description="Prints when its module loads.")
