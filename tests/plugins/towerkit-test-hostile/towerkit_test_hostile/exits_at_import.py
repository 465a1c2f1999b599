import sys

sys.exit(0)  # a plugin must never end the program; towerkit skips it
