# Wake-up of a car that fell asleep plugged in (IEC 61851-1:2017 A.5.3, STANDARDS.md §1.4):
# it stays in B2 under a fresh PWM offer _WAKE_AFTER_MS, then the pilot goes F, then X1,
# then the PWM again. Once per resume of the offer, at most WAKE_MAX times a session. The
# charger owns it and hands it the offer while the session may have one.
import time
from micropython import const

from evse import pilot
import log

_log = log.get("charger")

_WAKE_AFTER_MS = const(30000)
_WAKE_F_MS = const(4000)
_WAKE_X1_MS = const(750)
WAKE_MAX = 3

# Wake-up phases
WK_OFF = const(0)  # not armed: the car answered this offer, or it was tried once already
_WK_ARMED = const(1)  # a new offer: waiting for the car to close S2
WK_F = const(2)  # state F driven
_WK_X1 = const(3)  # then X1, before the PWM comes back


class Wakeup:
    def __init__(self, ch):
        self.ch = ch
        self.phase = WK_OFF
        self._ms = 0  # when the offer was armed, or the wake-up's phase began

    @property
    def waking(self):
        """The wake-up holds the pilot (F, then X1): the EV's pause, not ours."""
        return self.phase >= WK_F

    def offer_or_wake(self, now_ms, target):
        """The offer while the session may have it. A new offer (a start, a resume after
        any pause) arms the wake-up: a car that sleeps through it sits in B2 for good."""
        ch = self.ch
        w = self.phase
        if w == WK_F:
            if time.ticks_diff(now_ms, self._ms) < _WAKE_F_MS:
                return
            ch._x1()
            self.phase = _WK_X1
            self._ms = ch.clock()  # from the write: the tick may have begun earlier
            return
        if w == _WK_X1:
            if time.ticks_diff(now_ms, self._ms) < _WAKE_X1_MS:
                return
            self.phase = WK_OFF  # its own PWM is no new offer: one try per resume
        elif ch._cp.duty_pm <= 0:
            self.phase = _WK_ARMED
            self._ms = now_ms
        ch.offer.set(target)
        if self.phase == _WK_ARMED:
            self._watch(now_ms)

    def _watch(self, now_ms):
        ch = self.ch
        if ch.cp_state != pilot.STATE_B:
            self.phase = WK_OFF  # it closed S2: awake
            return
        if ch._relays.closed or time.ticks_diff(now_ms, self._ms) < _WAKE_AFTER_MS:
            return
        s = ch.session
        self.phase = WK_OFF
        if s.wakeups >= WAKE_MAX:
            _log.warning("EV stayed in B2 under the PWM: no wake-up left this session")
            return
        # The offer stops (a change: the next raise waits 5 s) and the pilot goes F. The
        # relays are open in B; an interrupt's trip drives F as well.
        s.wakeups += 1
        ch.offer.changed_ms = ch.clock()
        ch._cp.low()
        ch.offered_a = 0.0
        self.phase = WK_F
        self._ms = ch.clock()  # F's 4 s from its write
        _log.warning("EV stayed in B2 %d s under the PWM: wake-up %d of %d (A.5.3)",
                     _WAKE_AFTER_MS // 1000, s.wakeups, WAKE_MAX)

    def end(self):
        """Nothing is offered any more (a pause, the session's end): a wake-up in
        progress gives the pilot back at X1 (a fault's F, if one stands, stays)."""
        if self.phase == WK_F:
            self.ch._x1()
        self.phase = WK_OFF
