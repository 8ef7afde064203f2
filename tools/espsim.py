"""A sans-I/O model of an ESP32 running ESP-AT with RainMaker, on virtual time.

For the fault campaign (issue 3): it runs under CPython and the MicroPython unix port, has
no threads, sockets or HTTP, and is driven by the same clock the agent uses
(``rmota.compat.VirtualClock``), so a 5-second stall costs no real time. It plugs into the
agent as its UART: ``readinto(buf, nbytes=None)`` (None when nothing is due), ``read(n)``,
``write(buf)``, ``any()``. Every call first brings the model up to the clock's time:
scheduled events run in order and the ESP's output crosses the wire at ``baud`` (10 bits
a byte), so bytes become readable only as virtual time passes.

The wire bytes are the ones ``tools/espat_emu.py`` (the threaded emulator with real HTTP)
sends, for the commands the agent uses, as DESIGN.md section 1 describes them; the two
share the tokens and helpers of ``tools/espcommon.py``. The image is served from memory by ``Server``
(Range, S3-style error bodies, faults); the RainMaker job lives in the "cloud" part of
the model and survives ESP reboots, the pending flag does not.

Usage::

    from rmota.compat import VirtualClock
    from espsim import ESPSim, Faults

    clock = VirtualClock()
    sim = ESPSim(clock, seed=7, faults=Faults(7, reboot_at_body=5000))
    sim.server.add("/fw.img", image)
    sim.push_job("/fw.img", len(image), "2.0.0", "JOB1")     # a path: presigned URLs
    link = ATLink(sim, clock=clock)                          # the agent's UART
    ...
    sim.job_status, sim.results, sim.faults.log

Traces of this model are regression material only (DESIGN.md section 6).
"""

import heapq

import heapq

from espcommon import (  # noqa: F401  (the wire tokens and helpers, for callers)
    BUSY,
    ERR_EXEC_FAIL,
    ERR_HTTP,
    ERR_PARA_INVALID,
    ERR_PARA_NUM,
    ERR_PARSE,
    ERR_PROCESSING,
    ERR_UNSUPPORTED,
    ERROR,
    HEAD_LEN_MAX,
    LINE_MAX,
    OK,
    PRNG,
    PROMPT,
    READY,
    RESULT_JSON_MAX,
    SET_OK,
    SIZE_DEFAULT,
    SIZE_MAX,
    STATUS_WORDS,
    TIMEOUT_DEFAULT_MS,
    TIMEOUT_MAX_MS,
    URL_LEN_MAX,
    URL_LEN_MIN,
    ParamError,
    escape_bytes,
    notification_line,
    parse_command,
    parse_params,
    parse_range,
    presigned_url,
    record_header,
    s3_error_body,
)


def _url_parts(url):
    # (path, generation or None) of an http(s) URL (bytes). The host part is ignored:
    # every URL maps to the model's server, as espat_emu maps it to tools/httpfiles.py.
    u = bytes(url)
    k = u.find(b"://")
    if k >= 0:
        u = u[k + 3 :]
        s = u.find(b"/")
        u = u[s:] if s >= 0 else b"/"
    q = u.find(b"?")
    path, query = (u, b"") if q < 0 else (u[:q], u[q + 1 :])
    gen = None
    k = query.find(b"X-Amz-Date=")
    if k >= 0:
        k += 11
        e = k
        while e < len(query) and 48 <= query[e] <= 57:
            e += 1
        if e > k:
            gen = int(query[k:e])
    return path.decode(), gen



# ------------------------------------------------------------------------------------------
# The HTTP side
# ------------------------------------------------------------------------------------------
class Server:
    """The S3 bucket behind the presigned URLs, in memory. ``add(path, data)`` serves
    ``data``; ``Range: bytes=N-`` / ``N-M`` gives 206 (416 beyond the end).

    Fault switches (attributes): ``fail_next`` (list of statuses for the next GETs, one
    each, e.g. ``[403, 500]``), ``fail_always`` (every GET answers this status: a
    permanent fault), ``ignore_range`` (GETs with a Range header that are served whole:
    a count, or -1 for always), ``rate_bps`` (a slow server: body bytes per second),
    ``stall_at``/``stall_ms`` (the next response whose body reaches that offset pauses
    there for ``stall_ms``, None: for ever; one-shot), ``expire_ms`` (a presigned URL
    answers 403 that long after its notification; ``AT+RMOTAFETCH`` brings a fresh one),
    ``latency_ms`` (request to first body byte).

    ``requests`` lists every GET: dicts with ``t``, ``path``, ``range`` (start asked
    for, or None), ``status``, ``start`` (stream offset of the body), ``length``,
    ``ignored`` (a Range was ignored), ``sent`` (body bytes the ESP printed), ``reached``
    (stream offset after the last whole record that reached the host that asked, before
    it lost power or rebooted)."""

    def __init__(self):
        self.files = {}
        self.fail_next = []
        self.fail_always = None
        self.ignore_range = 0
        self.rate_bps = None
        self.stall_at = None
        self.stall_ms = None
        self.expire_ms = None
        self.latency_ms = 20
        self.requests = []

    def add(self, path, data):
        self.files[path] = data

    def get(self, path, headers, t_ms, age_ms=None):
        """Answer one GET: returns the request dict with ``status``, ``body`` (bytes-like)
        and ``start`` filled in. ``headers``: raw ``Key: value`` byte strings;
        ``age_ms``: how old the presigned URL is (None: unknown, never expires)."""
        rng = None
        for h in headers:
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"range":
                rng = v.strip().decode()
        req = {
            "t": t_ms,
            "path": path,
            "range": None,
            "status": 200,
            "start": 0,
            "length": 0,
            "ignored": False,
            "sent": 0,
            "reached": 0,
        }
        self.requests.append(req)
        blob = self.files.get(path)
        status = None
        if self.fail_always is not None:
            status = self.fail_always
        elif self.fail_next:
            status = self.fail_next.pop(0)
        elif self.expire_ms is not None and age_ms is not None and age_ms > self.expire_ms:
            status = 403
        elif blob is None:
            status = 404
        start, end = 0, (len(blob) - 1 if blob is not None else -1)
        if status is None and rng is not None:
            p = parse_range(rng, len(blob))
            if p is not None and p != "unsatisfiable":
                req["range"] = p[0]
            elif p == "unsatisfiable":
                req["range"] = -1
            if self.ignore_range:
                if self.ignore_range > 0:
                    self.ignore_range -= 1
                req["ignored"] = True
            elif p == "unsatisfiable":
                status = 416
            elif p is not None:
                start, end = p
                status = 206
        if status is not None and status >= 400:
            req["status"] = status
            req["start"] = None
            req["body"] = s3_error_body(status, path)
        else:
            req["status"] = status or 200
            req["start"] = start
            req["body"] = memoryview(blob)[start : end + 1]
        req["length"] = len(req["body"])
        return req


# ------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------
class Faults:
    """Seeded, reproducible faults for ``ESPSim`` (issue 3). Same names and meanings as
    ``espat_emu.Faults``, with times in virtual milliseconds (``_ms``).

    Offsets: *wire offsets* count the bytes the ESP meant to send since it was made
    (``sim.out_offset``); *body offsets* count the HTTP body bytes of one ``AT+HTTPCGET``
    (from 0 at each attempt, also for a Range request). Body-offset faults fire once.

    Wire (ESP -> host): ``drop_at``, ``dup_at``, ``flip_at`` (sets of wire offsets);
    ``drop_body_at``, ``dup_body_at``, ``flip_body_at`` (sets of body offsets);
    ``drop_prob``, ``dup_prob``, ``flip_prob`` (per byte, with ``prob_scope`` "all" or
    "payload" and at most ``prob_budget`` firings, None: no limit); ``flip_mask`` (XOR,
    None: one random bit); ``reboot_at_out`` (the ESP reboots at that wire offset).

    Download: ``reboot_at_body``; ``truncate_body_at`` (the body ends there and the
    command ends with ``truncate_final``, default ``OK`` as firmware before Aug 2025
    does); ``silence_at_body``/``silence_ms`` (output stops mid-record, the ESP stays busy
    that long, None: until a reboot, then idles with no final result);
    ``stall_at_body``/``stall_ms`` (output pauses mid-record); ``wifi_drop_at_body``/
    ``wifi_down_ms`` (Wi-Fi drops at the first record boundary at or after it: ``WIFI
    DISCONNECT``, ``+RMDISCONNECTED``, the GET fails with ``ERR CODE:0x010a7000``;
    back after ``wifi_down_ms``, None: only through ``set_connected``);
    ``cloud_drop_at_body``/``cloud_down_ms`` (the same for the RainMaker cloud alone:
    the download goes on); ``short_record`` ({record index: extra bytes claimed});
    ``mangle_final`` (replaces the next final ``OK`` of a download).

    Commands: ``busy_next`` (answer ``busy p...`` to the next N command lines; preceded by
    ``ERR CODE:0x010b0000`` when ``busy_code``, None: when SYSLOG is on);
    ``busy_then_run_ms`` (the refused command runs anyway that much later);
    ``lose_url_byte`` (the k-th byte after the next ``AT+HTTPURLCFG`` prompt is lost);
    ``refuse_result`` (the next N ``AT+RMOTARESULT`` with a status other than 1 arrive
    just as the cloud drops: ``+RMDISCONNECTED``, ``ERROR``; back after
    ``refuse_result_ms``).

    ``log`` lists what fired: ``(kind, where)`` tuples."""

    _DEFAULTS = {
        "drop_at": set,
        "dup_at": set,
        "flip_at": set,
        "drop_prob": 0.0,
        "dup_prob": 0.0,
        "flip_prob": 0.0,
        "prob_scope": "all",
        "prob_budget": None,
        "flip_mask": None,
        "drop_body_at": set,
        "dup_body_at": set,
        "flip_body_at": set,
        "reboot_at_out": None,
        "reboot_at_body": None,
        "truncate_body_at": None,
        "truncate_final": OK,
        "silence_at_body": None,
        "silence_ms": 0,
        "stall_at_body": None,
        "stall_ms": 1000,
        "wifi_drop_at_body": None,
        "wifi_down_ms": None,
        "cloud_drop_at_body": None,
        "cloud_down_ms": None,
        "short_record": dict,
        "mangle_final": None,
        "busy_next": 0,
        "busy_code": None,
        "busy_then_run_ms": None,
        "lose_url_byte": None,
        "refuse_result": 0,
        "refuse_result_ms": 2000,
    }

    def __init__(self, seed=0, **kw):
        self.seed = seed
        self.rng = PRNG(seed + 0x5EED)
        for name in self._DEFAULTS:
            d = self._DEFAULTS[name]
            setattr(self, name, d() if (d is set or d is dict) else d)
        for name in kw:
            if name not in self._DEFAULTS:
                raise ValueError("unknown fault %r" % (name,))
            value = kw[name]
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
        mask = self.flip_mask if self.flip_mask else 1 << self.rng.randint(0, 7)
        return b ^ mask

    def _prob(self, p):
        if not p:
            return False
        if self.prob_budget is not None and self.prob_budget <= 0:
            return False
        if self.rng.random() < p:
            if self.prob_budget is not None:
                self.prob_budget -= 1
            return True
        return False


def _hit(offsets, lo, hi):
    # True if a set of offsets has one in [lo, hi).
    for o in offsets:
        if lo <= o < hi:
            return True
    return False


class _Download:
    # One running AT+HTTPCGET.
    def __init__(self, req, rx, timeout_ms, t0):
        self.req = req
        self.body = req["body"]
        self.status = req["status"]
        self.rx = rx
        self.timeout_ms = timeout_ms
        self.t0 = t0  # time the first body byte could arrive
        self.off = 0
        self.idx = 0
        self.next_n = None
        self.hold = None  # (rest of a record paused mid-way, span)
        self.stall_at = None  # server pause in this response: body offset, ms (None: for ever)
        self.stall_ms = None
        self.fatal = False  # the pause outlasts the network timeout


_NEVER = 1 << 62


# ------------------------------------------------------------------------------------------
# The ESP
# ------------------------------------------------------------------------------------------
class ESPSim:
    """An ESP32 with ESP-AT and RainMaker, seen from the host's UART, on ``clock``.

    ``clock``: object with ``ticks_ms()`` (monotonic, not wrapping during the run: a
    ``VirtualClock``). ``seed``: record sizes of ``AT+HTTPCGET`` (any 1..rx size).
    ``baud``: output pacing, 10 bits a byte (None: bytes are readable at once).
    ``faults``: ``Faults``; ``server``: ``Server`` (made if not given).

    Options: ``echo``/``syslog`` (initial ATE and SYSLOG state; a reboot restores echo on,
    SYSLOG off), ``wifi``/``cloud`` (network and cloud available at start),
    ``reset_ms`` (reboot to ``ready``; input is lost meanwhile), ``wifi_ms``/``cloud_ms``
    (``ready`` to ``WIFI GOT IP``, then to ``+RMCONNECTED``), ``fetch_notify_ms`` (the
    cloud's answer to ``AT+RMOTAFETCH`` comes that long after its ``OK``),
    ``fetch_notify_first`` (the notification before the ``OK``), ``autofetch`` (print a
    pending job's notification when the cloud connects), ``truncated_ok`` (a body the
    server cut short ends in ``OK``), ``rx_fifo`` (bytes the host's UART holds: beyond
    it arriving bytes are lost and counted in ``overflows``, unless the host has RTS/CTS
    wired, ``host_cts``, and the ESP was told with ``AT+UART_CUR=...,3``: then the ESP
    waits; None: unbounded), ``trace`` (keep ``(t_ms, "H>"|"E<", bytes)`` in ``trace``).
    ``host_busy(ms, fifo)`` models a host that cannot read for a while (a flash erase).

    Observable state: ``results`` (``(job_id, status, info)`` accepted by
    ``AT+RMOTARESULT``), ``job_status``, ``job`` (the cloud's unfinished job, or None),
    ``pending`` (the ESP's RAM flag), ``url``, ``headers``, ``boots``, ``http_requests``,
    ``lines`` (command lines received), ``on_result`` (callable ``(job_id, status, info)``
    called when a result is accepted), ``bytes_in``/``bytes_out``, ``lost_host_off``
    (bytes that arrived while the host was off)."""

    def __init__(
        self,
        clock,
        seed=0,
        baud=115200,
        faults=None,
        server=None,
        echo=True,
        syslog=False,
        wifi=True,
        cloud=True,
        reset_ms=300,
        wifi_ms=200,
        cloud_ms=300,
        fetch_notify_ms=50,
        fetch_notify_first=False,
        autofetch=False,
        truncated_ok=False,
        rx_fifo=None,
        host_cts=False,
        trace=False,
    ):
        self.clock = clock
        self.rng = PRNG(seed)
        self.faults = faults if faults is not None else Faults(seed)
        self.server = server if server is not None else Server()
        self.baud = baud
        self.reset_ms = reset_ms
        self.wifi_ms = wifi_ms
        self.cloud_ms = cloud_ms
        self.fetch_notify_ms = fetch_notify_ms
        self.fetch_notify_first = fetch_notify_first
        self.autofetch = autofetch
        self.truncated_ok = truncated_ok
        self.rx_fifo = rx_fifo
        self.host_cts = host_cts
        self._baud0 = baud
        self.uart_def = None  # (baud, data bits, stop bits, parity, flow control)
        self._flow = 1  # ESP-AT default: RTS only (nothing pauses the ESP)
        self._room = None  # bytes the host can still take during host_busy()
        self.trace = [] if trace else None
        self._t = clock.ticks_ms()
        self._timers = []
        self._seq = 0
        # wire: _tx holds bytes the ESP wrote that are still on their way; _wire is the
        # byte-time index (now_ms * baud // 10000) at which _tx[_txh] completes - 1.
        self._tx = bytearray()
        self._txh = 0
        self._wire = 0
        self._rx = bytearray()
        self._rxh = 0
        self.host_on = True
        self._epoch = 0  # host power-ons: a request's bytes count for the host that asked
        self.lost_host_off = 0
        self.overflows = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._intended = 0
        self._written = 0  # bytes put on the wire so far
        self._released = 0  # of them, bytes that reached the host's side
        self._marks = []  # (written count at a record's end, request dict, stream offset)
        # cloud side (survives ESP reboots)
        self.job = None
        self.results = []
        self.job_status = None
        self.result_overflows = 0
        self.on_result = None
        self.net_wifi = wifi
        self.net_cloud = cloud
        self._gen = 0
        self._issued = {}
        # ESP
        self.wifi_up = wifi
        self.cloud_up = wifi and cloud
        self.boots = 0
        self._boot_id = 0
        self.http_requests = 0
        self.lines = []
        self._ram_reset()
        self.echo = echo
        self.syslog = syslog
        self._line = bytearray()
        self._line_over = False
        self._raw = None  # [remaining, bytearray, on_done, seen, lose_index]
        self._running = False
        self._rebooting = False
        self._dl = None
        self._rec_open = False
        self._deferred = []
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

    # --- the UART seen by the host ----------------------------------------------------
    def readinto(self, buf, nbytes=None):
        """Copy what has arrived (at most ``nbytes`` or ``len(buf)``) into ``buf``.
        Returns the count, or None when nothing is waiting (``machine.UART``, timeout 0)."""
        self._sync()
        have = len(self._rx) - self._rxh
        if have <= 0:
            return None
        n = len(buf) if nbytes is None else nbytes
        if n > have:
            n = have
        h = self._rxh
        buf[:n] = self._rx[h : h + n]
        self._consumed(n)
        return n

    def read(self, n=-1):
        """Up to ``n`` bytes that have arrived (all with -1), or None."""
        self._sync()
        have = len(self._rx) - self._rxh
        if have <= 0:
            return None
        if n < 0 or n > have:
            n = have
        h = self._rxh
        data = bytes(self._rx[h : h + n])
        self._consumed(n)
        return data

    def _consumed(self, n):
        self._rxh += n
        if self._rxh >= len(self._rx):
            self._rx = bytearray()
            self._rxh = 0
        elif self._rxh > 4096:
            self._rx[0 : self._rxh] = b""
            self._rxh = 0

    def any(self):
        """Bytes waiting to be read."""
        self._sync()
        return len(self._rx) - self._rxh

    def write(self, buf):
        """The host writes ``buf``: the ESP receives it now. Returns ``len(buf)``."""
        self._sync()
        if not self.host_on:
            return len(buf)  # a host without power sends nothing
        data = bytes(buf)
        self.bytes_in += len(data)
        if self.trace is not None:
            self.trace.append((self._t, "H>", data))
        self._on_input(data)
        return len(data)

    # --- the host's power -------------------------------------------------------------
    def host_power(self, on):
        """The host loses power (``on=False``) or comes back: while it is off, what the ESP
        sends is lost; switching off also drops what the host's UART held. The ESP keeps
        running."""
        self._sync()
        if not on:
            self._epoch += 1
            self.lost_host_off += len(self._rx) - self._rxh
            self._rx = bytearray()
            self._rxh = 0
        self.host_on = bool(on)

    def host_busy(self, ms, fifo=None):
        """The host does not read for ``ms`` (a flash erase or program): bytes that
        arrive meanwhile must fit in its receive buffer (``rx_fifo``), or only in a
        ``fifo`` of that many bytes when the host's UART interrupt is off too (rp2: the
        PL011's 32-byte FIFO). The clock advances by ``ms``."""
        self._sync()
        if fifo is not None:
            self._room = fifo
        self.clock.sleep_ms(ms)
        self._sync()
        self._room = None

    def _cts(self):
        return self.host_cts and self._flow in (2, 3)

    # --- time -------------------------------------------------------------------------
    @property
    def now_ms(self):
        return self._t

    @property
    def out_offset(self):
        """The current wire offset (int): bytes meant for the host so far, before faults."""
        return self._intended

    def in_flight(self):
        """Bytes the ESP has written that the host has not read yet (on the wire or
        waiting in the host's UART)."""
        self._sync()
        return len(self._tx) - self._txh + len(self._rx) - self._rxh

    def next_event_ms(self):
        """Milliseconds until the host could see something new: 0 when bytes are waiting,
        else until the next byte (or the next 256) arrives or the next scheduled event,
        None when nothing at all is due."""
        self._sync()
        if len(self._rx) > self._rxh:
            return 0
        best = None
        pend = len(self._tx) - self._txh
        if pend:
            if not self.baud:
                return 0
            k = pend if pend < 256 else 256
            t = -(-(self._wire + k) * 10000 // self.baud)
            best = t - self._t
        if self._timers:
            d = self._timers[0][0] - self._t
            if best is None or d < best:
                best = d
        if best is not None and best < 0:
            best = 0
        return best

    def _sync(self):
        now = self.clock.ticks_ms()
        q = self._timers
        while q and q[0][0] <= now:
            due, _, bid, fn, arg = heapq.heappop(q)
            if due > self._t:
                self._release(due)
                self._t = due
            if bid is None or bid == self._boot_id:
                fn(arg)
        if now > self._t:
            self._t = now
        self._release(self._t)

    def _schedule(self, delay_ms, fn, arg=None, boot_bound=True):
        self._seq += 1
        bid = self._boot_id if boot_bound else None
        if delay_ms is None:
            return
        heapq.heappush(self._timers, (self._t + int(delay_ms), self._seq, bid, fn, arg))

    def at(self, t_ms, fn, arg=None):
        """Run ``fn(arg)`` at virtual time ``t_ms`` (not cancelled by an ESP reboot):
        e.g. ``sim.at(5000, sim.reboot)``. Methods called this way must not be the
        public ones that sync (use the ``schedule_*`` helpers)."""
        self._sync()
        self._seq += 1
        heapq.heappush(self._timers, (max(t_ms, self._t), self._seq, None, fn, arg))

    def schedule_reboot(self, t_ms):
        """The ESP reboots at virtual time ``t_ms`` (power glitch, watchdog)."""
        self.at(t_ms, self._timed_reboot, None)

    def schedule_outage(self, t_ms, down_ms, wifi=True):
        """Wi-Fi (``wifi=True``) or only the RainMaker cloud goes down at ``t_ms`` for
        ``down_ms`` (None: for good)."""
        self.at(t_ms, self._timed_outage, (wifi, down_ms))

    def _timed_reboot(self, _):
        self.faults.log.append(("reboot", self._t))
        self._reboot_now()

    def _timed_outage(self, arg):
        wifi, down_ms = arg
        self.faults.log.append(("wifi_drop" if wifi else "cloud_drop", self._t))
        if wifi:
            self._set_connected(wifi=False)
        else:
            self._set_connected(cloud=False)
        if down_ms is not None:
            self._schedule(down_ms, self._net_back, wifi, False)

    def _net_back(self, wifi):
        if wifi:
            self._set_connected(wifi=True)
        else:
            self._set_connected(cloud=True)

    # --- output -----------------------------------------------------------------------
    def _bytes_at(self, t):
        return t * self.baud // 10000

    def _release(self, t):
        # Move the bytes that have crossed the wire by time t into the host's UART.
        pend = len(self._tx) - self._txh
        if not pend:
            return
        if self.baud:
            k = self._bytes_at(t) - self._wire
            if k <= 0:
                return
            if k > pend:
                k = pend
        else:
            k = pend
        if self.host_on and self.rx_fifo is not None and self._cts():
            # RTS/CTS: the host's UART deasserts RTS when full and the ESP waits.
            space = self.rx_fifo - (len(self._rx) - self._rxh)
            if self._room is not None and self._room < space:
                space = self._room
            if k > space:
                k = space if space > 0 else 0
                if not k:
                    self._wire = self._bytes_at(t)  # the line idles while CTS is off
                    return
        h = self._txh
        data = self._tx[h : h + k]
        self._txh = h + k
        self._wire += k
        self._released += k
        if self._marks:
            self._reached()
        if self._txh >= len(self._tx):
            self._tx = bytearray()
            self._txh = 0
        if not self.host_on:
            self.lost_host_off += k
            return
        if self.rx_fifo is not None:
            space = self.rx_fifo - (len(self._rx) - self._rxh)
            if self._room is not None and self._room < space:
                space = self._room
            if space < 0:
                space = 0
            if k > space:
                self.overflows += k - space
                data = data[:space]
            if self._room is not None:
                self._room -= len(data)
        self._rx += data

    def _reached(self):
        # Credit each request with the stream offset of its last record that reached a
        # powered host (``req["reached"]``): what the host could have kept.
        m = self._marks
        while m and m[0][0] <= self._released:
            _, req, end = m.pop(0)
            if self.host_on and req["epoch"] == self._epoch and end > req["reached"]:
                req["reached"] = end

    def _drain_delay(self):
        # ms from now until the wire has carried everything written so far.
        pend = len(self._tx) - self._txh
        if not pend or not self.baud:
            return 0
        t = -(-(self._wire + pend) * 10000 // self.baud)
        return t - self._t if t > self._t else 0

    def _write(self, data):
        if not data:
            return
        self.bytes_out += len(data)
        self._written += len(data)
        if self.trace is not None:
            self.trace.append((self._t, "E<", bytes(data)))
        if self._txh >= len(self._tx) and self.baud:
            w = self._bytes_at(self._t)
            if w > self._wire:
                self._wire = w
        self._tx += data
        if not self.baud:
            self._release(self._t)

    def _out(self, data, span=None, record=False):
        """Send ``data`` through the wire faults. ``span``: (start, end, body offset) of
        record payload bytes inside ``data``; ``record``: part of a record being written
        (other output waits until the record is complete). Returns False when a reboot
        stopped it."""
        if self._rec_open and not record:
            self._deferred.append(data)
            return True
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

    def _close_record(self):
        self._rec_open = False
        d = self._deferred
        self._deferred = []
        for data in d:
            self._out(data)

    def _mangle(self, data, base, span):
        f = self.faults
        n = len(data)
        probs = f.drop_prob or f.dup_prob or f.flip_prob
        if not probs:
            quick = not (
                _hit(f.drop_at, base, base + n)
                or _hit(f.dup_at, base, base + n)
                or _hit(f.flip_at, base, base + n)
            )
            if quick and span is not None:
                lo = span[2]
                hi = lo + span[1] - span[0]
                quick = not (
                    _hit(f.drop_body_at, lo, hi)
                    or _hit(f.dup_body_at, lo, hi)
                    or _hit(f.flip_body_at, lo, hi)
                )
            if quick:
                return data
        out = bytearray()
        for i in range(n):
            b = data[i]
            pos = base + i
            in_payload = span is not None and span[0] <= i < span[1]
            body = span[2] + i - span[0] if in_payload else None
            prob_ok = f.prob_scope != "payload" or in_payload
            if pos in f.drop_at or (body is not None and body in f.drop_body_at):
                f.drop_at.discard(pos)
                f.drop_body_at.discard(body)
                f.log.append(("drop", pos))
                continue
            if prob_ok and f._prob(f.drop_prob):
                f.log.append(("drop", pos))
                continue
            if pos in f.flip_at or (body is not None and body in f.flip_body_at):
                f.flip_at.discard(pos)
                f.flip_body_at.discard(body)
                f.log.append(("flip", pos))
                b = f._flip(b)
            elif prob_ok and f._prob(f.flip_prob):
                f.log.append(("flip", pos))
                b = f._flip(b)
            out.append(b)
            if pos in f.dup_at or (body is not None and body in f.dup_body_at):
                f.dup_at.discard(pos)
                f.dup_body_at.discard(body)
                f.log.append(("dup", pos))
                out.append(b)
            elif prob_ok and f._prob(f.dup_prob):
                f.log.append(("dup", pos))
                out.append(b)
        return bytes(out)

    def _final_ok(self):
        return self._out(OK)

    def _error(self, code=ERR_EXEC_FAIL):
        if self.syslog and code is not None:
            if not self._out(b"ERR CODE:0x%08x\r\n" % code):
                return False
        return self._out(ERROR)

    def _busy_reply(self, with_code=None):
        if with_code is None:
            with_code = self.syslog
        if with_code:
            self._out(b"ERR CODE:0x%08x\r\n" % ERR_PROCESSING)
        self._out(BUSY)

    def emit(self, data):
        """Write ``data`` (bytes) to the host exactly, with no fault applied."""
        self._sync()
        self._write(bytes(data))

    def format_trace(self):
        """The exchange so far as text (needs ``trace=True``)."""
        lines = []
        for t, d, data in self.trace or ():
            lines.append("%8d %s %s" % (t, d, escape_bytes(data)))
        return "\n".join(lines) + "\n"

    # --- cloud, network, reboots ------------------------------------------------------
    def push_job(self, url, size, fw_version, job_id, passive=True):
        """Create a host-MCU OTA job in the cloud (it stays until a result of 2 or 5).

        ``url``: a path on ``server`` (``"/fw.img"``: every notification then carries a
        fresh presigned-style URL of 1,083 characters) or a whole URL (str, kept as is).
        ``size`` (int, bytes), ``fw_version`` (str or None: ``null``), ``job_id`` (str).
        With ``passive`` and the cloud connected the notification is printed now."""
        self._sync()
        self.job = {"url": url, "size": int(size), "fw_version": fw_version, "job_id": job_id}
        if passive and self.cloud_up and not self._rebooting:
            self._notify()

    def renotify(self):
        """The cloud sends the open job's notification again (as a URC, with a fresh URL),
        if the cloud is connected and the ESP is up. Returns True when it was printed."""
        self._sync()
        if self.job is None or not self.cloud_up or self._rebooting:
            return False
        self._notify()
        return True

    def set_connected(self, wifi=None, cloud=None):
        """Make the network / the RainMaker cloud available or not, printing ESP-AT's URCs
        on each transition (``WIFI DISCONNECT``, ``+RMDISCONNECTED``, ``WIFI CONNECTED``
        + ``WIFI GOT IP``, ``+RMCONNECTED``)."""
        self._sync()
        self._set_connected(wifi, cloud)

    def _set_connected(self, wifi=None, cloud=None):
        if wifi is not None:
            self.net_wifi = bool(wifi)
        if cloud is not None:
            self.net_cloud = bool(cloud)
        if not self._rebooting:
            self._sync_links()

    def reboot(self):
        """Reboot the ESP now: a running download stops, ``ready`` follows after
        ``reset_ms``; the RAM state (URL, headers, echo, SYSLOG, pending flag) is lost."""
        self._sync()
        self._reboot_now()

    def _reboot_now(self):
        self._boot_id += 1
        self.boots += 1
        self._dl = None
        self._raw = None
        self._line = bytearray()
        self._line_over = False
        self._running = False
        self._rec_open = False
        self._deferred = []
        self._ram_reset()
        # AT+UART_CUR is forgotten: back to AT+UART_DEF, or to what the ESP began with.
        d = self.uart_def
        self.baud = d[0] if d else self._baud0
        self._flow = d[4] if d else 1
        self._wire = self._bytes_at(self._t) if self.baud else 0
        self.wifi_up = False
        self.cloud_up = False
        self._rebooting = True
        self._schedule(self.reset_ms, self._boot_done)

    def _boot_done(self, _):
        self._rebooting = False
        self.faults.log.append(("ready", self._intended))
        self._out(READY)
        if self.net_wifi:
            self._schedule(self.wifi_ms, self._links_step)

    def _links_step(self, _):
        self._sync_links()

    def _sync_links(self):
        # Bring the ESP's link state to what the network allows, one step per call when
        # coming up (Wi-Fi first, the cloud later), printing ESP-AT's URCs.
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
                self._schedule(self.cloud_ms, self._links_step)
            return
        if not self.cloud_up and want_cloud:
            self.cloud_up = True
            self._out(b"+RMCONNECTED\r\n")
            if self.autofetch and self.job is not None:
                self._notify()

    def _notification(self):
        j = self.job
        url = j["url"]
        if url.startswith("/"):
            self._gen += 1
            self._issued[self._gen] = self._t
            url = presigned_url(url, self._gen)
        return notification_line(j["size"], url, j["fw_version"], j["job_id"])

    def _notify(self):
        # at_rainmaker.c rmaker_ota_handle: print the line in one write, set the flag.
        self._out(self._notification())
        self.pending = True

    # --- input ------------------------------------------------------------------------
    def _on_input(self, data):
        i, n = 0, len(data)
        while i < n:
            if self._rebooting:
                return  # the ESP is restarting: bytes are lost
            raw = self._raw
            if raw is not None:
                # After a '>' prompt: exactly <len> raw bytes, waiting forever for them.
                while i < n and raw[0] > 0:
                    b = data[i]
                    i += 1
                    seen = raw[3]
                    raw[3] += 1
                    if seen == raw[4]:
                        self.faults.log.append(("lose_url_byte", seen))
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
                self._line = bytearray()
                self._line_over = False
                self._on_line(line, over)

    def _on_line(self, line, over):
        self.lines.append(line)
        if self._running:
            self._busy_reply()
            return
        f = self.faults
        if f.busy_next > 0:
            f.busy_next -= 1
            f.log.append(("busy", line))
            self._busy_reply(f.busy_code)
            if f.busy_then_run_ms is not None:
                self._running = True
                self._schedule(f.busy_then_run_ms, self._late_run, line)
            return
        if self.echo:
            self._out(line)
        self._dispatch(line, over)

    def _late_run(self, line):
        self._running = False
        self._dispatch(line, False)

    def _dispatch(self, line, over):
        r = parse_command(line, over)
        kind = r[0]
        if kind == "error":
            self._error(r[1])
        elif kind == "ok":
            self._final_ok()
        elif kind == "echo":
            self.echo = r[1]
            self._final_ok()
        else:
            handler = self._commands.get(r[1])
            if handler is None:
                self._error(ERR_UNSUPPORTED)
                return
            try:
                handler(r[1], r[2], r[3])
            except ParamError as e:
                self._error(e.code)

    # --- commands ---------------------------------------------------------------------
    @staticmethod
    def _ints(args, count_min, count_max):
        if args is None or not (count_min <= len(args) <= count_max):
            raise ParamError(ERR_PARA_NUM)
        for a in args:
            if a is not None and not isinstance(a, int):
                raise ParamError(ERR_PARSE)
        return args

    def _cmd_rst(self, name, form, args):
        if form != "exe":
            raise ParamError(ERR_UNSUPPORTED)
        self._final_ok()
        self._rebooting = True  # input is lost until ready
        self._schedule(10, self._rst_now)

    def _rst_now(self, _):
        self._reboot_now()

    def _cmd_gmr(self, name, form, args):
        if form != "exe":
            raise ParamError(ERR_UNSUPPORTED)
        self._out(
            b"AT version:4.0.0.0-emulator(rmota)\r\nSDK version:emulated\r\n"
            b"compile time:-\r\nBin version:rmota espsim\r\n"
        )
        self._final_ok()

    def _cmd_syslog(self, name, form, args):
        if form == "query":
            self._out(b"+SYSLOG:%d\r\n" % int(self.syslog))
            self._final_ok()
            return
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        (v,) = self._ints(args, 1, 1)
        if v not in (0, 1):
            raise ParamError(ERR_PARA_INVALID)
        self.syslog = bool(v)
        self._final_ok()

    def _cmd_uart(self, name, form, args):
        if form == "query":
            vals = (self.baud or 115200, 8, 1, 0, self._flow)
            if name == b"+UART_DEF" and self.uart_def:
                vals = self.uart_def
            self._out(b"%s:%d,%d,%d,%d,%d\r\n" % ((name,) + tuple(vals)))
            self._final_ok()
            return
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        vals = self._ints(args, 5, 5)
        if None in vals or vals[4] not in (0, 1, 2, 3):
            raise ParamError(ERR_PARA_INVALID)
        if name == b"+UART_DEF":
            self.uart_def = tuple(vals)
        self._final_ok()
        # the new settings apply once the OK has left the wire
        self._schedule(self._drain_delay(), self._uart_apply, tuple(vals))

    def _uart_apply(self, vals):
        if self.baud:
            self.baud = vals[0]
            self._wire = self._bytes_at(self._t)
        self._flow = vals[4]

    def _cmd_rmnodeinit(self, name, form, args):
        self._final_ok()  # the node is modelled as initialised by the application

    def _cmd_rmotafetch(self, name, form, args):
        if form != "exe":
            raise ParamError(ERR_UNSUPPORTED)
        if not (self.wifi_up and self.cloud_up):
            self._error(ERR_EXEC_FAIL)
            return
        # esp_rmaker_ota_fetch(): the cloud answers later with the job, if one is open.
        if self.job is not None and self.fetch_notify_first:
            self._notify()
            self._final_ok()
            return
        self._final_ok()
        if self.job is not None:
            if self.fetch_notify_ms:
                self._schedule(self.fetch_notify_ms, self._notify_if_connected)
            else:
                self._notify()

    def _notify_if_connected(self, _):
        if self.job is not None and self.cloud_up:
            self._notify()

    def _cmd_rmotaresult(self, name, form, args):
        # at_rainmaker.c at_setup_cmd_rmotaresult, in the same order of checks.
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        f = self.faults
        if f.refuse_result > 0 and args and len(args) == 4 and args[2] != 1:
            f.refuse_result -= 1
            f.log.append(("refuse_result", args[2]))
            self._set_connected(cloud=False)
            self._schedule(f.refuse_result_ms, self._net_back, False, False)
        if not (self.wifi_up and self.cloud_up):
            self._error(ERR_EXEC_FAIL)
            return
        if len(args) != 4:
            raise ParamError(ERR_PARA_NUM)
        typ, job_id, status, info = args
        if not isinstance(typ, int) or not isinstance(status, int):
            raise ParamError(ERR_PARSE)
        if not isinstance(job_id, bytes) or not isinstance(info, bytes):
            raise ParamError(ERR_PARSE)
        if status < 0 or status > 5:
            self._error(ERR_PARA_INVALID)
            return
        if not self.pending:
            self._error(ERR_EXEC_FAIL)
            return
        jid = job_id.decode()
        text = info.decode()
        payload = '{"ota_job_id":"%s","status":"%s","additional_info":"%s"}' % (
            jid,
            STATUS_WORDS.get(status, "invalid"),
            text,
        )
        if len(payload.encode()) >= RESULT_JSON_MAX:
            self.result_overflows += 1
        self.results.append((jid, status, text))
        self.job_status = status
        if status in (2, 5):  # only these end the job in ESP RainMaker
            self.pending = False
            self.job = None
        if self.on_result is not None:
            self.on_result(jid, status, text)
        self._final_ok()

    def _cmd_httpurlcfg(self, name, form, args):
        if form == "query":
            url = self.url or b""
            self._out(b"+HTTPURLCFG:%d,%s\r\n" % (len(url), url))
            self._final_ok()
            return
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        (n,) = self._ints(args, 1, 1)
        if n == 0:
            self.url = None
            self._final_ok()
            return
        if n is None or not (URL_LEN_MIN <= n <= URL_LEN_MAX):
            raise ParamError(ERR_PARA_INVALID)
        f = self.faults
        lose = f.lose_url_byte
        f.lose_url_byte = None
        self._raw = [n, bytearray(), self._url_done, 0, lose]
        self._out(PROMPT)

    def _url_done(self, data):
        if b"\x00" in data:
            self.url = None
            self._error(ERR_PARA_INVALID)
            return
        self.url = data
        self._out(SET_OK)

    def _cmd_httpchead(self, name, form, args):
        if form == "query":
            for i in range(len(self.headers)):
                self._out(b'+HTTPCHEAD:%d,"%s"\r\n' % (i, self.headers[i]))
            self._final_ok()
            return
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        (n,) = self._ints(args, 1, 1)
        if n == 0:
            self.headers = []
            self._final_ok()
            return
        if n is None or not (1 <= n <= HEAD_LEN_MAX):
            raise ParamError(ERR_PARA_INVALID)
        self._raw = [n, bytearray(), self._head_done, 0, None]
        self._out(PROMPT)

    def _head_done(self, data):
        key, colon, _ = data.partition(b":")
        if not colon or not key.strip() or b"\x00" in data:
            self._error(ERR_PARA_INVALID)
            return
        # A header set again replaces the earlier one of the same name (assumed).
        k = key.strip().lower()
        self.headers = [h for h in self.headers if h.partition(b":")[0].strip().lower() != k]
        self.headers.append(data)
        self._final_ok()

    def _cmd_httpcget(self, name, form, args):
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        if not args or len(args) > 4:
            raise ParamError(ERR_PARA_NUM)
        url = args[0]
        if not isinstance(url, bytes):
            raise ParamError(ERR_PARSE)
        nums = list(self._ints(args[1:], 0, 3)) + [None] * (4 - len(args))
        tx, rx, timeout_ms = nums[0], nums[1], nums[2]
        tx = SIZE_DEFAULT if tx is None else tx
        rx = SIZE_DEFAULT if rx is None else rx
        timeout_ms = TIMEOUT_DEFAULT_MS if timeout_ms is None else timeout_ms
        if not (0 <= tx <= SIZE_MAX and 0 <= rx <= SIZE_MAX and 0 <= timeout_ms <= TIMEOUT_MAX_MS):
            raise ParamError(ERR_PARA_INVALID)
        rx = rx or SIZE_DEFAULT
        if url == b"":
            if self.url is None:
                self._error(ERR_PARA_INVALID)
                return
            url = self.url
        self._running = True
        self.http_requests += 1
        self._schedule(self.server.latency_ms, self._dl_start, (url, rx, timeout_ms))

    # --- AT+HTTPCGET ------------------------------------------------------------------
    def _dl_start(self, arg):
        url, rx, timeout_ms = arg
        if not self.wifi_up:
            self._running = False
            self._error(ERR_HTTP)  # connection failed
            return
        path, gen = _url_parts(url)
        age = None
        if gen is not None and gen in self._issued:
            age = self._t - self._issued[gen]
        srv = self.server
        req = srv.get(path, list(self.headers), self._t, age)
        req["epoch"] = self._epoch
        dl = _Download(req, rx, timeout_ms, self._t)
        if srv.stall_at is not None and srv.stall_at < len(dl.body):
            dl.stall_at = srv.stall_at
            dl.stall_ms = srv.stall_ms
            srv.stall_at = None
            self.faults.log.append(("server_stall", dl.stall_at))
            if timeout_ms and (dl.stall_ms is None or dl.stall_ms >= timeout_ms):
                dl.fatal = True
        self._dl = dl
        self._dl_step(dl)

    def _avail_t(self, dl, k):
        # Time by which body bytes [0, k) have reached the ESP.
        t = dl.t0
        rate = self.server.rate_bps
        if rate:
            t += k * 1000 // rate
        if dl.stall_at is not None and k > dl.stall_at:
            if dl.stall_ms is None:
                return _NEVER
            t += dl.stall_ms
        return t

    def _dl_step(self, dl):
        if dl is not self._dl:
            return  # rebooted, silenced or finished since
        f = self.faults
        if dl.hold is not None:  # the rest of a record paused mid-way
            rest, span = dl.hold
            dl.hold = None
            if not self._out(rest, span, record=True):
                return
            self._mark(dl, dl.off)
            self._close_record()
            self._schedule(self._drain_delay(), self._dl_step, dl)
            return
        w = f.wifi_drop_at_body
        if w is not None and dl.off >= w:
            f.wifi_drop_at_body = None
            f.log.append(("wifi_drop", dl.off))
            self._set_connected(wifi=False)
            self._schedule(f.wifi_down_ms, self._net_back, True, False)
        w = f.cloud_drop_at_body
        if w is not None and dl.off >= w:
            f.cloud_drop_at_body = None
            f.log.append(("cloud_drop", dl.off))
            self._set_connected(cloud=False)
            self._schedule(f.cloud_down_ms, self._net_back, False, False)
        if not self.wifi_up:
            self._dl_finish(dl, None, ERR_HTTP)
            return
        body = dl.body
        total = len(body)
        off = dl.off
        if off >= total:
            if dl.status >= 400:
                # Body first, status afterwards: ERR CODE carries it (0x010a7193 for 403).
                self._dl_finish(dl, None, ERR_HTTP | (dl.status & 0xFFF))
                return
            final = OK
            if f.mangle_final is not None:
                final, f.mangle_final = f.mangle_final, None
                f.log.append(("mangle_final", final))
            self._dl_finish(dl, final)
            return
        n = dl.next_n
        if n is None:
            n = self.rng.randint(1, dl.rx)
            if n > total - off:
                n = total - off
            dl.next_n = n
        broken = False
        if dl.fatal and off + n > dl.stall_at:
            # The server pauses longer than the ESP's network timeout: what arrived
            # before the pause is printed, then the GET fails.
            n = dl.stall_at - off
            broken = True
        te = self._avail_t(dl, off + n)
        if te > self._t:
            self._schedule(te - self._t, self._dl_step, dl)
            return
        dl.next_n = None
        data = bytes(body[off : off + n])
        truncated = False
        t = f.truncate_body_at
        if t is not None and off + n >= t:
            f.truncate_body_at = None
            f.log.append(("truncate_body", t))
            data = data[: max(0, t - off)]
            truncated = True
        if data:
            if not self._record(dl, data):
                return
        if truncated:
            # The connection ended early; firmware before Aug 2025 still says OK
            # (truncate_final None: ERROR, as later firmware answers).
            self._dl_finish(dl, f.truncate_final, ERR_HTTP)
            return
        if broken:
            dl.stall_at = _NEVER  # nothing more arrives
            self._schedule(dl.timeout_ms, self._dl_timeout, dl)
            return
        self._schedule(self._drain_delay(), self._dl_step, dl)

    def _dl_timeout(self, dl):
        # Network-idle timeout: ERROR, or OK from firmware that took a cut body as done.
        self._dl_finish(dl, OK if self.truncated_ok else None, ERR_HTTP)

    def _dl_finish(self, dl, final, code=None):
        if dl is not self._dl:
            return
        self._dl = None
        self._running = False
        if final is None:
            self._error(code)
        else:
            self._out(final)

    def _record(self, dl, data):
        """Write one ``+HTTPCGET:<len>,<payload>\\r\\n`` record in one piece, with the
        record-level faults. Returns False when the step must not go on (reboot,
        silence, or a pause that continues later)."""
        f = self.faults
        base = dl.off
        idx = dl.idx
        dl.off = base + len(data)
        dl.idx = idx + 1
        extra = f.short_record.pop(idx, 0)
        if extra:
            f.log.append(("short_record", idx))
        hdr = record_header(len(data) + extra)
        rec = hdr + data + b"\r\n"
        span = (len(hdr), len(hdr) + len(data), base)
        end = base + len(data)
        cut = None
        for kind in ("reboot_at_body", "silence_at_body", "stall_at_body"):
            v = getattr(f, kind)
            if v is not None and base <= v < end and (cut is None or v < cut[0]):
                cut = (v, kind)
        if cut is None:
            dl.req["sent"] += len(data)
            if not self._out(rec, span, record=True):
                return False
            self._mark(dl, end)
            return True
        at, kind = cut
        setattr(f, kind, None)
        f.log.append((kind, at))
        p = len(hdr) + at - base
        dl.req["sent"] += at - base
        self._rec_open = True
        if not self._out(rec[:p], span, record=True):
            return False
        if kind == "reboot_at_body":
            self._reboot_now()
            return False
        if kind == "silence_at_body":
            # Mid-record silence: stay busy, then idle with no final result.
            if f.silence_ms is not None:
                self._schedule(f.silence_ms, self._silence_end, dl)
            return False
        # stall_at_body: the rest of the record follows after stall_ms.
        dl.req["sent"] += end - at
        dl.hold = (rec[p:], (0, max(0, span[1] - p), at))
        self._schedule(f.stall_ms, self._dl_step, dl)
        return False

    def _mark(self, dl, body_end):
        start = dl.req["start"]
        if start is not None:
            self._marks.append((self._written, dl.req, start + body_end))
            if len(self._marks) > 64:
                self._marks.pop(0)

    def _silence_end(self, dl):
        if dl is not self._dl:
            return
        self._dl = None
        self._running = False
        self._close_record()
