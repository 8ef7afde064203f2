"""Tagged, levelled logging with arguments passed unformatted (formatted only when shown).

Usage::

    from rmota.log import Logger
    log = Logger("ota", level=INFO)
    log.info("wrote", n, "bytes")
"""

ERROR = 40
WARN = 30
INFO = 20
DEBUG = 10

_NAMES = {40: "E", 30: "W", 20: "I", 10: "D"}


class Logger:
    """``Logger(tag, level=INFO, sink=print)``: ``error/warn/info/debug(*args)`` print
    ``[tag] X: args...`` when the level allows. ``sink`` receives the whole line (str);
    keep ``count[level]`` for post-mortems at the REPL."""

    def __init__(self, tag, level=INFO, sink=None):
        self.tag = tag
        self.level = level
        self.sink = sink
        self.count = {ERROR: 0, WARN: 0, INFO: 0, DEBUG: 0}
        self.failures = 0  # lines the sink refused

    def _emit(self, lvl, args):
        self.count[lvl] += 1
        if lvl < self.level:
            return
        try:  # a log line must never take the agent down (a full disk, a closed port)
            line = "[%s] %s: %s" % (self.tag, _NAMES[lvl], " ".join(str(a) for a in args))
            if self.sink:
                self.sink(line)
            else:
                print(line)
        except Exception:
            self.failures += 1

    def error(self, *args):
        self._emit(ERROR, args)

    def warn(self, *args):
        self._emit(WARN, args)

    def info(self, *args):
        self._emit(INFO, args)

    def debug(self, *args):
        self._emit(DEBUG, args)
