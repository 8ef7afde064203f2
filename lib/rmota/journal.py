"""The agent's journal: where an OTA job stands, kept on a power-fail-safe filesystem.

Two files on a filesystem object (littlefs on a board: ``vfs.VfsLfs2`` over a flash
partition; the desktop board uses the same on-disk format):

- ``job.json``: a small dict (stage, job id, URL, size, image header, slot, a result
  still to deliver). Written to ``job.tmp`` and renamed over ``job.json``: littlefs
  renames atomically, so a power cut leaves the old or the new record, never a mix.
- ``blocks.crc``: one CRC-32 (4 bytes, little-endian) per erase block programmed so
  far, appended as each block is done. A cut leaves the file at its old or new length
  (littlefs commits on close); a trailing partial entry is ignored. On resume each block
  of the slot is checked against its CRC while the SHA-256 is rebuilt (DESIGN.md
  section 4: MicroPython's hash objects cannot be saved, so the prefix is hashed again).

  A littlefs append allocates a new data block each time (an erase, ~45 ms on NOR: it
  stalls the host while the ESP keeps sending). A board with a few raw sectors to spare
  passes a ``CRCLog`` instead: the list then lives in pre-erased flash and each entry is
  one 4-byte program (a page program, ~0.7 ms), see ``CRCLog``.

Usage::

    j = Journal(vfs.VfsLfs2(bdev))
    j.save({"stage": "download", "job": "J1"})
    j.crc_append(0x1234abcd)
    j.load(), j.crcs(), j.clear()
"""

import json
import struct

from .urc import job_id_ok

_JOB = "job.json"
_TMP = "job.tmp"
_CRC = "blocks.crc"
_MAX_RECORD = 32768  # bytes: a record (URL up to 8,192 B, header) is far shorter
JOINTS = 8  # joint entries a CRCLog keeps (SlotWriter.on_joint and on_park)
PARK = 0x80000000  # a joint entry's offset with this bit: a parked block (on_park)


def _usable(d):
    # A record (dict) whose job id, when it has one, could have come from a notification.
    return isinstance(d, dict) and ("job" not in d or job_id_ok(d["job"]))


class Journal:
    """``fs``: an object with ``open(path, mode)``, ``rename(a, b)``, ``remove(path)``
    (MicroPython's ``vfs.VfsLfs2`` / ``VfsFat`` / ``VfsPosix`` objects have them; so does
    ``OSDir`` below). Errors from the filesystem propagate as ``OSError``, except that
    a missing or unreadable record loads as None."""

    def __init__(self, fs, crclog=None):
        self.fs = fs
        self.crclog = crclog
        self.writes = 0

    def load(self):
        """The saved dict, or None (no record, or damage: one that does not parse, is
        nested too deeply for the parser, is longer than any record, or holds a job id
        ``urc.job_id_ok`` refuses, itself or in the record it keeps under
        ``"download"``). Without a record, a finished ``.tmp`` one is taken: a
        filesystem whose rename removes the old file first (FAT) can be cut between."""
        for name in (_JOB, _TMP):
            try:
                f = self.fs.open(name, "rb")
            except OSError:
                continue
            try:
                # (the whole file: read(n) would take n bytes of heap up front)
                raw = f.read()
                d = json.loads(raw) if len(raw) <= _MAX_RECORD else None
            except (ValueError, OSError, MemoryError, RuntimeError):
                # (RuntimeError: CPython's RecursionError on deep nesting)
                d = None
            finally:
                f.close()
            return d if _usable(d) and _usable(d.get("download") or {}) else None
        return None

    def save(self, d):
        """Replace the record with ``d`` (a dict of JSON types: str keys; str, int,
        bool, None, list, dict values) atomically. Raises ``TypeError`` for anything else
        before writing (MicroPython's json would write bytes as a string)."""
        _check(d)
        data = json.dumps(d).encode()
        f = self.fs.open(_TMP, "wb")
        try:
            f.write(data)
        finally:
            f.close()
        self.fs.rename(_TMP, _JOB)
        self.writes += 1

    def clear(self):
        """Forget the record and the block CRCs."""
        if self.crclog is not None:
            self.crclog.reset()
        for name in (_JOB, _TMP, _CRC):
            try:
                self.fs.remove(name)
            except OSError:
                pass

    def crc_reset(self):
        """Start a new list of block CRCs (a new download)."""
        if self.crclog is not None:
            self.crclog.reset()
            return
        try:
            self.fs.remove(_CRC)
        except OSError:
            pass

    def crc_append(self, crc):
        """Record the CRC-32 (int) of the next programmed erase block."""
        if self.crclog is not None:
            self.crclog.append(crc)
            return
        f = self.fs.open(_CRC, "ab")
        try:
            f.write(struct.pack("<I", crc & 0xFFFFFFFF))
        finally:
            f.close()
        self.writes += 1

    def crc_truncate(self, n, ahead=0):
        """Keep only the first ``n`` block CRCs (blocks after them are written again):
        the kept entries go to a new file that replaces the old one atomically.
        ``ahead`` (a ``CRCLog`` only; 0: none): keep the entries from that index on too
        (blocks written ahead of a hole)."""
        if self.crclog is not None:
            self.crclog.truncate(n, ahead)
            return
        try:
            f = self.fs.open(_CRC, "rb")
        except OSError:
            return
        try:
            raw = f.read(4 * n)
        finally:
            f.close()
        f = self.fs.open(_TMP, "wb")
        try:
            f.write(raw)
        finally:
            f.close()
        self.fs.rename(_TMP, _CRC)
        self.writes += 1

    def crc_put(self, index, crc):
        """Record the CRC-32 of block ``index`` out of order (a block written ahead of a
        hole). Only a ``CRCLog`` can: returns True when it took the entry, False
        otherwise (the list in littlefs describes a prefix only)."""
        if self.crclog is not None:
            return self.crclog.put(index, crc)
        return False

    def crc_runs(self):
        """The entries recorded out of order (blocks written ahead of holes): a list of
        ``(first, [crc, ...])`` runs after absent entries, ``[]`` without a CRC log."""
        if self.crclog is not None:
            return self.crclog.runs()
        return []

    def crc_drop(self, lo, hi):
        """Forget the CRCs of blocks ``lo`` to ``hi - 1`` written ahead of a hole (they
        are about to be erased, or no longer hold what they did), keeping every other
        entry. Only a ``CRCLog`` holds such entries; the littlefs list is a prefix."""
        if self.crclog is not None and lo < hi:
            self.crclog.drop(lo, hi)

    def crc_move(self, index, crc, lo, hi):
        """Record the CRC-32 of block ``index`` (moved ahead of a hole) and forget blocks
        ``lo`` to ``hi - 1`` (the next to move, not moved yet) in one step, so that a
        power cut leaves both or neither (``SlotWriter.on_moved``). Only a ``CRCLog``
        can: True when it took the entry."""
        if self.crclog is not None:
            return self.crclog.move(index, crc, lo, hi)
        return False

    def joint_put(self, j, crc):
        """Record a joint (``SlotWriter.on_joint``): the image's bytes from payload
        offset ``j`` to the end of its block wait at the start of that block, their
        CRC-32 ``crc``. Only a ``CRCLog`` can (True when it took it)."""
        if self.crclog is not None:
            return self.crclog.joint_put(j, crc)
        return False

    def joint_drop(self, j):
        """Forget joint ``j`` (it was dropped before the image reached it)."""
        if self.crclog is not None:
            self.crclog.joint_drop(j)

    def joints(self):
        """The joints recorded, ``[(j, crc), ...]`` oldest first (``[]`` without a CRC
        log)."""
        if self.crclog is not None:
            return [e for e in self.crclog.joints() if not e[0] & PARK]
        return []

    def park_put(self, t, crc):
        """Record a parked partial block (``SlotWriter.on_park``): the image's bytes
        from the start of the block holding payload offset ``t`` up to ``t`` are in
        place, their CRC-32 ``crc``. Kept among the joint entries (``t`` with the ``PARK``
        bit). Only a ``CRCLog`` can (True when it took it)."""
        return self.joint_put(t | PARK, crc)

    def park_drop(self, t):
        """Forget parked block ``t`` (its bytes were dropped or moved)."""
        self.joint_drop(t | PARK)

    def parks(self):
        """The parked blocks recorded, ``[(t, crc), ...]`` oldest first."""
        if self.crclog is not None:
            return [(t & 0x7FFFFFFF, c) for t, c in self.crclog.joints() if t & PARK]
        return []

    def crcs(self):
        """The recorded block CRCs, a list of ints (a torn last entry is dropped)."""
        if self.crclog is not None:
            return self.crclog.crcs()
        try:
            f = self.fs.open(_CRC, "rb")
        except OSError:
            return []
        try:
            raw = f.read()
        finally:
            f.close()
        n = len(raw) // 4
        return [struct.unpack_from("<I", raw, 4 * k)[0] for k in range(n)]


class CRCLog:
    """The journal's block CRCs in raw flash: ``bdev`` (an extended block device over
    a few sectors kept for it, outside any filesystem) holds entry ``k`` (the CRC-32 of
    slot block ``k``, 4 bytes little-endian) at byte ``4 * k`` of its live area. The
    region is erased when a download starts, so an append is one 4-byte program into
    erased flash (NOR clears bits without an erase): no erase, no filesystem commit
    while the ESP sends.

    With two blocks or more the region is two areas, each ending in a generation
    marker (stored inverted, so a torn program or a torn erase only lowers it); the
    area with the higher generation is live. ``truncate(n)`` programs the first ``n``
    entries into the other area (erased first), then its marker: a power cut anywhere
    leaves the old list or the new one whole, never a mix, never none. With one block
    it erases and programs the kept entries back in place (a cut in between leaves
    fewer entries).

    Power cuts: an entry is 0xFFFFFFFF (absent) or what was programmed; a torn program
    leaves a value that matches no block, so the resume's check stops there and the block
    is fetched again. ``crcs()`` ends at the first absent entry (a block whose CRC happens
    to be 0xFFFFFFFF is one more block fetched again, no more). Appends beyond the
    area's capacity (``capacity`` entries) are dropped: the list stops there.

    After the block entries come ``JOINTS`` joint entries (two words: a payload
    offset and a CRC-32; ``joint_put``): bytes that wait at the start of their block
    for a hole's bytes (``SlotWriter.on_joint``). One is forgotten by programming
    zeros over it (NOR clears bits without an erase); ``truncate`` keeps the others,
    packed.

    Counters: ``programs``, ``erases``."""

    def __init__(self, bdev):
        self.bdev = bdev
        self.bs = bdev.ioctl(5, 0)
        self.nblocks = bdev.ioctl(4, 0)
        self._half = self.nblocks // 2  # blocks per area; 0: one area, no marker
        if self._half:
            self.capacity = self._half * self.bs // 4 - 1 - 2 * JOINTS
        else:
            self.capacity = self.nblocks * self.bs // 4 - 2 * JOINTS
        self._area = None  # the live area (0 or 1), None: markers not read yet
        self._gen = 0
        self._n = None  # entries present; None: not scanned yet
        self._e = bytearray(4)
        self.programs = 0
        self.erases = 0

    def _base(self):
        # Byte offset of the live area (reads the markers once).
        if not self._half:
            return 0
        if self._area is None:
            g0 = self._marker(0)
            g1 = self._marker(1)
            self._area = 1 if g1 > g0 else 0
            self._gen = g1 if g1 > g0 else g0
        return self._area * self._half * self.bs

    def _marker(self, area):
        a = (area + 1) * self._half * self.bs - 4
        self.bdev.readblocks(a // self.bs, self._e, a % self.bs)
        return ~struct.unpack_from("<I", self._e, 0)[0] & 0xFFFFFFFF

    def _read(self, off, buf):
        self.bdev.readblocks(off // self.bs, buf, off % self.bs)

    def _write(self, off, buf):
        self.bdev.writeblocks(off // self.bs, buf, off % self.bs)
        self.programs += 1

    def _raw(self, n):
        buf = bytearray(4 * n)
        if n:
            self._read(self._base(), buf)
        return buf

    def crcs(self):
        """The entries up to the first absent one, a list of ints."""
        raw = self._raw(self.capacity)
        out = []
        for k in range(self.capacity):
            v = struct.unpack_from("<I", raw, 4 * k)[0]
            if v == 0xFFFFFFFF:
                break
            out.append(v)
        self._n = len(out)
        return out

    def put(self, index, crc):
        """Program entry ``index`` out of order when it is absent (or holds ``crc``
        already). Returns True when the entry holds ``crc`` now."""
        if not 0 <= index < self.capacity:
            return False
        a = self._base() + 4 * index
        e = self._e
        self._read(a, e)
        v = struct.unpack_from("<I", e, 0)[0]
        crc &= 0xFFFFFFFF
        if v == crc:
            return True
        if v != 0xFFFFFFFF:
            return False
        struct.pack_into("<I", e, 0, crc)
        self._write(a, e)
        self._n = None  # append() finds its place again
        return True

    def _joint_words(self):
        buf = bytearray(8 * JOINTS)
        self._read(self._base() + 4 * self.capacity, buf)
        return buf

    def joints(self):
        """The joint entries present, ``[(j, crc), ...]`` in the order they were put
        (absent, forgotten and torn ones left out: a torn one holds a value that matches
        nothing, which the writer's check of the bytes in flash rejects)."""
        buf = self._joint_words()
        out = []
        for i in range(JOINTS):
            j, crc = struct.unpack_from("<II", buf, 8 * i)
            if j not in (0, 0xFFFFFFFF) and crc != 0xFFFFFFFF:
                out.append((j, crc))
        return out

    def joint_put(self, j, crc):
        """Program a joint entry into the first free pair. With none free but some
        forgotten, the list is written again first (as ``truncate`` does: an erase),
        which frees them. Returns False when all ``JOINTS`` are in use (the joint is
        then not kept across a power cut)."""
        buf = self._joint_words()
        free = gone = 0
        for i in range(JOINTS):
            v = struct.unpack_from("<I", buf, 8 * i)[0]
            if v == 0:
                gone += 1
            elif v == 0xFFFFFFFF and buf.count(b"\xff", 8 * i, 8 * i + 8) == 8:
                free += 1
        if gone and not free:
            cap = self.capacity
            self._rewrite(self._raw(cap + 2 * JOINTS), cap, cap)
            buf = self._joint_words()
        for i in range(JOINTS):
            if buf.count(b"\xff", 8 * i, 8 * i + 8) == 8:
                e = bytearray(8)
                struct.pack_into("<II", e, 0, j, crc & 0xFFFFFFFF)
                self._write(self._base() + 4 * self.capacity + 8 * i, e)
                return True
        return False

    def joint_drop(self, j):
        """Program zeros over every entry of joint ``j``."""
        buf = self._joint_words()
        for i in range(JOINTS):
            if struct.unpack_from("<I", buf, 8 * i)[0] == j:
                self._write(self._base() + 4 * self.capacity + 8 * i, bytearray(8))

    def runs(self):
        """The runs of entries after the first absent one (blocks written ahead of
        holes): a list of ``(first, [crc, ...])``, in index order, each run ended by an
        absent entry; ``[]`` when there are none."""
        raw = self._raw(self.capacity)
        cap = self.capacity
        out = []
        k = 0
        while k < cap and struct.unpack_from("<I", raw, 4 * k)[0] != 0xFFFFFFFF:
            k += 1
        while k < cap:
            while k < cap and struct.unpack_from("<I", raw, 4 * k)[0] == 0xFFFFFFFF:
                k += 1
            first = k
            run = []
            while k < cap:
                v = struct.unpack_from("<I", raw, 4 * k)[0]
                if v == 0xFFFFFFFF:
                    break
                run.append(v)
                k += 1
            if run:
                out.append((first, run))
        return out

    def drop(self, lo, hi):
        """Drop entries ``lo`` to ``hi - 1`` (``truncate(lo, hi)``), keeping the others;
        nothing is written when they are all absent (read 16 entries at a time)."""
        if hi > self.capacity:
            hi = self.capacity
        e = bytearray(64)
        k = lo
        while k < hi:
            n = hi - k if hi - k < 16 else 16
            self._read(self._base() + 4 * k, memoryview(e)[: 4 * n])
            if e.count(b"\xff", 0, 4 * n) != 4 * n:
                self.truncate(lo, hi)
                return
            k += n

    def _erase(self, first, count):
        # Erase the blocks [first, first + count) that are not blank already (read in
        # small pieces: no block-sized buffer, which a fragmented heap may not have).
        buf = bytearray(64)
        for b in range(first, first + count):
            for off in range(0, self.bs, 64):
                self.bdev.readblocks(b, buf, off)
                if buf.count(b"\xff") != 64:
                    self.bdev.ioctl(6, b)
                    self.erases += 1
                    break

    def reset(self):
        """Erase the region's blocks that are not blank already (the area not live
        first: a cut in between leaves the live list, or nothing)."""
        h = self._half
        if h:
            live = self._area if self._area is not None else (1 if self._base() else 0)
            self._erase((1 - live) * h, h)
            self._erase(live * h, h)
            if self.nblocks > 2 * h:
                self._erase(2 * h, self.nblocks - 2 * h)
        else:
            self._erase(0, self.nblocks)
        self._area = 0
        self._gen = 0
        self._n = 0

    def append(self, crc):
        """Program the next entry (``crc``: int). Allocation-free once scanned."""
        n = self._n
        if n is None:
            n = len(self.crcs())
        if n >= self.capacity:
            return
        struct.pack_into("<I", self._e, 0, crc & 0xFFFFFFFF)
        self._write(self._base() + 4 * n, self._e)
        self._n = n + 1

    def truncate(self, n, ahead=0):
        """Drop every entry from index ``n`` on (entries ahead of a hole too, unless
        ``ahead`` > ``n``: then those from index ``ahead`` on stay); the first ``n``
        positions are kept as they were, absent ones absent."""
        if n < 0:
            n = 0
        cap = self.capacity
        raw = self._raw(cap + 2 * JOINTS)  # the joint entries too
        if ahead <= n or ahead >= cap:
            ahead = cap
        if n >= cap or raw.count(b"\xff", 4 * n, 4 * ahead) == 4 * (ahead - n):
            return  # nothing from n on (up to ahead)
        self._rewrite(raw, n, ahead)

    def move(self, index, crc, lo, hi):
        """Put entry ``index`` (absent, or holding ``crc`` already) and drop entries
        ``lo`` to ``hi - 1`` (``index`` outside them) in one rewrite (``truncate``'s: the
        old list or the new one after a cut, with two areas); a single ``put`` when
        those are absent already. Returns True when entry ``index`` holds ``crc`` now."""
        cap = self.capacity
        if hi > cap:
            hi = cap
        raw = self._raw(cap + 2 * JOINTS)
        if lo >= hi or raw.count(b"\xff", 4 * lo, 4 * hi) == 4 * (hi - lo):
            return self.put(index, crc)
        ok = False
        if 0 <= index < cap and not lo <= index < hi:
            v = struct.unpack_from("<I", raw, 4 * index)[0]
            crc &= 0xFFFFFFFF
            ok = v in (crc, 0xFFFFFFFF)
            if ok:
                struct.pack_into("<I", raw, 4 * index, crc)
        self._rewrite(raw, lo, hi)
        return ok

    def _rewrite(self, raw, n, ahead):
        # Write the list again with entries [0, n) and [ahead, capacity) of ``raw`` and
        # the joint entries in use, packed, into the other area (then its marker), or in
        # place with one area.
        cap = self.capacity
        self._n = None
        h = self._half
        mv = memoryview(raw)
        # The joint entries in use, packed (forgotten ones free their pairs).
        joints = bytearray(b"\xff" * 8 * JOINTS)
        k = 0
        for i in range(JOINTS):
            a = 4 * cap + 8 * i
            if struct.unpack_from("<I", raw, a)[0] not in (0, 0xFFFFFFFF):
                joints[8 * k : 8 * k + 8] = raw[a : a + 8]
                k += 1
        if not h:
            self._erase(0, self.nblocks)
            if n:
                self._write(0, mv[: 4 * n])
            if ahead < cap:
                self._write(4 * ahead, mv[4 * ahead : 4 * cap])
            if k:
                self._write(4 * cap, joints)
            return
        other = 1 - self._area
        self._erase(other * h, h)
        base = other * h * self.bs
        if n:
            self._write(base, mv[: 4 * n])
        if ahead < cap:
            self._write(base + 4 * ahead, mv[4 * ahead : 4 * cap])
        if k:
            self._write(base + 4 * cap, joints)
        gen = self._gen + 1
        struct.pack_into("<I", self._e, 0, ~gen & 0xFFFFFFFF)
        self._write(base + h * self.bs - 4, self._e)  # the new list is live from here
        self._area = other
        self._gen = gen


def _check(x):
    if x is None or isinstance(x, (bool, int, float, str)):
        return
    if isinstance(x, list):
        for v in x:
            _check(v)
        return
    if isinstance(x, dict):
        for k in x:
            if not isinstance(k, str):
                raise TypeError("journal keys must be str")
            _check(x[k])
        return
    raise TypeError("not a JSON type: %s" % type(x).__name__)


class OSDir:
    """A directory of the ordinary filesystem as a journal ``fs`` (for boards whose
    filesystem is already littlefs, e.g. ``/`` on an ESP32 or RP2). ``path``: the
    directory, created if missing."""

    def __init__(self, path):
        import os

        self._os = os
        self.path = path
        try:
            os.mkdir(path)
        except OSError:
            pass

    def open(self, name, mode):
        return open(self.path + "/" + name, mode)  # noqa: SIM115 (the caller closes)

    def rename(self, a, b):
        self._os.rename(self.path + "/" + a, self.path + "/" + b)

    def remove(self, name):
        self._os.remove(self.path + "/" + name)
