"""Reader for the trace files in host_tests/traces (format in traces/README.md).

Runs under CPython and MicroPython. ``load(name)`` returns a ``Trace`` with ``steps``
(list of (direction, bytes): ``"E"`` ESP→host, ``"H"`` host→ESP, ``"@"`` a pause in ms
as bytes of its decimal number), ``expect`` (list of expected parser events, each a
bytes line such as ``b"line OK"``), ``outcome`` (dict of ``key=value`` from ``!``
lines) and ``meta`` (dict from ``# key: value`` header lines).
"""

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
TRACES = _HERE + "/../traces"

_HEX = b"0123456789abcdef"

# A pause this long (ms) ends an open +HTTPCGET record: rmota.at.ATLink's default
# record_idle_ms (the payload-mode inactivity timeout).
STALL_MS = 1000


def unescape(s):
    """Decode the trace escapes ``\\r \\n \\t \\0 \\\\ \\xHH`` and ``\\s`` (a space, for
    trailing spaces) in ``s`` (bytes) → bytes."""
    out = bytearray()
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c != 92:
            out.append(c)
            i += 1
            continue
        e = s[i + 1]
        if e == 114:
            out.append(13)
        elif e == 110:
            out.append(10)
        elif e == 116:
            out.append(9)
        elif e == 48:
            out.append(0)
        elif e == 115:
            out.append(32)
        elif e == 92:
            out.append(92)
        elif e == 120:
            out.append(int(bytes(s[i + 2 : i + 4]), 16))
            i += 2
        else:
            raise ValueError("bad escape in trace: %r" % bytes(s[i : i + 2]))
        i += 2
    return bytes(out)


def escape(b):
    """The inverse of ``unescape`` for event logs: printable ASCII stays, the rest is
    escaped."""
    out = bytearray()
    for c in b:
        if c == 13:
            out.extend(b"\\r")
        elif c == 10:
            out.extend(b"\\n")
        elif c == 92:
            out.extend(b"\\\\")
        elif 32 <= c < 127:
            out.append(c)
        else:
            out.extend(b"\\x")
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
    return bytes(out)


class Trace:
    def __init__(self, name):
        self.name = name
        self.steps = []
        self.expect = []
        self.outcome = {}
        self.meta = {}

    def esp_bytes(self):
        """All ESP→host bytes of the trace, concatenated."""
        out = bytearray()
        for d, b in self.steps:
            if d == "E":
                out.extend(b)
        return bytes(out)

    def stalls(self, min_ms=STALL_MS):
        """Offsets into ``esp_bytes()`` where the wire pauses (``@`` lines) for at least
        ``min_ms`` ms in total before the ESP's next byte: a record open there is ended by
        the link's record inactivity timeout (``ATLink.record_idle_ms``). Sorted list."""
        out = []
        off = 0
        pause = 0
        for d, b in self.steps:
            if d == "E":
                if pause >= min_ms and off not in out:
                    out.append(off)
                pause = 0
                off += len(b)
            elif d == "@":
                pause += int(b)
        if pause >= min_ms and off not in out:
            out.append(off)
        return out


def parse(text, name="<trace>"):
    """Parse trace text (bytes) into a ``Trace``."""
    t = Trace(name)
    for raw in text.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line.startswith(b"#"):
            k = line.find(b":")
            if k > 0:
                t.meta[line[1:k].strip().decode()] = line[k + 1 :].strip().decode()
            continue
        tag = line[:3]
        body = line[3:]
        if tag == b"E< ":
            t.steps.append(("E", unescape(body)))
        elif tag == b"H> ":
            t.steps.append(("H", unescape(body)))
        elif tag == b"@  ":
            t.steps.append(("@", body.strip()))
        elif tag == b"=  ":
            t.expect.append(body)
        elif tag == b"!  ":
            for kv in body.split():
                k, v = kv.split(b"=", 1)
                t.outcome[k.decode()] = v.decode()
        else:
            raise ValueError("%s: bad trace line %r" % (name, line[:40]))
    return t


def load(name):
    """Load ``host_tests/traces/<name>.txt``."""
    with open(TRACES + "/" + name + ".txt", "rb") as f:
        return parse(f.read(), name)


def names():
    """Names of all trace files."""
    import os

    return sorted(n[:-4] for n in os.listdir(TRACES) if n.endswith(".txt"))
