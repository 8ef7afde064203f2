"""A scripted ESP for adversarial agent runs: the agent in-process on virtual time on the
unix board (a NOR flash file), and a tiny ESP-AT responder whose answers tests bend with
hooks. Runs under CPython and MicroPython (host_tests/dual)."""

import hashlib
import os
import sys
import board as unix_board
from rmota.agent import for_board
from rmota.compat import VirtualClock
from rmota.image import build_header
from rmota.log import Logger

JOB = "JOB1"
URL = b"http://127.0.0.1/img.bin?X-Amz=abc"
VERBOSE = os.getenv("V") == "1"
FLASH = "/tmp/rmota_adv_%s.bin" % "".join("%02x" % b for b in os.urandom(4))


def payload(n, seed=1):
    out = bytearray()
    h = hashlib.sha256(b"%d" % seed).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def mkimage(pl, version=2, board=b"unix"):
    return build_header(pl, board, version) + pl


class ESP:
    """A minimal ESP-AT. ``image``: bytes served by HTTPCGET (Range honoured).
    Hooks: ``cget_hook(esp, start, data)`` returns the bytes to emit for one HTTPCGET
    (default: records of rx + OK). ``notify`` the +RMFWNOTIFY line (bytes, no CRLF)."""

    def __init__(self, uart, image, notify=None, rx=10240):
        self.u = uart
        self.image = image
        self.notify = (
            notify
            if notify is not None
            else (b"+RMFWNOTIFY:0,%d,%s,2.0,%s" % (len(image), URL, JOB.encode()))
        )
        self.rx = rx
        self.inbuf = bytearray()
        self.data_need = 0
        self.data_kind = None
        self.url = b""
        self.range = None
        self.results = []
        self.cmds = []
        self.cget_hook = None
        self.fetch_hook = None
        self.result_hook = None
        self.cmd_hook = None
        self.cgets = 0
        uart.on_write = self.on_write

    def out(self, b):
        self.u.feed(b)

    def on_write(self, data):
        self.inbuf += data
        while True:
            if self.data_need:
                if len(self.inbuf) < self.data_need:
                    return
                d = bytes(self.inbuf[: self.data_need])
                self.inbuf = self.inbuf[self.data_need :]
                self.data_need = 0
                if self.data_kind == "url":
                    self.url = d
                    self.out(b"\r\nSET OK\r\n")
                else:
                    if d.startswith(b"Range: bytes="):
                        self.range = d
                    self.out(b"\r\nOK\r\n")
                continue
            i = self.inbuf.find(b"\r\n")
            if i < 0:
                return
            line = bytes(self.inbuf[:i])
            self.inbuf = self.inbuf[i + 2 :]
            self.command(line)

    def command(self, line):
        self.cmds.append(line)
        if VERBOSE:
            print("H>", line[:120])
        if self.cmd_hook and self.cmd_hook(self, line):
            return
        if line.startswith(b"AT+HTTPURLCFG="):
            n = int(line[14:])
            self.data_need = n
            self.data_kind = "url"
            self.out(b"\r\nOK\r\n\r\n>")
        elif line == b"AT+HTTPURLCFG?":
            self.out(b"+HTTPURLCFG:%d,%s\r\n\r\nOK\r\n" % (len(self.url), self.url))
        elif line == b"AT+HTTPCHEAD=0":
            self.range = None
            self.out(b"\r\nOK\r\n")
        elif line.startswith(b"AT+HTTPCHEAD="):
            self.data_need = int(line[13:])
            self.data_kind = "head"
            self.out(b"\r\nOK\r\n\r\n>")
        elif line.startswith(b"AT+HTTPCGET="):
            self.cgets += 1
            start, end = 0, len(self.image) - 1
            if self.range:
                r = self.range[13:].split(b"-")
                start = int(r[0])
                if r[1]:
                    end = int(r[1])
            data = self.image[start : end + 1]
            if self.cget_hook:
                self.out(self.cget_hook(self, start, data))
            else:
                self.out(self.records(data) + b"\r\nOK\r\n")
        elif line == b"AT+RMOTAFETCH":
            if self.fetch_hook:
                self.fetch_hook(self)
            else:
                self.out(b"\r\nOK\r\n")
                if self.notify:
                    self.out(self.notify + b"\r\n")
        elif line.startswith(b"AT+RMOTARESULT="):
            self.results.append(line)
            if VERBOSE:
                print("RESULT", line)
            if self.result_hook:
                self.result_hook(self, line)
            else:
                st = line.split(b",")[2] if line.count(b",") >= 3 else b""
                if st not in (b"0", b"1", b"2", b"3", b"4", b"5") or not line.endswith(b'"'):
                    # (ESP-AT: status 0..5, and a string parameter closed by its quote)
                    self.out(b"\r\nERROR\r\n")
                    return
                self.out(b"\r\nOK\r\n")
                if st in (b"2", b"5"):
                    self.notify = None
        else:
            self.out(b"\r\nOK\r\n")

    def records(self, data, rx=None):
        rx = rx or self.rx
        out = bytearray()
        for i in range(0, len(data), rx):
            c = data[i : i + rx]
            out += b"+HTTPCGET:%d," % len(c) + c + b"\r\n"
        return bytes(out)


class Logsink:
    def __init__(self):
        self.lines = []

    def __call__(self, line):
        self.lines.append(line)
        if VERBOSE:
            print("LOG", line)


def fresh_flash(path, factory=None):
    factory = factory or payload(5000, 99)
    unix_board.provision(path, factory, 1)
    return factory


SHORT = {
    "fetch_wait_ms": 300,
    "backoff_ms": 50,
    "backoff_max_ms": 200,
    "max_attempts": 3,
    "link_wait_ms": 2000,
    "report_retry_ms": 5000,
}


def run(
    image,
    flash=FLASH,
    setup=None,
    settings=None,
    max_ms=600000,
    max_boots=4,
    pre_boot=None,
    fresh=True,
    uart=None,
    tick=None,
    agent_kw=None,
):
    """Run the agent until idle or the time bound, with reboots. Returns dict.
    ``agent_kw``: more keyword arguments for ``for_board`` (e.g. ``progress``)."""
    from fakeuart import FakeUART

    if fresh:
        fresh_flash(flash)
    clock = VirtualClock()
    st = dict(SHORT)
    if settings:
        st.update(settings)
    uart = uart or FakeUART()
    esp = ESP(uart, image)
    if setup:
        setup(esp)
    log = Logsink()
    boots = 0
    res = {"esp": esp, "log": log, "exc": None, "end": None}
    while boots < max_boots:
        boots += 1
        if pre_boot:
            pre_boot(boots)
        b = unix_board.Board(flash, clock=clock, settings=st)
        res["board"] = b
        agent = for_board(
            b, uart=uart, clock=clock, log=Logger("rmota", sink=log), **(agent_kw or {})
        )
        res["agent"] = agent
        try:
            t0 = clock.now_ms
            while True:
                if tick:
                    tick(clock.now_ms, esp, agent)
                n = agent.poll()
                if not n:
                    clock.sleep_ms(5)
                if agent.idle:
                    res["end"] = "idle"
                    break
                if clock.now_ms - t0 > max_ms:
                    res["end"] = "timeout(state=%s)" % agent.state
                    break
        except SystemExit as e:
            res["end"] = "reboot"
            if VERBOSE:
                print("REBOOT", e)
            continue
        except BaseException as e:  # escaped poll()
            res["exc"] = repr(e)
            try:
                sys.print_exception(e)
            except AttributeError:
                import traceback

                traceback.print_exc()
            res["end"] = "EXC"
            try:
                b.close()
            except Exception:
                pass
            break
        bs = b.boot_state()
        res["boot"] = bs
        res["rec"] = b.loader.record
        b.close()
        break
    res["boots"] = boots
    res["vms"] = clock.now_ms
    return res


def summary(res):
    esp = res["esp"]
    a = res.get("agent")
    return "end=%s exc=%s boots=%d vms=%d boot=%s results=%s errors=%s last_error=%s" % (
        res["end"],
        res["exc"],
        res["boots"],
        res["vms"],
        res.get("boot"),
        [r[15:120] for r in esp.results],
        a and a.errors,
        a and a.last_error,
    )
