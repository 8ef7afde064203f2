"""The seeded PRNG of the dual-runtime tests: same sequence on CPython and MicroPython
(MicroPython's ``random`` has no ``Random`` class). One copy, in tools/espcommon.py
(xorshift32), the one the fault campaign uses too."""

import sys

_d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _d + "/../../tools" not in sys.path:
    sys.path.append(_d + "/../../tools")

from espcommon import PRNG  # noqa: E402, F401
