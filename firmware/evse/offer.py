# The current the pilot offers, and when it may change: the limit composed and a cut at
# once when it falls below the offer; a raise only 5 s after any change of the offer and
# once the limit has stayed 1 A above it for 5 s; a pause the limits make lasts
# `min_pause_s`; and the reference over-current follows, the offers the vehicle may still
# draw (docs/errors.md, "Current limits"). The charger owns it; the PWM writes here check
# a fault the RCD interrupt may trip meanwhile, as every write of the pilot does.
import time
from micropython import const

from evse import limits
from evse import pilot

_RAISE_EVERY_MS = const(5000)  # an increase comes >= 5 s after any change of the offer
# ... and once the limit has stayed RAISE_MARGIN_A above the offer for _RAISE_HOLD_MS
# (hysteresis: a limit wobbling around a value moves nothing; the raise goes to the
# lowest value the limit had meanwhile, so its noise is not chased either).
_RAISE_HOLD_MS = const(5000)
RAISE_MARGIN_A = 1.0
_FOLLOW_MS = const(5000)  # the vehicle follows a lower offer within 5 s of the duty's change
_REF_SLOTS = const(4)  # offers the duty left within the last _FOLLOW_MS, kept for OCP


class _Steady:
    """Whether a value has stayed at or above a level: since when, the lowest value
    meanwhile, and `held` once that lasted the hold (a flag from then on: a start days
    old reads as negative once the ticks wrap). Allocates nothing."""

    def __init__(self):
        self.level = 0.0
        self.since = 0
        self.low = 0.0
        self.held = False
        self.on = False

    def reset(self):
        self.on = self.held = False

    def feed(self, now_ms, value, level, hold_ms):
        if level != self.level:
            self.level = level
            self.on = self.held = False
        if value < level:
            self.on = self.held = False
        elif not self.on:
            self.on = True
            self.since = now_ms
            self.low = value
        else:
            if value < self.low:
                self.low = value
            if not self.held:
                self.held = time.ticks_diff(now_ms, self.since) >= hold_ms


class Offer:
    def __init__(self, ch):
        self.ch = ch
        self.changed_ms = None  # last change of the offer (up, down, stop); None: > 5 s ago
        self.last_a = 0.0  # the last current the PWM offered (kept through a stop)
        # The limit at or above the level a raise needs (the last offer + 1 A), and at
        # or above 6 A during a pause: since when, and how low meanwhile.
        self._up = _Steady()
        self._ok = _Steady()
        self.pause_ms = None  # a pause the limits made began then (None: none)
        self._pause_over = False  # ... and has lasted min_pause_s (a flag: the ticks wrap)
        # Offers the duty left for a lower one (a stop included) and when: for _FOLLOW_MS
        # the vehicle may still draw them (over-current's reference, follow_ref_a()).
        self._left_a = [0.0] * _REF_SLOTS
        self._left_ms = [0] * _REF_SLOTS
        self.stop_ms = None  # the PWM stopped then with the relays closed (None: not)

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
            self._up.feed(now_ms, lim, self.last_a + RAISE_MARGIN_A, _RAISE_HOLD_MS)
        else:
            self._ok.feed(now_ms, lim, limits.MIN_A, _RAISE_HOLD_MS)
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
                self._up.reset()  # its level moved with the offer
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
                self._ok.reset()
                self._up.reset()  # not fed in the pause: what it holds would be stale
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
            if lim >= limits.MIN_A + RAISE_MARGIN_A:
                return target
            if self._ok.held:
                return min(target, limits.offer_of(self._ok.low))
            return 0.0
        last = self.last_a
        if last and target > last:
            # No increase within 5 s of a change (a raise, a reduction, a stop), and only
            # once the limit has stayed 1 A above the last offer for 5 s: then to the
            # lowest value it had meanwhile.
            if self.raise_held(now_ms) or not self._up.held:
                return last
            return min(target, limits.offer_of(self._up.low))
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
