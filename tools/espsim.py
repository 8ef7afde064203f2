"""A sans-I/O model of an ESP32 running ESP-AT with RainMaker, on virtual time.

For the fault campaign (issue 3): it runs under CPython and the MicroPython unix port, has
no threads, sockets or HTTP, and is driven by the same clock the agent uses
(``rmota.compat.VirtualClock``), so a 5-second stall costs no real time. It plugs into the
agent as its UART: ``readinto(buf, nbytes=None)`` (None when nothing is due), ``read(n)``,
``write(buf)``, ``any()``. Every call first brings the model up to the clock's time:
scheduled events run in order and the ESP's output crosses the wire at ``baud`` (10 bits
a byte), so bytes become readable only as virtual time passes.

The ESP-AT behaviour itself (commands, the RainMaker job, ``+HTTPCGET`` framing, faults)
is ``tools/espcore.py``, shared with ``tools/espat_emu.py`` (the threaded emulator with
real HTTP); this module is its virtual-time driver: the clock and scheduler, the wire
(baud, the host's receive buffer and power, RTS/CTS) and the HTTP backend, an in-memory
S3 (``Server``: Range, S3-style error bodies, server faults). The RainMaker job lives in
the "cloud" part of the model and survives ESP reboots, the pending flag does not.

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

from espcommon import (  # noqa: F401  (the wire tokens and helpers, for callers)
    BUSY,
    ERROR,
    OK,
    PRNG,
    PROMPT,
    READY,
    SET_OK,
    escape_bytes,
    notification_line,
    parse_command,
    parse_params,
    parse_range,
    presigned_url,
    record_header,
    s3_error_body,
)
from espcore import BROKEN, OPEN, SLEEP, ESPCore, Faults  # noqa: F401


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
            "end": None,
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
                req["range"], req["end"] = p
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


class _Response:
    # One GET answered by Server, as the ESP receives it: the request dict, the body
    # and when its bytes arrive.
    def __init__(self, req, t0):
        self.req = req
        self.body = req["body"]
        self.status = req["status"]
        self.t0 = t0  # time the first body byte could arrive
        self.stall_at = None  # server pause in this response: body offset, ms (None: for ever)
        self.stall_ms = None
        self.fatal = False  # the pause outlasts the network timeout


_NEVER = 1 << 62


class _SyncGuard:
    # ESPSim's public methods first bring the model up to the clock's time.
    def __init__(self, sim):
        self.sim = sim

    def __enter__(self):
        self.sim._sync()
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------
# The ESP on virtual time
# ------------------------------------------------------------------------------------------
class ESPSim(ESPCore):
    """An ESP32 with ESP-AT and RainMaker, seen from the host's UART, on ``clock``.

    ``clock``: object with ``ticks_ms()`` (monotonic, not wrapping during the run: a
    ``VirtualClock``). ``seed``: record sizes of ``AT+HTTPCGET`` (any 1..rx size).
    ``baud``: output pacing, 10 bits a byte (None: bytes are readable at once).
    ``faults``: ``Faults`` (``espcore.Faults``, times in ms); ``server``: ``Server``
    (made if not given).

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

    Observable state (besides ``espcore.ESPCore``'s: ``results``, ``job_status``, ``job``,
    ``pending``, ``url``, ``headers``, ``boots``, ``http_requests``, ``lines``,
    ``on_result``...): ``bytes_in``/``bytes_out``, ``overflows``, ``lost_host_off``
    (bytes that arrived while the host was off)."""

    BIN_NAME = b"rmota espsim"

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
        self._guard = _SyncGuard(self)
        self.server = server if server is not None else Server()
        self.rx_fifo = rx_fifo
        self.host_cts = host_cts
        self._room = None  # bytes the host can still take during host_busy()
        self.trace = [] if trace else None
        self.lines = []
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
        self._written = 0  # bytes put on the wire so far
        self._released = 0  # of them, bytes that reached the host's side
        self._marks = []  # (written count at a record's end, request dict, stream offset)
        ESPCore.__init__(
            self,
            PRNG(seed),
            faults if faults is not None else Faults(seed),
            echo=echo,
            syslog=syslog,
            wifi=wifi,
            cloud=cloud,
            baud=baud,
            rst_ms=10,
            ready_ms=reset_ms,
            wifi_ms=wifi_ms,
            cloud_ms=cloud_ms,
            fetch_notify_ms=fetch_notify_ms,
            fetch_notify_first=fetch_notify_first,
            autofetch=autofetch,
            truncated_ok=truncated_ok,
        )

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

    def _now_ms(self):
        return self._t

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

    def _after_drain(self, fn, arg):
        self._schedule(self._drain_delay(), fn, arg)

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
        self._drop_link(wifi, down_ms, self._t)

    # --- the wire -----------------------------------------------------------------------
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

    def _uart_apply(self, baud):
        if self.baud:
            self.baud = baud
            self._wire = self._bytes_at(self._t)

    def _uart_reset(self):
        d = self.uart_def
        self.baud = d[0] if d else self.baud0
        self._wire = self._bytes_at(self._t) if self.baud else 0

    # --- AT+HTTPCGET: the download, answered by Server on virtual time -------------------
    def _dl_begin(self, dl):
        # The request reaches the server and its answer starts after latency_ms.
        self._schedule(self.server.latency_ms, self._dl_resume, (dl, None))

    def _dl_abort(self):
        pass  # nothing runs outside the scheduler: a dropped download is just forgotten

    def _dl_resume(self, arg):
        # Run the download generator until it waits (espcore module docstring).
        dl, value = arg
        while dl is self._dl:
            try:
                op = dl.gen.send(value)
            except StopIteration:
                return
            kind = op[0]
            if kind == SLEEP:
                self._schedule(op[1], self._dl_resume, (dl, None))  # None: never
                return
            if kind == OPEN:
                value = self._http_open(op[1], op[2], op[3])
            else:
                value = self._dl_read(dl, op[1])
                if isinstance(value, int):  # the bytes are not there yet: wait, look again
                    self._schedule(value, self._dl_resume, (dl, None))
                    return

    def _http_open(self, url, headers, timeout_ms):
        path, gen = _url_parts(url)
        age = None
        if gen is not None and gen in self._issued:
            age = self._t - self._issued[gen]
        srv = self.server
        req = srv.get(path, headers, self._t, age)
        req["epoch"] = self._epoch
        req["faults_before"] = len(self.faults.log)  # for faultrun.refetch_stats
        r = _Response(req, self._t)
        if srv.stall_at is not None and srv.stall_at < len(r.body):
            r.stall_at = srv.stall_at
            r.stall_ms = srv.stall_ms
            srv.stall_at = None
            self.faults.log.append(("server_stall", r.stall_at))
            if timeout_ms and (r.stall_ms is None or r.stall_ms >= timeout_ms):
                r.fatal = True
        return r

    def _body_left(self, dl):
        return len(dl.resp.body) - dl.off

    def _dl_read(self, dl, n):
        # n body bytes once they have reached the ESP (an int: ms to wait first).
        r = dl.resp
        off = dl.off
        broken = False
        if r.fatal and off + n > r.stall_at:
            # The server pauses longer than the ESP's network timeout: what arrived
            # before the pause is printed, then the GET fails when the timeout ends.
            n = r.stall_at - off
            broken = True
        te = self._avail_t(r, off + n)
        if te > self._t:
            return te - self._t
        data = bytes(r.body[off : off + n])
        if broken:
            r.stall_at = _NEVER  # nothing more arrives
            return (data, BROKEN, dl.timeout_ms)
        return (data, None, 0)

    def _avail_t(self, r, k):
        # Time by which body bytes [0, k) have reached the ESP.
        t = r.t0
        rate = self.server.rate_bps
        if rate:
            t += k * 1000 // rate
        if r.stall_at is not None and k > r.stall_at:
            if r.stall_ms is None:
                return _NEVER
            t += r.stall_ms
        return t

    def _record_sent(self, dl, n):
        dl.resp.req["sent"] += n

    def _record_end(self, dl, body_end):
        # Remember where the wire will be when this record has crossed it (_reached).
        req = dl.resp.req
        start = req["start"]
        if start is not None:
            self._marks.append((self._written, req, start + body_end))
            if len(self._marks) > 64:
                self._marks.pop(0)
