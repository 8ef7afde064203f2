"""Tests of the ESP-AT emulator (tools/espat_emu.py) and its HTTP server (tools/httpfiles.py).

CPython only. The emulator is driven as a host would drive a real ESP: plain bytes through
a real pty (raw mode) or a socketpair, and the exact wire bytes are asserted against the
facts of DESIGN.md section 1.
"""

import os
import random
import select
import socket
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from espat_emu import (
    BUSY,
    ERROR,
    OK,
    PROMPT,
    READY,
    SET_OK,
    ESPEmulator,
    Faults,
    PtyPort,
    SocketPort,
    escape_at_string,
    padded_url,
    parse_params,
)
from httpfiles import HTTPFiles

S3_HOST = "esp-rainmaker-ota-000000000000-prod.s3.us-east-1.amazonaws.com"


class Host:
    """The host MCU's side of the wire: plain reads and writes on a file descriptor."""

    def __init__(self, fd, sock=None):
        self.fd = fd
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    def open_pty(cls, path):
        return cls(os.open(path, os.O_RDWR | os.O_NOCTTY))

    def send(self, data):
        if self.sock is not None:
            self.sock.sendall(data)
        else:
            os.write(self.fd, data)

    def _fill(self, timeout_s):
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if r:
            data = self.sock.recv(65536) if self.sock is not None else os.read(self.fd, 65536)
            self.buf += data
            return True
        return False

    def _wait(self, cond, timeout_s):
        end = time.monotonic() + timeout_s
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("waited %.1f s; have %r" % (timeout_s, bytes(self.buf[-200:])))
            self._fill(left)

    def take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, token, timeout_s=3.0):
        self._wait(lambda: token in self.buf, timeout_s)
        return self.take(self.buf.index(token) + len(token))

    def read_exact(self, n, timeout_s=3.0):
        self._wait(lambda: len(self.buf) >= n, timeout_s)
        return self.take(n)

    def quiet(self, period_s=0.15):
        """Everything that arrives until nothing has come for ``period_s``."""
        while self._fill(period_s):
            pass
        return self.take(len(self.buf))

    def until_final(self, finals=(OK, ERROR, SET_OK), timeout_s=3.0):
        """Bytes up to and including the first of ``finals`` to complete."""

        def end():
            ends = [self.buf.find(t) + len(t) for t in finals if t in self.buf]
            return min(ends) if ends else None

        self._wait(lambda: end() is not None, timeout_s)
        return self.take(end())

    def cmd(self, line, timeout_s=3.0):
        """Send a command line, return the bytes up to and including its final result."""
        self.send(line + b"\r\n")
        return self.until_final(timeout_s=timeout_s)

    def prompt(self, line, timeout_s=3.0):
        """Send a command that answers with the ``>`` prompt (or ERROR)."""
        self.send(line + b"\r\n")
        return self.until_final((PROMPT, ERROR), timeout_s)

    def download(self, timeout_s=5.0):
        """Read one AT+HTTPCGET answer: (payload records, other lines, final result).

        Records are parsed by their length prefix only, as DESIGN.md section 1 demands."""
        records, others = [], []
        while True:
            self._wait(lambda: len(self.buf) >= 10 or b"\r\n" in self.buf, timeout_s)
            if self.buf.startswith(b"+HTTPCGET:"):
                hdr = self.read_until(b",", timeout_s)
                n = int(hdr[len(b"+HTTPCGET:") : -1])
                payload = self.read_exact(n, timeout_s)
                assert self.read_exact(2, timeout_s) == b"\r\n"
                records.append(payload)
                continue
            line = self.read_until(b"\r\n", timeout_s)
            if line == b"\r\n":
                continue
            if line in (b"OK\r\n", b"ERROR\r\n"):
                return records, others, line[:-2]
            others.append(line)

    def close(self):
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


@pytest.fixture
def rig():
    before = set(threading.enumerate())
    srv = HTTPFiles().start()
    port = PtyPort()
    host = Host.open_pty(port.slave_path)
    made = []

    def make(**kw):
        kw.setdefault("echo", False)
        kw.setdefault("http_base", srv.base_url)
        emu = ESPEmulator(port, **kw).start()
        made.append(emu)
        return emu

    yield types.SimpleNamespace(srv=srv, port=port, host=host, make=make)
    for emu in made:
        emu.stop()
    host.close()
    port.close()
    srv.stop()
    time.sleep(0.01)
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leaked == [], leaked


def blob_of(n, seed=1):
    """Random bytes sprinkled with the tokens a naive parser would trip on."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(n))
    for tok in (b"\r\nOK\r\n", b"\r\nERROR\r\n", b"+HTTPCGET:12,", b"\r\nready\r\n"):
        for _ in range(3):
            at = rnd.randrange(0, n - len(tok))
            data[at : at + len(tok)] = tok
    return bytes(data)


def set_url(host, url):
    assert host.prompt(b"AT+HTTPURLCFG=%d" % len(url)) == PROMPT
    host.send(url)
    assert host.read_until(SET_OK) == SET_OK


def set_header(host, header):
    assert host.prompt(b"AT+HTTPCHEAD=%d" % len(header)) == PROMPT
    host.send(header)
    assert host.read_until(OK) == OK


# --- basic commands --------------------------------------------------------------------
def test_at_echo_and_ate0(rig):
    rig.make(echo=True)
    h = rig.host
    h.send(b"AT\r\n")
    assert h.read_until(OK) == b"AT\r\n" + OK
    h.send(b"ATE0\r\n")
    assert h.read_until(OK) == b"ATE0\r\n" + OK
    h.send(b"AT\r\n")
    assert h.read_until(OK) == OK


def test_unknown_command_long_line_and_syslog_codes(rig):
    rig.make()
    h = rig.host
    assert h.cmd(b"AT+NOPE") == ERROR
    assert h.cmd(b"AT+SYSLOG?") == b"+SYSLOG:0\r\n" + OK
    assert h.cmd(b"AT+SYSLOG=1") == OK
    assert h.cmd(b"AT+NOPE") == b"ERR CODE:0x01090000\r\n" + ERROR
    # 256 bytes with the CRLF is the most a line may hold; one more is refused.
    line = b"AT+SYSLOG=" + b"0" * (256 - 2 - 11) + b"1"
    assert len(line) + 2 == 256
    assert h.cmd(line) == OK
    assert h.cmd(line + b"0") == b"ERR CODE:0x01070000\r\n" + ERROR
    assert h.cmd(b"AT") == OK
    assert h.cmd(b"AT+SYSLOG=2").endswith(ERROR)


def test_parse_params_escapes():
    assert parse_params(b'0,"a\\,b\\"c\\\\",2,"x"') == [0, b'a,b"c\\', 2, b"x"]
    assert parse_params(b'"",,512') == [b"", None, 512]
    assert escape_at_string('a,b"c\\') == b'a\\,b\\"c\\\\'
    with pytest.raises(ValueError):
        parse_params(b'"open')
    with pytest.raises(ValueError):
        parse_params(b"abc")


# --- AT+HTTPURLCFG ---------------------------------------------------------------------
def test_urlcfg_prompt_set_ok_and_query(rig):
    rig.make()
    h = rig.host
    url = b"http://example.com/fw.bin?X-Amz-Expires=86400"
    h.send(b"AT+HTTPURLCFG=%d\r\n" % len(url))
    assert h.read_exact(len(PROMPT)) == b"\r\nOK\r\n\r\n>"
    assert h.quiet(0.1) == b""  # nothing follows the '>'
    h.send(url)
    assert h.read_until(SET_OK) == b"\r\nSET OK\r\n"
    assert h.cmd(b"AT+HTTPURLCFG?") == b"+HTTPURLCFG:%d,%s\r\n" % (len(url), url) + OK
    assert h.cmd(b"AT+HTTPURLCFG=0") == OK
    assert h.cmd(b"AT+HTTPURLCFG?") == b"+HTTPURLCFG:0,\r\n" + OK
    assert h.cmd(b'AT+HTTPCGET=""') == ERROR  # no URL held


def test_urlcfg_bytes_beyond_len_go_to_the_parser(rig):
    rig.make()
    h = rig.host
    url = b"http://h/p?q=1234"
    assert h.prompt(b"AT+HTTPURLCFG=%d" % len(url)) == PROMPT
    h.send(url + b"\r\n")  # a stray CRLF after the URL
    assert h.read_until(SET_OK) == SET_OK
    assert h.read_until(ERROR) == ERROR  # the CRLF was an (empty) command line
    assert h.cmd(b"AT+HTTPURLCFG?") == b"+HTTPURLCFG:%d,%s\r\n" % (len(url), url) + OK


def test_urlcfg_waits_for_exactly_len_bytes(rig):
    rig.make()
    h = rig.host
    url = b"http://h/abcdefgh"
    assert h.prompt(b"AT+HTTPURLCFG=%d" % len(url)) == PROMPT
    h.send(url[:-1])
    assert h.quiet(0.3) == b""  # still waiting for the last byte
    h.send(b"AT\r\n")  # the host's next command completes the URL instead
    assert h.read_until(SET_OK) == SET_OK
    assert h.read_until(ERROR) == ERROR  # "T\r\n" is no command
    assert h.cmd(b"AT+HTTPURLCFG?") == b"+HTTPURLCFG:%d,%sA\r\n" % (len(url), url[:-1]) + OK


def test_urlcfg_nul_and_bounds(rig):
    rig.make()
    h = rig.host
    assert h.prompt(b"AT+HTTPURLCFG=8") == PROMPT
    h.send(b"http\x00//x")
    assert h.read_until(ERROR) == ERROR
    assert h.cmd(b"AT+HTTPURLCFG=7") == ERROR
    assert h.cmd(b"AT+HTTPURLCFG=8193") == ERROR
    assert h.prompt(b"AT+HTTPURLCFG=8192") == PROMPT
    h.send(b"x" * 8192)
    assert h.read_until(SET_OK) == SET_OK


def test_fault_lose_url_byte(rig):
    emu = rig.make(faults=Faults(lose_url_byte=3))
    h = rig.host
    url = b"http://h/abcdefgh"
    assert h.prompt(b"AT+HTTPURLCFG=%d" % len(url)) == PROMPT
    h.send(url)
    assert h.quiet(0.2) == b""
    h.send(b"Z")
    assert h.read_until(SET_OK) == SET_OK
    assert emu.url == url[:3] + url[4:] + b"Z"
    assert ("lose_url_byte", 3) in emu.faults.log


# --- AT+HTTPCGET -------------------------------------------------------------------------
def test_httpcget_records_reassemble_the_blob(rig):
    blob = blob_of(60000)
    path = "/users/x/firmwareimages/ab12/AT_OTA_TEST_2.bin"
    rig.srv.add(path, blob)
    emu = rig.make(seed=5)
    url = padded_url(S3_HOST, path, 1083).encode()
    assert len(url) == 1083
    set_url(rig.host, url)
    rig.host.send(b'AT+HTTPCGET="",2048,700,5000\r\n')
    records, others, final = rig.host.download()
    assert final == b"OK" and others == []
    assert b"".join(records) == blob
    sizes = [len(r) for r in records]
    assert max(sizes) <= 700 and len(set(sizes)) > 5
    req = rig.srv.requests[-1]
    assert req["path"] == path and req["query"] == url.decode().split("?", 1)[1]
    assert req["headers"]["Host"] == S3_HOST
    assert emu.http_requests == 1


def test_httpcget_default_rx_size_and_inline_url(rig):
    blob = blob_of(20000, seed=2)
    rig.srv.add("/fw.bin", blob)
    rig.make()
    rig.host.send(b'AT+HTTPCGET="http://anyhost/fw.bin?sig=1"\r\n')
    records, _, final = rig.host.download()
    assert final == b"OK" and b"".join(records) == blob
    assert max(len(r) for r in records) <= 2048


def test_httpcget_403_streams_the_body_then_err_code(rig):
    rig.srv.add("/fw.bin", b"x" * 100)
    rig.srv.fail_next(403)
    emu = rig.make(syslog=True)
    h = rig.host
    set_url(h, b"http://h/fw.bin?X-Amz-Expires=1")
    h.send(b'AT+HTTPCGET="",2048,40\r\n')
    records, others, final = h.download()
    body = b"".join(records)
    assert body.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    )
    assert len(records) > 1  # an error page arrives as ordinary records
    assert others == [b"ERR CODE:0x010a7193\r\n"] and final == b"ERROR"
    # Exact tail: the code line, then the final result.
    assert emu.tx.endswith(b"\r\nERR CODE:0x010a7193\r\n\r\nERROR\r\n")
    # Without SYSLOG the same failure says only ERROR.
    assert h.cmd(b"AT+SYSLOG=0") == OK
    rig.srv.fail_next(404)
    h.send(b'AT+HTTPCGET=""\r\n')
    records, others, final = h.download()
    assert b"NoSuchKey" in b"".join(records) and others == [] and final == b"ERROR"


def test_range_header_then_clear(rig):
    blob = blob_of(9000, seed=3)
    rig.srv.add("/fw.bin", blob)
    emu = rig.make()
    h = rig.host
    set_url(h, b"http://h/fw.bin?a=b")
    set_header(h, b"Range: bytes=8000-")
    assert h.cmd(b"AT+HTTPCHEAD?") == b'+HTTPCHEAD:0,"Range: bytes=8000-"\r\n' + OK
    h.send(b'AT+HTTPCGET=""\r\n')
    records, _, final = h.download()
    assert final == b"OK" and b"".join(records) == blob[8000:]  # 206 and 200 look alike
    assert rig.srv.requests[-1]["headers"]["Range"] == "bytes=8000-"
    assert rig.srv.requests[-1]["status"] == 206
    # The header stays for every later GET until AT+HTTPCHEAD=0.
    h.send(b'AT+HTTPCGET=""\r\n')
    assert b"".join(h.download()[0]) == blob[8000:]
    assert h.cmd(b"AT+HTTPCHEAD=0") == OK
    assert emu.headers == []
    h.send(b'AT+HTTPCGET=""\r\n')
    assert b"".join(h.download()[0]) == blob
    assert "Range" not in rig.srv.requests[-1]["headers"]


def test_range_beyond_end_is_416_and_ignored_range_gives_all(rig):
    blob = blob_of(3000, seed=4)
    rig.srv.add("/fw.bin", blob)
    rig.make(syslog=True)
    h = rig.host
    set_url(h, b"http://h/fw.bin")
    set_header(h, b"Range: bytes=3000-")
    h.send(b'AT+HTTPCGET=""\r\n')
    records, others, final = h.download()
    assert b"InvalidRange" in b"".join(records)
    assert others == [b"ERR CODE:0x010a71a0\r\n"] and final == b"ERROR"
    set_header(h, b"Range: bytes=2990-")
    rig.srv.ignore_range = True
    h.send(b'AT+HTTPCGET=""\r\n')
    records, _, final = h.download()
    assert final == b"OK" and b"".join(records) == blob  # only the count shows it


def test_httpchead_needs_a_colon(rig):
    rig.make()
    h = rig.host
    assert h.prompt(b"AT+HTTPCHEAD=5") == PROMPT
    h.send(b"Range")
    assert h.read_until(ERROR) == ERROR


def test_connection_failure(rig):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    rig.make(http_base=dead, syslog=True)
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/x"\r\n')
    records, others, final = h.download()
    assert records == [] and others == [b"ERR CODE:0x010a7000\r\n"] and final == b"ERROR"


def test_network_idle_timeout(rig):
    rig.srv.add("/fw.bin", b"y" * 5000)
    rig.srv.stall_after(1000)  # until the server stops
    rig.make()
    h = rig.host
    t0 = time.monotonic()
    h.send(b'AT+HTTPCGET="http://h/fw.bin",2048,2048,300\r\n')
    records, _, final = h.download()
    assert final == b"ERROR" and len(b"".join(records)) == 1000
    assert time.monotonic() - t0 > 0.25  # the delay happened (no upper bound: no timing)


def test_busy_while_httpcget_runs(rig):
    blob = blob_of(30000, seed=6)
    rig.srv.add("/fw.bin", blob)
    rig.srv.slow(100000)  # 0.3 s of transfer
    rig.make()
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    time.sleep(0.1)
    h.send(b"AT\r\n")
    records, others, final = h.download()
    assert others == [b"busy p...\r\n"]
    assert final == b"OK" and b"".join(records) == blob
    assert h.cmd(b"AT") == OK  # idle again


# --- RainMaker job model -------------------------------------------------------------------
def test_notification_and_result_semantics(rig):
    emu = rig.make()
    h = rig.host
    assert h.cmd(b'AT+RMOTARESULT=0,"J1",1,"x"') == ERROR  # no job pending
    url = padded_url(S3_HOST, "/fw.bin")
    line = emu.push_job(url, 1740880, None, "tP8HKQDLM7ToThwNScgrLR")
    expect = b"+RMFWNOTIFY:0,1740880,%s,null,tP8HKQDLM7ToThwNScgrLR\r\n" % url.encode()
    assert line == expect and h.read_until(b"\r\n") == expect and emu.pending
    assert h.cmd(b'AT+RMOTARESULT=0,"J1",6,"x"') == ERROR  # status out of range
    assert h.cmd(b'AT+RMOTARESULT=0,"J1",-1,"x"') == ERROR
    assert h.cmd(b'AT+RMOTARESULT=0,"J1",1') == ERROR  # parameter missing
    assert h.cmd(b'AT+RMOTARESULT=0,J1,1,"x"') == ERROR  # unquoted string
    # The job id is not checked against the notified one (DESIGN.md section 1).
    assert h.cmd(b'AT+RMOTARESULT=0,"other",1,"50\\% \\"a\\,b\\" \\\\"') == OK
    assert h.cmd(b'AT+RMOTARESULT=0,"tP8HKQDLM7ToThwNScgrLR",3,"timeout"') == OK
    assert emu.pending and emu.job is not None  # 1 and 3 leave the job open
    assert h.cmd(b'AT+RMOTARESULT=0,"tP8HKQDLM7ToThwNScgrLR",2,"OTA success"') == OK
    assert not emu.pending and emu.job is None and emu.job_status == 2
    assert h.cmd(b'AT+RMOTARESULT=0,"tP8HKQDLM7ToThwNScgrLR",2,"again"') == ERROR
    assert emu.results == [
        ("other", 1, '50% "a,b" \\'),
        ("tP8HKQDLM7ToThwNScgrLR", 3, "timeout"),
        ("tP8HKQDLM7ToThwNScgrLR", 2, "OTA success"),
    ]
    # After the job ended, a fetch finds nothing.
    assert h.cmd(b"AT+RMOTAFETCH") == OK
    assert h.quiet(0.1) == b""


def test_fetch_and_reboot_forget_the_pending_flag(rig):
    emu = rig.make(reconnect_delay_s=0.01)
    h = rig.host
    assert h.cmd(b"AT+RMOTAFETCH") == OK
    assert h.quiet(0.1) == b""  # no job
    emu.push_job("http://h/fw.bin", 76, "1.2.3", "JOB1", passive=False)
    assert h.quiet(0.1) == b""  # not passive: only on a fetch
    assert h.cmd(b"AT+RMOTAFETCH") == OK
    note = b"+RMFWNOTIFY:0,76,http://h/fw.bin,1.2.3,JOB1\r\n"
    assert h.read_until(b"\r\n") == note
    assert h.cmd(b"AT+RMOTAFETCH") == OK  # re-sent while pending
    assert h.read_until(b"\r\n") == note
    emu.reboot()
    assert h.read_until(b"+RMCONNECTED\r\n") == (
        READY + b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"
    )
    assert not emu.pending and emu.job is not None  # RAM flag gone, cloud job kept
    assert h.cmd(b"ATE0") == b"ATE0\r\n" + OK  # echo came back on with the reboot
    assert h.cmd(b'AT+RMOTARESULT=0,"JOB1",1,"resuming"') == ERROR
    assert h.cmd(b"AT+RMOTAFETCH") == OK
    assert h.read_until(b"\r\n") == note
    assert h.cmd(b'AT+RMOTARESULT=0,"JOB1",1,"resuming"') == OK


def test_fetch_notification_may_come_late(rig):
    emu = rig.make(fetch_notify_delay_s=0.15)
    emu.push_job("http://h/fw.bin", 76, "1.2.3", "JOB1", passive=False)
    h = rig.host
    t0 = time.monotonic()
    assert h.cmd(b"AT+RMOTAFETCH") == OK
    assert h.read_until(b"\r\n") == b"+RMFWNOTIFY:0,76,http://h/fw.bin,1.2.3,JOB1\r\n"
    assert time.monotonic() - t0 >= 0.14


def test_cloud_down_refuses_fetch_and_result(rig):
    emu = rig.make()
    h = rig.host
    emu.push_job("http://h/fw.bin", 76, "1.2.3", "JOB1")
    h.read_until(b"\r\n")
    emu.set_connected(cloud=False)
    assert h.read_until(b"\r\n") == b"+RMDISCONNECTED\r\n"
    assert h.cmd(b'AT+RMOTARESULT=0,"JOB1",2,"done"') == ERROR
    assert h.cmd(b"AT+RMOTAFETCH") == ERROR
    emu.set_connected(wifi=False)
    assert h.read_until(b"\r\n") == b"WIFI DISCONNECT\r\n"
    emu.set_connected(wifi=True, cloud=True)
    assert h.read_until(b"+RMCONNECTED\r\n") == (
        b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"
    )
    assert h.cmd(b'AT+RMOTARESULT=0,"JOB1",2,"done"') == OK
    assert emu.results == [("JOB1", 2, "done")]


def test_rst_forgets_ram_state(rig):
    emu = rig.make(syslog=True)
    h = rig.host
    set_url(h, b"http://h/fw.bin")
    set_header(h, b"Range: bytes=10-")
    emu.push_job("http://h/fw.bin", 76, None, "J")
    h.read_until(b"\r\n")
    h.send(b"AT+RST\r\n")
    assert h.read_until(b"+RMCONNECTED\r\n") == (
        OK + READY + b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"
    )
    assert emu.boots == 1 and not emu.pending and emu.headers == [] and emu.url is None
    h.send(b"AT+SYSLOG?\r\n")
    assert h.read_until(OK) == b"AT+SYSLOG?\r\n+SYSLOG:0\r\n" + OK  # echo on, SYSLOG off
    assert h.cmd(b"ATE0").endswith(OK)
    assert h.cmd(b"AT+HTTPURLCFG?") == b"+HTTPURLCFG:0,\r\n" + OK
    assert h.cmd(b'AT+HTTPCGET=""') == ERROR


def test_uart_cur_forgotten_on_reset(rig):
    emu = rig.make()
    h = rig.host
    assert h.cmd(b"AT+UART_CUR=115200,8,1,0,3") == OK
    assert h.cmd(b"AT+UART_CUR?") == b"+UART_CUR:115200,8,1,0,3\r\n" + OK
    emu.reboot()
    h.read_until(READY)
    assert emu.uart_cur is None


def test_rmota_suppression(rig):
    emu = rig.make()
    h = rig.host
    # s_rm_ota_status starts at "success": a first 2 is not printed.
    assert emu.push_wifi_ota([2, 1, 1, 3, 3, 2]) == [1, 3, 2]
    assert h.quiet(0.1) == b"+RMOTA:1\r\n+RMOTA:3\r\n+RMOTA:2\r\n"
    assert emu.push_wifi_ota([4, 4]) == [5, 5]  # delayed prints 5 and is not suppressed
    assert emu.push_wifi_ota([5]) == []
    emu.push_job("http://h/x", 1, None, "J")
    h.quiet(0.1)
    assert emu.push_wifi_ota([1, 3]) == []  # nothing while a host job is pending
    assert h.quiet(0.1) == b""
    assert emu.push_wifi_ota([9, 4], map_delayed=False) == []
    emu.pending = False
    assert emu.push_wifi_ota([9, 4], map_delayed=False) == [9, 4]


# --- faults --------------------------------------------------------------------------------
def test_fault_flip_body_keeps_framing(rig):
    blob = blob_of(5000, seed=7)
    rig.srv.add("/fw.bin", blob)
    emu = rig.make(faults=Faults(flip_body_at={1234}, flip_mask=0x01))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    records, _, final = h.download()
    got = b"".join(records)
    assert final == b"OK" and len(got) == len(blob)
    assert [i for i in range(len(blob)) if got[i] != blob[i]] == [1234]
    assert got[1234] == blob[1234] ^ 1
    # One-shot: the next attempt is clean.
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    assert b"".join(h.download()[0]) == blob
    assert [k for k, _ in emu.faults.log] == ["flip"]


def test_fault_short_record_header(rig):
    rig.srv.add("/fw.bin", b"ABCDEFGHIJKLMN")
    rig.make(faults=Faults(short_record={1: 2}))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin",2048,8\r\n')
    out = h.read_until(OK)
    recs = out[: -len(OK)].split(b"+HTTPCGET:")[1:]
    got = b""
    for i, rec in enumerate(recs):
        n, _, rest = rec.partition(b",")
        assert rest.endswith(b"\r\n")
        payload = rest[:-2]
        got += payload
        # Record 1 claims two bytes more than it carries (issue 4, case 1).
        assert int(n) == len(payload) + (2 if i == 1 else 0)
    assert got == b"ABCDEFGHIJKLMN"


def test_fault_reboot_mid_record(rig):
    rig.srv.add("/fw.bin", bytes(range(256)) * 40)
    emu = rig.make(faults=Faults(reboot_at_body=3000), reconnect_delay_s=0.01)
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    out = h.read_until(b"+RMCONNECTED\r\n")
    before, _, after = out.partition(READY)
    assert after == b"WIFI CONNECTED\r\nWIFI GOT IP\r\n+RMCONNECTED\r\n"
    assert not before.endswith(b"\r\n")  # cut inside a record
    last = before.rsplit(b"+HTTPCGET:", 1)[1]
    n, _, part = last.partition(b",")
    assert len(part) < int(n)
    assert emu.boots == 1 and h.quiet(0.2) == b""  # no final result after the reboot
    assert h.cmd(b"ATE0").endswith(OK)


def test_fault_reboot_at_wire_offset(rig):
    emu = rig.make()
    h = rig.host
    emu.faults.reboot_at_out = emu.out_offset + 3
    h.send(b"AT+SYSLOG?\r\n")
    assert h.read_until(READY) == b"+SY" + READY


def test_fault_truncated_body_ends_in_ok(rig):
    rig.srv.add("/fw.bin", b"z" * 76)
    rig.make(faults=Faults(truncate_body_at=72))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    records, _, final = h.download()
    assert final == b"OK" and len(b"".join(records)) == 72


def test_fault_mangled_final(rig):
    rig.srv.add("/fw.bin", b"q" * 76)
    rig.make(faults=Faults(mangle_final=b"\r\nO\r\n"))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    out = h.read_until(b"\r\nO\r\n")
    assert out.endswith(b"q\r\n\r\nO\r\n")
    assert h.quiet(0.1) == b""


def test_fault_silence_mid_record_then_idle(rig):
    rig.srv.add("/fw.bin", b"s" * 5000)
    rig.make(faults=Faults(silence_at_body=100, silence_s=0.3))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
    time.sleep(0.1)
    out = h.quiet(0.1)
    assert out.startswith(b"+HTTPCGET:") and not out.endswith(b"\r\n")
    h.send(b"AT\r\n")
    assert h.read_until(BUSY) == BUSY  # still busy while silent
    time.sleep(0.35)
    assert h.cmd(b"AT") == OK  # then idle, with no final result for the download


def test_fault_wifi_drop_mid_download(rig):
    rig.srv.add("/fw.bin", b"w" * 20000)
    emu = rig.make(syslog=True, faults=Faults(wifi_drop_at_body=5000, wifi_down_s=0.1))
    h = rig.host
    h.send(b'AT+HTTPCGET="http://h/fw.bin",2048,1000\r\n')
    records, others, final = h.download()
    assert 5000 <= len(b"".join(records)) < 20000
    assert others == [b"WIFI DISCONNECT\r\n", b"+RMDISCONNECTED\r\n", b"ERR CODE:0x010a7000\r\n"]
    assert final == b"ERROR"
    assert h.read_until(b"+RMCONNECTED\r\n").endswith(b"WIFI GOT IP\r\n+RMCONNECTED\r\n")
    assert emu.wifi_up and emu.cloud_up


def test_fault_busy_next_and_busy_then_prompt(rig):
    emu = rig.make(syslog=True, faults=Faults(busy_next=1, busy_code=True))
    h = rig.host
    h.send(b"AT+HTTPURLCFG=20\r\n")
    assert h.read_until(BUSY) == b"ERR CODE:0x010b0000\r\n" + BUSY
    assert h.quiet(0.2) == b""  # no prompt: the command was dropped
    emu.faults.busy_next = 1
    emu.faults.busy_then_run_ms = 200
    emu.faults.busy_code = False
    t0 = time.monotonic()
    h.send(b"AT+HTTPURLCFG=20\r\n")
    assert h.read_until(BUSY) == BUSY
    assert h.read_exact(len(PROMPT)) == PROMPT
    assert time.monotonic() - t0 > 0.15  # the delay happened (no upper bound: no timing)
    h.send(b"http://h/0123456789a")
    assert h.read_until(SET_OK) == SET_OK


def test_fault_wire_drop_dup_reproducible(rig):
    rig.srv.add("/fw.bin", random.Random(8).randbytes(4000))
    outs = []
    for _ in range(2):
        emu = rig.make(seed=3, faults=Faults(seed=11, drop_prob=0.002, prob_scope="payload"))
        rig.host.send(b'AT+HTTPCGET="http://h/fw.bin"\r\n')
        outs.append(rig.host.read_until(OK, 5))
        assert rig.host.quiet(0.1) == b""
        emu.stop()
        assert emu.faults.log  # something was dropped
    assert outs[0] == outs[1]  # same seeds, same bytes on the wire


def test_fault_drop_at_wire_offset(rig):
    emu = rig.make()
    h = rig.host
    emu.faults.drop_at = {emu.out_offset + 2}
    h.send(b"AT+SYSLOG?\r\n")
    assert h.read_until(OK) == b"+SSLOG:0\r\n" + OK


# --- script mode, other ports, pacing ------------------------------------------------------
def test_script_mode_emits_exact_bytes(rig):
    emu = rig.make(respond=False)
    h = rig.host
    h.send(b'AT+HTTPCGET=""\r\n')
    assert emu.wait_line() == b'AT+HTTPCGET=""\r\n'
    trace = b"+HTTPCGET:8,ABCDEFGH\r\n+HTTPCGET:8,IJKLMN\r\n+HTTPCGET:4,OPQR\r\n\r\nOK\r\n"
    emu.emit(trace)
    assert h.read_exact(len(trace)) == trace
    assert h.quiet(0.1) == b""
    assert 'H> AT+HTTPCGET=""\\r\\n' in emu.format_trace()


def test_socketpair_port():
    a, b = socket.socketpair()
    port = SocketPort(a)
    emu = ESPEmulator(port, echo=False).start()
    host = Host(b.fileno(), sock=b)
    try:
        assert host.cmd(b"AT") == OK
        assert host.cmd(b"AT+GMR").endswith(OK)
    finally:
        emu.stop()
        port.close()
        b.close()


def test_baud_pacing(rig):
    emu = rig.make(baud=9600)  # 960 bytes per second at 8N1
    h = rig.host
    t0 = time.monotonic()
    emu.emit(b"x" * 96)
    h.read_exact(96)
    assert time.monotonic() - t0 >= 0.09


# --- httpfiles on its own -------------------------------------------------------------------
def test_httpfiles_ranges_and_faults():
    data = bytes(range(256)) * 4
    with HTTPFiles() as srv:
        srv.add("/a.bin", data)

        def get(path, rng=None, timeout=2):
            req = urllib.request.Request(srv.url(path, "X-Amz-Expires=1"))
            if rng:
                req.add_header("Range", rng)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        st, hd, body = get("/a.bin", "bytes=1000-")
        assert (st, hd["Content-Range"], body) == (206, "bytes 1000-1023/1024", data[1000:])
        st, _, body = get("/a.bin", "bytes=10-19")
        assert (st, body) == (206, data[10:20])
        st, hd, body = get("/a.bin", "bytes=1024-")
        assert st == 416 and hd["Content-Range"] == "bytes */1024" and b"InvalidRange" in body
        srv.ignore_range = True
        assert get("/a.bin", "bytes=1000-")[:3:2] == (200, data)
        srv.ignore_range = False
        srv.fail_next(403, count=2)
        for _ in range(2):
            st, _, body = get("/a.bin")
            assert st == 403 and body.startswith(
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            )
        assert get("/a.bin")[0] == 200
        srv.fail_path("/a.bin", 500)
        assert get("/a.bin")[0] == 500
        srv.clear_faults()
        assert get("/missing")[0] == 404
        srv.slow(20000)
        t0 = time.monotonic()
        assert get("/a.bin")[2] == data
        assert time.monotonic() - t0 > 0.03
        srv.clear_faults()
        srv.stall_after(100, 0.2)
        t0 = time.monotonic()
        assert get("/a.bin")[2] == data
        assert time.monotonic() - t0 >= 0.18
        srv.stall_after(100)  # forever: released by stop()
        with pytest.raises(OSError):
            get("/a.bin", timeout=0.2)
        assert [r["query"] for r in srv.requests][:1] == ["X-Amz-Expires=1"]
