"""SlotWriter: explicit erase before program, rolling SHA-256, read-back, rewind."""

import hashlib
import unittest

from ramnor import RAMNOR
from rmota.errors import ImageError
from rmota.writer import SlotWriter


def _image(n, seed=7):
    out = bytearray(n)
    x = seed
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


def _write_all(w, data, step):
    for i in range(0, len(data), step):
        w.write(data[i : i + step])


class TestWriter(unittest.TestCase):
    def test_stream_in_odd_chunks_over_a_dirty_slot(self):
        dev = RAMNOR(8, fill=0x00)  # the old image left zero bits everywhere
        img = _image(4096 * 3 + 1000)
        w = SlotWriter(dev)
        w.begin(len(img))
        _write_all(w, img, 777)
        self.assertEqual(w.finish(), hashlib.sha256(img).digest())
        self.assertEqual(w.readback_digest(), hashlib.sha256(img).digest())
        self.assertEqual(bytes(dev.mem[: len(img)]), img)
        # every touched block erased exactly once, the rest never
        self.assertEqual(dev.erase_counts, [1, 1, 1, 1, 0, 0, 0, 0])

    def test_skipped_erase_is_caught_by_read_back(self):
        dev = RAMNOR(4, fill=0x00)
        dev.sabotage_skip_erase = 1
        img = _image(4096 * 2 + 5)
        w = SlotWriter(dev)
        w.begin(len(img))
        _write_all(w, img, 1000)
        self.assertEqual(w.finish(), hashlib.sha256(img).digest())  # RAM view was fine
        self.assertNotEqual(w.readback_digest(), hashlib.sha256(img).digest())

    def test_too_large_refused_before_erasing(self):
        dev = RAMNOR(2)
        w = SlotWriter(dev)
        with self.assertRaises(ImageError) as cm:
            w.begin(3 * 4096)
        self.assertEqual(cm.exception.status, 5)
        self.assertEqual(dev.erase_counts, [0, 0])

    def test_more_bytes_than_image(self):
        w = SlotWriter(RAMNOR(2))
        w.begin(10)
        w.write(b"x" * 10)
        with self.assertRaises(ImageError):
            w.write(b"y")

    def test_short_finish(self):
        w = SlotWriter(RAMNOR(2))
        w.begin(10)
        w.write(b"x" * 9)
        with self.assertRaises(ImageError):
            w.finish()

    def test_rewind_rehashes_prefix_from_flash(self):
        dev = RAMNOR(8)
        img = _image(4096 * 5 + 17)
        w = SlotWriter(dev)
        w.begin(len(img))
        _write_all(w, img[: 4096 * 3 + 100], 512)
        self.assertEqual(w.rewind(4096 * 2 + 50), 4096 * 2)
        self.assertEqual(w.rehashed, 4096 * 2)
        _write_all(w, img[4096 * 2 :], 333)
        self.assertEqual(w.finish(), hashlib.sha256(img).digest())
        self.assertEqual(w.readback_digest(), hashlib.sha256(img).digest())

    def test_rewind_within_buffer_keeps_hash(self):
        dev = RAMNOR(4)
        img = _image(4096 + 300)
        w = SlotWriter(dev)
        w.begin(len(img))
        _write_all(w, img[: 4096 + 200], 100)
        self.assertEqual(w.rewind(4096 + 150), 4096)
        self.assertEqual(w.rehashed, 0)
        w.write(img[4096:])
        self.assertEqual(w.finish(), hashlib.sha256(img).digest())

    def test_last_block_padded_to_page(self):
        dev = RAMNOR(2)
        w = SlotWriter(dev, prog_align=256)
        w.begin(10)
        w.write(b"0123456789")
        w.finish()
        self.assertEqual(bytes(dev.mem[:10]), b"0123456789")
        self.assertEqual(bytes(dev.mem[10:256]), b"\xff" * 246)


class TestBlockCRC(unittest.TestCase):
    def _write(self, crc_span):
        dev = RAMNOR(4)
        img = _image(4096 * 3)
        w = SlotWriter(dev, crc_span=crc_span)
        crcs = []
        w.on_block = lambda index, crc: crcs.append(crc)
        w.begin(len(img))
        _write_all(w, img, 1000)
        w.finish()
        return dev, img, crcs

    def _resume(self, dev, n, crcs, crc_span):
        w = SlotWriter(dev, crc_span=crc_span)
        w.begin(n)
        return w.resume(crcs), w

    def test_resume_keeps_the_blocks_whose_crc_matches(self):
        for span in (None, 256):
            dev, img, crcs = self._write(span)
            self.assertEqual(len(crcs), 3)
            kept, w = self._resume(dev, len(img), crcs, span)
            self.assertEqual(kept, len(img))
            self.assertEqual(w._sha.digest(), hashlib.sha256(img).digest())

    def test_torn_program_and_torn_erase_are_caught_either_way(self):
        for span in (None, 256):
            for where in (4096 + 4095, 4096):  # block 1: unprogrammed end / erased start
                dev, img, crcs = self._write(span)
                dev.mem[where] = 0xFF if dev.mem[where] != 0xFF else 0x00
                kept, _ = self._resume(dev, len(img), crcs, span)
                self.assertEqual(kept, 4096, (span, where))

    def test_span_leaves_the_middle_to_the_image_digest(self):
        dev, img, crcs = self._write(256)
        dev.mem[4096 + 2000] ^= 1  # not something a torn program or erase leaves
        kept, w = self._resume(dev, len(img), crcs, 256)
        self.assertEqual(kept, len(img))
        self.assertNotEqual(w._sha.digest(), hashlib.sha256(img).digest())  # caught here
        dev, img, crcs = self._write(None)
        dev.mem[4096 + 2000] ^= 1
        self.assertEqual(self._resume(dev, len(img), crcs, None)[0], 4096)

    def test_span_is_checked(self):
        with self.assertRaises(ValueError):
            SlotWriter(RAMNOR(2), crc_span=4096)
