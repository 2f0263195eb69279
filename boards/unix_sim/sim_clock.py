# Simulated time sources: the monotonic microsecond clock every `t_us` is measured on,
# and the battery-backed real-time clock.
import time


class Clock:
    """Microseconds since boot that never wrap, from time.ticks_us (ISR-safe).

    ticks_us wraps every 2**30 us (~18 min) and ticks_diff is exact below half of that,
    so now_us() must run at least every ~9 minutes: the plant task calls it every tick.
    time.time_ns() would be simpler but allocates on the unix port.
    """

    def __init__(self):
        self._last = time.ticks_us()
        self._us = 0

    def now_us(self):
        t = time.ticks_us()
        self._us += time.ticks_diff(t, self._last)
        self._last = t
        return self._us


class Rtc:
    """Wall clock in epoch seconds; starts from the host's time, set() shifts it."""

    def __init__(self):
        self._offset_s = 0

    def now(self):
        return int(time.time()) + self._offset_s

    def set(self, epoch_s):
        if type(epoch_s) is not int or epoch_s < 0:
            raise ValueError("epoch_s must be a non-negative int")
        self._offset_s = epoch_s - int(time.time())
