"""The install commands of docs/real-board.md, run with the real ``mpremote`` CLI against
a stand-in board: the MicroPython unix port running host_tests/rawrepl_device.py (the
raw REPL mpremote speaks) on a pty, with its filesystem in a temporary directory.

This checks what a desk check can: the exact command lines, where every file lands, that
the installed package and the ESP32 profile import from there (with the test doubles for
``esp32``/``machine``), and the ``cp -r`` pitfall the document warns about. It cannot
check a real ESP32's flash, UART or bootloader."""

import os
import shutil
import subprocess
import sys
import time
import tty

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
MPREMOTE = os.path.join(BIN, "mpremote")
MICROPYTHON = os.path.join(BIN, "micropython")
DEVICE = os.path.join(ROOT, "host_tests", "rawrepl_device.py")


class Device:
    """The stand-in board: a MicroPython process on the master side of a pty; mpremote
    opens the slave (``self.port``). ``fs``: the board's filesystem root (a host
    directory)."""

    def __init__(self, fs, cwd):
        self.fs = str(fs)
        self.cwd = str(cwd)
        master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # held open so the device never sees a hang-up between runs
        self.proc = subprocess.Popen(
            [MICROPYTHON, DEVICE, self.fs],
            stdin=master,
            stdout=master,
            stderr=subprocess.PIPE,
        )
        os.close(master)
        time.sleep(0.2)
        assert self.proc.poll() is None, self.proc.stderr.read().decode()

    def mpremote(self, *args, check=True):
        cmd = [MPREMOTE, "connect", self.port] + list(args)
        p = subprocess.run(cmd, cwd=self.cwd, capture_output=True, text=True, timeout=300)
        if check:
            assert p.returncode == 0, "%s\n%s%s" % (" ".join(args), p.stdout, p.stderr)
        return p

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
        os.close(self._slave)

    def tree(self):
        out = []
        for dirpath, _, names in os.walk(self.fs):
            for n in names:
                out.append(os.path.relpath(os.path.join(dirpath, n), self.fs))
        return sorted(out)


def _snapshot(dest):
    """Copy what the commands read (same layout as the repository) so that edits made
    to the working tree while the test runs cannot race the comparison."""
    os.makedirs(os.path.join(dest, "lib"))
    shutil.copytree(
        os.path.join(ROOT, "lib", "rmota"),
        os.path.join(dest, "lib", "rmota"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(os.path.join(ROOT, "boards", "esp32"), os.path.join(dest, "boards", "esp32"))
    os.makedirs(os.path.join(dest, "firmware"))
    shutil.copy(os.path.join(ROOT, "firmware", "main.py"), os.path.join(dest, "firmware"))
    shutil.copy(os.path.join(ROOT, "package.json"), dest)
    os.makedirs(os.path.join(dest, "host_tests"))
    shutil.copytree(
        os.path.join(ROOT, "host_tests", "dual"), os.path.join(dest, "host_tests", "dual")
    )


@pytest.fixture
def device(tmp_path):
    fs = tmp_path / "flash"
    fs.mkdir()
    repo = tmp_path / "repo"
    _snapshot(str(repo))
    d = Device(fs, repo)
    yield d
    d.close()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _lib_modules(repo):
    return sorted(f for f in os.listdir(os.path.join(repo, "lib", "rmota")) if f.endswith(".py"))


def _copy_test_doubles(device):
    # The esp32/machine test doubles, copied to the stand-in board for a check only.
    for f in ("fake_esp32.py", "fakeuart.py", "ramnor.py"):
        device.mpremote("cp", "host_tests/dual/" + f, ":" + f)


def test_documented_install(device):
    # docs/real-board.md, "Install": exactly these three commands, from the repo root.
    device.mpremote("mip", "install", "./package.json")
    device.mpremote("cp", "boards/esp32/board.py", ":board.py")
    device.mpremote("cp", "firmware/main.py", ":main.py")

    repo = device.cwd
    want = ["board.py", "main.py"] + ["lib/rmota/" + f for f in _lib_modules(repo)]
    assert device.tree() == sorted(want)
    for f in _lib_modules(repo):
        assert _read(os.path.join(device.fs, "lib", "rmota", f)) == _read(
            os.path.join(repo, "lib", "rmota", f)
        )
    assert _read(os.path.join(device.fs, "board.py")) == _read(
        os.path.join(repo, "boards", "esp32", "board.py")
    )

    # The check the document gives: the package imports from /lib on the board.
    p = device.mpremote("exec", "import rmota; print(rmota.__version__)")
    assert p.stdout.strip().endswith("0.1.0"), p.stdout

    # main.py's imports resolve on the board: the profile (here over the test doubles,
    # copied to the board for this check only) and the agent.
    _copy_test_doubles(device)
    code = (
        "import fake_esp32\n"
        "fake_esp32.install(fake_esp32.Chip(slot_blocks=4))\n"
        "import board\n"
        "from rmota.agent import HostOTA\n"
        "from rmota.at import ATLink\n"
        "b = board.open()\n"
        "HostOTA(ATLink(b.uart), b)\n"
        "print(b.board_id, b.boot_state(), b.inactive_slot().label)\n"
    )
    p = device.mpremote("exec", code)
    assert "b'esp32s3' {" in p.stdout and "ota_1" in p.stdout, p.stdout + p.stderr
    assert os.path.isdir(os.path.join(device.fs, "rmota"))  # the profile's DATA_DIR

    # Installing again (an update of the package) overwrites in place.
    device.mpremote("mip", "install", "./package.json")


def test_compiled_install(device):
    # docs/real-board.md, "Install the compiled package": `make mpy` (tools/mkmpy.py),
    # then mip from build/mpy. Every module lands as .mpy in /lib/rmota (no source), and
    # the package, the profile and the agent import and build from it on the board.
    repo = device.cwd
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "mkmpy.py"),
            os.path.join(repo, "build", "mpy"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "11 modules compiled" in p.stdout, p.stdout
    device.mpremote("mip", "install", "./build/mpy/package.json")
    device.mpremote("cp", "boards/esp32/board.py", ":board.py")
    want = ["board.py"] + ["lib/rmota/" + f[:-3] + ".mpy" for f in _lib_modules(repo)]
    assert device.tree() == sorted(want)
    _copy_test_doubles(device)
    code = (
        "import fake_esp32\n"
        "fake_esp32.install(fake_esp32.Chip(slot_blocks=4))\n"
        "import board, rmota\n"
        "from rmota.agent import HostOTA\n"
        "from rmota.at import ATLink\n"
        "b = board.open()\n"
        "HostOTA(ATLink(b.uart), b)\n"
        "print(rmota.__file__, rmota.__version__, b.inactive_slot().label)\n"
    )
    p = device.mpremote("exec", code)
    assert "__init__.mpy 0.1.0 ota_1" in p.stdout, p.stdout + p.stderr


def test_cp_r_pitfall_without_lib(device):
    """docs/real-board.md warns: ``cp -r lib/rmota :lib/`` on a board without /lib does
    not make /lib/rmota. mpremote 1.29 copies the *contents* of the directory to the
    missing target: a flat directory fails with "cp: -r not specified; omitting
    directory", one with a subdirectory (a __pycache__) lands in /lib itself. Either way
    ``import rmota`` fails."""
    p = device.mpremote("cp", "-r", "lib/rmota", ":lib/", check=False)
    tree = device.tree()
    assert "lib/rmota/agent.py" not in tree
    if p.returncode:
        assert "-r not specified" in p.stderr, p.stderr
    else:
        assert "lib/agent.py" in tree
    p = device.mpremote("exec", "import rmota", check=False)
    assert p.returncode != 0 and "ImportError" in (p.stdout + p.stderr)


def test_cp_r_after_mkdir(device):
    """The documented manual alternative: create /lib first, then ``cp -r``."""
    device.mpremote("mkdir", ":lib")
    device.mpremote("cp", "-r", "lib/rmota", ":lib/")
    tree = device.tree()
    for f in _lib_modules(device.cwd):
        assert "lib/rmota/" + f in tree
    p = device.mpremote("exec", "import rmota; print(rmota.__version__)")
    assert p.stdout.strip().endswith("0.1.0"), p.stdout
    p = device.mpremote("mkdir", ":lib", check=False)  # the document: skip it then
    assert p.returncode != 0 and "File exists" in p.stderr, p.stderr


def test_documented_journal_commands(device):
    # docs/real-board.md, "When an update fails on the board": read the journal and the
    # profile's record, then forget the job, with mpremote's cat and rm.
    os.makedirs(os.path.join(device.fs, "rmota"))
    for name, data in (
        ("job.json", b'{"stage": "download", "job": "J7"}'),
        ("blocks.crc", b"\x01\x02\x03\x04"),
        ("boot.json", b'{"seq": 3}'),
    ):
        with open(os.path.join(device.fs, "rmota", name), "wb") as f:
            f.write(data)
    p = device.mpremote("cat", ":/rmota/job.json")
    assert '"job": "J7"' in p.stdout, p.stdout
    p = device.mpremote("cat", ":/rmota/boot.json")
    assert '"seq": 3' in p.stdout, p.stdout
    device.mpremote("rm", ":/rmota/job.json", ":/rmota/blocks.crc")
    assert device.tree() == ["rmota/boot.json"]


def test_mkmpy_never_empties_a_source_directory(tmp_path):
    # tools/mkmpy.py empties DEST/rmota before compiling: given `lib` it deleted
    # lib/rmota/*.py and compiled nothing, with exit 0; `--help` made a directory.
    src = tmp_path / "rmota"
    src.mkdir()
    (src / "agent.py").write_text("x = 1\n")
    tool = [sys.executable, os.path.join(ROOT, "tools", "mkmpy.py")]
    p = subprocess.run(tool + [str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "not a build directory" in p.stdout, p.stdout
    assert (src / "agent.py").read_text() == "x = 1\n"
    p = subprocess.run(tool + ["--help"], capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0 and "make mpy" in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["rmota"]
