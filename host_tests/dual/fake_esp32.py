"""Test doubles for MicroPython's ``esp32`` and ``machine`` modules (both runtimes).

``Chip`` is the persistent part of a simulated ESP32 host: a partition table whose app
slots are RAM NOR flash (``ramnor.RAMNOR``), the "otadata" selection with ESP-IDF's app
rollback states, and the UARTs opened so far. It survives a ``machine.reset()``; call
``chip.power_on()`` to run the simulated bootloader before the next ``Board``.

Modelled on the MicroPython docs (esp32.Partition) and ESP-IDF's OTA documentation:

- ``Partition(Partition.RUNNING | Partition.BOOT | label)``, ``info()`` → ``(type,
  subtype, addr, size, label, encrypted)``, ``get_next_update()`` (the next ota_N after
  this one, wrapping; ota_0 after factory), ``find()``;
- block protocol: ``readblocks(n, buf[, off])``, ``writeblocks(n, buf[, off])`` (the
  two-argument form erases first, as esp32.Partition does; the three-argument form only
  programs), ``ioctl(1..6)``; erase block 4,096 bytes;
- ``set_boot()`` validates the image (here: the ESP app image magic byte 0xE9 at offset
  0, a stand-in for ESP-IDF's image check) and raises ``OSError(-5379)``
  (ESP_ERR_OTA_VALIDATE_FAILED) otherwise; with rollback enabled the new entry is
  "new";
- the bootloader (``power_on``): "new" → boots it as "pending_verify"; still
  "pending_verify" at the next boot → "aborted", boots the previous slot;
- ``mark_app_valid_cancel_rollback()`` (classmethod): "pending_verify" → "valid";
  ``OSError(-261)`` when the firmware has no app rollback (``rollback=False``).

``machine``: ``UART`` (a ``FakeUART`` recording its constructor arguments, registered in
``chip.uarts``; ``chip.on_uart(uart)`` is called for each new one), ``reset()`` raises
``ResetCalled`` — a ``BaseException``, so the agent's ``except Exception`` cannot
swallow it, like the real reset that never returns.

Usage::

    saved = fake_esp32.install()    # sys.modules["esp32"], sys.modules["machine"]
    import board                    # the esp32 profile binds the fakes
    fake_esp32.uninstall(saved)
    fake_esp32.use(fake_esp32.Chip())   # per test: the chip the fakes act on
"""

import sys

from fakeuart import FakeUART
from ramnor import RAMNOR

BLOCK = 4096
TYPE_APP = 0
TYPE_DATA = 1
SUBTYPE_FACTORY = 0x00
SUBTYPE_OTA_0 = 0x10
ESP_IMAGE_MAGIC = 0xE9
ERR_VALIDATE_FAILED = -5379  # -ESP_ERR_OTA_VALIDATE_FAILED (0x1503)
ERR_NOT_FOUND = -261  # -ESP_ERR_NOT_FOUND (0x105): no app rollback in this build
ENOENT = 2


class ResetCalled(BaseException):
    """``machine.reset()`` was called (the real one does not return)."""


class _Entry:
    def __init__(self, ptype, subtype, addr, size, label):
        self.type = ptype
        self.subtype = subtype
        self.addr = addr
        self.size = size
        self.label = label
        self.nor = RAMNOR(size // BLOCK, BLOCK) if ptype == TYPE_APP else None


class Chip:
    """A simulated ESP32 host. ``slot_blocks``: 4,096-byte blocks per app slot.
    ``factory``: add a factory app before ota_0/ota_1 (boots first). ``rollback``: the
    firmware has ESP-IDF app rollback. ``validate``: ``set_boot`` checks the image magic.

    State: ``running``, ``boot`` (labels), ``boot_state`` ("undefined", "new",
    ``"pending_verify"``, "valid"), ``prev`` (label booted before the last
    ``set_boot``), ``aborted`` (labels the bootloader abandoned), ``resets``,
    ``uarts``, ``set_boots``."""

    def __init__(self, slot_blocks=16, factory=False, rollback=True, validate=True):
        self.rollback = rollback
        self.validate = validate
        table = [
            (TYPE_DATA, 0x02, 0x9000, 0x6000, "nvs"),
            (TYPE_DATA, 0x00, 0xF000, 0x2000, "otadata"),
            (TYPE_DATA, 0x01, 0x11000, 0x1000, "phy_init"),
        ]
        addr = 0x20000
        size = slot_blocks * BLOCK
        apps = ([(SUBTYPE_FACTORY, "factory")] if factory else []) + [
            (SUBTYPE_OTA_0, "ota_0"),
            (SUBTYPE_OTA_0 + 1, "ota_1"),
        ]
        for sub, label in apps:
            table.append((TYPE_APP, sub, addr, size, label))
            addr += size
        self.entries = [_Entry(*t) for t in table]
        first = apps[0][1]
        self.running = first
        self.boot = first
        self.boot_state = "undefined"  # flashed with esptool: blank otadata
        self.prev = None
        self.aborted = []
        self.resets = 0
        self.set_boots = 0
        self.uarts = []
        self.on_uart = None

    def entry(self, label):
        for e in self.entries:
            if e.label == label:
                return e
        return None

    def ota_entries(self):
        return [e for e in self.entries if e.type == TYPE_APP and e.subtype >= SUBTYPE_OTA_0]

    def flash(self, label, data):
        """Write ``data`` into the app slot ``label`` as esptool would (erase, program)."""
        nor = self.entry(label).nor
        for blk in range((len(data) + BLOCK - 1) // BLOCK):
            nor.ioctl(6, blk)
        nor.writeblocks(0, data, 0)

    def read(self, label, n):
        buf = bytearray(n)
        self.entry(label).nor.readblocks(0, buf, 0)
        return bytes(buf)

    def power_on(self):
        """The second-stage bootloader: pick the slot to run from the otadata state."""
        if self.rollback and self.boot_state == "pending_verify":
            # The trial reset before it was confirmed: abandon it, boot the previous one.
            self.aborted.append(self.boot)
            self.boot = self.prev
            self.boot_state = "valid"
        elif self.rollback and self.boot_state == "new":
            self.boot_state = "pending_verify"
        self.running = self.boot
        return self.running


_chip = [None]


def chip():
    c = _chip[0]
    if c is None:
        raise OSError(19, "no fake chip installed")
    return c


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = TYPE_APP
    TYPE_DATA = TYPE_DATA

    def __init__(self, id, block_size=4096):
        c = chip()
        if id == Partition.RUNNING:
            e = c.entry(c.running)
        elif id == Partition.BOOT:
            e = c.entry(c.boot)
        elif isinstance(id, str):
            e = c.entry(id)
        else:
            raise ValueError(id)
        if e is None:
            raise OSError(ENOENT)
        self._chip = c
        self._e = e
        self._bs = block_size

    @classmethod
    def find(cls, type=TYPE_APP, subtype=0xFF, label=None, block_size=4096):
        out = []
        for e in chip().entries:
            if e.type == type and (subtype == 0xFF or e.subtype == subtype):
                if label is None or e.label == label:
                    out.append(cls(e.label, block_size))
        return out

    def info(self):
        e = self._e
        return (e.type, e.subtype, e.addr, e.size, e.label, False)

    def __repr__(self):
        return "<Partition %s>" % self._e.label

    def _nor(self):
        if self._e.nor is None:
            raise OSError(22)
        return self._e.nor

    def readblocks(self, block, buf, offset=0):
        self._nor().readblocks(block, buf, offset)

    def writeblocks(self, block, buf, offset=None):
        nor = self._nor()
        if offset is None:
            # esp32.Partition: the two-argument form erases the range first.
            n = len(buf)
            if n % BLOCK:
                raise OSError(22)
            for k in range(n // BLOCK):
                nor.ioctl(6, block + k)
            offset = 0
        nor.writeblocks(block, buf, offset)

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return self._e.size // BLOCK
        if op == 5:
            return BLOCK
        if op == 6:
            return self._nor().ioctl(6, arg)
        return None

    def set_boot(self):
        c = self._chip
        e = self._e
        if e.type != TYPE_APP:
            raise OSError(22)
        if c.validate:
            b = bytearray(1)
            e.nor.readblocks(0, b, 0)
            if b[0] != ESP_IMAGE_MAGIC:
                raise OSError(ERR_VALIDATE_FAILED)
        c.set_boots += 1
        c.prev = c.running
        c.boot = e.label
        c.boot_state = "new" if c.rollback else "undefined"

    def get_next_update(self):
        c = self._chip
        otas = c.ota_entries()
        if self._e.subtype < SUBTYPE_OTA_0:
            return Partition(otas[0].label, self._bs)
        for k in range(len(otas)):
            if otas[k].label == self._e.label:
                return Partition(otas[(k + 1) % len(otas)].label, self._bs)
        raise OSError(ENOENT)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        c = chip()
        if not c.rollback:
            raise OSError(ERR_NOT_FOUND)
        if c.boot == c.running and c.boot_state == "pending_verify":
            c.boot_state = "valid"


class UART(FakeUART):
    """``machine.UART`` double: keeps ``id`` and the keyword arguments in ``kw``."""

    RTS = 1
    CTS = 2

    def __init__(self, id, **kw):
        FakeUART.__init__(self)
        self.id = id
        self.kw = kw
        c = chip()
        c.uarts.append(self)
        if c.on_uart:
            c.on_uart(self)


def reset():
    chip().resets += 1
    raise ResetCalled()


class _Module:
    """A namespace standing in for a module in ``sys.modules``."""

    def __init__(self, name, **attrs):
        self.__name__ = name
        for k in attrs:
            setattr(self, k, attrs[k])


esp32 = _Module("esp32", Partition=Partition)
machine = _Module("machine", UART=UART, reset=reset)


def use(c):
    """Make ``c`` the chip the fakes act on."""
    _chip[0] = c


def install(c=None):
    """Put the fakes in ``sys.modules`` (and make ``c`` the current chip when given).
    Returns the entries they replaced, for ``uninstall``."""
    if c is not None:
        _chip[0] = c
    saved = (sys.modules.get("esp32"), sys.modules.get("machine"))
    sys.modules["esp32"] = esp32
    sys.modules["machine"] = machine
    return saved


def uninstall(saved):
    for name, mod in (("esp32", saved[0]), ("machine", saved[1])):
        if mod is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = mod
