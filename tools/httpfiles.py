"""A small real HTTP server on 127.0.0.1 that serves registered blobs, with fault switches.

It stands in for the S3 bucket behind a RainMaker presigned URL: the ESP-AT emulator
(``tools/espat_emu.py``) sends every ``AT+HTTPCGET`` through a real ``http.client``
connection to it. Lookup is by path only; the query string (``X-Amz-...``) is accepted and
ignored. ``Range: bytes=N-`` and ``bytes=N-M`` are honoured (206 + ``Content-Range``; 416
when the start lies beyond the end), as S3 does.

Fault switches (all off by default, all thread-safe, ``clear_faults()`` resets them):

- ``fail_next(status, count=1, path=None)``: the next ``count`` GETs (of ``path`` only, if
  given) answer ``status`` (403, 404, 416, 500, ...) with an S3-style XML error body.
- ``fail_path(path, status)``: every GET of ``path`` answers ``status`` until cleared.
- ``ignore_range = True``: Range headers are ignored (200 with the whole body), like a
  server or proxy that does not support ranges.
- ``stall_after(nbytes, seconds=None)``: each response body stops after ``nbytes`` bytes
  for ``seconds`` (None: until the server stops), then continues.
- ``slow(bytes_per_s)``: bodies are sent at that rate (None: full speed).

Usage::

    from httpfiles import HTTPFiles
    with HTTPFiles() as srv:
        srv.add("/fw/app.img", data)
        url = srv.url("/fw/app.img", "X-Amz-Expires=86400")
        ...
        srv.requests[-1]["headers"]["Range"]
"""

import http.server
import os
import sys
import threading
import time

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from espcommon import parse_range, s3_error_body  # noqa: E402  (one copy, shared with espsim)

_CHUNK = 4096  # bytes per socket write at full speed


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined by server_close() so tests see no leaked threads; a
    # stalled handler is released by the owner's stop event.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # seconds: an idle client connection is dropped, never held forever

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        # A presigned GET URL is signed for GET only: S3 refuses HEAD with 403 (DESIGN.md
        # section 1, why AT+HTTPGETSIZE is no help). HEAD responses carry no body.
        owner = self.server.owner
        owner._log(self, 403)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_GET(self):
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        status, blob, forced = owner._decide(path)
        if forced:
            self._send_error(status, path)
            return
        if blob is None:
            self._send_error(404, path)
            return
        total = len(blob)
        start, end = 0, total - 1
        status = 200
        rng = self.headers.get("Range")
        if rng is not None and not owner.ignore_range:
            parsed = parse_range(rng, total)
            if parsed == "unsatisfiable":
                self._send_error(416, path, content_range="bytes */%d" % total)
                return
            if parsed is not None:
                start, end = parsed
                status = 206
        body = blob[start : end + 1]
        owner._log(self, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, total))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._send_body(body)

    def _send_error(self, status, path, content_range=None):
        owner = self.server.owner
        body = s3_error_body(status, path)
        owner._log(self, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._send_body(body)

    def _send_body(self, body):
        owner = self.server.owner
        stall_at, stall_s = owner._stall
        bps = owner._bps
        sent = 0
        t0 = time.monotonic()
        try:
            while sent < len(body):
                if owner._stop.is_set():
                    return
                n = _CHUNK
                if bps:
                    n = max(1, min(n, bps // 20))
                if stall_at is not None and sent < stall_at:
                    n = min(n, stall_at - sent)
                self.wfile.write(body[sent : sent + n])
                self.wfile.flush()
                sent += n
                if stall_at is not None and sent == stall_at:
                    owner._stop.wait(stall_s)  # None: until the server stops
                    stall_at = None
                    t0 = time.monotonic() - sent / bps if bps else t0
                if bps:
                    delay = t0 + sent / bps - time.monotonic()
                    if delay > 0:
                        owner._stop.wait(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client (the emulated ESP) hung up: normal after a reboot or a cut


class HTTPFiles:
    """Serve blobs over real HTTP on ``host`` (default 127.0.0.1), ``port`` 0 = ephemeral.

    ``start()`` / ``stop()`` (or use as a context manager). ``base_url`` is
    ``"http://127.0.0.1:<port>"``. ``requests`` lists every request seen, each a dict with
    ``method``, ``path``, ``query``, ``headers`` (dict) and ``status`` (int)."""

    def __init__(self, host="127.0.0.1", port=0):
        self._host = host
        self._port = port
        self._blobs = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._thread = None
        self.requests = []
        self.clear_faults()

    # --- life cycle -------------------------------------------------------------------
    def start(self):
        """Bind and serve in a background thread. Returns self."""
        self._stop.clear()
        self._server = _Server((self._host, self._port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="httpfiles"
        )
        self._thread.start()
        return self

    def stop(self):
        """Stop serving, release stalled responses and join every handler thread."""
        if self._server is None:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()  # joins handler threads (block_on_close)
        self._thread.join()
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        """The bound TCP port (int)."""
        return self._server.server_address[1]

    @property
    def base_url(self):
        """``"http://127.0.0.1:<port>"``."""
        return "http://%s:%d" % (self._host, self.port)

    def url(self, path, query=""):
        """A URL for ``path`` on this server, with an optional query string (no ``?``)."""
        return self.base_url + path + ("?" + query if query else "")

    # --- content ----------------------------------------------------------------------
    def add(self, path, data):
        """Serve ``data`` (bytes) at ``path`` (must start with ``/``)."""
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        with self._lock:
            self._blobs[path] = bytes(data)

    def remove(self, path):
        """Stop serving ``path`` (later GETs answer 404)."""
        with self._lock:
            self._blobs.pop(path, None)

    # --- faults -----------------------------------------------------------------------
    def clear_faults(self):
        """Turn every fault switch off."""
        with self._lock:
            self._next = []  # list of [status, remaining count, path or None, skip]
            self._paths = {}
            self.ignore_range = False
            self._stall = (None, None)
            self._bps = None

    def fail_next(self, status, count=1, path=None, skip=0):
        """Answer ``status`` (with an S3 XML error body) to the next ``count`` GETs, or to
        the next ``count`` GETs of ``path`` when given, after letting ``skip`` of them
        through (e.g. ``skip=1``: the resumed request after a first download fails)."""
        with self._lock:
            self._next.append([int(status), int(count), path, int(skip)])

    def fail_path(self, path, status):
        """Answer ``status`` to every GET of ``path`` until ``clear_faults()`` (or
        ``fail_path(path, None)``)."""
        with self._lock:
            if status is None:
                self._paths.pop(path, None)
            else:
                self._paths[path] = int(status)

    def stall_after(self, nbytes, seconds=None):
        """Each response body pauses after ``nbytes`` bytes for ``seconds`` (float; None:
        until ``stop()``), then continues. ``stall_after(None)`` turns it off."""
        self._stall = (nbytes, seconds)

    def slow(self, bytes_per_s):
        """Send bodies at ``bytes_per_s`` (int; None or 0: full speed)."""
        self._bps = int(bytes_per_s) if bytes_per_s else None

    # --- internals --------------------------------------------------------------------
    def _decide(self, path):
        with self._lock:
            for entry in self._next:
                status, count, only, skip = entry
                if only is None or only == path:
                    if skip > 0:
                        entry[3] -= 1
                        break
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._next.remove(entry)
                    return status, None, True
            if path in self._paths:
                return self._paths[path], None, True
            return 200, self._blobs.get(path), False

    def _log(self, handler, status):
        path, _, query = handler.path.partition("?")
        with self._lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "path": path,
                    "query": query,
                    "headers": dict(handler.headers.items()),
                    "status": status,
                }
            )
