# Conditions that are no danger to people (docs/errors.md, "Mild conditions"): the PWM
# stops at once (X1) and the relays open once the vehicle's current is gone, or at the
# latest 6 s after the stop (Annex A seq. 10.2), not under full load at once. A charge
# such a pause ended resumes lower, and a repeat in the session waits longer. The charger
# owns it; the conditions waiting for the current to go are its `pausing` bits.
import time
from micropython import const

from evse import faults
from evse import limits
import log

_log = log.get("charger")

# MET only when power management lost its external meter (power.py): the internal
# meter's MET blinds OVP and OCP and stays an immediate trip.
MILD = faults.LVP | faults.MIS | faults.FAN | faults.CAN | faults.MET
CURRENT_GONE_A = 1.0  # every phase below this: the vehicle has stopped drawing
# A charge a mild condition paused resumes at most at this share of the offer before it
# (a weak grid's voltage recovers with less current), for the rest of the session ...
MILD_RESUME_SHARE = 0.75
MILD_LIMIT = "after_fault"  # ... as this named limit (limit_binding shows it)
# ... and each repeat in the session waits longer after the clear before resuming.
_MILD_BACKOFF_MS = const(20000)  # the second pause; doubled for each one after
_MILD_BACKOFF_MAX_MS = const(600000)


class MildPause:
    def __init__(self, ch):
        self.ch = ch
        self.count = 0  # pauses of this session for a mild condition
        self._backoff_len = 0  # the wait before the next resume, from the clear
        self.backoff_ms = None  # ... counted since then (None: not started or over)

    def pause(self, bit):
        """A mild condition (MILD): the PWM stops at once and the relays stay closed while
        the vehicle follows, until its current is gone (current_gone()), it leaves C, or
        6 s have passed; then the fault stands as any other, without state F. Any other
        bit, and any bit while the relays are open, is an ordinary trip."""
        ch = self.ch
        if ch.pausing & bit:
            return
        if bit & ~MILD or not ch._relays.closed:
            ch.trip(bit)
            return
        if not ch.pausing and ch.session is not None:
            # Counted once per pause, however many conditions it gathers.
            self.count += 1
            cap = max(limits.MIN_A, int(ch.offer.last_a * MILD_RESUME_SHARE))
            old = ch.external.get(MILD_LIMIT)
            if old is None or cap < old:
                ch.external[MILD_LIMIT] = cap
        ch.pausing |= bit
        o = ch.offer
        o.stop()
        if o.stop_ms is None:  # the PWM was stopped already: its window runs
            o.stop_ms = ch.clock()
        if ch._relays.closed:
            _log.warning("%s: PWM stopped, the relays open once the current is gone",
                         faults.codes(bit))
        else:
            self.end()  # an interrupt opened them meanwhile

    def current_gone(self):
        """A meter reading with every phase below CURRENT_GONE_A: a pause waiting for
        the vehicle opens now, without load."""
        if self.ch.pausing:
            self.ch._relays.open()
            self.end()

    def end(self):
        """The relays are open: the paused conditions become ordinary active faults
        (protection records them and applies their clear rules)."""
        ch = self.ch
        ch._relays.open()
        st = ch._irq_off()
        bits = ch.pausing
        ch.pausing = 0
        new = bits & ~ch.active
        ch.active |= bits
        ch.tripped_new |= new
        ch._irq_on(st)
        if ch.session is not None and self.count > 1:
            n = min(self.count - 2, 5)
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

    def forget(self):
        """A new session starts without the pauses of the one before."""
        self.count = 0
        self._backoff_len = 0
        self.backoff_ms = None
        self.ch.external.pop(MILD_LIMIT, None)
