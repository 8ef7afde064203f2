"""UnixUART (boards/unix/uart.py) over a real pty, under the MicroPython unix port and
CPython. This side (CPython) holds the pty master; a child process opens the slave with
UnixUART and echoes everything back until the master closes.

Checks: readinto returns None at once when nothing is there (raw mode, VMIN=0 VTIME=0:
no blocking), any() flips to 1 when a byte arrives, bytes pass unchanged in both
directions (binary, CR/LF, NUL, 0xFF - no line discipline), nbytes caps a read, large
writes complete, and readinto returns 0 once the peer has closed."""

import os
import select
import subprocess
import sys
import time
import tty

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD_DIR = os.path.join(ROOT, "boards", "unix")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RUNTIMES = {"cpython": [sys.executable, "-u"], "micropython": [MICROPYTHON]}

CHILD = """
import sys, time
sys.path.insert(0, %(board)r)
from uart import UnixUART
try:
    from time import sleep_ms
except ImportError:
    def sleep_ms(ms):
        time.sleep(ms / 1000)
u = UnixUART(sys.argv[1], 115200, rxbuf=256)
buf = bytearray(512)
t0 = time.time()
r0 = u.readinto(buf)
print("ready", r0, u.any(), time.time() - t0 < 1)
while not u.any():
    sleep_ms(1)
print("any", u.any())
first = u.read(1)
u.write(first)
total = len(first)
biggest = 0
while True:
    n = u.readinto(buf, 100)
    if n is None:
        sleep_ms(1)
        continue
    if n == 0:
        break
    biggest = max(biggest, n)
    u.write(memoryview(buf)[:n])
    total += n
print("closed", u.readinto(buf), u.read(), total, biggest <= 100)
u.close()
"""


def _readline(stream, timeout_s=10):
    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, "child said nothing"
    return stream.readline().strip()


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_echo_over_pty(tmp_path, runtime):
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    script = tmp_path / "echo.py"
    script.write_text(CHILD % {"board": BOARD_DIR})
    proc = subprocess.Popen(
        RUNTIMES[runtime] + [str(script), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)  # only the child holds the slave now: closing master hangs it up
    try:
        line = _readline(proc.stdout)
        assert line == "ready None 0 True", line + proc.stderr.read()
        payload = b"\x00\xff\r\n+HTTPCGET:5,OK\r\n\x1b\x03\x04" + os.urandom(64 * 1024)
        os.write(master, payload[:1])
        assert _readline(proc.stdout) == "any 1"
        got = bytearray()
        sent = 1
        deadline = time.time() + 30
        while len(got) < len(payload) and time.time() < deadline:
            want_w = [master] if sent < len(payload) else []
            r, w, _ = select.select([master], want_w, [], 1)
            if w:
                sent += os.write(master, payload[sent : sent + 1000])
            if r:
                got += os.read(master, 65536)
        assert bytes(got) == payload
    finally:
        os.close(master)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, out + err
    assert out.strip() == "closed 0 b'' %d True" % len(payload), out + err


def test_unsupported_baud_is_a_config_error():
    sys.path.insert(0, BOARD_DIR)
    from uart import UnixUART

    master, slave = os.openpty()
    try:
        with pytest.raises(ValueError):
            UnixUART(os.ttyname(slave), 123456)
    finally:
        os.close(slave)
        os.close(master)
