import towerkit


@towerkit.hookimpl
def register_towers(register):
    register("half-registered", "towerkit.towers.user:user_tower")
    raise ValueError("hook failed after registering one tower")
