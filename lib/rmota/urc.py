"""Parsers for the RainMaker URCs the agent acts on (ESP-AT "RainMaker AT Commands").

- ``+RMFWNOTIFY:<type>,<size>,<url>,<fw_version>,<ota_job_id>``: a host-MCU OTA job.
  The URL is a presigned S3 URL and may contain commas, so type and size are taken from
  the left and version and job id from the right (DESIGN.md section 1).
- ``+RMOTA:<status>``: the ESP's own (Wi-Fi MCU) OTA status.

Usage::

    note = parse_fwnotify(b"+RMFWNOTIFY:0,76,https://h/p?q,1.2.3,JOB1")
    note.size, note.url, note.fw_version, note.job_id
"""

from .errors import ProtocolError

# RainMaker OTA status values (AT+RMOTARESULT <status>, +RMOTA:<status>).
OTA_IN_PROGRESS = 1
OTA_SUCCEEDED = 2
OTA_FAILED = 3
OTA_DELAYED = 4
OTA_REJECTED = 5

STATUS_NAMES = {
    1: "in progress",
    2: "succeeded",
    3: "failed",
    4: "delayed",
    5: "rejected",
}

_FW_PREFIX = b"+RMFWNOTIFY:"
_OTA_PREFIX = b"+RMOTA:"


class FWNotify:
    """One host-MCU OTA notification. ``type`` (int, always 0 today), ``size`` (bytes,
    the whole image), ``url`` (bytes), ``fw_version`` (str, or None for the literal
    ``null``), ``job_id`` (str)."""

    def __init__(self, typ, size, url, fw_version, job_id):
        self.type = typ
        self.size = size
        self.url = url
        self.fw_version = fw_version
        self.job_id = job_id

    def __repr__(self):
        return "FWNotify(%d, %d, <url %d B>, %r, %r)" % (
            self.type,
            self.size,
            len(self.url),
            self.fw_version,
            self.job_id,
        )


def _uint(b, what, line):
    if not b or len(b) > 10:
        raise ProtocolError("bad " + what, line)
    v = 0
    for c in b:
        if c < 48 or c > 57:
            raise ProtocolError("bad " + what, line)
        v = v * 10 + c - 48
    return v


def parse_fwnotify(line):
    """Parse a ``+RMFWNOTIFY`` line (bytes-like, without ``\\r\\n``) → ``FWNotify``.

    Raises ``ProtocolError`` when a field is missing or malformed: type or size not a
    decimal number, size 0, an empty URL or job id, or a job id with a quote or
    backslash (it is sent back in ``AT+RMOTARESULT``)."""
    line = bytes(line)
    if not line.startswith(_FW_PREFIX):
        raise ProtocolError("not +RMFWNOTIFY", line)
    body = line[len(_FW_PREFIX) :]
    a = body.find(b",")
    b = body.find(b",", a + 1) if a >= 0 else -1
    z = body.rfind(b",")
    y = body.rfind(b",", 0, z) if z >= 0 else -1
    if a < 0 or b < 0 or y <= b:
        raise ProtocolError("+RMFWNOTIFY needs 5 fields", line)
    typ = _uint(body[:a], "type", line)
    size = _uint(body[a + 1 : b], "size", line)
    if size == 0:
        raise ProtocolError("size 0", line)
    url = body[b + 1 : y]
    ver = body[y + 1 : z]
    job = body[z + 1 :]
    if not url or not job:
        raise ProtocolError("empty url or job id", line)
    if not job_id_ok(job):
        raise ProtocolError("bad job id", line)
    # A URL is printable ASCII (S3 percent-encodes the rest); anything else is a
    # corrupted line, and the URL goes back to the ESP and into the journal as text.
    for c in url:
        if c < 33 or c > 126:
            raise ProtocolError("bad url", line)
    for c in ver:
        if c < 32 or c > 126:
            raise ProtocolError("bad fw_version", line)
    fw_version = None if ver == b"null" else ver.decode()
    return FWNotify(typ, size, url, fw_version, job.decode())


def fwnotify_job_id(line):
    """The job id of a ``+RMFWNOTIFY`` line (bytes-like) that ``parse_fwnotify`` refused
    for another field: its last comma-separated field, when that is a job id
    ``parse_fwnotify`` would take (printable ASCII, no quote or backslash); else None.
    Lets a notification that is malformed every time be reported (``AT+RMOTARESULT``
    needs the job id)."""
    line = bytes(line)
    if not line.startswith(_FW_PREFIX):
        return None
    job = line[line.rfind(b",") + 1 :]
    if line.count(b",") < 4 or not job_id_ok(job):
        return None
    return job.decode()


def job_id_ok(job):
    """True when ``job`` (str or bytes-like) is a job id the agent can send back in
    ``AT+RMOTARESULT``: non-empty printable ASCII without a space, quote or backslash
    (a CR LF in it would end the command line early and send the rest as commands of
    its own). ``parse_fwnotify`` takes no other; a journal record's job id is checked
    again on loading (``Journal.load``), as damage can make any string of one."""
    if isinstance(job, str):
        job = job.encode()
    elif not isinstance(job, (bytes, bytearray, memoryview)):
        return False
    if not job:
        return False
    for c in job:
        if c < 33 or c > 126 or c == 34 or c == 92:
            return False
    return True


def parse_rmota(line):
    """Parse ``+RMOTA:<status>`` → int status (any non-negative number: callers decide
    what they know). Raises ``ProtocolError`` on a malformed line."""
    line = bytes(line)
    if not line.startswith(_OTA_PREFIX):
        raise ProtocolError("not +RMOTA", line)
    return _uint(line[len(_OTA_PREFIX) :].strip(), "status", line)
