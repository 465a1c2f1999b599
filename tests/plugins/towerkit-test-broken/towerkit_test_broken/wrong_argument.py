import towerkit


@towerkit.hookimpl
def register_towers(reg):  # the argument must be named "register"; pluggy refuses this hook
    reg("wrong-argument", "towerkit.towers.user:user_tower")
