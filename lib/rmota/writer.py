"""Stream an image into an inactive flash slot: explicit erase, program, rolling SHA-256.

The slot is a block device in MicroPython's extended protocol (``readblocks(n, buf,
off)``, ``writeblocks(n, buf, off)``, ``ioctl(op, arg)``; ``esp32.Partition``,
``rp2.Flash`` and ``pyb.Flash`` speak it). The writer collects bytes in a buffer of whole
erase blocks (a ring); each full block is erased (``ioctl(6, n)``, never relying on an
implicit erase), programmed with the three-argument ``writeblocks`` and fed to the
rolling SHA-256. So the hash always covers exactly what is in flash.

Flash operations stall the host (a 4 KB sector erase takes ~45 ms on serial NOR, and
rp2 runs it with interrupts off, so the UART can overflow meanwhile: issue 3). The
writer therefore offers, besides erase-as-you-go:

- ``erase_ahead()``: erase the blocks an image will need before the download starts, so
  that only (short) programs happen while bytes stream in;
- ``defer``: buffer up to the whole ring without touching the flash, then write it with
  ``flush_step()`` while the sender is idle (a download window received into RAM);
- ``prog_chunk``: program at most that many bytes per ``writeblocks`` call (rp2 programs
  a whole call with interrupts off: one 256-byte page keeps that under a millisecond).

Usage::

    w = SlotWriter(slot.bdev)
    w.begin(image_len)
    w.write(chunk)           # any sizes, in order
    digest = w.finish()      # flushes the last partial block
    w.readback_digest()      # hashes the slot again from flash
"""

import hashlib

try:
    from binascii import crc32
except ImportError:  # pragma: no cover - a port built without crc32
    crc32 = None

from .errors import ImageError

_IOCTL_BLOCK_COUNT = 4
_IOCTL_BLOCK_SIZE = 5
_IOCTL_BLOCK_ERASE = 6
MAX_HOLES = 8  # holes open at once (SlotWriter.gap)
IN_ORDER = 0x40000000  # on_park's offset with this bit: the block being written (gap)


class SlotWriter:
    """Writes one image into ``bdev`` (an extended block device, the INACTIVE slot).

    ``prog_align`` (bytes): the last partial block is padded with 0xFF to a multiple of
    it (rp2's flash programs whole 256-byte pages; programming 0xFF changes nothing).
    ``buffer_blocks``: size of the buffer in erase blocks (at least 1). With at least
    ``1 + ceil(chunk / block size)`` blocks, ``write()`` of a chunk allocates a small
    constant (at most two memoryview slices, on MicroPython 32 bytes each) whatever the
    chunk's length: full blocks are flushed through memoryviews made once, here.
    ``prog_chunk`` (bytes, a multiple of ``prog_align`` dividing the block size; None:
    the whole block): bytes per ``writeblocks`` call.

    All buffers are allocated here. Counters: ``erases``, ``programs`` (``writeblocks``
    calls), ``rehashed`` (bytes hashed again from flash after a rewind),
    ``pre_erased`` (blocks erased by ``erase_ahead``).

    ``on_block`` (attribute, default None): called as ``on_block(index, crc)`` after
    block ``index`` of the slot was programmed, ``crc`` the CRC-32 of its image bytes
    (``binascii.crc32``; the last block: only the image's bytes, not the padding), so a
    journal can tell later which blocks are intact (DESIGN.md section 4).
    ``on_erase`` (attribute, default None): called as ``on_erase(index)`` before block
    ``index`` (or an erase unit starting there) is erased when ``index < journaled``
    (attribute, int: how many blocks the owner's journal describes; the owner keeps it
    current), so that the journal can drop its entries for those blocks first: then an
    entry always describes a block whose program finished, and a power cut inside an
    erase or program leaves none for it.

    ``on_ahead`` (attribute, default None): called as ``on_ahead(index, crc)`` after a
    block ahead of a hole was programmed (``gap()``); True when the journal took the
    entry (it is then dropped through ``on_erase`` if the blocks ahead are dropped).
    ``on_forget`` (attribute, default None): called as ``on_forget(lo, hi)`` before
    blocks ``lo`` to ``hi - 1`` ahead of a hole are erased again or stop holding what
    their entries say (a move, a run dropped): the journal drops just those entries
    and keeps the other runs', so a power cut mid-move loses one block, not the run.
    ``on_moved`` (attribute, default None): called as ``on_moved(index, crc, lo, hi)``
    once block ``index`` was moved (``shift_ahead``): journal its entry and drop those
    of blocks ``lo`` to ``hi - 1`` (the next to move) in one step; True when the journal
    took the entry. Without it: ``on_forget(lo, hi)``, then ``on_ahead(index, crc)``.
    ``on_joint`` (attribute, default None): called as ``on_joint(j, crc)`` once the
    bytes from payload offset ``j`` to its block's end (the joint: a hole's lead, or
    what a move left before its first block) wait at the start of that block in flash,
    ``crc`` the CRC-32 of those bytes; as ``on_joint(j, None)`` when that joint is
    dropped before the image reached it. ``resume_ahead`` takes them back.
    ``on_park`` (attribute, default None): called as ``on_park(t, crc)`` once a partial
    block ahead of a hole (its bytes from the block's start up to payload offset ``t``,
    ``t`` not on a block boundary) was parked in flash at its place, before a later hole
    or at the end of a response (``park_tail``), ``crc`` the CRC-32 of those bytes; as
    ``on_park(t, None)`` when those bytes are dropped or moved. ``resume_ahead`` takes
    them back, so a power cut keeps them. When a hole opens, the whole pages
    (``prog_align``) of the block being written are programmed at their place the same
    way and reported with ``t | IN_ORDER`` (its bytes came in order, so a resume takes
    them back into the buffer); the rest of that block is programmed when it fills, no
    page twice and without erasing it again.

    ``crc_span`` (bytes, None: the whole block): the CRC covers only the first and the
    last ``crc_span`` bytes of a full block. A torn program leaves the block's end
    unprogrammed and a torn erase its start erased (programs and erases run in address
    order), so that still tells a torn block, for a fraction of the cost (MicroPython's
    ``crc32`` costs about as much as SHA-256: make bench); anything else that could
    differ is caught by the image's SHA-256 and the read-back before any commit.

    ``erase_unit`` (bytes, a multiple of the block size; 0: one block): when the write
    position reaches a multiple of it and the image needs the whole unit, the unit is
    erased at once with ``bdev.erase_blocks(block, count)`` if the device has it (serial
    NOR erases an aligned 32 or 64 KB block in one command: 150 ms for 64 KB against
    16 x 45 ms sector by sector, W25Q128JV typical). Without the method, or near the
    end of the image, blocks are erased one by one (``ioctl(6, n)``)."""

    def __init__(
        self, bdev, prog_align=256, buffer_blocks=1, prog_chunk=None, crc_span=None, erase_unit=0
    ):
        self.bdev = bdev
        bs = self.block_size = bdev.ioctl(_IOCTL_BLOCK_SIZE, 0)
        self.capacity = bdev.ioctl(_IOCTL_BLOCK_COUNT, 0) * bs
        if prog_align < 1 or bs % prog_align:
            raise ValueError("prog_align must divide the block size")
        if prog_chunk is None:
            prog_chunk = bs
        if prog_chunk < prog_align or prog_chunk % prog_align or bs % prog_chunk:
            raise ValueError("prog_chunk must be a multiple of prog_align dividing the block")
        if buffer_blocks < 1:
            raise ValueError("buffer_blocks must be >= 1")
        self.prog_align = prog_align
        self.prog_chunk = prog_chunk
        self.nblocks = buffer_blocks
        self._cap = buffer_blocks * bs
        self._buf = bytearray(self._cap)
        self._mv = memoryview(self._buf)
        # One view per program call (prog_chunk bytes), made once: flushing allocates
        # nothing. _blk[k] is ring block k.
        per = bs // prog_chunk
        self._per = per
        self._chunks = [
            self._mv[i * prog_chunk : (i + 1) * prog_chunk] for i in range(buffer_blocks * per)
        ]
        self._blk = [self._mv[k * bs : (k + 1) * bs] for k in range(buffer_blocks)]
        if crc_span is not None and not 0 < crc_span <= bs // 2:
            raise ValueError("crc_span must be 1..half a block")
        self.crc_span = crc_span
        if crc_span:
            self._heads = [self._mv[k * bs : k * bs + crc_span] for k in range(buffer_blocks)]
            self._tails = [
                self._mv[(k + 1) * bs - crc_span : (k + 1) * bs] for k in range(buffer_blocks)
            ]
        if erase_unit and (erase_unit < 0 or erase_unit % bs):
            raise ValueError("erase_unit must be a multiple of the block size")
        self._unit = erase_unit // bs if erase_unit and hasattr(bdev, "erase_blocks") else 1
        self.defer = False
        self.on_block = None
        self.on_erase = None
        self.on_ahead = None
        self.on_forget = None
        self.on_moved = None
        self.on_joint = None
        self.on_park = None
        self.journaled = 0
        # Offset where the latest blocks written ahead joined the image (0: none): what
        # an overlap check that fails right after can drop (their position was trusted).
        self.absorbed_at = 0
        self.erases = 0
        self.programs = 0
        self.rehashed = 0
        self.pre_erased = 0
        self.image_len = 0
        self._head = 0  # ring index (in blocks) of the first buffered block
        self._fill = 0  # bytes buffered, not yet programmed
        self._done = 0  # bytes programmed (and hashed): a multiple of the block size
        self._erased_to = 0  # blocks [_done/bs, _erased_to/bs) were erased ahead, unused
        self._sha = None
        # A hole (gap()): bytes [offset, _hole) are missing; bytes from _hole on are
        # written ahead into blocks [_hole, _ahead_end), assembled in ring block _ablk.
        self._hole = 0  # 0: no hole
        self._holes = []  # the holes after it: (start, end) payload offsets
        self._reload = 0  # a parked partial block to read back (offset of its end)
        self._ahead_logged = False  # on_ahead took entries for blocks ahead
        self._apos = 0  # payload offset write_ahead() expects next
        self._astart = 0  # write_ahead() skips bytes before it (their block is in a hole)
        # gap(): the bytes from the loss's end to the first block ahead (the lead) are
        # gathered at the start of ring block _ablk from _lead on, then kept as the
        # joint; 0: none gathered (dropped, as before)
        self._lead = 0
        self._ahead_end = 0
        self._afill = 0
        self._ablk = 0
        self._aerased = 0  # blocks [_ahead_end, _aerased) erased for the ahead path
        # After shift_ahead() moved the bytes ahead up: the hole ends at _joint (inside
        # a block) and that block's bytes from _joint on wait at the start of it in
        # flash; write() takes them into the ring when it gets there.
        self._joint = 0
        self._jstop = 0  # the joint while write() writes up to it
        self._stale = None  # shift_ahead: the old run's blocks outside its new place
        self._stale_last = 0  # shift_ahead: the image's last block, entry kept for now
        self._parked = []  # ends of the partial blocks parked ahead (reported to on_park)
        self._wpark = 0  # gap(): the block being written was parked up to here (on_park)
        self._wprog = 0  # bytes of the block being written programmed already (gap)

    @property
    def offset(self):
        """Bytes accepted so far (programmed plus buffered)."""
        return self._done + self._fill

    @property
    def durable(self):
        """Bytes already programmed into flash (a multiple of the block size, or the
        whole image after ``finish()``)."""
        return self._done

    @property
    def buffered(self):
        """Bytes accepted but not programmed yet."""
        return self._fill

    @property
    def room(self):
        """Bytes ``write()`` can take before it must program (with ``defer``)."""
        return self._cap - self._fill

    def begin(self, image_len):
        """Start a new image of ``image_len`` bytes at offset 0. Raises ``ImageError``
        (status 5) when it does not fit the slot. Blocks erased ahead stay erased."""
        if image_len > self.capacity:
            raise ImageError("image %d B > slot %d B" % (image_len, self.capacity))
        if self._done:
            self._erased_to = 0
        self.image_len = image_len
        self._forget_hole()
        self.absorbed_at = 0
        self._wpark = 0
        self._wprog = 0
        self._fill = 0
        self._head = 0
        self._done = 0
        self._stale_last = 0
        self._sha = hashlib.sha256()

    def erase_ahead(self, upto, max_blocks=1):
        """Erase blocks ahead of the write position so that the first ``upto`` bytes of
        the slot are ready for programming (``upto`` is capped at the slot capacity).
        Erases at most ``max_blocks`` per call (each erase stalls the host: call it from
        a loop that keeps the application running) and returns True while more remain.
        Later ``write()`` calls program those blocks without erasing them again."""
        bs = self.block_size
        if upto > self.capacity:
            upto = self.capacity
        end = (upto + bs - 1) // bs * bs
        stop = self._joint or self._hole
        if stop and end > stop // bs * bs:
            end = stop // bs * bs  # blocks from the hole's end on: written ahead
        nxt = (self._done + bs - 1) // bs * bs  # the next block to be programmed
        if self._wprog:
            nxt = self._done + bs  # (pages of the block being written are parked in it)
        if self._erased_to < nxt:
            self._erased_to = nxt
        k = 0
        while self._erased_to < end and k < max_blocks:
            n = self._erase_at(self._erased_to // bs, end // bs)
            self.pre_erased += n
            k += 1
        return self._erased_to < end

    def _erase_at(self, blk, limit):
        # Erase from block ``blk`` (== _erased_to // bs): a whole erase unit when blk is
        # on its boundary and the unit ends by block ``limit``, else one block. Returns
        # the blocks erased; _erased_to moves past them.
        u = self._erase(blk, limit)
        self._erased_to = (blk + u) * self.block_size
        return u

    def _erase(self, blk, limit):
        # Erase block ``blk`` or the erase unit starting there; returns the blocks erased.
        if self.on_erase is not None and blk < self.journaled:
            self.on_erase(blk)
        u = self._unit
        if u > 1 and blk % u == 0 and blk + u <= limit:
            self.bdev.erase_blocks(blk, u)
        else:
            self.bdev.ioctl(_IOCTL_BLOCK_ERASE, blk)
            u = 1
        self.erases += u
        if blk * self.block_size <= self._done < (blk + u) * self.block_size:
            self._wprog = 0  # the block being written: pages parked in it are gone
        return u

    def write(self, data):
        """Append ``data`` (bytes-like). Erases and programs each block as it fills
        (with ``defer``: only when the buffer is full). Returns the bytes taken: all of
        them, except that with a hole (``gap()``) it stops where the hole ends; once
        the hole is filled the blocks written ahead join the image (``offset`` jumps
        past them) and the caller goes on from there. Raises ``ImageError`` (status 3)
        for bytes beyond ``image_len``. Allocates at most two memoryview slices per
        call while ``data`` fits the free buffer (see the class docstring)."""
        n = len(data)
        fill = self._fill
        j = self._joint
        if j and self._done + fill + n >= j:
            k = j - self._done - fill
            if k:
                self._joint = 0  # (a plain write up to it)
                self._jstop = j
                self.write(data[:k])
                self._jstop = 0
                self._joint = j
            self._take_joint()
            return k
        if self._hole and self._done + fill + n > self._hole:
            k = self._hole - self._done - fill
            if k <= 0:  # the hole ends the image: nothing may follow
                raise ImageError("more bytes than the image length", 3)
            self.write(data[:k])
            return k
        if self._done + fill + n > self.image_len:
            raise ImageError("more bytes than the image length", 3)
        cap = self._cap
        bs = self.block_size
        if n <= cap - fill:  # the steady state: one copy, then program full blocks
            w = self._head * bs + fill
            if w >= cap:
                w -= cap
            if w + n <= cap:
                self._mv[w : w + n] = data
            else:
                first = cap - w
                self._mv[w:cap] = data[:first]
                self._mv[0 : n - first] = data[first:]
            fill += n
            self._fill = fill
            if fill >= bs and not self.defer:
                self._flush_full(self.nblocks)
            return n
        i = 0
        while i < n:
            room = cap - self._fill
            if room == 0:
                self._flush_full(self.nblocks)  # defer mode with a full buffer
                continue
            k = n - i
            if k > room:
                k = room
            self._put(data, i, k)
            i += k
            if not self.defer:
                self._flush_full(self.nblocks)
        return n

    def _put(self, data, i, k):
        # Copy data[i:i+k] to the write position of the ring (one or two segments).
        cap = self._cap
        w = self._head * self.block_size + self._fill
        if w >= cap:
            w -= cap
        first = cap - w
        mv = self._mv
        if first >= k:
            mv[w : w + k] = data[i : i + k]
        else:
            mv[w:cap] = data[i : i + first]
            mv[0 : k - first] = data[i + first : i + k]
        self._fill += k

    def flush_step(self, max_blocks=1):
        """Program at most ``max_blocks`` full buffered blocks; True while full blocks
        remain (``defer`` mode: call it after the download window ended)."""
        self._flush_full(max_blocks)
        return self._fill >= self.block_size

    def _flush_full(self, max_blocks):
        bs = self.block_size
        while self._fill >= bs and max_blocks > 0:
            self._program_block(self._head, bs)
            self._head += 1
            if self._head == self.nblocks:
                self._head = 0
            self._fill -= bs
            max_blocks -= 1
        if not self._fill:
            self._head = 0
            if self._reload:
                self._reload_parked()

    def _program_block(self, k, n):
        # Erase (unless erased ahead), program and hash ring block k holding n bytes.
        bs = self.block_size
        blk = self._done // bs
        dev = self.bdev
        if self._done >= self._erased_to:  # else erased ahead (erase_ahead, a unit)
            self._wprog = 0  # (nothing of it is programmed once it is erased)
            if self._unit == 1 and blk >= self.journaled:  # the steady state
                dev.ioctl(_IOCTL_BLOCK_ERASE, blk)
                self.erases += 1
                self._erased_to = self._done + bs
            else:
                # (an erase unit stops before the joint's block: it holds the joint)
                stop = self._joint or self._jstop or self._hole
                lim = stop // bs if stop else (self.image_len + bs - 1) // bs
                self._erase_at(blk, lim)
        if n == bs and self.prog_chunk == bs and not self._wprog:  # the steady state
            data = self._blk[k]
            dev.writeblocks(blk, data, 0)
            self.programs += 1
            self._sha.update(data)
            self._done += bs
            if self._wpark:
                self._drop_wpark()
            if self._stale_last:
                self._drop_stale_last(blk)
            cb = self.on_block
            if cb is not None:
                if self.crc_span:
                    cb(blk, crc32(self._tails[k], crc32(self._heads[k])))
                else:
                    cb(blk, crc32(data))
            if self._hole and self._done >= self._hole:
                self._absorb(k)
            return
        self._program_raw(blk, k, n, self._wprog)
        self._wprog = 0
        base = k * bs
        data = self._blk[k] if n == bs else self._mv[base : base + n]
        self._sha.update(data)
        self._done += n
        if self._wpark:
            self._drop_wpark()
        if self._stale_last:
            self._drop_stale_last(blk)
        if self.on_block is not None:
            self.on_block(blk, self._block_crc(k, data, n))
        if self._hole and self._done >= self._hole:
            self._absorb(k)

    def _program_raw(self, blk, k, n, start=0):
        # Program ring block k holding n bytes into slot block blk (erased), the tail
        # padded with 0xFF to prog_align, prog_chunk bytes per call; from byte ``start``
        # on (a multiple of prog_align: the bytes before it are programmed already).
        bs = self.block_size
        a = self.prog_align
        padded = (n + a - 1) // a * a
        base = k * bs
        for j in range(n, padded):
            self._buf[base + j] = 0xFF
        pc = self.prog_chunk
        per = self._per
        c = start // pc
        if start % pc:  # up to the next prog_chunk boundary first
            e = (c + 1) * pc
            if e > padded:
                e = padded
            if start < e:
                self.bdev.writeblocks(blk, self._mv[base + start : base + e], start)
                self.programs += 1
            c += 1
        while c * pc < padded:
            off = c * pc
            if off + pc <= padded:
                view = self._chunks[k * per + c]
            else:
                view = self._mv[base + off : base + padded]  # the image's last block only
            self.bdev.writeblocks(blk, view, off)
            self.programs += 1
            c += 1

    # --- a hole: the bytes after it are written ahead ---------------------------------
    @property
    def hole_end(self):
        """Payload offset where the hole ends and the blocks written ahead begin (a
        block boundary, or ``image_len``); 0 when there is no hole."""
        return self._hole

    @property
    def fill_end(self):
        """Payload offset up to which the hole's bytes are needed (``hole_end``, or
        less where shift_ahead() kept the start of its last block); 0 without a hole."""
        return self._joint or self._hole

    @property
    def ahead_at(self):
        """Payload offset where the bytes written ahead have got to (where
        ``write_ahead()`` expects the next ones); 0 without a hole."""
        return self._apos if self._hole else 0

    @property
    def holes_after(self):
        """Holes among the bytes written ahead, after the current one (int; the
        parked tail of ``park_tail()`` does not count)."""
        n = 0
        for s, e in self._holes:
            if e > s:
                n += 1
        return n

    @property
    def ahead(self):
        """Bytes from the current hole's end to where the bytes written ahead end (later
        holes included; 0 without a hole)."""
        return self._ahead_end - self._hole if self._hole else 0

    def gap(self, resume):
        """The bytes from ``offset`` up to payload offset ``resume`` are lost (a record
        that came altered), the ones after it are good: from the first block boundary at
        or after ``resume`` on, ``write_ahead()`` programs them now, and the hole
        (``offset`` .. ``hole_end``) is filled later with ``write()``, after which the
        blocks written ahead are hashed from flash and join the image.

        With a hole open already, a later loss among the bytes written ahead opens
        another (at most ``MAX_HOLES``): the partial block before it is parked in flash
        (programmed as far as it goes; read back, erased and programmed whole when its
        turn comes), so that hole too costs at most the lost bytes plus the rest of one
        block. Holes are filled in order: ``hole_end`` is always the current one.

        Returns False (nothing changed) when a hole cannot be kept: ``defer``, a buffer
        of one block, too many holes, or ``resume`` not past the write position
        (``offset``, or with a hole open where the bytes ahead had got to) or beyond
        ``image_len``."""
        bs = self.block_size
        if self.defer or self.nblocks < 2 or self._fill >= bs:
            return False
        if self._hole:
            return self._next_gap(resume)
        at = self._done + self._fill
        if not at < resume <= self.image_len:
            return False
        pf = self._fill // self.prog_align * self.prog_align
        if pf > self._wprog and self.on_park is not None:
            # The bytes before the hole wait in the buffer for the hole's bytes: park
            # their whole pages in their block (the rest of it is programmed when it
            # fills, no page twice) and journal them, so that a power cut while the
            # hole is open keeps them. Erased ahead already, or erased now (once).
            blk = self._done // bs
            if self._done >= self._erased_to:
                self._erase(blk, blk + 1)
                self._erased_to = self._done + bs
            self._program_raw(blk, self._head, pf, self._wprog)
            self._wprog = pf
            self._wpark = self._done + pf
            base = self._head * bs
            self.on_park(self._wpark | IN_ORDER, crc32(self._mv[base : base + pf]))
        b1 = (resume + bs - 1) // bs * bs
        if b1 > self.image_len:
            b1 = self.image_len
        self._hole = b1
        self._holes = []
        self._astart = b1
        self._apos = resume
        # The lead: the bytes from resume to b1, in a block that starts inside the hole
        # after the block the write position is in (the joint: write() takes them when it
        # gets there, and the hole's bytes are needed up to resume only).
        self._lead = resume if resume % bs and resume // bs * bs >= self._done + bs else 0
        self._ahead_end = b1
        self._afill = 0
        self._ablk = self._head + 1 if self._head + 1 < self.nblocks else 0
        # Blocks from b1 on are the ahead path's: erased already if erased ahead before.
        self._aerased = self._erased_to if self._erased_to > b1 else b1
        if self._erased_to > b1:
            self._erased_to = b1
        return True

    def _next_gap(self, resume):
        # Another loss, at _apos (where the bytes ahead had got to), up to resume.
        bs = self.block_size
        p = self._apos
        if not p < resume <= self.image_len or len(self._holes) >= MAX_HOLES:
            return False
        b2 = (resume + bs - 1) // bs * bs
        if b2 > self.image_len:
            b2 = self.image_len
        if p <= self._astart:
            # Still inside the bytes skipped before the latest hole's first block ahead
            # (nothing of that block assembled yet): that hole just grows. (The first
            # hole's lead, where this loss falls, goes.)
            if self._holes:
                s0, e0 = self._holes[-1]
                if b2 > e0:
                    self._holes[-1] = (s0, b2)
            else:
                self._lead = 0
                self._set_joint(0)
                if b2 > self._hole:
                    self._hole = b2
            if b2 > self._astart:
                self._ahead_end = b2
                self._astart = b2
                if self._aerased < b2:
                    self._aerased = b2
        else:
            if self._afill:  # park the partial block before the loss in flash
                blk = self._ahead_end // bs
                if self._ahead_end >= self._aerased:
                    u = self._erase(blk, (self.image_len + bs - 1) // bs)
                    self._aerased = (blk + u) * bs
                self._program_raw(blk, self._ablk, self._afill)
                self._parked_at(blk, self._ablk, self._afill)
                self._afill = 0
            self._holes.append((p, b2))
            self._ahead_end = b2
            self._astart = b2
            if self._aerased < b2:
                self._aerased = b2
        self._apos = resume
        return True

    def write_ahead(self, data, off):
        """Bytes ``data`` at payload offset ``off`` after the hole (``gap()``): bytes
        before ``hole_end`` are dropped (their block starts in the hole), whole blocks
        are erased and programmed as they fill (not hashed yet), the image's last block
        when it ends. Returns False, writing nothing, when there is no hole or ``off``
        is not where the previous bytes ended. Raises ``ImageError`` (status 3) for
        bytes beyond ``image_len``."""
        if not self._hole or off != self._apos or off < 0:
            return False
        n = len(data)
        if off + n > self.image_len:
            raise ImageError("more bytes than the image length", 3)
        self._apos = off + n
        i = 0
        bs = self.block_size
        if off < self._astart:  # the head of a block that starts in the hole: skipped,
            i = self._astart - off
            if self._lead:  # or gathered as the lead
                a = self._ablk * bs + off - self._lead
                k = n if i > n else i
                self._mv[a : a + k] = data[:k]
                if i <= n:
                    self._program_lead()
            if i >= n:
                return True
        base = self._ablk * bs
        mv = self._mv
        while i < n:
            k = bs - self._afill
            if k > n - i:
                k = n - i
            a = base + self._afill
            mv[a : a + k] = data[i : i + k]
            self._afill += k
            i += k
            if self._afill == bs or self._ahead_end + self._afill == self.image_len:
                self._program_ahead()
        return True

    def _program_lead(self):
        # The lead is whole (up to the first block ahead): program it at the start of
        # its block, in the hole, which the image erases again when it gets there. It is
        # the joint from now on (journalled through on_joint).
        j = self._lead
        self._lead = 0
        blk = j // self.block_size
        if self._erased_to > blk * self.block_size:
            self._erased_to = blk * self.block_size  # (erased ahead, unused: as it is)
        else:
            self._erase_one(blk)
        self._program_raw(blk, self._ablk, self._astart - j)
        self._set_joint(j)

    def _set_joint(self, j):
        # The joint becomes j (0: none). One that was not taken is forgotten by the
        # journal (on_joint(old, None)); a new one is journalled with the CRC-32 of its
        # bytes as they are in flash (on_joint(j, crc)), so a power cut keeps it.
        old = self._joint
        self._joint = j
        cb = self.on_joint
        if cb is None or old == j:
            return
        if old:
            cb(old, None)
        if j:
            cb(j, self._flash_crc(j))

    def _parked_at(self, blk, k, n):
        # Ring block k's n bytes were just parked at the start of slot block blk:
        # journalled (on_park) with their CRC-32, so a power cut keeps them.
        cb = self.on_park
        if cb is None or not n or n >= self.block_size:
            return
        t = blk * self.block_size + n
        self._parked.append(t)
        base = k * self.block_size
        cb(t, crc32(self._mv[base : base + n]))

    def _drop_wpark(self):
        # The pages of the block being written parked by gap() are forgotten: their
        # block was programmed whole, or its bytes were dropped (rewind), so that a
        # resume never takes back bytes of an attempt that was dropped.
        if self.on_park is not None:
            self.on_park(self._wpark | IN_ORDER, None)
        self._wpark = 0

    def _drop_parked(self, lo, hi):
        # The parked partial blocks ending in (lo, hi] no longer hold what their entries
        # say (dropped or about to move): forgotten first (on_park(t, None)).
        keep = []
        cb = self.on_park
        for t in self._parked:
            if lo < t <= hi:
                if cb is not None:
                    cb(t, None)
            else:
                keep.append(t)
        self._parked = keep

    def _joint_len(self, j):
        # Bytes of the joint j: up to its block's end or the image's.
        bs = self.block_size
        e = (j // bs + 1) * bs
        return (e if e < self.image_len else self.image_len) - j

    def _flash_crc(self, j):
        # CRC-32 of joint j's bytes at the start of its block.
        return self._start_crc(j // self.block_size, self._joint_len(j))

    def _start_crc(self, blk, n):
        # CRC-32 of the first n bytes of slot block blk in flash (64 B at a time: a
        # recovery path, the ring may hold bytes).
        buf = bytearray(64)
        mv = memoryview(buf)
        c = 0
        off = 0
        while off < n:
            m = n - off if n - off < 64 else 64
            self.bdev.readblocks(blk, mv[:m], off)
            c = crc32(mv[:m], c)
            off += m
        return c

    @property
    def joint_len(self):
        """Bytes of the current hole's end that wait at the start of their block in
        flash (the joint, from ``fill_end`` on; 0: none)."""
        return self._joint_len(self._joint) if self._joint else 0

    def joint_unique(self, want):
        """True when ``want`` (bytes-like: the joint's first bytes) occurs nowhere else
        among the joint's bytes (read into the ring's ahead block, which must be empty:
        False otherwise). Bytes that repeat with a shorter period would match the file's
        at the wrong shift too."""
        n = self.joint_len
        if not n or self._afill:
            return False
        base = self._ablk * self.block_size
        self.bdev.readblocks(self._joint // self.block_size, self._mv[base : base + n], 0)
        return self._buf.find(want, base + 1, base + n) < 0

    def joint_head(self, buf):
        """Read the joint's first ``len(buf)`` bytes (at most ``joint_len``) from flash
        into ``buf``."""
        self.bdev.readblocks(self._joint // self.block_size, buf, 0)

    def _program_ahead(self):
        bs = self.block_size
        blk = self._ahead_end // bs
        if self._ahead_end >= self._aerased:
            u = self._erase(blk, (self.image_len + bs - 1) // bs)
            self._aerased = (blk + u) * bs
        n = self._afill
        self._program_raw(blk, self._ablk, n)
        self._ahead_end += n
        self._afill = 0
        cb = self.on_ahead
        if cb is not None:
            base = self._ablk * bs
            data = self._blk[self._ablk] if n == bs else self._mv[base : base + n]
            if cb(blk, self._block_crc(self._ablk, data, n)):
                self._ahead_logged = True

    def shift_ahead(self, delta):
        """The bytes written ahead of the hole sit ``delta`` bytes too far on (negative:
        too early): the lost record's header claimed ``delta`` bytes more than it held
        (issue 4 case 1), which only showed when the response ended ``delta`` bytes
        past (before) where it should. Move them to their place inside the slot, block
        by block with single-block erases (upwards when moving down, downwards when
        moving up; the ring's ahead block is the scratch buffer), and re-journal them.
        Each block's entry is dropped (``on_forget``) just before its erase, and the
        next block's before the moved one is journalled: a power cut mid-move leaves
        the blocks moved and those not yet moved (still at their old place) as two runs
        with a torn block between, which the resume keeps and checks like any runs
        (before, the move dropped every entry first and a cut lost the whole run). The
        old run's blocks outside the new place are forgotten before the last block
        moves. The hole then ends at the first block
        boundary at or after its new start; the bytes ahead that fall in the block it
        ends in wait at that block's start in flash (copied there, unless the move was
        up by less than a block: then they are there already), up to ``fill_end``, and
        ``write()`` takes them. The last partial block: moving down, it stays in the
        ring (``park_tail()`` parks it); moving up, it goes to its new place first and
        is journalled there at once (parked, or the image's last block), so that a
        power cut in the rest of the move keeps it.

        With later holes (``holes_after``), only the current run moves: the bytes up to
        the next hole, whose partial last block is parked in flash again at its new
        place (the next hole then begins where they end; the runs after it are checked
        and moved when their turn comes). Moving up must leave the next hole's first
        block ahead alone. Moved up into the next run, the bytes that pass its start
        either repeat it (the rest of a move a power cut stopped): the two runs join;
        or they do not (that run is off too): the run stops one byte short of it, so
        the two stay apart. The later runs' journal entries stay. Moving up, the
        tail is parked at its new place only after the block below it (not moved yet)
        lost its entry: a power cut never joins moved and unmoved bytes in one run.

        Each block moved costs one erase and its programs (a recovery path: a few
        memoryview slices are allocated). Returns True when moved; False, nothing
        changed, when it cannot be done (no hole, a block still parked to read back,
        the ring's ahead block in use with later holes, or the new place reaches the
        bytes held before the hole, the next run when moving down, or past the image).
        A run with no
        whole block at its new place is kept only when it ends the image: it becomes
        the joint alone."""
        bs = self.block_size
        h = self._hole
        if not h or self._reload or not delta or self.nblocks < 2:
            return False
        end = self._ahead_end + self._afill  # the bytes ahead: [h, end)
        parked = self._holes == [(end, end)]  # park_tail()'s tail, already in flash
        nxt = None  # with later holes: (end of this run, start of the next run)
        if self._holes and not parked:
            nxt = self._holes[0]
            if self._afill or nxt[1] <= nxt[0]:
                return False
            end = nxt[0]
        h0 = h
        hs = self._done + self._fill  # where the hole begins
        if delta > 0 and h - delta <= hs:
            # Moved down onto the bytes held (the rest of a move that a power cut
            # stopped, or a lie of more than the hole): those repeat them. The run's
            # bytes that go from the first block boundary after them on are kept.
            h = hs // bs * bs + bs + delta
            if h >= end:
                return False
        new_h = (h - delta + bs - 1) // bs * bs  # the first whole block at its new place
        new_end = end - delta
        if new_end > self.image_len:
            new_end = self.image_len
        if new_h <= self._done + self._fill:
            return False
        # No whole block at the new place: only the image's last bytes can be kept, as
        # the joint at the start of their block (write() takes them there).
        tail_only = new_h >= new_end
        if tail_only and (
            nxt is not None or new_end != self.image_len or h - delta < self._done + self._fill
        ):
            return False
        if nxt is not None and new_end > nxt[1]:
            if delta > 0:
                return False
            # Moved up into the next run. When what runs past its start repeats its
            # bytes (the rest of a move that a power cut stopped, already in place),
            # the two runs join. Otherwise the next run is off as well (checked when
            # its turn comes): this one stops a byte short of it, a hole of its own,
            # so that the two stay apart (joined, they passed for one run in place).
            if self._same(nxt[1], nxt[1] + delta, new_end - nxt[1]):
                new_end = nxt[1]
            else:
                new_end = nxt[1] - 1
                if new_end <= new_h:
                    return False
        last = new_end // bs * bs  # whole blocks [new_h, last), the tail [last, new_end)
        if nxt is None:
            self._holes = []
        # The journal's entries go block by block, each just before its block is erased:
        # a power cut mid-move leaves the blocks moved and those not moved yet (at their
        # old place, checked again like any run) with their entries, one torn block
        # between them. The old run's blocks outside the new one go just before the last
        # block moves (its sources are theirs), so moved and stale never join in one run.
        self._lead = 0
        self._set_joint(0)  # the old place's joint (gap's lead) goes, before the run's
        if self._parked:
            self._drop_parked(h0, end)  # the run's parked partial block moves
        self._stale = (h0 // bs, new_h // bs, (last if last > h0 else h0) // bs, end // bs)
        if delta > 0 and nxt is None and end % bs and end // bs > last // bs:
            # The old run's last block, partial (the image's last: it has an entry),
            # lies past the new place: it keeps its bytes until the image reaches it,
            # and its entry still describes them (a power cut before then keeps them as
            # a run, checked like any). The entry goes just before the block in front
            # of it joins the entries in order, where it would pass for the image's.
            self._stale_last = end // bs
        # (_ahead_logged stays: the later runs' entries, and this run's not moved yet,
        # are still in the journal; a move that journals no block must not hide them
        # from a drop later)
        k = self._ablk
        if self._afill:  # the ring's ahead block becomes the scratch: park its bytes
            blk = self._ahead_end // bs
            if self._ahead_end >= self._aerased:
                self._erase_one(blk)
            self._program_raw(blk, k, self._afill)
            self._afill = 0
        if tail_only:
            j = h - delta
            self._copy_joint(h, j, new_end, k)
            self._drop_stale()
            self._set_joint(j)
            self._holes = []
            e = self.image_len
            self._hole = self._astart = self._ahead_end = self._apos = self._aerased = e
            return True
        tail = new_end - last
        # The bytes that now go from j to new_h (the start of the first block ahead,
        # its block starting in the hole) are kept as the joint: they wait at the start
        # of their own block, where write() takes them (_take_joint).
        j = h - delta
        keep = j % bs and j >= self._done + self._fill
        if keep and delta > 0:
            # Moving down, they are at the start of block h, which the first block moved
            # overwrites: copy them first.
            self._copy_joint(h, j, new_h, k)
        elif keep and -delta < bs:
            # Moving up by less than a block, they are in place already, in a block no
            # move touches: journalled now, so that a power cut in the move keeps them
            # (the resume takes a joint with torn blocks between it and the runs).
            self._set_joint(j)
        if delta > 0:
            d = new_h
            while d < last:
                if d + bs >= last:
                    self._drop_stale()
                self._move_block(d, d + delta, bs, k, d + bs)
                d += bs
            if tail:
                self._read_span(last + delta, tail, k)
        else:
            if tail:  # read before the blocks below are moved over its bytes; kept in
                # flash meanwhile (its block is above every block moved)
                self._read_span(last + delta, tail, k)
                self._erase_one(last // bs)
                self._program_raw(last // bs, k, tail)
                # Journalled at its new place (parked, or the image's last block), so
                # that a power cut mid-move keeps it. The block below, not moved yet,
                # is forgotten first (in the same journal step when it can): journalled
                # next to it, it would join the moved tail in one run after a power
                # cut, and one check would move both by the same shift.
                t = last // bs
                lo = t - 1 if last - bs >= h0 else t
                if new_end < self.image_len:
                    if lo < t and self.on_forget is not None:
                        self.on_forget(lo, t)
                    self._parked_at(t, k, tail)
                else:
                    self._journal_ahead(t, crc32(self._mv[k * bs : k * bs + tail]), lo, t)
            d = last - bs
            while d >= new_h:
                if d == new_h:
                    self._drop_stale()
                self._move_block(d, d + delta, bs, k, d - bs)
                d -= bs
            if keep and -delta > bs:
                # Moving up by more than a block, they are at the start of block h,
                # which the hole's bytes pass through first: copy them. (By less, block
                # h is their own block: they are in place.)
                self._copy_joint(h, j, new_h, k)
        self._drop_stale()
        if keep:
            self._set_joint(j)
        self._hole = new_h
        if nxt is not None:
            if tail and delta > 0:  # parked again at its new place (read into ring k)
                self._erase_one(last // bs)
                self._program_raw(last // bs, k, tail)
                self._parked_at(last // bs, k, tail)
            if new_end < nxt[1]:
                self._holes[0] = (new_end, nxt[1])
            else:
                self._holes.pop(0)
            return True
        self._astart = new_h
        if tail and delta < 0:
            # The tail is in flash at its new place already: the image's last block, or
            # parked as by park_tail() (nothing more is written ahead of this hole).
            self._ahead_end = new_end
            self._afill = 0
            self._aerased = last + bs
            if new_end < self.image_len:
                self._holes = [(new_end, new_end)]
                self._apos = -1
            else:
                self._apos = new_end
            return True
        self._ahead_end = last if last > new_h else new_h
        self._afill = tail if last >= new_h else 0
        self._apos = new_end
        self._aerased = self._ahead_end  # the block after the whole ones: erase it first
        return True

    def _drop_stale_last(self, blk):
        # Block blk is about to be reported in order: the image's last block, whose
        # entry a move down left describing its old bytes, loses it first when blk is
        # the block in front of it (else the entries in order would reach it).
        b = self._stale_last
        if blk + 1 >= b:
            self._stale_last = 0
            if self.on_forget is not None:
                self.on_forget(b, b + 1)

    def _same(self, a, b, n):
        # True when the slot's n bytes at payload offsets a and b are equal (64 B at a
        # time: a recovery path).
        x = bytearray(64)
        y = bytearray(64)
        while n > 0:
            if n < 64:
                x = bytearray(n)
                y = bytearray(n)
            self.read_at(a, x)
            self.read_at(b, y)
            if x != y:
                return False
            a += len(x)
            b += len(x)
            n -= len(x)
        return True

    def _copy_joint(self, h, j, new_h, k):
        # Program the bytes at h that now go from j to new_h (or to the image's end, all
        # in j's block) at the start of block j (in
        # the hole, below every block moved; ring block k is the scratch). Not
        # journalled: a power cut loses them.
        n = new_h - j
        self._read_span(h, n, k)
        self._erase_one(j // self.block_size)
        self._program_raw(j // self.block_size, k, n)

    def _erase_one(self, blk):
        # Erase one block of a move (or a joint's), its journal entry (if any)
        # forgotten first. Programmed next: no longer erased ahead for write().
        if self.on_forget is not None:
            self.on_forget(blk, blk + 1)
        if self._erased_to > blk * self.block_size:
            self._erased_to = blk * self.block_size
        if blk * self.block_size == self._done:
            self._wprog = 0  # (the block being written: its parked pages go)
        self.bdev.ioctl(_IOCTL_BLOCK_ERASE, blk)
        self.erases += 1

    def _drop_stale(self):
        # Forget the entries of the moved run's old blocks outside its new place
        # (shift_ahead's _stale: [a, b) below the new start, [c, d) past the new end).
        t = self._stale
        if t is None:
            return
        self._stale = None
        a, b, c, d = t
        if self.on_forget is not None:
            if a < b:
                self.on_forget(a, b)
            if c < d:
                self.on_forget(c, d)

    def park_tail(self):
        """The response ended with a hole open and the last bytes ahead (less than a
        block) in the ring, which the hole's bytes will overwrite: program them into
        their block as far as they go (read back and programmed whole once the image
        reaches them, like a block parked before a later hole), and journalled
        (``on_park``). Nothing more can be written ahead of this
        hole afterwards. With ``MAX_HOLES`` holes open already they are dropped instead
        (fetched again after the last run; left in the ring, they kept ``find_ahead``
        from checking any run). Returns the bytes parked."""
        self._lead = 0  # a lead still short of its block: dropped
        n = self._afill
        if not self._hole or not n:
            return 0
        if len(self._holes) >= MAX_HOLES:
            self._afill = 0
            self._apos = -1
            return 0
        bs = self.block_size
        blk = self._ahead_end // bs
        if self._ahead_end >= self._aerased:
            u = self._erase(blk, (self.image_len + bs - 1) // bs)
            self._aerased = (blk + u) * bs
        self._program_raw(blk, self._ablk, n)
        self._parked_at(blk, self._ablk, n)
        self._afill = 0
        t = self._ahead_end + n
        self._holes.append((t, t))  # an empty hole: only the parked block to reload
        self._ahead_end = t
        self._apos = -1  # write_ahead() refuses from now on
        return n

    def ahead_run_end(self):
        """Payload offset where the first run of bytes written ahead of the hole ends in
        flash (before a later hole, or all of them; 0 without a hole)."""
        if not self._hole:
            return 0
        return self._holes[0][0] if self._holes else self._ahead_end

    def find_ahead(self, want, lo, hi):
        """Where ``want`` (bytes, at most half a block) lies in the slot between payload
        offsets ``lo`` and ``hi`` (clipped to the first run of bytes written ahead of
        the hole): the offset when it is found exactly once, else None (not there, or
        there twice: a run of equal bytes says nothing). Reads through the ring's ahead
        block, which must be empty (``park_tail()``). Allocates a memoryview slice per
        block read (a recovery path, not the download loop)."""
        if not self._hole or self._afill:
            return None
        if lo < self._hole:
            lo = self._hole
        end = self.ahead_run_end()
        if hi > end:
            hi = end
        bs = self.block_size
        wl = len(want)
        base = self._ablk * bs
        buf = self._buf
        found = None
        pos = lo
        while pos + wl <= hi:
            n = hi - pos
            if n > bs:
                n = bs
            self.read_at(pos, self._mv[base : base + n])
            j = buf.find(want, base, base + n)
            while j >= 0:
                if found is not None:
                    return None
                found = pos + j - base
                j = buf.find(want, j + 1, base + n)
            pos += n - wl + 1
        return found

    def read_at(self, off, buf):
        """Read ``len(buf)`` bytes (at most one block) of the slot at payload offset
        ``off`` into ``buf`` (a bytearray or a memoryview of one). Allocates a memoryview
        and up to two slices."""
        bs = self.block_size
        n = len(buf)
        a = bs - off % bs
        if a > n:
            a = n
        mv = memoryview(buf)
        self.bdev.readblocks(off // bs, mv[:a], off % bs)
        if a < n:
            self.bdev.readblocks(off // bs + 1, mv[a:], 0)

    def _read_span(self, src, n, k):
        # Read n bytes at payload offset src into ring block k.
        base = k * self.block_size
        self.read_at(src, self._mv[base : base + n])

    def _move_block(self, dst, src, n, k, nxt):
        # Block at payload offset dst gets the n bytes at src (ring block k carries
        # them), erased and programmed alone, and journalled as a block ahead - after
        # the entry of the block at nxt, the next to move (not moved yet: its entry says
        # where it was), is dropped, so that moved and not moved never join in one run.
        self._read_span(src, n, k)
        bs = self.block_size
        blk = dst // bs
        self._erase_one(blk)
        self._program_raw(blk, k, n)
        lo = nxt // bs if nxt >= 0 else blk
        self._journal_ahead(blk, self._block_crc(k, self._blk[k], n), lo, lo + (nxt >= 0))

    def _journal_ahead(self, blk, crc, lo, hi):
        # Journal the entry of block blk (written ahead, CRC-32 crc) and drop those of
        # blocks lo..hi-1 (none when lo == hi) in one step when the journal can
        # (on_moved: a power cut between two steps lost both, two blocks fetched again
        # instead of one), else drop, then put.
        if self.on_moved is not None:
            ok = self.on_moved(blk, crc, lo, hi)
        else:
            if lo < hi and self.on_forget is not None:
                self.on_forget(lo, hi)
            ok = self.on_ahead is not None and self.on_ahead(blk, crc)
        if ok:
            self._ahead_logged = True

    def drop_run(self):
        """Forget the bytes written ahead of the current hole up to the next hole
        (their place could not be confirmed): the hole then ends where the run after
        that hole begins. Without a later hole, ``drop_ahead()``. The journal's
        entries of this run go (``on_forget``); the later runs' stay."""
        if not self._holes or self._holes[0][1] <= self._holes[0][0]:
            self._forget_hole()
            return
        nxt = self._holes.pop(0)[1]
        self._lead = 0
        self._set_joint(0)  # first: a joint must not outlive the run after it
        if self._parked:
            self._drop_parked(0, nxt)
        if self.on_forget is not None:
            self.on_forget(self._hole // self.block_size, nxt // self.block_size)
        self._hole = nxt

    def drop_ahead(self):
        """Forget the hole and the blocks written ahead (their positions could not be
        confirmed): they are erased again when the image reaches them."""
        self._forget_hole()

    def _forget_hole(self):
        # Drop the hole; a journal that holds entries for the blocks ahead drops them
        # first (on_erase of the hole's end: entries from there on go), the joint
        # before them (a joint must not outlive the runs after it).
        self._lead = 0
        self._set_joint(0)
        if self._parked:
            self._drop_parked(0, self.capacity)
        if self._hole and self._ahead_logged and self.on_erase is not None:
            self.on_erase(self._hole // self.block_size)
        self._hole = 0
        self._holes = []
        self._reload = 0
        self._ahead_logged = False

    def resume_ahead(self, runs, joints=(), parks=()):
        """After ``resume()``: runs of blocks were written ahead of holes and journalled
        (``runs``: a list of ``(first, [crc, ...])`` in index order, as ``on_ahead``
        reported them). Keep the blocks whose CRCs match the slot as the bytes ahead
        of holes: the first hole from ``offset`` on, one between each two runs kept (at
        most ``MAX_HOLES``); a block that differs (torn) is a hole of its own. Their
        positions are unconfirmed: the owner checks them. Entries that describe nothing
        kept are dropped (``on_forget``).

        ``joints``: ``(j, crc)`` pairs as ``on_joint`` reported them, the latest last.
        The latest whose bytes in flash still match ``crc`` and that ends where the
        first run kept begins (or, with no run kept, anywhere after ``offset``: a joint
        alone, the hole then ends at its block's end) is the joint again, so the hole's
        bytes are needed up to ``j`` only. One that ends before the first run kept
        begins (the blocks between torn in a move) is kept too: those blocks are then
        a hole of their own after it (``hole_end`` is the joint's block end, and
        ``ahead_run_end()`` the same).

        ``parks``: ``(t, crc)`` pairs as ``on_park`` reported them, the latest last.
        One whose bytes (from its block's start up to ``t``) still match ``crc`` in
        flash ends the run kept that ends where its block begins, or is a run of its
        own between them (past ``offset``, in a block no run kept covers). The latest
        reported with ``IN_ORDER`` whose block is the one ``offset`` is in and whose
        bytes match is taken back into the buffer (``offset`` moves past them). Those
        not taken are forgotten (``on_park(t, None)``), as the joints are.

        Returns the bytes kept ahead, the joint's and the parked ones included (0: no
        hole)."""
        bs = self.block_size
        b = self._done
        wp = 0
        ahead = []
        for t, crc in parks:
            if t & IN_ORDER:
                t -= IN_ORDER
                if (
                    b < t < b + bs
                    and t < self.image_len
                    and self._start_crc(b // bs, t - b) == crc
                ):
                    wp = t
            else:
                ahead.append((t, crc))
        total = self._resume_ahead(runs, joints, ahead)
        if self.nblocks < 2 or self._fill:
            wp = 0
        if self.on_park is not None:
            # The parks not taken describe nothing kept, and a later resume would not
            # take them either: forgotten, like the joints (their entries are few).
            keep = [wp | IN_ORDER] if wp else []
            keep += self._parked
            for t, _crc in parks:
                if t not in keep:
                    self.on_park(t, None)
        if wp:
            # (ring block 0; the scratch block for the checks ahead is the next one)
            self.bdev.readblocks(b // bs, self._mv[: wp - b], 0)
            self._head = 0
            self._fill = wp - b
            self._ablk = 1
            self._wpark = wp
        return total

    def _resume_ahead(self, runs, joints, parks):
        bs = self.block_size
        kept = []
        total = 0
        for first, crcs in runs:
            i = 0  # entries of this run looked at
            while i < len(crcs):
                b1 = (first + i) * bs
                end = b1
                j = len(crcs)  # where the entries to drop end: all of them, unless...
                if (
                    not self._fill
                    and (kept[-1][1] if kept else self._done) < b1 < self.image_len
                    and len(kept) <= MAX_HOLES
                ):
                    end = self._crc_run(b1, crcs[i:] if i else crcs, None)
                    # ... a block differs (a torn program, or its entry torn): it goes
                    # alone, and the blocks after it are checked on their own.
                    j = i + (end - b1 + bs - 1) // bs + 1
                if end > b1:
                    kept.append((b1, end))
                    total += end - b1
                    i += (end - b1 + bs - 1) // bs
                if i < len(crcs) and self.on_forget is not None:
                    self.on_forget(first + i, first + j)
                i = j
        parked = []
        if self._fill:
            parks = ()
        for i in range(len(parks) - 1, -1, -1):
            t, crc = parks[i]
            b = t // bs * bs
            if not 0 < t < self.image_len or not t % bs or b <= self._done:
                continue
            x = 0
            while x < len(kept) and kept[x][1] < b:
                x += 1
            if x < len(kept) and kept[x][0] <= b:
                if kept[x][1] != b:
                    continue  # in a block a run kept (or a later park) covers
            elif len(kept) > MAX_HOLES:
                continue
            if self._start_crc(b // bs, t - b) != crc:
                continue
            if x < len(kept) and kept[x][1] == b:
                kept[x] = (kept[x][0], t)
            else:
                kept.insert(x, (b, t))
            total += t - b
            parked.append(t)
        self._parked = parked
        jt = 0
        if self._fill:
            joints = ()
        for i in range(len(joints) - 1, -1, -1):
            j, crc = joints[i]
            if not 0 < j < self.image_len or not j % bs or j // bs * bs < self._done:
                continue
            e = (j // bs + 1) * bs
            if e > self.image_len:
                e = self.image_len
            if (
                not kept or kept[0][0] == e or (kept[0][0] > e and len(kept) <= MAX_HOLES)
            ) and self._flash_crc(j) == crc:
                jt = j
                break
        if self.on_joint is not None:
            # The others describe nothing kept: forgotten, so that none is taken later
            # once the runs it stood before have moved or gone.
            for j, crc in joints:
                if j != jt:
                    self.on_joint(j, None)
        if not kept:
            if not jt:
                return 0
            # The joint alone: the hole ends at its block's end, nothing after it.
            self._hole = self._astart = self._ahead_end = self._apos = self._aerased = e
            self._holes = []
            self._afill = 0
            self._joint = jt
            return self._joint_len(jt)
        self._joint = jt
        self._hole = kept[0][0]
        self._holes = [(kept[i][1], kept[i + 1][0]) for i in range(len(kept) - 1)]
        if jt:
            total += self._joint_len(jt)
            if e < self._hole:
                # Blocks between the joint and the first run kept are missing (torn in
                # a move): a hole of their own after it, the joint's block its run.
                self._holes.insert(0, (e, self._hole))
                self._hole = e
        end = kept[-1][1]
        self._ahead_end = end
        self._apos = end
        if end % bs and end < self.image_len:
            # The last run ends in a parked block, as after park_tail().
            self._holes.append((end, end))
            self._apos = -1
        self._afill = 0
        self._aerased = (end + bs - 1) // bs * bs
        self._ahead_logged = True
        return total

    def _absorb(self, k):
        # The current hole is filled: hash the blocks written ahead from flash (ring
        # block k, just programmed, is the scratch buffer), report them to on_block, move
        # past them - up to the next hole, whose parked partial block is read back into
        # the ring after _flush_full's loop (_reload).
        bs = self.block_size
        view = self._blk[k]
        base = k * bs
        nxt = self._holes.pop(0) if self._holes else None
        end = nxt[0] // bs * bs if nxt else self._ahead_end
        if end > self._done:
            self.absorbed_at = self._done  # from here on the image came from ahead
        while self._done < end:
            n = end - self._done
            if n > bs:
                n = bs
            blk = self._done // bs
            self.bdev.readblocks(blk, view, 0)
            data = view if n == bs else self._mv[base : base + n]
            self._sha.update(data)
            self.rehashed += n
            self._done += n
            if self._stale_last:
                self._drop_stale_last(blk)
            if self.on_block is not None:
                self.on_block(blk, self._block_crc(k, data, n))
        if nxt:
            self._reload = nxt[0]
            if nxt[0] in self._parked:  # its bytes are the buffer's now: entry forgotten
                self._drop_parked(nxt[0] - 1, nxt[0])
            self._erased_to = self._done  # the parked block is programmed: erase it again
            if nxt[1] > nxt[0]:
                self._hole = nxt[1]
                return
            # park_tail()'s empty hole: the image goes on from the parked bytes
            self._hole = 0
            self._ahead_logged = False
            return
        self._hole = 0
        self._ahead_logged = False
        if self._aerased > self._done:
            self._erased_to = self._aerased

    def _take_joint(self):
        # The write position reached the joint: the rest of its block is in flash at
        # the block's start (a lead, or shift_ahead); read it into the ring behind the
        # bytes there and program the block whole (erased first: it holds those bytes).
        j = self._joint
        self._joint = 0
        bs = self.block_size
        n = self._joint_len(j)
        w = self._head * bs + self._fill
        if w >= self._cap:
            w -= self._cap
        self.bdev.readblocks(j // bs, self._mv[w : w + n], 0)
        if self._erased_to > j // bs * bs:
            self._erased_to = j // bs * bs
        self._fill += n
        if not self.defer:
            self._flush_full(self.nblocks)

    def _reload_parked(self):
        # The write position reached a hole whose block starts with bytes parked in
        # flash: take them back into the ring (the block is erased before it is
        # programmed whole). Allocates one memoryview slice (once per hole).
        p = self._reload
        self._reload = 0
        n = p - self._done
        if n:
            self.bdev.readblocks(self._done // self.block_size, self._mv[0:n], 0)
        self._head = 0
        self._fill = n
        self._ablk = 1  # ring block 0 holds them: the next is free (shift_ahead's scratch)

    def _block_crc(self, k, data, n):
        # The journal's CRC-32 of ring block k holding n image bytes (``data``).
        if self.crc_span and n == self.block_size:
            return crc32(self._tails[k], crc32(self._heads[k]))
        return crc32(data)

    def rewind(self, offset, keep_hole=False):
        """Drop everything after ``offset`` bytes, rounded down to a block boundary
        (bytes of a torn or untrusted attempt); at or past ``offset`` already: nothing
        changes. Returns the new offset. When the new offset is below what was
        programmed, the SHA-256 is rebuilt by hashing the kept prefix again from flash
        (MicroPython's hash objects cannot be copied). A hole and the blocks written
        ahead of it are dropped too, unless ``keep_hole`` (the bytes ahead are still the
        file's, e.g. an HTTP error page came instead of the hole)."""
        if not keep_hole:
            self._forget_hole()
        if offset >= self._done + self._fill:
            return self._done + self._fill
        bs = self.block_size
        keep = offset // bs * bs
        if self._wpark > keep:  # the bytes it parked are dropped
            self._drop_wpark()
        if self._wprog:  # their pages are programmed: erase the block again
            self._wprog = 0
            if self._erased_to > self._done:
                self._erased_to = self._done
        if keep > self._done:
            keep = self._done
        if keep <= self.absorbed_at:
            self.absorbed_at = 0
        if self.on_erase is not None and keep // bs < self.journaled:
            self.on_erase(keep // bs)  # the journal forgets the blocks dropped, now
        self._fill = 0
        self._head = 0
        if keep < self._done:
            self._erased_to = 0  # programmed blocks lie ahead now: erase as we go
            self._sha = hashlib.sha256()
            self._done = 0
            self._hash_flash(keep, self._sha)
            self.rehashed += keep
            self._done = keep
        return keep

    def resume(self, crcs):
        """After ``begin()``: keep the prefix of the slot whose blocks match ``crcs``
        (CRC-32 per block, in order, as ``on_block`` reported them), hashing it into the
        rolling SHA-256 as it is checked. Stops at the first block that differs (a torn
        program or erase). Returns the bytes kept (a multiple of the block size, or the
        whole image)."""
        self._forget_hole()
        self.absorbed_at = 0
        self._fill = 0
        self._head = 0
        self._erased_to = 0
        self._wprog = 0
        self._stale_last = 0
        kept = self._crc_run(0, crcs, self._sha)
        self._done = kept
        self.rehashed += kept
        return kept

    def _crc_run(self, start, crcs, sha):
        # From payload offset ``start`` (a block boundary): the blocks in the slot whose
        # journal CRCs match ``crcs`` in order, stopping at the first that differs (a
        # torn program or erase), hashed into ``sha`` unless None. Returns the offset
        # where the run ends.
        bs = self.block_size
        view = self._blk[0]
        end = start
        for c in crcs:
            if end >= self.image_len:
                break
            n = self.image_len - end
            if n > bs:
                n = bs
            self.bdev.readblocks(end // bs, view, 0)
            data = view if n == bs else self._mv[:n]
            if self._block_crc(0, data, n) != c:
                break
            if sha is not None:
                sha.update(data)
            end += n
        return end

    def _hash_flash(self, n, sha):
        bs = self.block_size
        view = self._blk[0]
        blk = 0
        while n > 0:
            self.bdev.readblocks(blk, view, 0)
            k = bs if n >= bs else n
            sha.update(view if k == bs else self._mv[:k])
            n -= k
            blk += 1

    def copy_tail(self, dst, k):
        """Copy the last ``k`` accepted bytes (already in flash, buffered, or both) into
        ``dst[:k]``; ``k`` at most ``offset``. Allocates (resumes only)."""
        off = self.offset - k
        bs = self.block_size
        j = 0
        if off < self._done:  # the part already programmed: read it back
            fk = self._done - off
            if fk > k:
                fk = k
            tmp = bytearray(fk)
            self.bdev.readblocks(off // bs, tmp, off % bs)
            dst[:fk] = tmp
            j = fk
        b = self._head * bs + off + j - self._done
        while j < k:
            if b >= self._cap:
                b -= self._cap
            dst[j] = self._buf[b]
            b += 1
            j += 1

    def finish(self):
        """Program what is buffered, the last partial block padded, and return the
        rolling SHA-256 (32 bytes) of the whole image. Raises ``ImageError`` (status 3)
        when fewer than ``image_len`` bytes were written."""
        if self.offset != self.image_len:
            raise ImageError("short image: %d of %d B" % (self.offset, self.image_len), 3)
        self._flush_full(self.nblocks)
        if self._fill:
            self._program_block(self._head, self._fill)
            self._fill = 0
            self._head = 0
        return self._sha.digest()

    def readback_digest(self):
        """Read the whole image back from the slot and return its SHA-256 (32 bytes).
        Uses the writer's buffer; allocates nothing per block."""
        sha = hashlib.sha256()
        self._hash_flash(self.image_len, sha)
        return sha.digest()
