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
