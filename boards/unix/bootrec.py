"""Boot record and boot logic of the desktop board (DESIGN.md section 4).

The boot record says which slot boots and whether it is on trial. It lives in two
4 KB sectors of the NOR flash, written ping-pong: a new record goes to the sector that
does not hold the newest valid one, after erasing it. Each record carries a magic, a
sequence number and a CRC-32 (``binascii.crc32``) over its body; the valid record with
the highest sequence number wins. A power cut at any instant (torn erase or torn program
of the spare sector) therefore leaves either the old or the new record.

Record layout (96 bytes at the start of a sector, little-endian)::

    offset size field
     0     4    magic b"RMBR"
     4     1    record format (1)
     5     1    active slot (0 or 1)
     6     1    state: 1 confirmed, 2 trial (committed, not booted yet),
                       3 trial_booted (booted once, not confirmed)
     7     1    flags: bit 0 rolled_back (the last trial fell back; cleared by commit)
     8     4    sequence number
    12    40    slot 0: image length (4), image version (4), SHA-256 (32)
    52    40    slot 1: same
    92     4    CRC-32 of bytes 0..91

Boot logic (``boot(nor, slots)``), as a bootloader runs it at power-on:

- confirmed: boot the active slot;
- trial: mark it trial_booted, boot the new slot (the application must confirm);
- trial_booted (booted once, never confirmed): roll back - the other slot becomes
  active and confirmed, ``rolled_back`` is set, and the failed trial's entry is cleared
  (it never boots again).

The chosen slot's image is verified (SHA-256 over its recorded length, read back from
flash). If it fails, the other slot is booted if it verifies (the record is rewritten to
say so); if neither verifies, or there is no valid record, the board is bricked:
``Bricked`` is raised.

Usage::

    loader = boot(nor, [slot0_partition, slot1_partition])
    loader.running, loader.trial, loader.rolled_back
    loader.commit(1 - loader.running, length, sha256, version)
    loader.confirm()
"""

import binascii
import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAGIC = b"RMBR"
_FORMAT = const(1)
RECORD_SIZE = const(96)
_HEAD_FMT = "<4sBBBBI"  # magic, format, active, state, flags, seq
_SLOT_FMT = "<II32s"  # length, version, sha256
_HEAD_SIZE = const(12)
_SLOT_SIZE = const(40)
_CRC_AT = const(92)

CONFIRMED = const(1)
TRIAL = const(2)
TRIAL_BOOTED = const(3)
STATE_NAMES = {CONFIRMED: "confirmed", TRIAL: "trial", TRIAL_BOOTED: "trial_booted"}
_FLAG_ROLLED_BACK = const(1)

_NO_DIGEST = b"\x00" * 32


class Bricked(Exception):
    """Nothing can boot: no valid boot record, or no slot whose image passes its check.
    ``reason`` is a short text for the runner to report."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(reason)


class BootRecord:
    """One boot record. ``active`` (0/1), ``state`` (CONFIRMED, TRIAL, TRIAL_BOOTED),
    ``rolled_back`` (bool), ``seq`` (int), and per slot ``lengths[i]`` (bytes, 0 =
    empty), ``versions[i]`` (int), ``digests[i]`` (32-byte SHA-256)."""

    def __init__(self, active=0, state=CONFIRMED, rolled_back=False, seq=0):
        self.active = active
        self.state = state
        self.rolled_back = rolled_back
        self.seq = seq
        self.lengths = [0, 0]
        self.versions = [0, 0]
        self.digests = [_NO_DIGEST, _NO_DIGEST]

    def copy(self):
        r = BootRecord(self.active, self.state, self.rolled_back, self.seq)
        r.lengths = list(self.lengths)
        r.versions = list(self.versions)
        r.digests = list(self.digests)
        return r

    def pack(self):
        """The 96-byte encoding (bytearray), CRC included."""
        buf = bytearray(RECORD_SIZE)
        flags = _FLAG_ROLLED_BACK if self.rolled_back else 0
        struct.pack_into(
            _HEAD_FMT, buf, 0, MAGIC, _FORMAT, self.active, self.state, flags, self.seq
        )
        for i in (0, 1):
            struct.pack_into(
                _SLOT_FMT,
                buf,
                _HEAD_SIZE + i * _SLOT_SIZE,
                self.lengths[i],
                self.versions[i],
                self.digests[i],
            )
        struct.pack_into("<I", buf, _CRC_AT, binascii.crc32(buf[:_CRC_AT]) & 0xFFFFFFFF)
        return buf

    @classmethod
    def unpack(cls, buf):
        """Decode 96 bytes; None when the magic, format, CRC or a field is wrong (an
        erased, torn or foreign sector)."""
        if len(buf) < RECORD_SIZE:
            return None
        magic, fmt, active, state, flags, seq = struct.unpack_from(_HEAD_FMT, buf, 0)
        if magic != MAGIC or fmt != _FORMAT:
            return None
        (crc,) = struct.unpack_from("<I", buf, _CRC_AT)
        if crc != binascii.crc32(bytes(buf[:_CRC_AT])) & 0xFFFFFFFF:
            return None
        if active not in (0, 1) or state not in STATE_NAMES or flags & ~_FLAG_ROLLED_BACK:
            return None
        r = cls(active, state, bool(flags & _FLAG_ROLLED_BACK), seq)
        for i in (0, 1):
            length, version, digest = struct.unpack_from(
                _SLOT_FMT, buf, _HEAD_SIZE + i * _SLOT_SIZE
            )
            r.lengths[i] = length
            r.versions[i] = version
            r.digests[i] = bytes(digest)
        return r

    def __repr__(self):
        return "BootRecord(seq=%d active=%d state=%s rolled_back=%s)" % (
            self.seq,
            self.active,
            STATE_NAMES.get(self.state, "?"),
            self.rolled_back,
        )


class BootStore:
    """The two boot-record sectors ``first_sector`` and ``first_sector + 1`` of ``nor``
    (a ``nor.NORFlash``)."""

    def __init__(self, nor, first_sector=0):
        self.nor = nor
        self.first_sector = first_sector
        self._buf = bytearray(RECORD_SIZE)

    def _read_sector(self, i):
        self.nor.read((self.first_sector + i) * self.nor.sector_size, self._buf)
        return BootRecord.unpack(self._buf)

    def newest(self):
        """(record, sector index 0/1) of the newest valid record, or (None, None)."""
        best = None
        where = None
        for i in (0, 1):
            r = self._read_sector(i)
            if r is not None and (best is None or r.seq > best.seq):
                best = r
                where = i
        return best, where

    def read(self):
        """The newest valid ``BootRecord``, or None when neither sector holds one."""
        return self.newest()[0]

    def write(self, rec):
        """Write ``rec`` as the newest record: its ``seq`` becomes one more than the
        newest on flash; the spare sector is erased, then programmed (two flash
        operations). A cut in either leaves the previous record in force."""
        old, where = self.newest()
        rec.seq = (old.seq + 1) if old is not None else 1
        target = 1 - where if where is not None else 0
        sector = self.first_sector + target
        self.nor.erase(sector)
        self.nor.program(sector * self.nor.sector_size, rec.pack())


class Bootloader:
    """Boot logic over ``nor`` (``nor.NORFlash``) and ``slots`` (two block devices with
    ``readblocks``/``ioctl``, e.g. ``nor.Partition``), with the boot record in sectors
    ``record_sector`` and ``record_sector + 1``.

    After ``boot()``: ``running`` (slot index), ``trial`` (bool: running an unconfirmed
    trial), ``rolled_back`` (bool: the last trial fell back, until the next commit),
    ``fell_back`` (None, or why the chosen slot was not the one the record named),
    ``record`` (the ``BootRecord`` in force)."""

    def __init__(self, nor, slots, record_sector=0):
        if len(slots) != 2:
            raise ValueError("two slots expected")
        self.nor = nor
        self.slots = slots
        self.store = BootStore(nor, record_sector)
        self.running = None
        self.trial = False
        self.rolled_back = False
        self.fell_back = None
        self.record = None

    def verify(self, index, rec=None):
        """True if slot ``index`` holds the image the record describes: a non-zero
        length that fits the slot and a matching SHA-256 read back from flash."""
        rec = rec or self.record
        length = rec.lengths[index]
        bdev = self.slots[index]
        bs = bdev.ioctl(5, 0)
        if length == 0 or length > bdev.ioctl(4, 0) * bs:
            return False
        h = hashlib.sha256()
        buf = bytearray(bs)
        block = 0
        done = 0
        while done < length:
            n = length - done
            if n >= bs:
                bdev.readblocks(block, buf)
                h.update(buf)
                n = bs
            else:
                tail = bytearray(n)
                bdev.readblocks(block, tail)
                h.update(tail)
            done += n
            block += 1
        return h.digest() == rec.digests[index]

    def boot(self):
        """Run the boot logic once (this is the power-on). Returns self. Writes the
        record when the state changes (trial → trial_booted, rollback, fall-back).
        Raises ``Bricked`` when nothing can boot."""
        rec = self.store.read()
        if rec is None:
            raise Bricked("no valid boot record")
        active = rec.active
        other = 1 - active
        # The slot the record asks for: the trial slot, or, after an unconfirmed trial
        # booted once, the previous one (rollback).
        want = other if rec.state == TRIAL_BOOTED else active
        if self.verify(want, rec):
            chosen = want
        elif self.verify(1 - want, rec):
            chosen = 1 - want
            self.fell_back = "slot %d fails its check" % want
        else:
            raise Bricked("no slot passes its check (record: %r)" % (rec,))

        new = rec.copy()
        if chosen == active and rec.state == CONFIRMED:
            new = None  # the steady state: nothing to write
        elif chosen == active and rec.state == TRIAL:
            new.state = TRIAL_BOOTED
        elif chosen == active:  # trial_booted, and the rollback target fails its check
            new = None  # boot the trial again; it may still be confirmed
        else:  # rollback, or a fall-back from a failing slot
            new.active = chosen
            new.state = CONFIRMED
            new.rolled_back = True
            # The slot left behind held an unconfirmed trial or a failing image: forget
            # it, so it can never boot later as a fall-back of its own.
            dead = 1 - chosen
            new.lengths[dead] = 0
            new.versions[dead] = 0
            new.digests[dead] = _NO_DIGEST
        if new is not None:
            self.store.write(new)
            rec = new
        self.record = rec
        self.running = chosen
        self.trial = rec.state == TRIAL_BOOTED and rec.active == chosen
        self.rolled_back = rec.rolled_back
        return self

    def peek(self):
        """Adopt the record in force without running the boot logic (no verification,
        no write): ``running`` becomes the record's active slot. For tools that inspect
        a flash file. Returns self; raises ``Bricked`` when there is no valid record."""
        rec = self._current()
        self.record = rec
        self.running = rec.active
        self.trial = rec.state == TRIAL_BOOTED
        self.rolled_back = rec.rolled_back
        return self

    def _current(self):
        rec = self.store.read()
        if rec is None:
            raise Bricked("no valid boot record")
        return rec

    def confirm(self):
        """Mark the running trial image good. No-op (no flash write) when not running
        on trial."""
        rec = self._current()
        if rec.state != TRIAL_BOOTED or rec.active != self.running:
            return
        new = rec.copy()
        new.state = CONFIRMED
        self.store.write(new)
        self.record = new
        self.trial = False

    def commit(self, index, length, sha256, version):
        """Point the record at slot ``index`` holding an image of ``length`` bytes with
        SHA-256 ``sha256`` (32 bytes) and image version ``version``, on trial: the next
        boot runs it once. Raises ``ValueError`` for the running slot, a bad index, a
        digest that is not 32 bytes, or a length that is 0 or larger than the slot."""
        if index not in (0, 1):
            raise ValueError("slot index must be 0 or 1")
        if index == self.running:
            raise ValueError("refusing to commit the running slot %d" % index)
        if len(sha256) != 32:
            raise ValueError("sha256 must be 32 bytes")
        bdev = self.slots[index]
        if not 0 < length <= bdev.ioctl(4, 0) * bdev.ioctl(5, 0):
            raise ValueError("image length %d does not fit slot %d" % (length, index))
        rec = self._current()
        new = rec.copy()
        new.active = index
        new.state = TRIAL
        new.rolled_back = False
        new.lengths[index] = length
        new.digests[index] = bytes(sha256)
        new.versions[index] = version
        self.store.write(new)
        self.record = new


def boot(nor, slots, record_sector=0):
    """Run the boot logic (see the module docstring) and return the ``Bootloader``,
    whose ``running``, ``trial`` and ``rolled_back`` say what booted. Raises
    ``Bricked``."""
    return Bootloader(nor, slots, record_sector).boot()


def provision_record(nor, index, length, sha256, version, record_sector=0):
    """Write a fresh record: slot ``index`` holds a confirmed image (the factory state),
    the other slot is empty. Used by ``board.provision``."""
    rec = BootRecord(active=index, state=CONFIRMED)
    rec.lengths[index] = length
    rec.digests[index] = bytes(sha256)
    rec.versions[index] = version
    BootStore(nor, record_sector).write(rec)
    return rec
