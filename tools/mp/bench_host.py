"""Host cost of the download loop, measured under the MicroPython unix port (or CPython)
and printed as one JSON line for tools/bench.py (rows 1c, 2, 3 and 5 of issue 5).

    micropython -X heapsize=16m tools/mp/bench_host.py [reps]

Every figure is a ratio to SHA-256 alone over the same bytes, timed in the same process,
interleaved with the measured run (best of ``reps``), because absolute times drift:

- ``rx<N>.pipe``: a 1.74 MB ``+HTTPCGET`` stream with records of N bytes, from memory
  through ``ATLink`` (read 8192 bytes at a time, ``read_size``), the agent's record sink and
  ``SlotWriter`` (block buffer, erase, program, rolling SHA-256, the journal's CRC-32
  per block over its first and last 256 bytes, ``crc_span`` as the board profiles set
  it) into a RAM block device; then ``finish()``. ``full``: the CRC over the whole
  block; ``nocrc``: no CRC; ``crc``: CRC-32 alone over the payload.
- ``readback``: the final read-back check (the slot hashed again from the device).
- ``naive``: the same stream parsed the way typical AT drivers do, a ``readline()``
  loop that joins lines until a record's length is reached, into the same writer.
- ``alloc``: bytes allocated per ``+HTTPCGET`` record in the steady state
  (``gc.mem_alloc()`` deltas, collection disabled; MicroPython only), one record per
  read, for several record lengths.
- ``framing``: wire bytes per payload byte for full records of each rx size.
"""

import gc
import json
import os
import sys

_d = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
for _p in (_d, _d + "/../../lib"):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import dlpipe  # noqa: E402
from binascii import crc32  # noqa: E402
from rmota.image import HEADER_SIZE  # noqa: E402

try:
    from time import ticks_diff, ticks_us
except ImportError:  # CPython
    import time

    def ticks_us():
        return int(time.perf_counter() * 1e6)

    def ticks_diff(a, b):
        return a - b


IS_MP = sys.implementation.name == "micropython"
# the journal's CRC span, as boards/unix and boards/esp32 set it ("crc_span")
SPAN = 256
# bytes per UART read, as boards/unix sets it ("read_size")
READ = 8192
# tools/firmware_src.py seed_sized_payload(): image 1,740,880 bytes; smaller for a smoke run
PAYLOAD = int(os.getenv("RMOTA_BENCH_PAYLOAD") or 1740816)


class LineUART:
    """The in-memory stream with a ``readline()`` as ``machine.UART`` has one (each line
    a new bytes object, like the C implementation) and ``read(n)``."""

    def __init__(self, stream):
        self.s = bytes(stream)
        self.i = 0

    def readline(self):
        s = self.s
        i = self.i
        if i >= len(s):
            return None
        j = s.find(b"\n", i)
        j = len(s) if j < 0 else j + 1
        self.i = j
        return s[i:j]


def naive_download(stream, writer, header_len=HEADER_SIZE):
    """A readline-style parser, as typical AT drivers are written: read a line; if it is
    a ``+HTTPCGET:<len>,`` record, keep reading lines and joining them until ``len``
    payload bytes (plus the closing CRLF) are there; write the payload."""
    u = LineUART(stream)
    skip = header_len
    got = 0
    while True:
        line = u.readline()
        if line is None:
            break
        if not line.startswith(b"+HTTPCGET:"):
            continue
        c = line.index(b",")
        n = int(line[10:c])
        data = line[c + 1 :]
        while len(data) < n + 2:
            more = u.readline()
            if more is None:
                break
            data += more
        payload = data[:n]
        if skip:
            k = min(skip, n)
            skip -= k
            payload = payload[k:]
        if payload:
            writer.write(payload)
            got += len(payload)
    return got


def timed(f):
    t = ticks_us()
    f()
    return ticks_diff(ticks_us(), t)


def host_cost(image, payload, rx, reps):
    """Best-of-reps times (µs), interleaved: the pipeline (``pipe``; ``nocrc`` without
    the journal's CRC-32 per block), SHA-256 alone, CRC-32 alone, the read-back, and the
    naive parser into the same writer."""
    stream, _ = dlpipe.make_stream(image, rx)
    best = {}

    def keep(name, t):
        best[name] = min(best.get(name, 1 << 60), t)

    ok = True
    span = {"crc_span": SPAN}
    for _ in range(reps):
        p = dlpipe.Pipeline(image, rx_size=rx, read_size=READ, stream=stream, settings=span)
        gc.collect()
        keep("pipe", timed(lambda: (p.run(), p.agent.writer.finish())))
        ok = ok and p.agent.header is not None
        gc.collect()
        keep("sha", timed(lambda: dlpipe.sha_only(payload)))
        gc.collect()
        keep("readback", timed(lambda: p.readback_ok()))
        ok = ok and p.readback_ok()
        agent = p.agent
        p = None
        q = dlpipe.Pipeline(image, rx_size=rx, read_size=READ, stream=stream, settings=span)
        q.agent.writer.on_block = None
        gc.collect()
        keep("nocrc", timed(lambda: (q.run(), q.agent.writer.finish())))
        q = dlpipe.Pipeline(
            image, rx_size=rx, read_size=READ, stream=stream, settings={"crc_span": None}
        )
        gc.collect()
        keep("full", timed(lambda: (q.run(), q.agent.writer.finish())))
        q = None
        gc.collect()
        keep("crc", timed(lambda: crc32(payload)))
        w = agent._new_writer(agent.writer.bdev)
        w.on_block = agent._on_block
        w.begin(len(payload))
        gc.collect()
        keep("naive", timed(lambda: naive_download(stream, w)))
        ok = ok and w.finish() == p_digest(image)
        w = agent = None
        gc.collect()
        keep("sha", timed(lambda: dlpipe.sha_only(payload)))
    best["ok"] = ok
    return best


def p_digest(image):
    return bytes(image[32:64])


def alloc_per_record(lengths=(64, 2048, 4096, 10240), records=24):
    """Bytes allocated per record in the steady state, one read per record."""
    out = {}
    if not IS_MP:
        return out
    for n in lengths:
        warm = 4 + (2 * dlpipe.BLOCK) // n  # header, probe, first blocks
        payload = dlpipe.payload_bytes(n * (warm + records))
        image = dlpipe.make_image(payload)
        stream, ends = dlpipe.make_stream(image, n, first=HEADER_SIZE)
        p = dlpipe.Pipeline(image, rx_size=n, stream=stream, cuts=ends[:-1])
        for _ in range(warm):
            p.step()
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        for _ in range(records):
            p.step()
        used = gc.mem_alloc() - a0
        gc.enable()
        out[str(n)] = used / records
    return out


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    payload = dlpipe.payload_bytes(PAYLOAD)
    image = dlpipe.make_image(payload)
    res = {"runtime": sys.implementation.name, "payload": PAYLOAD}
    res["alloc"] = alloc_per_record()
    for rx in (2048, 10240):
        b = host_cost(image, payload, rx, reps)
        res["rx%d" % rx] = b
    res["framing"] = {
        str(rx): dlpipe.framing_overhead(rx, len(image)) for rx in (2048, 4096, 10240)
    }
    print(json.dumps(res))


main()
