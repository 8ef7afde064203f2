"""The download loop without a wire: an in-memory ``+HTTPCGET`` stream through
``ATLink`` → the agent's record sink → ``SlotWriter`` (+ SHA-256) → a RAM block device.
Runs under the MicroPython unix port and CPython; used by the allocation test
(host_tests/dual/test_download_alloc.py) and by ``make bench`` (tools/bench.py).

Usage::

    p = Pipeline(image, rx_size=2048, read_size=4096)
    p.run()                       # pumps the whole stream through link.poll()
    assert p.verify()             # finish() + rolling digest == header digest

Nothing here allocates per byte: ``MemUART`` hands out views of the stream made once, and
``RAMBdev`` copies with slice assignment (a program is a copy, not an AND: a RAM device,
so that the desktop flash model's own cost is not counted).
"""

import hashlib

from rmota.agent import Attempt, HostOTA
from rmota.at import ATLink
from rmota.compat import Clock
from rmota.image import HEADER_SIZE, build_header
from rmota.urc import FWNotify

BLOCK = 4096


class MemUART:
    """A UART whose receive side is ``stream`` (bytes-like), handed out ``read_size``
    bytes per ``readinto`` (or cut at the boundaries listed in ``cuts``). The views are
    made here, so ``readinto`` allocates nothing. Writes are counted and dropped."""

    def __init__(self, stream, read_size=4096, cuts=None):
        mv = memoryview(stream)
        if cuts is None:
            cuts = list(range(read_size, len(stream), read_size))
        self.views = []
        a = 0
        for b in cuts + [len(stream)]:
            if b > a:
                self.views.append(mv[a:b])
            a = b
        self.i = 0
        self.tx = 0

    def readinto(self, buf, nbytes=None):
        i = self.i
        if i >= len(self.views):
            return None
        v = self.views[i]
        n = len(v)
        buf[0:n] = v
        self.i = i + 1
        return n

    def any(self):
        return 1 if self.i < len(self.views) else 0

    def write(self, data):
        self.tx += len(data)
        return len(data)


class RAMBdev:
    """``blocks`` erase blocks of RAM in the extended block-device protocol. Erase fills
    0xFF, program copies (no NOR AND: cheap on purpose, see the module docstring)."""

    def __init__(self, blocks, block_size=BLOCK):
        self.bs = block_size
        self.n = blocks
        self.mem = bytearray(blocks * block_size)
        self._mv = memoryview(self.mem)
        self._ff = bytearray(b"\xff" * block_size)
        self.erases = 0
        self.programs = 0

    def readblocks(self, blk, buf, off=0):
        a = blk * self.bs + off
        n = len(buf)
        buf[0:n] = self._mv[a : a + n]

    def writeblocks(self, blk, buf, off=0):
        a = blk * self.bs + off
        self._mv[a : a + len(buf)] = buf
        self.programs += 1

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            a = arg * self.bs
            self._mv[a : a + self.bs] = self._ff
            self.erases += 1
            return 0
        return 0


class NullJournal:
    """The journal interface, keeping nothing (the loop under test, not littlefs)."""

    def load(self):
        return None

    def save(self, d):
        pass

    def clear(self):
        pass

    def crc_reset(self):
        pass

    def crc_append(self, crc):
        pass

    def crcs(self):
        return []

    def crc_truncate(self, n):
        pass


class _Slot:
    def __init__(self, bdev):
        self.index = 1
        self.size = bdev.n * bdev.bs
        self.bdev = bdev


class StubBoard:
    """Just enough of a board profile for the agent's record sink."""

    board_id = b"unix"

    def __init__(self, bdev, settings):
        self.settings = settings
        self.journal = NullJournal()
        self._slot = _Slot(bdev)

    def inactive_slot(self):
        return self._slot

    def running_version(self):
        return 1


def make_image(payload, version=2):
    """An rmota image of ``payload`` for board ``unix``."""
    return build_header(payload, b"unix", version) + payload


def payload_bytes(n, seed=1):
    """``n`` pseudo-random bytes (a small LCG: the same on both runtimes)."""
    out = bytearray(n)
    x = seed
    for i in range(0, n, 4):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = x & 0xFF
        if i + 1 < n:
            out[i + 1] = (x >> 8) & 0xFF
        if i + 2 < n:
            out[i + 2] = (x >> 16) & 0xFF
        if i + 3 < n:
            out[i + 3] = (x >> 23) & 0xFF
    return out


def make_stream(image, rx_size, first=None):
    """The ESP's ``AT+HTTPCGET`` output for ``image``: records of ``rx_size`` payload
    bytes (the first one ``first`` bytes, when given), then ``\\r\\nOK\\r\\n``. Returns
    ``(stream, record_ends)``: the bytearray and the stream offset after each record."""
    out = bytearray()
    ends = []
    i = 0
    n = len(image)
    mv = memoryview(image)
    while i < n:
        k = first if (first and i == 0) else rx_size
        if k > n - i:
            k = n - i
        out += b"+HTTPCGET:%d," % k
        out += mv[i : i + k]
        out += b"\r\n"
        ends.append(len(out))
        i += k
    out += b"\r\nOK\r\n"
    return out, ends


def framing_overhead(rx_size, payload_len):
    """Wire bytes per payload byte of ``+HTTPCGET`` records of ``rx_size`` bytes."""
    full, last = divmod(payload_len, rx_size)
    wire = full * (len(b"+HTTPCGET:%d,\r\n" % rx_size) + rx_size)
    if last:
        wire += len(b"+HTTPCGET:%d,\r\n" % last) + last
    return wire / payload_len


class Pipeline:
    """The agent's download loop over ``stream`` (default: ``make_stream(image,
    rx_size)``), read ``read_size`` bytes at a time (or cut at ``cuts``). ``settings``:
    board settings (``flash_mode`` etc.; ``rx_size`` is set here)."""

    def __init__(self, image, rx_size=2048, read_size=4096, settings=None, stream=None, cuts=None):
        s = {"rx_size": rx_size, "line_max": 2048, "flash_mode": "stream"}
        if settings:
            s.update(settings)
        if stream is None:
            stream, _ = make_stream(image, rx_size)
        self.image_len = len(image) - HEADER_SIZE
        blocks = (self.image_len + BLOCK - 1) // BLOCK + 1
        self.bdev = RAMBdev(blocks)
        self.uart = MemUART(stream, read_size, cuts)
        self.board = StubBoard(self.bdev, s)
        rbuf = read_size if cuts is None else max(b - a for a, b in zip([0] + cuts, cuts))
        self.link = ATLink(
            self.uart,
            clock=Clock(),  # the real one, as on a board: read on every poll
            line_max=s["line_max"],
            record_max=rx_size,
            rxbuf_size=max(rbuf, 16),
        )
        a = self.agent = HostOTA(self.link, self.board)
        a.note = FWNotify(0, len(image), b"http://bench/image", "2", "bench")
        a._slot = self.board.inactive_slot()
        a.writer = a._new_writer(self.bdev)
        a.writer.on_block = a._on_block  # as in HostOTA._job: a CRC-32 per block for the journal
        a.writer.on_erase = a._on_erase
        a.header = None
        a.att = Attempt(0, 0, 0)
        a.att.limit = a.att.want = len(image)  # a whole download, as _attempt sets it
        self.link.sink = a

    def step(self):
        """One ``link.poll()``: one read, parsed and written. Returns the bytes read."""
        return self.link.poll()

    def run(self):
        """Pump the whole stream. Returns the bytes read."""
        total = 0
        poll = self.link.poll
        while True:
            n = poll()
            if not n:
                return total
            total += n

    def verify(self):
        """Finish the image; True when the rolling digest matches the header's."""
        a = self.agent
        return a.header is not None and a.writer.finish() == a.header.sha256

    def readback_ok(self):
        """Read the slot back and hash it; True when it matches the header's digest."""
        a = self.agent
        return a.writer.readback_digest() == a.header.sha256


def sha_only(data, chunk=BLOCK):
    """The reference: SHA-256 over ``data`` in ``chunk``-byte pieces (as the writer
    hashes), through views made before the clock starts. Returns the digest."""
    h = hashlib.sha256()
    h.update(data)
    return h.digest()
