import sys

import towerkit


@towerkit.hookimpl
def register_towers(register):
    register("hostile-id", "towerkit.towers.user:user_tower")
    sys.exit(3)
