# Fake `time` for the board tests: the tick arithmetic of a 32-bit port, where ticks_ms
# and ticks_us wrap every 2**30 (the unix port's own ticks wrap at 2**62 and would hide
# a wrap bug). ticks_us and ticks_ms can be pinned with set_us() and set_ms() to step
# across the wrap; everything else is the real time module.
import time as _real

TICKS_PERIOD = 1 << 30
_MASK = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD // 2
_pinned_us = [-1]  # -1: follow the real clock
_pinned_ms = [-1]


def set_us(us):
    """Pins ticks_us() to `us` (taken modulo the period); -1 follows the real clock."""
    _pinned_us[0] = -1 if us < 0 else us & _MASK


def set_ms(ms):
    """Pins ticks_ms() to `ms` (taken modulo the period); -1 follows the real clock."""
    _pinned_ms[0] = -1 if ms < 0 else ms & _MASK


def ticks_us():
    if _pinned_us[0] >= 0:
        return _pinned_us[0]
    return _real.ticks_us() & _MASK


def ticks_ms():
    if _pinned_ms[0] >= 0:
        return _pinned_ms[0]
    return _real.ticks_ms() & _MASK


def ticks_add(t, delta):
    return (t + delta) & _MASK


def ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


sleep_ms = _real.sleep_ms
sleep_us = _real.sleep_us
sleep = _real.sleep
time = _real.time
gmtime = _real.gmtime


class Ticks32:
    """The `time` of the given modules does this 32-bit tick arithmetic while inside:
    `with Ticks32(tariff, power): ...`."""

    def __init__(self, *mods):
        self.mods = mods
        self.saved = []

    def __enter__(self):
        import fake_time

        self.saved = [m.time for m in self.mods]
        for m in self.mods:
            m.time = fake_time
        return self

    def __exit__(self, *exc):
        for m, t in zip(self.mods, self.saved):
            m.time = t
        set_ms(-1)
        return False
