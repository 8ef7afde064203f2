"""The rmota image header, format version 1 (DESIGN.md section 5).

An rmota image is a 64-byte header followed by the payload; ``<size>`` in
``+RMFWNOTIFY`` is the whole image. All integers little-endian::

    offset size field
     0     4    magic b"RMOT"
     4     1    format version (1)
     5     1    flags: bit 0 payload compressed, bit 1 Ed25519 signature follows
     6     2    header length (64, or 128 with a signature)
     8     4    payload length on the wire (bytes)
    12     4    image length in the slot (bytes)
    16     4    image version number (monotonic)
    20    12    board id, ASCII, NUL-padded
    32    32    SHA-256 of the image as it sits in the slot

Usage::

    hdr = ImageHeader.parse(first_64_bytes)
    hdr.check(board_id=b"unix", slot_size=2 * 1024 * 1024, running_version=3, total_size=n)
"""

import struct

from .errors import ImageError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


MAGIC = b"RMOT"
FORMAT_VERSION = const(1)
HEADER_SIZE = const(64)
SIGNED_HEADER_SIZE = const(128)
FLAG_COMPRESSED = const(1)
FLAG_SIGNED = const(2)
_KNOWN_FLAGS = const(3)
_FMT = "<4sBBHIII12s32s"


class ImageHeader:
    """A parsed image header. Fields: ``version`` (format), ``flags``, ``header_len``,
    ``payload_len``, ``image_len``, ``image_version`` (ints), ``board_id`` (bytes, NULs
    stripped), ``sha256`` (32 bytes)."""

    def __init__(self, flags, header_len, payload_len, image_len, image_version, board_id, sha256):
        self.version = FORMAT_VERSION
        self.flags = flags
        self.header_len = header_len
        self.payload_len = payload_len
        self.image_len = image_len
        self.image_version = image_version
        self.board_id = board_id
        self.sha256 = sha256

    @classmethod
    def parse(cls, buf):
        """Parse the first 64 bytes of ``buf`` (bytes-like, at least 64 bytes).

        Raises ``ImageError`` (status 5) on wrong magic or an unknown format version.
        Flags and lengths are checked by ``check()``."""
        if len(buf) < HEADER_SIZE:
            raise ImageError("image shorter than its header")
        magic, ver, flags, hlen, plen, ilen, iver, board, digest = struct.unpack_from(_FMT, buf, 0)
        if magic != MAGIC:
            raise ImageError("not an rmota image (bad magic)")
        if ver != FORMAT_VERSION:
            raise ImageError("image format %d unsupported" % ver)
        n = board.find(b"\x00")
        if n >= 0:
            board = board[:n]
        return cls(flags, hlen, plen, ilen, iver, bytes(board), bytes(digest))

    def check(
        self, board_id, slot_size, running_version=None, total_size=None, allow_downgrade=False
    ):
        """Refuse an image before anything is erased. Raises ``ImageError`` with status 5
        (rejected) and a short reason: unsupported flags (compression, signature are
        not implemented yet), a header length that does not fit the flags, a payload
        length that disagrees with ``total_size`` (the notification's ``<size>``, bytes)
        or with the image length, a board id other than ``board_id``, an image larger
        than ``slot_size`` bytes, or a version equal to (or, unless ``allow_downgrade``,
        lower than) ``running_version``."""
        if self.flags & ~_KNOWN_FLAGS:
            raise ImageError("unknown image flags 0x%02x" % self.flags)
        if self.flags & FLAG_COMPRESSED:
            raise ImageError("compressed images not supported")
        if self.flags & FLAG_SIGNED:
            raise ImageError("signed images not supported")
        if self.header_len != HEADER_SIZE:
            raise ImageError("bad header length %d" % self.header_len)
        if self.payload_len != self.image_len:
            raise ImageError("payload and image length differ")
        if total_size is not None and total_size != self.header_len + self.payload_len:
            raise ImageError("size %d disagrees with header" % total_size)
        if self.board_id != board_id:
            raise ImageError("image for board %s" % _printable(self.board_id))
        if self.image_len == 0:
            raise ImageError("empty image")
        if self.image_len > slot_size:
            raise ImageError("image %d B > slot %d B" % (self.image_len, slot_size))
        if running_version is not None:
            if self.image_version == running_version:
                raise ImageError("version %d already running" % self.image_version)
            if self.image_version < running_version and not allow_downgrade:
                raise ImageError("downgrade %d < %d" % (self.image_version, running_version))


def _printable(b):
    """``b`` as text when it is printable ASCII, else as hex (never raises)."""
    for c in b:
        if c < 32 or c > 126:
            return "0x" + "".join("%02x" % c for c in b)
    return b.decode()


def build_header(payload, board_id, image_version, flags=0):
    """Build a 64-byte version-1 header for ``payload`` (bytes-like, uncompressed,
    unsigned). Used by the host tools and tests; ``board_id`` is at most 12 ASCII bytes."""
    import hashlib

    if len(board_id) > 12:
        raise ValueError("board id longer than 12 bytes")
    digest = hashlib.sha256(payload).digest()
    n = len(payload)
    return struct.pack(
        _FMT, MAGIC, FORMAT_VERSION, flags, HEADER_SIZE, n, n, image_version, board_id, digest
    )
