"""The host-MCU OTA agent: notification → download → verify → commit → reboot → confirm.

Protocol (ESP-AT RainMaker AT commands and HTTP AT commands; DESIGN.md section 1):

1. ``+RMFWNOTIFY:<type>,<size>,<url>,<fw_version>,<job_id>`` arrives as a URC, or after
   ``AT+RMOTAFETCH``.
2. ``AT+RMOTARESULT=0,"<job>",1,"<info>"`` (in progress).
3. ``AT+HTTPURLCFG=<len>`` → ``>`` → URL bytes → ``SET OK``; checked with
   ``AT+HTTPURLCFG?`` before use.
4. ``AT+HTTPCGET="",<tx>,<rx>,<timeout ms>`` → ``+HTTPCGET:<n>,<bytes>`` records → ``OK``.
   A resumed attempt first sets ``AT+HTTPCHEAD`` ``Range: bytes=N-`` with a small
   overlap of bytes already written, and clears it with ``AT+HTTPCHEAD=0``.
5. The first 64 bytes are the rmota image header (DESIGN.md section 5): checked before
   anything is erased. The payload streams into the inactive slot with a rolling
   SHA-256; the slot is read back and hashed again; only then the board commits.
6. The board reboots; the new image runs on trial; ``confirm()``; status 2.

Failures report 3 (transient: download error, timeout, short image) or 5 (permanent:
the image is refused), always with a short reason in ``<info>``.

Run model: ``poll()`` does a bounded amount of work (one UART read, one step of the job)
and returns; ``run()`` loops over it. The application keeps using the same ``ATLink``.

Usage::

    agent = HostOTA(link, board, progress=lambda done, total: None)
    agent.run(until_idle=True)      # or call agent.poll() from your own loop
"""

import gc
from binascii import hexlify, unhexlify

from .at import (
    URC_FRAMING,
    URC_FWNOTIFY,
    URC_READY,
    URC_RM,
    URC_RMOTA,
    URC_UNKNOWN,
    URC_WIFI,
    quote,
)
from .errors import ImageError, LinkError, ProtocolError, describe_err_code, http_status_of
from .image import HEADER_SIZE, ImageHeader
from .log import Logger
from .urc import (
    STATUS_NAMES,
    OTA_DELAYED,
    OTA_FAILED,
    OTA_IN_PROGRESS,
    OTA_REJECTED,
    OTA_SUCCEEDED,
    fwnotify_job_id,
    parse_fwnotify,
    parse_rmota,
)
from .writer import SlotWriter


_WAIT_MAX = 1 << 29  # ms: the longest wait ticks_diff() measures on every port


def _pick(arg, settings, name, default, lo=0, hi=_WAIT_MAX):
    # A wait or limit: the constructor argument, else the board setting, else default;
    # an int in lo..hi, else a ValueError naming it (a bad value, e.g. a string from
    # JSON, must fail here and not in every cycle).
    v = arg if arg is not None else settings.get(name)
    if v is None:
        v = default
    if v is not None and not _is_int(v, lo, hi):
        raise ValueError("%s must be an int in %d..%d, not %r" % (name, lo, hi, v))
    return v


_PROBE = 64  # bytes of each attempt checked before anything is written
_OVERLAP = 16  # bytes already written that a resumed attempt asks for again
_NARROW_MIN = 1024  # the narrowest window (each way, bytes) the check of the bytes ahead tries
# What follows a download's last record on the wire: its CRLF, then the final result.
_FRAMING = b"\r\n\r\nOK\r\n"
_INFO_MAX = 80  # AT+RMOTARESULT builds JSON in a 256-byte buffer: keep <info> short
_RESULT_JSON_MAX = 256  # bytes of the result JSON buffer (see _JSON_FIXED)
_CMD_MAX = 256  # one AT command line, CR LF included (DESIGN.md section 1, Framing)
# AT+RMOTARESULT's JSON without the job id and <info>, with the longest status word
# ("in-progress"); ESP-AT's at_rainmaker.c builds it in a 256-byte buffer (DESIGN.md
# section 1, Result).
_JSON_FIXED = len('{"ota_job_id":"","status":"in-progress","additional_info":""}')
_FETCH_TRIES = 3  # AT+RMOTAFETCH for a notification the parser refuses (_fetch)
_INFO_MIN = 20  # <info> a job's result must have room for ("v4294967295 running": 19)
# The same image of a job rolled back this many times is refused (5): one that never
# gets to confirm would be downloaded and committed again on every notification.
# Fewer are 3 (a power cut in the trial boot rolls back too).
_ROLLBACKS_MAX = 3
# The longest the agent waits for an application command in flight (ms): ESP-AT's
# slowest commands (AT+CWJAP, HTTP) answer well within it.
_APP_WAIT_MS = 60000


def _declared_len(raw):
    """The file size (bytes) an image header ``raw`` (64 bytes) declares, or -1 when
    ``raw`` is no header (``ImageHeader.parse`` refuses it)."""
    try:
        h = ImageHeader.parse(raw)
    except ImageError:
        return -1
    return h.header_len + h.payload_len


def info_room(job_id):
    """Bytes of ``<info>`` a result for ``job_id`` (str) can carry: fewer than
    ``_INFO_MAX`` (80), within one 256-byte ``AT+RMOTARESULT`` command line (CR LF
    included, the job id quoted) and the ESP's 256-byte result JSON (DESIGN.md section 1,
    Framing and Result). Below ``_INFO_MIN`` (or negative) the job id is too long for
    any result."""
    j = job_id.encode()
    cmd = _CMD_MAX - len(b"AT+RMOTARESULT=0,,3,\r\n") - len(quote(j)) - 2
    js = _RESULT_JSON_MAX - 1 - _JSON_FIXED - len(j)
    room = _INFO_MAX - 1
    return min(room, cmd, js)


def clip_info(info, room=_INFO_MAX - 1):
    """``info`` (str) shortened so that ``quote(info)`` holds at most ``room`` bytes
    between its quotes (default 79: fewer than ``_INFO_MAX`` characters; see
    ``info_room()``): unchanged when it fits, else cut at a word boundary where one is
    near and ended with ``...``."""
    if len(quote(info)) - 2 <= room:
        return info
    keep = room - 3
    while keep > 0:
        cut = info.rfind(" ", 0, keep + 1)
        if cut < keep // 2:
            cut = keep
        out = info[:cut].rstrip(" ,:;(") + "..."
        if len(quote(out)) - 2 <= room:
            return out
        keep -= 1
    return info[: max(room, 0)]


def _rollbacks(rec, job_id):
    # ``[sha256 hex, n]``: the image of job ``job_id`` that rolled back n times, as a
    # journal record (download, commit, or the one kept after a rollback) carries it;
    # None when it carries none (or damage).
    if rec and rec.get("stage") == "report" and isinstance(rec.get("download"), dict):
        rec = rec["download"]  # (kept behind another job's result still to deliver)
    rb = rec.get("rb") if rec and rec.get("job") == job_id else None
    if isinstance(rb, list) and len(rb) == 2 and isinstance(rb[0], str):
        if _is_int(rb[1], 1, _ROLLBACKS_MAX):
            return rb
    return None


def _is_int(v, lo, hi):
    # v is an int (not a bool) within lo..hi: a journal field that JSON may have
    # brought back as anything.
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


# Modes of one download attempt.
_M_PROBE = 0  # collecting the first bytes to decide what this response is
_M_WRITE = 1  # bytes go to the slot
_M_DISCARD = 2  # bytes that are not our image (an error page, garbage): drop


class Attempt:
    """Bookkeeping of one ``AT+HTTPCGET``: ``req`` (stream offset asked for), ``overlap``
    (bytes of it we already hold), ``acc0`` (stream offset held when it started),
    ``received`` (bytes), ``pos`` (stream offset of the next byte), ``mode``, ``frame_errors``,
    ``cmd`` (the link ``Command``), ``reject`` (an ``ImageError`` found in the header,
    acted on only if the attempt ends ``OK``)."""

    def __init__(self, req, overlap, acc0):
        self.req = req
        self.overlap = overlap
        self.acc0 = acc0
        self.received = 0
        self.probed = 0
        self.pos = 0
        self.mode = _M_PROBE
        self.too_long = False
        self.last_ms = 0
        self.frame_errors = 0
        self.stalled = False  # a record stopped arriving, and could not be a hole
        self.stall_seen = False  # a record stopped arriving (the link's inactivity timeout)
        self.gapped = False  # a record was lost and the bytes after it written ahead
        self.confirmed = False  # ... and the response ended exactly where it should
        self.unverified = False  # ... before the Range's overlap was checked
        self.gaps = 0  # holes this response opened
        self.junk_ok = False  # a stalled record became a hole: its tail may still come
        self.hole0 = 0  # the writer's hole when it began
        self.past_end = False  # bytes after a hole ran past the image's end
        self.overlap_bad = False  # a Range response whose overlap differs from ours
        self.new_header = False  # a full response whose header is not the one we hold
        self.want = None  # bytes a whole response holds (None: the announced size)
        # Stream offset of the last record when it ended in "\r\nready" (-1: it did
        # not): an ESP that rebooted 7 bytes before that record's end printed them, and
        # ready's CRLF passed for the record's. Dropped if no final result follows.
        self.suspect = -1
        self.limit = 0  # stream offset where the response asked for ends
        self.over_limit = False  # a response from 0 went on past it
        self.window_full = False  # window mode: the window filled, the rest not taken
        self.overflow = False  # a record ran past the end (its tail dropped)
        self.overflow_framing = False  # ... and its tail was only CRLF / final result
        self.cmd = None
        self.reject = None


class _Grab:
    """A link sink that keeps the first bytes of a response's records in ``buf``:
    ``n`` (bytes received), ``bad`` (a frame error), ``last_ms`` (the latest record)."""

    def __init__(self, buf, clock):
        self.buf = buf
        self.n = 0
        self.bad = False
        self.clock = clock
        self.last_ms = clock.ticks_ms()

    def record(self, mv):
        k = len(self.buf) - self.n
        if k > 0:
            self.buf[self.n : self.n + min(k, len(mv))] = mv[:k]
        self.n += len(mv)
        self.last_ms = self.clock.ticks_ms()

    def frame_error(self, reason):
        self.bad = True


def _ends_ready(mv, n):
    # The n bytes of mv end in "\r\nready" (compared in place: nothing allocated).
    for k in range(7):
        if mv[n - 7 + k] != _READY_TAIL[k]:
            return False
    return True


_READY_TAIL = b"\r\nready"


class HostOTA:
    """The agent. ``link``: an ``rmota.at.ATLink``; ``board``: a board profile (see
    docs/interfaces.md: ``inactive_slot()``, ``commit()``, ``reboot()``,
    ``boot_state()``, ``confirm()``, ``journal``, ``settings``, ``board_id``).

    ``progress(done, total)`` (bytes) is called as the payload is written; an exception
    from it is logged once per job and counted in ``progress_errors``, never a failure.
    ``on_esp_ready(link)`` is called after the agent re-initialised an ESP that rebooted
    (``ready``, or its own ``AT+RST`` after ``+RMOTA:2``/``+RMRESET``): the RainMaker
    node set-up (``AT+RMNODEINIT``, devices, ``AT+RMCONN``) is the application's and must
    be sent again; the hook may use ``link.command()``. Its exceptions are logged.
    ``max_attempts``: failed download attempts before the job is reported 3.
    ``backoff_ms``: first retry delay (doubles, capped at ``backoff_max_ms``).

    Waits, in ms. Each comes from the constructor argument, else the board setting of
    the same name (``board.settings``, so a board profile or ``RMOTA_SETTINGS`` on the
    desktop can shorten them), else the default shown:

    - ``fetch_wait_ms`` (5000): after ``AT+RMOTAFETCH``'s ``OK``, how long a notification
      may take (the cloud answers asynchronously);
    - ``link_wait_ms`` (60000): how long to wait for Wi-Fi and the cloud to come back;
    - ``prompt_ms`` (1000): how long a ``>`` may take after ``AT+HTTPURLCFG=<n>`` /
      ``AT+HTTPCHEAD=<n>``, also after ``busy p...`` (ESP-AT may prompt late);
    - ``data_ms`` (1000): after the last data byte, how long ``SET OK``/``OK`` may take
      (plus the bytes' time on the wire at the board's ``baud``); then the ESP is
      taken to be still waiting for lost bytes and is padded with NULs;
    - ``pad_ms`` (200): the wait after each batch of NUL padding;
    - ``quiet_ms`` (1500): every byte of the image is in but no final result came (a
      mangled ``OK``): after this much silence the image is judged by its digest;
    - ``settle_ms`` (1000): after a record stalled and could not become a hole, how
      much longer to wait for the ESP's final result or ``ready`` before
      resynchronising with ``AT``;
    - ``record_idle_ms``: sets ``link.record_idle_ms`` (the payload-mode inactivity
      timeout, ``rmota.at.ATLink``) when given. During a download a record that
      pauses is held up to the stall bound (``http_timeout_ms`` + 2 s + one record's
      wire time) unless its bytes so far show the ESP rebooted or finished.
    Counters for post-mortems: ``attempts``, ``resumes``, ``refetches``,
    ``bytes_received``, ``bytes_refetched``, ``relocations`` (times the bytes written
    ahead of a hole were moved to their place), ``errors``; ``last_error`` (str); ``result`` ((status,
    info) of the last job reported, or None).
    """

    def __init__(
        self,
        link,
        board,
        progress=None,
        log=None,
        max_attempts=None,
        backoff_ms=None,
        backoff_max_ms=None,
        fetch_wait_ms=None,
        link_wait_ms=None,
        prompt_ms=None,
        data_ms=None,
        pad_ms=None,
        quiet_ms=None,
        settle_ms=None,
        record_idle_ms=None,
        on_esp_ready=None,
    ):
        s = board.settings
        self.link = link
        self.board = board
        self.clock = link.clock
        self.progress = progress
        self.progress_errors = 0  # exceptions the progress callback raised
        self._progress_logged = False  # (the first of each job is logged)
        self.log = log or Logger("rmota")
        # AT+HTTPCGET's ranges (ESP-AT: sizes 0..10240 bytes, timeout 0..180000 ms): a
        # value outside is an ERROR on every job, a 3 for what is a board's mistake.
        self.rx_size = _pick(None, s, "rx_size", 2048, 1, 10240)
        self.tx_size = _pick(None, s, "tx_size", 2048, 1, 10240)
        self.http_timeout_ms = _pick(None, s, "http_timeout_ms", 10000, 0, 180000)
        self.allow_raw = s.get("allow_raw", False)
        # How flash writes and the download share the host (issue 3, "UART overflow";
        # numbers in tools/bench.py): "stream" erases and programs as blocks fill while
        # the ESP keeps sending; "pre_erase" erases the image's blocks before the
        # download, so only programs happen meanwhile; "window" receives a Range window
        # of ``window_size`` bytes into RAM and writes it while the ESP is idle.
        self.flash_mode = s.get("flash_mode", "stream")
        if self.flash_mode not in ("stream", "pre_erase", "window"):
            raise ValueError("flash_mode must be stream, pre_erase or window")
        self.window_size = _pick(None, s, "window_size", 12288, 1, 1 << 20)
        self.prog_chunk = s.get("prog_chunk")
        # Bytes erased at once (one block-erase command where the slot's bdev has
        # ``erase_blocks``); "header_first" (default True): a new download fetches the
        # 64-byte header alone first. Nothing may be written before the header is
        # checked, so a record lost before it would cost the rest of the response
        # (issue 3: at most one erase block plus one record fetched twice); a refused
        # header is confirmed with another 64 bytes, not a second whole file; and the
        # journal's record of the download is written while the ESP is idle.
        self.erase_unit = _pick(None, s, "erase_unit", 0, 0, 1 << 24)
        hf = s.get("header_first")
        self.header_first = True if hf is None else bool(hf)
        self._max_data = s.get("line_max", 2048)
        # Checked here, not at the first job: a bad value must not fail every job.
        slot = getattr(board, "inactive_slot", None)
        try:
            bs = slot().bdev.ioctl(5, 0) if slot is not None else 4096
        except OSError:
            bs = 4096  # no slot to update now: each job says so (_target_slot)
        if self.erase_unit % bs:
            raise ValueError("erase_unit must be a multiple of the block size (%d)" % bs)
        pc = self.prog_chunk
        if pc is not None and (not _is_int(pc, 256, bs) or pc % 256 or bs % pc):
            raise ValueError("prog_chunk must be a multiple of 256 dividing %d" % bs)
        _pick(None, s, "crc_span", None, 1, bs // 2)  # (SlotWriter's, checked here)
        self.flow_control = s.get("flow_control", False)
        self.baud = _pick(None, s, "baud", 115200, 1, 1 << 24)
        self.windows = 0
        self._journal_due = False  # window mode: the header is journalled with the window
        self._url_held = None  # the URL the ESP holds (AT+HTTPURLCFG), None: unknown
        if self.rx_size > len(link.parser._rec):
            raise ValueError("rx_size above the link's record_max")
        self.max_attempts = _pick(max_attempts, s, "max_attempts", 6, 1)
        self.backoff_ms = _pick(backoff_ms, s, "backoff_ms", 500, 1)
        self.backoff_max_ms = _pick(backoff_max_ms, s, "backoff_max_ms", 30000)
        self.fetch_wait_ms = _pick(fetch_wait_ms, s, "fetch_wait_ms", 5000)
        self.link_wait_ms = _pick(link_wait_ms, s, "link_wait_ms", 60000)
        self.prompt_ms = _pick(prompt_ms, s, "prompt_ms", 1000, 1)
        self.data_ms = _pick(data_ms, s, "data_ms", 1000, 1)
        self.pad_ms = _pick(pad_ms, s, "pad_ms", 200)
        self.quiet_ms = _pick(quiet_ms, s, "quiet_ms", 1500)
        self.settle_ms = _pick(settle_ms, s, "settle_ms", 1000)
        record_idle_ms = _pick(record_idle_ms, s, "record_idle_ms", None, 1)
        if record_idle_ms:
            link.record_idle_ms = record_idle_ms
        self._line_baud = self.baud
        self._echo_off = False  # we turned echo off (ATE0) since the ESP last booted
        self._need_refetch = False  # the ESP rebooted: its pending-job flag is gone
        self._refetching = False
        self._running_job = None  # job id of the job being worked on
        self._rejected_hdr = None  # a refused header seen once, waiting for confirmation
        self._probe = bytearray(_PROBE)
        self._ovl = bytearray(_OVERLAP)
        self._hdr_raw = bytearray(HEADER_SIZE)
        self.header = None
        self.writer = None
        self.note = None  # the job being worked on (FWNotify)
        self._in_poll = False  # inside poll(): a callback's poll() or run() returns at once
        self._delivered = None  # (job id, status) of the journalled result the ESP took
        self._fault_job, self._job_faults = None, 0  # cycles in a row a job raised in
        self._notified = None  # the newest notification not yet taken
        # A +RMFWNOTIFY the parser refused: the line, its reason, how many times in a
        # row the same line came, and whether one came since the last fetch.
        self._bad_line = None
        self._bad_why = ""
        self._bad_seen = 0
        self._bad_new = False
        self.wifi_up = True
        self.cloud_up = True
        self.esp_reset = False
        self.esp_restart_wanted = False
        self._restart_at = None  # a refused AT+RST is tried again then (_after)
        self._restart_fails = 0
        self._mine = None  # the agent's last command (others are the application's)
        self._app_cmd = None  # the application's command the agent waited for, since
        self._app_t0 = 0  # ... then (ticks ms; _wait_app_cmd)
        self._fault_run = 0  # cycles in a row that ended on an agent error (_fault)
        self._unconfirmed_told = False  # a job was told 3 for a confirm that failed
        self._rb = None  # the job's image that rolled back, and how often (_rollbacks)
        self._rb_job = None  # ... of this job
        self._ready_seen = False  # a ready came while an ESP restart was wanted
        self.esp_ota_status = None
        self.range_ok = True
        self.att = None
        self.state = "start"
        self.result = None
        self.attempts = 0
        self.resumes = 0
        self.refetches = 0
        self.relocations = 0  # times bytes ahead of a hole were moved (shift_ahead)
        # Bytes ahead of a hole kept without their place confirmed: before the hole is
        # fetched, 16 of them are fetched and looked for (_check_ahead); _ahead_shift:
        # how far off their response ended (one lying header moved them by that much;
        # with several holes, the run after the last one). _ahead_next: with several
        # holes, the hole_end whose run was checked last: once another hole is current
        # its run is checked too.
        self._ahead_check = None
        self._ahead_next = None
        self._ahead_shift = None
        # _placed_at: the hole_end whose bytes ahead (one run) the journal says sit at
        # their place (their response ended where it should, or a check found them):
        # a resume after a power cut keeps them without a check (_placed).
        self._placed_at = 0
        self._overlap_fails = 0
        self.bytes_received = 0
        self.bytes_refetched = 0
        self.errors = 0
        self.last_error = None
        # Cycles ended because the link failed in a way a retry may cure (LinkError: the
        # ESP answered nothing to AT, busy or powered off): not agent errors.
        self.link_failures = 0
        self._link_run = 0  # such failures in a row (the back-off grows with them)
        self._gen = None
        self._idle = False
        self._retry_at = None
        self._fetch_empty = False
        self._report_retry_at = None
        self._fetch_failed = False
        self._cloud_back = False
        self.on_esp_ready = on_esp_ready
        self.boots_seen = 0
        self.report_retry_ms = _pick(None, s, "report_retry_ms", 60000)
        link.subscribe(self._on_urc)

    # --- URCs -------------------------------------------------------------------------
    def _on_urc(self, kind, line):
        if kind == URC_FWNOTIFY:
            try:
                note = parse_fwnotify(line)
            except Exception as e:
                self.errors += 1
                self._bad_new = True  # fetched again (_fetch)
                if not isinstance(e, ProtocolError):
                    # (MemoryError: a 2 KB line on a fragmented heap) not the line's
                    # fault: fetched again, never counted toward a 5
                    self.log.error("+RMFWNOTIFY not parsed:", repr(e))
                    return
                self.log.warn("bad +RMFWNOTIFY:", e.reason)
                line = bytes(line)
                if line == self._bad_line:
                    self._bad_seen += 1
                else:
                    self._bad_line, self._bad_why, self._bad_seen = line, e.reason, 1
                return
            run = self._running_job
            if run is not None and not self._refetching:
                if note.job_id == run:
                    # The cloud announced our job again (a fresh presigned URL): use it
                    # from the next attempt on.
                    self.note.url = note.url
                    self.log.info("job", run, "announced again: URL refreshed")
                    return
                self.log.info("another job", note.job_id, "announced while", run, "runs")
            self._notified = note
        elif kind == URC_READY:
            if self.esp_restart_wanted and self._echo_off:
                # It may have restarted by itself (ESP RainMaker may, DESIGN.md section
                # 1), or image bytes passed for ready: _init_esp tells (echo on again).
                self._ready_seen = True
            self._esp_forgot()
            self.esp_reset = True
            self._url_held = None  # the ESP forgot it (RAM)
            self.log.warn("ESP rebooted (ready)")
        elif kind == URC_WIFI:
            if line == b"WIFI DISCONNECT":
                self.wifi_up = False
            elif line == b"WIFI GOT IP":
                self.wifi_up = True
        elif kind == URC_RM:
            if line == b"+RMDISCONNECTED":
                self.cloud_up = False
            elif line == b"+RMCONNECTED":
                self.cloud_up = True
                self._cloud_back = True
            elif line == b"+RMRESET" or line == b"+RMREBOOT":
                # RainMaker AT docs: the host should then restart the ESP (AT+RST).
                self.esp_restart_wanted = True
        elif kind == URC_RMOTA:
            self._on_rmota(line)
        elif kind == URC_UNKNOWN:
            self.log.debug("unhandled line", line[:60])
        elif kind == URC_FRAMING and line == b"notification too long":
            # (DESIGN.md section 2: a line over the cap is dropped, counted and logged;
            # the job id is at its end, past what the link keeps: nothing to report to)
            self.errors += 1
            self.log.error(
                "+RMFWNOTIFY longer than line_max (%d B) dropped: its URL is too long for"
                " this board's settings" % (self.link.parser._cap - 1)
            )

    def _on_rmota(self, line):
        # Wi-Fi MCU OTA (the ESP updates itself). esp-at's at_rainmaker.c prints 2 on
        # success (the seed guide says 1; the code is the truth, 1 is "in progress"),
        # 3 on failure and 5 for rejected *and* delayed; 4 is never printed today.
        try:
            st = parse_rmota(line)
        except ProtocolError as e:
            self.log.warn("bad +RMOTA:", e.reason)
            return
        if st not in (1, 2, 3, 4, 5):
            self.log.warn("unknown +RMOTA status", st, "ignored")
            return
        self.esp_ota_status = st
        if st == OTA_SUCCEEDED:
            # The new ESP firmware runs only after a restart, at a safe moment.
            self.esp_restart_wanted = True
            self.log.info("ESP firmware updated; restart pending")
        elif st == OTA_REJECTED:
            self.log.info("ESP OTA status 5: rejected or delayed (ESP-AT prints 5 for both)")
        else:
            self.log.info("ESP OTA status", st, STATUS_NAMES[st])

    # --- run model --------------------------------------------------------------------
    def poll(self):
        """Do a bounded amount of work: one UART read and one step of the agent.
        Returns the number of bytes read. Never raises: an unexpected error is logged,
        counted in ``errors`` and the agent restarts its cycle after a back-off (the
        application that embeds the agent keeps running). Called from inside the agent
        (a ``progress`` or ``on_esp_ready`` callback, a URC subscriber) it does nothing
        and returns 0: the agent is in the middle of a step there."""
        if self._in_poll:
            return 0
        self._in_poll = True
        try:
            return self._poll()
        finally:
            self._in_poll = False

    def _poll(self):
        try:
            n = self.link.poll()
        except Exception as e:  # the UART itself failed: report, keep the app alive
            self._fault(e, False)
            return 0
        if self._gen is None:
            if self._retry_at is not None:
                if not self._past(self._retry_at):
                    return n
                self._retry_at = None
            elif self._idle and not self._wake():
                return n  # idle: only the link runs, URCs still reach subscribers
            self._gen = self._main()
        try:
            next(self._gen)
        except StopIteration:
            self._gen = None
            self._idle = True
            self._fault_run = 0
        except LinkError as e:
            self._gen = None
            self._link_failed(e)
        except Exception as e:
            self._gen = None
            self._fault(e)
        return n

    def _link_failed(self, e):
        # The cycle ended on a LinkError: the ESP did not answer AT through _init_esp's
        # back-off (busy for minutes, held in reset, powered off). A state of the ESP,
        # not a defect: a warning, and a new cycle (the journal carries the job on) after
        # a back-off that doubles with each such cycle in a row, up to backoff_max_ms.
        self.link_failures += 1
        ms = self._backoff(self._link_run)
        self._link_run += 1
        self._end_cycle(ms, "link down")
        try:
            self.log.warn("link down (%s): next cycle in %d ms" % (e, ms))
        except Exception:
            pass

    def _end_cycle(self, ms, state):
        # The cycle's generator is gone: records go nowhere, none is held, and the next
        # cycle starts in ``ms`` (poll()).
        self.link.sink = None
        self.link.record_hold_ms = 0
        self._retry_at = self._after(ms)
        self.state = state

    def _fault(self, e, cycle=True):
        # The next cycle after a back-off that doubles with each cycle in a row that
        # ended on an error (``cycle``), up to backoff_max_ms: an error that comes back
        # every cycle (a board call that always raises) must not re-initialise the ESP
        # twice a second for ever. A UART read that failed (not a cycle's end) leaves a
        # running cycle alone (its sink kept: framing tells what the glitch lost), and
        # an idle agent waits backoff_ms.
        self.errors += 1
        if cycle or self._gen is None:
            self._end_cycle(self._backoff(self._fault_run if cycle else 0), "error")
        if cycle:
            self._fault_run += 1
        try:  # reporting must not raise out of poll() either (a full disk, no memory)
            self.last_error = repr(e)
            self.log.error("agent error:", self.last_error)
        except Exception:
            pass

    def _wake(self):
        # An idle agent starts a new cycle only when there is something to do: a
        # notification, an ESP that rebooted or wants a restart, or a result that could
        # not be delivered (retried every ``report_retry_ms``).
        if self._notified is not None or self.esp_reset or self._restart_due():
            return True
        if self._bad_new:
            return True  # a malformed notification: fetch it again (_fetch)
        if self._cloud_back and self.cloud_up:
            # The cloud came back (+RMCONNECTED): a fetch that failed, or a result that
            # could not be delivered, can go through now.
            if self._fetch_failed or self._report_retry_at is not None:
                return True
        return self._past(self._report_retry_at)

    def _after(self, ms):
        # A deadline ms from now, as (start ticks, ms): ticks wrap (at 2**30 ms on
        # MicroPython), so a deadline is never a sum of ticks (time.ticks_diff()
        # documents that as invalid), only measured from its start.
        return (self.clock.ticks_ms(), ms)

    def _past(self, d):
        # Deadline d (from _after, or None: none) has passed.
        return d is not None and self.clock.ticks_diff(self.clock.ticks_ms(), d[0]) >= d[1]

    @property
    def idle(self):
        """True when the agent has nothing left to do (no job, results delivered); a
        notification (URC) makes it busy again on the next ``poll()``."""
        return self._idle

    def busy(self):
        """True while a command is in flight on the shared link (the agent's or the
        application's): wait for False before sending another."""
        c = self.link.cmd
        return c is not None and not c.done

    def run(self, until_idle=False, timeout_ms=None, max_errors=None):
        """Blocking loop over ``poll()``. With ``until_idle`` it returns once the agent
        has nothing left to do (no job pending, results delivered); ``timeout_ms``
        bounds the whole run (then returns); ``max_errors``: returns once that many
        agent errors (exceptions ``poll()`` caught, e.g. ``MemoryError``) happened in
        this run. Returns the agent's ``state``. A board reboot (after a commit) does
        not return. Called from inside the agent (a callback, as for ``poll()``) it
        returns at once."""
        if self._in_poll:
            return self.state
        clk = self.clock
        t0 = clk.ticks_ms()
        e0 = self.errors
        while True:
            if not self.poll():
                clk.sleep_ms(1)
            if until_idle and self._idle:
                return self.state
            if timeout_ms is not None and clk.ticks_diff(clk.ticks_ms(), t0) > timeout_ms:
                return self.state
            if max_errors is not None and self.errors - e0 >= max_errors:
                return self.state

    def _main(self):
        self._idle = False
        self._cloud_back = False
        self.state = "init"
        yield from self._init_esp()
        try:
            yield from self._finish_committed()
            yield from self._deliver_saved_result()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # A record this firmware cannot read (another version's schema, damage that
            # still parses as JSON): acting on it is impossible, and keeping it would
            # stop every later cycle here. Drop it and carry on with the cloud's jobs.
            self.errors += 1
            self.log.error("journal record unusable, dropped:", repr(e))
            self.board.journal.clear()
        if self._on_trial():
            # On trial with no commit record to finish (damaged, or another version's):
            # the image booted and the link to the ESP works, the self-test a commit
            # record would have led to. Left unconfirmed, the next download would write
            # the slot the bootloader falls back to.
            self.log.warn("the running image is on trial with no commit record: confirming")
            self._confirm()  # (failed: no download while on trial, _target_slot)
        self.state = "fetch"
        yield from self._fetch()
        if self._notified is None:
            # A download the journal knows, cut by a power loss: carry on with its URL
            # even if no notification came (the ESP may not have reported it again yet).
            self._notified = self._journal_note()
        while self._notified is not None:
            note = self._notified
            self._notified = None
            self._running_job = note.job_id
            try:
                yield from self._job(note)
                self._job_faults = 0
            except Exception as e:
                if isinstance(e, LinkError) or not (yield from self._job_fault(note, e)):
                    raise
            finally:
                self._running_job = None
        if self._restart_due():
            yield from self._restart_esp()
        j = self.board.journal.load()
        if j and j.get("stage") == "report" and (j.get("job"), j.get("status")) != self._delivered:
            self._report_retry_at = self._after(self.report_retry_ms)
        else:
            self._report_retry_at = None
        self.state = "idle"

    def _fetch(self):
        """``AT+RMOTAFETCH`` (ESP-AT RainMaker: the pending job's ``+RMFWNOTIFY`` again)
        and wait up to ``fetch_wait_ms`` for a notification. One the parser refuses is
        fetched again, up to three times in all: a byte altered on the wire gives a
        different line, or the good one, next time; the same malformed line three
        times is the job's own (a size of 0, a URL that is not ASCII), reported 5 with
        its reason when its job id can be read, so the cloud does not keep it pending
        for ever."""
        self._notified = None
        for _ in range(_FETCH_TRIES):
            self._bad_new = False
            c = yield from self._cmd(b"AT+RMOTAFETCH", 5000)
            # Without the cloud ESP-AT answers ERROR: fetch again when +RMCONNECTED
            # comes.
            self._fetch_failed = not c.ok
            if not c.ok:
                break
            yield from self._wait(
                self.fetch_wait_ms, lambda: self._notified is not None or self._bad_new
            )
            if self._notified is not None or not self._bad_new:
                break
            if self._bad_seen >= _FETCH_TRIES:
                break
        self._bad_new = False
        if self._notified is not None or self._bad_seen < _FETCH_TRIES:
            return
        d = self.board.journal.load()
        if d and d.get("stage") == "report":
            return  # a result still to deliver first: this one goes on the next fetch
        job = fwnotify_job_id(self._bad_line)
        why = self._bad_why
        self._bad_line, self._bad_seen = None, 0
        if job is None or info_room(job) < _INFO_MIN:
            self.log.error("+RMFWNOTIFY malformed every time (%s): no job id to report" % why)
            return
        self.log.error("+RMFWNOTIFY of job", job, "malformed every time:", why)
        keep = d if d and d.get("job") != job else None
        yield from self._finish_job(job, OTA_REJECTED, "bad notification: " + why, keep)

    # --- small generator helpers ------------------------------------------------------
    def _cmd(self, cmd, timeout_ms=2000, prompt=False, busy_tries=4):
        # ``busy p...`` means ESP-AT dropped the command (ESP-AT "AT Messages"): send it
        # again after a back-off, up to ``busy_tries`` times in all. A prompt command is
        # not re-sent here: its ``>`` may still come (the link waits for it).
        yield from self._wait_app_cmd()
        for i in range(busy_tries):
            c = self._mine = self.link.send(cmd, timeout_ms, prompt)
            while not c.done:
                yield
            if prompt or c.reset or c.final is not None or not c.busy:
                return c
            yield from self._sleep(self._backoff(i))
        return c

    def _wait_app_cmd(self):
        # One command is in flight on an AT link, and sending abandons it: the
        # application's (sent while busy() was False) finishes first, and the next one
        # it sends meanwhile too, each bounded by its own timeout (DESIGN.md section 2:
        # the link is shared). After its data prompt (">") the ESP reads the data the
        # application is about to send: nothing goes before it, up to that timeout.
        # The wait is timed from when the agent first saw the command, and at most
        # _APP_WAIT_MS (a timeout of 2^29 ms or more never expires in ticks_diff).
        clk = self.clock
        while True:
            c = self.link.cmd
            if c is None or c is self._mine:
                return
            if c.done and c.final != b">":
                return
            if c is not self._app_cmd:
                self._app_cmd, self._app_t0 = c, clk.ticks_ms()
            waited = clk.ticks_diff(clk.ticks_ms(), self._app_t0)
            if waited >= c.timeout_ms or waited >= _APP_WAIT_MS:
                return
            yield

    def _data(self, data, timeout_ms=2000):
        c = self._mine = self.link.send_data(data, timeout_ms)
        while not c.done:
            yield
        return c

    def _sleep(self, ms):
        clk = self.clock
        t0 = clk.ticks_ms()
        while clk.ticks_diff(clk.ticks_ms(), t0) < ms:
            yield

    def _wait(self, ms, cond):
        clk = self.clock
        t0 = clk.ticks_ms()
        while not cond():
            if clk.ticks_diff(clk.ticks_ms(), t0) >= ms:
                return False
            yield
        return True

    def _backoff(self, n):
        ms = self.backoff_ms << min(n, 10)
        return ms if ms < self.backoff_max_ms else self.backoff_max_ms

    # --- ESP housekeeping -------------------------------------------------------------
    def _init_esp(self):
        """Get the ESP to a known state: ``AT`` answered ``OK`` (with back-off while it
        is busy), echo off (``ATE0``), ``AT+SYSLOG=1`` so ``ERROR`` comes with its code.
        Called at start and after every ``ready``. Raises ``LinkError`` when the ESP
        never answers."""
        for i in range(8):
            c = yield from self._cmd(b"AT", 1000, busy_tries=1)
            rebooted = c.echoed and self._echo_off
            if c.echoed and self._ready_seen and self.esp_restart_wanted:
                # The ESP restarted by itself after asking for it: the new firmware runs,
                # no AT+RST is needed any more.
                self.esp_restart_wanted = False
                self._restart_at = None
                self._restart_fails = 0
                self.log.info("ESP restarted by itself: no AT+RST needed")
            elif rebooted:
                # Echo is on again although we turned it off: the ESP rebooted and its
                # "ready" was lost (swallowed by a record, or by the UART).
                self.log.warn("ESP echoes commands again: it rebooted unseen")
                self._esp_forgot()
            self._ready_seen = False
            if c.ok:
                self._link_run = 0
                break
            if c.final is None and not c.busy and i >= 1:
                # Nothing at all: the ESP may be waiting for data after a prompt - up to
                # a whole URL (line_max bytes) when the host lost power right after the
                # ">" of AT+HTTPURLCFG. NUL bytes end that (ESP-AT refuses a NUL in a URL
                # with ERROR): enough for the longest data once, a few more later.
                self.link.write(bytes(self._max_data if i == 1 else 64))
            yield from self._sleep(self._backoff(i))
        else:
            raise LinkError("ESP does not answer AT")
        yield from self._sleep(50)  # let late answers to abandoned commands drain
        c = yield from self._cmd(b"ATE0", 1000)
        self._echo_off = c.ok
        yield from self._cmd(b"AT+SYSLOG=1", 1000)
        # Request headers live in the ESP's RAM until AT+HTTPCHEAD=0 or its reboot, not
        # in ours: a Range set before the host lost power (or gave up an attempt) would
        # cut every later download short (DESIGN.md section 1). Clear them; ESP-AT before
        # 2023 has no AT+HTTPCHEAD and answers ERROR, which is fine.
        yield from self._cmd(b"AT+HTTPCHEAD=0", 1000)
        if self.flow_control:
            # ESP-AT honours CTS only with flow control 3 (or 2); its default is 1 (RTS
            # only) and AT+UART_CUR is forgotten on reset: set it after every ready.
            yield from self._cmd(b"AT+UART_CUR=%d,8,1,0,3" % self.baud, 1000)
        was_reset = self.esp_reset or self.boots_seen == 0
        self.esp_reset = False
        self.boots_seen += 1
        if was_reset and self.boots_seen > 1 and self.on_esp_ready:
            # The ESP rebooted: its RainMaker node set-up (AT+RMNODEINIT, devices,
            # AT+RMCONN) lives in the application; let it run that again.
            try:
                self.on_esp_ready(self.link)
            except Exception as e:  # the application's hook must not stop the agent
                self.errors += 1
                self.log.error("on_esp_ready failed:", repr(e))

    def _esp_forgot(self):
        """The ESP rebooted (``ready``, or it echoes again, or ``ERROR`` came without the
        ``ERR CODE`` SYSLOG gives): its RAM is gone — echo, SYSLOG, URL, headers and the
        pending-job flag (DESIGN.md section 1). Everything is set again before the next
        command that needs it, and the job is fetched again (``AT+RMOTAFETCH``) so that
        ``AT+RMOTARESULT`` is accepted."""
        self.esp_reset = True
        self._echo_off = False
        self._url_held = None
        if self._running_job is not None:
            self._need_refetch = True

    def _restart_esp(self):
        """``AT+RST`` at a safe moment (no host job running), then wait for ``ready``.
        The request (``+RMOTA:2``, ``+RMRESET``: the new ESP firmware runs only after a
        restart, and ESP-AT does not print the same status twice) is kept until the ESP
        restarted: an ``AT+RST`` refused (``ERROR``, ``busy p...``, no answer) or not
        followed by ``ready`` is tried again after a back-off that doubles, up to
        ``backoff_max_ms``."""
        self.state = "esp-restart"
        self.esp_reset = False
        c = yield from self._cmd(b"AT+RST", 2000)
        if c.ok or c.reset:
            yield from self._wait(10000, lambda: self.esp_reset)
        if self.esp_reset:
            self.esp_restart_wanted = False
            self._restart_at = None
            self._restart_fails = 0
        else:
            ms = self._backoff(self._restart_fails)
            self._restart_fails += 1
            self._restart_at = self._after(ms)
            self.log.warn(
                "ESP restart failed (AT+RST: %s): again in %d ms"
                % ((c.final or b"no answer").decode(), ms)
            )
        yield from self._init_esp()

    def _restart_due(self):
        # A restart is wanted and not waiting for its back-off (_restart_esp).
        t = self._restart_at
        return self.esp_restart_wanted and (t is None or self._past(t))

    def _reboot(self):
        # The host reboots (after a commit): a restart the ESP waits for goes first,
        # since the request is in RAM only and would be lost with ours. One that failed
        # goes into the commit record, taken up again after the reboot.
        if self.esp_restart_wanted:
            yield from self._restart_esp()
        if self.esp_restart_wanted:
            j = self.board.journal.load()
            if j and j.get("stage") == "committed":
                j["esp_rst"] = True
                self.board.journal.save(j)
        self.state = "reboot"
        self.board.reboot()

    # --- results ----------------------------------------------------------------------
    def _report(self, job_id, status, info, tries=4):
        """``AT+RMOTARESULT=0,"<job>",<status>,"<info>"``. ESP-AT answers ERROR while the
        cloud is down or when no host job is pending in its RAM (lost on an ESP reboot):
        then wait for the cloud / fetch the job again and retry. Returns True when
        ``OK``."""
        info = clip_info(info, info_room(job_id))
        cmd = b"AT+RMOTARESULT=0," + quote(job_id) + b",%d," % status + quote(info)
        for i in range(tries):
            if self.esp_reset:
                yield from self._init_esp()
            if not self.cloud_up:
                yield from self._wait(self.link_wait_ms, lambda: self.cloud_up)
            c = yield from self._cmd(cmd, 5000)
            if c.ok:
                self.log.info("reported", status, info)
                return True
            self.log.warn("AT+RMOTARESULT refused:", describe_err_code(c.err_code))
            if c.final == b"ERROR":
                yield from self._refetch(job_id)
                if self._fetch_empty:
                    # The cloud holds no pending job for us (finished, or cancelled):
                    # retrying now cannot succeed. The caller keeps the result.
                    self.log.warn("no pending job", job_id, "in the cloud")
                    return False
            yield from self._sleep(self._backoff(i))
        return False

    def _refetch(self, job_id):
        """``AT+RMOTAFETCH`` and wait for the notification of ``job_id``: re-arms ESP-AT's
        pending-job flag after an ESP reboot and brings a fresh presigned URL. Returns
        the new ``FWNotify`` or None."""
        self.refetches += 1
        self._need_refetch = False
        self._refetching = True
        try:
            note = yield from self._refetch_wait(job_id)
        finally:
            self._refetching = False
        return note

    def _refetch_wait(self, job_id):
        self._notified = None
        self._fetch_empty = False
        c = yield from self._cmd(b"AT+RMOTAFETCH", 5000)
        if not c.ok:
            return None
        got = yield from self._wait(self.fetch_wait_ms, lambda: self._notified is not None)
        if not got:
            self._fetch_empty = True
            return None
        note = self._notified
        if note.job_id != job_id:
            self._fetch_empty = True
            return None  # another job: left in _notified for the main loop
        self._notified = None
        return note

    def _finish_job(self, job_id, status, info, download=None):
        """Record a final result in the journal, deliver it, clear the journal when the
        ESP accepted it (else it is retried on the next cycle). ``download``: the
        journal's record of the job's download (a dict), put back instead of clearing
        once the result is delivered (a failure to retry when notified again; the CRC
        log is left as it is)."""
        self.result = (status, info)
        self._delivered = None  # (a new result: the one the journal holds is not sent)
        j = self.board.journal
        if download is None and status == OTA_FAILED and self._rb and self._rb_job == job_id:
            # The job stays pending: its image's rollbacks are still counted.
            download = {"stage": "rolled_back", "job": job_id, "rb": self._rb}
        elif download is None:
            d = j.load()
            if d and d.get("stage") == "rolled_back" and d.get("job") != job_id:
                download = d  # another job's rollbacks: kept past this one's result
        rec = {"stage": "report", "job": job_id, "status": status, "info": info}
        if download:
            rec["download"] = download
        if status == OTA_SUCCEEDED:
            # (what runs now: a result of 2 kept for later is delivered only while it
            # still runs, _deliver_saved_result)
            rec["version"] = self.board.running_version()
            sha = self._running_sha()
            rec["sha"] = hexlify(sha).decode() if sha is not None else None
        kept = True
        try:
            j.save(rec)
        except OSError as e:
            # (a full filesystem: the result goes out anyway; a power cut before it is
            # delivered loses it, and the cloud notifies the job again)
            kept = False
            self.log.error("result not journalled:", repr(e))
        ok = yield from self._report(job_id, status, info)
        if ok:
            self._after_report(j, download, job_id, status)
        elif kept:
            self.log.warn("result kept in the journal for a later delivery")

    def _after_report(self, j, download, job_id, status):
        # The ESP took the result: the journal forgets it. A journal that cannot (a
        # filesystem that fails) would have it delivered again every report_retry_ms:
        # the agent remembers what it delivered (RAM; after a reset, once more).
        self._delivered = (job_id, status)
        try:
            if download:
                j.save(download)
            else:
                j.clear()
        except OSError as e:
            self.log.error("delivered result not cleared:", repr(e))

    def _job_fault(self, note, e):
        # An error the job's own steps raised, ending the cycle: a slot or journal that
        # fails for good (EIO, ENOSPC) fails the same way in every cycle, and the
        # journal's download is carried on each time. Counted per job: failing in
        # max_attempts cycles in a row, the job is reported 3 with the error (its
        # download record kept: a later notification tries again). Returns True then.
        n = self._job_faults + 1 if self._fault_job == note.job_id else 1
        self._fault_job, self._job_faults = note.job_id, n
        if n < self.max_attempts:
            return False
        self._job_faults = 0
        self.errors += 1
        self.log.error("job failed in %d cycles in a row: %r" % (n, e))
        try:
            d = self.board.journal.load()
        except OSError:
            d = None
        keep = d if d and d.get("stage") == "download" and d.get("job") == note.job_id else None
        why = "error: " + (str(e) or type(e).__name__)
        yield from self._finish_job(note.job_id, OTA_FAILED, why, keep)
        return True

    def _deliver_saved_result(self):
        j = self.board.journal.load()
        if j and j.get("stage") == "report":
            st, info, job = j["status"], j["info"], j["job"]
            if (
                not _is_int(st, 2, 5)
                or st == OTA_DELAYED
                or not isinstance(info, str)
                or not isinstance(job, str)
                or "\r" in info
                or "\n" in info
                or (st == OTA_SUCCEEDED and not self._runs(j))
            ):
                # Not a result this agent records (damage that still parses): the ESP
                # would refuse it on every cycle and block the job behind it.
                raise ValueError("result record")
            self.state = "report"
            self.result = (st, info)
            ok = (job, st) == self._delivered
            if not ok:
                ok = yield from self._report(job, st, info)
            if ok:
                self._after_report(self.board.journal, j.get("download"), job, st)

    def _finish_committed(self):
        """After the reboot that follows a commit: the board booted the new image on
        trial. Confirm it (the link to the ESP works: that is our self-test) and report
        2; if the board rolled back, report 3."""
        j = self.board.journal.load()
        if not j or j.get("stage") != "committed":
            return
        if not (
            _is_int(j.get("slot"), 0, 255)
            and _is_int(j.get("version"), 0, 0xFFFFFFFF)
            and _is_int(j.get("len"), 1, 0xFFFFFFFF)
            and isinstance(j.get("job"), str)
            and isinstance(j.get("sha"), str)
            and len(j["sha"]) == 64  # (not hex: unhexlify's ValueError, caught where used)
        ):
            # Damage that still parses (a version the boot record cannot hold would
            # be committed, or refused as a permanent 5): dropped by the caller.
            raise ValueError("commit record")
        self.state = "confirm"
        if j.get("esp_rst") is True:
            self.esp_restart_wanted = True  # (_reboot: AT+RST had failed before it)
        bs = self.board.boot_state()
        seq = j.get("bseq")
        if _is_int(seq, 0, 0xFFFFFFFF) and self._boot_seq() == seq:
            # The boot record has not changed since this commit was journalled: the
            # power went before it was made; a rollback it shows is an earlier one's.
            bs["rolled_back"] = False
        if bs.get("slot") != j["slot"] and not bs.get("rolled_back"):
            # Power was lost between journalling the commit and the boot record change:
            # the image is verified but not committed. Check it again, commit, reboot.
            yield from self._recommit(j)
            return
        if bs.get("slot") == j["slot"] and not bs.get("rolled_back"):
            if bs.get("trial"):
                if not self._confirm():
                    # Not confirmed: no 2. The job is told 3 (once per boot) and the
                    # commit record kept, so a later cycle confirms again.
                    if not self._unconfirmed_told:
                        self._unconfirmed_told = True
                        yield from self._finish_job(j["job"], OTA_FAILED, "confirm failed", j)
                    return
                self.log.info("confirmed the trial image v%d" % j["version"])
            if self._runs(j):
                status, info = OTA_SUCCEEDED, "v%d running" % j["version"]
            else:
                # A stale or damaged record: the slot it names runs, but not its image.
                # Never 2 for an image that does not run; the job stays pending.
                self.log.warn("journalled commit does not match the running image")
                status, info = OTA_FAILED, "commit lost"
        else:
            # Counted per image of the job (the journal's "rb", carried by the records
            # of its next download and commit): the same image rolled back
            # _ROLLBACKS_MAX times is refused.
            rb = _rollbacks(j, j["job"])
            n = rb[1] + 1 if rb and rb[0] == j["sha"] else 1
            v = j["version"]
            if n >= _ROLLBACKS_MAX:
                status, info = OTA_REJECTED, "v%d rolled back %d times" % (v, n)
                keep = None
            else:
                status, info = OTA_FAILED, "rolled back: v%d did not confirm" % v
                keep = {"stage": "rolled_back", "job": j["job"], "rb": [j["sha"], n]}
            self.log.info("boot after commit:", info)
            yield from self._finish_job(j["job"], status, info, keep)
            return
        self.log.info("boot after commit:", info)
        yield from self._finish_job(j["job"], status, info)

    def _runs(self, j):
        # The running image is the one the record ``j`` (a commit, or a result of 2)
        # names: its version (after confirm(), which is when an ESP32 board records it),
        # and its SHA-256 when the board knows it (``running_sha256()``, optional).
        try:
            v = j["version"]
            if not _is_int(v, 0, 0xFFFFFFFF) or self.board.running_version() != v:
                return False
            sha = self._running_sha()
            return sha is None or sha == unhexlify(j["sha"])
        except (KeyError, ValueError, TypeError):
            return False

    def _running_sha(self):
        # The running image's SHA-256 (32 bytes), or None when the board cannot tell.
        get = getattr(self.board, "running_sha256", None)
        return get() if get is not None else None

    def _recommit(self, j):
        slot = self.board.inactive_slot()
        w = SlotWriter(slot.bdev)
        try:
            w.begin(j["len"])
            ok = slot.index == j["slot"] and w.readback_digest() == unhexlify(j["sha"])
        except (ImageError, KeyError, ValueError):
            ok = False
        if not ok:
            self.log.warn("journalled commit does not match the slot: dropped")
            yield from self._finish_job(j["job"], OTA_FAILED, "commit lost")
            return
        self.log.info("commit was cut by a power loss: committing again")
        ok = yield from self._commit(
            j["job"], slot.index, j["len"], unhexlify(j["sha"]), j["version"]
        )
        if not ok:
            return
        yield from self._reboot()

    def _commit(self, job_id, index, length, sha256, version):
        """``board.commit``. A board that refuses the image (``ValueError``: e.g. ESP-IDF's
        ``set_boot`` rejects a slot that holds no valid app) ends the job with status 5:
        the same image would be refused again. Any other failure (``OSError``: the
        board could not write its boot record, a full filesystem) is 3, and the
        journal's commit record is kept, so the next cycle checks the slot again and
        commits (``_recommit``). Returns True when committed."""
        try:
            self.board.commit(index, length, sha256, version)
        except ValueError as e:
            self.log.error("the board refused the commit:", repr(e))
            yield from self._finish_job(job_id, OTA_REJECTED, "slot refused image: %s" % e)
            return False
        except Exception as e:
            self.log.error("commit failed:", repr(e))
            keep = self.board.journal.load()
            if not keep or keep.get("stage") != "committed":
                keep = None
            why = str(e) or type(e).__name__  # (an OSError() says nothing of itself)
            yield from self._finish_job(job_id, OTA_FAILED, "commit failed: " + why, keep)
            return False
        return True

    def _confirm(self):
        # board.confirm(); a failure is logged and counted, and the rest of the cycle (a
        # restart the ESP waits for, results) goes on. Returns True when confirmed.
        try:
            self.board.confirm()
        except Exception as e:
            self.errors += 1
            self.log.error("confirm failed:", repr(e))
            return False
        return True

    def _boot_seq(self):
        # The boot record's commit sequence number (the board's optional commit_seq()).
        get = getattr(self.board, "commit_seq", None)
        seq = get() if get is not None else None
        return seq if _is_int(seq, 0, 0xFFFFFFFF) else None

    def _on_trial(self):
        # The running image is on trial, not confirmed (a board without boot_state()
        # has no trial).
        bs = getattr(self.board, "boot_state", None)
        return bool(bs is not None and bs().get("trial"))

    def _target_slot(self, job_id):
        """The slot a job may write: ``board.inactive_slot()``, never the running one
        (DESIGN.md section 2). None when there is none (a board raising ``OSError``:
        one OTA partition, and it runs; or the running slot handed out), reported 5:
        this device cannot take an update while it runs this slot. None, reported
        3 while the running image is on trial and not confirmed (its confirm failed):
        the inactive slot is then the bootloader's way back (ESP-IDF's
        ``esp_ota_begin`` refuses too), so writing it could leave nothing to boot."""
        if self._on_trial():
            self.errors += 1
            why = "running image not confirmed"
            self.log.error("the running image is on trial, not confirmed: no download")
            if self._unconfirmed_told:
                return None  # (said once per boot)
            self._unconfirmed_told = True
            keep = self.board.journal.load()
            if not keep or keep.get("stage") != "committed" or keep.get("job") != job_id:
                keep = None  # (its commit record stays, for the confirm to come)
            yield from self._finish_job(job_id, OTA_FAILED, why, keep)
            return None
        try:
            slot = self.board.inactive_slot()
            run = getattr(self.board, "running_slot", None)
            why = "the running slot" if run is not None and slot.index == run() else None
        except OSError as e:
            slot, why = None, repr(e)
        if why is None:
            return slot
        self.log.error("no slot to update:", why)
        yield from self._finish_job(job_id, OTA_REJECTED, "no inactive slot: %s" % why)
        return None

    # --- the job ----------------------------------------------------------------------
    def _job(self, note):
        self.note = note
        self._progress_logged = False
        self.state = "job"
        self.log.info("job", note.job_id, "size", note.size, "version", note.fw_version)
        if info_room(note.job_id) < _INFO_MIN:
            # No result for it would fit the ESP's command line or its result JSON:
            # the job could never be finished. Nothing is erased or downloaded.
            self.errors += 1
            self.log.error(
                "job id of %d B too long for AT+RMOTARESULT: ignored" % len(note.job_id)
            )
            return
        saved = self.board.journal.load()
        if saved and saved.get("job") == note.job_id and saved.get("stage") == "report":
            yield from self._deliver_saved_result()
            return
        self._rb = _rollbacks(saved, note.job_id)
        self._rb_job = note.job_id
        if note.type != 0 or note.size < HEADER_SIZE:
            # A digit altered on the wire makes either: the job's own notification,
            # fetched again, decides (none now: the next notification does).
            fresh = yield from self._refetch(note.job_id)
            if fresh is None:
                return
            note = self.note = fresh
        if note.type != 0:
            yield from self._finish_job(note.job_id, OTA_REJECTED, "type %d unknown" % note.type)
            return
        if note.size < HEADER_SIZE:
            yield from self._finish_job(note.job_id, OTA_REJECTED, "size %d < header" % note.size)
            return
        if not 8 <= len(note.url) <= 8192:
            # AT+HTTPURLCFG takes 8..8192 bytes (DESIGN.md section 1): the ESP would
            # refuse this URL on every try.
            why = "URL of %d B outside 8..8192" % len(note.url)
            yield from self._finish_job(note.job_id, OTA_REJECTED, why)
            return
        slot = yield from self._target_slot(note.job_id)
        if slot is None:
            return
        self.header = None
        self._ahead_check = None
        self._ahead_shift = None
        self._ahead_next = None
        self._overlap_fails = 0  # overlap checks failed in a row (_attempt)
        self.writer = None  # the last job's ring is garbage now: collect it first, so
        gc.collect()  # the new one finds room in one piece on a small heap
        self.writer = self._new_writer(slot.bdev)
        self.writer.on_block = self._on_block
        self.writer.on_erase = self._on_erase
        self.writer.on_ahead = self._on_ahead
        self.writer.on_forget = self.board.journal.crc_drop
        self.writer.on_moved = self.board.journal.crc_move
        self.writer.on_joint = self._on_joint
        self.writer.on_park = self._on_park
        self._slot = slot
        self.range_ok = True
        resumed = self._resume(saved, note, slot)
        yield from self._report(
            note.job_id, OTA_IN_PROGRESS, "resuming" if resumed else "downloading", tries=1
        )
        failures = 0
        verdict = None
        best = self._accepted()  # the furthest the download got (stream offset, bytes)
        while failures < self.max_attempts:
            verdict = yield from self._attempt(note)
            if verdict == "done":
                break
            if verdict == "more":
                continue  # a window (or the header) arrived: go on, nothing failed
            if isinstance(verdict, ImageError) and verdict.status in (
                OTA_REJECTED,
                OTA_SUCCEEDED,
            ):
                break
            # A URL refused (4xx) after it brought bytes further than ever: it expired
            # while the job went on (each window is a request of its own). The fresh URL
            # from AT+RMOTAFETCH is used at once; this is not a failed attempt. (Only
            # progress beyond the furthest point excuses one: the count still ends a
            # job whose URLs stay refused.)
            acc = self._accepted()
            expired = isinstance(verdict, int) and 400 <= verdict < 500 and acc > best
            if acc > best:
                best = acc
            self.attempts += 1
            self._url_held = None  # set and check the URL again before the next try
            if expired:
                self.log.warn("URL refused after %d B: %s" % (acc, self._why(verdict)))
            else:
                failures += 1
                self.log.warn("attempt %d failed: %s" % (failures, self._why(verdict)))
            if self.esp_reset or self._need_refetch:
                # The ESP rebooted: set it up again and re-arm its pending-job flag.
                if self.esp_reset:
                    yield from self._init_esp()
                fresh = yield from self._refetch(note.job_id)
                if fresh:
                    note = self.note = fresh
            if not (self.wifi_up and self.cloud_up):
                yield from self._wait(self.link_wait_ms, lambda: self.wifi_up and self.cloud_up)
            if not expired:
                yield from self._sleep(self._backoff(failures - 1))
            if isinstance(verdict, int) and 400 <= verdict < 500:
                # An expired or refused presigned URL: ask for the job again - after the
                # back-off, right before the next attempt (a fresh URL that waited out
                # the back-off could expire meanwhile).
                fresh = yield from self._refetch(note.job_id)
                if fresh:
                    note = self.note = fresh
        if isinstance(verdict, ImageError):
            yield from self._finish_job(note.job_id, verdict.status, verdict.reason)
            return
        if verdict != "done":
            # Out of attempts for now (the link, the server): report 3, but keep the
            # download's record and CRCs, so that when the cloud notifies this job
            # again the blocks already in the slot are not fetched twice (issue 3).
            saved = self.board.journal.load()
            keep = saved if saved and saved.get("stage") == "download" else None
            if keep and (keep.get("job") != note.job_id or self.header is None):
                keep = None  # (no header: a digest failure, the image is taken afresh)
            yield from self._finish_job(note.job_id, OTA_FAILED, self._why(verdict), keep)
            return
        # Verified: commit, then reboot into the new image on trial.
        h = self.header
        self.state = "commit"
        self.board.journal.save(
            {
                "stage": "committed",
                "job": note.job_id,
                "slot": slot.index,
                "version": h.image_version,
                "len": h.image_len,
                "sha": hexlify(h.sha256).decode(),
                "rb": self._rb,
                "bseq": self._boot_seq(),
            }
        )
        ok = yield from self._commit(
            note.job_id, slot.index, h.image_len, h.sha256, h.image_version
        )
        if not ok:
            return
        self.log.info("committed v%d to slot %d; rebooting" % (h.image_version, slot.index))
        yield from self._reboot()  # (the download is over: a safe moment for AT+RST too)

    def _journal_note(self):
        # The journal's download as a notification (a download a power cut stopped,
        # carried on before the cloud notifies it again), or None. Its fields must pass
        # the notification parser as a line, its URL AT+HTTPURLCFG's 8..8192 bytes, and
        # its size must be its journalled header's: damage that still parses must not
        # make a good job's 5 (the cloud notifies it again, with the right fields).
        j = self.board.journal.load()
        if not j or j.get("stage") != "download":
            return None
        try:
            size, url, job, fw = j["size"], j["url"], j["job"], j.get("fw")
            line = "+RMFWNOTIFY:0,%d,%s,%s,%s" % (size, url, "null" if fw is None else fw, job)
            note = parse_fwnotify(line.encode())
            h = ImageHeader.parse(unhexlify(j["hdr"]))
            if (
                note.size == size == h.header_len + h.payload_len
                and note.url == url.encode()
                and note.job_id == job
                and 8 <= len(url) <= 8192
            ):
                return note
        except (KeyError, AttributeError, TypeError, ValueError, ProtocolError, ImageError):
            pass
        self.log.warn("journalled download unusable: waiting for the notification")
        return None

    def _on_erase(self, index):
        # The writer is about to erase block ``index`` (and maybe the blocks of an erase
        # unit after it) while the journal describes blocks from it on (the writer asks
        # only then: ``writer.journaled``). Those entries go FIRST: so an entry only ever
        # describes a block whose program finished, and a cut inside this erase or the
        # program after it leaves no entry that claims the torn block.
        self.board.journal.crc_truncate(index)
        if self.writer.journaled > index:
            self.writer.journaled = index

    def _on_ahead(self, index, crc):
        # A block written ahead of a hole: journalled out of order where the journal
        # can (a raw CRC log), so a power cut before the hole is filled keeps it.
        return self.board.journal.crc_put(index, crc)

    def _on_joint(self, j, crc):
        # Bytes before a hole's first block ahead wait at the start of their block (the
        # joint): journalled like the blocks ahead, forgotten when dropped (crc None).
        if crc is None:
            self.board.journal.joint_drop(j)
        else:
            self.board.journal.joint_put(j, crc)

    def _on_park(self, t, crc):
        # A partial block ahead of a hole was parked in flash (its bytes up to t):
        # journalled like a joint, forgotten when dropped or moved (crc None).
        if crc is None:
            self.board.journal.park_drop(t)
        else:
            self.board.journal.park_put(t, crc)

    def _on_block(self, index, crc):
        # The writer programmed block ``index``: journal its CRC so that a resume after a
        # power cut can tell it intact. Entry k must describe block k (entries from a
        # block on were dropped before it was erased again: _on_erase).
        w = self.writer
        if index != w.journaled:
            return  # a gap the list cannot describe: a resume stops before it
        self.board.journal.crc_append(crc)
        w.journaled = index + 1

    def _journal_download(self, note, raw_header):
        """Journal a new download (before its first block is programmed): old CRCs go
        first, so a cut in between never pairs them with the new header."""
        j = self.board.journal
        j.crc_reset()
        self.writer.journaled = 0
        self._placed_at = 0
        j.save(
            {
                "stage": "download",
                "job": note.job_id,
                "url": note.url.decode(),
                "size": note.size,
                "fw": note.fw_version,
                "slot": self._slot.index,
                "hdr": hexlify(raw_header).decode(),
                "rb": self._rb,
            }
        )

    def _resume(self, saved, note, slot):
        """Carry on a download the journal knows (same job, size and slot): restore the
        header, keep the blocks whose CRC matches, rebuild the SHA-256 from flash.
        Returns True when something was kept."""
        if not saved or saved.get("stage") != "download":
            return False
        if saved.get("job") != note.job_id or saved.get("size") != note.size:
            return False
        if saved.get("slot") != slot.index:
            return False
        try:
            raw = unhexlify(saved["hdr"])
            h = ImageHeader.parse(raw)
            h.check(self.board.board_id, slot.size, self.board.running_version(), note.size)
        except (ImageError, ValueError, KeyError, TypeError):
            return False
        self.writer.begin(h.image_len)
        self._placed_at = saved.get("placed") or 0
        j = self.board.journal
        crcs = j.crcs()
        w = self.writer
        w.journaled = len(crcs)
        kept = w.resume(crcs)
        nk = kept // w.block_size
        runs = None
        if nk < len(crcs) and kept < h.image_len:
            # An entry that does not match its block: the last append, torn by the cut
            # (or the block changed since). It goes; the entries after it are blocks
            # written ahead of a hole (in order right after it when the hole was just
            # filled up to them, else after absent ones), checked like any such run.
            # Before, they went with it (the first erase of the hole dropped them).
            runs = j.crc_runs()
            if nk + 1 < len(crcs):
                runs.insert(0, (nk + 1, crcs[nk + 1 :]))
            j.crc_truncate(nk, runs[0][0] if runs else 0)
            w.journaled = nk
        if kept == w.block_size * w.journaled:
            # Blocks written ahead of holes, if any (several runs: a power cut in the
            # middle of a move, or with several holes open). They may not have had
            # their position confirmed (a power cut before the end of their response, or
            # the rest of a move): each is checked when its hole is the current one.
            if runs is None:
                runs = j.crc_runs()
            joints = j.joints()
            parks = j.parks()
            n = w.resume_ahead(runs, joints, parks) if runs or joints or parks else 0
            if n:
                self.log.info("kept %d B written ahead of a hole" % n)
                if self._placed_at == w.hole_end and not w.holes_after:
                    # Their place was confirmed before the power cut, and every block
                    # of them kept matches its CRC: no check (bytes that repeat with a
                    # short period could not be checked again).
                    self.log.info("bytes ahead of the hole at their place (journal)")
                else:
                    self._ahead_check = True
        self.header = h
        self._hdr_raw[:] = raw
        self.resumes += 1
        self.log.info("resuming job", note.job_id, "at", HEADER_SIZE + w.offset, "of", note.size)
        return True

    def _why(self, verdict):
        if isinstance(verdict, int):
            return "HTTP %d" % verdict if verdict else "HTTP connection failed"
        if isinstance(verdict, ImageError):
            return clip_info(verdict.reason)
        return clip_info(str(verdict))

    def _set_url(self, url):
        """Set the URL with ``AT+HTTPURLCFG`` and read it back with ``AT+HTTPURLCFG?``
        (ESP-AT HTTP AT commands; issue 4 cases 6 and 10).

        URL bytes are sent only after ``>``: ``busy p...`` instead of a prompt, or no
        prompt within ``prompt_ms``, means back off and send the command again (a prompt
        that comes after we gave up is answered with NULs by the link). A missing
        ``SET OK`` means the ESP still waits for lost URL bytes: ``_send_data`` pads it with
        NULs, never a command. Returns True when the ESP holds exactly ``url``."""
        n = len(url)
        for i in range(6):
            if self.esp_reset:
                yield from self._init_esp()
            c = yield from self._cmd(b"AT+HTTPURLCFG=%d" % n, self.prompt_ms, prompt=n)
            if c.final != b">":
                self.log.warn("no prompt for AT+HTTPURLCFG:", "busy" if c.busy else c.final)
                yield from self._sleep(self._backoff(i))
                continue
            final = yield from self._send_data(url)
            if final != b"SET OK":
                yield from self._sleep(self._backoff(i))
                continue
            q = yield from self._cmd(b"AT+HTTPURLCFG?", 2000)
            want = b"+HTTPURLCFG:%d," % n + url
            if q.ok and q.lines and q.lines[-1] == want:
                return True
            self.log.warn("URL read back differs; setting it again")
        return False

    def _new_writer(self, bdev):
        """The ``SlotWriter`` for this board's ``flash_mode``: its buffer holds one
        ``+HTTPCGET`` record past a block (so ``write()`` allocates a constant per record)
        or, in window mode, a whole window."""
        bs = bdev.ioctl(5, 0)
        if self.flash_mode == "window":
            n = (self.window_size + bs - 1) // bs
        else:
            n = 1 + (self.rx_size + bs - 1) // bs
        w = SlotWriter(
            bdev,
            buffer_blocks=n,
            prog_chunk=self.prog_chunk,
            crc_span=self.board.settings.get("crc_span"),
            erase_unit=self.erase_unit,
        )
        w.defer = self.flash_mode == "window"
        return w

    def _set_range(self, start, end=None):
        """``AT+HTTPCHEAD`` with ``Range: bytes=<start>-`` or ``bytes=<start>-<end>``
        (stream offsets, ``end`` inclusive). True when the ESP took it; firmware before
        2023 answers ERROR: no Range then."""
        hdr = b"Range: bytes=%d-" % start
        if end is not None:
            hdr += b"%d" % end
        ok = yield from self._put_header(hdr)
        return ok

    def _put_header(self, hdr):
        """``AT+HTTPCHEAD=<len>`` → ``>`` → ``hdr`` (bytes, ``Key: value``) → ``OK``.

        Returns True (set), False (ESP-AT refuses the command with ``ERROR``: firmware
        before 2023 has no AT+HTTPCHEAD, so no Range), or None (not now: ``busy p...`` or
        no prompt three times, an ESP reset, or data bytes lost — then the headers are
        cleared with ``AT+HTTPCHEAD=0``, since what the ESP kept is unknown). Like
        ``_set_url`` it never sends a command while the ESP may still read header bytes."""
        n = len(hdr)
        for i in range(3):
            if self.esp_reset:
                return None
            c = yield from self._cmd(b"AT+HTTPCHEAD=%d" % n, self.prompt_ms, prompt=n)
            if c.final == b"ERROR":
                return False
            if c.final == b">":
                final = yield from self._send_data(hdr)
                if final == b"OK":
                    return True
                if self.esp_reset:
                    return None
                yield from self._clear_range()
            else:
                self.log.warn("no prompt for AT+HTTPCHEAD:", "busy" if c.busy else c.final)
            yield from self._sleep(self._backoff(i))
        return None

    def _send_data(self, data):
        """After a ``>`` prompt: write ``data`` raw and return the final result that ends it
        (``SET OK`` for AT+HTTPURLCFG, ``OK`` for AT+HTTPCHEAD, ``ERROR``), or None (the
        ESP reset, or never answered).

        ESP-AT reads exactly the announced number of bytes and waits for them forever
        (DESIGN.md section 1, from esp-at's source). No final result within ``data_ms``
        plus the bytes' time on the wire means bytes were lost and the ESP is still
        reading: a command now would become data. It gets NUL bytes instead, in batches of
        1, 1, 2, 4, ... (``pad_ms`` apart, at most ``len(data)`` in all) until it answers; a
        NUL makes it refuse the data with ``ERROR``. When more than one NUL went out, some
        may have reached its command parser, so the link is put back in step with ``AT``
        (``_init_esp``) before anything else."""
        n = len(data)
        c = yield from self._data(data, self.data_ms + n * 10000 // self._line_baud)
        if c.final is not None or c.reset:
            return c.final
        self.log.warn("no final result after %d data bytes: padding with NULs" % n)
        sent = 0
        k = 1
        while sent < n:
            k = min(k, n - sent)
            c = yield from self._data(bytes(k), self.pad_ms)
            sent += k
            if c.final is not None or c.reset:
                break
            if sent > 1:
                k *= 2
        if c.reset:
            return None
        if sent > 1 or c.final is None:
            yield from self._init_esp()
        return c.final

    def _clear_range(self):
        c = yield from self._cmd(b"AT+HTTPCHEAD=0", 1000)
        return c.ok

    def _accepted(self):
        """Stream offset up to which we hold verified-in-order bytes."""
        if self.header is None:
            return 0
        return HEADER_SIZE + self.writer.offset

    def _attempt(self, note):
        """One ``AT+HTTPCGET``. Returns ``"done"`` (all bytes in, digests match), an
        ``ImageError`` (status 5: refused; status 3: digest mismatch), an int HTTP
        status (0: connection failed) from ``ERR CODE``, or a short reason string."""
        self.state = "download"
        if self._url_held != note.url or self.esp_reset:
            ok = yield from self._set_url(note.url)
            if not ok:
                return "URL not set"
            self._url_held = note.url
        acc = self._accepted()
        w = self.writer
        mode = self.flash_mode
        if self._placed_at and self._placed_at != w.hole_end:
            # That hole was filled or dropped: the journal forgets it here, between
            # responses (a record save while the ESP sends would overflow a fast UART).
            # A hole opened later in a response ends past it (the write position is past
            # a filled hole), so the resume never takes the old word for a new hole.
            self._placed(0)
        if self._ahead_next is not None and w.hole_end != self._ahead_next:
            # the run checked last is in: the next hole is current, check its run too
            self._ahead_next = None
            self._ahead_check = True if w.hole_end else None
        if self._ahead_check and w.hole_end:
            if self.range_ok:
                v = yield from self._check_ahead(note)
                return v
            w.drop_ahead()  # unchecked, and full downloads bring them again anyway
            self._ahead_check = None
        end = None  # last stream offset asked for (inclusive), None: to the end
        if self.range_ok:
            if mode == "window" and (self.header is not None or not self.header_first):
                # One writer buffer of payload (without header_first the first window
                # also brings the header).
                end = (acc if acc else HEADER_SIZE) + w.room - 1
            elif mode == "window":
                # The header alone first: an image it refuses costs 64 bytes, not a
                # window (and its second look, to tell a byte altered in transit).
                end = HEADER_SIZE - 1
            elif w.hole_end:
                end = HEADER_SIZE + w.fill_end - 1  # a hole: fetch just that
            elif self.header is None and (mode == "pre_erase" or self.header_first):
                # The header first: it says how much to erase, and the journal's record
                # of the download is written before the payload streams.
                end = HEADER_SIZE - 1
            if end is not None and end >= note.size:
                end = note.size - 1
        if mode == "pre_erase" and self.header is not None:
            # Erase every block the image needs while the ESP is idle: during the
            # download only programs stall the host (about 0.7 ms a page on W25Qxx).
            self.state = "erase"
            while w.erase_ahead(self.header.image_len):
                yield
            self.state = "download"
        use_range = False
        overlap = 0
        start = 0
        if acc > HEADER_SIZE and self.range_ok:
            overlap = min(_OVERLAP, w.offset)
            start = acc - overlap
        elif acc == HEADER_SIZE and self.range_ok and (end is None or mode == "window"):
            # Only the header is in (header_first, or a resume before any payload):
            # the overlap is the header's last 16 bytes (half its SHA-256).
            overlap = _OVERLAP
            start = acc - overlap
        if (start or end is not None) and self.range_ok:
            use_range = yield from self._set_range(start, end)
            if use_range:
                self._read_tail(overlap)
                if end is None and acc > HEADER_SIZE:
                    self.resumes += 1
            else:
                # False: no AT+HTTPCHEAD on this ESP. None: not now (busy, reset, lost
                # bytes): this attempt is a full download, the next one tries again.
                self.range_ok = use_range is None
                overlap = start = 0
                end = None
        att = Attempt(start, overlap, acc)
        att.hole0 = w.hole_end
        # bytes a whole response to this request holds
        att.want = (end - start + 1) if end is not None and use_range else note.size - start
        att.limit = start + att.want
        self.att = att
        # The ESP's timeout is a network-idle timeout, not a bound on the transfer:
        # we watch the bytes instead (a stall is no byte for that long plus a margin).
        yield from self._wait_app_cmd()
        att.cmd = c = self._cget(self)
        clk = self.clock
        att.last_ms = clk.ticks_ms()
        # ... and att.last_ms moves only with whole records: a record of rx_size bytes
        # takes rx_size * 10 / baud seconds on the wire (10.7 s at 9600 baud).
        stall_ms = self.http_timeout_ms + 2000 + self.rx_size * 10000 // self.baud
        # A record that pauses is held as long (unless the ESP rebooted or finished in
        # it): its end may still come, and then nothing of the response is lost.
        self.link.record_hold_ms = stall_ms
        quiet_ms = self.quiet_ms
        while not c.done:
            yield
            # Only this download's bytes count: URCs between records (an application's
            # +RMRECV every second) must not keep a stalled transfer alive.
            idle = clk.ticks_diff(clk.ticks_ms(), att.last_ms)
            if idle > quiet_ms and self.header and self._accepted() >= note.size:
                # Every byte is here but no final result (a mangled OK, issue 4 case 5):
                # judge the image by its own digest; the link is resynchronised below.
                self.log.warn("no final result after the last byte: judging by the digest")
                break
            if idle > quiet_ms and w.defer and use_range and att.received == att.want:
                # The same for a window: every byte asked for is here.
                self.log.warn("no final result after the window's last byte")
                break
            if att.stalled and idle > self.link.record_idle_ms + self.settle_ms:
                # A record stopped arriving (issue 4 case 3): the ESP is not sending. Do
                # not wait out its network timeout: resynchronise below.
                break
            if idle > stall_ms:
                if self.link.parser.in_record() and self.link.idle_ms() <= stall_ms:
                    continue  # inside a record every byte is this download's
                self.log.warn("download stalled")
                break
        self._cget_stop()
        if att.mode == _M_PROBE:
            self._decide(att)
        if att.suspect >= 0 and c.final is None and not w.hole_end:
            # The response stopped right after a record that ended in "\r\nready": the
            # ESP may have rebooted in it. Its bytes go (a sound image ending a record so
            # costs that record, never the job).
            self.log.warn("the last record ended in ready, then nothing: dropped")
            # (from where this attempt began writing: a Range response's first record
            # begins with bytes already held, before the slot's part of the stream)
            w.rewind(max(att.suspect, att.acc0) - HEADER_SIZE)
        if att.overflow and c.final is not None and not att.overflow_framing:
            # A final result came after the record that ran past the end, and what ran
            # past was not framing: the response was longer than asked (not the file).
            att.too_long = True
        if att.over_limit and not (
            c.final == b"OK" and (att.received == note.size or att.window_full)
        ):
            self.log.warn("response longer than asked, not the whole file: dropped")
            w.rewind(0)
        if att.gapped and w.hole_end:
            # Keep what was written after the hole as it is only when the response ran
            # exactly to where it should end: a record header that claimed a wrong
            # length (issue 4 case 1) shifted everything after it. (The final result
            # adds nothing: a mangled OK after the last byte, issue 4 case 5, counts.)
            want_end = end + 1 if end is not None and use_range else note.size
            ended = c.final == b"OK" and att.mode == _M_WRITE
            # (With several holes, two lengths off either way can cancel out: each run
            # is checked below then.)
            if (
                att.mode == _M_WRITE
                and att.pos == want_end
                and att.gaps == 1
                and (c.final == b"OK" or not att.unverified)
            ):
                att.confirmed = True
                self._ahead_check = None
                self._ahead_next = None
                self._placed(w.hole_end)
            elif att.unverified and (
                http_status_of(c.err_code) or (c.final == b"OK" and att.received >= note.size)
            ):
                # The response was never checked, and it was an error page, or as long
                # as the file (the file from 0: the server ignored the Range). One that
                # ended short (a connection cut, which older ESP-AT ends with OK) is
                # checked below like any other that broke off.
                self.log.warn("bytes after the hole unverified: dropped")
                w.drop_ahead()
            elif not self.range_ok:
                # Full downloads from now on bring them again: nothing to save.
                self.log.warn("bytes after the hole not confirmed: dropped")
                w.drop_ahead()
            elif (att.pos > want_end or ended) and att.hole0:
                self.log.warn("bytes after the hole misplaced: dropped")
                w.drop_ahead()
            else:
                if att.pos > want_end or ended:
                    # Off by what the lost records' headers lied about their lengths
                    # together: the bytes after the last hole are off by that much.
                    self._ahead_shift = att.pos - want_end
                # Misplaced by one lost record's lying header (the response ended that
                # many bytes off), or the response broke off (stall, silence, reboot,
                # link drop) or lost its place later: nothing confirms the bytes ahead.
                # Keep them; before the hole is fetched, _check_ahead finds where 16 of
                # them really belong and keeps, moves or drops them.
                # With several holes, each run is checked in turn, once its hole is
                # the current one: the check moves a run alone (a damaged header's
                # record measured one byte short, then a lying header further on).
                self.log.warn("bytes after the hole kept unconfirmed")
                self._ahead_check = True
                self._ahead_next = None
        if w.hole_end:
            w.park_tail()  # the hole's bytes will pass through the ring
        if att.overlap_bad and c.final == b"OK" and w.absorbed_at:
            # The bytes we hold just before the Range do not match the file's, right
            # after blocks written ahead of a hole joined the image: their position was
            # wrong (a lost record's header claimed a wrong length and a power cut came
            # before the check above). Drop them; the next attempt fetches them again.
            self.log.warn("overlap differs after a hole: dropping what came from ahead")
            w.rewind(w.absorbed_at)
            w.absorbed_at = 0
        elif att.overlap_bad and c.final == b"OK":
            # The file's bytes before the Range are not the ones we hold there: ours are
            # not to be trusted (they came in a record that ended right by chance).
            # Drop the block they are in; the next attempt fetches it again. Again right
            # after: they went wrong further back (a record lost unseen, everything
            # after it written off by its length), where nothing tells: start over.
            self._overlap_fails += 1
            if self._overlap_fails >= 2 or w.offset < att.overlap:
                # (the header too: the overlap reaches into it when little or nothing of
                # the payload is held, so the header may be what came altered, e.g. in
                # its digest field, or the file was replaced by one of the same size;
                # the journal forgets it, and the next download takes it afresh)
                self.log.warn("overlap differs again: dropping everything held")
                self._start_over()
                self._overlap_fails = 0
            else:
                self.log.warn("overlap differs: dropping the last block held")
                w.rewind(max(0, w.offset - att.overlap - 1))
        self.att = None
        if end is not None and use_range and att.received == note.size > end - start + 1:
            # The whole file came (not just more bytes: an HTTP error page, 416
            # included, is longer than a 64-byte Range, and a record header that
            # claimed more than it held swallows what follows; neither says anything
            # about Range).
            self.log.warn("server ignored Range: full downloads from now on")
            self.range_ok = False
        took = False  # a window was programmed
        if w.defer and w.buffered:
            # A window is written only when it arrived whole (final OK, no framing error,
            # exactly the bytes asked for: a lost record shows in the count); then the
            # ESP is idle while the flash stalls the host. Otherwise it is dropped.
            every = self._accepted() >= note.size or (use_range and att.received == att.want)
            whole = c.final == b"OK" or (not c.done and every)
            if end is not None and use_range and att.received != end - start + 1:
                # (or the whole file, whose bytes past the window were not taken)
                whole = att.window_full and att.received == note.size
            if att.window_full and c.final != b"OK":
                whole = False
            if whole and not att.frame_errors:
                took = True
                self.windows += 1
                self.state = "program"
                if self._journal_due:
                    self._journal_due = False
                    self._journal_download(note, self._hdr_raw)
                while w.flush_step(1):
                    yield
                self.state = "download"
            else:
                w.rewind(w.durable)
        self.bytes_received += att.received
        if att.req < acc:
            self.bytes_refetched += min(att.received, acc - att.req)
        yield from self._cget_tidy(c, use_range)
        if c.reset:
            return "ESP reset"
        if c.final == b"ERROR":
            if c.err_code is None:
                # We set AT+SYSLOG=1, so every ERROR comes with its ERR CODE: a bare one
                # means the ESP forgot SYSLOG, i.e. it rebooted unseen (issue 4 case 7).
                # Set it up again and fetch the job again (pending flag, fresh URL).
                self.log.warn("ERROR without ERR CODE: the ESP forgot SYSLOG")
                self._esp_forgot()
            st = http_status_of(c.err_code)
            if st:
                # An HTTP error status: the body was an error page. The probe kept it
                # out of the slot; never keep anything of this attempt.
                # (Blocks written ahead of a hole stay: they came from the file.)
                self.writer.rewind(
                    att.acc0 - HEADER_SIZE if att.acc0 > HEADER_SIZE else 0, keep_hole=True
                )
                return st
            return 0 if st == 0 else "download ERROR"
        if att.new_header:
            # A whole response that carries another header: the file changed (or its
            # header came altered). Start over. An error page ends in ERROR: never here.
            self.log.warn("header differs from the one we started with: starting over")
            self._start_over()
            return "image header changed"
        if att.reject is not None:
            return self._judge_reject(att, note)
        if att.too_long:
            # Not the file announced (more bytes than it holds), wherever the extra bytes
            # fell: nothing of this attempt is kept, complete image or not.
            self.writer.rewind(att.acc0 - HEADER_SIZE if att.acc0 > HEADER_SIZE else 0)
            return "response longer than announced"
        if att.confirmed and w.hole_end and self.header is not None:
            return "more"  # the bytes after the hole are in: fetch the hole alone next
        if self.header is None or self.writer.offset < self.header.image_len:
            if att.stall_seen:
                return "record stalled"
            if att.frame_errors:
                return "framing error"
        if self.header is None:
            return "no image header"
        if self.writer.offset < self.header.image_len:
            if (took or (end is not None and c.final == b"OK")) and self._accepted() > acc:
                return "more"
            if att.mode == _M_DISCARD:
                return "unexpected response"
            return "short: %d of %d B" % (self._accepted(), note.size)
        return self._verify()

    def _running_image(self, h):
        """True when header ``h`` describes exactly the image running now (same version
        and SHA-256, as the board knows it through ``running_sha256()``, if it does)."""
        get = getattr(self.board, "running_sha256", None)
        if get is None or h.image_version != self.board.running_version():
            return False
        try:
            return get() == h.sha256
        except Exception:
            return False

    def _cget(self, sink):
        # Start AT+HTTPCGET (the URL and Range set before) with its records going to
        # ``sink`` (on_record/frame_error); returns the Command.
        self.link.sink = sink
        cmd = b'AT+HTTPCGET="",%d,%d,%d' % (self.tx_size, self.rx_size, self.http_timeout_ms)
        self._mine = c = self.link.send(cmd, 1 << 29)
        return c

    def _cget_stop(self):
        # The download is over for us: records go nowhere, none is held, and one cut
        # short is ended (its bytes replayed as lines).
        self.link.sink = None
        self.link.record_hold_ms = 0
        if self.link.parser.in_record():
            self.link.parser.abort_record()

    def _cget_tidy(self, c, ranged):
        # After _cget_stop (and what the caller judged in between): without a final
        # result the link is put back in step; a Range header set for it is cleared.
        if not c.done:
            yield from self._init_esp()
        if ranged and not self.esp_reset:
            yield from self._clear_range()

    def _check_ahead(self, note):
        """Bytes written ahead of a hole were kept although their response did not say
        they sit where they should: it broke off, a power cut came first, or it ended
        off by the amount a lost record's header lied about its length (issue 4 case
        1). Before the hole is fetched, fetch the file's 16 bytes at a point inside
        them (``rx_size`` bytes in, the most one lying header can move them, or the
        middle) with a bounded ``Range``, and look for them within that distance in
        the slot (or as far as where the response ended off, which two lost records in
        one run can put beyond it): found in place, the bytes ahead stay; found once
        elsewhere, they are moved there (``SlotWriter.shift_ahead``); not found, or
        found more than once (a run of equal bytes), they are dropped. With later holes
        only the run up to the next one is checked and moved; each later run is
        checked once its hole is the current one (``_ahead_next``), the last within
        where the response ended off. Returns ``"more"`` when decided, else the
        attempt's failure (an int HTTP status, or a reason string)."""
        w = self.writer
        h = w.hole_end
        run = w.ahead_run_end() - h
        if run <= 0 and w.joint_len >= _OVERLAP:
            v = yield from self._check_joint()
            return v
        if run < 2 * _OVERLAP:
            return self._drop_run("too few to check")
        # The slot holds the file's bytes at k at k + t, lo <= t <= hi: within one
        # record's reach either way, or between 0 and where the response ended off (one
        # lying header moved them by that much, which may be more than half the run).
        # (the response's end told how far the run after the last hole is off)
        # (Kept until a check ends: a check that fails is tried again with it.)
        s = None if w.holes_after else self._ahead_shift
        rx = self.rx_size
        direct = False
        if s is not None and abs(s) + _OVERLAP < run:
            lo = s if s < 0 else 0
            hi = s if s > 0 else 0
        elif s and -rx <= s <= rx:
            # The run is shorter than that lie (a length digit lost: thousands of bytes
            # fewer claimed): no file bytes lie inside it both in place and moved. Test
            # that one shift: the slot's 16 bytes at x are the file's at x - s.
            direct = True
            lo = hi = s
        else:
            lo = -min(rx, (run - _OVERLAP) // 2)
            hi = -lo
        # The file's bytes [m, m + 16) are ahead whatever the shift. Take m where the
        # slot's 16 bytes occur once within reach (not in a run of equal bytes, which
        # would match in place and elsewhere alike): up to 8 places spread over them.
        # (direct: m = x - s, where the slot's 16 bytes at x occur once in the run.)
        m = self._place_ahead(h, run, lo, hi, s if direct else None)
        if m is None and not -rx <= lo <= hi <= rx:
            # Beyond one record's reach (more than one lost record in the run, a lie
            # and a lost length digit, moved it by their sum) no place was found: try
            # the usual window, within one record's reach.
            lo = -min(rx, (run - _OVERLAP) // 2)
            hi = -lo
            m = self._place_ahead(h, run, lo, hi, None)
        r = hi // 2
        while m is None and s is None and r >= _NARROW_MIN:
            # None there (bytes that repeat where the whole window fits, e.g. a short
            # run): a narrower window leaves room for more places, still whole inside
            # the run (a window clipped at the run's edge says nothing: a misplaced
            # run of repeating bytes would pass for in place). A shift beyond it is not
            # found: the run is dropped, as before.
            span = run - 2 * r - _OVERLAP
            for i in range(8):
                k = h + r + span * i // 7
                if self._once_within(k, -r, r):
                    m = k
                    lo, hi = -r, r
                    break
            r //= 2
        if m is None:
            if s is not None:
                self._ahead_shift = None
            return self._drop_run("too uniform to check")
        v = yield from self._fetch_probe(HEADER_SIZE + m)
        if s is not None and (v is None or v == "more"):
            self._ahead_shift = None  # the check ended (kept until one does)
        if v is not None:
            return v
        want = self._probe[:_OVERLAP]
        w.read_at(m, self._ovl)
        if self._ovl == want and not direct:  # in place: nowhere else within reach
            self.log.info("bytes ahead of the hole checked")
        else:
            at = w.find_ahead(want, m + lo, m + hi + _OVERLAP)
            if at is None and s is not None:
                # Not within where the response ended off: more went wrong than the
                # lost records' lengths (the last record's header came damaged, and
                # nothing after it told its length). Look within one record's reach.
                r = self.rx_size
                at = w.find_ahead(want, m - r, m + r + _OVERLAP)
            if at is not None and at != m and w.shift_ahead(at - m):
                self.log.warn("bytes after the hole moved by %d B" % (m - at))
                self.relocations += 1
                w.park_tail()
            else:
                return self._drop_run("not found in place")
        if w.hole_end and w.holes_after:
            self._ahead_next = w.hole_end  # the runs after the next holes: checked later
        self._placed(w.hole_end)
        return "more"

    def _place_ahead(self, h, run, lo, hi, s):
        # Up to 8 places m spread over the run [h, h + run) of bytes ahead, the first
        # where the slot's 16 bytes at m occur once within m + lo .. m + hi (+ 16); with
        # ``s`` (a direct test of that one shift), where the slot's 16 bytes at m + s
        # occur once in the run. None: no such place.
        w = self.writer
        span = run - (hi - lo) - _OVERLAP  # where m may go, after h - lo
        for i in range(8):
            k = h - lo + span * i // 7
            if s is not None:
                x = k + s
                w.read_at(x, self._ovl)
                if 0 <= k <= w.image_len - _OVERLAP and w.find_ahead(self._ovl, h, h + run) == x:
                    return k
            elif self._once_within(k, lo, hi):
                return k
            if not span:
                return None
        return None

    def _once_within(self, k, lo, hi):
        # The slot's 16 bytes at payload offset k occur once within k + lo .. k + hi
        # (+ 16) among the bytes ahead of the hole (SlotWriter.find_ahead).
        w = self.writer
        w.read_at(k, self._ovl)
        return w.find_ahead(self._ovl, k + lo, k + hi + _OVERLAP) == k

    def _check_joint(self):
        # What is kept ahead of the hole is a joint alone (a power cut came before any
        # block after it was programmed), or one with a hole after it (blocks torn in a
        # move; the runs after are checked when their turn comes): it is in place when
        # the file's 16 bytes at its offset are the first 16 it holds, and those occur
        # nowhere else in it (bytes that repeat would match at another shift too).
        # Returns "more" when decided, else the attempt's failure.
        w = self.writer
        w.joint_head(self._ovl)
        if min(self._ovl) == max(self._ovl) or not w.joint_unique(self._ovl):
            return self._drop_run("too uniform to check")
        v = yield from self._fetch_probe(HEADER_SIZE + w.fill_end)
        if v is not None:
            return v
        self._ahead_shift = None
        if self._probe[:_OVERLAP] != self._ovl:
            return self._drop_run("not found in place")
        self.log.info("bytes ahead of the hole checked")
        if w.holes_after:
            self._ahead_next = w.hole_end  # the runs after the next holes: checked later
        self._placed(w.hole_end)
        return "more"

    def _placed(self, h):
        # Journal that the bytes ahead of the hole ending at payload offset ``h`` sit at
        # their place (only while they are one run: no later hole); 0: nothing is known
        # any more. One record save (atomic), only when the value changes: a few times
        # per hole, always between responses.
        j = self.board.journal
        if h and self.writer.holes_after:
            return
        if h == self._placed_at or getattr(j, "crclog", None) is None:
            return  # (without a raw CRC log nothing ahead of a hole is journalled)
        d = j.load()
        if d and d.get("stage") == "download":
            d["placed"] = h
            j.save(d)
        self._placed_at = h

    def _fetch_probe(self, start):
        """Fetch the file's 16 bytes at stream offset ``start`` into ``self._probe``
        with a bounded ``Range`` (``AT+HTTPCHEAD``, then ``AT+HTTPCGET``). Returns None
        when they came; ``"more"`` when the server sent more (it ignores Range: full
        downloads from now on, the bytes ahead dropped); else the attempt's failure (an
        int HTTP status, or a reason string)."""
        ok = yield from self._set_range(start, start + _OVERLAP - 1)
        if not ok:
            if ok is False:
                self.range_ok = False
            return "Range not set"
        grab = _Grab(self._probe, self.clock)
        yield from self._wait_app_cmd()
        c = self._cget(grab)
        clk = self.clock
        stall_ms = self.http_timeout_ms + 2000
        while not c.done and clk.ticks_diff(clk.ticks_ms(), grab.last_ms) <= stall_ms:
            yield
        self._cget_stop()
        yield from self._cget_tidy(c, True)
        if c.reset:
            return "ESP reset"
        if c.final == b"ERROR":
            return http_status_of(c.err_code) or "download ERROR"
        if c.final != b"OK" or grab.bad or grab.n < _OVERLAP:
            return "check of the bytes ahead failed"
        self._ahead_check = None
        if grab.n > _OVERLAP:
            self.log.warn("server ignored Range: full downloads from now on")
            self.range_ok = False
            self.writer.drop_ahead()
            return "more"
        return None

    def _drop_run(self, why):
        # The bytes ahead of the current hole cannot be placed: drop them (up to the
        # next hole, which then begins where the hole ends). A run after it is checked
        # next. Returns "more".
        w = self.writer
        self.log.warn("bytes ahead of the hole %s: dropped" % why)
        w.drop_run()
        self._ahead_check = True if w.hole_end else None
        return "more"

    def _judge_reject(self, att, note):
        """The header of a whole response failed its check (``att.reject``, an
        ``ImageError``). Report it (status 5 finishes the job) only when it really is the
        announced file, consistently: the response has the announced size (a captive
        portal's page is not the file), and the same header bytes came in an earlier
        download too (a byte altered in transit, issue 4 case 2, must not finish the job
        as rejected). Otherwise the attempt failed: returns a reason string."""
        e = att.reject
        want = note.size if att.want is None else att.want
        raw = bytes(self._probe[:HEADER_SIZE])
        # The size asked for (the header alone), or the whole file (a server that
        # ignores Range answers a header request with it): either way, not a page.
        # Nor is a whole image of another size (the header's own): an image file
        # that the notification does not describe, as a header request would show.
        whole = att.received in (want, note.size) or att.received == _declared_len(raw)
        if e.status == OTA_SUCCEEDED and whole:
            return e  # the running image itself: version and digest match, no doubt
        if not whole:
            why = (att.received, want, e.reason)
            return "not the announced file (%d B, %d expected: %s)" % why
        if raw == self._rejected_hdr:
            return e
        self._rejected_hdr = raw
        if e.reason.endswith("disagrees with header"):
            # Or the notification's size came altered on the wire: the next attempt
            # takes the job's notification afresh (AT+RMOTAFETCH) and the same header
            # refuses only the same size again.
            self._need_refetch = True
        return "header refused once (%s): checking again" % e.reason

    def _verify(self):
        h = self.header
        w = self.writer
        try:
            rolling = w.finish()
        except ImageError as e:
            return e
        if rolling != h.sha256:
            # The payload or the header's own digest field came altered (issue 4 case
            # 2): start over, and take the header afresh from the next download (the
            # journal forgets it too, so a power cut now does not bring it back).
            self._start_over()
            return ImageError("SHA-256 mismatch", OTA_FAILED)
        self.state = "verify"
        if w.readback_digest() != h.sha256:
            w.rewind(0)
            return ImageError("read-back mismatch", OTA_FAILED)
        return "done"

    def _start_over(self):
        # Nothing held can be trusted, the header included: drop the slot's bytes, the
        # header, and the journal's record and CRCs (so a power cut now does not bring
        # them back); the next download takes the header afresh.
        self.writer.rewind(0)
        self.header = None
        j = self.board.journal
        note = self.note
        if self._rb and note is not None and self._rb_job == note.job_id:
            # (the job's rollbacks stay counted: the record replaced in one step; CRCs
            # without a download record describe nothing, and a download resets them)
            j.save({"stage": "rolled_back", "job": note.job_id, "rb": self._rb})
            j.crc_reset()
        else:
            j.clear()

    def _read_tail(self, k):
        """Copy the last ``k`` accepted bytes into the overlap buffer: payload, or the
        header's tail when no payload byte is in yet."""
        if self.writer.offset:
            self.writer.copy_tail(self._ovl, k)
        else:
            self._ovl[:k] = self._hdr_raw[HEADER_SIZE - k :]

    # --- the sink the link feeds records to -------------------------------------------
    def record(self, mv):
        """Called by the link with each verified ``+HTTPCGET`` record (memoryview)."""
        att = self.att
        n = len(mv)
        att.received += n
        att.last_ms = self.clock.ticks_ms()
        att.junk_ok = False
        if att.overflow:
            att.too_long = True  # a record after one that ran past the end
            att.mode = _M_DISCARD
        i = 0
        if att.mode == _M_PROBE:
            k = _PROBE - att.probed
            if k > n:
                k = n
            self._probe[att.probed : att.probed + k] = mv[:k]
            att.probed += k
            if att.probed < _PROBE:
                return
            self._decide(att)
            i = k
        att.suspect = -1
        if att.mode == _M_WRITE and i < n:
            self._take(mv, i, n)
            if mv[n - 1] == 121 and n >= 7 and _ends_ready(mv, n):
                att.suspect = att.pos - n

    def frame_error(self, reason):
        """A record was malformed. When the parser still knows where the response goes
        on (``parser.lost``: the dropped record's claimed length) and the writer can
        keep a hole, the records after it are written ahead and only the hole is
        fetched again (issue 3: bytes fetched twice per interruption, at most one erase
        block plus one record). Otherwise keep what was written and drop the rest of
        this attempt (the next one resumes)."""
        att = self.att
        att.last_ms = self.clock.ticks_ms()
        lost = self.link.parser.lost
        if lost is None:
            return  # a line too long inside a dropped record's bytes: already counted
        att.frame_errors += 1
        if lost < 0 and att.junk_ok and reason in ("line too long", "notification too long"):
            return  # the rest of a record that paused past the stall bound, as lines
        stall = reason == "record stalled"
        att.stall_seen = att.stall_seen or stall
        if att.mode == _M_DISCARD:
            att.stalled = att.stalled or stall
            return
        self.log.warn("framing:", reason)
        if att.mode == _M_PROBE:
            if lost >= 0 and att.req and self.header is not None and att.probed < att.overlap:
                # A Range response lost a record before its overlap could be checked.
                # Keep a hole anyway, its bytes ahead unverified: they stay only if the
                # response ends OK exactly where it should (an error page ends in
                # ERROR, a server that ignored the Range runs past the end).
                att.unverified = True
                att.mode = _M_WRITE
                att.pos = att.req + att.probed
            else:
                self._decide(att)
        if att.mode == _M_WRITE and lost >= 0 and self._gap(att, att.pos + lost):
            # A record that stopped arriving is a hole too: an ESP that paused past the
            # stall bound sends the rest later (lines to drop), then the next records.
            att.junk_ok = stall
            return
        att.stalled = att.stalled or stall
        att.mode = _M_DISCARD

    def _gap(self, att, resume):
        # The record at stream offset att.pos is lost; the response goes on at resume.
        w = self.writer
        acc = HEADER_SIZE + w.offset
        if resume <= acc:  # it held only bytes we have already
            att.pos = resume
            return True
        if w.hole_end:  # among the bytes written ahead of a hole: another hole
            if att.pos - HEADER_SIZE != w.ahead_at or not w.gap(resume - HEADER_SIZE):
                return False  # (a loss while a hole is being filled: retry that)
        elif att.pos > acc or not w.gap(resume - HEADER_SIZE):
            return False
        att.gapped = True
        att.gaps += 1
        att.pos = resume
        self.log.warn("keeping the bytes after a hole at %d..%d" % (acc, resume))
        return True

    def _take(self, mv, i, n):
        """Bytes ``mv[i:n]`` sit at stream offset ``att.pos``: drop what we already hold,
        write what continues the accepted prefix, or what follows a hole (``_gap``)."""
        att = self.att
        p = att.pos
        att.pos = p + n - i
        w = self.writer
        while i < n:
            have = w.offset
            acc = HEADER_SIZE + have
            if p < acc:
                if acc - p >= n - i:
                    return
                i += acc - p
                p = acc
            elif p > acc:
                # After a hole: write ahead. Otherwise a gap cannot happen with a correct
                # base: never write past it.
                q = p - HEADER_SIZE
                fit = w.image_len - q
                if fit < n - i:
                    # Past the image's end: the lost record's header claimed more than
                    # it held (issue 4 case 1). Keep what fits and count the rest: the
                    # response's end says by how much the bytes ahead must move.
                    if not att.past_end:
                        self.log.warn("bytes after the hole run past the image")
                    att.past_end = True
                    if fit <= 0:
                        return
                    n = i + fit
                ok = w.hole_end and w.write_ahead(mv[i:n], q)
                if not ok:
                    att.mode = _M_DISCARD
                    w.drop_ahead()
                return
            if p + n - i > att.limit and not att.req and att.limit < self.note.size:
                # From 0 and longer than asked (the header alone): the whole file, from a
                # server that ignores Range, or bytes that are not the file's in the
                # record. Go on; the attempt is kept only if the whole file came.
                att.limit = self.note.size
                att.over_limit = True
            room = w.image_len - have
            if room > att.limit - p:
                room = att.limit - p
            if w.defer and n - i > w.room < room:
                # Window mode, and the response goes on past the window (a server that
                # ignores Range sends the whole file): take the window and count the
                # rest, unwritten. No flash write while the ESP sends: with the UART's
                # interrupt off during one (rp2), bytes would be lost.
                if w.room:
                    w.write(mv[i : i + w.room])
                att.window_full = True
                att.mode = _M_DISCARD
                break
            if n - i > room:
                if att.overflow or room <= 0:
                    # More bytes than the image holds, or than we asked for: not the
                    # response we asked for.
                    att.mode = _M_DISCARD
                    att.too_long = True
                    self.log.warn("response longer than the image")
                    return
                # A record that runs past the end: its header claimed more than it held
                # and swallowed what followed (the final result; issue 4 case 1). Keep
                # what fits, judged by the image's digest; a record after it means the
                # response is not the one asked for (record()).
                self.log.warn("a record ran past the end: the rest of it dropped")
                att.overflow = True
                # Only framing past the end (its own CRLF, maybe the final result's
                # start): the final result may still come after it.
                att.overflow_framing = n - i - room <= 8 and _FRAMING.startswith(
                    bytes(mv[i + room : n])
                )
                n = i + room
            k = w.write(mv[i:n] if i or n < len(mv) else mv)
            i += k
            p += k
        if self.progress:
            try:
                self.progress(w.offset, w.image_len)
            except Exception as e:  # the application's: never the download's failure
                self.progress_errors += 1
                if not self._progress_logged:
                    self._progress_logged = True
                    self.log.error("progress callback failed:", repr(e))

    def _decide(self, att):
        """Decide what this response is from its first bytes (``self._probe``, up to 64):
        the image header (a fresh download), the overlap we asked for (Range honoured),
        our header again although we asked for a Range (ignored: skip what we hold), or
        something else (an error page, garbage: discard). Then feed the probe bytes."""
        m = att.probed
        p = self._probe
        att.mode = _M_DISCARD
        hdr_ok = self.header is not None and m >= HEADER_SIZE and p[:HEADER_SIZE] == self._hdr_raw
        if att.req:
            k = att.overlap
            if m >= k and p[:k] == self._ovl[:k]:
                att.pos = att.req
                self._overlap_fails = 0
            elif hdr_ok:
                self.log.warn("server ignored Range: skipping what we hold")
                self.range_ok = False
                att.pos = 0
                att.limit = self.note.size
            else:
                att.overlap_bad = m >= k
                return
        elif m < HEADER_SIZE:
            return  # shorter than a header: not our image
        elif self.header is not None:
            if not hdr_ok:
                att.new_header = True  # acted on only if the attempt ends OK
                return
            att.pos = 0
        else:
            h = None
            try:
                h = ImageHeader.parse(p)
                h.check(
                    self.board.board_id,
                    self._slot.size,
                    self.board.running_version(),
                    self.note.size,
                )
                self.writer.begin(h.image_len)
            except ImageError as e:
                att.reject = e
                if h is not None and self._running_image(h):
                    # The job we already installed, announced again (our result 2 was
                    # lost with an ESP reboot): it is done, not rejected.
                    att.reject = ImageError("v%d running" % h.image_version, OTA_SUCCEEDED)
                return
            self.header = h
            self._hdr_raw[:] = p[:HEADER_SIZE]
            if self.writer.defer:
                # Window mode: no flash write (littlefs stalls the host like any other)
                # while the ESP sends; journalled before the window's first program.
                self._journal_due = True
            else:
                self._journal_download(self.note, self._hdr_raw)
            att.pos = 0
        att.mode = _M_WRITE
        self._take(memoryview(p), 0, m)


def for_board(board, uart=None, clock=None, **kw):
    """A ``HostOTA`` and its ``ATLink`` for ``board`` (a board profile, see
    docs/interfaces.md). The link reads ``uart`` (default ``board.uart``) on ``clock``
    (default ``board.clock``) with buffers sized from ``board.settings``: ``line_max``
    and ``read_size`` (at most ``uart_rxbuf``; bytes) and ``rx_size`` (the largest
    ``AT+HTTPCGET`` record).
    ``kw`` go to ``HostOTA`` (``progress``, ``log``, waits). The link is ``agent.link``:
    the application sends its own commands and subscribes to URCs through it. Raises
    ``ValueError`` when there is no UART (e.g. the desktop board without
    ``RMOTA_UART``) or a setting is out of range."""
    from .at import ATLink

    s = board.settings
    uart = uart if uart is not None else getattr(board, "uart", None)
    if uart is None:
        raise ValueError("no UART: the board profile opened none (desktop: RMOTA_UART unset)")
    link = ATLink(
        uart,
        clock=clock if clock is not None else board.clock,
        line_max=s["line_max"],
        record_max=s["rx_size"],
        rxbuf_size=min(s.get("read_size") or s["uart_rxbuf"], s["uart_rxbuf"]),
    )
    return HostOTA(link, board, **kw)
