"""A small unittest-compatible shim for running rmota's dual-runtime tests under the
MicroPython unix port (CPython's unittest does not import there; DESIGN.md section 3).

Only what our tests use: ``TestCase`` with setUp/tearDown and the common assertions,
``assertRaises`` as a context manager or a call, and ``main()``.
"""

import sys


class SkipTest(Exception):
    pass


class _Raises:
    def __init__(self, exc):
        self.expected = exc
        self.exception = None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError("%r not raised" % (self.expected,))
        if issubclass(et, self.expected):
            self.exception = ev
            return True
        return False


class TestCase:
    def setUp(self):
        pass

    def tearDown(self):
        pass

    def fail(self, msg=None):
        raise AssertionError(msg or "failed")

    def assertEqual(self, a, b, msg=None):
        if not a == b:
            raise AssertionError(msg or "%r != %r" % (a, b))

    def assertNotEqual(self, a, b, msg=None):
        if a == b:
            raise AssertionError(msg or "%r == %r" % (a, b))

    def assertTrue(self, x, msg=None):
        if not x:
            raise AssertionError(msg or "%r is not true" % (x,))

    def assertFalse(self, x, msg=None):
        if x:
            raise AssertionError(msg or "%r is not false" % (x,))

    def assertIs(self, a, b, msg=None):
        if a is not b:
            raise AssertionError(msg or "%r is not %r" % (a, b))

    def assertIsNone(self, x, msg=None):
        if x is not None:
            raise AssertionError(msg or "%r is not None" % (x,))

    def assertIsNotNone(self, x, msg=None):
        if x is None:
            raise AssertionError(msg or "unexpectedly None")

    def assertIn(self, a, b, msg=None):
        if a not in b:
            raise AssertionError(msg or "%r not in %r" % (a, b))

    def assertNotIn(self, a, b, msg=None):
        if a in b:
            raise AssertionError(msg or "%r in %r" % (a, b))

    def assertIsInstance(self, x, cls, msg=None):
        if not isinstance(x, cls):
            raise AssertionError(msg or "%r is not a %r" % (x, cls))

    def assertGreater(self, a, b, msg=None):
        if not a > b:
            raise AssertionError(msg or "%r <= %r" % (a, b))

    def assertGreaterEqual(self, a, b, msg=None):
        if not a >= b:
            raise AssertionError(msg or "%r < %r" % (a, b))

    def assertLess(self, a, b, msg=None):
        if not a < b:
            raise AssertionError(msg or "%r >= %r" % (a, b))

    def assertLessEqual(self, a, b, msg=None):
        if not a <= b:
            raise AssertionError(msg or "%r > %r" % (a, b))

    def assertRaises(self, exc, func=None, *args, **kwargs):
        ctx = _Raises(exc)
        if func is None:
            return ctx
        with ctx:
            func(*args, **kwargs)
        return ctx


def _cases(module):
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, type) and issubclass(obj, TestCase) and obj is not TestCase:
            yield name, obj


def run_module(module, only=None):
    """Run every ``test*`` method of every TestCase in ``module``; print one line per
    test and return (passed, failed)."""
    passed = failed = 0
    for cname, cls in _cases(module):
        for mname in sorted(dir(cls)):
            if not mname.startswith("test"):
                continue
            if only and only not in mname:
                continue
            label = "%s.%s.%s" % (module.__name__, cname, mname)
            tc = cls()
            try:
                tc.setUp()
                try:
                    getattr(tc, mname)()
                finally:
                    tc.tearDown()
            except SkipTest as e:
                print("SKIP", label, e)
                failed += 1  # a skipped check is not a pass
                continue
            except Exception as e:
                print("FAIL", label)
                sys.print_exception(e)
                failed += 1
                continue
            print("ok", label)
            passed += 1
    return passed, failed


def main(module="__main__"):
    m = sys.modules[module] if isinstance(module, str) else module
    p, f = run_module(m)
    print("%d passed, %d failed" % (p, f))
    sys.exit(1 if f else 0)
