"""ESP-AT wire facts and pure helpers, one copy for every tool that plays the ESP or its server.

Used by the ESP-AT model (``tools/espcore.py``) and its two drivers (``tools/espsim.py``
on virtual time, ``tools/espat_emu.py`` on a real port), by the HTTP server
``tools/httpfiles.py`` (Range parsing, S3 error bodies) and by the dual-runtime tests
(the PRNG). Pure functions and constants only: no I/O, no threads, nothing CPython-only,
so it imports under the MicroPython unix port too.

Usage::

    from espcommon import OK, parse_command, record_header, parse_range, PRNG

    parse_command(b'AT+HTTPCGET="",2048,512\\r\\n')   # ("cmd", b"+HTTPCGET", "set", [b"", 2048, 512])
    record_header(512) + payload + b"\\r\\n"           # one +HTTPCGET record
    parse_range("bytes=100-", 1000)                  # (100, 999)
    PRNG(7).randint(1, 2048)                         # same number on both runtimes
"""

# --- ESP-AT wire tokens (ESP-AT "AT Command Set", "HTTP AT Commands", DESIGN.md section 1) ---
OK = b"\r\nOK\r\n"
ERROR = b"\r\nERROR\r\n"
SET_OK = b"\r\nSET OK\r\n"  # AT+HTTPURLCFG after the last URL byte
PROMPT = b"\r\nOK\r\n\r\n>"  # nothing follows the '>'
READY = b"\r\nready\r\n"  # printed after every boot
BUSY = b"\r\nbusy p...\r\n"  # input refused while a command is processing

LINE_MAX = 256  # bytes: one command line, "\r\n" included (ESP-AT "AT Command Set")
URL_LEN_MIN = 8  # AT+HTTPURLCFG=<len>: 8..8192; 0 clears
URL_LEN_MAX = 8192
HEAD_LEN_MAX = 8192  # AT+HTTPCHEAD=<len> upper bound assumed equal to the URL's
SIZE_MAX = 10240  # AT+HTTPCGET tx/rx size, bytes
SIZE_DEFAULT = 2048
TIMEOUT_MAX_MS = 180000  # AT+HTTPCGET network-idle timeout, ms
TIMEOUT_DEFAULT_MS = 5000

# ERR CODE values (ESP-AT docs "AT Error Codes": 0x01 category, then ESP_AT_SUB_* byte).
ERR_NO_AT = 0x01030000  # line does not start with AT
ERR_PARA_NUM = 0x01060000  # parameter count mismatch
ERR_PARA_INVALID = 0x01070000  # parameter out of range
ERR_PARSE = 0x01080000  # parameter parse failure (e.g. unquoted string)
ERR_UNSUPPORTED = 0x01090000  # unknown command
ERR_EXEC_FAIL = 0x010A0000  # the handler returned ERROR
ERR_PROCESSING = 0x010B0000  # busy: a command is processing
ERR_HTTP = 0x010A7000  # | HTTP status; 0x010a7000 alone: connection failed

# esp_rmaker_ota_status_to_string(): the "status" field of the result's JSON.
STATUS_WORDS = {1: "in-progress", 2: "success", 3: "failed", 4: "delayed", 5: "rejected"}
RESULT_JSON_MAX = 256  # at_rainmaker.c builds the result JSON in a 256-byte buffer

S3_HOST = "esp-rainmaker-ota-000000000000-prod.s3.us-east-1.amazonaws.com"

# S3 error codes per status, for the XML body (Amazon S3 API reference, "Error responses").
S3_CODES = {
    400: ("InvalidRequest", "Bad request"),
    403: ("AccessDenied", "Request has expired"),
    404: ("NoSuchKey", "The specified key does not exist."),
    416: ("InvalidRange", "The requested range is not satisfiable"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


# ------------------------------------------------------------------------------------------
# Command lines
# ------------------------------------------------------------------------------------------
class ParamError(Exception):
    """A command's parameters are wrong: ESP-AT answers ``ERROR`` (``ERR CODE:<code>``)."""

    def __init__(self, code=ERR_PARSE):
        self.code = code


def parse_params(raw):
    """Split the parameters of an ESP-AT set command (``bytes`` after ``=``).

    Returns a list where a quoted parameter is ``bytes`` (escapes ``\\,`` ``\\"`` ``\\\\``
    resolved), a number is ``int`` and an empty (omitted) parameter is None. Raises
    ``ValueError`` on a malformed line (unterminated string, unquoted text)."""
    out = []
    i, n = 0, len(raw)
    while True:
        if i < n and raw[i] == 0x22:  # '"'
            i += 1
            s = bytearray()
            while True:
                if i >= n:
                    raise ValueError("unterminated string")
                c = raw[i]
                if c == 0x5C and i + 1 < n:  # backslash escapes the next byte
                    s.append(raw[i + 1])
                    i += 2
                    continue
                if c == 0x22:
                    i += 1
                    break
                s.append(c)
                i += 1
            out.append(bytes(s))
            if i < n and raw[i] != 0x2C:
                raise ValueError("text after string")
        else:
            j = raw.find(b",", i)
            tok = raw[i:] if j < 0 else raw[i:j]
            i = n if j < 0 else j
            tok = tok.strip()
            if tok == b"":
                out.append(None)
            else:
                try:
                    out.append(int(tok))
                except ValueError:
                    raise ValueError("not a number: %r" % (tok,)) from None
        if i >= n:
            return out
        i += 1  # the comma
        if i >= n:
            out.append(None)
            return out


def escape_at_string(s):
    """Escape ``,`` ``"`` and ``\\`` with a backslash, as an ESP-AT quoted parameter needs."""
    if isinstance(s, str):
        s = s.encode()
    return s.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b",", b"\\,")


def parse_command(line, over=False):
    """Classify one command line (bytes, ``\\r\\n`` included) as ESP-AT's parser does.

    Returns ``("error", code)``, ``("ok",)`` for a bare ``AT``, ``("echo", on)`` for
    ``ATE0``/``ATE1``, or ``("cmd", name, form, args)``: ``name`` like ``b"+HTTPCGET"``,
    ``form`` one of ``"exe"``, ``"query"``, ``"test"``, ``"set"``, ``args`` the
    ``parse_params`` list (set) or None. ``over``: the line exceeded ``LINE_MAX``."""
    if over or not line.endswith(b"\r\n"):
        return ("error", ERR_PARA_INVALID if over else ERR_NO_AT)
    text = line[:-2]
    if not text.startswith(b"AT"):
        return ("error", ERR_NO_AT)
    cmd = text[2:]
    if cmd == b"":
        return ("ok",)
    if cmd == b"E0" or cmd == b"E1":
        return ("echo", cmd == b"E1")
    if not cmd.startswith(b"+"):
        return ("error", ERR_UNSUPPORTED)
    end = len(cmd)
    for j in range(len(cmd)):
        c = cmd[j]
        if c == 0x3D or c == 0x3F:  # '=' '?'
            end = j
            break
    name, rest = cmd[:end], cmd[end:]
    if rest == b"":
        return ("cmd", name, "exe", None)
    if rest == b"?":
        return ("cmd", name, "query", None)
    if rest == b"=?":
        return ("cmd", name, "test", None)
    if rest.startswith(b"="):
        try:
            return ("cmd", name, "set", parse_params(rest[1:]))
        except ValueError:
            return ("error", ERR_PARSE)
    return ("error", ERR_PARSE)


# ------------------------------------------------------------------------------------------
# Output lines
# ------------------------------------------------------------------------------------------
def record_header(n):
    """The header of one ``AT+HTTPCGET`` record announcing ``n`` payload bytes:
    ``+HTTPCGET:<n>,`` (the payload and ``\\r\\n`` follow)."""
    return b"+HTTPCGET:%d," % n


def notification_line(size, url, fw_version, job_id):
    """``+RMFWNOTIFY:0,<size>,<url>,<fw_version>,<job_id>\\r\\n`` (bytes). ``fw_version``
    None prints the literal ``null`` (at_rainmaker.c)."""
    if isinstance(url, str):
        url = url.encode()
    ver = b"null" if fw_version is None else _b(fw_version)
    return b"+RMFWNOTIFY:0,%d,%s,%s,%s\r\n" % (size, url, ver, _b(job_id))


def escape_bytes(data):
    """Bytes as printable text: ``\\r`` ``\\n`` ``\\\\`` and ``\\xNN`` escapes."""
    out = []
    for b in data:
        if b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


def _b(s):
    return s if isinstance(s, bytes) else str(s).encode()


# ------------------------------------------------------------------------------------------
# The S3 side
# ------------------------------------------------------------------------------------------
def s3_error_body(status, path=""):
    """The XML error document S3 returns with ``status`` (bytes, UTF-8).

    A 403 for an expired presigned URL starts
    ``<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>``: this is what
    ``AT+HTTPCGET`` streams to the host as ordinary ``+HTTPCGET`` records before ``ERROR``."""
    code, message = S3_CODES.get(status, ("InternalError", "Error"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource>"
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>" % (code, message, path)
    ).encode()


def parse_range(value, total):
    """One ``bytes=`` range (str) against ``total`` bytes (RFC 9110 section 14.1.2):
    returns ``(start, end)`` inclusive, ``"unsatisfiable"``, or None for a header to
    ignore (malformed or multi-range: served whole, as a 200, as many servers do)."""
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None
    spec = value[6:].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":  # suffix range: the last N bytes
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, total - n), total - 1
        start = int(first)
        end = int(last) if last else total - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= total:
        return "unsatisfiable"
    return start, min(end, total - 1)


def presigned_url(path, gen=None, host=S3_HOST, length=1083):
    """A presigned-S3-style URL (str) for ``path`` on ``host``, padded to ``length``
    characters (the seed's has 1,083). ``gen`` (int) goes into ``X-Amz-Date``, so each
    notification of the model gets a fresh URL whose age its server can tell; None
    leaves ``X-Amz-Date`` out."""
    url = "https://%s%s?X-Amz-Algorithm=AWS4-HMAC-SHA256" % (host, path)
    if gen is not None:
        url += "&X-Amz-Date=%d" % gen
    url += "&X-Amz-Expires=86400&X-Amz-Signature="
    if len(url) < length:
        url += "0123456789abcdef" * ((length - len(url)) // 16 + 1)
        url = url[:length]
    return url


# ------------------------------------------------------------------------------------------
# A seeded PRNG (MicroPython's random has no Random class): xorshift32.
# ------------------------------------------------------------------------------------------
class PRNG:
    """Same sequence on CPython and MicroPython for the same ``seed`` (int)."""

    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next32(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def randint(self, a, b):
        """An int in [a, b], both included."""
        return a + self.next32() % (b - a + 1)

    def random(self):
        """A float in [0, 1)."""
        return self.next32() / 4294967296.0

    def chance(self, num, den):
        """True with probability num/den (integers: same result on both runtimes)."""
        return self.next32() % den < num

    def choice(self, seq):
        return seq[self.next32() % len(seq)]
