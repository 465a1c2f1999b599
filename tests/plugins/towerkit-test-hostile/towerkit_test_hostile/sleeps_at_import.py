"""Sleeps at import when TOWERKIT_TEST_SLOW_IMPORT is set, so a test can press Ctrl-C meanwhile."""

import os
import sys
import time

if os.environ.get("TOWERKIT_TEST_SLOW_IMPORT"):
    print("sleeping at import", file=sys.stderr, flush=True)
    time.sleep(60)
