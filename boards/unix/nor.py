"""A file-backed NOR flash model for the desktop board (DESIGN.md section 4).

The flash is a plain file, opened unbuffered so that every program or erase reaches the
kernel at once: a process killed at any instant leaves in the file exactly what real
flash would hold. The model keeps NOR's rules and nothing more:

- erased bytes read 0xFF;
- a program can only clear bits: new = old AND data (a read-modify-write of the file);
- an erase works on one whole sector (4,096 bytes) and sets it to 0xFF;
- nothing is implicit: a program never erases.

Power cuts are made by the model itself: ``cut_at(op_index, byte_index)`` (or the
environment variable ``RMOTA_CUT="op,byte"``, read at construction) stops the
operation with that index after ``byte_index`` of its bytes are done - a torn program
leaves its first bytes programmed and the rest old, a torn erase its first bytes 0xFF and
the rest old - and ends the process at once, as a power cut would: ``os._exit(137)`` on
CPython, ``kill -9`` of itself on the MicroPython unix port (which has no ``os._exit``;
the pid comes from ``/proc/self/stat``, else ``RMOTA_PID``, else the shell's ``$PPID``).

``Partition`` exposes a run of sectors in MicroPython's extended block-device protocol
(the one ``esp32.Partition``, ``rp2.Flash`` and ``pyb.Flash`` speak), so the agent's
flash writer and littlefs can use it like a board's flash.

Flash operations take time, as on real NOR (issue 3, "UART overflow"): with ``erase_ms``
and ``page_ms`` set, an erase stalls the caller for ``erase_ms`` and a program for
``page_ms`` per 256-byte page it touches, like a host that waits for the chip's busy bit.
The stall goes to ``stall_hook(us)`` when one is set (the faithful UART, which models what
its receive buffer catches meanwhile), else the model sleeps. Typical figures for the
serial NOR on host boards (Winbond W25Q16JV on the Raspberry Pi Pico, W25Q128JV; their
datasheets' AC characteristics): 4 KB sector erase tSE 45 ms typical, 400 ms max; page
program tPP 0.7 ms typical, 3 ms max. Both default to 0 (no stall) here; the board
profile sets them.

Besides the 4 KB sector erase (command 0x20) serial NOR erases aligned 32 KB and 64 KB
blocks in one command (0x52 and 0xD8: tBE1 120 ms and tBE2 150 ms typical on W25Q16JV and
W25Q128JV, against 8 x 45 and 16 x 45 ms sector by sector). pico-sdk's
``flash_range_erase`` and ESP-IDF's ``esp_flash_erase_region`` use them wherever the range
is aligned. ``block_erase(sector, n)`` models them (``block32_ms``, ``block64_ms``);
``Partition.erase_blocks`` splits a range into the largest aligned commands.

Usage::

    nor = NORFlash("/tmp/flash.bin", 1042 * 4096, create=True)
    slot = Partition(nor, 2, 512)
    slot.ioctl(6, 0)                         # erase block 0 of the partition
    slot.writeblocks(0, b"hello", 0)         # program (AND) five bytes
    nor.cut_at(nor.op_count + 1, 100)        # the next-but-one operation is torn
"""

import os
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


try:
    from array import array
except ImportError:  # pragma: no cover - every port we use has array
    array = None

SECTOR_SIZE = const(4096)
PAGE_SIZE = const(256)  # program page of serial NOR (W25Qxx): a program is timed per page
_IS_MICROPYTHON = sys.implementation.name == "micropython"

# The exit code of a power cut on CPython (128 + SIGKILL, what a shell reports for kill -9).
CUT_EXIT_CODE = const(137)


def _and_into_py(dst, src, src_off, n):
    # CPython: whole-buffer AND through big integers (fast in C; allocates, which does
    # not matter on CPython).
    a = int.from_bytes(bytes(dst[:n]), "little")
    b = int.from_bytes(bytes(src[src_off : src_off + n]), "little")
    dst[:n] = (a & b).to_bytes(n, "little")


if _IS_MICROPYTHON:
    try:
        import micropython

        # MicroPython: a viper loop over the raw bytes, ~4 ms per MB and allocation-free.
        @micropython.viper
        def _and_into(dst, src, src_off: int, n: int):
            pd = ptr8(dst)  # noqa: F821 - viper built-in
            ps = ptr8(src)  # noqa: F821
            i = 0
            while i < n:
                pd[i] = pd[i] & ps[src_off + i]
                i += 1

    except (ImportError, AttributeError):  # pragma: no cover - a port without viper

        def _and_into(dst, src, src_off, n):
            for i in range(n):
                dst[i] &= src[src_off + i]

else:
    _and_into = _and_into_py


def sleep_us(us):
    """Sleep ``us`` microseconds (MicroPython's ``time.sleep_us``; CPython's ``time.sleep``)."""
    f = getattr(time, "sleep_us", None)
    if f is not None:
        f(us)
    else:
        time.sleep(us / 1e6)


class NORFlash:
    """NOR flash of ``size`` bytes kept in the file ``path``.

    ``size`` must be a multiple of ``sector_size`` (bytes, default 4,096). With
    ``create=True`` the file is (re)created fully erased (all 0xFF); otherwise it must
    exist and have exactly ``size`` bytes (``ValueError`` if not, ``OSError`` if it is
    missing).

    Counters (for tests and post-mortems): ``erase_counts`` (an ``array('I')``, erases
    per sector), ``erase_ops``, ``program_ops``, and ``op_count`` (every erase and
    program started, the index space of ``cut_at``). Addresses are byte offsets from the
    start of the flash; out-of-range access raises ``ValueError`` and touches nothing.

    The environment variable ``RMOTA_CUT="op,byte"`` arms ``cut_at(op, byte)`` at
    construction, so a test runner can tear an operation in a child process. Operation
    indices count from 0 per ``NORFlash`` object: a process should open the flash once.

    ``erase_ms`` (per sector erase) and ``page_ms`` (per 256-byte page programmed), floats,
    make every operation stall the caller that long (see the module docstring); the total
    is counted in ``stalled_us``. ``stall_hook`` (attribute, default None): called as
    ``stall_hook(us)`` instead of sleeping.
    """

    def __init__(self, path, size, sector_size=SECTOR_SIZE, create=False, erase_ms=0, page_ms=0):
        if sector_size <= 0 or size <= 0 or size % sector_size:
            raise ValueError("flash size must be a positive multiple of the sector size")
        self.path = path
        self.size = size
        self.sector_size = sector_size
        self.sectors = size // sector_size
        if create:
            self._create(path, size, sector_size)
        self._f = open(path, "r+b", buffering=0)
        self._f.seek(0, 2)
        actual = self._f.tell()
        if actual != size:
            self._f.close()
            raise ValueError("flash file %s has %d bytes, expected %d" % (path, actual, size))
        self._scratch = bytearray(sector_size)
        self._erased = bytearray(b"\xff" * sector_size)
        self.erase_counts = array("I", [0] * self.sectors)
        self.erase_ops = 0
        self.program_ops = 0
        self.op_count = 0
        self._cut_op = -1
        self._cut_byte = 0
        self._dead = False
        self.erase_us = int(erase_ms * 1000)
        self.page_us = int(page_ms * 1000)
        self.block32_us = 0
        self.block64_us = 0
        self.stall_hook = None
        self.stalled_us = 0
        env = os.getenv("RMOTA_CUT")
        if env:
            parts = env.split(",")
            self.cut_at(int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)

    @staticmethod
    def _create(path, size, sector_size):
        blank = b"\xff" * sector_size
        with open(path, "wb") as f:
            for _ in range(size // sector_size):
                f.write(blank)

    # -- power cuts ------------------------------------------------------------------

    def cut_at(self, op_index, byte_index):
        """Arm a power cut: the operation with global index ``op_index`` (0-based over
        erases and programs of this object, compare ``op_count``) is torn after
        ``byte_index`` of its bytes (0 = nothing done; a value at or beyond the
        operation's length completes it, then cuts). ``op_index < 0`` disarms."""
        if byte_index < 0:
            raise ValueError("byte_index must be >= 0")
        self._cut_op = op_index
        self._cut_byte = byte_index

    def power_cut(self):
        """End the process at once, like a power cut: no ``finally`` blocks, no buffers
        flushed, no exit handlers. Tests override this in a subclass to raise instead.
        If the process somehow survives, the flash refuses every later operation."""
        self._dead = True
        exit_now = getattr(os, "_exit", None)
        if exit_now is not None:  # CPython
            exit_now(CUT_EXIT_CODE)
        # MicroPython unix port: no os._exit, but os.system. Kill ourselves with SIGKILL.
        pid = None
        try:
            with open("/proc/self/stat") as f:
                pid = f.read().split(None, 1)[0]
        except OSError:
            pid = os.getenv("RMOTA_PID")
        if pid:
            os.system("kill -9 " + pid)
        # The shell's parent is this process.
        os.system("kill -9 $PPID")
        raise OSError(5, "power cut did not end the process")

    def _begin(self, length):
        # Start an operation; return how many of its ``length`` bytes to do before a cut,
        # or -1 for no cut.
        if self._dead:
            raise OSError(5, "flash is closed or lost power")
        op = self.op_count
        self.op_count = op + 1
        if op == self._cut_op:
            return min(self._cut_byte, length)
        return -1

    # -- time --------------------------------------------------------------------------

    def _stall(self, us):
        # The chip is busy for ``us`` microseconds and so is the host that waits for it.
        if us <= 0:
            return
        self.stalled_us += us
        hook = self.stall_hook
        if hook is not None:
            hook(us)
        else:
            sleep_us(us)

    # -- the file ----------------------------------------------------------------------

    def _pread(self, addr, buf, n):
        # Read exactly n bytes at addr into buf[0:n]. Allocation-free on MicroPython.
        f = self._f
        f.seek(addr)
        if _IS_MICROPYTHON:
            got = f.readinto(buf, n)
        else:
            got = f.readinto(memoryview(buf)[:n])
        if got != n:
            raise OSError(5, "short read from flash file")

    def _pwrite(self, addr, buf, off, n):
        # Write buf[off:off+n] at addr, all of it (unbuffered: straight to the fd).
        f = self._f
        f.seek(addr)
        while n > 0:
            if _IS_MICROPYTHON:
                w = f.write(buf, off, n)
            else:
                w = f.write(memoryview(buf)[off : off + n])
            if not w:
                raise OSError(5, "flash file write failed")
            off += w
            n -= w

    def _check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise ValueError("flash access 0x%x+%d out of range" % (addr, n))

    # -- flash operations ------------------------------------------------------------

    def read(self, addr, buf):
        """Read ``len(buf)`` bytes at byte address ``addr`` into ``buf`` (a writable
        buffer). Reads are not operations: they are not counted and never cut."""
        n = len(buf)
        self._check(addr, n)
        if self._dead:
            raise OSError(5, "flash is closed or lost power")
        self._pread(addr, buf, n)

    def program(self, addr, data):
        """Program ``data`` (bytes-like) at byte address ``addr``: each byte becomes
        old AND new, so bits only go from 1 to 0. May span sectors. One operation."""
        n = len(data)
        self._check(addr, n)
        todo = self._begin(n)
        self.program_ops += 1
        self._program(addr, data, todo if todo >= 0 else n)
        if todo >= 0:
            self.power_cut()
        if self.page_us and n:
            pages = (addr + n - 1) // PAGE_SIZE - addr // PAGE_SIZE + 1
            self._stall(pages * self.page_us)

    def _program(self, addr, data, n):
        s = self._scratch
        done = 0
        while done < n:
            k = n - done
            if k > len(s):
                k = len(s)
            self._pread(addr + done, s, k)
            _and_into(s, data, done, k)
            self._pwrite(addr + done, s, 0, k)
            done += k

    def erase(self, sector):
        """Erase sector number ``sector`` (all its bytes become 0xFF). One operation."""
        if not 0 <= sector < self.sectors:
            raise ValueError("sector %d out of range" % sector)
        todo = self._begin(self.sector_size)
        self.erase_ops += 1
        self.erase_counts[sector] += 1
        n = self.sector_size if todo < 0 else todo
        self._pwrite(sector * self.sector_size, self._erased, 0, n)
        if todo >= 0:
            self.power_cut()
        self._stall(self.erase_us)

    def block_erase(self, sector, n):
        """Erase ``n`` sectors from sector ``sector`` with ONE block-erase command:
        ``n`` is 8 (32 KB, command 0x52) or 16 (64 KB, 0xD8) and ``sector`` a multiple of
        ``n`` (the chip ignores the low address bits: an unaligned block is refused with
        ``ValueError``, as is a range outside the flash). One operation for ``cut_at``
        (torn in address order, like a sector erase); stalls ``block32_us`` or
        ``block64_us`` (both 0 unless set: the board profile sets them)."""
        if n not in (8, 16) or sector % n or not 0 <= sector <= self.sectors - n:
            raise ValueError("no %d-sector block erase at sector %d" % (n, sector))
        bs = self.sector_size
        todo = self._begin(n * bs)
        self.erase_ops += 1
        for k in range(n):
            self.erase_counts[sector + k] += 1
        left = n * bs if todo < 0 else todo
        addr = sector * bs
        while left > 0:
            k = bs if left > bs else left
            self._pwrite(addr, self._erased, 0, k)
            addr += k
            left -= k
        if todo >= 0:
            self.power_cut()
        self._stall(self.block64_us if n == 16 else self.block32_us)

    def close(self):
        """Close the file. Every later operation raises ``OSError``."""
        self._dead = True
        self._f.close()


class Partition:
    """``n_sectors`` sectors of ``nor`` starting at sector ``first_sector``, as a block
    device in MicroPython's extended protocol; one block = one sector (4,096 bytes).

    - ``readblocks(block, buf, offset=0)``: read ``len(buf)`` bytes at
      ``block * 4096 + offset``.
    - ``writeblocks(block, buf, offset=0)``: program (AND) ``buf`` there. Never erases,
      also not with two arguments (unlike ``esp32.Partition``/``rp2.Flash``): a missing
      erase must show. May span blocks.
    - ``ioctl(op, arg)``: 1 init, 2 deinit, 3 sync → 0; 4 → block count; 5 → block size;
      6 → erase block ``arg``, returns 0; other ops → None.
    - ``erase_blocks(block, count)``: erase ``count`` blocks from ``block`` with the
      fewest commands, as pico-sdk and ESP-IDF do: 64 KB and 32 KB block erases where
      the flash address is aligned, sector erases elsewhere. Returns the number of
      commands (operations). ``rmota.writer.SlotWriter`` uses it when present.

    An access that would leave the partition raises ``ValueError`` and touches nothing,
    so partitions cannot reach each other."""

    def __init__(self, nor, first_sector, n_sectors):
        if first_sector < 0 or n_sectors <= 0 or first_sector + n_sectors > nor.sectors:
            raise ValueError("partition outside the flash")
        self.nor = nor
        self.first_sector = first_sector
        self.n_sectors = n_sectors
        self.block_size = nor.sector_size
        self.size = n_sectors * nor.sector_size

    def _addr(self, block, offset, n):
        rel = block * self.block_size + offset
        if block < 0 or offset < 0 or rel + n > self.size:
            raise ValueError("block %d offset %d len %d outside partition" % (block, offset, n))
        return self.first_sector * self.block_size + rel

    def readblocks(self, block, buf, offset=0):
        self.nor.read(self._addr(block, offset, len(buf)), buf)

    def writeblocks(self, block, buf, offset=0):
        self.nor.program(self._addr(block, offset, len(buf)), buf)

    def erase_blocks(self, block, count):
        if block < 0 or count < 0 or block + count > self.n_sectors:
            raise ValueError("erase %d+%d outside partition" % (block, count))
        s = self.first_sector + block
        end = s + count
        ops = 0
        while s < end:
            if s % 16 == 0 and end - s >= 16:
                self.nor.block_erase(s, 16)
                s += 16
            elif s % 8 == 0 and end - s >= 8:
                self.nor.block_erase(s, 8)
                s += 8
            else:
                self.nor.erase(s)
                s += 1
            ops += 1
        return ops

    def ioctl(self, op, arg):
        if op == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self.n_sectors
        if op == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return self.block_size
        if op == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            if not 0 <= arg < self.n_sectors:
                raise ValueError("erase block %d outside partition" % arg)
            self.nor.erase(self.first_sector + arg)
            return 0
        if op in (1, 2, 3):  # init, deinit, sync
            return 0
        return None
