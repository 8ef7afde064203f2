"""The error hierarchy of rmota.

Link and transport faults are ``OSError`` subclasses: retryable, what a retry loop
catches. Image and protocol faults are not; they carry machine-readable fields.
Bad configuration raises ``ValueError`` at construction.
"""


class LinkError(OSError):
    """The AT link failed in a way a retry may cure (timeout, framing, ESP busy/reset)."""


class LinkTimeout(LinkError):
    """No final result (or prompt) arrived within the command's timeout."""


class FramingError(LinkError):
    """A ``+HTTPCGET`` record was malformed: bad length, missing ``\\r\\n`` after the
    payload, or bytes stopped in the middle of a record (ESP-AT HTTP AT commands)."""


class ESPBusy(LinkError):
    """The ESP answered ``busy p...``: it is still processing and refused the input."""


class ESPReset(LinkError):
    """The ESP printed ``ready``: it rebooted and forgot its RAM state (URL, headers,
    ATE0, SYSLOG, the pending-job flag)."""


class CommandError(LinkError):
    """A command ended with ``ERROR`` (or ``SEND FAIL``).

    ``err_code`` is the ``ERR CODE:0x...`` value printed before it (int) or None when
    ``AT+SYSLOG`` is off; ``http_status`` is the HTTP status carried in a
    ``0x010a7xxx`` code, or None."""

    def __init__(self, command, final, err_code=None):
        self.command = command
        self.final = final
        self.err_code = err_code
        self.http_status = http_status_of(err_code)
        super().__init__(command, final, err_code)

    def __str__(self):
        return describe_err_code(self.err_code) if self.err_code is not None else "ERROR"


class ImageError(Exception):
    """The image cannot be accepted. ``status`` is the RainMaker OTA status to report
    (5 rejected: permanent; 3 failed: transient), ``reason`` a short text for
    ``AT+RMOTARESULT``'s ``<info>``."""

    def __init__(self, reason, status=5):
        self.reason = reason
        self.status = status
        super().__init__(reason)


# ESP-AT ERR CODE: 0x01 (category) 0a (HTTP module, ESP_AT_SUB_CMD_HTTP...) 7xxx where the
# low 12 bits of 0x7xxx hold the HTTP status for "HTTP status error" codes. 0x7000 itself
# means the connection failed (no status). Source: ESP-AT docs, "AT Error Codes", and
# components/at/include/esp_at.h (ESP_AT_SUB_*).
_HTTP_PREFIX = 0x010A0000


def http_status_of(err_code):
    """HTTP status (int) carried by an ESP-AT ``ERR CODE`` of the form ``0x010a7xxx``,
    0 for ``0x010a7000`` (connection failed), or None for any other code."""
    if err_code is None:
        return None
    if err_code & 0xFFFFF000 == _HTTP_PREFIX | 0x7000:
        return err_code & 0xFFF
    return None


def describe_err_code(err_code):
    """Words for an ESP-AT ``ERR CODE`` value, e.g. ``'HTTP 403'`` for 0x010a7193."""
    if err_code is None:
        return "ERROR"
    st = http_status_of(err_code)
    if st == 0:
        return "HTTP connection failed"
    if st is not None:
        return "HTTP %d" % st
    return "ERR CODE 0x%08x" % err_code


class ProtocolError(Exception):
    """A line from the ESP did not have the shape ESP-AT documents (e.g. a malformed
    ``+RMFWNOTIFY``). ``line`` holds the offending bytes (truncated to 80)."""

    def __init__(self, reason, line=b""):
        self.reason = reason
        self.line = bytes(line[:80])
        super().__init__(reason)
