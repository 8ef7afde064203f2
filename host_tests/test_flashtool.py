"""``boards/unix/flashtool.py``, the desktop board's flash file tool the README's by-hand
run and "When an update fails" use: ``provision``, ``status`` (with the agent's journal)
and ``forget``, run as a user runs them, under CPython and the MicroPython unix port."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "boards", "unix", "flashtool.py")
RUNTIMES = {
    "cpython": [sys.executable],
    "micropython": [
        os.path.join(os.path.dirname(sys.executable), "micropython"),
        "-X",
        "heapsize=4m",
    ],
}
sys.path[:0] = [os.path.join(ROOT, "lib"), os.path.join(ROOT, "boards", "unix")]


def _tool(rt, *args):
    p = subprocess.run(
        RUNTIMES[rt] + [TOOL] + list(args), capture_output=True, text=True, timeout=120
    )
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("rt", sorted(RUNTIMES))
def test_status_shows_the_journal_and_forget_clears_it(tmp_path, rt):
    import board as unix_board

    flash = str(tmp_path / "flash.bin")
    fac = tmp_path / "factory.bin"
    fac.write_bytes(bytes(range(256)) * 40)
    code, out = _tool(rt, "provision", flash, str(fac), "1")
    assert code == 0, out
    assert "slot 0, 10240 bytes, version 1" in out
    code, out = _tool(rt, "status", flash)
    assert code == 0, out
    assert "active slot 0, state confirmed" in out
    assert "journal: None, 0 block CRCs" in out

    # The agent's record of a download two blocks in (as a power cut leaves it).
    b = unix_board.Board(flash, boot=False)
    b.journal.save({"stage": "download", "job": "J7", "size": 20064})
    b.journal.crc_append(0x1234ABCD)
    b.journal.crc_append(0x0BADF00D)
    b.close()
    code, out = _tool(rt, "status", flash)
    assert code == 0, out
    assert "'job': 'J7'" in out and "2 block CRCs" in out, out

    code, out = _tool(rt, "forget", flash)
    assert code == 0, out
    assert "journal was: {" in out and "'J7'" in out
    code, out = _tool(rt, "status", flash)
    assert "journal: None, 0 block CRCs" in out, out
    assert "slot 0 @ sector 16 (2097152 bytes): length 10240, version 1" in out  # (kept)


def test_usage(tmp_path):
    code, out = _tool("cpython", "forget")
    assert code == 2 and "forget FLASH" in out
    code, out = _tool("cpython", "forget", "--help")  # (was: no flash file '--help')
    assert code == 0 and "forget FLASH" in out
    code, out = _tool("cpython", "status", "--bogus", str(tmp_path / "f.bin"))
    assert code == 2 and "status FLASH" in out


@pytest.mark.parametrize("rt", sorted(RUNTIMES))
def test_bad_arguments_are_one_line_errors_and_touch_nothing(tmp_path, rt):
    # A bad VERSION used to recreate the flash file before failing (CPython: a
    # struct.error traceback and a bricked file; MicroPython: -1 stored as 4294967295,
    # every later image a downgrade). Now it is refused before anything is opened.
    flash = tmp_path / "flash.bin"
    fac = tmp_path / "factory.bin"
    fac.write_bytes(b"\x5a" * 5000)
    assert _tool(rt, "provision", str(flash), str(fac), "3")[0] == 0
    before = flash.read_bytes()
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "rmot.bin").write_bytes(b"RMOT")
    (tmp_path / "small.bin").write_bytes(b"\xff" * 5000)
    for args, code, text in (
        (("provision", str(flash), str(fac), "-1"), 1, "VERSION must be a whole number"),
        (("provision", str(flash), str(fac), "4294967296"), 1, "VERSION must be"),
        (("provision", str(flash), str(fac), "1.5"), 1, "VERSION must be"),
        (("provision", str(flash), str(fac), " 2"), 1, "VERSION must be"),
        (("provision", str(flash), str(tmp_path / "none.bin"), "1"), 1, "flashtool: error:"),
        (("provision", str(flash), str(tmp_path), "1"), 1, "flashtool: error:"),
        (("provision", str(flash), str(tmp_path / "empty.bin"), "1"), 1, "factory image must"),
        (("provision", str(flash), str(tmp_path / "rmot.bin")), 1, "shorter than its header"),
        (("status", str(tmp_path / "none.bin")), 1, "flashtool: error:"),
        (("boot", str(tmp_path / "small.bin")), 1, "has 5000 bytes"),
        (("forget", str(tmp_path / "small.bin")), 1, "has 5000 bytes"),
        (("provision", str(flash), str(fac), "1", "more"), 2, "provision FLASH IMAGE"),
        ((), 2, "provision FLASH IMAGE"),
    ):
        got, out = _tool(rt, *args)
        assert (got, text in out) == (code, True), (args, out)
        assert "Traceback" not in out, (args, out)
    assert flash.read_bytes() == before
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(len(before)))
    for cmd in ("status", "boot"):
        got, out = _tool(rt, cmd, str(garbage))
        assert (got, out.strip()) == (3, "bricked: no valid boot record"), out
