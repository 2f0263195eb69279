# The charging state machine: the one owner of the relays, the CP generator and the lock.
#
# Two entry points run it: `tick_pilot()` every ~10 ms (sample CP, classify, debounce,
# open at once when the vehicle leaves C/D) and `tick_control()` every ~100 ms (limits,
# lock, offer, the Annex A timers, self-test); a limit that falls below the offer cuts it
# at once (`set_external_limit`). Everything else the offer does is calm, for the cars
# that stop asking after a few interruptions (docs/errors.md, "Current limits"): whole
# 0.5 A steps, a raise only once the limit has stayed 1 A above the offer for 5 s, and
# a pause the limits make lasts `min_pause_s`, then needs 7 A (or 6 A held for 5 s).
# Faults come in through `trip()`, which opens the relays and drives the pilot to state
# F before anything else and allocates nothing, so protection code and IRQ handlers can
# call it directly.
#
# The RCD interrupt runs trip() at any moment (docs/hal.md, "What the interrupts share"):
# the fault bits are read and changed only in sections with interrupts off (straight-line
# code), and every main-context write of the relays or the pilot is either done in such a
# section or checked again right after it, so a trip is never lost or undone.
import time
from micropython import const

from evse import faults
from evse import limits
import log
from evse import pilot

_log = log.get("charger")

_F_HOLD_MS = const(1000)  # C -> F >= 300 ms -> X1 after a fault (STANDARDS.md §1.4)
_FORCE_OPEN_MS = const(6000)  # PWM stopped, EV still in C: open under load (seq. 10.2)
_RAISE_EVERY_MS = const(5000)  # an increase comes >= 5 s after any change of the offer
# ... and once the limit has stayed RAISE_MARGIN_A above the offer for _RAISE_HOLD_MS
# (hysteresis: a limit wobbling around a value moves nothing; the raise goes to the
# lowest value the limit had meanwhile, so its noise is not chased either).
_RAISE_HOLD_MS = const(5000)
RAISE_MARGIN_A = 1.0
_FOLLOW_MS = const(5000)  # the vehicle follows a lower offer within 5 s of the duty's change
_REF_SLOTS = const(4)  # offers the duty left within the last _FOLLOW_MS, kept for OCP
_LOCK_CONFIRM_MS = const(1000)  # lock feedback must confirm within 1 s, one retry
_SELFTEST_MS = const(500)  # RCD test input -> fault line within 500 ms, and back
_PP_HOLD_MS = const(300)  # PP out of window this long -> ERR PP
_CLOSE_CHECK_MS = const(1000)  # aux contacts must follow the coil within 1 s
# The weld check's window (protection.py): the lock opens only after both auxiliary
# contacts have reported open this long, so a weld is known before the plug is free.
_CONTACTS_OPEN_MS = const(500)
# Longest from the end of a session under load to the lock reading open: the vehicle's
# time to stop drawing, the weld window, the lock's confirm with its retry, plus a
# second of ticks (OCPP UnlockConnector answers within it).
UNLOCK_WORST_MS = const(_FORCE_OPEN_MS + _CONTACTS_OPEN_MS + 2 * _LOCK_CONFIRM_MS + 1000)
# Wake-up of a car that fell asleep plugged in (IEC 61851-1:2017 A.5.3, STANDARDS.md §1.4):
# it stays in B2 under a fresh PWM offer this long, then the pilot goes F, then X1, then
# the PWM again. Once per resume of the offer, at most WAKE_MAX times a session.
_WAKE_AFTER_MS = const(30000)
_WAKE_F_MS = const(4000)
_WAKE_X1_MS = const(750)
WAKE_MAX = 3
# Trips that latch the moment they are made, in trip() itself or right beside it: the
# RCD interrupt's IRD is latched even if the protection tick that records it never
# completes; a latching ELK is latched by the lock code in the same step as its trip.
LATCH_AT_TRIP = faults.IRD | faults.ELK
_LATCH_IN_TRIP = faults.IRD
# A lock that never confirmed at the start of a session is not a protective trip (no
# current has flowed): ERR ELK, released, cleared by the unplug. This many such failures
# on consecutive plug-ins latch it (the lock is broken, not the plug badly seated).
LOCK_FAILS_LATCH = const(3)
# Conditions that are no danger to people (docs/errors.md, "Mild conditions"): the PWM
# stops at once (X1) and the relays open once the vehicle's current is gone, or at the
# latest _FORCE_OPEN_MS after the stop (Annex A seq. 10.2), not under full load at once.
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

SESSION_SAMPLES = 48  # power samples kept per session record (history chart)

# Session start/stop modes as the history shows them.
START_MODES = ("RFID", "Free", "OCPP", "App")

# Lock states
LOCK_NONE = const(0)  # no lock fitted (Case C)
LOCK_OPEN = const(1)
LOCK_ENGAGING = const(2)
LOCK_LOCKED = const(3)

# Lock test phases (a technician's clear of ELK)
_LT_IDLE = const(0)
_LT_START = const(1)
_LT_ENGAGE = const(2)
_LT_RELEASE = const(3)

# Wake-up phases
_WK_OFF = const(0)  # not armed: the car answered this offer, or it was tried once already
_WK_ARMED = const(1)  # a new offer: waiting for the car to close S2
_WK_F = const(2)  # state F driven
_WK_X1 = const(3)  # then X1, before the PWM comes back

# RCD self-test phases
_ST_IDLE = const(0)
_ST_DRIVE = const(1)
_ST_RELEASE = const(2)
_ST_PASSED = const(3)
_ST_CANCEL = const(4)  # test input released early: waiting for the fault line to fall


class Session:
    def __init__(self, id_tag, start_mode, start_s, start_wh):
        self.id_tag = id_tag
        self.start_mode = start_mode
        self.start_s = start_s
        self.start_wh = start_wh
        self.energy_wh = 0.0
        self.stop_mode = None
        self.end_s = None
        self.charged = False  # relays closed at least once
        self.pauses = 0  # the PWM offer stopped while the session went on (any cause)
        self.tx_id = None  # set by OCPP
        self.wakeups = 0  # wake-up sequences run for a car asleep in B2
        # Power over the session for the history chart: one sample per `sample_s`, in
        # 0.1 kW; when full, pairs are averaged and the interval doubles (bounded).
        self.power_dkw = []
        self.sample_s = 60

    def add_power_sample(self, power_w):
        p = self.power_dkw
        p.append(int(power_w / 100 + 0.5))
        if len(p) >= SESSION_SAMPLES:
            self.power_dkw = [(p[i] + p[i + 1] + 1) // 2 for i in range(0, len(p) - 1, 2)]
            self.sample_s *= 2

    def as_dict(self):
        return {
            "active": self.stop_mode is None,
            "energy_kwh": round(self.energy_wh / 1000, 3),
            "id_tag": self.id_tag,
            "start_mode": self.start_mode,
            "start_s": self.start_s,
            "duration_min": 0,
            "wakeups": self.wakeups,
            "pauses": self.pauses,
        }


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


class Charger:
    def __init__(self, hw, settings):
        self.hw = hw
        self.clock = time.ticks_ms  # replaceable in tests; calling it allocates nothing
        self._cp = hw.cp
        self._relays = hw.relays
        self._lock_hw = hw.lock
        self.settings = settings
        self._clf = pilot.Classifier()
        self.cp_cal = pilot.ZeroCal()  # the zero of the CP measurement (docs/errors.md)
        self._deb = pilot.Debouncer()
        self.cp_state = pilot.STATE_A
        self.hi_mv = 0
        self.lo_mv = 0
        self.active = 0  # fault bits currently active
        self.latched = 0  # latched protective trips (persisted by protection.py)
        self._trip_ms = 0  # the last new fault: its state F lasts _F_HOLD_MS from here
        self._f_hold = 0  # fault bits whose F hold may still run (see _fault_outputs)
        self.tripped_new = 0  # bits tripped since protection last looked (its job to log)
        self.session = None
        self.finishing = False  # session ended, plug still in
        self.unavailable = False  # OCPP ChangeAvailability Inoperative
        self._estop = False  # a safe state was entered: the next control tick ends the session
        self.halted = False  # the supervisor holds the charger: a critical task is late
        self.offered_a = 0.0  # what the PWM offers now (0 = static)
        self.limit_a = 0.0
        self.limit_binding = "max_current"
        self.external = {}  # named limits registered by other features
        self.thermal_a = None
        self.cable_a = None
        self._changed_ms = None  # last change of the offer (up, down, stop); None: > 5 s ago
        self._last_a = 0.0  # the last current the PWM offered (kept through a stop)
        # The limit at or above the level a raise needs (the last offer + 1 A), and at
        # or above 6 A during a pause: since when, and how low meanwhile.
        self._up = _Steady()
        self._ok = _Steady()
        self._pause_ms = None  # a pause the limits made began then (None: none)
        self._pause_over = False  # ... and has lasted min_pause_s (a flag: the ticks wrap)
        # Offers the duty left for a lower one (a stop included) and when: for _FOLLOW_MS
        # the vehicle may still draw them (over-current's reference, follow_ref_a()).
        self._left_a = [0.0] * _REF_SLOTS
        self._left_ms = [0] * _REF_SLOTS
        self._pwm_stop_ms = None
        self.lock_state = LOCK_NONE
        self._lock_ms = 0
        self._lock_tries = 0
        self._lock_test = _LT_IDLE
        self._lock_test_ms = 0
        self.lock_tested = False  # the lock engaged and released on command since ELK latched
        self.lock_fails = 0  # plug-ins in a row whose lock never confirmed (RAM only)
        self._lock_seated = False  # the lock confirmed since the vehicle plugged in
        self._unlock_ms = None  # the lock released then: its feedback must fall
        self.elk_unplugged = False  # the vehicle left since a lock that never confirmed
        self.pausing = 0  # mild faults waiting for the current to go (PWM already stopped)
        self.mild_pauses = 0  # pauses of this session for a mild condition
        self._backoff_len = 0  # the wait before the next resume, from the clear
        self._backoff_ms = None  # ... counted since then (None: not started or over)
        self._selftest = _ST_IDLE
        self._selftest_ms = 0
        self._wake = _WK_OFF
        self._wake_ms = 0  # when the offer was armed, or the wake-up's phase began
        self._rcd_testing = False
        self._rcd_edges = 0  # rcd_irq_count when the test input was released
        self.selftest_failed = False
        self._pp_bad_ms = None
        self._close_ms = None
        self._open_ms = None  # when both aux contacts were first seen open (coils released)
        self.contacts_open = False  # ... and have stayed open for _CONTACTS_OPEN_MS since
        self.listeners = []  # fn(event, charger): "session_start", "session_end", "state"
        self.auth_pending = None  # (id_tag, start_mode, expires_ms, source, verdict): authorized before plug-in (auth.py)
        # The board's RCD input calls it (app.py registers it): bound once, so the
        # interrupt calls it without allocating.
        self.rcd_handler = self._on_rcd_irq
        self._irq_off = hw.disable_irq
        self._irq_on = hw.enable_irq
        self._diode_bad = 0
        self._raw = pilot.STATE_A  # the last sample's class, before debouncing
        # The last sample ran whole under the PWM and read C/D with the negative plateau
        # at -10.4 V or below: the vehicle's diode is proven for this PWM run.
        self._pwm_proof = False
        self.cp_fault_cause = None
        # The levels of the sample that made the last CP fault: its record (protection.py)
        # is written a tick later, when the vehicle may already have moved on.
        self.cp_fault_hi_mv = 0
        self.cp_fault_lo_mv = 0
        self.rcd_irq_count = 0
        self.apply_settings()
        self._safe_outputs()

    # ---- configuration -----------------------------------------------------------
    def apply_settings(self, changed=None):
        s = self.settings
        self._clf.set_diode(800 if s["cp_type"] == "0.8V" else 1000)
        # A socket is a hardware fact (docs/hal.md): a socket board keeps its lock and the
        # PP rating whatever charging_mode says. Dropping them would let a plug be pulled
        # under load and a thin cable carry the full offer; and a mode switched mid-session
        # would leave an engaged lock with nobody to release it.
        self.case_b = self._lock_hw.fitted
        if (s["charging_mode"] == "B") != self.case_b:
            _log.warning(
                "charging_mode %s does not match the hardware: running Case %s",
                s["charging_mode"],
                "B" if self.case_b else "C",
            )
        if not self.case_b:
            self.lock_state = LOCK_NONE
        elif self.lock_state == LOCK_NONE:
            self.lock_state = LOCK_OPEN
        self.phases = 3 if s["charger_power"] == "22kW" else 1

    def set_external_limit(self, name, amps):
        """Registers or updates a named limit (None removes it). A limit below what the
        pilot offers cuts the offer at once; anything else applies at the next tick."""
        if amps is None:
            self.external.pop(name, None)
        else:
            self.external[name] = amps
            if limits.finite_or_0(amps) < self.offered_a:  # NaN: a pause, cut now
                self._cut_now()

    def _cut_now(self):
        # The reading or frame that lowered a limit is the instant the offer must follow
        # (docs/power-management.md): not the next control tick, which a busy loop delays.
        # Only ever downwards, so none of the tick's conditions for an offer is skipped.
        self._update_limit(self.clock())
        if self.limit_a >= self.offered_a:
            return
        if self.limit_a < limits.MIN_A:
            self._stop_offer(pause=True)
        else:
            self._write_offer(limits.offer_of(self.limit_a))

    def _write_offer(self, amps):
        """Offers `amps` on the PWM. An interrupt may trip a fault after a caller's checks
        (the RCD handler runs `trip`): the fault is checked once more with interrupts off
        right before the write, so no offer follows the trip's state F."""
        if self._cp.duty_pm <= 0:
            self._pwm_proof = False  # a new PWM run: the diode is proven again
            self._changed_ms = self.clock()
        elif amps != self.offered_a:
            self._changed_ms = self.clock()
            if amps < self._last_a:
                self._left_offer(self._last_a, self._changed_ms)
        duty = pilot.duty_pm(amps)
        st = self._irq_off()
        if not self.active:
            if amps != self._last_a:
                self._up.reset()  # its level moved with the offer
            self._last_a = amps
            self._cp.pwm(duty)
            self.offered_a = amps
        self._irq_on(st)
        if self.active:  # a handler the port had already scheduled may run at the branch
            self._cp.low()
            self.offered_a = 0.0

    # ---- the fast path -------------------------------------------------------------
    def _safe_outputs(self):
        self._relays.open()
        self._cp.high()
        self.offered_a = 0.0

    def trip(self, bit):
        """Fault: open the relays and drive state F first, then remember. No allocation."""
        self._relays.open()
        self.auth_pending = None  # a waiting authorization is not carried past a fault
        if self._cp.duty_pm > 0:
            self._changed_ms = self.clock()  # a stop of the offer: the next raise waits 5 s
            s = self.session
            if s is not None:
                s.pauses += 1  # an interruption the vehicle sees (a small int: no allocation)
        # Protection calls this every tick while the cause lasts: only a new fault
        # starts the F hold, or the pilot would never return to X1 and the charger
        # would not see the vehicle come or go during a long fault (docs/errors.md).
        fresh = not self.active & bit
        if fresh or self._cp.duty_pm > 0:
            self._cp.low()  # never a PWM offer while a fault stands
        if fresh:
            self._trip_ms = self.clock()  # before the bit below starts its hold
        self.offered_a = 0.0
        # Shared with the RCD interrupt, which runs this too: a read-modify-write it
        # split would lose its bit (an IRD that never latches).
        st = self._irq_off()
        new = bit & ~self.active
        self.active |= bit
        self.tripped_new |= new
        self._f_hold |= new
        self.latched |= bit & _LATCH_IN_TRIP  # protection.py writes it to flash
        self._irq_on(st)

    def pause(self, bit):
        """A mild condition (MILD): the PWM stops at once and the relays stay closed while
        the vehicle follows, until its current is gone (current_gone()), it leaves C, or
        6 s have passed; then the fault stands as any other, without state F. Any other
        bit, and any bit while the relays are open, is an ordinary trip."""
        if self.pausing & bit:
            return
        if bit & ~MILD or not self._relays.closed:
            self.trip(bit)
            return
        if not self.pausing and self.session is not None:
            # Counted once per pause, however many conditions it gathers.
            self.mild_pauses += 1
            cap = max(limits.MIN_A, int(self._last_a * MILD_RESUME_SHARE))
            old = self.external.get(MILD_LIMIT)
            if old is None or cap < old:
                self.external[MILD_LIMIT] = cap
        self.pausing |= bit
        self._stop_offer()
        if self._pwm_stop_ms is None:  # the PWM was stopped already: its window runs
            self._pwm_stop_ms = self.clock()
        if self._relays.closed:
            _log.warning("%s: PWM stopped, the relays open once the current is gone",
                         faults.codes(bit))
        else:
            self._end_pause()  # an interrupt opened them meanwhile

    def current_gone(self):
        """A meter reading with every phase below CURRENT_GONE_A: a pause waiting for
        the vehicle opens now, without load."""
        if self.pausing:
            self._relays.open()
            self._end_pause()

    def _end_pause(self):
        """The relays are open: the paused conditions become ordinary active faults
        (protection records them and applies their clear rules)."""
        self._relays.open()
        st = self._irq_off()
        bits = self.pausing
        self.pausing = 0
        new = bits & ~self.active
        self.active |= bits
        self.tripped_new |= new
        self._irq_on(st)
        if self.session is not None and self.mild_pauses > 1:
            n = min(self.mild_pauses - 2, 5)
            self._backoff_len = min(_MILD_BACKOFF_MS << n, _MILD_BACKOFF_MAX_MS)
        self._backoff_ms = None

    def _backoff_held(self, now_ms):
        """True while a repeated mild pause waits out its back-off after the clear."""
        if not self._backoff_len:
            return False
        if self._backoff_ms is None:
            self._backoff_ms = now_ms
        if time.ticks_diff(now_ms, self._backoff_ms) < self._backoff_len:
            return True
        self._backoff_len = 0
        self._backoff_ms = None
        return False

    def _forget_pauses(self):
        """A new session starts without the pauses of the one before."""
        self.mild_pauses = 0
        self._backoff_len = 0
        self._backoff_ms = None
        self.external.pop(MILD_LIMIT, None)

    def latch(self, bits, new=0):
        """Adds latched trips (and `new` to the bits protection records as new). In an
        interrupts-off section: trip() adds to both too."""
        st = self._irq_off()
        self.latched |= bits
        self.tripped_new |= new
        self._irq_on(st)

    def unlatch(self, bits, rcd_count):
        """A technician's clear of latched trips whose cause protection found gone: takes
        them out of `latched` and `active` in one interrupts-off section (trip() adds to
        both). rcd_count: rcd_irq_count read before the causes were checked. An RCD edge
        since then, or its fault line up now, is a new trip the check may have missed:
        IRD is then kept. Returns the bits cleared."""
        st = self._irq_off()
        if self.rcd_irq_count != rcd_count or self.hw.rcd.tripped():
            bits &= ~faults.IRD
        self.latched &= ~bits
        self._drop_active(bits, st)
        return bits

    def take_tripped(self, mask=-1):
        """The bits (within mask) tripped since they were last taken: protection records
        them. Read and cleared in one section, so a trip the interrupt adds stays."""
        st = self._irq_off()
        new = self.tripped_new & mask
        self.tripped_new &= ~new
        self._irq_on(st)
        return new

    def emergency_stop(self):
        """Safe state for the supervisor: relays open, PWM stopped, and the session ends at
        the next control tick, so only a new authorization charges again. No allocation."""
        self._relays.open()
        if self._cp.duty_pm > 0:
            self._changed_ms = self.clock()  # a raise waits 5 s after this stop too
        self._x1()
        self.offered_a = 0.0
        self._estop = True
        self.auth_pending = None  # an authorization is not carried past a safe state

    def hold(self, on):
        """The supervisor's hold while a critical task (pilot, protection) is late or keeps
        dying: nothing is offered or closed until it is lifted."""
        if on:
            self.emergency_stop()
        if on != self.halted:
            self.halted = on
            _log.warning("charger %s by the supervisor", "held" if on else "released")

    def _on_rcd_irq(self):
        # The board has already opened the relays in its IRQ handler. Every edge is
        # counted, during the self-test too: the test's end looks for edges since the
        # test input was released (_rcd_watched).
        self.rcd_irq_count += 1
        if not self._rcd_testing:
            self.trip(faults.IRD)

    def clear(self, bits):
        """A non-latching fault's clear condition holds (protection.py decides), or a
        technician cleared a latched trip."""
        self._drop_active(bits, self._irq_off())  # the interrupt may set a bit meanwhile

    def _drop_active(self, bits, st):
        """Takes bits out of `active` and their F hold inside the interrupts-off section
        `st` the caller opened, then ends it."""
        was = self.active & bits
        self.active &= ~bits
        self._f_hold &= ~bits
        self._irq_on(st)
        if was:
            _log.info("fault %s cleared", faults.codes(was))

    def _x1(self):
        """Static +12 V, except during a trip's F hold: a trip the interrupt made after
        the caller's checks, even during this write, keeps its state F. No allocation."""
        self._cp.high()
        if self._f_hold:
            self._cp.low()

    # ---- pilot ---------------------------------------------------------------------
    def tick_pilot(self):
        adc = self.hw.cp_adc
        duty = self._cp.duty_pm  # the PWM must run before the sample starts, not just after
        adc.sample()
        self.hi_mv = adc.hi_mv  # as the classifier judges them (a CP fault's record)
        self.lo_mv = adc.lo_mv
        pwm_on = self._cp.duty_pm > 0
        s = self._clf.classify(adc.hi_mv, adc.lo_mv, pwm_on)
        self._raw = s
        self._calibrate(duty, s, adc.hi_mv)
        # A sample is a burst of at least one PWM period (docs/hal.md): run whole under
        # the PWM, its C/D class proves both plateaus, the diode included.
        self._pwm_proof = (
            duty > 0 and self._cp.duty_pm == duty and (s == pilot.STATE_C or s == pilot.STATE_D)
        )
        if s == pilot.STATE_F and self._cp.duty_pm == -2:
            return  # we drive F ourselves: nothing to learn about the vehicle
        if s == pilot.INVALID and not self._clf.diode_ok:
            self._diode_bad += 1
        if self._deb.feed(s):
            old = self.cp_state
            self.cp_state = self._deb.state
            if old in (pilot.STATE_C, pilot.STATE_D) and self.cp_state not in (
                pilot.STATE_C,
                pilot.STATE_D,
            ):
                # Vehicle opened S2 or left: open now (<= 100 ms, Annex A seq. 8.1).
                self._relays.open()
            self._on_state_change(old, self.cp_state)

    def _calibrate(self, duty, s, hi_mv):
        # Static +12 V before and after the sample, nothing plugged (A read and accepted):
        # the positive plateau is the generator's own level.
        cal = self.cp_cal
        if duty != -1 or self._cp.duty_pm != -1 or s != pilot.STATE_A or self.cp_state != s:
            cal.restart()
            return
        was = cal.error
        first = not cal.done
        if not cal.feed(hi_mv):
            return
        # A check of the measurement, not a correction: the midpoints already leave room
        # for the tolerances, and an offset taken now and applied later, after the
        # generator or the zero moved the other way, would double the error (B read as C).
        if cal.error and not was:
            _log.error("CP zero %d mV out of +-%d mV: nominal levels in use",
                       cal.last_mv, pilot.CAL_MAX_MV)
        elif (was or first) and not cal.error:
            _log.info("CP zero %d mV: within its tolerance", cal.zero_mv)

    def _cp_fault(self, cause):
        self.cp_fault_cause = cause
        self.cp_fault_hi_mv = self.hi_mv
        self.cp_fault_lo_mv = self.lo_mv
        self.trip(faults.CP)

    def _on_state_change(self, old, new):
        _log.info("cp %s -> %s", pilot.NAMES[old], pilot.NAMES[new])
        if new in (pilot.STATE_E, pilot.INVALID, pilot.STATE_F):
            # E: CP shorted to PE; F seen while we drive +12 V: generator fault;
            # invalid: out of range (beyond +-14 V, NaN) or the vehicle's diode is missing.
            self._cp_fault("diode" if self._diode_bad else "level")
        elif new == pilot.STATE_D and not self.settings["ventilation"]:
            self._cp_fault("ventilation")
        self._diode_bad = 0
        if new == pilot.STATE_A:
            self._relays.open()
            if self.active & faults.ELK:
                self.elk_unplugged = True  # its clear (protection.py), even if replugged
            self._lock_seated = False  # the next plug-in may not seat
            self.cable_a = None  # the vehicle left with its cable: the next one is read anew
            if self.session is not None:
                self.end_session("Unplug")
            self.finishing = False
            self._selftest_stop(self.clock(), forget=True)
        for fn in self.listeners:
            fn("state", self)

    @property
    def connected(self):
        return self.cp_state in (pilot.STATE_B, pilot.STATE_C, pilot.STATE_D)

    @property
    def wants_energy(self):
        return self.cp_state == pilot.STATE_C or (
            self.cp_state == pilot.STATE_D and self.settings["ventilation"]
        )

    # ---- sessions ------------------------------------------------------------------
    def start_session(self, id_tag, start_mode, meter_wh=0.0):
        """Authorizes a charge. Returns None when started, else the reason it was refused."""
        if self.session is not None:
            return "a session is already running"
        if self.active & faults.LATCHING or self.latched:
            return "charger is faulted"
        if self.unavailable:
            return "charger is unavailable"
        if self.halted or self._estop:
            return "charger is not ready"
        if not self.connected:
            return "no vehicle connected"
        self.session = Session(id_tag, start_mode, self.hw.rtc.now(), meter_wh)
        self._forget_pauses()
        self.finishing = False
        self.auth_pending = None
        _log.info("session start %s by %s", id_tag, start_mode)
        for fn in self.listeners:
            fn("session_start", self)
        return None

    def end_session(self, stop_mode):
        s = self.session
        if s is None:
            return None
        self._wake_end()
        self._stop_offer(count=False)
        self._pause_ms = None  # the next session starts without the pause of this one
        s.stop_mode = stop_mode
        s.end_s = self.hw.rtc.now()
        self.session = None
        self._forget_pauses()
        # Anything but A: a pilot at a fault level (shorted, no diode) still has the
        # vehicle plugged, and free mode must wait for its unplug before the next session.
        self.finishing = self.cp_state != pilot.STATE_A
        self._selftest_stop(self.clock(), forget=True)
        _log.info("session end: %s, %d Wh", stop_mode, int(s.energy_wh))
        for fn in self.listeners:
            fn("session_end", self, s)
        return s

    # ---- the control tick ------------------------------------------------------------
    def tick_control(self, now_ms):
        if self._estop:
            self._end_after_safe_state()
        if self.pausing and not self._relays.closed:
            self._end_pause()  # a trip, the vehicle leaving C, the supervisor: open now
        self._track_contacts(now_ms)
        self._raise_held(now_ms)  # every tick, so its time never outlives a ticks wrap
        self.follow_ref_a(now_ms)  # the same for the offers the duty left
        self._update_limit(now_ms)
        if self.active:
            self._backoff_ms = None  # a back-off is counted from the clear
            self._pp_bad_ms = None  # the cable is not checked meanwhile: its hold restarts
            self._wake = _WK_OFF  # the fault owns the pilot; its end is a new offer
            self._fault_outputs(now_ms)
            self._selftest_stop(now_ms)
            self._manage_lock(now_ms, want=False)
            self._run_lock_test(now_ms)
            return
        if self._cp.duty_pm == -2 and self._wake != _WK_F:
            # The fault went (a technician's clear) while its state F was still held:
            # back to X1, or the pilot would never see the vehicle again.
            self._x1()
        if not self.connected:
            self._pp_bad_ms = None  # a stale start would read as negative after the wrap
            self.cable_a = None  # the next cable is read before anything is offered
            self._wake = _WK_OFF
            if self._cp.duty_pm != -1:
                self._x1()
            self._relays.open()
            self.offered_a = 0.0
            self._selftest_stop(now_ms)
            self._manage_lock(now_ms, want=False)
            return
        self._check_cable(now_ms)
        if self.active:
            self._selftest_stop(now_ms)
            return
        # Again with the cable just read: it is not read while a fault stands, and the first
        # offer after one must not go by the rating from before it.
        self._update_limit(now_ms)
        authorized = self.session is not None
        self._manage_lock(now_ms, want=authorized)
        backoff = self._backoff_held(now_ms)  # every tick: its time survives the wrap
        ready = (
            authorized
            and not self.unavailable
            and not self.halted
            and not self.pausing
            and not backoff
            and self.cable_a is not None  # no offer before the cable's rating is known
            and (not self.case_b or self.lock_state == LOCK_LOCKED)
        )
        target = self._target(now_ms)  # 0.0: the limits pause the charge
        paused = ready and target < limits.MIN_A
        if paused:
            ready = False
        if ready and not self._selftest_done(now_ms):
            ready = False
        elif not ready:
            self._selftest_stop(now_ms)  # nothing waits for a test that has started
        if ready:
            self._offer_or_wake(now_ms, target)
        else:
            self._wake_end()
            self._stop_offer(pause=paused)
        self._control_relays(now_ms)
        if self.pausing and not self._relays.closed:
            self._end_pause()

    def _end_after_safe_state(self):
        # The outputs went safe in emergency_stop(); ending the session here, not there,
        # keeps that path allocation-free. Without it the next tick would offer again
        # and re-close within 100 ms, and a task that keeps dying would cycle the
        # contactor under load.
        self._estop = False
        if self.session is not None:
            _log.error("safe state: session ended, a new authorization is needed")
            self.end_session("Fault")

    def _update_limit(self, now_ms):
        s = self.settings
        self.limit_a, self.limit_binding = limits.compose(
            s["max_current_a"], limits.MODEL_A, self.cable_a, self.thermal_a, self.external
        )
        lim = self.limit_a
        if self._pause_ms is None:
            self._up.feed(now_ms, lim, self._last_a + RAISE_MARGIN_A, _RAISE_HOLD_MS)
        else:
            self._ok.feed(now_ms, lim, limits.MIN_A, _RAISE_HOLD_MS)
            if not self._pause_over:
                # First, whatever the limit: a pause that lasts days must not read its
                # start as negative once the ticks wrap (2**29 ms on a 32-bit port).
                self._pause_over = time.ticks_diff(now_ms, self._pause_ms) >= self._min_pause_ms()

    def _min_pause_ms(self):
        return self.settings["min_pause_s"] * 1000

    def _check_cable(self, now_ms):
        if not self.case_b:
            self._set_cable(self.settings["cable_max_a"])
            return
        rating = limits.cable_rating(self.hw.pp_adc.read_ohm())
        if rating is None:
            if self._pp_bad_ms is None:
                self._pp_bad_ms = now_ms
            elif time.ticks_diff(now_ms, self._pp_bad_ms) >= _PP_HOLD_MS:
                self.trip(faults.PP)
            return
        self._pp_bad_ms = None
        self._set_cable(rating)

    def _set_cable(self, amps):
        # The tick that reads a thinner cable is the one that offers it no more than it
        # carries: the limit is composed again at once, and a lower one cuts the offer.
        if amps == self.cable_a:
            return
        self.cable_a = amps
        self._update_limit(self.clock())
        if self.limit_a < self.offered_a:
            self._cut_now()

    def limit_changed(self):
        """A limit held here (the thermal derating) went down: the offer follows at once,
        not at the next control tick."""
        self._update_limit(self.clock())
        if self.limit_a < self.offered_a:
            self._cut_now()

    def stopping(self):
        """The PWM stopped with the relays still closed: the up to 6 s the vehicle has
        to follow a stop (Annex A seq. 10.2)."""
        return self._pwm_stop_ms is not None and self._relays.closed

    def _raise_held(self, now_ms):
        """True within 5 s of the last change of the offer, whichever way it went: the
        vehicle is still following it, so no increase yet."""
        t = self._changed_ms
        if t is None:
            return False
        if time.ticks_diff(now_ms, t) < _RAISE_EVERY_MS:
            return True
        self._changed_ms = None
        return False

    def _target(self, now_ms):
        """What the PWM may offer now, 0.0 for a pause (docs/errors.md, "Current
        limits"). Never above the limit: every rule here only holds the offer lower."""
        target = limits.offer_of(self.limit_a)
        if self._pause_ms is not None:
            # A pause the limits made ends once it has lasted min_pause_s, with the limit
            # 1 A above 6 A, or at 6 A or more for 5 s (a steady 6 A share of a pool: at
            # the lowest value it had meanwhile; a limit wobbling around 6 A has not).
            if not target or not self._pause_over:
                return 0.0
            if self.limit_a >= limits.MIN_A + RAISE_MARGIN_A:
                return target
            if self._ok.held:
                return min(target, limits.offer_of(self._ok.low))
            return 0.0
        last = self._last_a
        if last and target > last:
            # No increase within 5 s of a change (a raise, a reduction, a stop), and only
            # once the limit has stayed 1 A above the last offer for 5 s: then to the
            # lowest value it had meanwhile.
            if self._raise_held(now_ms) or not self._up.held:
                return last
            return min(target, limits.offer_of(self._up.low))
        return target

    def _offer(self, target):
        if target != self.offered_a or self._cp.duty_pm <= 0:
            self._write_offer(target)
        self._pause_ms = None
        self._pwm_stop_ms = None

    # ---- wake-up of a sleeping car (IEC 61851-1:2017 A.5.3) ------------------------------
    @property
    def waking(self):
        """The wake-up holds the pilot (F, then X1): the EV's pause, not ours."""
        return self._wake >= _WK_F

    def _offer_or_wake(self, now_ms, target):
        """The offer while the session may have it. A new offer (a start, a resume after
        any pause) arms the wake-up: a car that sleeps through it sits in B2 for good."""
        w = self._wake
        if w == _WK_F:
            if time.ticks_diff(now_ms, self._wake_ms) < _WAKE_F_MS:
                return
            self._x1()
            self._wake = _WK_X1
            self._wake_ms = self.clock()  # from the write: the tick may have begun earlier
            return
        if w == _WK_X1:
            if time.ticks_diff(now_ms, self._wake_ms) < _WAKE_X1_MS:
                return
            self._wake = _WK_OFF  # its own PWM is no new offer: one try per resume
        elif self._cp.duty_pm <= 0:
            self._wake = _WK_ARMED
            self._wake_ms = now_ms
        self._offer(target)
        if self._wake == _WK_ARMED:
            self._wake_watch(now_ms)

    def _wake_watch(self, now_ms):
        if self.cp_state != pilot.STATE_B:
            self._wake = _WK_OFF  # it closed S2: awake
            return
        if self._relays.closed or time.ticks_diff(now_ms, self._wake_ms) < _WAKE_AFTER_MS:
            return
        s = self.session
        self._wake = _WK_OFF
        if s.wakeups >= WAKE_MAX:
            _log.warning("EV stayed in B2 under the PWM: no wake-up left this session")
            return
        # The offer stops (a change: the next raise waits 5 s) and the pilot goes F. The
        # relays are open in B; an interrupt's trip drives F as well.
        s.wakeups += 1
        self._changed_ms = self.clock()
        self._cp.low()
        self.offered_a = 0.0
        self._wake = _WK_F
        self._wake_ms = self.clock()  # F's 4 s from its write
        _log.warning("EV stayed in B2 %d s under the PWM: wake-up %d of %d (A.5.3)",
                     _WAKE_AFTER_MS // 1000, s.wakeups, WAKE_MAX)

    def _wake_end(self):
        """Nothing is offered any more (a pause, the session's end): a wake-up in
        progress gives the pilot back at X1 (a fault's F, if one stands, stays)."""
        if self._wake == _WK_F:
            self._x1()
        self._wake = _WK_OFF

    def _stop_offer(self, pause=False, count=True):
        """Stops the PWM offer. pause: the limits stop it (below 6 A), which starts a
        pause of at least min_pause_s; count: the session goes on (a pause it counts)."""
        if self._cp.duty_pm > 0:
            self._cp.high()
            if self.active:
                self._cp.low()  # a fault tripped by an interrupt meanwhile: its F stands
            self._pwm_stop_ms = self._changed_ms = self.clock()
            self._left_offer(self._last_a, self._changed_ms)
            if count and self.session is not None:
                self.session.pauses += 1
            if pause:
                self._pause_ms = self._pwm_stop_ms
                self._pause_over = False
                self._ok.reset()
                self._up.reset()  # not fed in the pause: what it holds would be stale
        self.offered_a = 0.0

    def _left_offer(self, amps, now_ms):
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
        ref = self.offered_a
        if self.stopping() and self._last_a > ref:
            ref = self._last_a
        left = self._left_a
        for i in range(_REF_SLOTS):
            a = left[i]
            if a > 0.0:
                if time.ticks_diff(now_ms, self._left_ms[i]) >= _FOLLOW_MS:
                    left[i] = 0.0
                elif a > ref:
                    ref = a
        return ref

    def _control_relays(self, now_ms):
        r = self._relays
        if self.offered_a > 0 and self.wants_energy:
            if not r.closed:
                self._close(now_ms)
            return
        if not r.closed:
            return
        if not self.wants_energy:
            r.open()
        elif self._pwm_stop_ms is not None and time.ticks_diff(
            now_ms, self._pwm_stop_ms
        ) > _FORCE_OPEN_MS:  # '>': the stop fell somewhere inside its millisecond tick
            r.open()  # first: the log may wait on a UART
            _log.warning("EV stayed in C 6 s after the PWM stopped: opening under load")

    def _close(self, now_ms):
        # Every condition once more, right where the coil is driven.
        if (
            self.active
            or self.latched
            or self.pausing
            or self._estop
            or self.halted
            or self.session is None
            or not self.wants_energy
            # The debounced state lags by up to two samples when the vehicle leaves C:
            # the latest sample must agree.
            or self._raw != self.cp_state
            # The vehicle's diode seen with the PWM running, not only its level without
            # it: a vehicle already in C when the PWM starts has not shown it yet.
            or not self._pwm_proof
            or self.offered_a < limits.MIN_A
            or (self.case_b and not self._lock_hw.feedback())
        ):
            return
        # An RCD trip after the checks above must win: with interrupts off it cannot
        # land between the last check and the coils; a handler the port had already
        # scheduled may still run at the branch, so `active` is checked once more. The
        # weld window starts again with the close: the relays may open (a trip, the
        # vehicle leaving C) before the next control tick has seen them closed.
        st = self._irq_off()
        if not self.active:
            self._relays.close()
            self._open_ms = None
            self.contacts_open = False
        self._irq_on(st)
        if self.active:
            self._relays.open()
            return
        self._close_ms = now_ms
        self.session.charged = True

    def _track_contacts(self, now_ms):
        r = self._relays
        if r.closed or r.feedback(1) or r.feedback(2):
            self._open_ms = None
            self.contacts_open = False
        elif self._open_ms is None:
            self._open_ms = now_ms
        elif not self.contacts_open:
            # A flag, not the stored time, once the window is over: a timestamp days
            # old would read as negative after the ticks wrap.
            self.contacts_open = time.ticks_diff(now_ms, self._open_ms) >= _CONTACTS_OPEN_MS

    def _fault_outputs(self, now_ms):
        self._relays.open()
        self.offered_a = 0.0
        self._pwm_stop_ms = None
        held = self._f_hold  # a trip may add a bit from here on: it is not cleared below
        if held and time.ticks_diff(now_ms, self._trip_ms) < _F_HOLD_MS:
            if self._cp.duty_pm != -2:
                self._cp.low()
            return
        # The hold is over: a flag from now on, not the trip time. A fault waiting days
        # for a technician would read it as negative once the ticks wrap (2**29 ms, 6.2
        # days on a 32-bit port) and go back to F.
        st = self._irq_off()
        self._f_hold &= ~held
        self._irq_on(st)
        if self._cp.duty_pm != -1:
            self._x1()  # X1 while the fault lasts: we can see the vehicle leave

    # ---- lock ----------------------------------------------------------------------
    def _manage_lock(self, now_ms, want):
        if self.lock_state == LOCK_NONE:
            return
        lk = self._lock_hw
        if self._unlock_ms is not None:
            if not lk.feedback() or self.lock_state != LOCK_OPEN:
                self._unlock_ms = None
            elif time.ticks_diff(now_ms, self._unlock_ms) >= 2 * _LOCK_CONFIRM_MS:
                # Released but still reads engaged (the retry's margin given): the plug
                # is held, the lock is broken.
                self._unlock_ms = None
                self._lock_trip("lock did not unlock: the plug is held")
                return
        if not want:
            if self.lock_state == LOCK_LOCKED and self._relays.closed and not lk.feedback():
                # The session is over but the relays still wait for the vehicle to leave C
                # (up to 6 s): its plug is as live, and now free, as during the session.
                self._lock_trip("lock opened with the relays closed")
                self.lock_state = LOCK_OPEN
                return
            # Release only once both auxiliary contacts have reported open for the
            # whole weld-check window: a relay commanded open may still be welded, and
            # its pins live. A known weld keeps the plug locked for good.
            if self.lock_state != LOCK_OPEN and self.contacts_open:
                if (self.active | self.latched) & (faults.R12 | faults.R3N):
                    return
                lk.release()
                self.lock_state = LOCK_OPEN
                self._unlock_ms = now_ms
            return
        if self.lock_state == LOCK_OPEN:
            lk.engage()
            self.lock_state = LOCK_ENGAGING
            self._lock_ms = now_ms
            self._lock_tries = 1
            self._unlock_ms = None
        elif self.lock_state == LOCK_ENGAGING:
            if lk.feedback():
                self.lock_state = LOCK_LOCKED
                self.lock_fails = 0
                self._lock_seated = True
            elif time.ticks_diff(now_ms, self._lock_ms) >= _LOCK_CONFIRM_MS:
                if self._lock_tries < 2:
                    if self.contacts_open:  # a pulse back only with the contacts known open
                        lk.release()
                    lk.engage()
                    self._lock_ms = now_ms
                    self._lock_tries += 1
                elif self._lock_seated:
                    # It locked on this plug-in (the plug is seated): the lock is broken.
                    self._lock_trip("lock did not confirm again on the plug-in it locked")
                else:
                    # Never confirmed, so never charged through it: a plug not fully
                    # seated. No protective trip unless it keeps happening. The release
                    # comes through the path above (fault: want=False): only once the
                    # contacts are confirmed open, never over a weld.
                    self.lock_fails += 1
                    if self.lock_fails >= LOCK_FAILS_LATCH:
                        self._lock_trip("lock did not confirm on %d plug-ins in a row"
                                        % self.lock_fails)
                    else:
                        self.trip(faults.ELK)
                        self.elk_unplugged = False
                        _log.error("lock did not confirm: check the plug is pushed fully in")
        elif self.lock_state == LOCK_LOCKED and not lk.feedback():
            self._lock_trip("lock opened during the session")
            self.lock_state = LOCK_OPEN

    def _lock_trip(self, why):
        """A protective ELK: tripped and latched in the same step (a technician clears
        it after a lock test)."""
        self.trip(faults.ELK)  # first: the log may wait on a UART
        # New to protection even when a lock that never confirmed stands as ELK already:
        # the latch has its own record and ends the session.
        self.latch(faults.ELK, new=faults.ELK & ~self.latched)
        self.lock_fails = 0
        _log.error("%s: ELK latched", why)

    def start_lock_test(self):
        """A technician asks to clear ELK: the lock must show it works first. The control
        tick engages it, waits for the feedback, releases it and waits for the feedback
        to fall (each within the lock's confirm time, with one retry's margin);
        `lock_tested` then says so."""
        if self._lock_test == _LT_IDLE:
            self.lock_tested = False
            self._lock_test = _LT_START

    def _run_lock_test(self, now_ms):
        lt = self._lock_test
        if lt == _LT_IDLE:
            return
        lk = self._lock_hw
        if not self.latched & faults.ELK or self.lock_state == LOCK_NONE:
            self._lock_test = _LT_IDLE  # nothing to test for any more
            if lt != _LT_START and self.lock_state != LOCK_NONE:
                if self._lock_may_open():
                    lk.release()
                else:
                    self.lock_state = LOCK_LOCKED  # _manage_lock releases it when it may
            return
        if lt == _LT_START:
            # Only with the relays open and the contacts proven open (the weld window), as
            # for any release of the lock, and never with a weld known (it keeps the lock).
            if self.lock_state != LOCK_OPEN or not self._lock_may_open():
                return
            lk.engage()
            self._lock_test = _LT_ENGAGE
            self._lock_test_ms = now_ms
        elif lt == _LT_ENGAGE:
            if not self._lock_may_open():
                self._lock_test_end(False, "a weld or closed contacts seen during the test")
            elif lk.feedback():
                lk.release()
                self._lock_test = _LT_RELEASE
                self._lock_test_ms = now_ms
            elif time.ticks_diff(now_ms, self._lock_test_ms) >= 2 * _LOCK_CONFIRM_MS:
                self._lock_test_end(False, "did not confirm engaged")
        elif lt == _LT_RELEASE:
            if not lk.feedback():
                self._lock_test_end(True, "engaged and released")
            elif time.ticks_diff(now_ms, self._lock_test_ms) >= 2 * _LOCK_CONFIRM_MS:
                self._lock_test_end(False, "still reads engaged when released")

    def _lock_may_open(self):
        """The lock may be released: relays open, both auxiliary contacts proven open for
        the weld window and reading open now, no weld known. Checked before every release
        of the lock test: a weld may show up while it runs."""
        r = self._relays
        return not (
            r.closed
            or not self.contacts_open
            or r.feedback(1)
            or r.feedback(2)
            or (self.active | self.latched) & (faults.R12 | faults.R3N)
        )

    def _lock_test_end(self, ok, why):
        self._lock_test = _LT_IDLE
        if self._lock_may_open():
            self._lock_hw.release()
            self.lock_state = LOCK_OPEN
        else:
            # A weld (or contacts not proven open) keeps the plug locked: the test fails,
            # and _manage_lock releases only once the contacts are open and no weld known.
            ok = False
            why += "; the lock stays engaged: contacts not proven open or welded"
            self.lock_state = LOCK_LOCKED
        self.lock_tested = ok
        if ok:
            _log.info("lock test passed: %s", why)
        else:
            _log.error("lock test failed: %s", why)

    # ---- RCD self-test before each charge -------------------------------------------
    def _selftest_done(self, now_ms):
        st = self._selftest
        if st == _ST_PASSED:
            return True
        rcd = self.hw.rcd
        if st == _ST_CANCEL:
            self._selftest_stop(now_ms)
            return False
        if st == _ST_IDLE:
            # The test trips the RCD, and the board opens the relays on a trip: only with
            # the contacts known open (a new session inside the 6 s force-open window
            # waits), never under load.
            if self._relays.closed or not self.contacts_open:
                return False
            self._rcd_testing = True
            rcd.test(True)
            self._selftest = _ST_DRIVE
            self._selftest_ms = now_ms
        elif st == _ST_DRIVE:
            if rcd.tripped():
                self._release_test_input()
                self._selftest = _ST_RELEASE
                self._selftest_ms = now_ms
            elif time.ticks_diff(now_ms, self._selftest_ms) >= _SELFTEST_MS:
                self._selftest_fail("did not trip on the test input")
        elif st == _ST_RELEASE:
            if not rcd.tripped():
                if not self._rcd_watched():
                    return False  # a real trip as the test ended: IRD
                self._selftest = _ST_PASSED
                _log.info("RCD self-test passed")
                return True
            if time.ticks_diff(now_ms, self._selftest_ms) >= _SELFTEST_MS:
                self._selftest_fail("did not release after the test")
        return False

    def _selftest_stop(self, now_ms, forget=False):
        """No charge waits for the test any more (session ended, vehicle gone, a fault, a
        pause): release the test input now, and watch the RCD again as soon as its fault
        line has fallen. A line still up 500 ms later is a real trip (or a stuck module).
        forget: the passed result belonged to the session that ended."""
        st = self._selftest
        if st == _ST_DRIVE or st == _ST_RELEASE:
            if st == _ST_DRIVE:
                self._release_test_input()
            self._selftest = _ST_CANCEL
            self._selftest_ms = now_ms
            st = _ST_CANCEL
        if st == _ST_CANCEL:
            if not self.hw.rcd.tripped():
                self._rcd_watched()
                self._selftest = _ST_IDLE
            elif time.ticks_diff(now_ms, self._selftest_ms) >= _SELFTEST_MS:
                self._selftest_fail("did not release after the test")
        elif st == _ST_PASSED and forget:
            self._selftest = _ST_IDLE

    def _release_test_input(self):
        # Edges counted from here on are not the test's own: its rising edge came while
        # the input was driven, and the line can only rise again after it has fallen.
        self._rcd_edges = self.rcd_irq_count
        self.hw.rcd.test(False)

    def _rcd_watched(self):
        """The test is over: the interrupt trips IRD again. An edge it counted since the
        test input was released, or a fault line up now, was a real trip that the test
        flag hid (the line read down, then an edge before the flag fell): IRD. False
        then, True when the RCD is quiet."""
        st = self._irq_off()
        self._rcd_testing = False
        edges = self.rcd_irq_count - self._rcd_edges
        self._irq_on(st)
        if edges or self.hw.rcd.tripped():
            self._selftest = _ST_IDLE
            self.trip(faults.IRD)
            _log.error("RCD tripped as its self-test ended")
            return False
        return True

    def _selftest_fail(self, why):
        self.hw.rcd.test(False)
        self._rcd_testing = False
        self._selftest = _ST_IDLE
        self.selftest_failed = True
        self.trip(faults.IRD)
        _log.error("RCD self-test failed: %s", why)

    # ---- views -----------------------------------------------------------------------
    def ocpp_status(self):
        if self.active or self.latched:
            return "Faulted"
        if self.unavailable:
            return "Unavailable"
        if self.cp_state == pilot.STATE_A:
            # An authorization waiting for the vehicle (OCPP 1.6 §3.6: Preparing).
            return "Available" if self.auth_pending is None else "Preparing"
        if self.session is None:
            return "Finishing" if self.finishing else "Preparing"
        if self.offered_a <= 0 and not self.waking:
            return "SuspendedEVSE"  # withholding energy wins over the EV's pause
        if self._relays.closed:
            return "Charging"
        return "SuspendedEV"
