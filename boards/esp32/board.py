"""Board profile for an ESP32-family host (ESP32-S3 and kin) running MicroPython.

The host talks to the ESP-AT module (an ESP32-C3 with the RainMaker AT firmware) over
``machine.UART`` and updates itself with MicroPython's native OTA A/B partitions
(``esp32.Partition``, MicroPython docs "esp32 — functionality specific to the ESP32",
section "Flash partitions"; ESP-IDF "Over The Air Updates (OTA)", app rollback):

- the inactive slot is ``Partition(Partition.RUNNING).get_next_update()``; it speaks the
  extended block-device protocol (``readblocks``/``writeblocks`` with an offset,
  ``ioctl(4|5|6)``), which is what ``rmota.writer.SlotWriter`` needs;
- commit = ``set_boot()`` on that partition (ESP-IDF validates the app image there and
  MicroPython raises ``OSError`` when it is not a valid image);
- reboot = ``machine.reset()``;
- confirm = ``Partition.mark_app_valid_cancel_rollback()``. With the bootloader's app
  rollback enabled (``CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE``) a new image boots once
  "pending verify"; if it resets again before this call the bootloader marks it aborted
  and boots the previous slot. Firmware built without the feature raises
  ``OSError(-261)`` from the call (documented); then a committed image simply stays.

MicroPython exposes no call to read the OTA image state (pending/valid/aborted) or the
version of the running app, so this profile keeps a small JSON record of its own,
``boot.json`` in ``DATA_DIR``: the image version of each slot, and the commit waiting
for its first boot. From it and the running partition's label it derives
``boot_state()``: running the committed slot → on trial until ``confirm()``; running any
other slot while a commit is pending → the bootloader fell back (rolled back).

The agent's journal lives in the same directory: ``rmota.journal.Journal`` over
``OSDir(DATA_DIR)`` when the package has that module, else a ``JSONFile`` (load/save/
clear). Records are replaced atomically (write a ``.tmp`` file, then ``os.rename``);
on littlefs (the ESP32 default filesystem) a rename replaces the old file in one step.

Wiring (DESIGN.md section 1; docs/real-board.md): the ESP32-C3 RainMaker AT port is
its UART1, TX GPIO7, RX GPIO6, CTS GPIO5, RTS GPIO4, 115200 baud. The host pins below
are this profile's choice; change them for your board.

Usage (firmware/main.py does this)::

    import board
    b = board.open()                 # power-on: reads the boot state, opens the UART
    link = ATLink(b.uart, clock=b.clock, line_max=b.settings["line_max"], ...)
    HostOTA(link, b).run(until_idle=True)
"""

import json
import os

import esp32
import machine

try:
    from micropython import const
except ImportError:  # CPython (tests with fake machine/esp32 modules)

    def const(x):
        return x


# -- the AT link: host-side UART (this profile's choice of pins) ---------------------------
# ESP32-S3: UART0 is the REPL; UART1 is free. GPIO17/GPIO18 are UART1's default pins on
# the ESP32-S3 DevKitC and are not strapping, flash or USB pins.
UART_ID = const(1)
HOST_TX_PIN = const(17)  # host TX → ESP32-C3 RX, GPIO6
HOST_RX_PIN = const(18)  # host RX ← ESP32-C3 TX, GPIO7
# Hardware flow control, off by default (None). ESP-AT's default flow control is RTS
# only: its RTS (GPIO4) tells the host to stop sending; wire it to the host's CTS pin
# and set HOST_CTS_PIN. The host's RTS → ESP CTS (GPIO5) pauses the ESP only after
# ``AT+UART_DEF=...,3`` (both directions) on the ESP.
HOST_RTS_PIN = None
HOST_CTS_PIN = None
BAUD = const(115200)  # ESP-AT's default

# -- files on the board's filesystem --------------------------------------------------
DATA_DIR = "/rmota"  # boot.json (this profile's boot record) and the agent's journal

FACTORY_VERSION = const(0)  # image version assumed for an image flashed with esptool

# ESP-IDF app partition subtypes: factory 0x00, ota_0..ota_15 0x10..0x1f.
_SUBTYPE_OTA_0 = const(0x10)
_SUBTYPE_OTA_END = const(0x20)
# OSError argument of mark_app_valid_cancel_rollback() on firmware built without app
# rollback (MicroPython docs, esp32.Partition.mark_app_valid_cancel_rollback).
_ERR_NO_ROLLBACK = const(-261)
# OSError argument of set_boot() for a slot that holds no valid app image
# (-ESP_ERR_OTA_VALIDATE_FAILED, 0x1503; ESP-IDF esp_ota_set_boot_partition).
_ERR_VALIDATE_FAILED = const(-5379)
_INFO_SIZE = const(3)
_INFO_LABEL = const(4)
_MAX_RECORD = const(16384)  # bytes: a JSON record longer than this is damage, not used

DEFAULT_SETTINGS = {
    "baud": BAUD,
    "rx_size": 2048,  # AT+HTTPCGET rx size, bytes (ESP-AT default 2048, max 10240)
    "tx_size": 2048,
    "http_timeout_ms": 5000,  # AT+HTTPCGET network-idle timeout (ESP-AT default)
    "line_max": 2048,  # DESIGN.md section 2: longest legitimate line is a +RMFWNOTIFY
    "uart_rxbuf": 4096,  # machine.UART receive buffer, bytes (holds two 2 KiB records)
    "allow_raw": False,  # never accept a raw (headerless) image on this board
    # The journal's CRC-32 per block covers its first and last 256 bytes (rmota.writer
    # crc_span; make bench: the whole block costs as much again as SHA-256).
    "crc_span": 256,
}

# This module defines ``open()`` (the board-profile entry point), which shadows the
# built-in inside it: keep the built-in under another name for the JSON files.
_open_file = open


class Slot:
    """A flash slot: ``index`` (the OTA number, 0 for ota_0; -1 for factory), ``size``
    (bytes), ``bdev`` (the ``esp32.Partition``), ``label`` (e.g. ``"ota_1"``)."""

    def __init__(self, index, size, bdev, label):
        self.index = index
        self.size = size
        self.bdev = bdev
        self.label = label

    def __repr__(self):
        return "Slot(%d, %d, %s)" % (self.index, self.size, self.label)


class JSONFile:
    """A small dict kept as a JSON file at ``path``, replaced atomically: the new text
    goes to ``path + ".tmp"``, then ``os.rename`` puts it in place. On littlefs the
    rename replaces the old file in one step. A filesystem whose rename refuses an
    existing target (FAT) gets the old file removed first; ``load()`` then reads the
    finished ``.tmp`` if a cut left no ``path``.

    ``load()`` → dict or None; ``save(d)``; ``clear()``. Same interface as the unix
    board's journal."""

    def __init__(self, path):
        self.path = path
        self._tmp = path + ".tmp"
        self._closed = False
        self.damaged = False  # the last load() found a file it could not read

    def close(self):
        """Refuse every later ``save``/``clear`` with ``OSError``: after
        ``Board.reboot()`` nothing may change persistent state."""
        self._closed = True

    def _read(self, path):
        try:
            with _open_file(path, "rb") as f:
                try:
                    raw = f.read()  # (read(n) would take n bytes of heap up front)
                except MemoryError:
                    return None, True  # no record of ours is this long: damage
        except OSError:
            return None, False
        if len(raw) > _MAX_RECORD:
            return None, True  # no record of ours is this long: damage
        try:
            d = json.loads(raw)
        except (ValueError, MemoryError):
            return None, True
        return (d if isinstance(d, dict) else None), True

    def load(self):
        """The saved dict, or None when there is none or the file is unreadable (corrupt,
        partial, not a dict, longer than any record). Never raises for a bad file;
        ``damaged`` then becomes True."""
        d, exists = self._read(self.path)
        if not exists:
            d, exists = self._read(self._tmp)  # a cut between remove and rename (FAT)
        self.damaged = exists and d is None
        return d

    def save(self, d):
        """Replace the record with dict ``d`` atomically. Values: dict (str keys), list,
        str, int, float, bool, None (a float is only ever damage read back, written as
        it came). Raises ``TypeError`` for anything else (MicroPython's json writes
        bytes as a string), before anything is written."""
        if self._closed:
            raise OSError(5, "closed (rebooting)")
        if not isinstance(d, dict):
            raise TypeError("record must be a dict")
        _check_json(d)
        text = json.dumps(d)
        with _open_file(self._tmp, "w") as f:
            f.write(text)
        try:
            os.rename(self._tmp, self.path)
        except OSError:
            # FAT: rename does not replace. The finished .tmp stands in meanwhile.
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.rename(self._tmp, self.path)

    def clear(self):
        """Remove the record (``load()`` then returns None)."""
        if self._closed:
            raise OSError(5, "closed (rebooting)")
        for p in (self.path, self._tmp):
            try:
                os.remove(p)
            except OSError:
                pass


def make_journal(data_dir):
    """The agent's journal in directory ``data_dir`` (created if missing):
    ``rmota.journal.Journal(OSDir(data_dir))`` when the installed package has it, else a
    ``JSONFile`` at ``data_dir + "/job.json"`` with the same load/save/clear."""
    try:
        from rmota.journal import Journal, OSDir
    except ImportError:
        _mkdir(data_dir)
        return JSONFile(data_dir + "/job.json")
    return Journal(OSDir(data_dir))


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # exists


def _check_json(x):
    if x is None or isinstance(x, (bool, int, float, str)):
        return
    if isinstance(x, (list, tuple)):
        for v in x:
            _check_json(v)
        return
    if isinstance(x, dict):
        for k in x:
            if not isinstance(k, str):
                raise TypeError("keys must be str")
            _check_json(x[k])
        return
    raise TypeError("not a JSON type: %s" % type(x).__name__)


def _is_u32(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF


def _is_pending(p):
    # A commit record as commit() writes it (the fields _boot() and confirm() use).
    return (
        isinstance(p, dict)
        and isinstance(p.get("slot"), str)
        and _is_u32(p.get("version"))
        and isinstance(p.get("sha256"), str)
    )


def _slot_index(part):
    """OTA number of an app partition (ota_N → N); -1 for factory or test apps."""
    sub = part.info()[1]
    if _SUBTYPE_OTA_0 <= sub < _SUBTYPE_OTA_END:
        return sub - _SUBTYPE_OTA_0
    return -1


def _hex(b):
    return "".join("%02x" % c for c in b)


def make_uart(settings):
    """The host's ``machine.UART`` to the ESP-AT module: ``UART_ID``, the profile's pins,
    ``settings["baud"]``, a receive buffer of ``settings["uart_rxbuf"]`` bytes and
    ``timeout=0`` so ``readinto`` returns at once (None when nothing is waiting).
    Flow control is set only for the pins given."""
    kw = {
        "baudrate": settings["baud"],
        "tx": HOST_TX_PIN,
        "rx": HOST_RX_PIN,
        "rxbuf": settings["uart_rxbuf"],
        "timeout": 0,
    }
    flow = 0
    if HOST_RTS_PIN is not None:
        kw["rts"] = HOST_RTS_PIN
        flow |= machine.UART.RTS
    if HOST_CTS_PIN is not None:
        kw["cts"] = HOST_CTS_PIN
        flow |= machine.UART.CTS
    if flow:
        kw["flow"] = flow
    return machine.UART(UART_ID, **kw)


class Board:
    """The ESP32 host board (docs/interfaces.md "Board profile").

    Constructing it is the power-on: it reads the running partition and this profile's
    boot record (``boot.json``) and works out ``boot_state()``; when a commit is
    pending but another slot runs, it records the rollback. ``uart``: a stream to use
    instead of opening ``machine.UART`` (tests; a board with a different link).
    ``settings``: overrides of ``DEFAULT_SETTINGS``. ``clock``: default
    ``rmota.compat.Clock()``. ``data_dir``: directory for ``boot.json`` and the
    journal. ``journal``: the agent's journal to use instead of ``make_journal()``.
    ``factory_version``: image version of a slot this profile has no record of (the
    image flashed with esptool); build the first OTA image with a higher version.

    Attributes: ``board_id`` (b"esp32s3"), ``uart``, ``clock``, ``settings``,
    ``journal`` (the agent's), ``state`` (this profile's boot record, ``JSONFile``),
    ``running`` (``esp32.Partition``), ``label`` (its label), ``rollback_supported``
    (False once the firmware said it has no app rollback)."""

    board_id = b"esp32s3"

    def __init__(
        self,
        uart=None,
        settings=None,
        clock=None,
        data_dir=DATA_DIR,
        journal=None,
        factory_version=FACTORY_VERSION,
    ):
        self.settings = dict(DEFAULT_SETTINGS)
        if settings:
            self.settings.update(settings)
        self.factory_version = factory_version
        _mkdir(data_dir)
        self.journal = journal if journal is not None else make_journal(data_dir)
        self.state = JSONFile(data_dir + "/boot.json")
        self.rollback_supported = True
        self._boot()
        if clock is None:
            from rmota.compat import Clock

            clock = Clock()
        self.clock = clock
        self.uart = uart if uart is not None else make_uart(self.settings)

    def _boot(self):
        P = esp32.Partition
        self.running = P(P.RUNNING)
        self.label = self.running.info()[_INFO_LABEL]
        st = self.state.load() or {}
        self._st = st
        self.trial = False
        pend = st.get("pending")
        if self.state.damaged or (pend is not None and not _is_pending(pend)):
            # A record damaged (or another version's): whether the running image is on
            # trial cannot be told. Taken as on trial: confirming a valid image is
            # harmless, while one left unconfirmed would let the next download write
            # the slot the bootloader falls back to.
            self.trial = True
            pend = None
        if pend:
            if pend["slot"] == self.label:
                self.trial = True  # the committed image runs: on trial until confirm()
            else:
                st.pop("pending")
                if pend.get("set", True):
                    # A commit was made but another slot runs: the bootloader fell back
                    # (the trial reset before confirm(), or the image did not start).
                    st["rolled_back"] = pend["slot"]
                # else: the power went before set_boot() returned: nothing was
                # committed, and the agent's journal commits again (no rollback).
                try:
                    self.state.save(st)
                except OSError:
                    pass  # (worked out again from the same record at the next boot)
        self.rolled_back = bool(st.get("rolled_back"))

    def _per_slot(self, key):
        # The dict boot.json keeps under key ("versions", "sha256"): slot label -> value.
        v = self._st.get(key)
        if not isinstance(v, dict):
            v = self._st[key] = {}
        return v

    # -- the board interface (docs/interfaces.md) ---------------------------------------

    def running_slot(self):
        """OTA number of the running partition (ota_N → N; factory → -1)."""
        return _slot_index(self.running)

    def inactive_slot(self):
        """The ``Slot`` the next update goes to: ``Partition(RUNNING).get_next_update()``.
        The only partition an update may write. Raises ``OSError`` when there is none:
        no OTA partition (``OSError(ENOENT)`` from MicroPython), or only one and it
        runs (ESP-IDF's ``esp_ota_get_next_update_partition`` then hands out the
        running partition itself, which ``esp_ota_begin`` would refuse)."""
        nxt = self.running.get_next_update()
        info = nxt.info()
        if info[_INFO_LABEL] == self.label:
            raise OSError(2, "no OTA slot but the running %s" % self.label)
        return Slot(_slot_index(nxt), info[_INFO_SIZE], nxt, info[_INFO_LABEL])

    def running_version(self):
        """Image version (int, header field ``image_version``) of the running image: as
        recorded at its commit, else ``factory_version``."""
        v = self._per_slot("versions").get(self.label)
        return v if _is_u32(v) else self.factory_version  # (damage: not a header's u32)

    def running_sha256(self):
        """SHA-256 (32 bytes) of the running image as recorded when it was confirmed,
        or None (an image flashed with esptool, or no record). Lets the agent tell the
        job it installed, announced again, from another image of the same version."""
        h = self._per_slot("sha256").get(self.label)
        try:
            return bytes.fromhex(h) if isinstance(h, str) and len(h) == 64 else None
        except ValueError:
            return None

    def commit(self, index, image_len, sha256, image_version):
        """Make the inactive slot (``index``) boot next, on trial: record the commit in
        the boot record, then ``set_boot()``. ``image_len`` (bytes), 32-byte ``sha256``
        and int ``image_version`` are recorded. Raises ``ValueError`` for the running
        slot, a slot other than ``inactive_slot()``, a bad argument, or an image
        ``set_boot()`` refuses (ESP-IDF's ``ESP_ERR_OTA_VALIDATE_FAILED``: the agent's
        5); ``OSError`` when the boot record cannot be written (a full filesystem) or
        ``set_boot()`` fails otherwise (the agent's 3). Nothing changes unless the
        record was written; the record is undone when ``set_boot()`` fails."""
        slot = self.inactive_slot()
        if index == self.running_slot() or slot.label == self.label:
            raise ValueError("cannot commit the running slot")
        if index != slot.index:
            raise ValueError("slot %d is not the inactive slot %d" % (index, slot.index))
        if not 0 < image_len <= slot.size:
            raise ValueError("image length %d outside the slot" % image_len)
        if len(sha256) != 32:
            raise ValueError("sha256 must be 32 bytes")
        if not isinstance(image_version, int) or image_version < 0:
            raise ValueError("bad image version")
        old = self._st
        st = dict(old)
        st.pop("rolled_back", None)
        st["seq"] = self.commit_seq() + 1
        pend = st["pending"] = {
            "slot": slot.label,
            "from": self.label,
            "version": image_version,
            "len": image_len,
            "sha256": _hex(sha256),
            "set": False,  # until set_boot() returned (a power cut: no rollback, _boot)
        }
        self.state.save(st)
        self._st = st
        try:
            slot.bdev.set_boot()
        except OSError as e:
            # Nothing was committed: the record as it was, the count too (so the agent
            # commits again from the slot rather than take an old rollback for this).
            self.state.save(old)
            self._st = old
            if e.args and e.args[0] == _ERR_VALIDATE_FAILED:
                raise ValueError("ESP-IDF refused the app image (%d)" % e.args[0])
            raise
        pend["set"] = True
        try:
            self.state.save(st)
        except OSError:
            pass  # committed all the same: the trial is told by the running slot
        self.rolled_back = False

    def reboot(self):
        """``machine.reset()``: does not return. The boot record (and a journal that
        can be closed) refuse writes from here on, so nothing that runs while a (test)
        exception unwinds can change them."""
        close = getattr(self.journal, "close", None)
        if close:
            close()
        self.state.close()
        machine.reset()

    def commit_seq(self):
        """Commits recorded (int, kept in boot.json; one ``set_boot()`` refused is
        undone): the agent tells a commit a power cut stopped before it was recorded
        (the count has not moved) from one that rolled back."""
        seq = self._st.get("seq")
        return seq if _is_u32(seq) else 0

    def boot_state(self):
        """``{"slot": running OTA number, "trial": bool, "rolled_back": bool}``:
        ``trial`` while the committed image runs unconfirmed; ``rolled_back`` when the
        last commit did not end up running (until the next commit)."""
        return {"slot": self.running_slot(), "trial": self.trial, "rolled_back": self.rolled_back}

    def confirm(self):
        """Mark the running trial image good: ``mark_app_valid_cancel_rollback()``, then
        record its version as the running one. No-op when not on trial. Firmware built
        without app rollback raises ``OSError(-261)`` there: nothing to cancel, so that
        one is taken as success (``rollback_supported`` becomes False)."""
        if not self.trial:
            return
        try:
            esp32.Partition.mark_app_valid_cancel_rollback()
        except OSError as e:
            if not e.args or e.args[0] != _ERR_NO_ROLLBACK:
                raise
            self.rollback_supported = False
        st = self._st
        pend = st.pop("pending", None)
        if _is_pending(pend) and pend["slot"] == self.label:
            self._per_slot("versions")[self.label] = pend["version"]
            self._per_slot("sha256")[self.label] = pend["sha256"]
        st.pop("rolled_back", None)
        self.state.save(st)
        self.trial = False
        self.rolled_back = False


def open(**kw):  # noqa: A001  (the board-profile entry point firmware/main.py calls)
    """Power the board on: ``Board(**kw)``."""
    return Board(**kw)
