"""pytest set-up: make lib/, boards/unix, tools/ and host_tests/dual importable."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in ("host_tests/dual", "host_tests", "tools", "boards/unix", "lib"):
    sys.path.insert(0, os.path.join(ROOT, p))
