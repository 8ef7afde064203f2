"""Random record streams (payloads full of lookalike tokens, lines between records), fed
whole and in random splits, into parsers with small and large line caps: every split
gives the same events and the same bytes. Runs under both runtimes (seeded); the
hypothesis version is host_tests/test_properties.py."""

from prng import PRNG
import unittest

from eventlog import EventLog
from rmota.at import ATParser

_TOKENS = (b"\r\n", b"OK", b"ERROR", b"+HTTPCGET:", b"12,", b">", b"ready", b"\n", b"\r")


def make_stream(rnd, records=30, max_len=3000):
    out = bytearray()
    expect = []
    for _ in range(records):
        if rnd.randint(0, 3) == 0:
            line = b"+RMRECV:0,Light,Power:%d" % rnd.randint(0, 9)
            out += line + b"\r\n"
            expect.append(b"line " + line)
        n = rnd.randint(0, max_len)
        body = bytearray()
        while len(body) < n:
            if rnd.randint(0, 4) == 0:
                body += _TOKENS[rnd.randint(0, len(_TOKENS) - 1)]
            else:
                body.append(rnd.randint(0, 255))
        body = bytes(body[:n])
        out += b"+HTTPCGET:%d," % n + body + b"\r\n"
        expect.append(("rec", body))
    out += b"\r\nOK\r\n"
    expect.append(b"line OK")
    return bytes(out), expect


class Collect(EventLog):
    def on_record(self, mv):
        self.events.append(("rec", bytes(mv)))


def feed(data, cuts, line_max, record_max=4096):
    log = Collect()
    p = ATParser(log, line_max, record_max)
    prev = 0
    for c in cuts + [len(data)]:
        p.feed(data[prev:c])
        prev = c
    return log.events


class TestSplits(unittest.TestCase):
    def test_random_streams_and_splits(self):
        rnd = PRNG(99)
        for case in range(6):
            data, expect = make_stream(rnd)
            for line_max in (64, 2048):
                self.assertEqual(feed(data, [], line_max), expect)
                for trial in range(4):
                    k = rnd.randint(1, 60)
                    cuts = sorted(set(rnd.randint(1, len(data) - 1) for _ in range(k)))
                    self.assertEqual(feed(data, cuts, line_max), expect)

    def test_long_record_without_newline_in_one_read(self):
        # A payload longer than the line cap with no '\n' in it, fed in one read: it is
        # a record, not an over-long line.
        body = b"x" * 5000
        data = b"+HTTPCGET:5000," + body + b"\r\n\r\nOK\r\n"
        self.assertEqual(feed(data, [], 64, 8192), [("rec", body), b"line OK"])
