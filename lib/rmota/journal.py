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

Usage::

    j = Journal(vfs.VfsLfs2(bdev))
    j.save({"stage": "download", "job": "J1"})
    j.crc_append(0x1234abcd)
    j.load(), j.crcs(), j.clear()
"""

import json
import struct

_JOB = "job.json"
_TMP = "job.tmp"
_CRC = "blocks.crc"


class Journal:
    """``fs``: an object with ``open(path, mode)``, ``rename(a, b)``, ``remove(path)``
    (MicroPython's ``vfs.VfsLfs2`` / ``VfsFat`` / ``VfsPosix`` objects have them; so does
    ``OSDir`` below). Errors from the filesystem propagate as ``OSError``, except that
    a missing or unreadable record loads as None."""

    def __init__(self, fs):
        self.fs = fs
        self.writes = 0

    def load(self):
        """The saved dict, or None (no record, or one that does not parse)."""
        try:
            f = self.fs.open(_JOB, "rb")
        except OSError:
            return None
        try:
            d = json.loads(f.read())
        except (ValueError, OSError):
            return None
        finally:
            f.close()
        return d if isinstance(d, dict) else None

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
        for name in (_JOB, _TMP, _CRC):
            try:
                self.fs.remove(name)
            except OSError:
                pass

    def crc_reset(self):
        """Start a new list of block CRCs (a new download)."""
        try:
            self.fs.remove(_CRC)
        except OSError:
            pass

    def crc_append(self, crc):
        """Record the CRC-32 (int) of the next programmed erase block."""
        f = self.fs.open(_CRC, "ab")
        try:
            f.write(struct.pack("<I", crc & 0xFFFFFFFF))
        finally:
            f.close()
        self.writes += 1

    def crc_truncate(self, n):
        """Keep only the first ``n`` block CRCs (blocks after them are written again):
        the kept entries go to a new file that replaces the old one atomically."""
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

    def crcs(self):
        """The recorded block CRCs, a list of ints (a torn last entry is dropped)."""
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
