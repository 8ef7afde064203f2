"""Small shims so the package runs unchanged on MicroPython and CPython.

``const``, ``ticks_ms``/``ticks_diff``/``ticks_add`` and ``sleep_ms`` behave as in
MicroPython's ``micropython`` and ``time`` modules. ``Clock`` bundles them so that tests
can inject a virtual clock (any object with ``ticks_ms()``, ``ticks_diff(a, b)`` and
``sleep_ms(ms)``).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import time

try:
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = time.sleep_ms
except AttributeError:  # CPython: emulate MicroPython's wrapping millisecond ticks.
    _TICKS_PERIOD = 1 << 30
    _TICKS_HALF = _TICKS_PERIOD // 2

    def ticks_ms():
        return int(time.monotonic() * 1000) & (_TICKS_PERIOD - 1)

    def ticks_add(t, delta):
        return (t + delta) & (_TICKS_PERIOD - 1)

    def ticks_diff(a, b):
        return ((a - b + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF

    def sleep_ms(ms):
        time.sleep(ms / 1000)


class Clock:
    """The real millisecond clock: ``ticks_ms()``, ``ticks_diff(a, b)`` (ms, a - b),
    ``sleep_ms(ms)``. Pass another object with the same three methods to run on
    virtual time. The methods are the ``time`` module's own functions, bound per
    instance: the link reads the clock on every poll, and a Python wrapper would
    cost a call frame each time."""

    def __init__(self):
        self.ticks_ms = ticks_ms
        self.ticks_diff = ticks_diff
        self.sleep_ms = sleep_ms


class VirtualClock:
    """A clock that only moves when slept on: ``sleep_ms(ms)`` advances it by ``ms``.

    For tests and the fault campaign: a 5-second stall costs no real time. Ticks do not
    wrap (Python integers)."""

    def __init__(self, start_ms=0):
        self.now_ms = start_ms

    def ticks_ms(self):
        return self.now_ms

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now_ms += ms
