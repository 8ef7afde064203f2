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

from .at import URC_FWNOTIFY, URC_READY, URC_RM, URC_RMOTA, URC_UNKNOWN, URC_WIFI, quote
from .errors import ImageError, LinkError, ProtocolError, describe_err_code, http_status_of
from .image import HEADER_SIZE, ImageHeader
from .log import Logger
from .urc import (
    OTA_FAILED,
    OTA_IN_PROGRESS,
    OTA_REJECTED,
    OTA_SUCCEEDED,
    parse_fwnotify,
    parse_rmota,
)
from .writer import SlotWriter

_PROBE = 64  # bytes of each attempt checked before anything is written
_OVERLAP = 16  # bytes already written that a resumed attempt asks for again
_INFO_MAX = 80  # AT+RMOTARESULT builds JSON in a 256-byte buffer: keep <info> short

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
        self.frame_errors = 0
        self.cmd = None
        self.reject = None


class HostOTA:
    """The agent. ``link``: an ``rmota.at.ATLink``; ``board``: a board profile (see
    docs/interfaces.md: ``inactive_slot()``, ``commit()``, ``reboot()``,
    ``boot_state()``, ``confirm()``, ``journal``, ``settings``, ``board_id``).

    ``progress(done, total)`` (bytes) is called as the payload is written.
    ``max_attempts``: failed download attempts before the job is reported 3.
    ``backoff_ms``: first retry delay (doubles, capped at ``backoff_max_ms``).
    Counters for post-mortems: ``attempts``, ``resumes``, ``refetches``,
    ``bytes_received``, ``bytes_refetched``, ``errors``; ``last_error`` (str);
    ``result`` ((status, info) of the last job reported, or None).
    """

    def __init__(
        self,
        link,
        board,
        progress=None,
        log=None,
        max_attempts=6,
        backoff_ms=500,
        backoff_max_ms=30000,
        fetch_wait_ms=5000,
        link_wait_ms=60000,
    ):
        s = board.settings
        self.link = link
        self.board = board
        self.clock = link.clock
        self.progress = progress
        self.log = log or Logger("rmota")
        self.rx_size = s.get("rx_size", 2048)
        self.tx_size = s.get("tx_size", 2048)
        self.http_timeout_ms = s.get("http_timeout_ms", 10000)
        self.allow_raw = s.get("allow_raw", False)
        if self.rx_size > len(link.parser._rec):
            raise ValueError("rx_size above the link's record_max")
        self.max_attempts = max_attempts
        self.backoff_ms = backoff_ms
        self.backoff_max_ms = backoff_max_ms
        self.fetch_wait_ms = fetch_wait_ms
        self.link_wait_ms = link_wait_ms
        self._probe = bytearray(_PROBE)
        self._ovl = bytearray(_OVERLAP)
        self._hdr_raw = bytearray(HEADER_SIZE)
        self.header = None
        self.writer = None
        self.note = None  # the job being worked on (FWNotify)
        self._notified = None  # the newest notification not yet taken
        self.wifi_up = True
        self.cloud_up = True
        self.esp_reset = False
        self.esp_restart_wanted = False
        self.esp_ota_status = None
        self.range_ok = True
        self.att = None
        self.state = "start"
        self.result = None
        self.attempts = 0
        self.resumes = 0
        self.refetches = 0
        self.bytes_received = 0
        self.bytes_refetched = 0
        self.errors = 0
        self.last_error = None
        self._gen = None
        self._idle = False
        self._retry_at = None
        link.subscribe(self._on_urc)

    # --- URCs -------------------------------------------------------------------------
    def _on_urc(self, kind, line):
        if kind == URC_FWNOTIFY:
            try:
                note = parse_fwnotify(line)
            except ProtocolError as e:
                self.errors += 1
                self.log.warn("bad +RMFWNOTIFY:", e.reason)
                return
            self._notified = note
        elif kind == URC_READY:
            self.esp_reset = True
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
            elif line == b"+RMRESET" or line == b"+RMREBOOT":
                # RainMaker AT docs: the host should then restart the ESP (AT+RST).
                self.esp_restart_wanted = True
        elif kind == URC_RMOTA:
            self._on_rmota(line)
        elif kind == URC_UNKNOWN:
            self.log.debug("unhandled line", line[:60])

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
        else:
            self.log.info("ESP OTA status", st)

    # --- run model --------------------------------------------------------------------
    def poll(self):
        """Do a bounded amount of work: one UART read and one step of the agent.
        Returns the number of bytes read. Never raises: an unexpected error is logged,
        counted in ``errors`` and the agent restarts its cycle after a back-off (the
        application that embeds the agent keeps running)."""
        try:
            n = self.link.poll()
        except Exception as e:  # the UART itself failed: report, keep the app alive
            self._fault(e)
            return 0
        if self._gen is None:
            if self._retry_at is not None:
                if self.clock.ticks_diff(self.clock.ticks_ms(), self._retry_at) < 0:
                    return n
                self._retry_at = None
            self._gen = self._main()
        try:
            next(self._gen)
        except StopIteration:
            self._gen = None
            self._idle = True
        except Exception as e:
            self._gen = None
            self._fault(e)
        return n

    def _fault(self, e):
        self.errors += 1
        self.last_error = repr(e)
        self.log.error("agent error:", repr(e))
        self.link.sink = None
        self._retry_at = self.clock.ticks_ms() + self.backoff_ms
        self.state = "error"

    def run(self, until_idle=False, timeout_ms=None):
        """Blocking loop over ``poll()``. With ``until_idle`` it returns once the agent
        has nothing left to do (no job pending, results delivered); ``timeout_ms``
        bounds the whole run (then returns). Returns the agent's ``state``. A board
        reboot (after a commit) does not return."""
        clk = self.clock
        t0 = clk.ticks_ms()
        while True:
            if not self.poll():
                clk.sleep_ms(1)
            if until_idle and self._idle:
                return self.state
            if timeout_ms is not None and clk.ticks_diff(clk.ticks_ms(), t0) > timeout_ms:
                return self.state

    def _main(self):
        self._idle = False
        self.state = "init"
        yield from self._init_esp()
        yield from self._finish_committed()
        yield from self._deliver_saved_result()
        self.state = "fetch"
        self._notified = None
        c = yield from self._cmd(b"AT+RMOTAFETCH", 5000)
        if c.ok:
            yield from self._wait(self.fetch_wait_ms, lambda: self._notified is not None)
        while self._notified is not None:
            note = self._notified
            self._notified = None
            yield from self._job(note)
        if self.esp_restart_wanted:
            yield from self._restart_esp()
        self.state = "idle"

    # --- small generator helpers ------------------------------------------------------
    def _cmd(self, cmd, timeout_ms=2000, prompt=False):
        c = self.link.send(cmd, timeout_ms, prompt)
        while not c.done:
            yield
        return c

    def _data(self, data, timeout_ms=2000):
        c = self.link.send_data(data, timeout_ms)
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
            c = yield from self._cmd(b"AT", 1000)
            if c.ok:
                break
            if c.final is None and not c.busy and i >= 1:
                # Nothing at all: the ESP may be waiting for data after a prompt.
                # NUL bytes end that (ESP-AT refuses a NUL in a URL with ERROR).
                self.link.write(bytes(64))
            yield from self._sleep(self._backoff(i))
        else:
            raise LinkError("ESP does not answer AT")
        yield from self._sleep(50)  # let late answers to abandoned commands drain
        yield from self._cmd(b"ATE0", 1000)
        yield from self._cmd(b"AT+SYSLOG=1", 1000)
        self.esp_reset = False

    def _restart_esp(self):
        """``AT+RST`` at a safe moment (no host job running), then wait for ``ready``."""
        self.state = "esp-restart"
        self.esp_reset = False
        c = yield from self._cmd(b"AT+RST", 2000)
        if c.ok or c.reset:
            yield from self._wait(10000, lambda: self.esp_reset)
        self.esp_restart_wanted = False
        yield from self._init_esp()

    # --- results ----------------------------------------------------------------------
    def _report(self, job_id, status, info, tries=4):
        """``AT+RMOTARESULT=0,"<job>",<status>,"<info>"``. ESP-AT answers ERROR while the
        cloud is down or when no host job is pending in its RAM (lost on an ESP reboot):
        then wait for the cloud / fetch the job again and retry. Returns True when
        ``OK``."""
        info = info[:_INFO_MAX]
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
            yield from self._sleep(self._backoff(i))
        return False

    def _refetch(self, job_id):
        """``AT+RMOTAFETCH`` and wait for the notification of ``job_id``: re-arms ESP-AT's
        pending-job flag after an ESP reboot and brings a fresh presigned URL. Returns
        the new ``FWNotify`` or None."""
        self.refetches += 1
        self._notified = None
        c = yield from self._cmd(b"AT+RMOTAFETCH", 5000)
        if not c.ok:
            return None
        got = yield from self._wait(
            self.fetch_wait_ms, lambda: self._notified is not None
        )
        if not got:
            return None
        note = self._notified
        if note.job_id != job_id:
            return None  # another job: left in _notified for the main loop
        self._notified = None
        return note

    def _finish_job(self, job_id, status, info):
        """Record a final result in the journal, deliver it, clear the journal when the
        ESP accepted it (else it is retried on the next cycle)."""
        self.result = (status, info)
        j = self.board.journal
        j.save({"stage": "report", "job": job_id, "status": status, "info": info})
        ok = yield from self._report(job_id, status, info)
        if ok:
            j.clear()
        else:
            self.log.warn("result kept in the journal for a later delivery")

    def _deliver_saved_result(self):
        j = self.board.journal.load()
        if j and j.get("stage") == "report":
            self.state = "report"
            self.result = (j["status"], j["info"])
            ok = yield from self._report(j["job"], j["status"], j["info"])
            if ok:
                self.board.journal.clear()

    def _finish_committed(self):
        """After the reboot that follows a commit: the board booted the new image on
        trial. Confirm it (the link to the ESP works: that is our self-test) and report
        2; if the board rolled back, report 3."""
        j = self.board.journal.load()
        if not j or j.get("stage") != "committed":
            return
        self.state = "confirm"
        bs = self.board.boot_state()
        if bs.get("slot") == j["slot"] and not bs.get("rolled_back"):
            if bs.get("trial"):
                self.board.confirm()
            status, info = OTA_SUCCEEDED, "v%d running" % j["version"]
        else:
            status, info = OTA_FAILED, "rolled back: v%d did not confirm" % j["version"]
        self.log.info("boot after commit:", info)
        yield from self._finish_job(j["job"], status, info)

    # --- the job ----------------------------------------------------------------------
    def _job(self, note):
        self.note = note
        self.state = "job"
        self.log.info("job", note.job_id, "size", note.size, "version", note.fw_version)
        saved = self.board.journal.load()
        if saved and saved.get("job") == note.job_id and saved.get("stage") == "report":
            yield from self._deliver_saved_result()
            return
        if note.type != 0:
            yield from self._finish_job(note.job_id, OTA_REJECTED, "type %d unknown" % note.type)
            return
        if note.size < HEADER_SIZE:
            yield from self._finish_job(note.job_id, OTA_REJECTED, "size %d < header" % note.size)
            return
        yield from self._report(note.job_id, OTA_IN_PROGRESS, "downloading", tries=1)
        self.header = None
        slot = self.board.inactive_slot()
        self.writer = SlotWriter(slot.bdev)
        self._slot = slot
        self.range_ok = True
        failures = 0
        verdict = None
        while failures < self.max_attempts:
            verdict = yield from self._attempt(note)
            if verdict == "done":
                break
            if isinstance(verdict, ImageError) and verdict.status == OTA_REJECTED:
                break
            failures += 1
            self.attempts += 1
            self.log.warn("attempt %d failed: %s" % (failures, self._why(verdict)))
            if self.esp_reset:
                yield from self._init_esp()
                fresh = yield from self._refetch(note.job_id)
                if fresh:
                    note = self.note = fresh
            if isinstance(verdict, int) and 400 <= verdict < 500:
                # An expired or refused presigned URL: ask for the job again.
                fresh = yield from self._refetch(note.job_id)
                if fresh:
                    note = self.note = fresh
            if not (self.wifi_up and self.cloud_up):
                yield from self._wait(self.link_wait_ms, lambda: self.wifi_up and self.cloud_up)
            yield from self._sleep(self._backoff(failures - 1))
        if isinstance(verdict, ImageError):
            yield from self._finish_job(note.job_id, verdict.status, verdict.reason)
            return
        if verdict != "done":
            yield from self._finish_job(note.job_id, OTA_FAILED, self._why(verdict))
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
            }
        )
        self.board.commit(slot.index, h.image_len, h.sha256, h.image_version)
        self.log.info("committed v%d to slot %d; rebooting" % (h.image_version, slot.index))
        self.state = "reboot"
        self.board.reboot()

    def _why(self, verdict):
        if isinstance(verdict, int):
            return "HTTP %d" % verdict if verdict else "HTTP connection failed"
        if isinstance(verdict, ImageError):
            return verdict.reason[:_INFO_MAX]
        return str(verdict)[:_INFO_MAX]

    def _set_url(self, url):
        """Set the URL with ``AT+HTTPURLCFG`` and read it back with ``AT+HTTPURLCFG?``.

        URL bytes are sent only after ``>``. ``busy p...`` instead of a prompt: wait a
        second for a late prompt, else back off and send the command again. ``SET OK``
        missing (a URL byte was lost and the ESP still waits for it): feed it NUL bytes
        one at a time until it answers (a NUL makes ESP-AT refuse the URL), never a
        command. Returns True when the ESP holds exactly ``url``."""
        n = len(url)
        for i in range(6):
            if self.esp_reset:
                yield from self._init_esp()
            c = yield from self._cmd(b"AT+HTTPURLCFG=%d" % n, 1000, prompt=n)
            if c.final != b">":
                self.log.warn("no prompt for AT+HTTPURLCFG", "busy" if c.busy else c.final)
                yield from self._sleep(self._backoff(i))
                continue
            c = yield from self._data(url, 2000)
            if c.final is None and not c.reset:
                self.log.warn("no SET OK: padding the URL")
                for _ in range(n):
                    c = yield from self._data(b"\x00", 100)
                    if c.done and c.final is not None:
                        break
                yield from self._sleep(50)
                continue
            if c.final != b"SET OK":
                yield from self._sleep(self._backoff(i))
                continue
            q = yield from self._cmd(b"AT+HTTPURLCFG?", 2000)
            want = b"+HTTPURLCFG:%d," % n + url
            if q.ok and q.lines and q.lines[-1] == want:
                return True
            self.log.warn("URL read back differs; setting it again")
        return False

    def _set_range(self, start):
        """``AT+HTTPCHEAD`` with ``Range: bytes=<start>-`` (True when the ESP took it;
        firmware before 2023 answers ERROR: no Range then)."""
        hdr = b"Range: bytes=%d-" % start
        c = yield from self._cmd(b"AT+HTTPCHEAD=%d" % len(hdr), 1000, prompt=len(hdr))
        if c.final != b">":
            return False
        c = yield from self._data(hdr, 2000)
        return c.final == b"OK"

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
        ok = yield from self._set_url(note.url)
        if not ok:
            return "URL not set"
        acc = self._accepted()
        use_range = False
        overlap = 0
        if acc > HEADER_SIZE and self.range_ok:
            overlap = min(_OVERLAP, self.writer.offset)
            use_range = yield from self._set_range(acc - overlap)
            if use_range:
                self._read_tail(overlap)
                self.resumes += 1
            else:
                self.range_ok = False
                overlap = 0
        att = Attempt(acc - overlap if use_range else 0, overlap, acc)
        self.att = att
        self.link.sink = self
        cmd = b'AT+HTTPCGET="",%d,%d,%d' % (self.tx_size, self.rx_size, self.http_timeout_ms)
        # The ESP's timeout is a network-idle timeout, not a bound on the transfer:
        # we watch the bytes instead (a stall is no byte for that long plus a margin).
        att.cmd = c = self.link.send(cmd, 1 << 29)
        stall_ms = self.http_timeout_ms + 2000
        quiet_ms = 1500
        while not c.done:
            yield
            idle = self.link.idle_ms()
            if idle > quiet_ms and self.header and self._accepted() >= note.size:
                break  # every byte is here but no final result: judge by the digest
            if idle > stall_ms:
                self.log.warn("download stalled")
                break
        self.link.sink = None
        if self.link.parser.in_record():
            self.link.parser.abort_record()
        if att.mode == _M_PROBE:
            self._decide(att)
        self.att = None
        self.bytes_received += att.received
        if att.req < acc:
            self.bytes_refetched += min(att.received, acc - att.req)
        if not c.done:
            # No final result (mangled, or the ESP stalled): get the link back in step
            # before any other command.
            yield from self._init_esp()
        if use_range and not self.esp_reset:
            yield from self._clear_range()
        if c.reset:
            return "ESP reset"
        if c.final == b"ERROR":
            st = http_status_of(c.err_code)
            if st:
                # An HTTP error status: the body was an error page. The probe kept it
                # out of the slot; never keep anything of this attempt.
                self.writer.rewind(att.acc0 - HEADER_SIZE if att.acc0 > HEADER_SIZE else 0)
                return st
            return 0 if st == 0 else "download ERROR"
        if att.reject is not None:
            return att.reject
        if self.header is None:
            return "no image header"
        if self.writer.offset < self.header.image_len:
            if att.mode == _M_DISCARD:
                return "unexpected response"
            return "short: %d of %d B" % (self._accepted(), note.size)
        return self._verify()

    def _verify(self):
        h = self.header
        w = self.writer
        try:
            rolling = w.finish()
        except ImageError as e:
            return e
        if rolling != h.sha256:
            w.rewind(0)
            return ImageError("SHA-256 mismatch", OTA_FAILED)
        self.state = "verify"
        if w.readback_digest() != h.sha256:
            w.rewind(0)
            return ImageError("read-back mismatch", OTA_FAILED)
        return "done"

    def _read_tail(self, k):
        """Copy the last ``k`` accepted payload bytes into the overlap buffer."""
        w = self.writer
        off = w.offset - k
        bs = w.block_size
        if off >= w.durable:
            b = off - w.durable
            self._ovl[:k] = w._buf[b : b + k]
        else:
            tmp = bytearray(k)
            w.bdev.readblocks(off // bs, tmp, off % bs)
            self._ovl[:k] = tmp

    # --- the sink the link feeds records to -------------------------------------------
    def record(self, mv):
        """Called by the link with each verified ``+HTTPCGET`` record (memoryview)."""
        att = self.att
        n = len(mv)
        att.received += n
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
        if att.mode == _M_WRITE and i < n:
            self._take(mv, i, n)

    def frame_error(self, reason):
        """A record was malformed: everything after it is out of place. Keep what was
        written, drop the rest of this attempt (the next one resumes)."""
        att = self.att
        att.frame_errors += 1
        if att.mode != _M_DISCARD:
            self.log.warn("framing:", reason)
            if att.mode == _M_PROBE:
                self._decide(att)
            att.mode = _M_DISCARD

    def _take(self, mv, i, n):
        """Bytes ``mv[i:n]`` sit at stream offset ``att.pos``: drop what we already hold,
        write what continues the accepted prefix."""
        att = self.att
        p = att.pos
        att.pos = p + n - i
        acc = HEADER_SIZE + self.writer.offset
        if p < acc:
            if acc - p >= n - i:
                return
            i += acc - p
        elif p > acc:  # a gap: cannot happen with a correct base; never write past it
            att.mode = _M_DISCARD
            return
        w = self.writer
        if n - i > w.image_len - w.offset:
            # More bytes than the image holds: not the response we asked for.
            att.mode = _M_DISCARD
            self.log.warn("response longer than the image")
            return
        w.write(mv[i:n] if i else mv)
        if self.progress:
            self.progress(w.offset, w.image_len)

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
            elif hdr_ok:
                self.log.warn("server ignored Range: skipping what we hold")
                self.range_ok = False
                att.pos = 0
            else:
                return
        elif m < HEADER_SIZE:
            return  # shorter than a header: not our image
        elif self.header is not None:
            if not hdr_ok:
                self.log.warn("header differs from the one we started with: starting over")
                self.header = None
                self.writer.rewind(0)
                return
            att.pos = 0
        else:
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
                return
            self.header = h
            self._hdr_raw[:] = p[:HEADER_SIZE]
            att.pos = 0
        att.mode = _M_WRITE
        self._take(memoryview(p), 0, m)
