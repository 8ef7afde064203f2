"""Run dual-runtime test modules under the MicroPython unix port.

    micropython host_tests/mp_run.py test_link [test_image ...]

Puts the shim (host_tests/mp), lib/, boards/unix and host_tests/dual on sys.path, runs
each module's TestCase methods, prints ``ok``/``FAIL`` per test and a closing
``N passed, N failed`` line; exits 1 on any failure or import error.
"""

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_root = _here + "/.."
for p in ("/boards/unix", "/lib", "/tools/mp", "/host_tests/dual", "/host_tests/mp"):
    sys.path.insert(0, _root + p)

import unittest  # noqa: E402  (the shim)

total_p = total_f = 0
for name in sys.argv[1:]:
    try:
        mod = __import__(name)
    except Exception as e:
        print("FAIL import", name)
        sys.print_exception(e)
        total_f += 1
        continue
    p, f = unittest.run_module(mod)
    total_p += p
    total_f += f
print("%d passed, %d failed" % (total_p, total_f))
sys.exit(1 if total_f or not total_p else 0)
