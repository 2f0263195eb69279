# Runs every long-lived task under supervision and owns the watchdog.
#
# A task that raises (or returns) is put back after a backoff; before anything else the
# charger goes to its safe state (relays open, PWM stopped, the session ended: charging
# needs a new authorization). While a critical task (pilot, protection) is late or keeps
# dying the charger is also held (nothing offered, nothing closed), and the watchdog is
# fed only while every critical task has checked in recently, so a stuck control loop or
# a critical task that keeps dying ends in a reset.
import asyncio
import time
from micropython import const

import log

_log = log.get("supervisor")

_FEED_EVERY_MS = const(500)
WDT_TIMEOUT_MS = 5000
_MAX_DEATHS = const(5)  # of one critical task within _DEATH_WINDOW_MS -> let the WDT bite
_DEATH_WINDOW_MS = const(60000)


class Supervisor:
    def __init__(self, wdt, safe_state, hold=None):
        """safe_state(): outputs safe at once; hold(on): keep the charger from charging
        while a critical task is late (True) and let it go when all are back (False)."""
        self._wdt = wdt
        self._safe_state = safe_state
        self._hold = hold
        self._specs = []  # (name, factory, critical, checkin_ms)
        self._checkin = {}  # name -> ticks_ms of the last check-in
        self.restarts = {}  # name -> count since boot
        self._deaths = {}  # name -> [ticks_ms of recent deaths]
        self.escalated = None
        self.tasks = {}

    def add(self, name, factory, critical=False, checkin_ms=2000):
        """factory: coroutine function run as the task; a critical task must call
        checkin(name) at least every checkin_ms."""
        self._specs.append((name, factory, critical, checkin_ms))

    def checkin(self, name):
        self._checkin[name] = time.ticks_ms()

    async def _keep(self, name, factory, critical):
        delay = 100
        while True:
            try:
                await factory()
                raise RuntimeError("task returned")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Safety first: relays open, PWM off, then we talk about it.
                self._safe_state()
                self.restarts[name] = self.restarts.get(name, 0) + 1
                _log.exc(e, "task %s died (restart %d)", name, self.restarts[name])
                if critical:
                    self._note_death(name)
            self._checkin.pop(name, None)
            await asyncio.sleep_ms(delay)
            delay = min(delay * 2, 10000)

    def _note_death(self, name):
        now = time.ticks_ms()
        recent = [t for t in self._deaths.get(name, ()) if time.ticks_diff(now, t) < _DEATH_WINDOW_MS]
        recent.append(now)
        self._deaths[name] = recent
        if len(recent) >= _MAX_DEATHS and self.escalated is None:
            self.escalated = name
            _log.error("critical task %s keeps dying: letting the watchdog reset", name)

    def late(self):
        """Names of the critical tasks that have not checked in on time (empty: all well).
        Called every 500 ms: it also forgets the deaths older than the window, which
        days later would read as recent once the ticks wrap (2**29 ms on a 32-bit port)."""
        now = time.ticks_ms()
        for recent in self._deaths.values():
            while recent and time.ticks_diff(now, recent[0]) >= _DEATH_WINDOW_MS:
                recent.pop(0)
        late = []
        for name, _f, critical, checkin_ms in self._specs:
            if not critical:
                continue
            t = self._checkin.get(name)
            if t is None or time.ticks_diff(now, t) > checkin_ms:
                late.append(name)
        return late

    async def run(self):
        for name, factory, critical, _c in self._specs:
            self.checkin(name)  # a grace period for the first check-in
            self.tasks[name] = asyncio.create_task(self._keep(name, factory, critical))
        self._wdt.start(WDT_TIMEOUT_MS)
        stalled = False
        while True:
            late = self.late()
            if late or self.escalated:
                if not stalled:
                    self._safe_state()
                    if self._hold:
                        self._hold(True)  # protection may not be running: no charging
                    _log.error("not feeding the watchdog: late %s escalated %s", late, self.escalated)
                stalled = True
            else:
                if stalled and self._hold:
                    self._hold(False)
                stalled = False
                self._wdt.feed()
            await asyncio.sleep_ms(_FEED_EVERY_MS)
