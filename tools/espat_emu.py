"""An ESP-AT (RainMaker) emulator for bench and desktop tests of the rmota agent (CPython >= 3.11).

It plays the ESP32-C3 running ESP-AT with the RainMaker AT commands, byte for byte as
DESIGN.md section 1 describes (including the behaviours read from ESP-AT's source), on a
pty (the desktop board) or a real serial port (a real host board through a USB-serial
adapter). Every ``AT+HTTPCGET`` goes through a real ``http.client`` request to a real HTTP
server (``tools/httpfiles.py``); whatever host a URL names is mapped to that server, with
path and query kept, so ~1,100-character presigned-style URLs work unchanged.

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

# --- ESP-AT wire tokens, limits and ERR CODE values (ESP-AT "AT Command Set", "HTTP AT
# Commands", "AT Error Codes"; DESIGN.md section 1): one copy, in tools/espcommon.py, which
# tools/espsim.py (the virtual-time model of the fault campaign) uses too.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from espcommon import (  # noqa: E402
    BUSY,
    ERR_EXEC_FAIL,
    ERR_HTTP,
    ERR_NO_AT,
    ERR_PARA_INVALID,
    ERR_PARA_NUM,
    ERR_PARSE,
    ERR_PROCESSING,
    ERR_UNSUPPORTED,
    ERROR,
    HEAD_LEN_MAX,
    LINE_MAX,
    OK,
    PROMPT,
    READY,
    S3_HOST,
    SET_OK,
    SIZE_DEFAULT,
    SIZE_MAX,
    TIMEOUT_DEFAULT_MS,
    TIMEOUT_MAX_MS,
    URL_LEN_MAX,
    URL_LEN_MIN,
    escape_at_string,
    escape_bytes,
    notification_line,
    parse_command,
    parse_params,
    presigned_url,
    record_header,
)
from espcommon import ParamError as _ParamError  # noqa: E402
from espcommon import RESULT_JSON_MAX as _RESULT_JSON_MAX  # noqa: E402
from espcommon import STATUS_WORDS as _STATUS_WORDS  # noqa: E402


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
class Faults:
    """Seeded, reproducible fault injection for ``ESPEmulator`` (issue 3 and 4 cases).

    Set attributes at construction (``Faults(seed=1, flip_body_at={100})``) or at any time
    on ``emu.faults``. "Offset" kinds:

    - *wire offsets* count the bytes the ESP meant to send to the host since ``start()``
      (before any fault); ``emu.out_offset`` is the current one.
    - *body offsets* count the HTTP body bytes of one ``AT+HTTPCGET`` attempt (from 0 at
      each attempt, also for a Range request). Body-offset faults are one-shot: each
      fires once, at the first attempt that reaches it, and is then removed.

    Wire (ESP -> host), what a lossy UART does:
      ``drop_at``, ``dup_at``, ``flip_at``: sets of wire offsets to drop / send twice / flip.
      ``drop_prob``, ``dup_prob``, ``flip_prob``: per-byte probabilities (float).
      ``prob_scope``: ``"all"`` (every output byte) or ``"payload"`` (only payload bytes of
      ``+HTTPCGET`` records).
      ``flip_mask``: XOR mask for a flip (int), or None for one random bit.
      ``drop_body_at``, ``dup_body_at``, ``flip_body_at``: the same at body offsets (the
      record header keeps its length: a flip gives a same-length altered payload, a drop
      a record one byte short of its header).
      ``reboot_at_out``: the ESP reboots when wire offset k is reached: bytes before k are
      sent, then ``\\r\\nready\\r\\n``, and the RAM state is forgotten.

    Download (``AT+HTTPCGET``), body offsets:
      ``reboot_at_body``: reboot after that many body bytes, in the middle of a record.
      ``truncate_body_at``: the body ends there (connection cut), and the command still
      ends with ``truncate_final`` (default ``\\r\\nOK\\r\\n``: firmware before Aug 2025).
      ``silence_at_body``: output stops mid-record; the ESP stays busy for ``silence_s``
      seconds (None: until a reboot) and then goes idle without a final result.
      ``stall_at_body`` / ``stall_s``: output pauses mid-record for ``stall_s`` seconds.
      ``wifi_drop_at_body``: Wi-Fi drops at the first record boundary at or after that
      offset (``WIFI DISCONNECT``, ``+RMDISCONNECTED``, then the GET fails with
      ``ERR CODE:0x010a7000``/``ERROR``); it comes back after ``wifi_down_s`` seconds
      (None: only through ``set_connected``).
      ``short_record``: dict ``{record index: extra}``: the header of that record (0-based,
      in the next download) claims ``extra`` more bytes than sent, e.g.
      ``+HTTPCGET:8,IJKLMN\\r\\n`` (a negative ``extra`` claims fewer). One-shot.
      ``mangle_final``: bytes that replace the next ``\\r\\nOK\\r\\n`` ending a download
      (e.g. ``b"\\r\\nO\\r\\n"``). One-shot.
      ``final_extra``: bytes written in the same write right after the next download's
      final result (issue 4 case 4: the final, a URC and part of a header in one read).
      One-shot.
      ``persist_body_faults``: the body-offset faults ``drop_body_at``, ``dup_body_at`` and
      ``flip_body_at`` fire at every attempt that reaches them instead of once (a byte
      altered in every download, issue 4 case 2).
      ``drop_err_code``: the next N ``ERR CODE`` lines are not printed; their ``ERROR``
      still is (the same output as with ``AT+SYSLOG=0``, issue 4 case 7).

    Commands:
      ``busy_next``: answer ``busy p...`` to the next N command lines (the line is dropped),
      preceded by ``ERR CODE:0x010b0000`` when ``busy_code`` is True (None: when SYSLOG on).
      ``busy_then_run_ms``: variant: the refused command runs anyway that many ms later
      (for ``AT+HTTPURLCFG``, the real prompt comes after the ``busy p...``).
      ``lose_url_byte``: the k-th byte (0-based) sent after the next ``AT+HTTPURLCFG``
      prompt is lost: the ESP waits for one more byte, as ESP-AT does. One-shot.
      ``lose_head_byte``: the same after the next ``AT+HTTPCHEAD=<len>`` prompt.
      ``busy_match``: bytes: ``busy_next`` refuses only command lines starting with it
      (e.g. ``b"AT+HTTPURLCFG="``), others run normally. None: any line.
      ``lose_ready``: the next reboot's ``\\r\\nready\\r\\n`` is lost on the wire (the host
      must notice the reboot otherwise: echo back on, ERROR without ERR CODE). One-shot.
      ``wifi_ota_on_fetch``: list of statuses printed as ``+RMOTA:<n>`` right after the
      next ``AT+RMOTAFETCH``'s ``OK`` (before a notification), as ``push_wifi_ota(...,
      map_delayed=False)`` prints them (issue 4 case 12). One-shot.

    ``ESPEmulator.data_log`` lists every block of raw bytes read after a prompt:
    ``(b"URL" or b"HEAD", bytes)``.

    ``log`` lists what fired: ``(kind, where)`` tuples."""

    _DEFAULTS = dict(
        drop_at=set,
        dup_at=set,
        flip_at=set,
        drop_prob=0.0,
        dup_prob=0.0,
        flip_prob=0.0,
        prob_scope="all",
        flip_mask=None,
        drop_body_at=set,
        dup_body_at=set,
        flip_body_at=set,
        reboot_at_out=None,
        reboot_at_body=None,
        truncate_body_at=None,
        truncate_final=OK,
        silence_at_body=None,
        silence_s=0.0,
        stall_at_body=None,
        stall_s=1.0,
        wifi_drop_at_body=None,
        wifi_down_s=None,
        short_record=dict,
        mangle_final=None,
        busy_next=0,
        busy_code=None,
        busy_then_run_ms=None,
        lose_url_byte=None,
        final_extra=None,
        persist_body_faults=False,
        drop_err_code=0,
        lose_head_byte=None,
        busy_match=None,
        wifi_ota_on_fetch=None,
        lose_ready=False,
    )

    def __init__(self, seed=0, **kw):
        self.seed = seed
        self.rng = random.Random(seed)
        for name, default in self._DEFAULTS.items():
            setattr(self, name, default() if callable(default) else default)
        for name, value in kw.items():
            if name not in self._DEFAULTS:
                raise ValueError("unknown fault %r" % name)
            if isinstance(value, (list, tuple)) and name.endswith("_at"):
                value = set(value)
            setattr(self, name, value)
        self.log = []

    def _wire_active(self):
        return bool(
            self.drop_at
            or self.dup_at
            or self.flip_at
            or self.drop_prob
            or self.dup_prob
            or self.flip_prob
            or self.drop_body_at
            or self.dup_body_at
            or self.flip_body_at
        )

    def _flip(self, b):
        mask = self.flip_mask if self.flip_mask else 1 << self.rng.randrange(8)
        return b ^ mask


# ------------------------------------------------------------------------------------------
# The emulator
# ------------------------------------------------------------------------------------------
class ESPEmulator:
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
    the cloud answers the fetch asynchronously), ``truncated_ok`` (a body cut short by the server ends in
    OK: firmware built before Aug 2025).

    Observable state: ``results`` (list of ``(job_id, status, info)`` accepted by
    ``AT+RMOTARESULT``), ``job_status`` (last accepted status, None before any),
    ``job`` (the cloud's unfinished job dict, or None), ``pending`` (the ESP's RAM flag),
    ``url``/``headers`` (ESP RAM), ``rx``/``tx`` (every byte received / sent),
    ``trace`` (list of ``(t_s, "H>" or "E<", bytes)``), ``lines`` (queue of received
    command lines), ``boots`` (number of reboots), ``http_requests`` (count)."""

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
        self.faults = faults if faults is not None else Faults(seed)
        self.baud = baud
        self._baud_def = baud
        self.respond = respond
        self.reset_delay_s = reset_delay_s
        self.reconnect_delay_s = reconnect_delay_s
        self.autofetch = autofetch
        self.fetch_notify_first = fetch_notify_first
        self.fetch_notify_delay_s = fetch_notify_delay_s
        self.truncated_ok = truncated_ok
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads = []
        self._timers = []  # heap of (due, seq, boot_id or None, fn)
        self._timer_cv = threading.Condition(self._lock)
        self._seq = 0
        self._t0 = time.monotonic()
        self._tx_free_at = 0.0
        self._intended = 0  # wire offset: bytes meant for the host so far
        self._conn = None  # the HTTP connection of a running download
        self._active = None  # token of the running AT+HTTPCGET, or None
        self._cmd_seq = 0
        # Cloud side (survives ESP reboots).
        self.job = None
        self.results = []
        self.job_status = None
        self.result_overflows = 0  # results whose JSON would overflow the ESP's 256 bytes
        self.net_wifi = wifi
        self.net_cloud = cloud
        self.uart_def = None
        # ESP link state and RAM.
        self.wifi_up = wifi
        self.cloud_up = wifi and cloud
        self.boots = 0
        self._boot_id = 0
        self.http_requests = 0
        self.data_log = []
        self._ram_reset()
        self.echo = echo
        self.syslog = syslog
        # Logs.
        self.rx = bytearray()
        self.tx = bytearray()
        self.trace = []
        self.lines = queue.Queue()
        # Input parser.
        self._line = bytearray()
        self._line_over = False
        self._raw = None  # [remaining, bytearray, on_done, seen, lose_index]
        self._running = False  # a command is processing: input lines get busy p...
        self._rebooting = False
        self._commands = {
            b"+RST": self._cmd_rst,
            b"+GMR": self._cmd_gmr,
            b"+SYSLOG": self._cmd_syslog,
            b"+RMNODEINIT": self._cmd_rmnodeinit,
            b"+RMOTAFETCH": self._cmd_rmotafetch,
            b"+RMOTARESULT": self._cmd_rmotaresult,
            b"+HTTPURLCFG": self._cmd_httpurlcfg,
            b"+HTTPCHEAD": self._cmd_httpchead,
            b"+HTTPCGET": self._cmd_httpcget,
            b"+UART_CUR": self._cmd_uart,
            b"+UART_DEF": self._cmd_uart,
        }

    def _ram_reset(self):
        # What an ESP forgets on reset (DESIGN.md section 1).
        self.echo = True
        self.syslog = False
        self.url = None
        self.headers = []
        self.pending = False
        self.uart_cur = None
        # at_rainmaker.c: s_rm_ota_status starts as OTA_STATUS_SUCCESS (2).
        self._last_rmota = 2

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

    @property
    def out_offset(self):
        """The current wire offset (int): bytes meant for the host so far, before faults."""
        return self._intended

    # --- host-visible events (the test's or the cloud's side) ---------------------------
    def push_job(self, url, size, fw_version, job_id, passive=True):
        """Create a host-MCU OTA job in the cloud (it stays until a result of 2 or 5).

        ``url`` (str), ``size`` (int, bytes), ``fw_version`` (str or None: printed as the
        literal ``null``), ``job_id`` (str). With ``passive`` and the cloud connected, the
        ESP prints ``+RMFWNOTIFY:0,<size>,<url>,<fw_version>,<job_id>`` unsolicited and
        the job is pending. Returns the notification line (bytes, ``\\r\\n`` included)."""
        with self._lock:
            self.job = dict(url=url, size=int(size), fw_version=fw_version, job_id=job_id)
            line = self._notification()
            if passive and self.cloud_up and not self._rebooting:
                self._notify()
        return line

    def push_wifi_ota(self, statuses, map_delayed=True):
        """Report the ESP's own OTA progress as ``+RMOTA:<n>`` URCs (at_rainmaker.c
        ``rmaker_response_result``): a status equal to the last printed is suppressed,
        nothing is printed (nor remembered) while a host job is pending, and the delayed
        event (4) prints 5 — and, as in the source, is compared against 4, so it repeats.
        ``map_delayed=False`` prints each number as given (e.g. 4 or 9, issue 4 case 12).
        Returns the list of printed numbers."""
        printed = []
        with self._lock:
            for s in statuses:
                shown = 5 if (s == 4 and map_delayed) else s
                if self.pending or self._last_rmota == s:
                    continue
                self._out(b"+RMOTA:%d\r\n" % shown)
                self._last_rmota = shown
                printed.append(shown)
        return printed

    def set_connected(self, wifi=None, cloud=None):
        """Make the network (``wifi``) and the RainMaker cloud (``cloud``) available or not.

        Prints what ESP-AT prints on each transition: ``WIFI DISCONNECT``,
        ``+RMDISCONNECTED``, ``WIFI CONNECTED`` + ``WIFI GOT IP``, ``+RMCONNECTED``.
        While the cloud is down ``AT+RMOTAFETCH`` and ``AT+RMOTARESULT`` answer ERROR;
        while Wi-Fi is down a running download fails."""
        with self._lock:
            if wifi is not None:
                self.net_wifi = bool(wifi)
            if cloud is not None:
                self.net_cloud = bool(cloud)
            if not self._rebooting:
                self._sync_links()

    def reboot(self):
        """Reboot the ESP now (power glitch, watchdog, ``+RMREBOOT``): ``\\r\\nready\\r\\n``
        and the RAM state (URL, headers, echo, SYSLOG, UART_CUR, pending flag) is lost;
        a running download stops where it is. Wi-Fi and cloud come back after
        ``reconnect_delay_s`` each."""
        with self._lock:
            self._reboot_now()

    def emit(self, data):
        """Script mode: write ``data`` (bytes) to the host exactly, with no fault applied."""
        with self._lock:
            self._write(bytes(data))

    def wait_line(self, timeout_s=2.0):
        """The next command line received from the host (bytes, ``\\r\\n`` included).
        Raises ``TimeoutError`` after ``timeout_s``."""
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError("no line from the host within %.1f s" % timeout_s) from None

    def format_trace(self):
        """The exchange so far as text: one ``H>``/``E<`` line per write, bytes escaped
        (regression material only: DESIGN.md section 6)."""
        lines = []
        for t, d, data in self.trace:
            lines.append("%8.3f %s %s" % (t, d, _escape(data)))
        return "\n".join(lines) + "\n"

    # --- output ------------------------------------------------------------------------
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

    def _out(self, data, span=None, boot_id=None):
        """Send ``data`` through the wire faults. ``span``: (start, end, body offset) of
        record payload bytes inside ``data``. ``boot_id``: skip if the ESP rebooted since.
        Returns False if nothing was sent because of a reboot."""
        with self._lock:
            if boot_id is not None and boot_id != self._boot_id:
                return False
            f = self.faults
            base = self._intended
            self._intended += len(data)
            if f._wire_active():
                data = self._mangle(data, base, span)
            k = f.reboot_at_out
            if k is not None and base <= k < self._intended:
                f.reboot_at_out = None
                f.log.append(("reboot_at_out", k))
                self._write(data[: max(0, k - base)])
                self._reboot_now()
                return False
            self._write(data)
            return True

    def _mangle(self, data, base, span):
        f = self.faults
        out = bytearray()
        for i, b in enumerate(data):
            pos = base + i
            in_payload = span is not None and span[0] <= i < span[1]
            body = span[2] + i - span[0] if in_payload else None
            prob_ok = f.prob_scope != "payload" or in_payload
            keep = f.persist_body_faults
            if pos in f.drop_at or (body is not None and body in f.drop_body_at):
                f.drop_at.discard(pos)
                if not keep:
                    f.drop_body_at.discard(body)
                f.log.append(("drop", pos))
                continue
            if prob_ok and f.drop_prob and f.rng.random() < f.drop_prob:
                f.log.append(("drop", pos))
                continue
            if pos in f.flip_at or (body is not None and body in f.flip_body_at):
                f.flip_at.discard(pos)
                if not keep:
                    f.flip_body_at.discard(body)
                f.log.append(("flip", pos))
                b = f._flip(b)
            elif prob_ok and f.flip_prob and f.rng.random() < f.flip_prob:
                f.log.append(("flip", pos))
                b = f._flip(b)
            out.append(b)
            if pos in f.dup_at or (body is not None and body in f.dup_body_at):
                f.dup_at.discard(pos)
                if not keep:
                    f.dup_body_at.discard(body)
                f.log.append(("dup", pos))
                out.append(b)
            elif prob_ok and f.dup_prob and f.rng.random() < f.dup_prob:
                f.log.append(("dup", pos))
                out.append(b)
        return bytes(out)

    def _final_ok(self, boot_id=None):
        return self._out(OK, boot_id=boot_id)

    def _error(self, code=ERR_EXEC_FAIL, boot_id=None):
        with self._lock:
            f = self.faults
            if self.syslog and code is not None and f.drop_err_code > 0:
                f.drop_err_code -= 1
                f.log.append(("drop_err_code", code))
            elif self.syslog and code is not None:
                if not self._out(b"ERR CODE:0x%08x\r\n" % code, boot_id=boot_id):
                    return False
            return self._out(ERROR, boot_id=boot_id)

    def _busy_reply(self, with_code=None):
        if with_code is None:
            with_code = self.syslog
        if with_code:
            self._out(b"ERR CODE:0x%08x\r\n" % ERR_PROCESSING)
        self._out(BUSY)

    # --- timers ------------------------------------------------------------------------
    def _schedule(self, delay_s, fn, boot_bound=True):
        with self._lock:
            self._seq += 1
            bid = self._boot_id if boot_bound else None
            heapq.heappush(self._timers, (time.monotonic() + delay_s, self._seq, bid, fn))
            self._timer_cv.notify_all()

    def _timer_loop(self):
        with self._lock:
            while not self._stop.is_set():
                if not self._timers:
                    self._timer_cv.wait(0.5)
                    continue
                due, _, bid, fn = self._timers[0]
                now = time.monotonic()
                if due > now:
                    self._timer_cv.wait(due - now)
                    continue
                heapq.heappop(self._timers)
                if bid is None or bid == self._boot_id:
                    try:
                        fn()
                    except Exception as e:  # a defect of the emulator: show it, keep running
                        print("espat_emu: timer task failed: %r" % (e,), file=sys.stderr)

    # --- reboot and links ------------------------------------------------------------
    def _reboot_now(self):
        # Caller holds the lock.
        self._boot_id += 1
        self.boots += 1
        self._close_conn()
        self._active = None
        self._raw = None
        self._line.clear()
        self._line_over = False
        self._running = False
        self._rebooting = False
        self._ram_reset()
        # UART_CUR is forgotten: back to UART_DEF, or to the rate the emulator began with.
        if self.uart_def is not None:
            self._apply_baud(self.uart_def[0])
        else:
            self.baud = self._baud_def
            if getattr(self.port, "baud0", None) is not None:
                self.port.set_baud(self.port.baud0)
        self.wifi_up = False
        self.cloud_up = False  # s_rm_connect_status starts OFF: +RMCONNECTED will print
        self.faults.log.append(("ready", self._intended))
        if self.faults.lose_ready:
            self.faults.lose_ready = False  # lost on the wire: the host never sees it
            self.faults.log.append(("lose_ready", self._intended))
            self._intended += len(READY)
        else:
            self._out(READY)
        if self.net_wifi:
            self._schedule(self.reconnect_delay_s, self._sync_links)

    def _sync_links(self):
        # Bring the ESP's link state to what the network allows, one step per call when
        # coming up (Wi-Fi first, the cloud a little later), printing ESP-AT's URCs.
        with self._lock:
            want_wifi = self.net_wifi
            want_cloud = self.net_wifi and self.net_cloud
            if self.wifi_up and not want_wifi:
                self.wifi_up = False
                self._out(b"WIFI DISCONNECT\r\n")
            if self.cloud_up and not want_cloud:
                self.cloud_up = False
                self._out(b"+RMDISCONNECTED\r\n")
            if not self.wifi_up and want_wifi:
                self.wifi_up = True
                self._out(b"WIFI CONNECTED\r\nWIFI GOT IP\r\n")
                if want_cloud:
                    self._schedule(self.reconnect_delay_s, self._sync_links)
                return
            if not self.cloud_up and want_cloud:
                self.cloud_up = True
                self._out(b"+RMCONNECTED\r\n")
                if self.autofetch and self.job is not None:
                    self._notify()

    def _notification(self):
        j = self.job
        return notification_line(j["size"], j["url"], j["fw_version"], j["job_id"])

    def _notify(self):
        # at_rainmaker.c rmaker_ota_handle: print the line in one write, set the flag.
        self._out(self._notification())
        self.pending = True

    def _apply_baud(self, baud):
        if self.baud is not None:
            self.baud = baud
        if hasattr(self.port, "set_baud"):
            self.port.set_baud(baud)

    def _close_conn(self):
        conn = self._conn
        self._conn = None
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- input -------------------------------------------------------------------------
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
                    self._on_input(data)
                except Exception as e:  # a defect of the emulator: show it, keep serving
                    print("espat_emu: input handling failed: %r" % (e,), file=sys.stderr)

    def _on_input(self, data):
        with self._lock:
            self.rx += data
            self.trace.append((time.monotonic() - self._t0, "H>", bytes(data)))
            i, n = 0, len(data)
            while i < n:
                if self._rebooting:
                    return  # the ESP is restarting: bytes are lost
                raw = self._raw
                if raw is not None and self.respond:
                    # After a '>' prompt: exactly <len> raw bytes, waiting forever for them.
                    # raw = [remaining, collected, on_done, bytes seen, index to lose]
                    while i < n and raw[0] > 0:
                        b = data[i]
                        i += 1
                        seen = raw[3]
                        raw[3] += 1
                        if seen == raw[4]:
                            url = raw[2] == self._url_done
                            kind = "lose_url_byte" if url else "lose_head_byte"
                            self.faults.log.append((kind, seen))
                            continue  # lost on the wire: one more byte is needed
                        raw[1].append(b)
                        raw[0] -= 1
                    if raw[0] == 0:
                        self._raw = None
                        raw[2](bytes(raw[1]))
                    continue
                b = data[i]
                i += 1
                if len(self._line) < LINE_MAX:
                    self._line.append(b)
                else:
                    self._line_over = True
                if b == 0x0A:
                    line = bytes(self._line)
                    over = self._line_over
                    self._line.clear()
                    self._line_over = False
                    self._on_line(line, over)

    def _on_line(self, line, over):
        self.lines.put(line)
        if not self.respond:
            return
        if self._running:
            self._busy_reply()
            return
        f = self.faults
        if f.busy_next > 0 and (f.busy_match is None or line.startswith(f.busy_match)):
            f.busy_next -= 1
            f.log.append(("busy", line))
            self._busy_reply(f.busy_code)
            if f.busy_then_run_ms is not None:
                self._running = True

                def later(line=line):
                    self._running = False
                    self._dispatch(line, False)

                self._schedule(f.busy_then_run_ms / 1000, later)
            return
        if self.echo:
            self._out(line)
        self._dispatch(line, over)

    def _dispatch(self, line, over):
        r = parse_command(line, over)
        if r[0] == "error":
            self._error(r[1])
            return
        if r[0] == "ok":
            self._final_ok()
            return
        if r[0] == "echo":
            self.echo = r[1]
            self._final_ok()
            return
        _, name, form, args = r
        handler = self._commands.get(name)
        if handler is None:
            self._error(ERR_UNSUPPORTED)
            return
        try:
            handler(name, form, args)
        except _ParamError as e:
            self._error(e.code)

    # --- commands ----------------------------------------------------------------------
    @staticmethod
    def _ints(args, count_min, count_max):
        if args is None or not (count_min <= len(args) <= count_max):
            raise _ParamError(ERR_PARA_NUM)
        for a in args:
            if a is not None and not isinstance(a, int):
                raise _ParamError(ERR_PARSE)
        return args

    def _cmd_rst(self, name, form, args):
        if form != "exe":
            raise _ParamError(ERR_UNSUPPORTED)
        self._final_ok()
        self._rebooting = True  # input is lost until ready
        self._schedule(self.reset_delay_s, self._reboot_now)

    def _cmd_gmr(self, name, form, args):
        if form != "exe":
            raise _ParamError(ERR_UNSUPPORTED)
        self._out(
            b"AT version:4.0.0.0-emulator(rmota)\r\nSDK version:emulated\r\n"
            b"compile time:-\r\nBin version:rmota espat_emu\r\n"
        )
        self._final_ok()

    def _cmd_syslog(self, name, form, args):
        if form == "query":
            self._out(b"+SYSLOG:%d\r\n" % int(self.syslog))
            self._final_ok()
            return
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        (v,) = self._ints(args, 1, 1)
        if v not in (0, 1):
            raise _ParamError(ERR_PARA_INVALID)
        self.syslog = bool(v)
        self._final_ok()

    def _cmd_rmnodeinit(self, name, form, args):
        # The node is modelled as initialised by the application; accept the command.
        self._final_ok()

    def _cmd_rmotafetch(self, name, form, args):
        if form != "exe":
            raise _ParamError(ERR_UNSUPPORTED)
        if not (self.wifi_up and self.cloud_up):
            self._error(ERR_EXEC_FAIL)
            return
        # esp_rmaker_ota_fetch(): the cloud answers later with the job, if one is open.
        if self.job is not None and self.fetch_notify_first:
            self._notify()
            self._final_ok()
            return
        self._final_ok()
        statuses, self.faults.wifi_ota_on_fetch = self.faults.wifi_ota_on_fetch, None
        if statuses:
            self.faults.log.append(("wifi_ota_on_fetch", tuple(statuses)))
            self.push_wifi_ota(statuses, map_delayed=False)
        if self.job is not None:
            if self.fetch_notify_delay_s > 0:
                self._schedule(self.fetch_notify_delay_s, self._notify_if_connected)
            else:
                self._notify()

    def _notify_if_connected(self):
        if self.job is not None and self.cloud_up:
            self._notify()

    def _cmd_rmotaresult(self, name, form, args):
        # at_rainmaker.c at_setup_cmd_rmotaresult, in the same order of checks.
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        if not (self.wifi_up and self.cloud_up):
            self._error(ERR_EXEC_FAIL)
            return
        if len(args) != 4:
            raise _ParamError(ERR_PARA_NUM)
        typ, job_id, status, info = args
        if not isinstance(typ, int) or not isinstance(status, int):
            raise _ParamError(ERR_PARSE)
        if not isinstance(job_id, bytes) or not isinstance(info, bytes):
            raise _ParamError(ERR_PARSE)
        if status < 0 or status > 5:
            self._error(ERR_PARA_INVALID)
            return
        if not self.pending:
            self._error(ERR_EXEC_FAIL)
            return
        jid = job_id.decode("utf-8", "replace")
        text = info.decode("utf-8", "replace")
        payload = '{"ota_job_id":"%s","status":"%s","additional_info":"%s"}' % (
            jid,
            _STATUS_WORDS.get(status, "invalid"),
            text,
        )
        if len(payload.encode()) >= _RESULT_JSON_MAX:
            self.result_overflows += 1
        self.results.append((jid, status, text))
        self.job_status = status
        if status in (2, 5):  # only these end the job in ESP RainMaker
            self.pending = False
            self.job = None
        self._final_ok()

    def _cmd_httpurlcfg(self, name, form, args):
        if form == "query":
            url = self.url or b""
            self._out(b"+HTTPURLCFG:%d,%s\r\n" % (len(url), url))
            self._final_ok()
            return
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        (n,) = self._ints(args, 1, 1)
        if n == 0:
            self.url = None
            self._final_ok()
            return
        if n is None or not (URL_LEN_MIN <= n <= URL_LEN_MAX):
            raise _ParamError(ERR_PARA_INVALID)
        f = self.faults
        lose = f.lose_url_byte
        f.lose_url_byte = None
        self._raw = [n, bytearray(), self._url_done, 0, lose]
        self._out(PROMPT)

    def _url_done(self, data):
        self.data_log.append((b"URL", data))
        if b"\x00" in data:
            self.url = None
            self._error(ERR_PARA_INVALID)
            return
        self.url = data
        self._out(SET_OK)

    def _cmd_httpchead(self, name, form, args):
        if form == "query":
            for i, h in enumerate(self.headers):
                self._out(b'+HTTPCHEAD:%d,"%s"\r\n' % (i, h))
            self._final_ok()
            return
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        (n,) = self._ints(args, 1, 1)
        if n == 0:
            self.headers = []
            self._final_ok()
            return
        if n is None or not (1 <= n <= HEAD_LEN_MAX):
            raise _ParamError(ERR_PARA_INVALID)
        f = self.faults
        lose = f.lose_head_byte
        f.lose_head_byte = None
        self._raw = [n, bytearray(), self._head_done, 0, lose]
        self._out(PROMPT)

    def _head_done(self, data):
        self.data_log.append((b"HEAD", data))
        key, colon, _ = data.partition(b":")
        if not colon or not key.strip() or b"\x00" in data:
            self._error(ERR_PARA_INVALID)
            return
        # A header set again replaces the earlier one of the same name (assumed).
        k = key.strip().lower()
        self.headers = [h for h in self.headers if h.partition(b":")[0].strip().lower() != k]
        self.headers.append(data)
        self._final_ok()

    def _cmd_uart(self, name, form, args):
        cur = self.uart_cur if name == b"+UART_CUR" else self.uart_def
        if form == "query":
            vals = cur or (self.baud or 115200, 8, 1, 0, 1)
            self._out(b"%s:%d,%d,%d,%d,%d\r\n" % ((name,) + tuple(vals)))
            self._final_ok()
            return
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        vals = self._ints(args, 5, 5)
        if None in vals:
            raise _ParamError(ERR_PARA_INVALID)
        if name == b"+UART_CUR":
            self.uart_cur = tuple(vals)
        else:
            self.uart_def = tuple(vals)
            self.uart_cur = tuple(vals)
        self._final_ok()
        self._apply_baud(vals[0])

    def _cmd_httpcget(self, name, form, args):
        if form != "set":
            raise _ParamError(ERR_UNSUPPORTED)
        if not args or len(args) > 4:
            raise _ParamError(ERR_PARA_NUM)
        url = args[0]
        if not isinstance(url, bytes):
            raise _ParamError(ERR_PARSE)
        nums = self._ints(args[1:], 0, 3) + [None] * (4 - len(args))
        tx, rx, timeout_ms = nums[:3]
        tx = SIZE_DEFAULT if tx is None else tx
        rx = SIZE_DEFAULT if rx is None else rx
        timeout_ms = TIMEOUT_DEFAULT_MS if timeout_ms is None else timeout_ms
        if not (0 <= tx <= SIZE_MAX and 0 <= rx <= SIZE_MAX and 0 <= timeout_ms <= TIMEOUT_MAX_MS):
            raise _ParamError(ERR_PARA_INVALID)
        rx = rx or SIZE_DEFAULT
        if url == b"":
            if self.url is None:
                self._error(ERR_PARA_INVALID)
                return
            url = self.url
        self._running = True
        self._cmd_seq += 1
        self._active = token = self._cmd_seq
        boot_id = self._boot_id
        t = threading.Thread(
            target=self._cget_thread,
            args=(url, rx, timeout_ms, list(self.headers), boot_id, token),
            name="espat-httpcget",
            daemon=True,
        )
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    # --- AT+HTTPCGET -------------------------------------------------------------------
    def _cget_thread(self, url, rx, timeout_ms, headers, boot_id, token):
        try:
            self._cget(url, rx, timeout_ms, headers, boot_id, token)
        except Exception as e:  # a defect of the emulator: say so, and end the command
            print("espat_emu: AT+HTTPCGET failed: %r" % (e,), file=sys.stderr)
            self._finish(token, boot_id, None, ERR_HTTP)
        finally:
            with self._lock:
                if self._active == token:  # ended without a final result (silence)
                    self._active = None
                    self._running = False

    def _finish(self, token, boot_id, final, code=None):
        """Write the final result of download ``token`` and mark the ESP idle, in one step
        under the lock (a command that arrives after it must not be refused as busy).
        ``final`` None means ERROR, preceded by ``ERR CODE:<code>`` with SYSLOG on."""
        with self._lock:
            if boot_id != self._boot_id or self._active != token or self._stop.is_set():
                return
            if final is None:
                self._error(code)
            else:
                self._out(final)
            if self._active == token:
                self._active = None
                self._running = False

    def _connect(self, url, timeout_ms, headers, token):
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
            if self._active != token:
                raise ConnectionAbortedError("rebooted before the request")
            self._conn = conn  # so that a reboot or stop() can cut it
        try:
            return self._request(conn, target, parts.netloc, headers)
        except BaseException:
            self._drop_conn(conn)
            raise

    def _drop_conn(self, conn):
        with self._lock:
            if self._conn is conn:
                self._conn = None
        conn.close()

    def _request(self, conn, target, netloc, headers):
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        names = set()
        for h in headers:
            k, _, v = h.partition(b":")
            names.add(k.strip().lower())
        if b"host" not in names:
            conn.putheader("Host", netloc)
        if b"user-agent" not in names:
            conn.putheader("User-Agent", "ESP32 HTTP Client/1.0")
        for h in headers:
            k, _, v = h.partition(b":")
            conn.putheader(k.strip().decode("latin-1"), v.strip().decode("latin-1"))
        conn.endheaders()
        return conn, conn.getresponse()

    def _cget(self, url, rx, timeout_ms, headers, boot_id, token):
        self.http_requests += 1
        try:
            conn, resp = self._connect(url, timeout_ms, headers, token)
        except (OSError, http.client.HTTPException, ValueError, UnicodeError):
            self._finish(token, boot_id, None, ERR_HTTP)  # connection failed
            return
        try:
            self._stream(resp, rx, boot_id, token)
        finally:
            self._drop_conn(conn)

    def _stream(self, resp, rx, boot_id, token):
        # Body first, as records of 1..rx bytes; the status decides the final result after.
        f = self.faults
        status = resp.status
        body_off = 0
        rec_idx = 0
        broken = False
        truncated = False
        while True:
            if self._stop.is_set() or boot_id != self._boot_id:
                return
            w = f.wifi_drop_at_body
            if w is not None and body_off >= w:
                f.wifi_drop_at_body = None
                f.log.append(("wifi_drop", body_off))
                self.set_connected(wifi=False)
                if f.wifi_down_s is not None:
                    self._schedule(f.wifi_down_s, lambda: self.set_connected(wifi=True), False)
            if not self.wifi_up:
                broken = True
                break
            # Record sizes come from the seeded RNG (any 1..rx), so a healthy transfer is
            # reproducible; a timeout or a cut still delivers what had arrived.
            n = self._rng.randint(1, rx)
            data = bytearray()
            eof = False
            try:
                while len(data) < n:
                    part = resp.read1(n - len(data))
                    if not part:
                        eof = True
                        # Content-Length not reached: the server cut the body short.
                        broken = bool(resp.length)
                        break
                    data += part
            except (OSError, http.client.HTTPException, ValueError):
                broken = True  # network-idle timeout, reset, or a reboot closed it
            data = bytes(data)
            t = f.truncate_body_at
            if t is not None and body_off + len(data) >= t:
                f.truncate_body_at = None
                f.log.append(("truncate_body", t))
                data = data[: max(0, t - body_off)]
                truncated = True
            if data:
                if not self._record(data, body_off, rec_idx, boot_id):
                    return  # rebooted or silenced mid-record
                body_off += len(data)
                rec_idx += 1
            if truncated or broken or eof:
                break
        if truncated:
            self._finish(token, boot_id, f.truncate_final)
            return
        if broken and not self.truncated_ok:
            self._finish(token, boot_id, None, ERR_HTTP)
            return
        if status >= 400:
            # Body first, status afterwards: ERR CODE carries it (0x010a7193 for 403).
            self._finish(token, boot_id, None, ERR_HTTP | (status & 0xFFF))
            return
        final = OK
        if f.mangle_final is not None:
            final, f.mangle_final = f.mangle_final, None
            f.log.append(("mangle_final", final))
        if f.final_extra is not None:
            final, f.final_extra = final + f.final_extra, None
            f.log.append(("final_extra", final))
        self._finish(token, boot_id, final)

    def _record(self, data, base, idx, boot_id):
        """Write one ``+HTTPCGET:<len>,<payload>\\r\\n`` record in one piece, applying the
        record-level faults. Returns False when the command must end here silently."""
        f = self.faults
        extra = f.short_record.pop(idx, 0)
        if extra:
            f.log.append(("short_record", idx))
        hdr = record_header(len(data) + extra)
        rec = hdr + data + b"\r\n"
        span = (len(hdr), len(hdr) + len(data), base)
        end = base + len(data)
        cuts = []
        for kind in ("reboot_at_body", "silence_at_body", "stall_at_body"):
            v = getattr(f, kind)
            if v is not None and base <= v < end:
                cuts.append((v, kind))
        if not cuts:
            return self._out(rec, span, boot_id)
        at, kind = min(cuts)
        setattr(f, kind, None)
        f.log.append((kind, at))
        p = len(hdr) + at - base
        with self._lock:
            if not self._out(rec[:p], (span[0], span[1], base), boot_id):
                return False
            if kind == "reboot_at_body":
                self._reboot_now()
                return False
        if kind == "silence_at_body":
            # Mid-record silence: stay busy, then idle with no final result.
            if f.silence_s is None:
                while not self._stop.is_set() and boot_id == self._boot_id:
                    self._stop.wait(0.05)
            else:
                self._stop.wait(f.silence_s)
            return False
        self._stop.wait(f.stall_s)
        return self._out(rec[p:], (0, max(0, span[1] - p), at), boot_id)


_escape = escape_bytes


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
    ap.add_argument("--job-id", default="JOB1")
    ap.add_argument("--version", default=None, help="fw_version (default: null)")
    ap.add_argument("--url-len", type=int, default=1083, help="URL length (default 1083)")
    ap.add_argument("--notify-after", type=float, default=1.0, help="seconds before the URC")
    ap.add_argument("--no-passive", action="store_true", help="only on AT+RMOTAFETCH")
    ap.add_argument("--syslog", action="store_true", help="start with AT+SYSLOG=1")
    ap.add_argument("--no-echo", action="store_true", help="start with ATE0")
    ap.add_argument("--seed", type=int, default=0)
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
