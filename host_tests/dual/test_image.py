"""Image header (DESIGN.md section 5): parse and refuse before anything is erased.
Runs under CPython (pytest) and MicroPython (host_tests/mp_run.py)."""

import unittest

from rmota.errors import ImageError
from rmota.image import HEADER_SIZE, ImageHeader, build_header


def _hdr(payload=b"0123456789ab", board=b"unix", version=7, flags=0):
    return bytearray(build_header(payload, board, version, flags))


class TestHeader(unittest.TestCase):
    def test_round_trip(self):
        h = ImageHeader.parse(_hdr())
        self.assertEqual(h.board_id, b"unix")
        self.assertEqual(h.image_len, 12)
        self.assertEqual(h.payload_len, 12)
        self.assertEqual(h.image_version, 7)
        self.assertEqual(h.header_len, HEADER_SIZE)
        self.assertEqual(len(h.sha256), 32)
        h.check(b"unix", 4096, running_version=6, total_size=76)

    def _reject(self, reason_part, buf=None, **kw):
        args = dict(board_id=b"unix", slot_size=4096, running_version=6, total_size=76)
        args.update(kw)
        with self.assertRaises(ImageError) as cm:
            ImageHeader.parse(buf if buf is not None else _hdr()).check(**args)
        self.assertEqual(cm.exception.status, 5)
        self.assertIn(reason_part, cm.exception.reason)

    def test_bad_magic(self):
        b = _hdr()
        b[0:4] = b"<?xm"
        self._reject("magic", b)

    def test_short(self):
        self._reject("shorter", _hdr()[:40])

    def test_unknown_flags(self):
        self._reject("flags", _hdr(flags=0x80))

    def test_compressed_and_signed_not_supported(self):
        self._reject("compressed", _hdr(flags=1))
        self._reject("signed", _hdr(flags=2))

    def test_wrong_board(self):
        self._reject("board", _hdr(board=b"rp2-pico"))

    def test_garbage_board_id_is_shown_as_hex(self):
        self._reject("board 0xff01", _hdr(board=b"\xff\x01"))

    def test_too_large(self):
        self._reject("slot", slot_size=8)

    def test_same_version(self):
        self._reject("already running", running_version=7)

    def test_downgrade(self):
        self._reject("downgrade", running_version=9)

    def test_size_disagrees(self):
        self._reject("disagrees", total_size=77)
