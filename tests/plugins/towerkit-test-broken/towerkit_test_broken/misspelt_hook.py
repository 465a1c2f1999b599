import towerkit


@towerkit.hookimpl
def register_tower(register):  # "register_towers" misspelt
    register("never-registered", "towerkit.towers.user:user_tower")
