"""The AT link to an ESP running ESP-AT: a sans-I/O stream parser and a command layer.

``ATParser`` is fed raw bytes and calls a handler; it never touches the UART, so the same
object runs under pytest, the MicroPython unix port and a board. ``ATLink`` owns the
UART, one fixed receive buffer, the parser, the command in flight and the URC queue.

Framing facts (ESP-AT docs, "AT Command Set" and "HTTP AT Commands"; DESIGN.md section 1):

- lines end with ``\\r\\n``; final results are ``OK``, ``ERROR``, ``SEND OK``,
  ``SEND FAIL``, ``SET OK``; ``ERR CODE:0x...`` comes before ``ERROR`` when
  ``AT+SYSLOG=1``; ``busy p...`` means the ESP dropped our input;
- the data prompt is ``\\r\\nOK\\r\\n\\r\\n>`` with nothing after ``>``;
- ``AT+HTTPCGET`` output is records ``+HTTPCGET:<len>,<len raw bytes>\\r\\n``: only the
  length delimits the payload, which may contain ``\\r\\nOK\\r\\n`` or ``+HTTPCGET:``;
- URCs may arrive at any time, also between two records of a running download.

Usage::

    link = ATLink(uart, line_max=2048, record_max=2048)
    link.subscribe(lambda kind, line: print(kind, line))
    resp = link.command(b"AT+RMOTAFETCH", timeout_ms=2000)   # blocking helper
    cmd = link.send(b"AT", timeout_ms=500)                    # non-blocking
    while not cmd.done:
        link.poll()
"""

from .compat import Clock
from .errors import CommandError, ESPBusy, ESPReset, LinkError, LinkTimeout

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_LINE = const(0)
_PAYLOAD = const(1)
_TRAIL_CR = const(2)
_TRAIL_LF = const(3)
_SKIP = const(4)
_TRAIL_X = const(5)  # a record's CR came, then not its LF: is the next header after it?

_CR = const(13)
_LF = const(10)
_GT = const(62)
_PLUS = const(43)
_COMMA = const(44)
_REC_PREFIX = b"+HTTPCGET:"
_REC_PREFIX_LEN = const(10)
_MAX_LEN_DIGITS = const(8)
_MAX_LINES = const(8)  # response lines kept per command


def _near_prefix(b, n):
    # True when b[:n] starts with "+HTTPCGET:" with one byte altered, lost or doubled
    # (a record header damaged on the wire; its payload may be text).
    m = _REC_PREFIX_LEN
    if n <= m:
        return False
    p = _REC_PREFIX
    k = 0
    while k < m and b[k] == p[k]:
        k += 1
    if k == m:
        return False  # the whole prefix: a header, judged by its digits
    sub = dele = ins = True
    for q in range(k + 1, m):
        if b[q] != p[q]:
            sub = False
        if b[q - 1] != p[q]:
            dele = False
        if b[q + 1] != p[q]:
            ins = False
    if b[k + 1] != p[k]:
        ins = False
    return sub or dele or ins


def _header_piece(b, n):
    # True when b[:n] is "+HTTPCGET:" with one byte altered, lost or doubled, or a piece
    # of it ("+HTTP", "+HTTPCGET:6": a CR or LF came in place of one of its bytes).
    m = _REC_PREFIX_LEN
    p = _REC_PREFIX
    if 2 <= n < m:
        for q in range(n):
            if b[q] != p[q]:
                return False
        return True
    if n >= m and b[m - 1] == p[m - 1]:
        for q in range(m):
            if b[q] != p[q]:
                return _near_prefix(b, n)
        return True  # the whole prefix, but not a header (no comma before the line end)
    return _near_prefix(b, n)


def _is_esp_line(buf, n):
    # False when buf[:n] holds a control byte the ESP never prints in a line (UTF-8 and
    # TAB come in URCs that carry user data): a record's binary bytes. A line shaped
    # like a URC ("+NAME:", as +RMRECV with raw user data) is the ESP's whatever follows.
    k = 1
    while k < n and k < 16 and 65 <= buf[k] <= 90:
        k += 1
    if n and buf[0] == 43 and k >= 3 and k < n and buf[k] == 58:
        return True
    for i in range(n):
        c = buf[i]
        if (c < 32 and c != 9 and c != 13) or c == 127:
            return False
    return True


def _is_text(buf, a, b):
    # True when buf[a:b] holds only printable ASCII, CR and LF (what the ESP prints).
    for i in range(a, b):
        c = buf[i]
        if (c < 32 or c > 126) and c != 13 and c != 10:
            return False
    return True


class ATParser:
    """Incremental parser of the ESP-AT output stream.

    ``handler`` is an object with four methods, called synchronously from ``feed()``:

    - ``on_line(mv)``: a complete line without its ``\\r\\n`` (a memoryview of the
      parser's line buffer, valid only during the call; empty lines are not reported);
    - ``on_prompt()``: a ``>`` at the start of a line (ESP-AT's data prompt);
    - ``on_record(mv)``: the payload of one ``+HTTPCGET`` record, delivered only after
      its closing ``\\r\\n`` was seen (a memoryview of the record buffer, valid only
      during the call);
    - ``on_frame_error(reason)``: a malformed record (bad length, missing ``\\r\\n``,
      aborted) or a line over ``line_max`` (reason ``"line too long"``, or
      ``"notification too long"`` for a ``+RMFWNOTIFY`` line); nothing of
      the bad record is delivered. During the call ``parser.lost`` says what the error
      did to the position in the response: an int ``L >= 0`` when a record whose
      header was well formed and claimed ``L`` payload bytes was dropped (its bytes
      came altered; the records delivered next start ``L`` bytes further on); ``None``
      for a line too long while replaying (bytes already counted in a dropped record);
      ``-1`` when the position is unknown (a header that does not parse, a length over
      ``record_max``). A record that stopped arriving (``abort_record()``) reports its
      claimed length too: the ESP paused (the rest comes later, as lines to drop) or
      bytes were lost. A header whose length digits
      came altered but still parse claims a wrong ``L``, which nothing here can tell:
      the caller must check positions against where the response should end.

    Resynchronisation: when a record turns out wrong (it does not end in ``\\r\\n``, or
    ``abort_record()`` ends it after an inactivity timeout), the bytes taken as its
    payload are parsed again as ordinary output, after the frame error is reported.
    A header that claimed too many bytes swallowed what followed it: the next record
    header, the final result, a URC — or ``\\r\\nready\\r\\n`` from an ESP that
    rebooted in the middle of the record (issue 4 cases 1 and 11). The replayed bytes
    may form lines and records again, but a record found while replaying is never
    replayed a second time (bounded work, no recursion).

    Damaged record headers: a byte of ``+HTTPCGET:<len>,`` altered or lost on the
    wire makes the record read as lines (or as a length that does not parse). After a
    whole record, the ESP's last line, or ``new_response()`` (the command was sent),
    bytes that are not the ESP's output (a line with control bytes other than TAB and
    CR, a piece of ``+HTTPCGET:`` or a near miss of it) mark a damaged record. When the
    next header starts, it is reported as a frame error ``"record header damaged"``
    with ``lost`` the one length that fits between (``-1``: none); a URC in between
    makes it that much too long, which the caller's position check finds. Right after
    a record that went wrong (see Resynchronisation), where no whole record tells where
    the next begins, a damaged header whose line begins with ``+HTTPCGET:`` whole,
    right after a CR LF, is measured from that line's start, among the replayed bytes
    or after them; image bytes spell such lines too, so one that does not follow a CR
    LF, or whose length does not fit, is taken as more of the record that went wrong
    (nothing reported). A record whose CR came but not its LF, with the next header
    right after, was whole and is delivered. While a damaged record's bytes are
    parsed, or a record that did not end in CRLF while bytes kept coming is replayed,
    ``doubtful()`` is True: a final result or ``ready`` among them may be image bytes
    (``ATLink`` holds it).

    ``line_max`` (bytes) caps a line; ``record_max`` (bytes) caps a record's payload and
    should be the largest rx size the host asks ``AT+HTTPCGET`` for (ESP-AT allows up
    to 10240). Both buffers are allocated once here; ``feed()`` allocates a small
    constant per record (one memoryview slice per copy) and nothing per byte.
    Raises ``ValueError`` for sizes below 16 bytes.
    """

    def __init__(self, handler, line_max=2048, record_max=2048):
        if line_max < 16 or record_max < 16:
            raise ValueError("line_max and record_max must be >= 16")
        self.handler = handler
        self._line = bytearray(line_max + 1)  # (a line of line_max bytes and its CR)
        self._lmv = memoryview(self._line)
        # (two bytes more: a CR taken as a lost record's trailer, and the byte after it,
        # are replayed with it)
        self._rec = bytearray(record_max + 2)
        self._rmax = record_max
        self._rmv = memoryview(self._rec)
        self._cap = line_max + 1
        self._n = 0  # bytes in the line buffer
        self._need = 0  # payload bytes still to come in the current record
        self._have = 0  # payload bytes already in the record buffer
        self._state = _LINE
        self._fbuf = None
        self._fmv = None
        self._replaying = False
        self._replay_stalled = False  # the replay is of a record that stopped arriving
        self._replay_at = None  # live offset where the replayed bytes end (_resync)
        self._replay_n = 0
        self.lost = -1
        # During a replay: the replayed bytes after the line being delivered (0 outside
        # a replay). A final result or ready far from the end of a lost record's bytes
        # is image data, not the ESP's line (ATLink.on_line).
        self.replay_left = 0
        self._rend = 0  # during a replay: where its bytes end in the record buffer
        # Live stream offsets (bytes fed outside replays) for a damaged record header:
        # _base before the current feed(), _mark where the last whole record ended (None:
        # unknown), _damaged when the bytes after it were not ESP output.
        self._base = 0
        self._mark = None
        self._damaged = False
        self._dmg_digits = 0  # _damage(): the length field's digits of a header too long
        # _mark was only guessed (_damage's start, right after a record
        # that went wrong): a length that does not fit then means the guess was wrong.
        self._guess = False
        self._lcrlf = False  # the line being read began right after CR LF
        self._tail = 0  # the last two bytes fed live (CR LF: 0x0D0A), for the next line
        # Until the next record header, the lines may be image bytes: the rest of a
        # record that did not end in CRLF or stopped arriving (its header claimed too
        # few bytes, or the ESP paused). _expect: this response has records.
        self._doubt = False
        self._expect = True
        self._resets = 0
        self.junk = 0  # lines dropped as a record's bytes, and damaged headers
        self.lines = 0
        self.records = 0
        self.frame_errors = 0
        self.overflows = 0

    def in_record(self):
        """True while inside a ``+HTTPCGET`` record (payload or its ``\\r\\n``)."""
        return self._state in (_PAYLOAD, _TRAIL_CR, _TRAIL_LF, _TRAIL_X)

    def payload_has(self, needles, tail=64):
        """True when the last ``tail`` bytes of the record in progress hold one of
        ``needles`` (a tuple of bytes) followed by text only (``_is_text``): what came
        after the ESP stopped sending it ends there. Image bytes spell such strings too,
        anywhere; there, more image bytes follow. No allocation."""
        n = self._have
        rec = self._rec
        a = n - tail if n > tail else 0
        for x in needles:
            p = rec.find(x, a, n)
            if p >= 0 and _is_text(rec, p + len(x), n):
                return True
        return False

    def replay_rest_is_text(self):
        """During a replay (``on_line``): True when every replayed byte after the line
        being delivered is text the ESP prints (printable ASCII, CR, LF). After a final
        result or ``ready`` of its own the ESP prints nothing but lines (URCs); image
        bytes that spell one are followed by more image bytes, almost never all text.
        Reads at most ``replay_left`` bytes; no allocation."""
        n = self._rend
        return _is_text(self._rec, n - self.replay_left, n)

    def reset(self):
        """Forget any partial line or record (after an ESP reset or a resync)."""
        self._n = 0
        self._need = 0
        self._have = 0
        self._state = _LINE
        self._mark = None
        self._guess = False
        self._damaged = False
        self._doubt = False

    def rebooted(self):
        """The ESP printed ``ready`` (it rebooted): forget everything, as ``reset()``."""
        self._resets += 1
        self.reset()

    def new_response(self, records=True):
        """A command was sent: bytes from here on are its response. ``records``: it
        answers with ``+HTTPCGET`` records (``AT+HTTPCGET``). A record whose header came
        damaged is told by where it began (here, or after the last whole record or ESP
        line) and where the next header starts; for other commands only once a whole
        record came."""
        self._mark = self._base if records else None
        self._guess = False
        self._damaged = False
        self._doubt = False
        self._expect = records

    def doubtful(self):
        """True while the line being delivered may be image bytes rather than the ESP's:
        it comes from a record whose header came damaged (parsed live), or from a
        replay of a record that did not end in CRLF while bytes kept coming (not one
        that stopped arriving, after which the ESP had gone quiet)."""
        if self._replaying:
            return not self._replay_stalled
        return self._damaged or self._doubt

    def abort_record(self, reason="record stalled"):
        """End a record that stopped arriving (inactivity timeout): report a frame
        error, parse the bytes it had taken as payload again as lines (see the class
        docstring: an ESP that rebooted mid-record printed ``ready`` into them), then
        return to line mode. A partial line left at the end is dropped: the ESP writes
        whole lines, so it is the tail of the payload, and it must not be glued to the
        next line the ESP prints. No-op outside a record. Allocates nothing beyond the
        replay's memoryview slices (one per line or record found)."""
        if self.in_record():
            self._replay_stalled = True
            r = self._resets
            try:
                self._resync(reason, self._base)
            finally:
                self._replay_stalled = False
            if self.in_record():  # the replay ended inside a record found in it
                self.reset()
                self._frame_error(reason)
            self.reset()
            # (the rest of the record may come later, unless the ESP rebooted in it)
            self._doubt = self._expect and self._resets == r

    def _resync(self, reason, at=None):
        # A record went wrong: report it, then parse its payload bytes again as output
        # (not when already replaying: a record found in a replay is dropped, not replayed).
        have = self._have
        replay = have and not self._replaying
        # A record that ran its claimed length but did not end in CRLF, or that stopped
        # arriving: the response goes on after the bytes it claimed (an ESP that paused
        # sends the rest, then the next record; one that rebooted prints ready, which
        # the replay finds).
        lost = have + self._need if self.in_record() else -1
        if replay and self._state == _TRAIL_X:
            have += 2  # the CR and the byte after it, stored behind the payload
        elif replay and self._state == _TRAIL_LF:
            # The CR after the claimed payload was taken as its trailer's: it belongs to
            # what follows (a record found in the replay would miss it), so replay it.
            self._rec[have] = _CR
            have += 1
        self.reset()
        self._frame_error(reason, lost)
        if replay:
            r = self._resets
            fbuf, fmv = self._fbuf, self._fmv
            self._fbuf, self._fmv = self._rec, self._rmv
            self._replaying = True
            # the replayed bytes are the live ones [at - have, at): a record found in
            # them ends at a known live offset (_record_done)
            self._replay_at = at
            self._replay_n = have
            try:
                self.feed(self._rec, have)
            finally:
                self._replaying = False
                self._replay_at = None
                self._fbuf, self._fmv = fbuf, fmv
            # what follows may be the rest of the record (its header claimed too few)
            self._doubt = self._expect and self._resets == r and self._state == _LINE

    def _frame_error(self, reason, lost=-1):
        self.frame_errors += 1
        self.lost = lost
        self.handler.on_frame_error(reason)

    def feed(self, buf, n=None):
        """Parse the first ``n`` bytes of ``buf`` (bytes or bytearray; default all).
        Returns nothing; results go to the handler."""
        if n is None:
            n = len(buf)
        if self._replaying:
            self._feed(buf, n)
            return
        try:
            self._feed(buf, n)
        finally:
            self._base += n
            if n >= 2:
                self._tail = buf[n - 2] << 8 | buf[n - 1]
            elif n:
                self._tail = (self._tail & 0xFF) << 8 | buf[0]

    def _feed(self, buf, n):
        if buf is not self._fbuf:  # the link feeds the same buffer every time
            self._fbuf = buf
            self._fmv = memoryview(buf)
        mv = self._fmv
        i = 0
        h = self.handler
        while i < n:
            st = self._state
            if st == _PAYLOAD:
                k = self._need
                if k > n - i:
                    k = n - i
                have = self._have
                if buf is self._rec:  # a replay: copy forward within the same buffer
                    rec = self._rec
                    for q in range(k):
                        rec[have + q] = rec[i + q]
                else:
                    self._rec[have : have + k] = mv[i : i + k]
                self._have = have + k
                self._need -= k
                i += k
                if self._need == 0:
                    self._state = _TRAIL_CR
                continue
            c = buf[i]
            if st == _TRAIL_CR:
                if c == _CR:
                    self._state = _TRAIL_LF
                    i += 1
                else:  # the header lied: replay the payload, then this byte follows it
                    self._resync("record not ended by CRLF", self._base + i)
                continue
            if st == _TRAIL_LF:
                if c == _LF:
                    i += 1
                elif self._replaying:
                    self._resync("record not ended by CRLF", self._base + i)
                    continue
                elif c != _PLUS:  # the LF came altered, or the header lied: look on
                    self._rec[self._have] = _CR
                    self._rec[self._have + 1] = c
                    self._state = _TRAIL_X
                    i += 1
                    continue
                # (else the LF was lost: the next record header starts here)
                self._record_done(i)
                continue
            if st == _TRAIL_X:
                if c == _PLUS:  # the next record header: only the LF came altered
                    self._record_done(i)
                else:
                    self._resync("record not ended by CRLF", self._base + i)
                continue
            if st == _SKIP:  # discard up to the end of a line that cannot be used
                j = buf.find(b"\n", i, n)
                if j < 0:
                    return
                i = j + 1
                self._state = _LINE
                continue
            # _LINE
            if self._n == 0:
                if c == _GT:
                    i += 1
                    h.on_prompt()
                    continue
                if c == _CR or c == _LF:
                    i += 1
                    if self._mark is not None and not self._damaged and not self._replaying:
                        self._mark = self._base + i
                    continue
            j = buf.find(b"\n", i, n)
            e = n if j < 0 else j
            over = e - i > self._cap - self._n
            if over:  # copy what fits: it may still be a record header
                e = i + self._cap - self._n
            start_n = self._n
            if not start_n:  # a line begins: right after CR LF? (a record's trailer)
                if i >= 2:
                    self._lcrlf = buf[i - 2] == _CR and buf[i - 1] == _LF
                else:  # (a replay's first bytes follow its record's header)
                    t = self._tail if not self._replaying else 0
                    if i:
                        t = (t & 0xFF) << 8 | buf[0]
                    self._lcrlf = t == 0x0D0A
            self._line[start_n : start_n + e - i] = mv[i:e]
            self._n = start_n + e - i
            if self._n >= _REC_PREFIX_LEN and self._line[0] == 43:  # '+'
                r = self._record_header(start_n)
                if r == -2:  # malformed record header
                    self._n = 0
                    if not self._damage(False, 0, self._at(i - start_n)):
                        self._frame_error("bad record length")
                    self._state = _LINE if j >= 0 and not over else _SKIP
                    i = j + 1 if j >= 0 and not over else e
                    continue
                if r >= 0:  # r = bytes of this segment used up to the comma
                    if self._damaged:
                        self._damaged_before(self._at(i - start_n))
                    i += r
                    self._n = 0
                    if self._need > self._rmax:
                        self._need = 0
                        d = r + start_n - 1 - _REC_PREFIX_LEN
                        if not self._damage(False, d, self._at(i - r - start_n)):
                            self._frame_error("record length over rx size")
                        self._state = _LINE
                    else:
                        self._have = 0
                        self._state = _PAYLOAD if self._need else _TRAIL_CR
                    if not self._replaying:  # (after _damage, which asks whether it was)
                        self._doubt = False
                    continue
            if over:
                self.overflows += 1
                self._n = 0
                if not self._damage(True):
                    why = "line too long"
                    if self._line[:12] == b"+RMFWNOTIFY:":
                        why = "notification too long"  # (a URL longer than line_max)
                    self._frame_error(why, None if self._replaying else -1)
                self._state = _SKIP
                i = e
                continue
            if j < 0:
                return
            i = j + 1
            ln = self._n
            if ln and self._line[ln - 1] == _CR:
                ln -= 1
            self._n = 0
            if ln and not self._replaying and (self._mark is not None or self._doubt):
                # ESP output moves where a damaged record would start; other bytes are a
                # record's whose header came damaged, or the rest of one that went wrong
                # (not delivered)
                if not _is_esp_line(self._line, ln) or _header_piece(self._line, ln):
                    self.junk += 1
                    if self._mark is not None:
                        if not self._damaged:
                            self._dmg_digits = 0  # a header that did not parse
                        self._damaged = True
                    continue
                if self._mark is not None and not self._damaged:
                    self._mark = self._base + i
            if ln:
                self.lines += 1
                if self._replaying:
                    self.replay_left = n - i
                    self._rend = n
                    h.on_line(self._lmv[:ln])
                    self.replay_left = 0
                else:
                    h.on_line(self._lmv[:ln])

    def _record_done(self, i):
        # A record's payload and trailer came whole: deliver it; live offset ``i`` in the
        # buffer being fed is where the bytes after it begin.
        self._state = _LINE
        self.records += 1
        if self._expect:
            self._guess = False
            if not self._replaying:
                self._mark = self._base + i
                self._damaged = False
            elif self._replay_at is not None:
                # Found in a replay: a header after it that comes damaged is measured
                # from here (it used to go unseen, its bytes lost as lines).
                self._mark = self._replay_at - (self._replay_n - i)
                self._damaged = False
        self.handler.on_record(self._rmv[: self._have])
        self._have = 0

    def _at(self, i):
        # The live stream offset of index ``i`` of the buffer being fed (a replay's
        # bytes are the live ones [_replay_at - _replay_n, _replay_at)); None in a replay
        # with no known place.
        if not self._replaying:
            return self._base + i
        if self._replay_at is None:
            return None
        return self._replay_at - (self._replay_n - i)

    def _damage(self, long_line=False, digits=0, start=None):
        # Bytes after a whole record that are not ESP output (a record header that does
        # not parse, a line too long): a record whose header came damaged. When where
        # that record began is known, its length is told from where the next header
        # starts (_damaged_before); True then, and the frame error waits until then.
        # ``digits``: the header parsed but claimed more than rx_size (a lie, or a digit
        # altered): its length field's size on the wire, which tells the length exactly.
        # ``start``: live offset where the line began, for a header whose prefix came
        # whole (only its length field is wrong): the damaged record begins there. That
        # is guessed also where _mark is not known, right after a record that went
        # wrong (among its replayed bytes: a lying header swallowed this one; or in the
        # lines after them, _doubt), when the line follows a CR LF; it used to end the
        # attempt (17-44 KB fetched again). Image bytes spell such lines too: one that
        # does not follow a CR LF is more of the record that went wrong, and a guess
        # whose length does not fit is dropped (_damaged_before). Inside a damaged
        # record's bytes it is one more piece of them; a header that parses ends that
        # record (_damaged_before).
        if self._replaying and (start is None or self._replay_at is None):
            return False
        if self._mark is None:
            if long_line and self._doubt:  # the rest of a record that went wrong
                self.junk += 1
                return True
            if start is None or not self._expect or not (self._replaying or self._doubt):
                return False
            if not self._lcrlf:
                # Image bytes that spell a header (a real one follows the CR LF that
                # ends the record before it): more of the record that went wrong.
                self.junk += 1
                return True
            self._mark = start
            self._guess = True
            self._damaged = False
        if not self._damaged:  # (later pieces of the same record keep what it told)
            self._dmg_digits = digits
        self._damaged = True
        self.junk += 1
        return True

    def _damaged_before(self, at):
        # A whole record header starts at live offset ``at``; the bytes since _mark were
        # one record whose header came damaged: ``+HTTPCGET:`` and d digits and a comma,
        # L payload bytes, CRLF. Report it lost with the one L that fits (-1: none).
        # With _mark only guessed, a length that does not fit means the guess was wrong
        # (image bytes that spell a header piece): nothing is reported, as before.
        span = at - self._mark
        guess = self._guess
        self._guess = False
        self._damaged = False
        self._mark = at  # (the next record begins here: its header may be damaged too)
        lost = -1
        d = self._dmg_digits
        self._dmg_digits = 0
        if d:
            k = span - _REC_PREFIX_LEN - d - 3
            if 0 < k <= self._rmax:
                lost = k
        else:
            d = 1
            p = 10
            while d <= 5:
                k = span - _REC_PREFIX_LEN - d - 3
                if k > 0 and k <= self._rmax and p // 10 <= k < p:
                    lost = k if lost < 0 else -1
                d += 1
                p *= 10
        if lost >= 0 or not guess:
            self._frame_error("record header damaged", lost)

    def _record_header(self, start_n):
        """Check whether the line buffer holds a ``+HTTPCGET:<digits>,`` record header.

        Returns -1 (not a record header, or not complete yet), -2 (malformed: a
        non-digit before the comma or too many digits), or the number of bytes of the
        segment copied in at ``start_n`` up to and including the comma, with
        ``self._need`` set to the length."""
        line = self._line
        if not line.startswith(_REC_PREFIX):
            return -1
        end = self._n
        if end and line[end - 1] == _CR:
            end -= 1  # a whole line "+HTTPCGET:..." ending in CR
        v = 0
        k = _REC_PREFIX_LEN
        while k < end:
            c = line[k]
            if c == _COMMA:
                if k == _REC_PREFIX_LEN:
                    return -2
                self._need = v
                return k + 1 - start_n
            if c < 48 or c > 57 or k - _REC_PREFIX_LEN >= _MAX_LEN_DIGITS:
                return -2
            v = v * 10 + c - 48
            k += 1
        if end < self._n or k - _REC_PREFIX_LEN > _MAX_LEN_DIGITS:
            return -2  # the line ended without a comma
        return -1


# Final result lines (ESP-AT "AT Messages").
_FINALS = (b"OK", b"ERROR", b"SET OK", b"SEND OK", b"SEND FAIL")
# A final result or ready replayed from a lost record's bytes is the ESP's own line only
# within this many bytes of their end (what came after the record stopped, or what its
# header's wrong length swallowed); further in, it is image data (bytes).
_REPLAY_TAIL = const(256)
# In a stalled record's payload: the ESP rebooted (it prints ready when it boots), or
# bytes were lost and the command had ended; either way the record will not go on.
_ENDINGS = (b"ready\r\n", b"\r\nOK\r\n", b"\r\nERROR\r\n")

# URC kinds, by line prefix (DESIGN.md section 1). Matched in order; a prefix that is a
# whole line is compared exactly.
URC_READY = "ready"
_MAX_HELD = const(4)  # lines held at once (ATLink._hold)
URC_BUSY = "busy"
URC_WIFI = "wifi"
URC_RM = "rainmaker"
URC_FWNOTIFY = "fwnotify"
URC_RMOTA = "rmota"
URC_RECV = "recv"
URC_UNKNOWN = "unknown"
URC_FRAMING = "framing"

# Kinds a full URC queue drops first (ATLink._queue): they change no state of the link's;
# and the kinds it drops last: a job to run, an ESP that rebooted.
_EXPENDABLE = (URC_RECV, URC_UNKNOWN, URC_BUSY, URC_FRAMING)
_PRECIOUS = (URC_FWNOTIFY, URC_READY)


def _oldest(q, kinds, member):
    # Index of the oldest (kind, line) in q whose kind is (member) or is not in kinds;
    # -1 when none.
    for i in range(len(q)):
        if (q[i][0] in kinds) == member:
            return i
    return -1


_URC_TABLE = (
    (b"+RMFWNOTIFY:", URC_FWNOTIFY),
    (b"+RMOTA:", URC_RMOTA),
    (b"+RMRECV:", URC_RECV),
    (b"+RM", URC_RM),  # +RMCONNECTED, +RMDISCONNECTED, +RMRESET, +RMREBOOT, ...
    (b"WIFI ", URC_WIFI),
    (b"busy ", URC_BUSY),
    (b"ready", URC_READY),
)


class Command:
    """One command in flight on an ``ATLink``.

    Fields, filled in by ``ATLink.poll()``: ``done`` (bool), ``final`` (bytes: ``b"OK"``,
    ``b"ERROR"``, ``b"SET OK"``, ..., ``b">"`` for a prompt, or None when it timed out
    or the ESP reset), ``lines`` (list of bytes: response lines carrying the command's
    own ``+NAME:`` prefix), ``err_code`` (int from ``ERR CODE:0x...`` or None), ``busy``
    (the ESP answered ``busy p...``), ``reset`` (the ESP printed ``ready`` meanwhile),
    ``timed_out``, ``echoed`` (the ESP echoed this command line: echo is on, so the ESP
    has forgotten our ``ATE0`` — it rebooted, even if its ``ready`` was lost).
    """

    def __init__(self, cmd, prefix, t0_ms, timeout_ms, prompt):
        self.cmd = cmd
        self.prefix = prefix
        self.t0_ms = t0_ms
        self.timeout_ms = timeout_ms
        self.prompt = prompt
        self.done = False
        self.final = None
        self.lines = []
        self.err_code = None
        self.busy = False
        self.reset = False
        self.timed_out = False
        self.echoed = False

    @property
    def ok(self):
        """True when the command ended with a success final result or its prompt."""
        return self.final in (b"OK", b"SET OK", b"SEND OK", b">")

    def check(self):
        """Return self if ``ok``; else raise ``LinkTimeout``, ``ESPReset``, ``ESPBusy``
        or ``CommandError`` (with ``err_code`` and ``http_status``)."""
        if self.ok:
            return self
        if self.reset:
            raise ESPReset("ESP reset during %r" % (self.cmd,))
        if self.busy and self.final is None:
            raise ESPBusy("busy p... for %r" % (self.cmd,))
        if self.final is None:
            raise LinkTimeout("no answer to %r" % (self.cmd,))
        raise CommandError(self.cmd, self.final, self.err_code)


def quote(s):
    """Quote a string parameter for an AT command (bytes or str → bytes), escaping
    ``\\``, ``"`` and ``,`` with a backslash as ESP-AT's parser requires (ESP-AT docs,
    "AT Command Types": escape characters in string parameters)."""
    if isinstance(s, str):
        s = s.encode()
    out = bytearray(b'"')
    for c in s:
        if c == 92 or c == 34 or c == 44:
            out.append(92)
        out.append(c)
    out.append(34)
    return bytes(out)


class ATLink:
    """The shared AT link: UART + parser + one command in flight + URC subscribers.

    ``uart``: a ``machine.UART``-like stream (``readinto(buf)`` returning None when
    nothing is waiting, ``n``, or 0 when closed; ``write``). ``clock``: an object with
    ``ticks_ms``/``ticks_diff``/``sleep_ms`` (default: the real clock). ``line_max``,
    ``record_max``: see ``ATParser`` (bytes). ``rxbuf_size``: bytes read from the UART
    per ``poll()``. ``urc_queue``: URCs kept between two polls; beyond it the oldest
    that carries no state (``+RMRECV``, unknown lines, ``busy``, framing errors) is
    dropped, else the oldest that is not a notification or ``ready``, else the oldest,
    and counted in ``urc_drops``. All buffers are allocated
    here.

    ``record_idle_ms``: the payload-mode inactivity timeout. ESP-AT writes each
    ``+HTTPCGET`` record in one piece (DESIGN.md section 1, from esp-at's source), so a
    record that stops arriving for this long will never be completed (the ESP rebooted,
    or bytes were lost and the header claimed more than came): ``poll()`` ends it with
    ``ATParser.abort_record()`` — a frame error, and the swallowed bytes are parsed
    again, so a ``ready`` among them is seen. Counted in ``record_stalls``. It must
    exceed the time one record takes on the wire (rx size x 10 bits / baud: 180 ms for
    2,048 bytes at 115,200 baud) plus any pause hardware flow control may impose.
    ``record_hold_ms`` (attribute, default 0): while larger, a stalled record is held
    that long instead (the agent sets it during a download to its stall bound, the
    ESP's network timeout plus a margin), so an ESP whose output pauses mid-record and
    then goes on costs nothing; it is still ended at ``record_idle_ms`` when the last
    64 bytes of its payload so far hold ``ready`` (the ESP rebooted) or a final result
    (bytes were lost and the download had ended). Searched once per pause.

    A final result or ``ready`` in bytes that may be image bytes
    (``ATParser.doubtful()``: a damaged record's, or a replay's while the ESP kept
    sending) is held, counted in ``held_lines``, and taken only after half the record
    hold (``record_idle_ms`` outside a download) with no byte from the ESP; a record or
    frame error after it drops it, as does the next ``send()``.

    Records of ``AT+HTTPCGET`` go to ``link.sink`` (an object with ``record(mv)`` and
    ``frame_error(reason)``) while it is set; without a sink they are counted in
    ``stray_records`` and dropped.
    """

    def __init__(
        self,
        uart,
        clock=None,
        line_max=2048,
        record_max=2048,
        rxbuf_size=1024,
        urc_queue=8,
        log=None,
        record_idle_ms=1000,
    ):
        if rxbuf_size < 16 or urc_queue < 1 or record_idle_ms < 1:
            raise ValueError("rxbuf_size >= 16, urc_queue >= 1, record_idle_ms >= 1 required")
        self.uart = uart
        self.clock = clock or Clock()
        self.parser = ATParser(self, line_max, record_max)
        self._rx = bytearray(rxbuf_size)
        self._subs = []
        self._in_poll = False  # inside poll() (see poll)
        self._q = []
        self._qmax = urc_queue
        self.log = log
        self.sink = None
        self.cmd = None
        self.last_rx_ms = self.clock.ticks_ms()
        self.resets = 0
        self.urc_drops = 0
        self.stray_records = 0
        self.stray_prompts = 0
        self.echo_lines = 0
        self.late_finals = 0
        self._held = None  # lines that would act but may be image bytes (_hold)
        self._held_ms = 0
        self._held_junk = 0
        self.held_lines = 0
        self.dropped_lines = 0
        self.subscriber_errors = 0
        self.record_idle_ms = record_idle_ms
        self.record_hold_ms = 0
        self._searched = None  # last_rx_ms when a held record's payload was searched
        self.record_stalls = 0
        self.closed = False
        self._data_len = 0  # bytes the ESP would want after a prompt we gave up on

    # --- parser handler -------------------------------------------------------------
    def on_line(self, mv):
        if self.parser.doubtful():
            # Maybe image bytes (a damaged record's, the rest of one that went wrong, a
            # replay while the ESP kept sending): what would act is held (_hold).
            if _acts(mv) and not self._image_text():
                self._hold(mv)
            return
        self._act(mv)

    def _act(self, mv):
        c = self.cmd
        if c and not c.done and c.prefix and _starts(mv, c.prefix):
            # the command's own response line; a few at most (a hostile stream of them
            # must not grow the heap): beyond _MAX_LINES the oldest goes
            if len(c.lines) >= _MAX_LINES:
                c.lines.pop(0)
                self.dropped_lines += 1
            c.lines.append(bytes(mv))
            return
        for prefix, kind in _URC_TABLE:
            if _starts(mv, prefix):
                if kind == URC_READY:
                    if len(mv) != 5:
                        break
                    if self._image_text():
                        return  # inside the image bytes of a lost record
                    self._ready(c)
                elif kind == URC_BUSY and c and not c.done:
                    c.busy = True
                    if not c.prompt:  # the ESP dropped the command: no final result
                        self._finish(c, None)
                self._queue(kind, mv)
                return
        if c and not c.done:
            for f in _FINALS:
                if mv == f:
                    if c.prompt and f == b"OK":
                        return  # the OK before a '>' prompt
                    if self._image_text():
                        return  # inside the image bytes of a lost record
                    self._finish(c, f)
                    return
        elif mv == b"OK" or mv == b"ERROR" or mv == b"SET OK":
            self.late_finals += 1  # for a command we gave up on
            return
        if _starts(mv, b"ERR CODE:0x"):
            if c and not c.done:
                c.err_code = _hex(mv, 11)
            return
        if _starts(mv, b"AT"):
            self.echo_lines += 1  # the ESP echoes commands while ATE1 is on
            if c and not c.done and mv == c.cmd:
                c.echoed = True
            return
        self._queue(URC_UNKNOWN, mv)

    def _ready(self, c):
        # The ESP printed ready: it rebooted, the command in flight is lost.
        self.resets += 1
        self.parser.rebooted()
        if c and not c.done:
            c.reset = True
            self._finish(c, None)

    def _hold(self, mv):
        # A line that would act (a final result, ready, busy, ERR CODE, a URC) in bytes
        # that may be image bytes: kept (a few) and acted on in order only when nothing
        # that is not the ESP's follows for a while (poll); a record, a frame error or
        # more of a record's bytes after it say it was image bytes (on_record,
        # on_frame_error, parser.junk). Allocates a copy of the line (rare).
        h = self._held
        if h is None:
            h = self._held = []
            self._held_ms = self.clock.ticks_ms()  # the hold runs from the first line
            self._held_junk = self.parser.junk
        if len(h) < _MAX_HELD:
            h.append(bytes(mv))
        else:
            h[-1] = bytes(mv)  # the newest (the response's end) takes the last place
        self.held_lines += 1

    def _take_held(self):
        h = self._held
        self._held = None
        for line in h:
            self._act(line)

    def _image_text(self):
        # A final result or ready replayed from a lost record's bytes: the ESP's own
        # line only near their end (_REPLAY_TAIL) and followed by text alone; else image
        # bytes that spell it.
        p = self.parser
        if not p.replay_left:
            return False
        return p.replay_left > _REPLAY_TAIL or not p.replay_rest_is_text()

    def on_prompt(self):
        c = self.cmd
        if c and not c.done and c.prompt:
            self._finish(c, b">")
            return
        self.stray_prompts += 1
        # The ESP waits for data after a prompt we are no longer waiting for (it said
        # busy, then prompted after all). Feed it NULs: ESP-AT refuses a URL with a NUL
        # (ERROR) instead of swallowing our next command as data.
        if self._data_len:
            self.write(bytes(self._data_len))
            self._data_len = 0

    def on_record(self, mv):
        self._held = None  # the response went on: what was held was image bytes
        s = self.sink
        if s is None:
            self.stray_records += 1
        else:
            s.record(mv)

    def on_frame_error(self, reason):
        self._held = None  # (as on_record)
        s = self.sink
        if s is not None:
            s.frame_error(reason)
        self._queue(URC_FRAMING, reason.encode() if isinstance(reason, str) else reason)

    # --- internals ------------------------------------------------------------------
    def _finish(self, c, final):
        c.final = final
        c.done = True
        if c.prompt and final != b">":
            self._data_len = c.prompt if c.prompt is not True else 0

    def _queue(self, kind, mv):
        q = self._q
        if len(q) >= self._qmax:
            # Full: drop the oldest line that carries no state (application data, noise,
            # busy, framing); else the oldest that is not a notification or ``ready``
            # (a link or OTA state line: a later one says the state now); only a queue
            # full of notifications and ``ready`` drops one of them.
            i = _oldest(q, _EXPENDABLE, True)
            if i < 0:
                i = _oldest(q, _PRECIOUS, False)
            q.pop(i if i >= 0 else 0)
            self.urc_drops += 1
        q.append((kind, bytes(mv)))

    # --- public API -----------------------------------------------------------------
    def subscribe(self, fn):
        """Call ``fn(kind, line)`` for every URC (``kind`` one of the ``URC_*`` names,
        ``line`` bytes). Unknown lines come as ``URC_UNKNOWN``, never dropped silently;
        framing errors as ``URC_FRAMING``. Called from ``poll()``, after parsing."""
        self._subs.append(fn)

    def unsubscribe(self, fn):
        if fn in self._subs:
            self._subs.remove(fn)

    def write(self, data, timeout_ms=2000):
        """Write all of ``data`` (bytes-like) to the UART. Raises ``LinkTimeout`` when
        the UART accepts nothing for ``timeout_ms``."""
        mv = memoryview(data)
        n = len(mv)
        off = 0
        clk = self.clock
        t0 = clk.ticks_ms()
        while off < n:
            w = self.uart.write(mv[off:] if off else mv)
            if w:
                off += w
                t0 = clk.ticks_ms()
            elif clk.ticks_diff(clk.ticks_ms(), t0) > timeout_ms:
                raise LinkTimeout("UART write stalled")
            else:
                clk.sleep_ms(1)

    def send(self, cmd, timeout_ms=2000, prompt=False):
        """Send ``cmd`` (bytes, without ``\\r\\n``) and return its ``Command``.

        Non-blocking: the answer is collected by later ``poll()`` calls. ``prompt``:
        the command is answered by ESP-AT's ``>`` data prompt (``AT+HTTPURLCFG=<len>``,
        ``AT+HTTPCHEAD=<len>``); pass the data length (int) so that a prompt that comes
        after we gave up can be neutralised. A command still in flight is abandoned
        (its late final result is ignored). Raises ``LinkError`` when called from inside
        ``poll()`` (a subscriber or callback): the link cannot collect an answer there,
        and the command in flight would be abandoned in the middle of its response."""
        if self._in_poll:
            raise LinkError("send() from inside ATLink.poll()")
        c = self.cmd
        if c and not c.done:
            self._finish(c, None)
            c.timed_out = True
        prefix = None
        if cmd[:3] == b"AT+":
            k = 3
            while k < len(cmd) and cmd[k] not in b"=?":
                k += 1
            prefix = b"+" + cmd[3:k] + b":"
        if self._held is not None:
            # the response is over for us: a ready or URC held is the ESP's after all
            # (a missed reboot costs more than a needless re-initialisation)
            self._take_held()
        c = Command(cmd, prefix, self.clock.ticks_ms(), timeout_ms, prompt)
        self.cmd = c
        self.parser.new_response(cmd[:11] == b"AT+HTTPCGET")
        self.write(cmd)
        self.write(b"\r\n")
        return c

    def send_data(self, data, timeout_ms=2000):
        """After a prompt: write ``data`` raw (not escaped: ESP-AT reads exactly the
        announced length) and return a ``Command`` that completes on the next final
        result (``SET OK`` for HTTPURLCFG, ``OK`` for HTTPCHEAD, or ``ERROR``). Raises
        ``LinkError`` from inside ``poll()``, as ``send()`` does."""
        if self._in_poll:
            raise LinkError("send_data() from inside ATLink.poll()")
        c = Command(b"<data>", None, self.clock.ticks_ms(), timeout_ms, False)
        self.cmd = c
        self.write(data)
        return c

    def poll(self):
        """Read what the UART holds (at most one receive buffer), parse it, end a record
        that stalled for ``record_idle_ms``, time out the command in flight, and deliver
        queued URCs to subscribers. Returns the number of bytes read (0 when nothing was
        waiting). Never blocks. Called again from inside itself (a subscriber, or a
        handler's callback such as the agent's ``progress``) it returns 0 at once: the
        parser is in the middle of the bytes it was given."""
        if self._in_poll:
            return 0
        self._in_poll = True
        try:
            return self._poll()
        finally:
            self._in_poll = False

    def _poll(self):
        n = self.uart.readinto(self._rx)
        clk = self.clock
        now = clk.ticks_ms()
        if n:
            self.last_rx_ms = now
            self.parser.feed(self._rx, n)
        elif n == 0:
            self.closed = True
        if self._held is not None:
            # nothing but the ESP's lines for half the record hold (during a download),
            # outside a record
            p = self.parser
            hold = self.record_hold_ms // 2 if self.record_hold_ms else self.record_idle_ms
            if p.junk != self._held_junk:
                self._held = None  # more of a record's bytes came: image bytes
            elif not p.in_record() and clk.ticks_diff(now, self._held_ms) >= hold:
                self._take_held()
        if self.parser.in_record():
            idle = clk.ticks_diff(now, self.last_rx_ms)
            if idle > self.record_idle_ms and (
                idle > self.record_hold_ms or self._ended_in_record()
            ):
                self.record_stalls += 1
                self.parser.abort_record()
        c = self.cmd
        if c and not c.done and clk.ticks_diff(now, c.t0_ms) > c.timeout_ms:
            # A prompt wait after busy, or any command: give up.
            c.timed_out = True
            self._finish(c, None)
        if self._q:
            q = self._q
            self._q = []
            for kind, line in q:
                for fn in self._subs:
                    try:
                        fn(kind, line)
                    except Exception:  # one subscriber's bug must not stop the link
                        self.subscriber_errors += 1
        return n or 0

    def _ended_in_record(self):
        # A held record: did the ESP reboot or finish inside its payload so far? Searched
        # once per pause (again only after more bytes came).
        t = self.last_rx_ms
        if self._searched == t:
            return False
        self._searched = t
        return self.parser.payload_has(_ENDINGS)

    def idle_ms(self):
        """Milliseconds since the last byte arrived."""
        return self.clock.ticks_diff(self.clock.ticks_ms(), self.last_rx_ms)

    def wait(self, c):
        """Poll until ``c`` is done; sleeps 1 ms between empty polls. Returns ``c``."""
        while not c.done:
            if not self.poll():
                self.clock.sleep_ms(1)
        return c

    def command(self, cmd, timeout_ms=2000):
        """Blocking: send ``cmd`` and wait for its final result. Returns the ``Command``
        on ``OK``; raises ``LinkTimeout``, ``ESPBusy``, ``ESPReset`` or ``CommandError``."""
        return self.wait(self.send(cmd, timeout_ms)).check()


def _starts(mv, prefix):
    n = len(prefix)
    if len(mv) < n:
        return False
    for k in range(n):
        if mv[k] != prefix[k]:
            return False
    return True


def _acts(mv):
    # True for a line ATLink acts on: a final result, ERR CODE, or a URC of the table
    # (ready and busy included).
    for f in _FINALS:
        if mv == f:
            return True
    if _starts(mv, b"ERR CODE:"):
        return True
    for prefix, _ in _URC_TABLE:
        if _starts(mv, prefix):
            return True
    return False


def _hex(mv, start):
    v = 0
    for k in range(start, len(mv)):
        c = mv[k]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            break
        v = (v << 4) | d
    return v
