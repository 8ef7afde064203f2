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

``rxbuf`` (bytes) is the receive buffer of the faithful mode planned in issue 3 (a fixed
buffer that loses bytes when full while the host stalls in a flash operation, at the
configured baud). It is recorded but not modelled yet: the kernel's pty buffer is used.
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
    buffer size in bytes for the faithful mode (issue 3; not modelled yet).

    Raises ``OSError`` if the path cannot be opened. Counters: ``rx_bytes``,
    ``tx_bytes``."""

    def __init__(self, path, baud=115200, rxbuf=None):
        self.path = path
        self.baud = baud
        self.rxbuf = rxbuf
        self.rx_bytes = 0
        self.tx_bytes = 0
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
        return 1 if self._events() & _POLLIN else 0

    def readinto(self, buf, nbytes=None):
        """Read up to ``nbytes`` (default ``len(buf)``) bytes into ``buf`` without
        waiting. Returns None when nothing is available now, the count (> 0) read, or 0
        when the peer closed (pty master closed, device gone) or the UART was closed."""
        if self._closed:
            return 0
        n = len(buf) if nbytes is None or nbytes > len(buf) else nbytes
        if n <= 0:
            return None
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
