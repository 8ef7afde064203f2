"""The "!" outcome line of a trace, checked against an agent run (issue 4 field cases).

A field-case trace (``host_tests/traces/field_*.txt``) ends with a line such as::

    !  fail=framing status=2 committed=1 reported=1,2

``check(name, result)`` reads that line and asserts each key against a
``scenario.Result`` of a run in which the emulator produced the trace's case, so the
trace file itself is the assertion. Keys (a value's ``_`` stands for a space, ``;``
separates list items):

- ``status=N|none``: the job's last accepted ``AT+RMOTARESULT`` status (none: no result).
- ``committed=1``: the board boots slot 1, confirmed, holding exactly the served image's
  payload; ``committed=0``: it still boots slot 0 (the factory image).
- ``reported=a,b``: the accepted statuses, in order; ``never=a,b``: statuses never accepted.
- ``fail=word``: a failed attempt was logged whose reason contains ``word``.
- ``log=a;b``: the agent's output contains each text.
- ``sends=A;B``: the ESP received command lines containing these, in this order.
- ``after_ready=A;B``: the same, counting only what the host sent after the ESP's first
  ``ready`` banner.
- ``range=resumed|ignored|none``: a GET carried ``Range`` and got 206 / got 200 / no GET
  carried ``Range``.
- ``data_clean=1``: every block of bytes the ESP read after a ``>`` prompt was exactly the
  URL (or a ``Range: bytes=...`` header) or was refused for a NUL: no command bytes ever
  became data.

CPython only (it inspects the emulator and the HTTP server); the parser events of the
same traces are checked under both runtimes by ``host_tests/dual/test_traces.py``.
"""

import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dual"))

import tracefmt  # noqa: E402

_KEYS = (
    "status",
    "committed",
    "reported",
    "never",
    "fail",
    "log",
    "sends",
    "after_ready",
    "range",
    "data_clean",
)


def outcome(name):
    """The ``!`` line of trace ``name`` as a dict (str → str). Raises ``ValueError`` when
    the trace has none or uses a key this module does not know."""
    t = tracefmt.load(name)
    if not t.outcome:
        raise ValueError("trace %s has no ! outcome line" % name)
    for k in t.outcome:
        if k not in _KEYS:
            raise ValueError("trace %s: unknown outcome key %r" % (name, k))
    return dict(t.outcome)


def _words(v):
    return [w.replace("_", " ") for w in v.split(";") if w]


def _subsequence(lines, wanted):
    """Index of the first wanted item not found in order, or None when all were."""
    i = 0
    for k, w in enumerate(wanted):
        while i < len(lines) and w not in lines[i]:
            i += 1
        if i == len(lines):
            return k
        i += 1
    return None


def host_lines(result, after_ready=False):
    """Command lines the ESP received (bytes, ``\\r\\n`` kept off), from its trace of the
    exchange; with ``after_ready`` only those sent after its first ``ready`` banner."""
    started = not after_ready
    buf = bytearray()
    for _t, d, data in result.emu.trace:
        if not started:
            if d == "E<" and b"ready\r\n" in data:
                started = True
            continue
        if d == "H>":
            buf += data
    return [bytes(x) for x in bytes(buf).split(b"\r\n") if x]


def check(name, result, payload, url):
    """Assert that ``result`` (a ``scenario.Result``) matches the ``!`` outcome of trace
    ``name``. ``payload``: the image's payload (bytes) served in the run; ``url``: the
    URL the job announced (bytes). Raises ``AssertionError`` naming the key that failed,
    with the agent's output."""
    exp = outcome(name)
    r = result
    out = "\n".join(r.output)
    statuses = [s for _, s, _ in r.results]

    def fail(msg):
        raise AssertionError(
            "%s: %s\nresults %r\nfaults %r\n--- agent output ---\n%s"
            % (name, msg, r.results, r.emu.faults.log, out)
        )

    for key, v in exp.items():
        if key == "status":
            want = None if v == "none" else int(v)
            if r.final_status != want:
                fail("status %r, want %r" % (r.final_status, want))
        elif key == "committed":
            if v == "1":
                good = (
                    r.slot == 1
                    and r.slot_sha256 == hashlib.sha256(payload).digest()
                    and r.record.state == 1
                )
            else:
                good = r.slot == 0
            if not good:
                fail("committed=%s but slot %r" % (v, r.slot))
        elif key == "reported":
            if statuses != [int(x) for x in v.split(",")]:
                fail("reported %r, want %s" % (statuses, v))
        elif key == "never":
            bad = [int(x) for x in v.split(",") if int(x) in statuses]
            if bad:
                fail("reported %r, never allowed" % bad)
        elif key == "fail":
            w = v.replace("_", " ")
            if not any("failed:" in line and w in line for line in r.output):
                fail("no failed attempt mentions %r" % w)
        elif key == "log":
            for w in _words(v):
                if w not in out:
                    fail("output lacks %r" % w)
        elif key in ("sends", "after_ready"):
            lines = host_lines(r, after_ready=key == "after_ready")
            wanted = [w.encode() for w in _words(v)]
            k = _subsequence(lines, wanted)
            if k is not None:
                fail("%s: %r not sent in order; host sent %r" % (key, wanted[k], lines))
        elif key == "range":
            ranged = [q for q in r.http_log if "Range" in q["headers"]]
            if v == "none":
                good = not ranged
            else:
                want = 206 if v == "resumed" else 200
                good = any(q["status"] == want for q in ranged)
            if not good:
                fail(
                    "range=%s but requests %r"
                    % (v, [(q["headers"].get("Range"), q["status"]) for q in r.http_log])
                )
        elif key == "data_clean":
            for kind, data in r.data_log:
                if b"\x00" in data:
                    continue  # refused by the ESP: padding, never stored
                if kind == b"URL" and data == url:
                    continue
                if kind == b"HEAD" and re.fullmatch(rb"Range: bytes=\d+-(\d+)?", data):
                    continue
                fail("the ESP read %r as %s data" % (data[:80], kind))
    return exp
