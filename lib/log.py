# Tiny logger in the spirit of micropython-lib `logging`.
#
#   log = get("pilot")
#   log.info("cp %d mV state %s", mv, st)   # formatted only if INFO is enabled
#
# Lines go to stdout as "<ms since boot> LEVEL name: message". One global level
# (set_level); a Logger's own `level` attribute, when not None, overrides it. keep(n)
# also remembers the last n WARNING/ERROR lines for a diagnostics page (recent()).
# Logging never raises: a bad format string logs the raw message and its arguments.
import sys
import time
from micropython import const

DEBUG = const(10)
INFO = const(20)
WARNING = const(30)
ERROR = const(40)

_NAMES = ((DEBUG, "DEBUG"), (INFO, "INFO"), (WARNING, "WARNING"), (ERROR, "ERROR"))  # flash

_level = INFO
_out = print  # one str per line, without the newline
_clock = time.ticks_ms  # wraps after 2**30 ms (~12 days) on MicroPython
_ring = None  # fixed-size list of the last warning/error lines, or None
_ring_pos = 0  # next slot to overwrite
_loggers = {}


def set_level(level):
    """Global threshold: lines below it cost one comparison."""
    global _level
    _level = level


def set_output(write=None, clock=None):
    """Where lines go (default print) and the ms clock (default time.ticks_ms)."""
    global _out, _clock
    _out = write or print
    _clock = clock or time.ticks_ms


def keep(n):
    """Remembers the last n WARNING/ERROR lines (0 turns it off and forgets them)."""
    global _ring, _ring_pos
    _ring = [None] * n if n > 0 else None
    _ring_pos = 0


def recent():
    """The remembered WARNING/ERROR lines, oldest first."""
    r = _ring
    if r is None:
        return []
    lines = r[_ring_pos:] + r[:_ring_pos]
    return [ln for ln in lines if ln is not None]


def get(name):
    """The Logger for `name` (one per module, named after it)."""
    lg = _loggers.get(name)
    if lg is None:
        lg = _loggers[name] = Logger(name)
    return lg


class Logger:
    def __init__(self, name):
        self.name = name
        self.level = None  # None: follow the global level

    def is_enabled(self, level):
        lv = self.level
        return level >= (_level if lv is None else lv)

    def log(self, level, msg, *args):
        if not self.is_enabled(level):
            return
        if args:
            try:
                msg = msg % args
            except (TypeError, ValueError):
                msg = "%s %r" % (msg, args)
        name = level
        for lv, n in _NAMES:
            if lv == level:
                name = n
        line = "%d %s %s: %s" % (_clock(), name, self.name, msg)
        _out(line)
        if level >= WARNING and _ring is not None:
            _remember(line)

    def debug(self, msg, *args):
        self.log(DEBUG, msg, *args)

    def info(self, msg, *args):
        self.log(INFO, msg, *args)

    def warning(self, msg, *args):
        self.log(WARNING, msg, *args)

    def error(self, msg, *args):
        self.log(ERROR, msg, *args)

    def exc(self, e, msg, *args):
        """ERROR line ending in the exception, then its traceback (not kept in the ring)."""
        if not self.is_enabled(ERROR):
            return
        if args:
            try:
                msg = msg % args
            except (TypeError, ValueError):
                msg = "%s %r" % (msg, args)
        self.log(ERROR, "%s: %s: %s", msg, type(e).__name__, e)
        if _out is print:
            sys.print_exception(e)
            return
        import io  # rare path: only with a redirected output

        buf = io.StringIO()
        sys.print_exception(e, buf)
        for ln in buf.getvalue().split("\n"):
            if ln:
                _out(ln)


def _remember(line):
    global _ring_pos
    r = _ring
    r[_ring_pos] = line
    _ring_pos = (_ring_pos + 1) % len(r)
