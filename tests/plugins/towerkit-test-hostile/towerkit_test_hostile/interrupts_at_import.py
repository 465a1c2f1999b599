raise KeyboardInterrupt  # not the user's Ctrl-C: towerkit skips the plugin
