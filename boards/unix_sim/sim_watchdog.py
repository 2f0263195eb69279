# Simulated hardware watchdog: a thread that "resets the charger" when feed() stops.
#
# A bite first puts the outputs in their reset state (relays open, CP static +12 V) and
# prints "watchdog reset". The process then has to end with status 3 so that `make run`
# power-cycles it. A thread cannot end the process on this port (SystemExit only ends
# the thread, scheduled callbacks swallow exceptions, and the unix port hosted in
# CPython never sees SIGINT), so the board's plant task raises SystemExit(3) on the
# main thread at its next tick. If the main loop is so stuck that this does not happen
# within _GRACE_MS, the thread cuts the power instead: SIGKILL (status 137), which
# `make run` restarts too.
import os
import time
import _thread
from micropython import const

_POLL_MS = const(20)
_GRACE_MS = const(2000)
_MIN_TIMEOUT_MS = const(100)
_MAX_TIMEOUT_MS = const(3_600_000)


def own_pid():
    with open("/proc/self/stat") as f:
        return int(f.read(64).split()[0])


def power_cut():
    os.system("kill -9 %d" % own_pid())


class Watchdog:
    def __init__(self, on_bite, grace_ms=_GRACE_MS, cut=power_cut, on_reset=None):
        self._on_bite = on_bite  # puts the outputs in the reset state; allocation-free
        self._on_reset = on_reset  # then notes the cause for the next boot (hw.reset_cause)
        self._grace_ms = grace_ms
        self._cut = cut
        self.timeout_ms = 0
        self._fed_ms = 0
        self._running = False
        self.bitten = False

    def start(self, timeout_ms):
        """Arms the watchdog (again: a new timeout). It cannot be stopped."""
        if type(timeout_ms) is not int or not _MIN_TIMEOUT_MS <= timeout_ms <= _MAX_TIMEOUT_MS:
            raise ValueError("timeout_ms %d..%d" % (_MIN_TIMEOUT_MS, _MAX_TIMEOUT_MS))
        self._fed_ms = time.ticks_ms()
        self.timeout_ms = timeout_ms
        if not self._running:
            self._running = True
            _thread.start_new_thread(self._watch, ())

    def feed(self):
        self._fed_ms = time.ticks_ms()

    def _watch(self):
        while time.ticks_diff(time.ticks_ms(), self._fed_ms) <= self.timeout_ms:
            time.sleep_ms(_POLL_MS)
        self._on_bite()
        if self._on_reset is not None:
            self._on_reset()
        self.bitten = True
        print("watchdog reset")
        time.sleep_ms(self._grace_ms)
        # Still alive: the main thread never reached the plant task's check.
        print("watchdog: main loop stuck, cutting power")
        self._cut()
