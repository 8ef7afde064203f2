"""Presigned-style URLs and the seed notification (host side, CPython).

The seed's ``+RMFWNOTIFY`` (``tools/data/seed_rmfwnotify.txt``, a copy of the trace handed to
the project in ``shared/traces/``, DESIGN.md section 6, so a bare clone has it) carries a 1,083-character presigned S3 URL. The demo announces its jobs
with URLs of the same shape and length, pointing at the local HTTP server instead.

Usage::

    python tools/seedurl.py 127.0.0.1:8080 /firmwareimages/demo.img

    from seedurl import presigned_url, seed_notification
    ntype, size, url, version, job_id = seed_notification()
    url = presigned_url("127.0.0.1:8080", "/firmwareimages/demo.img")   # 1,083 characters
"""

import argparse
import os
import re
import sys
import urllib.parse

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_TRACE = os.path.join(_ROOT, "tools", "data", "seed_rmfwnotify.txt")
SEED_URL_LEN = 1083  # characters, as the seed guide's AT+HTTPURLCFG=1083 expects
_PREFIX = "+RMFWNOTIFY:"
_TOKEN_KEY = "X-Amz-Security-Token"
_TOKEN_MIN = 16  # characters: below this the URL would no longer look presigned
# RFC 3986 pchar (unreserved, sub-delims, ":" "@") plus "/" and percent escapes.
_PATH_RE = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9\-._~\[\]:]+$")
_UNIT_RE = re.compile(r"%[0-9A-Fa-f]{2}|.", re.S)


def seed_notification(path: str = SEED_TRACE):
    """Parse the seed's ``+RMFWNOTIFY:<type>,<size>,<url>,<fw_version>,<ota_job_id>`` line
    (DESIGN.md section 1) from ``path`` (default ``tools/data/seed_rmfwnotify.txt``).

    Type and size are taken from the left, version and job id from the right, so a URL
    containing commas survives. Returns ``(type, size, url, version, job_id)``: ``type``
    and ``size`` (bytes, the whole image) are ``int``; ``url`` and ``job_id`` ``str``;
    ``version`` is ``str``, or ``None`` for the literal ``null``. Raises ``OSError`` when
    the file cannot be read and ``ValueError`` when the line is malformed."""
    with open(path, "r", encoding="ascii") as f:
        line = f.readline().rstrip("\r\n")
    return parse_notification(line)


def parse_notification(line: str):
    """Parse one ``+RMFWNOTIFY:...`` line (``str``, line ending already stripped); see
    ``seed_notification`` for the result. Raises ``ValueError`` when malformed."""
    if not line.startswith(_PREFIX):
        raise ValueError("not a +RMFWNOTIFY line: %r" % line[:40])
    left = line[len(_PREFIX) :].split(",", 2)
    if len(left) != 3:
        raise ValueError("+RMFWNOTIFY needs 5 fields")
    right = left[2].rsplit(",", 2)
    if len(right) != 3 or not right[0]:
        raise ValueError("+RMFWNOTIFY needs 5 fields")
    try:
        ntype, size = int(left[0]), int(left[1])
    except ValueError:
        raise ValueError("+RMFWNOTIFY type/size not numeric: %r, %r" % (left[0], left[1]))
    if size < 0:
        raise ValueError("+RMFWNOTIFY size %d is negative" % size)
    url, version, job_id = right
    return ntype, size, url, (None if version == "null" else version), job_id


def _seed_parts(seed_path):
    url = seed_notification(seed_path)[2]
    parts = urllib.parse.urlsplit(url)
    # Keep the query raw (already percent-encoded), as a list of (key, value) in order.
    query = [kv.split("=", 1) for kv in parts.query.split("&")]
    return parts, query


def _token(seed_token, n):
    """A token of exactly ``n`` characters made from ``seed_token``'s percent-escape-aware
    units: its body cycled (escapes never split), ending like the seed's (``%3D%3D``, base64
    padding). With ``n == len(seed_token)`` the seed's token comes back unchanged."""
    suffix = ""
    m = re.search(r"(?:%3D)+$", seed_token)
    if m and n >= len(m.group(0)) + 1:
        suffix = m.group(0)
        seed_token = seed_token[: m.start()]
    units = _UNIT_RE.findall(seed_token)
    plain = [u for u in units if len(u) == 1] or ["A"]
    out = []
    left = n - len(suffix)
    i = 0
    while left > 0:
        u = units[i % len(units)]
        if len(u) > left:
            u = plain[i % len(plain)]
        out.append(u)
        left -= len(u)
        i += 1
    return "".join(out) + suffix


def presigned_url(
    host_port: str,
    path: str,
    length: int = SEED_URL_LEN,
    scheme: str = "http",
    seed_path: str = SEED_TRACE,
) -> str:
    """Build a URL shaped like the seed's presigned S3 URL, pointing at
    ``<scheme>://<host_port><path>`` (e.g. ``presigned_url("127.0.0.1:8080", "/fw.img")``).

    Kept from the seed: the query string, i.e. the same seven parameters in the same order
    (``X-Amz-Algorithm``, ``-Credential``, ``-Date``, ``-Expires``, ``-Security-Token``,
    ``-SignedHeaders``, ``-Signature``) with the seed's percent-encoded values, and the total
    length: the opaque ``X-Amz-Security-Token`` (variable-length in real presigned URLs) is
    cut or extended from the seed's own characters, never splitting a ``%XX`` escape and
    keeping its ``%3D%3D`` ending, so that the URL is exactly ``length`` characters
    (default 1,083, the seed's). Replaced: scheme, host and port, and the object path.
    ``length=None`` keeps the seed's token as is (the length then follows host and path);
    ``presigned_url(seed_host, seed_path, None, "https")`` gives back the seed's URL.

    ``host_port``: ``str`` such as ``"127.0.0.1:8080"``. ``path``: the object path, a leading
    ``/`` is added when missing; only URL path characters and ``%XX`` escapes (no ``?``,
    ``#``, spaces, quotes). Returns the URL (``str``, ASCII). Raises ``ValueError`` on a bad
    host or path, or when ``length`` leaves fewer than 16 characters for the token;
    ``OSError`` when the seed trace cannot be read."""
    if not host_port or not _HOST_RE.match(host_port):
        raise ValueError("bad host[:port] %r" % host_port)
    if scheme not in ("http", "https"):
        raise ValueError("scheme must be http or https, not %r" % scheme)
    if not path.startswith("/"):
        path = "/" + path
    if not _PATH_RE.match(path):
        raise ValueError("path %r has characters not allowed in a URL path" % path)
    _, query = _seed_parts(seed_path)

    def build(token):
        q = "&".join(k + "=" + (token if k == _TOKEN_KEY else v) for k, v in query)
        return "%s://%s%s?%s" % (scheme, host_port, path, q)

    seed_token = dict(query)[_TOKEN_KEY]
    if length is None:
        return build(seed_token)
    n = length - len(build(""))
    if n < _TOKEN_MIN:
        raise ValueError(
            "a %d-character URL leaves %d characters for the security token (minimum %d): "
            "host or path too long" % (length, n, _TOKEN_MIN)
        )
    url = build(_token(seed_token, n))
    if len(url) != length:  # cannot happen: _token returns exactly n characters
        raise ValueError("built a %d-character URL, wanted %d" % (len(url), length))
    return url


def main(argv=None):
    """CLI: print ``presigned_url(HOST:PORT, PATH)``; returns 0, or 1 with a message."""
    ap = argparse.ArgumentParser(
        prog="seedurl", description="Print a presigned-style URL shaped like the seed's."
    )
    ap.add_argument("host_port", help="e.g. 127.0.0.1:8080")
    ap.add_argument("path", help="object path, e.g. /firmwareimages/demo.img")
    ap.add_argument("--length", type=int, default=SEED_URL_LEN, help="total URL length")
    args = ap.parse_args(argv)
    try:
        print(presigned_url(args.host_port, args.path, args.length))
    except (OSError, ValueError) as e:
        print("seedurl: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
