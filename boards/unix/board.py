"""The desktop board profile (DESIGN.md section 4; docs/interfaces.md "Board profile").

Runs unchanged under the MicroPython unix port and CPython. The "device" is a NOR flash
file (``nor.NORFlash``) and a pty or serial port (``uart.UnixUART``). Flash layout, in
4,096-byte sectors::

    sectors     bytes            use
    0 .. 1      0x000000  8 KiB  boot record, ping-pong (bootrec.py)
    2 .. 513    0x002000  2 MiB  slot 0
    514 .. 1025 0x202000  2 MiB  slot 1
    1026 .. 1041 0x402000 64 KiB journal area (littlefs later, issue 3)
    total 1042 sectors = 4,268,032 bytes

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
from rmota.journal import Journal

BOOT_SECTOR = const(0)
BOOT_SECTORS = const(2)
SLOT_SECTORS = const(512)  # 2 MiB
SLOT_SECTOR = (2, 514)  # first sector of slot 0 and slot 1
JOURNAL_SECTOR = const(1026)
JOURNAL_SECTORS = const(16)  # 64 KiB
FLASH_SECTORS = const(1042)
FLASH_SIZE = FLASH_SECTORS * SECTOR_SIZE
SLOT_SIZE = SLOT_SECTORS * SECTOR_SIZE

REBOOT_EXIT_CODE = const(75)

DEFAULT_SETTINGS = {
    "baud": 115200,
    # AT+HTTPCGET rx size, bytes (ESP-AT default 2048, max 10240). make bench: with
    # 10240 the download loop costs 1.7x SHA-256 alone (2048: 3.1x) and framing 0.2 %
    # of the wire (2048: 0.8 %), for 8 KB more parser buffer and 8 KB more writer ring.
    "rx_size": 10240,
    "tx_size": 2048,
    "http_timeout_ms": 5000,  # AT+HTTPCGET network-idle timeout (ESP-AT default)
    "line_max": 2048,  # DESIGN.md section 2: longest legitimate line is a +RMFWNOTIFY
    # UART receive buffer, bytes (modelled when "faithful"; also the link's read size).
    # make bench at 115200 in "stream": the ring held up to 3.7 KB (the journal's record
    # of the new download, written when the header arrives, stalls the host ~0.3 s on
    # littlefs); 8192 keeps a margin of two (safe_flash_mode).
    "uart_rxbuf": 8192,
    "allow_raw": False,  # never accept a raw (headerless) image on this board
    # Faithful mode (issue 3, "UART overflow"; uart.py, nor.py): the UART keeps only
    # uart_rxbuf bytes and LOSES what does not fit, and flash operations stall the host
    # as real NOR does. Needs a peer that paces its output at the baud rate
    # (tools/espat_emu.py baud=...). Off by default: tests without pacing would drown.
    "faithful": False,
    "flash_erase_ms": 45,  # 4 KB sector erase, W25Q16JV/W25Q128JV tSE typical (max 400)
    "flash_page_ms": 0.7,  # 256-byte page program, tPP typical (max 3)
    # None: the UART interrupt keeps running during flash operations. rp2: 32 - flash
    # operations run with interrupts off and only the PL011's 32-byte FIFO catches bytes.
    "uart_irq_off_fifo": None,
    # RTS/CTS wired and the ESP told (AT+UART_CUR=<baud>,8,1,0,3): nothing is lost.
    "flow_control": False,
    # How flash writes share the host with the download (rmota.agent): "stream",
    # "pre_erase" or "window"; window_size bytes of RAM for "window"; prog_chunk: bytes
    # per writeblocks call (None: a whole block). "auto": safe_flash_mode() picks the
    # one that cannot overflow the UART with the numbers above.
    "flash_mode": "auto",
    "window_size": 16384,
    "prog_chunk": None,
}


def safe_flash_mode(s, block=SECTOR_SIZE, margin=2):
    """The flash mode with which the agent cannot lose a byte to a full UART receive
    buffer, from the settings ``s`` (issue 3, "UART overflow"; the numbers behind it are
    measured by ``make bench``, tools/bench.py).

    - Flow control: "stream" (the ESP waits while the host is busy).
    - Otherwise, while the host is in a flash operation the UART must keep the bytes
      that arrive. With the receive interrupt running during flash operations
      (``uart_irq_off_fifo`` None) the ring of ``uart_rxbuf`` bytes holds them:
      "stream" needs it to hold ``margin`` times the longest stall between two reads (a
      block's erase and program plus a journal update that may erase too, or the
      journal's record of the new download written when the header arrives: about
      seven erases on littlefs, measured by make bench) and the flash to outpace the
      wire (else the ring fills a little more at every block: at 921600 baud 4 KB
      arrive in 44 ms while erasing and programming them takes 56 ms);
      "pre_erase" needs the ring to hold what arrives during a program and a journal
      update. With interrupts off (rp2: only the 32-byte FIFO) neither holds.
    - Else "window": the ESP is idle whenever the flash is busy; it costs
      ``window_size`` bytes of RAM and one HTTP request per window."""
    if s.get("flow_control"):
        return "stream"
    if not s.get("faithful"):
        return "stream"  # the desktop board without stalls: nothing to protect
    rate = s["baud"] / 10000.0  # bytes per ms on the wire, 8N1
    erase = s["flash_erase_ms"]
    page = s["flash_page_ms"]
    prog = page * block / 256  # one block programmed, page by page
    ring = s["uart_rxbuf"]
    if s.get("uart_irq_off_fifo") is None:
        journal = erase + page  # a littlefs commit may erase a block
        record = 7 * journal  # the download's journal record (file, rename) on littlefs
        fast = block / (erase + prog) >= 1.25 * rate
        if fast and margin * rate * max(erase + prog + journal, record) <= ring:
            return "stream"
        if margin * rate * (prog + journal) <= ring:
            return "pre_erase"
    return "window"


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
        if self.settings["flash_mode"] == "auto":
            self.settings["flash_mode"] = safe_flash_mode(self.settings)
        if nor is None:
            nor = NORFlash(flash_path, FLASH_SIZE, SECTOR_SIZE, create=create)
        elif nor.size != FLASH_SIZE:
            raise ValueError("flash must have %d bytes" % FLASH_SIZE)
        self.nor = nor
        st = self.settings
        if st["faithful"]:  # real NOR timing: every erase and program stalls the host
            nor.erase_us = int(st["flash_erase_ms"] * 1000)
            nor.page_us = int(st["flash_page_ms"] * 1000)
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
        """The agent's ``rmota.journal.Journal`` on littlefs in the journal area, mounted
        (and on a blank area formatted) on first use."""
        if self._journal is None:
            self._journal = Journal(lfs.mount(self.journal_bdev))
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
    power-on formats it). Raises ``ValueError`` for an empty or too large image."""
    n = len(image)
    if not 0 < n <= SLOT_SIZE:
        raise ValueError("factory image must be 1..%d bytes" % SLOT_SIZE)
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
