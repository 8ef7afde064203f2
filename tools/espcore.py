"""The ESP-AT + RainMaker model behind both ESP emulators (one copy of the behaviour).

An ESP32 running ESP-AT with the RainMaker AT commands, as DESIGN.md section 1 describes
it, without any I/O: the command-line parser (line mode, ``>`` prompts with exactly
``<len>`` raw bytes), the command handlers, the RainMaker job (cloud side, surviving
reboots) and the ESP's RAM (lost on reboot), the Wi-Fi/cloud link URCs, the
``+HTTPCGET:<len>,<payload>\\r\\n`` framing of a download, and every fault decision
(``Faults``). It runs under CPython and the MicroPython unix port.

Two drivers subclass ``ESPCore`` and give it a clock, a wire and an HTTP backend:

- ``tools/espsim.py`` (``ESPSim``): virtual time, in-process, an in-memory S3; the fault
  campaign and its tests, under both runtimes.
- ``tools/espat_emu.py`` (``ESPEmulator``): real time, threads, a pty or serial port, a
  real ``http.client`` GET against ``tools/httpfiles.py``; the demo, the end-to-end and
  field-case tests, bench tests of a real board.

What a driver provides (all called with the driver's lock, if any, held)::

    _guard                         context manager around each public method (a lock; or
                                   one that brings virtual time up to date)
    _write(data)                   put bytes on the wire (the wire faults are applied)
    _schedule(delay_ms, fn, arg=None, boot_bound=True)
                                   run fn(arg) later (delay None: never); a boot-bound
                                   call is dropped if the ESP reboots first
    _drain_delay()                 ms until what was written has left the wire (0 when
                                   writes block until sent)
    _after_drain(fn, arg)          run fn(arg) once what was written has left the wire
    _uart_apply(baud), _uart_reset()   AT+UART_CUR/_DEF took effect; a reboot restores
    _dl_begin(dl)                  run the download generator ``dl.gen`` (see below)
    _dl_abort()                    the running download is abandoned (reboot)
    _body_left(dl)                 body bytes still to come (int), or None: unknown

The download (``AT+HTTPCGET``) is a generator that yields what it waits for; the driver
resumes it with ``dl.gen.send(value)`` while ``dl is self._dl`` (a reboot or the final
result ends it):

- ``(SLEEP, ms)``: resume with None after ``ms`` (None: never; a reboot ends it).
- ``(OPEN, url, headers, timeout_ms)``: send back a response object with ``status``
  (int), or None when the connection failed. It becomes ``dl.resp``.
- ``(READ, n)``: send back ``(data, end, wait_ms)``: up to ``n`` body bytes, ``end`` None
  (more may follow), ``EOF`` or ``BROKEN`` (the connection was cut or went idle past the
  network timeout; the ESP notices ``wait_ms`` later); or None after waiting, which makes
  the model look at the network again before asking anew.

Usage (a driver)::

    class MyESP(ESPCore):
        BIN_NAME = b"rmota mine"
        def __init__(self, ...):
            ESPCore.__init__(self, PRNG(seed), Faults(seed), ...)
        def _write(self, data): ...
"""

from espcommon import (
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
    PROMPT,
    PRNG,
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
    presigned_url,
    record_header,
)

# What a download generator yields (see the module docstring), and how a READ ends.
SLEEP = 0
OPEN = 1
READ = 2
EOF = 1
BROKEN = 2

# Record-cutting faults, in the order a tie is broken.
_CUTS = ("reboot_at_body", "silence_at_body", "stall_at_body")


# ------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------
class Faults:
    """Seeded, reproducible faults for the ESP-AT model (issues 3 and 4).

    Set attributes at construction (``Faults(seed=1, flip_body_at={100})``) or at any time
    on ``esp.faults``. Durations are in milliseconds here (``espat_emu.Faults`` takes the
    same knobs in seconds, ``_s``). ``log`` lists what fired: ``(kind, where)`` tuples.

    Offsets: *wire offsets* count the bytes the ESP meant to send since it was made
    (``esp.out_offset``, before any fault); *body offsets* count the HTTP body bytes of
    one ``AT+HTTPCGET`` attempt (from 0 at each attempt, also for a Range request).
    Body-offset faults are one-shot: each fires at the first attempt that reaches it.

    Wire (ESP -> host), what a lossy UART does:
      ``drop_at``, ``dup_at``, ``flip_at``: sets of wire offsets to drop / send twice / flip.
      ``drop_prob``, ``dup_prob``, ``flip_prob``: per-byte probabilities (float), with
      ``prob_scope`` ``"all"`` or ``"payload"`` (only payload bytes of ``+HTTPCGET``
      records) and at most ``prob_budget`` firings (None: no limit).
      ``flip_mask``: XOR mask for a flip (int), or None for one random bit.
      ``drop_body_at``, ``dup_body_at``, ``flip_body_at``: the same at body offsets (the
      record header keeps its length: a flip gives a same-length altered payload, a drop
      a record one byte short of its header). ``persist_body_faults``: these three fire
      at every attempt that reaches them instead of once (issue 4 case 2).
      ``reboot_at_out``: the ESP reboots when wire offset k is reached: bytes before k are
      sent, then ``ready``, and the RAM state is forgotten.
      ``lose_ready``: the next reboot's ``\\r\\nready\\r\\n`` is lost on the wire. One-shot.

    Download (``AT+HTTPCGET``), body offsets:
      ``reboot_at_body``: reboot after that many body bytes, in the middle of a record.
      ``truncate_body_at``: the body ends there (connection cut), and the command ends
      with ``truncate_final`` (default ``\\r\\nOK\\r\\n``: firmware before Aug 2025;
      None: ``ERROR``).
      ``silence_at_body``/``silence_ms``: output stops mid-record; the ESP stays busy that
      long (None: until a reboot), then goes idle with no final result.
      ``stall_at_body``/``stall_ms``: output pauses mid-record, then the rest follows.
      ``wifi_drop_at_body``/``wifi_down_ms``: Wi-Fi drops at the first record boundary at
      or after it (``WIFI DISCONNECT``, ``+RMDISCONNECTED``, then the GET fails with
      ``ERR CODE:0x010a7000``/``ERROR``); back after ``wifi_down_ms`` (None: only through
      ``set_connected``).
      ``cloud_drop_at_body``/``cloud_down_ms``: the same for the RainMaker cloud alone
      (the download goes on).
      ``short_record``: ``{record index: extra}``: that record's header (0-based, in the
      next download) claims ``extra`` more bytes than sent (negative: fewer). One-shot.
      ``damage_record``: ``{record index: [k, b]}``: byte ``k`` of that record's header
      (negative: of its CRLF trailer, -1 the LF) arrives as ``b`` (-1: is lost), as a
      wire fault in the record's framing would leave it. One-shot.
      ``lose_record``: record indexes (as for ``short_record``) lost whole on the wire,
      header, payload and CRLF: the host sees nothing wrong there. One-shot.
      ``mangle_final``: bytes that replace the next ``\\r\\nOK\\r\\n`` ending a download.
      ``final_extra``: bytes written in the same write right after the next download's
      final result (issue 4 case 4). Both one-shot.

    Commands:
      ``busy_next``: answer ``busy p...`` to the next N command lines (dropped), preceded
      by ``ERR CODE:0x010b0000`` when ``busy_code`` (None: when SYSLOG is on);
      ``busy_match``: bytes: only lines starting with it are refused (None: any line);
      ``busy_then_run_ms``: the refused command runs anyway that many ms later.
      ``lose_url_byte`` / ``lose_head_byte``: the k-th byte (0-based) sent after the next
      ``AT+HTTPURLCFG`` / ``AT+HTTPCHEAD`` prompt is lost: the ESP waits for one more.
      ``drop_err_code``: the next N ``ERR CODE`` lines are not printed (their ``ERROR``
      is, as with ``AT+SYSLOG=0``; issue 4 case 7).
      ``refuse_result``/``refuse_result_ms``: the next N ``AT+RMOTARESULT`` with a status
      other than 1 arrive just as the cloud drops: ``+RMDISCONNECTED``, ``ERROR``; the
      cloud is back after ``refuse_result_ms``.
      ``wifi_ota_on_fetch``: statuses printed as ``+RMOTA:<n>`` right after the next
      ``AT+RMOTAFETCH``'s ``OK``, as ``push_wifi_ota(..., map_delayed=False)`` prints them
      (issue 4 case 12). One-shot."""

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
        "persist_body_faults": False,
        "reboot_at_out": None,
        "lose_ready": False,
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
        "damage_record": dict,
        "lose_record": set,
        "mangle_final": None,
        "final_extra": None,
        "busy_next": 0,
        "busy_code": None,
        "busy_match": None,
        "busy_then_run_ms": None,
        "lose_url_byte": None,
        "lose_head_byte": None,
        "drop_err_code": 0,
        "refuse_result": 0,
        "refuse_result_ms": 2000,
        "wifi_ota_on_fetch": None,
    }

    def __init__(self, seed=0, **kw):
        self.seed = seed
        self.rng = self._make_rng(seed)
        defaults = self._DEFAULTS
        for name in defaults:
            d = defaults[name]
            setattr(self, name, d() if (d is set or d is dict) else d)
        for name in kw:
            if name not in defaults:
                raise ValueError("unknown fault %r" % (name,))
            value = kw[name]
            if isinstance(value, (list, tuple)) and name.endswith("_at"):
                value = set(value)
            setattr(self, name, value)
        self.log = []
        # Indices in ``log`` of wire faults that hit bytes outside any download (a
        # command's echo or final result): they cost no image bytes.
        self.outside = set()

    @staticmethod
    def _make_rng(seed):
        # Flips and probabilities: same draws on both runtimes.
        return PRNG(seed + 0x5EED)

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


class Download:
    """One running ``AT+HTTPCGET``: ``url`` (bytes), ``rx`` (record size limit),
    ``timeout_ms`` (network idle), ``resp`` (the driver's response, once open), ``off``
    (body bytes printed), ``idx`` (records printed), ``gen`` (the generator)."""

    def __init__(self, url, rx, timeout_ms):
        self.url = url
        self.rx = rx
        self.timeout_ms = timeout_ms
        self.resp = None
        self.off = 0
        self.idx = 0
        self.next_n = None  # size of the record being waited for
        self.gen = None


# ------------------------------------------------------------------------------------------
# The ESP
# ------------------------------------------------------------------------------------------
class ESPCore:
    """The ESP-AT model; a driver subclass gives it time, a wire and HTTP (module doc).

    ``rng``: record sizes of ``AT+HTTPCGET`` (``randint(a, b)``: any 1..rx size).
    ``faults``: ``Faults``. Options: ``echo``/``syslog`` (initial ATE and SYSLOG state; a
    reboot restores echo on, SYSLOG off), ``wifi``/``cloud`` (network and RainMaker cloud
    available at start), ``baud`` (the line rate; None: the driver does not pace),
    ``rst_ms`` (``AT+RST``'s ``OK`` to the reboot), ``ready_ms`` (reboot to ``ready``,
    input lost meanwhile; None: at once), ``wifi_ms``/``cloud_ms`` (``ready`` to ``WIFI
    GOT IP``, then to ``+RMCONNECTED``), ``fetch_notify_ms`` (the cloud's answer to
    ``AT+RMOTAFETCH`` comes that long after its ``OK``; 0: at once),
    ``fetch_notify_first`` (the notification before the ``OK``), ``autofetch`` (print a
    pending job's notification when the cloud connects), ``truncated_ok`` (a body cut
    short ends in ``OK``: firmware built before Aug 2025).

    Observable state: ``results`` (``(job_id, status, info)`` accepted by
    ``AT+RMOTARESULT``), ``job_status`` (last accepted, None before any), ``job`` (the
    cloud's unfinished job dict, or None), ``pending`` (the ESP's RAM flag), ``url``,
    ``headers``, ``uart_cur``/``uart_def``, ``boots``, ``http_requests``, ``data_log``
    (``(b"URL" or b"HEAD", bytes)`` for every block read after a prompt), ``lines``
    (command lines received), ``on_result`` (callable ``(job_id, status, info)`` called
    when a result is accepted), ``result_overflows`` (results whose JSON would not fit
    the ESP's 256 bytes)."""

    BIN_NAME = b"rmota"  # the "Bin version" AT+GMR prints
    _TRACE_FMT = "%8d %s %s"  # time, direction, escaped bytes

    def __init__(
        self,
        rng,
        faults,
        echo=True,
        syslog=False,
        wifi=True,
        cloud=True,
        baud=None,
        rst_ms=10,
        ready_ms=None,
        wifi_ms=200,
        cloud_ms=300,
        fetch_notify_ms=0,
        fetch_notify_first=False,
        autofetch=False,
        truncated_ok=False,
    ):
        self.rng = rng
        self.faults = faults
        self.baud = baud
        self.baud0 = baud  # what the ESP begins with, and returns to without UART_DEF
        self.rst_ms = rst_ms
        self.ready_ms = ready_ms
        self.wifi_ms = wifi_ms
        self.cloud_ms = cloud_ms
        self.fetch_notify_ms = fetch_notify_ms
        self.fetch_notify_first = fetch_notify_first
        self.autofetch = autofetch
        self.truncated_ok = truncated_ok
        self.respond = True  # False: script mode (espat_emu), only record the lines
        self.uart_def = None  # (baud, data bits, stop bits, parity, flow control)
        self._flow = 1  # ESP-AT default: RTS only (nothing pauses the ESP)
        self._intended = 0  # wire offset: bytes meant for the host so far
        # cloud side (survives ESP reboots)
        self.job = None
        self.results = []
        self.job_status = None
        self.result_overflows = 0
        self.on_result = None
        self.net_wifi = wifi
        self.net_cloud = cloud
        self._gen = 0  # presigned URLs issued for a path job
        self._issued = {}  # their generation -> time issued (ms)
        # ESP
        self.wifi_up = wifi
        self.cloud_up = wifi and cloud
        self.boots = 0
        self._boot_id = 0
        self.http_requests = 0
        self.data_log = []
        self._ram_reset()
        self.echo = echo
        self.syslog = syslog
        self._line = bytearray()
        self._line_over = False
        self._raw = None  # [remaining, bytearray, on_done, seen, lose_index, log kind]
        self._running = False  # a command is processing: input lines get busy p...
        self._rebooting = False
        self._dl = None
        self._rec_open = False  # a record is part-written: other output waits
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
        self.uart_cur = None
        # at_rainmaker.c: s_rm_ota_status starts as OTA_STATUS_SUCCESS (2).
        self._last_rmota = 2

    # --- driver hooks with a default ----------------------------------------------------
    def _now_ms(self):
        return 0

    def _note_line(self, line):
        self.lines.append(line)

    def _record_sent(self, dl, n):
        pass  # n more body bytes of dl are being printed

    def _record_end(self, dl, body_end):
        pass  # a whole record of dl, up to body offset body_end, was written

    # --- public: the cloud's and the test's side ----------------------------------------
    @property
    def out_offset(self):
        """The current wire offset (int): bytes meant for the host so far, before faults."""
        return self._intended

    def push_job(self, url, size, fw_version, job_id, passive=True):
        """Create a host-MCU OTA job in the cloud (it stays until a result of 2 or 5).

        ``url``: a whole URL (str, kept as is), or a path on the model's server
        (``"/fw.img"``: every notification then carries a fresh presigned-style URL of
        1,083 characters). ``size`` (int, bytes), ``fw_version`` (str or None: printed as
        the literal ``null``), ``job_id`` (str). With ``passive`` and the cloud connected,
        the ESP prints ``+RMFWNOTIFY:0,<size>,<url>,<fw_version>,<job_id>`` unsolicited
        and the job is pending. Returns the notification line (bytes, ``\\r\\n``
        included)."""
        with self._guard:
            self.job = {"url": url, "size": int(size), "fw_version": fw_version, "job_id": job_id}
            if passive and self.cloud_up and not self._rebooting:
                return self._notify()
            return self._notification(False)

    def renotify(self):
        """The cloud sends the open job's notification again (as a URC, with a fresh URL),
        if the cloud is connected and the ESP is up. Returns True when it was printed."""
        with self._guard:
            if self.job is None or not self.cloud_up or self._rebooting:
                return False
            self._notify()
            return True

    def push_wifi_ota(self, statuses, map_delayed=True):
        """Report the ESP's own OTA progress as ``+RMOTA:<n>`` URCs (at_rainmaker.c
        ``rmaker_response_result``): a status equal to the last printed is suppressed,
        nothing is printed (nor remembered) while a host job is pending, and the delayed
        event (4) prints 5 — and, as in the source, is compared against 4, so it repeats.
        ``map_delayed=False`` prints each number as given (e.g. 4 or 9, issue 4 case 12).
        Returns the list of printed numbers."""
        with self._guard:
            return self._wifi_ota(statuses, map_delayed)

    def _wifi_ota(self, statuses, map_delayed):
        printed = []
        for s in statuses:
            shown = 5 if (s == 4 and map_delayed) else s
            if self.pending or self._last_rmota == s:
                continue
            self._out(b"+RMOTA:%d\r\n" % shown)
            self._last_rmota = shown
            printed.append(shown)
        return printed

    def set_connected(self, wifi=None, cloud=None):
        """Make the network (``wifi``) and the RainMaker cloud (``cloud``) available or not,
        printing what ESP-AT prints on each transition: ``WIFI DISCONNECT``,
        ``+RMDISCONNECTED``, ``WIFI CONNECTED`` + ``WIFI GOT IP``, ``+RMCONNECTED``. While
        the cloud is down ``AT+RMOTAFETCH`` and ``AT+RMOTARESULT`` answer ERROR; while
        Wi-Fi is down a running download fails."""
        with self._guard:
            self._set_connected(wifi, cloud)

    def reboot(self):
        """Reboot the ESP now (power glitch, watchdog, ``+RMREBOOT``): a running download
        stops where it is, ``ready`` follows (after ``ready_ms``); the RAM state (URL,
        headers, echo, SYSLOG, UART_CUR, pending flag) is lost. Wi-Fi and the cloud come
        back after ``wifi_ms`` and ``cloud_ms``."""
        with self._guard:
            self._reboot_now()

    def emit(self, data):
        """Write ``data`` (bytes) to the host exactly, with no fault applied."""
        with self._guard:
            self._write(bytes(data))

    def format_trace(self):
        """The exchange so far as text: one ``H>``/``E<`` line per write, bytes escaped
        (regression material only: DESIGN.md section 6)."""
        lines = []
        for t, d, data in self.trace or ():
            lines.append(self._TRACE_FMT % (t, d, escape_bytes(data)))
        return "\n".join(lines) + "\n"

    # --- output ---------------------------------------------------------------------------
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
        if not (f.drop_prob or f.dup_prob or f.flip_prob):
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
        keep = f.persist_body_faults
        n_log = len(f.log)
        out = bytearray()
        for i in range(n):
            b = data[i]
            pos = base + i
            in_payload = span is not None and span[0] <= i < span[1]
            body = span[2] + i - span[0] if in_payload else None
            prob_ok = f.prob_scope != "payload" or in_payload
            if pos in f.drop_at or (body is not None and body in f.drop_body_at):
                f.drop_at.discard(pos)
                if not keep:
                    f.drop_body_at.discard(body)
                f.log.append(("drop", pos))
                continue
            if prob_ok and f._prob(f.drop_prob):
                f.log.append(("drop", pos))
                continue
            if pos in f.flip_at or (body is not None and body in f.flip_body_at):
                f.flip_at.discard(pos)
                if not keep:
                    f.flip_body_at.discard(body)
                f.log.append(("flip", pos))
                b = f._flip(b)
            elif prob_ok and f._prob(f.flip_prob):
                f.log.append(("flip", pos))
                b = f._flip(b)
            out.append(b)
            if pos in f.dup_at or (body is not None and body in f.dup_body_at):
                f.dup_at.discard(pos)
                if not keep:
                    f.dup_body_at.discard(body)
                f.log.append(("dup", pos))
                out.append(b)
            elif prob_ok and f._prob(f.dup_prob):
                f.log.append(("dup", pos))
                out.append(b)
        if self._dl is None:
            for k in range(n_log, len(f.log)):
                f.outside.add(k)
        return bytes(out)

    def _final_ok(self):
        return self._out(OK)

    def _error(self, code=ERR_EXEC_FAIL):
        # ERROR, preceded by ERR CODE:<code> with SYSLOG on (code None: never).
        if self.syslog and code is not None:
            f = self.faults
            if f.drop_err_code > 0:
                f.drop_err_code -= 1
                f.log.append(("drop_err_code", code))
            elif not self._out(b"ERR CODE:0x%08x\r\n" % code):
                return False
        return self._out(ERROR)

    def _busy_reply(self, with_code=None):
        if with_code is None:
            with_code = self.syslog
        if with_code:
            self._out(b"ERR CODE:0x%08x\r\n" % ERR_PROCESSING)
        self._out(BUSY)

    # --- reboots, links, the job --------------------------------------------------------
    def _reboot_now(self):
        self._boot_id += 1
        self.boots += 1
        self._dl_abort()
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
        self._flow = d[4] if d else 1
        self._uart_reset()
        self.wifi_up = False
        self.cloud_up = False  # s_rm_connect_status starts OFF: +RMCONNECTED will print
        self._rebooting = True  # input is lost until ready
        if self.ready_ms is None:
            self._boot_done(None)
        else:
            self._schedule(self.ready_ms, self._boot_done)

    def _boot_done(self, _):
        self._rebooting = False
        f = self.faults
        f.log.append(("ready", self._intended))
        if f.lose_ready:
            f.lose_ready = False  # lost on the wire: the host never sees it
            f.log.append(("lose_ready", self._intended))
            self._intended += len(READY)
        else:
            self._out(READY)
        if self.net_wifi:
            self._schedule(self.wifi_ms, self._links_step)

    def _set_connected(self, wifi=None, cloud=None):
        if wifi is not None:
            self.net_wifi = bool(wifi)
        if cloud is not None:
            self.net_cloud = bool(cloud)
        if not self._rebooting:
            self._sync_links()

    def _drop_link(self, wifi, down_ms, where):
        # Wi-Fi (wifi True) or only the cloud goes down, back after down_ms (None: never).
        self.faults.log.append(("wifi_drop" if wifi else "cloud_drop", where))
        if wifi:
            self._set_connected(wifi=False)
        else:
            self._set_connected(cloud=False)
        self._schedule(down_ms, self._net_back, wifi, False)

    def _net_back(self, wifi):
        if wifi:
            self._set_connected(wifi=True)
        else:
            self._set_connected(cloud=True)

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

    def _notification(self, issue=True):
        # The job's +RMFWNOTIFY line. A path job gets a fresh presigned URL each time it
        # is issued (its time kept, so the server can tell its age).
        j = self.job
        url = j["url"]
        if url.startswith("/"):
            gen = self._gen + 1
            if issue:
                self._gen = gen
                self._issued[gen] = self._now_ms()
            url = presigned_url(url, gen)
        return notification_line(j["size"], url, j["fw_version"], j["job_id"])

    def _notify(self):
        # at_rainmaker.c rmaker_ota_handle: print the line in one write, set the flag.
        line = self._notification()
        self._out(line)
        self.pending = True
        return line

    def _notify_if_connected(self, _):
        if self.job is not None and self.cloud_up:
            self._notify()

    # --- input ------------------------------------------------------------------------
    def _on_input(self, data):
        # Bytes from the host: command lines, or raw bytes after a '>' prompt.
        i, n = 0, len(data)
        while i < n:
            if self._rebooting:
                return  # the ESP is restarting: bytes are lost
            raw = self._raw
            if raw is not None and self.respond:
                # After a '>' prompt: exactly <len> raw bytes, waiting forever for them.
                while i < n and raw[0] > 0:
                    b = data[i]
                    i += 1
                    seen = raw[3]
                    raw[3] += 1
                    if seen == raw[4]:
                        self.faults.log.append((raw[5], seen))
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
        self._note_line(line)
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

    def _raw_len(self, form, args, len_min, len_max):
        # <len> of AT+HTTPURLCFG=<len> / AT+HTTPCHEAD=<len>: 0 (clear) or len_min..len_max.
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        (n,) = self._ints(args, 1, 1)
        if n != 0 and (n is None or not (len_min <= n <= len_max)):
            raise ParamError(ERR_PARA_INVALID)
        return n

    def _read_raw(self, n, on_done, lose_fault):
        # Print the prompt, then read exactly n raw bytes; the one-shot fault lose_fault
        # (a Faults knob name: the index of a byte lost on the wire) is used up here.
        f = self.faults
        lose = getattr(f, lose_fault)
        setattr(f, lose_fault, None)
        self._raw = [n, bytearray(), on_done, 0, lose, lose_fault]
        self._out(PROMPT)

    # --- commands -----------------------------------------------------------------------
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
        self._schedule(self.rst_ms, self._rst_now)

    def _rst_now(self, _):
        self._reboot_now()

    def _cmd_gmr(self, name, form, args):
        if form != "exe":
            raise ParamError(ERR_UNSUPPORTED)
        self._out(
            b"AT version:4.0.0.0-emulator(rmota)\r\nSDK version:emulated\r\n"
            b"compile time:-\r\nBin version:" + self.BIN_NAME + b"\r\n"
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
        cur = name == b"+UART_CUR"
        if form == "query":
            vals = self.uart_cur if cur else self.uart_def
            if vals is None and cur:
                vals = (self.baud or 115200, 8, 1, 0, self._flow)
            elif vals is None:
                vals = (self.baud0 or 115200, 8, 1, 0, 1)
            self._out(b"%s:%d,%d,%d,%d,%d\r\n" % ((name,) + tuple(vals)))
            self._final_ok()
            return
        if form != "set":
            raise ParamError(ERR_UNSUPPORTED)
        vals = tuple(self._ints(args, 5, 5))
        if None in vals or vals[4] not in (0, 1, 2, 3):
            raise ParamError(ERR_PARA_INVALID)
        if not cur:
            self.uart_def = vals
        self.uart_cur = vals
        self._final_ok()
        # the new settings apply once the OK has left the wire
        self._after_drain(self._uart_set, vals)

    def _uart_set(self, vals):
        self._flow = vals[4]
        self._uart_apply(vals[0])

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
        f = self.faults
        statuses, f.wifi_ota_on_fetch = f.wifi_ota_on_fetch, None
        if statuses:
            f.log.append(("wifi_ota_on_fetch", tuple(statuses)))
            self._wifi_ota(statuses, False)
        if self.job is not None:
            if self.fetch_notify_ms:
                self._schedule(self.fetch_notify_ms, self._notify_if_connected)
            else:
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
        jid = job_id.decode("utf-8", "replace")
        text = info.decode("utf-8", "replace")
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
        n = self._raw_len(form, args, URL_LEN_MIN, URL_LEN_MAX)
        if n:
            self._read_raw(n, self._url_done, "lose_url_byte")
        else:
            self.url = None
            self._final_ok()

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
            for i in range(len(self.headers)):
                self._out(b'+HTTPCHEAD:%d,"%s"\r\n' % (i, self.headers[i]))
            self._final_ok()
            return
        n = self._raw_len(form, args, 1, HEAD_LEN_MAX)
        if n:
            self._read_raw(n, self._head_done, "lose_head_byte")
        else:
            self.headers = []
            self._final_ok()

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
        dl = Download(url, rx, timeout_ms)
        dl.gen = self._download(dl)
        self._dl = dl
        self._dl_begin(dl)

    # --- AT+HTTPCGET ----------------------------------------------------------------------
    def _download(self, dl):
        """The body of one ``AT+HTTPCGET`` (a generator the driver runs): body first, as
        records of 1..rx bytes; the HTTP status decides the final result afterwards."""
        f = self.faults
        if not self.wifi_up:
            self._dl_finish(dl, None, ERR_HTTP)  # connection failed
            return
        resp = yield (OPEN, dl.url, list(self.headers), dl.timeout_ms)
        if resp is None:
            self._dl_finish(dl, None, ERR_HTTP)  # connection failed
            return
        dl.resp = resp
        while True:
            # Link faults fire at a record boundary.
            w = f.wifi_drop_at_body
            if w is not None and dl.off >= w:
                f.wifi_drop_at_body = None
                self._drop_link(True, f.wifi_down_ms, dl.off)
            w = f.cloud_drop_at_body
            if w is not None and dl.off >= w:
                f.cloud_drop_at_body = None
                self._drop_link(False, f.cloud_down_ms, dl.off)
            if not self.wifi_up:
                self._dl_finish(dl, None, ERR_HTTP)
                return
            left = self._body_left(dl)
            if left == 0:
                break
            # Record sizes come from the seeded RNG (any 1..rx), so a transfer is
            # reproducible; a timeout or a cut still delivers what had arrived.
            n = dl.next_n
            if n is None:
                n = self.rng.randint(1, dl.rx)
                if left is not None and n > left:
                    n = left
                dl.next_n = n
            got = yield (READ, n)
            if got is None:
                continue  # the driver waited for the bytes: look at the network again
            dl.next_n = None
            data, end, wait_ms = got
            off = dl.off
            truncated = False
            t = f.truncate_body_at
            if t is not None and off + len(data) >= t:
                f.truncate_body_at = None
                f.log.append(("truncate_body", t))
                data = data[: max(0, t - off)]
                truncated = True
            if data:
                done = yield from self._record(dl, data)
                if not done:
                    return  # rebooted or silenced mid-record
            if truncated:
                # The connection ended early; firmware before Aug 2025 still says OK
                # (truncate_final None: ERROR, as later firmware answers).
                self._dl_finish(dl, f.truncate_final, ERR_HTTP)
                return
            if end == BROKEN:
                if wait_ms:
                    yield (SLEEP, wait_ms)  # until the ESP's network-idle timeout
                if not self.truncated_ok:
                    self._dl_finish(dl, None, ERR_HTTP)
                    return
                break  # firmware that takes a cut body as done
            if end == EOF:
                break
            yield (SLEEP, self._drain_delay())
        status = resp.status
        if status >= 400:
            # Body first, status afterwards: ERR CODE carries it (0x010a7193 for 403).
            self._dl_finish(dl, None, ERR_HTTP | (status & 0xFFF))
            return
        final = OK
        if f.mangle_final is not None:
            final, f.mangle_final = f.mangle_final, None
            f.log.append(("mangle_final", final))
        if f.final_extra is not None:
            final, f.final_extra = final + f.final_extra, None
            f.log.append(("final_extra", final))
        self._dl_finish(dl, final)

    def _record(self, dl, data):
        """Write one ``+HTTPCGET:<len>,<payload>\\r\\n`` record in one piece, with the
        record-level faults (a generator: a stall or silence waits). Returns False when
        the download must end here without a final result (reboot, silence)."""
        f = self.faults
        base = dl.off
        idx = dl.idx
        dl.off = base + len(data)
        dl.idx = idx + 1
        if idx in f.lose_record:
            # the whole record lost on the wire, header and all: nothing tells the host
            f.lose_record.discard(idx)
            f.log.append(("lose_record", idx))
            self._record_sent(dl, len(data))
            self._record_end(dl, base + len(data))
            return True
        extra = f.short_record.pop(idx, 0)
        if extra:
            f.log.append(("short_record", idx))
        hdr = record_header(len(data) + extra)
        trailer = b"\r\n"
        dmg = f.damage_record.pop(idx, None)
        if dmg is not None:
            # one byte of the record's framing altered (or lost, -1) on the wire
            f.log.append(("damage_record", idx))
            k, b = dmg
            part = bytearray(trailer if k < 0 else hdr)
            k = k % len(part)
            if b < 0:
                part = part[:k] + part[k + 1 :]
            else:
                part[k] = b
            if dmg[0] < 0:
                trailer = bytes(part)
            else:
                hdr = bytes(part)
        rec = hdr + data + trailer
        span = (len(hdr), len(hdr) + len(data), base)
        end = base + len(data)
        cut = None
        for kind in _CUTS:
            v = getattr(f, kind)
            if v is not None and base <= v < end and (cut is None or v < cut[0]):
                cut = (v, kind)
        if cut is None:
            self._record_sent(dl, len(data))
            if not self._out(rec, span, True):
                return False
            self._record_end(dl, end)
            return True
        at, kind = cut
        setattr(f, kind, None)
        f.log.append((kind, at))
        p = len(hdr) + at - base
        self._record_sent(dl, at - base)
        self._rec_open = True
        if not self._out(rec[:p], span, True):
            return False
        if kind == "reboot_at_body":
            self._reboot_now()
            return False
        if kind == "silence_at_body":
            # Mid-record silence: stay busy, then idle with no final result.
            yield (SLEEP, f.silence_ms)
            self._dl = None
            self._running = False
            self._close_record()
            return False
        # stall_at_body: the rest of the record follows after stall_ms.
        self._record_sent(dl, end - at)
        yield (SLEEP, f.stall_ms)
        if not self._out(rec[p:], (0, max(0, span[1] - p), at), True):
            return False
        self._record_end(dl, end)
        self._close_record()
        return True

    def _dl_finish(self, dl, final, code=None):
        # The final result of download dl; final None means ERROR (ERR CODE:<code>).
        if dl is not self._dl:
            return
        self._dl = None
        self._running = False
        if final is None:
            self._error(code)
        else:
            self._out(final)
