# Small assertion helpers for unix-port tests (see runner.py).
import micropython


class SkipTest(Exception):
    pass


def eq(got, want, what=""):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what or "value", got, want))


def true(cond, what="condition"):
    if not cond:
        raise AssertionError("%s is false" % what)


def raises(exc, fn, *args, **kw):
    """Calls fn and returns the exception it raised; fails unless it is an `exc`."""
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s did not raise %s" % (getattr(fn, "__name__", fn), exc.__name__))


def assert_no_alloc(fn, arg=None):
    """Runs fn() (or fn(arg)) with the heap locked: any allocation raises MemoryError.

    The call is spelled out, not fn(*args): unpacking a tuple allocates by itself."""
    micropython.heap_lock()
    try:
        if arg is None:
            fn()
        else:
            fn(arg)
    finally:
        micropython.heap_unlock()


def tmpdir(tag):
    """A new empty directory under $TMPDIR (or /tmp) for one test's files."""
    import os
    import time

    d = "%s/evse_%s_%d_%d" % (os.getenv("TMPDIR") or "/tmp", tag, time.ticks_us(), os.urandom(1)[0])
    os.mkdir(d)
    return d
