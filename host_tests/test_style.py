"""STYLE.md: `ruff format`, line length 99 (settings in pyproject.toml), and no pyflakes
errors (undefined names, unused imports) anywhere in the code."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUFF = os.path.join(os.path.dirname(sys.executable), "ruff")
PATHS = ["lib", "boards", "firmware", "tools", "host_tests"]


def _ruff(*args):
    return subprocess.run([RUFF, *args, *PATHS], cwd=ROOT, capture_output=True, text=True)


def test_ruff_format():
    r = _ruff("format", "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_check():
    r = _ruff("check")
    assert r.returncode == 0, r.stdout + r.stderr
