"""Build and inspect rmota images (DESIGN.md section 5) on the host (CPython).

An rmota image is the 64-byte version-1 header from ``rmota.image.build_header`` followed by
the payload, uncompressed and unsigned (flags 0). The header format lives in
``lib/rmota/image.py`` only; this tool wraps it.

Usage::

    python tools/mkimage.py IN.bin OUT.img --board unix --version 3
    python tools/mkimage.py --info OUT.img        # exit 1 if the payload digest is wrong

    from mkimage import make_image
    img = make_image(open("fw.bin", "rb").read(), b"unix", 3)
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "lib"))

import argparse  # noqa: E402
import hashlib  # noqa: E402

from rmota.errors import ImageError  # noqa: E402
from rmota.image import HEADER_SIZE, MAGIC, ImageHeader, build_header  # noqa: E402

BOARD_ID_MAX = 12  # bytes, DESIGN.md section 5 (offset 20, NUL-padded)
U32_MAX = 0xFFFFFFFF


def check_board_id(board_id):
    """Validate a board id: ``bytes``/``bytearray``, 1..12 printable ASCII bytes, no NUL
    (it is NUL-padded in the header, so a NUL would be cut off on parse).

    Returns it as ``bytes``. Raises ``TypeError`` for a non-bytes value, ``ValueError``
    otherwise, with the reason."""
    if not isinstance(board_id, (bytes, bytearray)):
        raise TypeError("board id must be bytes, not %s" % type(board_id).__name__)
    board_id = bytes(board_id)
    if not board_id:
        raise ValueError("board id is empty")
    if len(board_id) > BOARD_ID_MAX:
        raise ValueError(
            "board id %r is %d bytes, at most %d fit the header"
            % (board_id, len(board_id), BOARD_ID_MAX)
        )
    if any(c < 0x21 or c > 0x7E for c in board_id):
        raise ValueError("board id %r must be printable ASCII without spaces" % board_id)
    return board_id


def check_version(version):
    """Validate an image version number: an ``int`` in 0..2**32-1 (u32 at header offset 16).

    Returns it. Raises ``TypeError`` for a non-int (``bool`` included), ``ValueError``
    when out of range."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError("version must be an int, not %s" % type(version).__name__)
    if not 0 <= version <= U32_MAX:
        raise ValueError("version %d outside 0..%d" % (version, U32_MAX))
    return version


def make_image(payload: bytes, board_id: bytes, version: int) -> bytes:
    """Wrap ``payload`` into an rmota image: 64-byte header + payload, flags 0.

    ``payload``: bytes-like, the binary as it must sit in the slot (at most 2**32-1 bytes;
    it may be empty, although the agent refuses an empty image). ``board_id``: 1..12
    ASCII bytes (see ``check_board_id``). ``version``: image version number, 0..2**32-1.
    Returns a new ``bytes`` of ``64 + len(payload)`` bytes (allocates one copy of the
    payload). Raises ``TypeError``/``ValueError`` for bad arguments."""
    board_id = check_board_id(board_id)
    version = check_version(version)
    payload = bytes(payload)
    if len(payload) > U32_MAX:
        raise ValueError("payload of %d bytes does not fit a u32 length" % len(payload))
    return build_header(payload, board_id, version) + payload


class ImageInfo:
    """What ``inspect_image`` found: ``header`` (``ImageHeader``), ``actual_payload_len``
    (bytes after the header in the file), ``actual_sha256`` (32 bytes, over those bytes),
    ``ok`` (bool) and ``problems`` (list of short strings, empty when ``ok``)."""

    def __init__(self, header, actual_payload_len, actual_sha256, problems):
        self.header = header
        self.actual_payload_len = actual_payload_len
        self.actual_sha256 = actual_sha256
        self.problems = problems
        self.ok = not problems


def inspect_image(image: bytes) -> ImageInfo:
    """Parse the header of ``image`` (bytes-like, a whole image) and check the payload
    behind it: its length against the header's payload length, its SHA-256 against the
    header's digest (only meaningful for uncompressed images: flags bit 0 clear).

    Also lists what makes every agent refuse the image whatever board runs it
    (``ImageHeader.check``: flags, header length, lengths, an empty payload; a board id
    no ``mkimage`` could write). Returns an ``ImageInfo``; mismatches are listed in
    ``problems``, not raised. Raises ``rmota.errors.ImageError`` when the header itself
    cannot be parsed (short, bad magic, unknown format version)."""
    hdr = ImageHeader.parse(image)
    body = memoryview(image)[hdr.header_len :]
    digest = hashlib.sha256(body).digest()
    problems = []
    try:
        hdr.check(hdr.board_id, U32_MAX)  # (any board, any slot, any running version)
    except ImageError as e:
        problems.append("every agent refuses it: %s" % e.reason)
    try:
        check_board_id(hdr.board_id)
    except ValueError as e:
        problems.append("every agent refuses it: %s" % e)
    if len(body) != hdr.payload_len:
        problems.append("payload is %d bytes, header says %d" % (len(body), hdr.payload_len))
    if hdr.flags & 1:
        problems.append("payload is compressed: digest of the inflated image not checked")
    elif digest != hdr.sha256:
        problems.append("payload SHA-256 %s does not match the header" % digest.hex())
    return ImageInfo(hdr, len(body), digest, problems)


def format_info(info: ImageInfo) -> str:
    """Render an ``ImageInfo`` as the text ``--info`` prints (one field per line)."""
    h = info.header
    lines = [
        "magic          %r" % MAGIC,
        "format         %d" % h.version,
        "flags          0x%02x" % h.flags,
        "header length  %d" % h.header_len,
        "payload length %d" % h.payload_len,
        "image length   %d" % h.image_len,
        "version        %d" % h.image_version,
        "board          %s" % h.board_id.decode("ascii", "replace"),
        "sha256         %s" % h.sha256.hex(),
        "total size     %d" % (h.header_len + info.actual_payload_len),
    ]
    if info.ok:
        lines.append("payload sha256 OK")
    else:
        lines.extend("ERROR: " + p for p in info.problems)
    return "\n".join(lines)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SystemExit("mkimage: error: %s: no such file" % path)
    except OSError as e:
        raise SystemExit("mkimage: error: %s: %s" % (path, e.strerror or e))


def main(argv=None):
    """CLI entry point. Returns the exit status: 0 success, 1 a bad input file or digest
    mismatch (message on stderr); argument errors exit 2 through argparse."""
    ap = argparse.ArgumentParser(
        prog="mkimage", description="Wrap a binary into an rmota image (DESIGN.md section 5)."
    )
    ap.add_argument("input", nargs="?", help="payload binary (IN.bin)")
    ap.add_argument("output", nargs="?", help="image to write (OUT.img)")
    ap.add_argument("--board", help="board id, 1..12 ASCII bytes (e.g. unix)")
    ap.add_argument("--version", help="image version number, 0..4294967295")
    ap.add_argument("--info", metavar="IMG", help="print IMG's header and verify its payload")
    args = ap.parse_args(argv)

    if args.info is not None:
        if args.input or args.output or args.board or args.version:
            ap.error("--info takes no other arguments")
        image = _read(args.info)
        try:
            info = inspect_image(image)
        except ImageError as e:
            print("mkimage: error: %s: %s" % (args.info, e.reason), file=sys.stderr)
            return 1
        print(format_info(info))
        return 0 if info.ok else 1

    if not args.input or not args.output:
        ap.error("need IN.bin and OUT.img (or --info IMG)")
    if args.board is None or args.version is None:
        ap.error("--board and --version are required to build an image")
    v = args.version
    hexa = v[:2] in ("0x", "0X") and len(v) > 2
    digits = v[2:] if hexa else v[1:] if v[:1] == "-" else v
    ok = "0123456789abcdefABCDEF" if hexa else "0123456789"
    if not digits or not all(c in ok for c in digits):  # (no spaces, no 1_0)
        ap.error("--version %r is not a whole number (decimal, or hex with 0x)" % v)
    version = int(v, 16 if hexa else 10)
    try:
        board = check_board_id(args.board.encode("ascii"))
        check_version(version)
    except UnicodeEncodeError:
        ap.error("--board %r is not ASCII" % args.board)
    except ValueError as e:
        ap.error(str(e))
    payload = _read(args.input)
    if not payload:
        print(
            "mkimage: error: %s is empty: every agent refuses an empty image" % args.input,
            file=sys.stderr,
        )
        return 1
    image = make_image(payload, board, version)
    tmp = args.output + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(image)
        os.replace(tmp, args.output)
    except OSError as e:
        print("mkimage: error: %s: %s" % (args.output, e.strerror or e), file=sys.stderr)
        return 1
    print(
        "%s: %d bytes (header %d + payload %d), board %s, version %d, sha256 %s"
        % (
            args.output,
            len(image),
            HEADER_SIZE,
            len(payload),
            board.decode(),
            version,
            hashlib.sha256(payload).hexdigest(),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
