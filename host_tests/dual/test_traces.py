"""Every trace in host_tests/traces replayed into the AT parser: whole, cut at every
byte boundary, and in pseudo-random splits; each must give the trace's expected events.
Runs under CPython and MicroPython."""

import unittest

import tracefmt
from prng import PRNG
from eventlog import EventLog
from rmota.at import ATParser


def replay(data, cuts, line_max=2048, record_max=2048, stalls=()):
    """Feed ``data`` cut at ``cuts``; at each offset in ``stalls`` (a long pause on the
    wire) the record inactivity timeout fires: ``abort_record()``, as ``ATLink.poll``."""
    log = EventLog()
    p = ATParser(log, line_max, record_max)
    prev = 0
    points = sorted(set(list(cuts) + list(stalls) + [len(data)]))
    for c in points:
        chunk = bytearray(data[prev:c])
        # feed from a larger buffer, as the link does (n < len(buf))
        buf = chunk + b"\xee" * 7
        p.feed(buf, len(chunk))
        prev = c
        if c in stalls:
            p.abort_record()
    return log.events


class TestTraces(unittest.TestCase):
    def test_there_are_traces_with_expectations(self):
        with_events = [n for n in tracefmt.names() if tracefmt.load(n).expect]
        self.assertGreaterEqual(len(with_events), 6)

    def test_every_trace_cites_its_source(self):
        for n in tracefmt.names():
            t = tracefmt.load(n)
            self.assertIn("source", t.meta, n)
            self.assertIn(t.meta.get("kind"), ("evidence", "regression"), n)

    def test_whole(self):
        for n in tracefmt.names():
            t = tracefmt.load(n)
            if t.expect:
                self.assertEqual(replay(t.esp_bytes(), [], stalls=t.stalls()), t.expect, n)

    def test_every_single_cut(self):
        for n in tracefmt.names():
            t = tracefmt.load(n)
            if not t.expect:
                continue
            data = t.esp_bytes()
            stalls = t.stalls()
            for k in range(1, len(data)):
                got = replay(data, [k], stalls=stalls)
                if got != t.expect:
                    self.fail("%s cut at %d: %r" % (n, k, got))

    def test_random_splits(self):
        rnd = PRNG(1234)
        for n in tracefmt.names():
            t = tracefmt.load(n)
            if not t.expect:
                continue
            data = t.esp_bytes()
            for trial in range(40):
                k = rnd.randint(1, 12)
                cuts = sorted(rnd.randint(1, len(data) - 1) for _ in range(k))
                self.assertEqual(replay(data, cuts, stalls=t.stalls()), t.expect, n)

    def test_byte_by_byte(self):
        for n in tracefmt.names():
            t = tracefmt.load(n)
            if t.expect:
                data = t.esp_bytes()
                got = replay(data, list(range(1, len(data))), stalls=t.stalls())
                self.assertEqual(got, t.expect, n)
