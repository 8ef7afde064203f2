"""An ESP-AT (RainMaker) emulator for bench and desktop tests of the rmota agent (CPython >= 3.11).

It plays the ESP32-C3 running ESP-AT with the RainMaker AT commands, byte for byte as
DESIGN.md section 1 describes (including the behaviours read from ESP-AT's source), on a
pty (the desktop board) or a real serial port (a real host board through a USB-serial
adapter). Every ``AT+HTTPCGET`` goes through a real ``http.client`` request to a real HTTP
server (``tools/httpfiles.py``); whatever host a URL names is mapped to that server, with
path and query kept, so ~1,100-character presigned-style URLs work unchanged.

The ESP-AT behaviour (command parser and handlers, RainMaker job, ``+HTTPCGET`` framing,
fault decisions) is ``tools/espcore.py``, the same model the fault campaign runs on
virtual time (``tools/espsim.py``). This module is its real-time driver: a reader thread
feeds the host's bytes into the model, a timer thread runs its scheduled events, a
download thread performs the GET and reads the body, and the model's output goes to the
port at once (paced at ``baud`` when asked), all under one lock.

Usage from a test::

    from espat_emu import ESPEmulator, PtyPort, Faults
    from httpfiles import HTTPFiles

    srv = HTTPFiles().start()
    srv.add("/fw.img", image)
    port = PtyPort()                      # the host opens port.slave_path
    emu = ESPEmulator(port, http_base=srv.base_url, faults=Faults(seed=7)).start()
    emu.push_job("https://bucket.s3.amazonaws.com/fw.img?X-Amz-Expires=86400",
                 len(image), "1.2.3", "JOB1")
    ...
    emu.stop(); port.close(); srv.stop()
    assert emu.job_status == 2

From the shell::

    python tools/espat_emu.py --pty --image app.img --job-id JOB1 --version 1.2.3
    python tools/espat_emu.py --serial /dev/ttyUSB0 --baud 115200 --image app.img ...

Traces recorded from this emulator are regression material only: they prove nothing about
real ESP-AT (DESIGN.md section 6).
"""

import argparse
import heapq
import http.client
import os
import queue
import random
import select
import signal
import socket
import sys
import termios
import threading
import time
import tty
import urllib.parse

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from espcommon import (  # noqa: E402, F401  (the wire tokens and helpers, for callers)
    BUSY,
    ERR_HTTP,
    ERROR,
    OK,
    PROMPT,
    READY,
    S3_HOST,
    SET_OK,
    escape_at_string,
    escape_bytes,
    notification_line,
    parse_command,
    parse_params,
    presigned_url,
    record_header,
)
from espcore import BROKEN, EOF, OPEN, SLEEP, ESPCore  # noqa: E402
from espcore import Faults as _CoreFaults  # noqa: E402


# ------------------------------------------------------------------------------------------
# Ports: a byte stream with read(n) -> bytes (b"" after a short timeout) and write(data).
# ------------------------------------------------------------------------------------------
class PtyPort:
    """A pty pair: the emulator reads and writes the master, the host opens ``slave_path``.

    The slave is put in raw mode (``tty.setraw``): no echo, no CR/LF translation, so the
    bytes are exactly what a UART would carry. The slave fd stays open here, so a host
    process may close and reopen the path (a host reboot) without the master seeing EIO.

    ``read(n)`` returns up to ``n`` bytes, or ``b""`` after ``timeout_s`` (0.05 s);
    ``write(data)`` blocks until the pty accepts everything (the kernel buffer gives
    back-pressure, like hardware flow control) unless ``cancel_writes()`` or ``close()``."""

    def __init__(self, timeout_s=0.05):
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.slave_path = os.ttyname(self.slave_fd)
        self.timeout_s = timeout_s
        self._closed = False
        self._cancel = threading.Event()

    def read(self, n):
        if self._closed:
            return b""
        try:
            r, _, _ = select.select([self.master_fd], [], [], self.timeout_s)
            if not r:
                return b""
            return os.read(self.master_fd, n)
        except (OSError, ValueError):  # EIO when no slave is open; closed fd
            time.sleep(self.timeout_s)
            return b""

    def write(self, data):
        mv = memoryview(bytes(data))
        while mv and not self._closed and not self._cancel.is_set():
            try:
                _, w, _ = select.select([], [self.master_fd], [], 0.1)
                if w:
                    mv = mv[os.write(self.master_fd, mv) :]
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                break
        return len(data)

    def cancel_writes(self, flag=True):
        """Make a blocked ``write`` give up (``flag=True``) or block again (False)."""
        if flag:
            self._cancel.set()
        else:
            self._cancel.clear()

    def discard_pending(self):
        """Drop what the host has not read yet (as a host reboot loses its UART buffer)."""
        termios.tcflush(self.slave_fd, termios.TCIFLUSH)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class SocketPort:
    """One end of a ``socket.socketpair()`` as a port (tests that need no tty)."""

    def __init__(self, sock, timeout_s=0.05):
        self.sock = sock
        self.timeout_s = timeout_s
        self._closed = False

    def read(self, n):
        if self._closed:
            return b""
        try:
            r, _, _ = select.select([self.sock], [], [], self.timeout_s)
            return self.sock.recv(n) if r else b""
        except (OSError, ValueError):
            time.sleep(self.timeout_s)
            return b""

    def write(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            pass
        return len(data)

    def close(self):
        self._closed = True
        self.sock.close()


class SerialPort:
    """A ``serial.Serial`` (pyserial) as a port: ``read(n)`` returns what has arrived
    (waiting at most the serial timeout for the first byte); ``set_baud(baud)`` follows
    ``AT+UART_CUR``/``AT+UART_DEF`` after the ``OK`` has left the wire."""

    def __init__(self, ser):
        self.ser = ser
        self.baud0 = ser.baudrate
        if ser.timeout is None or ser.timeout > 0.1:
            ser.timeout = 0.05

    def read(self, n):
        data = self.ser.read(1)
        if data:
            more = min(n - 1, self.ser.in_waiting)
            if more > 0:
                data += self.ser.read(more)
        return data

    def write(self, data):
        return self.ser.write(data)

    def set_baud(self, baud):
        self.ser.flush()
        self.ser.baudrate = baud

    def close(self):
        self.ser.close()


# ------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------
# The durations espat_emu.Faults takes in seconds (espcore.Faults: "<name>_ms"), defaults.
_FAULT_SECONDS = {
    "silence": 0.0,
    "stall": 1.0,
    "wifi_down": None,
    "cloud_down": None,
    "refuse_result": 2.0,
}


def _seconds_defaults():
    d = {}
    for k, v in _CoreFaults._DEFAULTS.items():
        if not (k.endswith("_ms") and k[:-3] in _FAULT_SECONDS):
            d[k] = v
    for k, v in _FAULT_SECONDS.items():
        d[k + "_s"] = v
    return d


def _ms(seconds):
    return None if seconds is None else seconds * 1000


class Faults(_CoreFaults):
    """Seeded, reproducible fault injection for ``ESPEmulator`` (issue 3 and 4 cases).

    The knobs and their meaning are ``espcore.Faults``'s (see there: wire, download and
    command faults, ``log``), except that durations are in seconds, as real time goes:
    ``silence_s`` (default 0.0; None: until a reboot), ``stall_s`` (1.0), ``wifi_down_s``
    and ``cloud_down_s`` (None: only through ``set_connected``), ``refuse_result_s``
    (2.0); ``busy_then_run_ms`` stays in milliseconds. Flips and probabilities draw from
    ``random.Random(seed)``. Wire offsets count the bytes the ESP meant to send since the
    emulator was made (``emu.out_offset``).

    ``ESPEmulator.data_log`` lists every block of raw bytes read after a prompt:
    ``(b"URL" or b"HEAD", bytes)``."""

    _DEFAULTS = _seconds_defaults()

    # The model reads milliseconds.
    silence_ms = property(lambda self: _ms(self.silence_s))
    stall_ms = property(lambda self: _ms(self.stall_s))
    wifi_down_ms = property(lambda self: _ms(self.wifi_down_s))
    cloud_down_ms = property(lambda self: _ms(self.cloud_down_s))
    refuse_result_ms = property(lambda self: _ms(self.refuse_result_s))

    @staticmethod
    def _make_rng(seed):
        return random.Random(seed)


# ------------------------------------------------------------------------------------------
# The emulator
# ------------------------------------------------------------------------------------------
class ESPEmulator(ESPCore):
    """An ESP32 running ESP-AT with RainMaker, served over ``port``.

    ``port``: an object with ``read(n) -> bytes`` (``b""`` after a short timeout) and
    ``write(bytes)``: a ``PtyPort``, ``SocketPort``, ``SerialPort`` or a bare
    ``serial.Serial`` (wrapped). ``http_base``: ``"http://127.0.0.1:<port>"`` of the HTTP
    server that every URL's host maps to (None: connect to the host the URL names).
    ``syslog``: the initial ``AT+SYSLOG`` state (a reboot turns it off again).

    Keyword options: ``seed`` (int: chunk sizes of ``+HTTPCGET`` records), ``faults``
    (``Faults``), ``baud`` (int: pace output at 10 bits per byte, 8N1; None: no pacing),
    ``wifi``/``cloud`` (bool: network and RainMaker cloud available at start),
    ``echo`` (initial ATE state; ESP-AT boots with echo on), ``respond`` (False: script
    mode, answer nothing and let the test ``emit()``), ``reset_delay_s`` (``AT+RST``: OK
    to ``ready``), ``reconnect_delay_s`` (``ready`` to ``WIFI GOT IP``, and again to
    ``+RMCONNECTED``), ``autofetch`` (print a pending cloud job's notification by itself
    when the cloud connects), ``fetch_notify_first`` (AT+RMOTAFETCH prints the
    notification before its OK), ``fetch_notify_delay_s`` (or that long after its OK:
    the cloud answers the fetch asynchronously), ``truncated_ok`` (a body cut short by
    the server ends in OK: firmware built before Aug 2025).

    Observable state (``espcore.ESPCore``'s): ``results`` (list of ``(job_id, status,
    info)`` accepted by ``AT+RMOTARESULT``), ``job_status`` (last accepted status, None
    before any), ``job`` (the cloud's unfinished job dict, or None), ``pending`` (the
    ESP's RAM flag), ``url``/``headers``/``uart_cur`` (ESP RAM), ``boots`` (number of
    reboots), ``http_requests`` (count), ``data_log``; and here ``rx``/``tx`` (every byte
    received / sent), ``trace`` (list of ``(t_s, "H>" or "E<", bytes)``), ``lines``
    (queue of received command lines)."""

    BIN_NAME = b"rmota espat_emu"
    _TRACE_FMT = "%8.3f %s %s"

    def __init__(
        self,
        port,
        http_base=None,
        syslog=False,
        *,
        seed=0,
        faults=None,
        baud=None,
        wifi=True,
        cloud=True,
        echo=True,
        respond=True,
        reset_delay_s=0.05,
        reconnect_delay_s=0.02,
        autofetch=False,
        fetch_notify_first=False,
        fetch_notify_delay_s=0.0,
        truncated_ok=False,
    ):
        if hasattr(port, "in_waiting") and not isinstance(port, SerialPort):
            port = SerialPort(port)  # a bare serial.Serial
        self.port = port
        self.http_base = http_base
        self._lock = threading.RLock()
        self._guard = self._lock  # every public method of the model runs under it
        self._stop = threading.Event()
        self._threads = []
        self._timers = []  # heap of (due, seq, boot_id or None, fn, arg)
        self._timer_cv = threading.Condition(self._lock)
        self._seq = 0
        self._t0 = time.monotonic()
        self._tx_free_at = 0.0
        self._conn = None  # the HTTP connection of a running download
        self.rx = bytearray()
        self.tx = bytearray()
        self.trace = []
        self.lines = queue.Queue()
        ESPCore.__init__(
            self,
            random.Random(seed),
            faults if faults is not None else Faults(seed),
            echo=echo,
            syslog=syslog,
            wifi=wifi,
            cloud=cloud,
            baud=baud,
            rst_ms=reset_delay_s * 1000,
            ready_ms=None,
            wifi_ms=reconnect_delay_s * 1000,
            cloud_ms=reconnect_delay_s * 1000,
            fetch_notify_ms=fetch_notify_delay_s * 1000,
            fetch_notify_first=fetch_notify_first,
            autofetch=autofetch,
            truncated_ok=truncated_ok,
        )
        self.respond = respond

    # --- life cycle -------------------------------------------------------------------
    def start(self):
        """Start the reader and timer threads. Returns self."""
        self._stop.clear()
        if hasattr(self.port, "cancel_writes"):
            self.port.cancel_writes(False)
        for target, name in ((self._reader, "espat-rx"), (self._timer_loop, "espat-timer")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        """Stop every thread the emulator started (reader, timers, a running download)
        and wait for them. The port stays open (its owner closes it)."""
        self._stop.set()
        if hasattr(self.port, "cancel_writes"):
            self.port.cancel_writes(True)
        with self._lock:
            self._close_conn()
            self._timer_cv.notify_all()
        for t in list(self._threads):
            t.join(5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait_line(self, timeout_s=2.0):
        """The next command line received from the host (bytes, ``\\r\\n`` included).
        Raises ``TimeoutError`` after ``timeout_s``."""
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError("no line from the host within %.1f s" % timeout_s) from None

    # --- the wire ------------------------------------------------------------------------
    def _write(self, data):
        # Raw write with optional baud pacing (10 bits per byte, 8N1). Caller holds the lock.
        if not data:
            return
        # Logged first, so that whatever the host has read is already in tx.
        self.tx += data
        self.trace.append((time.monotonic() - self._t0, "E<", bytes(data)))
        if self.baud:
            step = max(1, self.baud // 1000)  # about 10 ms of line time per write
            for i in range(0, len(data), step):
                part = data[i : i + step]
                now = time.monotonic()
                start = max(now, self._tx_free_at)
                self._tx_free_at = start + len(part) * 10 / self.baud
                if start > now:
                    time.sleep(start - now)
                self.port.write(part)
        else:
            self.port.write(data)

    def _drain_delay(self):
        return 0  # _write returns once the port has taken the bytes

    def _after_drain(self, fn, arg):
        fn(arg)

    def _uart_apply(self, baud):
        if self.baud is not None:
            self.baud = baud
        if hasattr(self.port, "set_baud"):
            self.port.set_baud(baud)

    def _uart_reset(self):
        # UART_CUR is forgotten: back to UART_DEF, or to the rate the emulator began with.
        if self.uart_def is not None:
            self._uart_apply(self.uart_def[0])
        else:
            self.baud = self.baud0
            if getattr(self.port, "baud0", None) is not None:
                self.port.set_baud(self.port.baud0)

    def _reader(self):
        while not self._stop.is_set():
            try:
                data = self.port.read(4096)
            except OSError as e:  # e.g. a USB-serial adapter unplugged: keep trying
                print("espat_emu: port read failed: %r" % (e,), file=sys.stderr)
                self._stop.wait(0.5)
                continue
            if data:
                try:
                    with self._lock:
                        self.rx += data
                        self.trace.append((time.monotonic() - self._t0, "H>", bytes(data)))
                        self._on_input(data)
                except Exception as e:  # a defect of the emulator: show it, keep serving
                    print("espat_emu: input handling failed: %r" % (e,), file=sys.stderr)

    def _note_line(self, line):
        self.lines.put(line)

    # --- time ----------------------------------------------------------------------------
    def _now_ms(self):
        return (time.monotonic() - self._t0) * 1000

    def _schedule(self, delay_ms, fn, arg=None, boot_bound=True):
        if delay_ms is None:
            return
        with self._lock:
            self._seq += 1
            bid = self._boot_id if boot_bound else None
            due = time.monotonic() + delay_ms / 1000
            heapq.heappush(self._timers, (due, self._seq, bid, fn, arg))
            self._timer_cv.notify_all()

    def _timer_loop(self):
        with self._lock:
            while not self._stop.is_set():
                if not self._timers:
                    self._timer_cv.wait(0.5)
                    continue
                due, _, bid, fn, arg = self._timers[0]
                now = time.monotonic()
                if due > now:
                    self._timer_cv.wait(due - now)
                    continue
                heapq.heappop(self._timers)
                if bid is None or bid == self._boot_id:
                    try:
                        fn(arg)
                    except Exception as e:  # a defect of the emulator: show it, keep running
                        print("espat_emu: timer task failed: %r" % (e,), file=sys.stderr)

    # --- AT+HTTPCGET: the download, over real HTTP in its own thread ----------------------
    def _dl_begin(self, dl):
        dl.conn = None
        t = threading.Thread(
            target=self._dl_thread, args=(dl,), name="espat-httpcget", daemon=True
        )
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _dl_abort(self):
        self._close_conn()  # a blocked read returns at once

    def _body_left(self, dl):
        return None  # known only when a read finds the end

    def _dl_thread(self, dl):
        # Run the download generator (espcore module docstring) with the lock held,
        # letting go of it while the network or a fault's pause keeps the download waiting.
        value = None
        with self._lock:
            try:
                while dl is self._dl and not self._stop.is_set():
                    try:
                        op = dl.gen.send(value)
                    except StopIteration:
                        break
                    value = None
                    if op[0] == SLEEP:
                        if op[1] != 0:
                            self._unlocked(self._pause, dl, op[1])
                    elif op[0] == OPEN:
                        value = self._unlocked(self._http_open, dl, op[1], op[2], op[3])
                    else:
                        value = self._unlocked(self._http_read, dl, op[1])
            except Exception as e:  # a defect of the emulator: say so, and end the command
                print("espat_emu: AT+HTTPCGET failed: %r" % (e,), file=sys.stderr)
                self._dl_finish(dl, None, ERR_HTTP)
            finally:
                if dl is self._dl:  # stopped before a final result
                    self._dl = None
                    self._running = False
                self._drop_conn(dl)

    def _unlocked(self, fn, *args):
        self._lock.release()
        try:
            return fn(*args)
        finally:
            self._lock.acquire()

    def _pause(self, dl, ms):
        # Wait ms (None: for ever) unless the download is dropped (reboot) or stop().
        end = None if ms is None else time.monotonic() + ms / 1000
        while not self._stop.is_set() and dl is self._dl:
            left = 0.05 if end is None else min(0.05, end - time.monotonic())
            if left <= 0:
                return
            self._stop.wait(left)

    def _http_open(self, dl, url, headers, timeout_ms):
        # The GET, with the host mapped to http_base; the response, or None on failure.
        try:
            parts = urllib.parse.urlsplit(url.decode("latin-1"))
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            if self.http_base:
                base = urllib.parse.urlsplit(self.http_base)
                host, port = base.hostname, base.port or 80
            else:
                host, port = parts.hostname, parts.port or 80
            conn = http.client.HTTPConnection(host, port, timeout=(timeout_ms / 1000) or None)
            with self._lock:
                if dl is not self._dl:
                    return None  # rebooted before the request
                self._conn = conn  # so that a reboot or stop() can cut it
                dl.conn = conn
            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            names = set()
            for h in headers:
                names.add(h.partition(b":")[0].strip().lower())
            if b"host" not in names:
                conn.putheader("Host", parts.netloc)
            if b"user-agent" not in names:
                conn.putheader("User-Agent", "ESP32 HTTP Client/1.0")
            for h in headers:
                k, _, v = h.partition(b":")
                conn.putheader(k.strip().decode("latin-1"), v.strip().decode("latin-1"))
            conn.endheaders()
            return conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError, UnicodeError):
            return None  # connection failed

    def _http_read(self, dl, n):
        # Up to n body bytes: (data, end, 0), end None, EOF or BROKEN.
        resp = dl.resp
        data = bytearray()
        end = None
        try:
            while len(data) < n:
                part = resp.read1(n - len(data))
                if not part:
                    # Content-Length not reached: the server cut the body short.
                    end = BROKEN if resp.length else EOF
                    break
                data += part
        except (OSError, http.client.HTTPException, ValueError):
            end = BROKEN  # network-idle timeout, reset, or a reboot closed it
        return (bytes(data), end, 0)

    def _close_conn(self):
        conn = self._conn
        self._conn = None
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _drop_conn(self, dl):
        conn = dl.conn
        if conn is not None:
            if self._conn is conn:
                self._conn = None
            conn.close()


def padded_url(host, path, length=1083):
    """A presigned-style URL (``https://<host><path>?X-Amz-...``) padded to ``length``
    characters (the seed's URL has 1,083), for announcing a job from the CLI."""
    return presigned_url(path, None, host, length)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def main(argv=None):
    """The command line (see the module docstring): serve a pty or a serial port, optionally
    announce a job for ``--image`` served by a local ``HTTPFiles``; runs until SIGINT or
    SIGTERM (or, with ``--exit-on-final``, a result of 2 or 5). Returns the exit code, 0."""
    ap = argparse.ArgumentParser(description="ESP-AT (RainMaker) emulator for rmota")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve a pty; print its path")
    where.add_argument("--serial", metavar="DEV", help="serve a serial port (pyserial)")
    ap.add_argument("--baud", type=int, default=115200, help="serial baud (default 115200)")
    ap.add_argument("--pace", action="store_true", help="pty: pace output at --baud")
    ap.add_argument("--image", help="announce a host OTA job serving this file")
    ap.add_argument("--job-id", default="JOB1", help="the job's id (default JOB1)")
    ap.add_argument(
        "--version",
        default=None,
        help="the notification's fw_version string, only logged by the agent, which"
        " compares the image header's version (default: null)",
    )
    ap.add_argument("--url-len", type=int, default=1083, help="URL length (default 1083)")
    ap.add_argument("--notify-after", type=float, default=1.0, help="seconds before the URC")
    ap.add_argument("--no-passive", action="store_true", help="only on AT+RMOTAFETCH")
    ap.add_argument("--syslog", action="store_true", help="start with AT+SYSLOG=1")
    ap.add_argument("--no-echo", action="store_true", help="start with ATE0")
    ap.add_argument(
        "--seed", type=int, default=0, help="seeds the +HTTPCGET record sizes (default 0)"
    )
    ap.add_argument("--exit-on-final", action="store_true", help="exit after a result 2 or 5")
    ap.add_argument("--trace", metavar="FILE", help="write the exchange here on exit")
    a = ap.parse_args(argv)

    from httpfiles import HTTPFiles  # beside this file

    srv = HTTPFiles().start()
    if a.pty:
        port = PtyPort()
        print(port.slave_path, flush=True)
    else:
        import serial

        # A device path, or any pyserial URL (rfc2217://, socket://, loop://).
        port = SerialPort(serial.serial_for_url(a.serial, a.baud, timeout=0.05))
    emu = ESPEmulator(
        port,
        http_base=srv.base_url,
        syslog=a.syslog,
        seed=a.seed,
        baud=a.baud if a.pace else None,
        echo=not a.no_echo,
    ).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *x: done.set())
    if a.image:
        with open(a.image, "rb") as fh:
            blob = fh.read()
        path = "/firmwareimages/" + os.path.basename(a.image)
        srv.add(path, blob)
        url = padded_url(S3_HOST, path, a.url_len)
        done.wait(a.notify_after)
        emu.push_job(url, len(blob), a.version, a.job_id, passive=not a.no_passive)
        print("job %s: %d bytes, url %d chars" % (a.job_id, len(blob), len(url)), file=sys.stderr)
    seen = 0
    try:
        while not done.wait(0.1):
            while seen < len(emu.results):
                jid, st, info = emu.results[seen]
                seen += 1
                print("RMOTARESULT job=%s status=%d info=%r" % (jid, st, info), file=sys.stderr)
                if a.exit_on_final and st in (2, 5):
                    done.set()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
        srv.stop()
        if a.trace:
            with open(a.trace, "w") as fh:
                fh.write(emu.format_trace())
        port.close()
    print("final job status: %s" % (emu.job_status,), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
