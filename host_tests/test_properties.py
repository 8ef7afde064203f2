"""Property tests (hypothesis, CPython): any split of a byte stream into reads of any
sizes gives the same parser events and the same payload bytes (issue 2 section 5)."""

from hypothesis import given, settings
from hypothesis import strategies as st

import tracefmt
from eventlog import EventLog
from rmota.at import ATParser

TRACES = [tracefmt.load(n) for n in tracefmt.names()]
TRACES = [t for t in TRACES if t.expect]


class Collect(EventLog):
    def on_record(self, mv):
        self.events.append(("rec", bytes(mv)))


def run(data, sizes, line_max=2048):
    log = Collect()
    p = ATParser(log, line_max, 10240)
    i = 0
    k = 0
    while i < len(data):
        n = sizes[k % len(sizes)] if sizes else len(data)
        p.feed(data[i : i + n])
        i += n
        k += 1
    return log.events


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TRACES), st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_trace_any_split_same_events(trace, sizes):
    data = trace.esp_bytes()
    assert run(data, sizes) == run(data, [])


_lookalike = st.sampled_from([b"\r\n", b"OK", b"ERROR", b"+HTTPCGET:", b"7,", b">", b"ready"])
_payload = st.lists(st.one_of(_lookalike, st.binary(max_size=50)), max_size=40).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_payload, min_size=1, max_size=12),
    st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    st.sampled_from([32, 256, 2048]),
)
def test_records_survive_any_split(payloads, sizes, line_max):
    data = b"".join(b"+HTTPCGET:%d," % len(p) + p + b"\r\n" for p in payloads) + b"\r\nOK\r\n"
    want = [("rec", p) for p in payloads] + [b"line OK"]
    assert run(data, [], line_max) == want
    assert run(data, sizes, line_max) == want
