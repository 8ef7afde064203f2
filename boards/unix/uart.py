"""A ``machine.UART`` look-alike over a pty or tty path, for the desktop board.

Runs under the MicroPython unix port and CPython. The device is opened unbuffered and
put in raw mode with ``VMIN=0, VTIME=0`` (termios), so a read never blocks: under the
unix port a pty opened as a file otherwise blocks in ``readinto`` until the whole buffer
is full (DESIGN.md section 4). ``select.poll`` tells "nothing yet" from "peer closed":
a pty whose master side was closed reports ``POLLHUP`` and reads give 0 bytes or ``EIO``.

Methods follow ``machine.UART`` (timeout 0):

- ``readinto(buf, nbytes=None)`` → ``None`` (nothing available now), ``n > 0``, or ``0``
  (the peer closed); allocation-free on MicroPython.
- ``read(n=None)`` → bytes, ``None`` (nothing now) or ``b""`` (closed).
- ``write(buf)`` → ``len(buf)``; writes everything, looping over partial writes.
- ``any()`` → 1 when bytes are waiting, else 0 (a pty cannot say how many).

Usage::

    uart = UnixUART("/dev/pts/5", 115200)
    uart.write(b"AT\\r\\n")
    buf = bytearray(256)
    n = uart.readinto(buf)

Faithful mode (issue 3, "UART overflow"; ``faithful=True``): a real UART has a fixed
receive buffer (``machine.UART(rxbuf=...)``) that an interrupt fills while the program
does other things; when it is full and the peer keeps sending, bytes are LOST. The model
keeps a ring of ``rxbuf`` bytes. On every ``readinto``/``any`` it drains the pty: what
the ring can hold is kept, everything the pty holds beyond that - bytes that arrived
since the last drain with nowhere to go - is read and discarded, counted in
``overruns``. The peer (tools/espat_emu.py with ``baud=``) paces its output at the line
rate, so the bytes waiting in the pty are exactly those a real line would have
delivered meanwhile. Options:

- ``flow=True``: hardware flow control (RTS/CTS). Nothing is lost: what does not fit
  stays in the pty, whose kernel buffer back-pressures the peer (as the ESP pauses when
  the host drops RTS). On the real wire this needs the CTS line AND
  ``AT+UART_CUR=<baud>,8,1,0,3`` (ESP-AT's default is flow control 1, RTS only: the ESP
  can pause the host, but nothing pauses the ESP); the agent sends it when the board's
  ``flow_control`` setting is on. The model trusts the setting.
- ``irq_off_fifo=N``: flash operations run with interrupts OFF, so during a flash stall
  only the UART's hardware FIFO (N bytes) catches bytes. That is rp2: its
  ``rp2.Flash`` erase and program run inside ``begin_critical_flash_section()``
  (interrupts disabled, XIP off; micropython ports/rp2/rp2_flash.c) and a whole
  ``writeblocks`` buffer is programmed in one such section; the PL011 FIFO holds 32
  bytes. A 45 ms sector erase at 115200 baud brings ~520 bytes: any baud overflows it.
  Wire the flash model's ``stall_hook`` to ``flash_stall`` (``Board`` does).
  None (default): the receive interrupt keeps running during flash operations (DMA or
  an interrupt that does not need the flash), so the ring keeps filling.

The kernel pty buffer holds about 18 KB: a ring larger than that, or a stall longer than
the peer needs to fill it, turns into back-pressure instead of loss (the model then loses
fewer bytes than a real line would).
"""

import select
import sys

try:
    import termios
except ImportError:  # pragma: no cover - every Unix build we use has termios
    termios = None

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_IS_MICROPYTHON = sys.implementation.name == "micropython"
# Linux c_cc indices (MicroPython's termios does not export the names).
_VTIME = const(5)
_VMIN = const(6)
_EIO = const(5)
_EAGAIN = const(11)
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLL_CLOSED = select.POLLHUP | select.POLLERR


class UnixUART:
    """UART over the pty/tty at ``path``, ``baud`` bits per second (a ``termios.B<baud>``
    constant must exist, else ``ValueError``; a pty ignores it). ``rxbuf``: receive
    buffer size in bytes, modelled when ``faithful`` (see the module docstring, with
    ``flow`` and ``irq_off_fifo``); ``ValueError`` when ``faithful`` without ``rxbuf``.

    Raises ``OSError`` if the path cannot be opened. Counters: ``rx_bytes`` (bytes
    delivered), ``tx_bytes``, ``overruns`` (bytes lost to a full receive buffer, faithful
    mode), ``peak_held`` (most bytes the ring ever held)."""

    def __init__(
        self, path, baud=115200, rxbuf=None, faithful=False, flow=False, irq_off_fifo=None
    ):
        self.path = path
        self.baud = baud
        self.rxbuf = rxbuf
        self.faithful = faithful
        self.flow = flow
        self.irq_off_fifo = irq_off_fifo
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.overruns = 0
        self.peak_held = 0
        if faithful:
            if not rxbuf or rxbuf < 1:
                raise ValueError("faithful mode needs rxbuf >= 1")
            self._ring = bytearray(rxbuf)
            self._rmv = memoryview(self._ring)
            self._head = 0  # index of the oldest byte held
            self._held = 0  # bytes held
            self._hup = False
            self._scratch = bytearray(4096)
        speed = getattr(termios, "B%d" % baud, None) if termios else None
        if termios and speed is None:
            raise ValueError("unsupported baud %d" % baud)
        self._f = open(path, "r+b", buffering=0)
        self._closed = False
        try:
            if termios:
                self._raw(self._f.fileno(), speed)
            self._poll = select.poll()
            self._poll.register(self._f, _POLLIN)
            self._wpoll = None
        except Exception:
            self._f.close()
            raise
        self._ipoll = getattr(self._poll, "ipoll", None)

    @staticmethod
    def _raw(fd, speed):
        # Raw mode (no echo, no line discipline, 8 bits), then VMIN=0 VTIME=0: read()
        # returns at once with what is there, possibly nothing.
        setraw = getattr(termios, "setraw", None)
        if setraw is None:  # CPython keeps it in tty
            from tty import setraw
        setraw(fd)
        attr = termios.tcgetattr(fd)
        attr[4] = speed
        attr[5] = speed
        cc = attr[6]
        cc[_VMIN] = 0
        cc[_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attr)

    def _events(self):
        # The current poll events for reading (0 when nothing is pending); allocation-free
        # on MicroPython (ipoll reuses its result tuple).
        if self._ipoll is not None:
            for entry in self._ipoll(0):
                return entry[1]
            return 0
        r = self._poll.poll(0)
        return r[0][1] if r else 0

    def any(self):
        """1 if at least one byte can be read now, else 0 (also after the peer closed)."""
        if self._closed:
            return 0
        if self.faithful:
            self._drain(-1)
            return 1 if self._held else 0
        return 1 if self._events() & _POLLIN else 0

    # -- faithful mode -------------------------------------------------------------------

    def _raw_read(self, mv, n):
        # One non-blocking read of up to n bytes into mv (a buffer of at least n bytes).
        # Returns the count, 0 when nothing is there now; sets _hup when the peer closed.
        ev = self._events()
        if not ev & _POLLIN:
            if ev & _POLL_CLOSED:
                self._hup = True
            return 0
        try:
            if _IS_MICROPYTHON:
                got = self._f.readinto(mv, n)
            else:
                got = self._f.readinto(mv if n == len(mv) else mv[:n])
        except OSError as e:
            if e.errno == _EIO:
                self._hup = True
                return 0
            if e.errno == _EAGAIN:
                return 0
            raise
        if got is None:
            return 0
        if got == 0:
            self._hup = True
        return got

    def _drain(self, limit):
        # What the receive interrupt does: move bytes from the line (the pty) into the
        # ring, at most ``limit`` of them (-1: as many as fit). Bytes beyond what fits are
        # lost (counted in overruns), unless flow control holds them back in the pty.
        cap = len(self._ring)
        room = cap - self._held
        if 0 <= limit < room:
            room = limit
        while room > 0:
            tail = self._head + self._held
            if tail >= cap:
                tail -= cap
            seg = cap - tail
            if seg > room:
                seg = room
            got = self._raw_read(self._rmv[tail : tail + seg], seg)
            if not got:
                break
            self._held += got
            room -= got
        if self._held > self.peak_held:
            self.peak_held = self._held
        if room > 0 or self.flow:
            return
        scratch = self._scratch
        while True:
            got = self._raw_read(scratch, len(scratch))
            if not got:
                return
            self.overruns += got

    def flash_stall(self, us):
        """The host is stuck in a flash operation for ``us`` microseconds (the NOR
        model's ``stall_hook``). The receive interrupt ran until now; with
        ``irq_off_fifo`` it is off during the stall and only that many bytes of what
        arrives meanwhile are caught (the rest is lost, or held back with ``flow``)."""
        from nor import sleep_us

        if self.faithful and not self._closed:
            self._drain(-1)
            sleep_us(us)
            if self.irq_off_fifo is not None:
                self._drain(self.irq_off_fifo)
        else:
            sleep_us(us)

    def _ring_read(self, buf, n):
        self._drain(-1)
        held = self._held
        if not held:
            return 0 if self._hup else None
        if n > held:
            n = held
        cap = len(self._ring)
        h = self._head
        first = cap - h
        if first >= n:
            buf[0:n] = self._rmv[h : h + n]
        else:
            buf[0:first] = self._rmv[h:cap]
            buf[first:n] = self._rmv[0 : n - first]
        h += n
        if h >= cap:
            h -= cap
        self._head = h
        self._held = held - n
        if not self._held:
            self._head = 0
        self.rx_bytes += n
        return n

    def readinto(self, buf, nbytes=None):
        """Read up to ``nbytes`` (default ``len(buf)``) bytes into ``buf`` without
        waiting. Returns None when nothing is available now, the count (> 0) read, or 0
        when the peer closed (pty master closed, device gone) or the UART was closed."""
        if self._closed:
            return 0
        n = len(buf) if nbytes is None or nbytes > len(buf) else nbytes
        if n <= 0:
            return None
        if self.faithful:
            return self._ring_read(buf, n)
        ev = self._events()
        if not ev:
            return None
        if ev & _POLLIN:
            try:
                if _IS_MICROPYTHON:
                    got = self._f.readinto(buf, n)
                else:
                    got = self._f.readinto(memoryview(buf)[:n] if n < len(buf) else buf)
            except OSError as e:
                if e.errno == _EIO:  # Linux: pty slave read after the master closed
                    return 0
                if e.errno == _EAGAIN:
                    return None
                raise
            if got is None:  # EAGAIN on a non-blocking descriptor
                return None
            if got > 0:
                self.rx_bytes += got
                return got
            # Readable but 0 bytes with VMIN=0: end of file (hang-up).
            return 0
        if ev & _POLL_CLOSED:
            return 0
        return None

    def read(self, n=None):
        """Read up to ``n`` bytes (default: all that is waiting) without waiting.
        Returns bytes, None when nothing is available now, or b"" when the peer closed.
        Allocates its result."""
        if n is not None:
            buf = bytearray(n)
            got = self.readinto(buf)
            if got is None:
                return None
            return bytes(buf[:got])
        out = bytearray()
        chunk = bytearray(256)
        while True:
            got = self.readinto(chunk)
            if not got:
                break
            out.extend(chunk[:got] if got < len(chunk) else chunk)
        if out:
            return bytes(out)
        return None if got is None else b""

    def write(self, buf):
        """Write all of ``buf`` (bytes-like), looping over partial writes and waiting
        (poll for ``POLLOUT``) while the device refuses more. Returns ``len(buf)``.
        Raises ``OSError`` when the device fails or the UART is closed."""
        if self._closed:
            raise OSError(_EIO, "UART closed")
        total = len(buf)
        off = 0
        mv = None
        while off < total:
            try:
                if _IS_MICROPYTHON:
                    w = self._f.write(buf, off, total - off)
                else:
                    if mv is None:
                        mv = memoryview(buf)
                    w = self._f.write(mv[off:])
            except OSError as e:
                if e.errno != _EAGAIN:
                    raise
                w = None
            if not w:
                self._wait_writable()
                continue
            off += w
        self.tx_bytes += total
        return total

    def _wait_writable(self):
        if self._wpoll is None:
            self._wpoll = select.poll()
            self._wpoll.register(self._f, _POLLOUT)
        ev = self._wpoll.poll(1000)
        if ev and ev[0][1] & _POLL_CLOSED and not ev[0][1] & _POLLOUT:
            raise OSError(_EIO, "UART peer closed")

    def flush(self):
        """Nothing is buffered here: writes go straight to the device."""

    def close(self):
        """Close the device. Later reads return 0; writes raise ``OSError``."""
        if not self._closed:
            self._closed = True
            try:
                self._poll.unregister(self._f)
            except Exception:
                pass
            self._f.close()
