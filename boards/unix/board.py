"""The desktop board profile (DESIGN.md section 4; docs/interfaces.md "Board profile").

Runs unchanged under the MicroPython unix port and CPython. The "device" is a NOR flash
file (``nor.NORFlash``) and a pty or serial port (``uart.UnixUART``). Flash layout, in
4,096-byte sectors::

    sectors     bytes              use
    0 .. 1      0x000000   8 KiB   boot record, ping-pong (bootrec.py)
    2 .. 13     0x002000  48 KiB   journal: littlefs (job.json)
    14 .. 15    0x00e000   8 KiB   journal: raw block-CRC log (rmota.journal.CRCLog)
    16 .. 527   0x010000   2 MiB   slot 0
    528 .. 1039 0x210000   2 MiB   slot 1
    total 1040 sectors = 4,259,840 bytes

The slots start on 64 KiB boundaries (as ESP-IDF requires of app partitions), so the
writer can erase them with 64 KiB block erases (``nor.Partition.erase_blocks``).

Constructing a ``Board`` is the power-on: it runs the boot logic once (``bootrec.boot``),
which may write the boot record (trial → trial_booted, rollback) and raises
``bootrec.Bricked`` when nothing can boot. ``reboot()`` ends the process with exit code
75; the runner starts a new one, which is the reboot.

Usage::

    provision("/tmp/flash.bin", factory_image, version=1)
    board = Board("/tmp/flash.bin", "/dev/pts/5")
    slot = board.inactive_slot()          # Slot(index, size, bdev)
    ...                                   # the agent writes and verifies the image
    board.commit(slot.index, n, digest, version)
    board.reboot()                        # SystemExit(75)

The environment used by ``firmware/main.py``: ``RMOTA_FLASH`` (flash file), ``RMOTA_UART``
(pty path); see ``Board.from_env()``. The journal (``rmota.journal.Journal``) lives on
littlefs in the journal area of the same flash (``lfs.mount``).
"""

import hashlib
import os

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import lfs
from bootrec import Bootloader, Bricked, provision_record
from nor import SECTOR_SIZE, NORFlash, Partition
from rmota.journal import CRCLog, Journal

BOOT_SECTOR = const(0)
BOOT_SECTORS = const(2)
SLOT_SECTORS = const(512)  # 2 MiB
SLOT_SECTOR = (16, 528)  # first sector of slot 0 and slot 1: 64 KiB aligned
JOURNAL_SECTOR = const(2)
JOURNAL_SECTORS = const(12)  # 48 KiB of littlefs
CRCLOG_SECTOR = const(14)
CRCLOG_SECTORS = const(2)  # 2,048 entries: 8 MiB of image, four times a slot
FLASH_SECTORS = const(1040)
FLASH_SIZE = FLASH_SECTORS * SECTOR_SIZE
SLOT_SIZE = SLOT_SECTORS * SECTOR_SIZE

REBOOT_EXIT_CODE = const(75)

DEFAULT_SETTINGS = {
    "baud": 115200,
    # AT+HTTPCGET rx size, bytes (ESP-AT default 2048, max 10240). make bench: with
    # 10240 the download loop costs 1.7-1.9x SHA-256 alone (2048: 2.5-2.9x) and framing
    # 0.2 % of the wire (2048: 0.8 %), for 8 KB more parser buffer and writer ring.
    "rx_size": 10240,
    "tx_size": 2048,
    "http_timeout_ms": 5000,  # AT+HTTPCGET network-idle timeout (ESP-AT default)
    "line_max": 2048,  # DESIGN.md section 2: longest legitimate line is a +RMFWNOTIFY
    # UART receive buffer, bytes (modelled when "faithful"; on a board, machine.UART's
    # rxbuf). None: 8192 up to 230400 baud, 24576 above (plan_flash). make bench at
    # 115200 ("stream", 4 KB erases): the ring peaked at 2 KB; at 921600 (32 KB block
    # erases, 120 ms) it peaked at 15 KB: what arrives during one block erase and its
    # first program (12.2 KB) on top of a read's worth not yet taken.
    "uart_rxbuf": None,
    # Bytes the link reads from the UART per poll (its own buffer; at most uart_rxbuf).
    # make bench: 8192 halves the link's cost per byte against 4096 (a poll costs about
    # as much as parsing a record) for 4 KB more RAM.
    "read_size": 8192,
    "allow_raw": False,  # never accept a raw (headerless) image on this board
    # The journal's CRC-32 per block covers the block's first and last crc_span bytes
    # (rmota.writer). make bench: over the whole block MicroPython's crc32 (a 16-entry
    # table) costs 0.75-1.05 x SHA-256 and the loop 2.7-2.9 x; with 256, 1.7-1.9 x. A
    # journal entry only ever names a block whose program finished (entries are dropped
    # before their block is erased), so the CRC is a second line; the image's SHA-256
    # and the read-back stand before any commit. None: the whole block.
    "crc_span": 256,
    # Faithful mode (issue 3, "UART overflow"; uart.py, nor.py): the UART keeps only
    # uart_rxbuf bytes and LOSES what does not fit, and flash operations stall the host
    # as real NOR does. Needs a peer that paces its output at the baud rate
    # (tools/espat_emu.py baud=...). Off by default: tests without pacing would drown.
    "faithful": False,
    "flash_erase_ms": 45,  # 4 KB sector erase, W25Q16JV/W25Q128JV tSE typical (max 400)
    "flash_page_ms": 0.7,  # 256-byte page program, tPP typical (max 3)
    "flash_block32_ms": 120,  # 32 KB block erase (0x52), tBE1 typical (max 1600)
    "flash_block64_ms": 150,  # 64 KB block erase (0xD8), tBE2 typical (max 2000)
    # None: the UART interrupt keeps running during flash operations. rp2: 32 - flash
    # operations run with interrupts off and only the PL011's 32-byte FIFO catches bytes.
    "uart_irq_off_fifo": None,
    # RTS/CTS wired and the ESP told (AT+UART_CUR=<baud>,8,1,0,3): nothing is lost.
    "flow_control": False,
    # How flash writes share the host with the download (rmota.agent): "stream",
    # "pre_erase" or "window"; window_size bytes of RAM for "window"; prog_chunk: bytes
    # per writeblocks call (None: a whole block). "auto": plan_flash() picks the one
    # that cannot overflow the UART with the numbers above, with erase_unit and
    # header_first. window_size 12288: a power cut loses at most one window, which must
    # stay within one erase block plus one record (issue 3).
    "flash_mode": "auto",
    "window_size": 12288,
    "prog_chunk": None,
    # Bytes the writer erases at once when it reaches a boundary of that size (4096: a
    # sector at a time; 32768 or 65536: one block-erase command, nor.Partition
    # .erase_blocks). None: plan_flash picks it.
    "erase_unit": None,
    # Fetch the image header alone first (a 64-byte Range request): a record lost
    # before the header was checked then costs only itself, a refused header is
    # confirmed with 64 more bytes, and the journal's record of the new download is
    # written while the ESP is idle. None: plan_flash decides (always True).
    "header_first": None,
}


_UNITS = ((65536, "flash_block64_ms"), (32768, "flash_block32_ms"))


def plan_flash(s, block=SECTOR_SIZE, margin=1.25):
    """How flash writes share the host with the download, from the settings ``s`` (a
    dict like ``DEFAULT_SETTINGS``; issue 3 "UART overflow", the numbers are measured
    by ``make bench``, tools/bench.py). Returns a dict: ``flash_mode`` ("stream",
    "pre_erase" or "window"), ``erase_unit`` (bytes), ``header_first`` (bool) and
    ``uart_rxbuf`` (bytes): the values to use where ``s`` has "auto" or None.

    - Flow control: "stream" with 64 KB block erases (the ESP waits while the host is
      busy, so the fewest erase stalls waste the least wire time).
    - Otherwise, while the host is in a flash operation the UART must keep the bytes
      that arrive. With the receive interrupt running during flash operations
      (``uart_irq_off_fifo`` None) the ring of ``uart_rxbuf`` bytes holds them.
      "stream" needs the flash to outpace the wire (4 KB arrive in 44 ms at 921600 baud;
      erasing a sector and programming it takes 56 ms, but a 32 KB block erase is 120 ms
      for 8 sectors) by a quarter, and the ring to hold ``margin`` times what arrives
      during the longest stall between two reads: an erase of ``erase_unit`` plus the
      programs (and CRC-log entries, a page each) of the blocks one read completes
      (``read_size`` / block + 1). The smallest erase unit that qualifies is
      taken (a shorter stall).
      "pre_erase" needs the ring to hold what arrives during a program.
      With interrupts off (rp2: only the 32-byte FIFO) neither holds.
    - Else "window": the ESP is idle whenever the flash is busy; it costs
      ``window_size`` bytes of RAM and one HTTP request per window.

    ``header_first`` is always True: one 64-byte request before the payload (0.3-0.4 %
    of the wire time of a 256 KiB image at 115200, less for larger ones) keeps a record lost before the header
    was checked from costing the rest of the response, confirms a refused header
    without fetching the whole file again, and writes the journal's record of a new
    download (littlefs: up to four erases) while the ESP is idle. Raises ``ValueError``
    when ``baud`` is not a positive int."""
    baud = s["baud"]
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ValueError("baud must be a positive int, not %r" % (baud,))
    rate = baud / 10000.0  # bytes per ms on the wire, 8N1
    ring = s.get("uart_rxbuf")
    if ring is None:
        ring = 8192 if s["baud"] <= 230400 else 24576
    # blocks the host may program while it works through one read, before it reads again
    per_read = (s.get("read_size") or 4096) // block + 1
    plan = {"flash_mode": "stream", "erase_unit": block, "header_first": True}
    plan["uart_rxbuf"] = ring
    if not s.get("faithful"):
        return plan  # the desktop board without stalls: nothing to protect
    if s.get("flow_control"):
        # The ESP waits while the host is busy: the fewest erase stalls win.
        plan["erase_unit"] = _UNITS[0][0]
        return plan
    erase = s["flash_erase_ms"]
    page = s["flash_page_ms"]
    prog = page * block / 256  # one block programmed, page by page
    if s.get("uart_irq_off_fifo") is None:
        # the download's journal record on littlefs (file, rename; the CRC log's reset):
        # at most 3 erases over 60 jobs on both runtimes, one more for margin
        record = 4 * (erase + page)
        units = [(block, erase)] + [(u, s[k]) for u, k in reversed(_UNITS) if u > block]
        progs = per_read * (prog + page)
        for unit, t in units:
            per_block = t * block / unit + prog + page
            if block / per_block >= 1.25 * rate and margin * rate * (t + progs) <= ring:
                plan["erase_unit"] = unit
                return plan
        if margin * rate * (progs + record) <= ring:
            plan["flash_mode"] = "pre_erase"
            return plan
    plan["flash_mode"] = "window"
    return plan


def safe_flash_mode(s, block=SECTOR_SIZE, margin=1.25):
    """The flash mode ``plan_flash(s)`` picks (a str)."""
    return plan_flash(s, block, margin)["flash_mode"]


class Slot:
    """A flash slot: ``index`` (0/1), ``size`` (bytes), ``bdev`` (``nor.Partition``,
    MicroPython's extended block-device protocol)."""

    def __init__(self, index, size, bdev):
        self.index = index
        self.size = size
        self.bdev = bdev

    def __repr__(self):
        return "Slot(%d, %d)" % (self.index, self.size)


def _default_clock():
    from rmota.compat import Clock

    return Clock()


class Board:
    """The desktop board. ``flash_path``: the NOR flash file (``FLASH_SIZE`` bytes; with
    ``create=True`` a blank one is made, which has no boot record). ``uart_path``: pty or
    tty for the AT link (``uart`` is None without it). ``settings``: overrides of
    ``DEFAULT_SETTINGS``. ``clock``: defaults to ``rmota.compat.Clock()``.

    ``boot=True`` (default) runs the boot logic now and raises ``bootrec.Bricked`` when
    nothing can boot; ``boot=False`` only reads the record, if any (inspection tools).
    ``nor``: an already open ``nor.NORFlash`` of ``FLASH_SIZE`` bytes to use instead of
    opening ``flash_path`` (tests inject one armed with ``cut_at``).

    Attributes: ``board_id`` (b"unix"), ``uart``, ``clock``, ``settings``, ``journal``,
    ``nor``, ``slots`` (two ``Partition``), ``journal_bdev`` (``Partition`` over the
    journal area), ``loader`` (``bootrec.Bootloader``)."""

    board_id = b"unix"

    def __init__(
        self,
        flash_path,
        uart_path=None,
        create=False,
        settings=None,
        clock=None,
        boot=True,
        nor=None,
    ):
        self.settings = dict(DEFAULT_SETTINGS)
        if settings:
            self.settings.update(settings)
        plan = plan_flash(self.settings)
        for k in ("uart_rxbuf", "erase_unit", "header_first"):
            if self.settings.get(k) is None:
                self.settings[k] = plan[k]
        if self.settings["flash_mode"] == "auto":
            self.settings["flash_mode"] = plan["flash_mode"]
        if nor is None:
            nor = NORFlash(flash_path, FLASH_SIZE, SECTOR_SIZE, create=create)
        elif nor.size != FLASH_SIZE:
            raise ValueError("flash must have %d bytes" % FLASH_SIZE)
        self.nor = nor
        st = self.settings
        if st["faithful"]:  # real NOR timing: every erase and program stalls the host
            nor.erase_us = int(st["flash_erase_ms"] * 1000)
            nor.page_us = int(st["flash_page_ms"] * 1000)
            nor.block32_us = int(st["flash_block32_ms"] * 1000)
            nor.block64_us = int(st["flash_block64_ms"] * 1000)
        self.slots = [Partition(self.nor, s, SLOT_SECTORS) for s in SLOT_SECTOR]
        self.journal_bdev = Partition(self.nor, JOURNAL_SECTOR, JOURNAL_SECTORS)
        self.loader = Bootloader(self.nor, self.slots, BOOT_SECTOR)
        if boot:
            self.loader.boot()
        else:
            try:
                self.loader.peek()
            except Bricked:
                pass  # inspection of a blank or broken flash: loader.record stays None
        self._journal = None
        self.clock = clock if clock is not None else _default_clock()
        self.uart = None
        if uart_path:
            from uart import UnixUART

            self.uart = UnixUART(
                uart_path,
                st["baud"],
                rxbuf=st["uart_rxbuf"],
                faithful=st["faithful"],
                flow=st["flow_control"],
                irq_off_fifo=st["uart_irq_off_fifo"],
            )
            if st["faithful"]:
                nor.stall_hook = self.uart.flash_stall

    @classmethod
    def from_env(cls, **kw):
        """A Board from ``RMOTA_FLASH`` (required; ``ValueError`` if unset),
        ``RMOTA_UART`` and ``RMOTA_SETTINGS`` (optional: a JSON object of settings that
        override ``DEFAULT_SETTINGS``, e.g. ``{"fetch_wait_ms": 300}`` for short bench
        runs; ``ValueError`` when it is not a JSON object); keyword arguments go to the
        constructor (a ``settings`` keyword wins over the environment)."""
        flash = os.getenv("RMOTA_FLASH")
        if not flash:
            raise ValueError("RMOTA_FLASH is not set")
        raw = os.getenv("RMOTA_SETTINGS")
        if raw:
            import json

            extra = json.loads(raw)
            if not isinstance(extra, dict):
                raise ValueError("RMOTA_SETTINGS must be a JSON object")
            extra.update(kw.get("settings") or {})
            kw["settings"] = extra
        return cls(flash, os.getenv("RMOTA_UART") or None, **kw)

    # -- the board interface (docs/interfaces.md) ---------------------------------------

    @property
    def journal(self):
        """The agent's ``rmota.journal.Journal``: its record on littlefs in the journal
        area, mounted (and on a blank area formatted) on first use; its block CRCs in
        the raw CRC-log sectors (``rmota.journal.CRCLog``)."""
        if self._journal is None:
            log = CRCLog(Partition(self.nor, CRCLOG_SECTOR, CRCLOG_SECTORS))
            self._journal = Journal(lfs.mount(self.journal_bdev), crclog=log)
        return self._journal

    def running_slot(self):
        """Index (0/1) of the slot that booted."""
        return self.loader.running

    def inactive_slot(self):
        """The ``Slot`` that is not running: the only one an update may write."""
        i = 1 - self.loader.running
        return Slot(i, SLOT_SIZE, self.slots[i])

    def running_version(self):
        """Image version (int, header field ``image_version``) of the running image."""
        return self.loader.record.versions[self.loader.running]

    def running_sha256(self):
        """SHA-256 (32 bytes) of the running image, from the boot record."""
        return self.loader.record.digests[self.loader.running]

    def commit(self, index, image_len, sha256, image_version):
        """Point the boot record at slot ``index`` (``image_len`` bytes, 32-byte
        ``sha256``, int ``image_version``), on trial. Raises ``ValueError`` for the
        running slot or a bad argument."""
        self.loader.commit(index, image_len, sha256, image_version)

    def reboot(self):
        """End the process with exit code 75; the runner starts a new one (the reboot).
        The flash and the journal are closed first, so nothing that runs while the
        exception unwinds (``finally`` blocks) can write them. Does not return."""
        try:
            if self.uart is not None:
                self.uart.close()
        finally:
            self.nor.close()  # the journal lives on it: closed too
            raise SystemExit(REBOOT_EXIT_CODE)

    def boot_state(self):
        """``{"slot": running index, "trial": bool, "rolled_back": bool}``: ``trial`` is
        True while the running image is on trial and not confirmed; ``rolled_back`` is
        True when the last trial fell back (until the next commit)."""
        ld = self.loader
        return {"slot": ld.running, "trial": ld.trial, "rolled_back": ld.rolled_back}

    def commit_seq(self):
        """The boot record's sequence number (int): every commit advances it, so the
        agent tells a commit a power cut stopped from one that rolled back."""
        return self.loader.record.seq

    def confirm(self):
        """Mark the running trial image good (no-op when not on trial)."""
        self.loader.confirm()

    def close(self):
        """Release the flash file and the UART (tests)."""
        if self.uart is not None:
            self.uart.close()
        self.nor.close()


def provision(flash_path, image, version):
    """Create a fresh flash file at ``flash_path`` (all sectors erased) with the factory
    ``image`` (bytes-like, as it sits in the slot, at most 2 MiB) in slot 0, confirmed,
    with image version ``version``; slot 1 empty; the journal area blank (the first
    power-on formats it). Raises ``ValueError`` for an empty or too large image, or a
    version that is not an int in 0..2**32-1 (the header's field), before the file is
    touched."""
    n = len(image)
    if not 0 < n <= SLOT_SIZE:
        raise ValueError("factory image must be 1..%d bytes" % SLOT_SIZE)
    if not (isinstance(version, int) and not isinstance(version, bool)):
        raise ValueError("version must be an int")
    if not 0 <= version <= 0xFFFFFFFF:
        raise ValueError("version must be 0..4294967295")
    nor = NORFlash(flash_path, FLASH_SIZE, SECTOR_SIZE, create=True)
    try:
        slot = Partition(nor, SLOT_SECTOR[0], SLOT_SECTORS)
        mv = memoryview(image)
        block = 0
        for off in range(0, n, SECTOR_SIZE):
            slot.ioctl(6, block)
            slot.writeblocks(block, mv[off : off + SECTOR_SIZE], 0)
            block += 1
        provision_record(nor, 0, n, hashlib.sha256(image).digest(), version, BOOT_SECTOR)
    finally:
        nor.close()


def from_env(**kw):
    """Same as ``Board.from_env()``."""
    return Board.from_env(**kw)


def open(**kw):  # noqa: A001  (the board-profile entry point firmware/main.py calls)
    """Power the desktop board on from the environment: same as ``Board.from_env()``."""
    return Board.from_env(**kw)
