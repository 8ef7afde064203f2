"""Stream an image into an inactive flash slot: explicit erase, program, rolling SHA-256.

The slot is a block device in MicroPython's extended protocol (``readblocks(n, buf,
off)``, ``writeblocks(n, buf, off)``, ``ioctl(op, arg)``; ``esp32.Partition``,
``rp2.Flash`` and ``pyb.Flash`` speak it). The writer collects bytes in one block-sized
buffer; when it is full it erases the block (``ioctl(6, n)``, never relying on an
implicit erase), programs it with the three-argument ``writeblocks`` and feeds the same
bytes to the rolling SHA-256. So the hash always covers exactly what is in flash.

Usage::

    w = SlotWriter(slot.bdev)
    w.begin(image_len)
    w.write(chunk)           # any sizes, in order
    digest = w.finish()      # flushes the last partial block
    w.readback_digest()      # hashes the slot again from flash
"""

import hashlib

from .errors import ImageError

_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6


class SlotWriter:
    """Writes one image into ``bdev`` (an extended block device, the INACTIVE slot).

    ``prog_align`` (bytes): the last partial block is padded with 0xFF to a multiple of
    it (rp2's flash programs whole 256-byte pages; programming 0xFF changes nothing).
    One buffer of one erase block is allocated here. Counters: ``erases``,
    ``programs`` (operations), ``rehashed`` (bytes hashed again from flash after a
    rewind)."""

    def __init__(self, bdev, prog_align=256):
        self.bdev = bdev
        self.block_size = bdev.ioctl(_IOCTL_BLOCK_SIZE, 0)
        self.capacity = bdev.ioctl(_IOCTL_BLOCK_COUNT, 0) * self.block_size
        if prog_align < 1 or self.block_size % prog_align:
            raise ValueError("prog_align must divide the block size")
        self.prog_align = prog_align
        self._buf = bytearray(self.block_size)
        self._mv = memoryview(self._buf)
        self.erases = 0
        self.programs = 0
        self.rehashed = 0
        self.image_len = 0
        self._fill = 0
        self._done = 0  # bytes programmed (and hashed): a multiple of the block size
        self._sha = None

    @property
    def offset(self):
        """Bytes accepted so far (programmed plus buffered)."""
        return self._done + self._fill

    @property
    def durable(self):
        """Bytes already programmed into flash (a multiple of the block size, or the
        whole image after ``finish()``)."""
        return self._done

    def begin(self, image_len):
        """Start a new image of ``image_len`` bytes at offset 0. Raises ``ImageError``
        (status 5) when it does not fit the slot."""
        if image_len > self.capacity:
            raise ImageError("image %d B > slot %d B" % (image_len, self.capacity))
        self.image_len = image_len
        self._fill = 0
        self._done = 0
        self._sha = hashlib.sha256()

    def write(self, data):
        """Append ``data`` (bytes-like). Erases and programs each block as it fills.
        Raises ``ImageError`` (status 3) for bytes beyond ``image_len``. Allocates one
        memoryview slice per block touched, nothing that grows with ``len(data)``."""
        mv = memoryview(data)
        n = len(mv)
        if self.offset + n > self.image_len:
            raise ImageError("more bytes than the image length", 3)
        i = 0
        bs = self.block_size
        while i < n:
            k = bs - self._fill
            if k > n - i:
                k = n - i
            f = self._fill
            self._mv[f : f + k] = mv[i : i + k]
            self._fill = f + k
            i += k
            if self._fill == bs:
                self._flush(bs)

    def _flush(self, n):
        blk = self._done // self.block_size
        self.bdev.ioctl(_IOCTL_BLOCK_ERASE, blk)
        self.erases += 1
        a = self.prog_align
        padded = (n + a - 1) // a * a
        if padded != n:
            for k in range(n, padded):
                self._buf[k] = 0xFF
        self.bdev.writeblocks(blk, self._mv[:padded] if padded < self.block_size else self._buf, 0)
        self.programs += 1
        self._sha.update(self._mv[:n] if n < self.block_size else self._buf)
        self._done += n
        self._fill = 0

    def rewind(self, offset):
        """Drop everything after ``offset`` bytes, rounded down to a block boundary
        (bytes of a torn or untrusted attempt). Returns the new offset. When the new
        offset is below what was programmed, the SHA-256 is rebuilt by hashing the
        kept prefix again from flash (MicroPython's hash objects cannot be copied)."""
        bs = self.block_size
        keep = offset // bs * bs
        if keep > self._done:
            keep = self._done
        self._fill = 0
        if keep < self._done:
            self._sha = hashlib.sha256()
            self._done = 0
            self._hash_flash(keep, self._sha)
            self.rehashed += keep
            self._done = keep
        return keep

    def _hash_flash(self, n, sha):
        bs = self.block_size
        blk = 0
        while n > 0:
            self.bdev.readblocks(blk, self._buf, 0)
            k = bs if n >= bs else n
            sha.update(self._buf if k == bs else self._mv[:k])
            n -= k
            blk += 1

    def finish(self):
        """Program the last partial block and return the rolling SHA-256 (32 bytes) of
        the whole image. Raises ``ImageError`` (status 3) when fewer than
        ``image_len`` bytes were written."""
        if self.offset != self.image_len:
            raise ImageError("short image: %d of %d B" % (self.offset, self.image_len), 3)
        if self._fill:
            self._flush(self._fill)
        return self._sha.digest()

    def readback_digest(self):
        """Read the whole image back from the slot and return its SHA-256 (32 bytes).
        Uses the writer's block buffer; allocates nothing per block."""
        sha = hashlib.sha256()
        self._hash_flash(self.image_len, sha)
        return sha.digest()
