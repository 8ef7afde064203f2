"""The unix board's faithful mode (issue 3, "UART overflow"): a UART receive buffer that
LOSES bytes when the host is slow, NOR flash operations that stall the host, and the
agent's flash modes that keep an update safe anyway.

- UnixUART (faithful) over a real pty, in this process: the ring keeps the first
  ``rxbuf`` bytes, the rest is lost and counted; flow control loses nothing; with
  interrupts off during a flash stall only the FIFO catches bytes.
- NORFlash: erase and program stall the host through the hook, per sector and per page.
- End to end under the MicroPython unix port, the emulator pacing at the baud rate: a
  host that erases and programs while a 921600-baud download streams loses bytes, and
  the loss is caught (framing) - never committed; the board's default (safe) flash mode
  completes the same update, as do hardware flow control and an rp2-like host whose
  flash operations run with interrupts off.
No timing is asserted (timings are ``make bench``'s)."""

import fcntl
import hashlib
import os
import select
import sys
import termios
import threading
import time
import tty

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "boards", "unix"))

import board as unix_board  # noqa: E402
from nor import NORFlash  # noqa: E402
from scenario import run_update  # noqa: E402
from uart import UnixUART  # noqa: E402


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def _settle(path, n_min):
    # Let the kernel move what the master wrote to the slave's input queue (FIONREAD).
    deadline = time.monotonic() + 2
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        while time.monotonic() < deadline:
            select.select([fd], [], [], 0.05)
            buf = bytearray(4)
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            if int.from_bytes(buf, "little") >= n_min:
                return
            time.sleep(0.01)
    finally:
        os.close(fd)


def _write_all(fd, data):
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv) :]


def _data(n):
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


def _read_all(u, size=1024):
    out = bytearray()
    buf = bytearray(size)
    while True:
        n = u.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]


def test_full_ring_loses_the_later_bytes_and_counts_them(pty_pair):
    master, path = pty_pair
    u = UnixUART(path, 115200, rxbuf=4096, faithful=True)
    try:
        data = _data(10000)
        _write_all(master, data)
        _settle(path, len(data))
        got = _read_all(u)
        assert got == data[:4096]  # what fitted, in order; the rest never arrives
        assert u.overruns == len(data) - 4096
        assert u.peak_held == 4096
        # Drained: the next bytes are taken again.
        _write_all(master, b"after")
        _settle(path, 5)
        assert _read_all(u) == b"after"
    finally:
        u.close()


def test_reading_in_time_loses_nothing(pty_pair):
    master, path = pty_pair
    u = UnixUART(path, 115200, rxbuf=256, faithful=True)
    try:
        data = _data(3000)
        got = bytearray()
        for i in range(0, len(data), 200):  # never more than the ring between two reads
            _write_all(master, data[i : i + 200])
            _settle(path, min(200, len(data) - i))
            got += _read_all(u, 256)
        assert bytes(got) == data and u.overruns == 0
    finally:
        u.close()


def test_flow_control_holds_bytes_back_instead(pty_pair):
    master, path = pty_pair
    u = UnixUART(path, 115200, rxbuf=1024, faithful=True, flow=True)
    try:
        data = _data(10000)
        _write_all(master, data)
        _settle(path, len(data))
        assert _read_all(u) == data and u.overruns == 0
    finally:
        u.close()


def test_interrupts_off_during_a_flash_stall_leave_only_the_fifo(pty_pair):
    master, path = pty_pair
    u = UnixUART(path, 115200, rxbuf=4096, faithful=True, irq_off_fifo=32)
    try:
        _write_all(master, b"before")  # arrived before the stall: the ring has room
        _settle(path, 6)
        later = _data(500)
        t = threading.Timer(0.02, _write_all, (master, later))
        t.start()
        u.flash_stall(400000)  # 400 ms with interrupts off; the bytes come meanwhile
        t.join()
        assert _read_all(u) == b"before" + later[:32]
        assert u.overruns == len(later) - 32
    finally:
        u.close()


def test_nor_operations_stall_per_sector_and_per_page(tmp_path):
    nor = NORFlash(str(tmp_path / "f.bin"), 4 * 4096, create=True, erase_ms=45, page_ms=0.7)
    stalls = []
    nor.stall_hook = stalls.append
    try:
        nor.erase(1)
        nor.program(4096, b"\x00" * 4096)  # 16 pages
        nor.program(250, b"\x00" * 10)  # crosses a page boundary: 2 pages
        assert stalls == [45000, 16 * 700, 2 * 700]
        assert nor.stalled_us == sum(stalls)
    finally:
        nor.close()


def test_safe_flash_mode_follows_the_numbers():
    d = dict(unix_board.DEFAULT_SETTINGS, faithful=True)

    def plan(**kw):
        return unix_board.plan_flash(dict(d, **kw))

    # The ring holds a sector's erase and program with margin. The header always comes
    # alone first (a record lost before it is checked must not cost the response).
    p = plan(baud=115200)
    assert p == {
        "flash_mode": "stream",
        "erase_unit": 4096,
        "header_first": True,
        "uart_rxbuf": 8192,
    }
    # 921600: sector by sector the flash is slower than the wire (56 ms per 4 KB
    # against 44 ms); 32 KB block erases (120 ms per 8 sectors) outpace it, and a 16 KB
    # ring holds one with margin.
    p = plan(baud=921600)
    assert p == {
        "flash_mode": "stream",
        "erase_unit": 32768,
        "header_first": True,
        "uart_rxbuf": 24576,
    }
    assert plan(baud=921600, uart_rxbuf=8192)["flash_mode"] == "window"
    assert (
        plan(baud=921600, uart_rxbuf=8192, flash_block32_ms=400, flash_block64_ms=400)[
            "flash_mode"
        ]
        == "window"
    )
    assert plan(baud=921600, uart_rxbuf=32768)["erase_unit"] == 32768  # the shorter stall
    assert plan(baud=921600, uart_rxbuf=32768, flash_block32_ms=200)["erase_unit"] == 65536
    p = plan(baud=921600, flow_control=True)
    assert (p["flash_mode"], p["erase_unit"]) == ("stream", 65536)
    # rp2: any baud overflows the 32-byte FIFO during a flash operation
    assert plan(baud=115200, uart_irq_off_fifo=32)["flash_mode"] == "window"
    assert unix_board.safe_flash_mode(dict(unix_board.DEFAULT_SETTINGS)) == "stream"


# --- end to end under MicroPython ----------------------------------------------------------
def _payload(n, seed=b"faithful"):
    out = bytearray()
    k = 0
    while len(out) < n:
        out += hashlib.sha256(seed + b"%d" % k).digest()
        k += 1
    return bytes(out[:n])


def _update(tmp_path, baud, n=64 * 1024, **settings):
    p = _payload(n)
    st = {"faithful": True, "baud": baud, "fetch_wait_ms": 300, "backoff_ms": 100}
    st.update(settings)
    r = run_update(
        p,
        runtime="micropython",
        workdir=str(tmp_path),
        emu_options={"baud": baud},
        settings=st,
        timeout_s=120,
    )
    return p, r


def test_a_host_too_slow_for_the_wire_loses_bytes_and_never_commits_them(tmp_path):
    # Erase-as-you-go sector by sector at 921600 baud: 4 KB arrive in 44 ms, erasing and
    # programming them takes 56 ms, the 4 KB receive buffer overflows. Framing catches
    # every loss.
    p, r = _update(
        tmp_path, 921600, flash_mode="stream", erase_unit=4096, uart_rxbuf=4096, max_attempts=2
    )
    out = "\n".join(r.output)
    assert "framing" in out, out
    assert r.final_status == 3 and not r.job_finished, out
    assert r.exit_codes == [0]  # no commit, no reboot
    assert r.slot == 0 and r.record.state == 1  # the factory image still boots


def test_the_default_mode_is_safe_at_921600(tmp_path):
    # The same conditions with the board's defaults ("auto": stream, 32 KB block erases,
    # a 24 KB ring, the header fetched alone first so the journal's record is written
    # while the ESP is idle): nothing lost, one request for the header, one for the rest.
    p, r = _update(tmp_path, 921600)
    out = "\n".join(r.output)
    assert r.final_status == 2 and r.exit_codes == [75, 0], out
    assert r.slot_sha256 == hashlib.sha256(p).digest()
    assert "framing" not in out and "W:" not in out, out
    sent = [x for _, _, x in r.emu.trace]
    assert sum(1 for x in sent if x.startswith(b"AT+HTTPCGET=")) == 2, sent
    assert sum(1 for x in sent if b"Range: bytes=0-63" in x) == 1, sent


def test_flow_control_is_safe_at_921600(tmp_path):
    p, r = _update(tmp_path, 921600, flow_control=True)
    out = "\n".join(r.output)
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), out
    assert "framing" not in out, out
    assert b"AT+UART_CUR=921600,8,1,0,3\r\n" in bytes(r.emu.rx)  # the ESP honours CTS


def test_rp2_like_host_with_interrupts_off_updates_safely(tmp_path):
    # Only a 32-byte FIFO during flash operations: the default picks windows.
    p, r = _update(tmp_path, 115200, n=24 * 1024, uart_irq_off_fifo=32, window_size=8192)
    out = "\n".join(r.output)
    assert r.final_status == 2 and r.slot_sha256 == hashlib.sha256(p).digest(), out
    assert "framing" not in out, out
