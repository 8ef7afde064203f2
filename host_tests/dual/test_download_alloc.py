"""The steady-state download loop - ATLink → the agent's record sink → SlotWriter (erase,
program, SHA-256, CRC-32 per block) - allocates nothing that grows with the record
length (DESIGN.md section 2, issue 5). Runs under MicroPython (exact ``gc.mem_alloc()``
deltas, collection disabled, measured around every single record) and CPython
(tracemalloc: nothing may be retained). No timings here: those are ``make bench``'s.

The stream comes from memory (tools/mp/dlpipe.py), cut so that each read holds one
record, as with a UART buffer larger than a record."""

import sys
import unittest

_d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
if _d + "/../../tools/mp" not in sys.path:
    sys.path.append(_d + "/../../tools/mp")

import dlpipe  # noqa: E402
from rmota.image import HEADER_SIZE  # noqa: E402

IS_MP = sys.implementation.name == "micropython"
LENGTHS = (64, 1000, 2048, 4096, 10240)
RECORDS = 40
# MicroPython: a memoryview slice is one 32-byte object. The parser takes three per
# record (line segment, payload segment, the record it delivers); the writer none, or
# two when the record wraps around the end of its ring buffer.
SLICE = 32
BOUND = 5 * SLICE


def _pipeline(n, settings=None):
    warm = 4 + (2 * dlpipe.BLOCK) // n  # the header, the probe, the first blocks
    payload = dlpipe.payload_bytes(n * (warm + RECORDS))
    image = dlpipe.make_image(payload)
    stream, ends = dlpipe.make_stream(image, n, first=HEADER_SIZE)
    p = dlpipe.Pipeline(image, rx_size=n, stream=stream, cuts=ends[:-1], settings=settings)
    for _ in range(warm):
        p.step()
    return p


def _per_record_mp(n, settings=None):
    """Bytes allocated by each of RECORDS records (MicroPython)."""
    import gc

    from array import array

    p = _pipeline(n, settings)
    used = array("i", [0] * RECORDS)
    step = p.step
    alloc = gc.mem_alloc
    gc.collect()
    gc.disable()
    try:
        for k in range(RECORDS):
            a = alloc()
            step()
            used[k] = alloc() - a
    finally:
        gc.enable()
    return p, list(used)


def _retained_cpython(n, settings=None):
    import tracemalloc

    p = _pipeline(n, settings)
    tracemalloc.start()
    try:
        a = tracemalloc.get_traced_memory()[0]
        for _ in range(RECORDS):
            p.step()
        return p, tracemalloc.get_traced_memory()[0] - a
    finally:
        tracemalloc.stop()


class TestDownloadLoopAllocation(unittest.TestCase):
    def _check(self, settings=None, lengths=LENGTHS):
        means = {}
        for n in lengths:
            if IS_MP:
                p, used = _per_record_mp(n, settings)
                self.assertLessEqual(max(used), BOUND, "record of %d B: %r" % (n, used))
                means[n] = sum(used) / len(used)
            else:
                p, kept = _retained_cpython(n, settings)
                self.assertLess(kept, 1024, "record of %d B kept %d B" % (n, kept))
            a = p.agent
            self.assertEqual(a.att.frame_errors, 0)
            self.assertIsNotNone(a.header)
            self.assertGreater(a.writer.offset, RECORDS * n)  # the records went in
        if IS_MP:
            # The same small constant for a 64-byte record and a 10 KB one: what differs
            # is at most the writer's ring wrap (two slices), never a per-byte or
            # per-block cost.
            top = lengths[-1]
            self.assertLessEqual(means[top] - means[64], 2 * SLICE, repr(means))

    def test_stream_mode(self):
        self._check({"flash_mode": "stream"})

    def test_window_mode(self):
        # Records go into the RAM window; nothing is programmed while the ESP sends (the
        # bytes past a full window are counted, not taken), so the window holds every
        # record measured: (4 + 2 + 40) x 4096 B at most.
        st = {"flash_mode": "window", "window_size": 192 * 1024}
        self._check(st, LENGTHS[:-1])

    def test_blocks_are_programmed_in_the_loop(self):
        # The loop measured above really erases, programs and hashes: the writer's
        # rolling digest at the end matches the image header's.
        payload = dlpipe.payload_bytes(5 * 4096 + 123)
        image = dlpipe.make_image(payload)
        p = dlpipe.Pipeline(image, rx_size=2048)
        p.run()
        self.assertTrue(p.verify())
        self.assertTrue(p.readback_ok())
        self.assertEqual(p.bdev.erases, 6)


if __name__ == "__main__":
    unittest.main()
