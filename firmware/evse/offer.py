# The current the pilot offers, and when it may change, stop and come back: the limit
# composed and a cut at once when it falls below the offer; a raise only 5 s after any
# change of the offer and once the limit has stayed 1 A above it for 5 s; a pause the
# limits make lasts `min_pause_s`; a mild condition's pause (the relays open once the
# vehicle's current is gone) resumes lower and, repeated, later; a car asleep in B2 under
# a new offer gets the wake-up of IEC 61851-1:2017 A.5.3; and the reference over-current
# follows, the offers the vehicle may still draw (docs/errors.md, "Current limits" and
# "Mild conditions"; docs/charging.md). The charger owns it; every PWM write here checks
# a fault the RCD interrupt may trip meanwhile, as every write of the pilot does.
import time
from micropython import const

from evse import faults
from evse import limits
import log
from evse import pilot

_log = log.get("charger")

_RAISE_EVERY_MS = const(5000)  # an increase comes >= 5 s after any change of the offer
# ... and once the limit has stayed _RAISE_MARGIN_A above the offer for _RAISE_HOLD_MS
# (hysteresis: a limit wobbling around a value moves nothing; the raise goes to the
# lowest value the limit had meanwhile, so its noise is not chased either).
_RAISE_HOLD_MS = const(5000)
_RAISE_MARGIN_A = const(1)  # A (an int: a const costs no heap; the sums stay floats)
_FOLLOW_MS = const(5000)  # the vehicle follows a lower offer within 5 s of the duty's change
_REF_SLOTS = const(4)  # offers the duty left within the last _FOLLOW_MS, kept for OCP

# Mild conditions, no danger to people (docs/errors.md, "Mild conditions"): the PWM stops
# at once (X1) and the relays open once the vehicle's current is gone, or at the latest
# 6 s after the stop (Annex A seq. 10.2), not under full load at once. MET only when power
# management lost its external meter (power.py): the internal meter's MET blinds OVP and
# OCP and stays an immediate trip.
MILD = faults.LVP | faults.MIS | faults.FAN | faults.CAN | faults.MET
CURRENT_GONE_A = 1.0  # every phase below this: the vehicle has stopped drawing
# A charge a mild condition paused resumes at most at this many quarters of the offer
# before it (a weak grid's voltage recovers with less current), for the rest of the
# session ...
_MILD_RESUME_QUARTERS = const(3)
MILD_LIMIT = "after_fault"  # ... as this named limit (limit_binding shows it)
# ... and each repeat in the session waits longer after the clear before resuming.
_MILD_BACKOFF_MS = const(20000)  # the second pause; doubled for each one after
_MILD_BACKOFF_MAX_MS = const(600000)

# Wake-up of a car that fell asleep plugged in (IEC 61851-1:2017 A.5.3, STANDARDS.md §1.4):
# it stays in B2 under a fresh PWM offer this long, then the pilot goes F, then X1, then
# the PWM again. Once per resume of the offer, at most WAKE_MAX times a session.
_WAKE_AFTER_MS = const(30000)
_WAKE_F_MS = const(4000)
_WAKE_X1_MS = const(750)
WAKE_MAX = 3
# Wake-up phases
WK_OFF = const(0)  # not armed: the car answered this offer, or it was tried once already
_WK_ARMED = const(1)  # a new offer: waiting for the car to close S2
WK_F = const(2)  # state F driven
_WK_X1 = const(3)  # then X1, before the PWM comes back


# Whether the limit has stayed at or above a level (a raise's, a resume's): since when,
# the lowest value meanwhile, and `held` once that lasted the hold (a flag from then on:
# a start days old reads as negative once the ticks wrap). Kept in a list of these
# fields, not an object of a class of its own (a class costs heap on a board); feeding
# it allocates nothing.
_LEVEL = const(0)
_SINCE = const(1)
_LOW = const(2)
_HELD = const(3)
_ON = const(4)


def _steady_feed(st, now_ms, value, level, hold_ms):
    if level != st[_LEVEL]:
        st[_LEVEL] = level
        st[_ON] = st[_HELD] = False
    if value < level:
        st[_ON] = st[_HELD] = False
    elif not st[_ON]:
        st[_ON] = True
        st[_SINCE] = now_ms
        st[_LOW] = value
    else:
        if value < st[_LOW]:
            st[_LOW] = value
        if not st[_HELD]:
            st[_HELD] = time.ticks_diff(now_ms, st[_SINCE]) >= hold_ms


class Offer:
    def __init__(self, ch):
        self.ch = ch
        self.changed_ms = None  # last change of the offer (up, down, stop); None: > 5 s ago
        self.last_a = 0.0  # the last current the PWM offered (kept through a stop)
        # The limit at or above the level a raise needs (the last offer + 1 A), and at
        # or above 6 A during a pause: since when, and how low meanwhile.
        self._up = [0.0, 0, 0.0, False, False]
        self._ok = [0.0, 0, 0.0, False, False]
        self.pause_ms = None  # a pause the limits made began then (None: none)
        self._pause_over = False  # ... and has lasted min_pause_s (a flag: the ticks wrap)
        # Offers the duty left for a lower one (a stop included) and when: for _FOLLOW_MS
        # the vehicle may still draw them (over-current's reference, follow_ref_a()).
        self._left_a = [0.0] * _REF_SLOTS
        self._left_ms = [0] * _REF_SLOTS
        self.stop_ms = None  # the PWM stopped then with the relays closed (None: not)
        self.wake = WK_OFF  # the wake-up's phase
        self._wake_ms = 0  # when the offer was armed, or the wake-up's phase began
        self.pausing = 0  # mild faults waiting for the current to go (PWM already stopped)
        self.mild_pauses = 0  # pauses of this session for a mild condition
        self._backoff_len = 0  # the wait before the next resume, from the clear
        self.backoff_ms = None  # ... counted since then (None: not started or over)

    def update(self, now_ms):
        """Composes the limit (the charger's limit_a, limit_binding) and feeds the raise
        and resume rules with it."""
        ch = self.ch
        s = ch.settings
        ch.limit_a, ch.limit_binding = limits.compose(
            s["max_current_a"], limits.MODEL_A, ch.cable_a, ch.thermal_a, ch.external
        )
        lim = ch.limit_a
        if self.pause_ms is None:
            _steady_feed(self._up, now_ms, lim, self.last_a + _RAISE_MARGIN_A, _RAISE_HOLD_MS)
        else:
            _steady_feed(self._ok, now_ms, lim, limits.MIN_A, _RAISE_HOLD_MS)
            if not self._pause_over:
                # First, whatever the limit: a pause that lasts days must not read its
                # start as negative once the ticks wrap (2**29 ms on a 32-bit port).
                self._pause_over = time.ticks_diff(now_ms, self.pause_ms) >= self._min_pause_ms()

    def _min_pause_ms(self):
        return self.ch.settings["min_pause_s"] * 1000

    def cut_now(self):
        # The reading or frame that lowered a limit is the instant the offer must follow
        # (docs/power-management.md): not the next control tick, which a busy loop delays.
        # Only ever downwards, so none of the tick's conditions for an offer is skipped.
        ch = self.ch
        self.update(ch.clock())
        if ch.limit_a >= ch.offered_a:
            return
        if ch.limit_a < limits.MIN_A:
            self.stop(pause=True)
        else:
            self.write(limits.offer_of(ch.limit_a))

    def write(self, amps):
        """Offers `amps` on the PWM. An interrupt may trip a fault after a caller's checks
        (the RCD handler runs `trip`): the fault is checked once more with interrupts off
        right before the write, so no offer follows the trip's state F."""
        ch = self.ch
        cp = ch._cp
        if cp.duty_pm <= 0:
            ch._pwm_proof = False  # a new PWM run: the diode is proven again
            self.changed_ms = ch.clock()
        elif amps != ch.offered_a:
            self.changed_ms = ch.clock()
            if amps < self.last_a:
                self._left(self.last_a, self.changed_ms)
        duty = pilot.duty_pm(amps)
        st = ch._irq_off()
        if not ch.active:
            if amps != self.last_a:
                self._up[_ON] = self._up[_HELD] = False  # its level moved with the offer
            self.last_a = amps
            cp.pwm(duty)
            ch.offered_a = amps
        ch._irq_on(st)
        if ch.active:  # a handler the port had already scheduled may run at the branch
            cp.low()
            ch.offered_a = 0.0

    def set(self, target):
        """The offer the tick decided on: written when it changes or the PWM is off."""
        if target != self.ch.offered_a or self.ch._cp.duty_pm <= 0:
            self.write(target)
        self.pause_ms = None
        self.stop_ms = None

    def stop(self, pause=False, count=True):
        """Stops the PWM offer. pause: the limits stop it (below 6 A), which starts a
        pause of at least min_pause_s; count: the session goes on (a pause it counts)."""
        ch = self.ch
        cp = ch._cp
        if cp.duty_pm > 0:
            cp.high()
            if ch.active:
                cp.low()  # a fault tripped by an interrupt meanwhile: its F stands
            self.stop_ms = self.changed_ms = ch.clock()
            self._left(self.last_a, self.changed_ms)
            if count and ch.session is not None:
                ch.session.pauses += 1
            if pause:
                self.pause_ms = self.stop_ms
                self._pause_over = False
                self._ok[_ON] = self._ok[_HELD] = False
                self._up[_ON] = self._up[_HELD] = False  # not fed in the pause: would be stale
        ch.offered_a = 0.0

    def stopping(self):
        """The PWM stopped with the relays still closed: the up to 6 s the vehicle has
        to follow a stop (Annex A seq. 10.2)."""
        return self.stop_ms is not None and self.ch._relays.closed

    def raise_held(self, now_ms):
        """True within 5 s of the last change of the offer, whichever way it went: the
        vehicle is still following it, so no increase yet."""
        t = self.changed_ms
        if t is None:
            return False
        if time.ticks_diff(now_ms, t) < _RAISE_EVERY_MS:
            return True
        self.changed_ms = None
        return False

    def target(self, now_ms):
        """What the PWM may offer now, 0.0 for a pause (docs/errors.md, "Current
        limits"). Never above the limit: every rule here only holds the offer lower."""
        lim = self.ch.limit_a
        target = limits.offer_of(lim)
        if self.pause_ms is not None:
            # A pause the limits made ends once it has lasted min_pause_s, with the limit
            # 1 A above 6 A, or at 6 A or more for 5 s (a steady 6 A share of a pool: at
            # the lowest value it had meanwhile; a limit wobbling around 6 A has not).
            if not target or not self._pause_over:
                return 0.0
            if lim >= limits.MIN_A + _RAISE_MARGIN_A:
                return target
            if self._ok[_HELD]:
                return min(target, limits.offer_of(self._ok[_LOW]))
            return 0.0
        last = self.last_a
        if last and target > last:
            # No increase within 5 s of a change (a raise, a reduction, a stop), and only
            # once the limit has stayed 1 A above the last offer for 5 s: then to the
            # lowest value it had meanwhile.
            if self.raise_held(now_ms) or not self._up[_HELD]:
                return last
            return min(target, limits.offer_of(self._up[_LOW]))
        return target

    def _left(self, amps, now_ms):
        """The duty left an offer of `amps` for a lower one at now_ms."""
        left = self._left_a
        j = 0
        for i in range(_REF_SLOTS):
            if left[i] <= 0.0:
                j = i
                break
            if left[i] < left[j]:
                j = i
        if left[j] > amps:  # all slots taken: the smallest is merged, kept the longer
            amps = left[j]
        left[j] = amps
        self._left_ms[j] = now_ms

    def follow_ref_a(self, now_ms):
        """Over-current's reference: the current the vehicle may still draw. The offer
        now, every offer the duty left less than 5 s ago (timed from the change of the
        duty, not from a meter reading), and for the whole 6 s window of a stop with the
        relays closed (Annex A seq. 10.2) the offer before it. Run at every control tick
        too: a time 5 s old is forgotten long before the ticks wrap."""
        ref = self.ch.offered_a
        if self.stopping() and self.last_a > ref:
            ref = self.last_a
        left = self._left_a
        for i in range(_REF_SLOTS):
            a = left[i]
            if a > 0.0:
                if time.ticks_diff(now_ms, self._left_ms[i]) >= _FOLLOW_MS:
                    left[i] = 0.0
                elif a > ref:
                    ref = a
        return ref

    # ---- the wake-up of a sleeping car (IEC 61851-1:2017 A.5.3) ------------------------
    @property
    def waking(self):
        """The wake-up holds the pilot (F, then X1): the EV's pause, not ours."""
        return self.wake >= WK_F

    def give(self, now_ms, target):
        """The offer while the session may have it. A new offer (a start, a resume after
        any pause) arms the wake-up: a car that sleeps through it sits in B2 for good."""
        ch = self.ch
        w = self.wake
        if w == WK_F:
            if time.ticks_diff(now_ms, self._wake_ms) < _WAKE_F_MS:
                return
            ch._x1()
            self.wake = _WK_X1
            self._wake_ms = ch.clock()  # from the write: the tick may have begun earlier
            return
        if w == _WK_X1:
            if time.ticks_diff(now_ms, self._wake_ms) < _WAKE_X1_MS:
                return
            self.wake = WK_OFF  # its own PWM is no new offer: one try per resume
        elif ch._cp.duty_pm <= 0:
            self.wake = _WK_ARMED
            self._wake_ms = now_ms
        self.set(target)
        if self.wake == _WK_ARMED:
            self._wake_watch(now_ms)

    def _wake_watch(self, now_ms):
        ch = self.ch
        if ch.cp_state != pilot.STATE_B:
            self.wake = WK_OFF  # it closed S2: awake
            return
        if ch._relays.closed or time.ticks_diff(now_ms, self._wake_ms) < _WAKE_AFTER_MS:
            return
        s = ch.session
        self.wake = WK_OFF
        if s.wakeups >= WAKE_MAX:
            _log.warning("EV stayed in B2 under the PWM: no wake-up left this session")
            return
        # The offer stops (a change: the next raise waits 5 s) and the pilot goes F. The
        # relays are open in B; an interrupt's trip drives F as well.
        s.wakeups += 1
        self.changed_ms = ch.clock()
        ch._cp.low()
        ch.offered_a = 0.0
        self.wake = WK_F
        self._wake_ms = ch.clock()  # F's 4 s from its write
        _log.warning("EV stayed in B2 %d s under the PWM: wake-up %d of %d (A.5.3)",
                     _WAKE_AFTER_MS // 1000, s.wakeups, WAKE_MAX)

    def wake_end(self):
        """Nothing is offered any more (a pause, the session's end): a wake-up in
        progress gives the pilot back at X1 (a fault's F, if one stands, stays)."""
        if self.wake == WK_F:
            self.ch._x1()
        self.wake = WK_OFF

    # ---- a mild condition's pause -----------------------------------------------------
    def pause(self, bit):
        """A mild condition (MILD): the PWM stops at once and the relays stay closed while
        the vehicle follows, until its current is gone (current_gone()), it leaves C, or
        6 s have passed; then the fault stands as any other, without state F. Any other
        bit, and any bit while the relays are open, is an ordinary trip."""
        ch = self.ch
        if self.pausing & bit:
            return
        if bit & ~MILD or not ch._relays.closed:
            ch.trip(bit)
            return
        if not self.pausing and ch.session is not None:
            # Counted once per pause, however many conditions it gathers.
            self.mild_pauses += 1
            cap = max(limits.MIN_A, int(self.last_a * _MILD_RESUME_QUARTERS / 4))
            old = ch.external.get(MILD_LIMIT)
            if old is None or cap < old:
                ch.external[MILD_LIMIT] = cap
        self.pausing |= bit
        self.stop()
        if self.stop_ms is None:  # the PWM was stopped already: its window runs
            self.stop_ms = ch.clock()
        if ch._relays.closed:
            _log.warning("%s: PWM stopped, the relays open once the current is gone",
                         faults.codes(bit))
        else:
            self.end_pause()  # an interrupt opened them meanwhile

    def current_gone(self):
        """A meter reading with every phase below CURRENT_GONE_A: a pause waiting for
        the vehicle opens now, without load."""
        if self.pausing:
            self.ch._relays.open()
            self.end_pause()

    def end_pause(self):
        """The relays are open: the paused conditions become ordinary active faults
        (protection records them and applies their clear rules)."""
        ch = self.ch
        ch._relays.open()
        st = ch._irq_off()
        bits = self.pausing
        self.pausing = 0
        new = bits & ~ch.active
        ch.active |= bits
        ch.tripped_new |= new
        ch._irq_on(st)
        if ch.session is not None and self.mild_pauses > 1:
            n = min(self.mild_pauses - 2, 5)
            self._backoff_len = min(_MILD_BACKOFF_MS << n, _MILD_BACKOFF_MAX_MS)
        self.backoff_ms = None

    def backoff_held(self, now_ms):
        """True while a repeated mild pause waits out its back-off after the clear."""
        if not self._backoff_len:
            return False
        if self.backoff_ms is None:
            self.backoff_ms = now_ms
        if time.ticks_diff(now_ms, self.backoff_ms) < self._backoff_len:
            return True
        self._backoff_len = 0
        self.backoff_ms = None
        return False

    def forget_pauses(self):
        """A new session starts without the pauses of the one before."""
        self.mild_pauses = 0
        self._backoff_len = 0
        self.backoff_ms = None
        self.ch.external.pop(MILD_LIMIT, None)
