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
# Parts with a state of their own are objects it owns and runs from its ticks: the offer
# with its pauses and the wake-up (offer.py), the socket lock and its test (socketlock.py)
# and the RCD self-test (rcdtest.py).
#
# The RCD interrupt runs trip() at any moment (docs/hal.md, "What the interrupts share"):
# the fault bits are read and changed only in sections with interrupts off (straight-line
# code), and every main-context write of the relays or the pilot is either done in such a
# section or checked again right after it, so a trip is never lost or undone.
import time
from micropython import const

import cpduty
from evse import faults
from evse import limits
import log
from evse import pilot
from evse.history import Session
from evse import offer
from evse.rcdtest import RcdSelfTest
from evse import socketlock

_log = log.get("charger")

_F_HOLD_MS = const(1000)  # C -> F >= 300 ms -> X1 after a fault (STANDARDS.md §1.4)
_FORCE_OPEN_MS = const(6000)  # PWM stopped, EV still in C: open under load (seq. 10.2)
_PP_HOLD_MS = const(300)  # PP out of window this long -> ERR PP
# The weld check's window (protection.py): the lock opens only after both auxiliary
# contacts have reported open this long, so a weld is known before the plug is free.
_CONTACTS_OPEN_MS = const(500)
# Longest from the end of a session under load to the lock reading open: the vehicle's
# time to stop drawing, the weld window, the lock's confirm with its retry, plus a
# second of ticks (OCPP UnlockConnector answers within it).
UNLOCK_WORST_MS = _FORCE_OPEN_MS + _CONTACTS_OPEN_MS + 2 * socketlock.LOCK_CONFIRM_MS + 1000
# Trips that latch the moment they are made, in trip() itself or right beside it: the
# RCD interrupt's IRD is latched even if the protection tick that records it never
# completes; a latching ELK is latched by the lock code in the same step as its trip.
LATCH_AT_TRIP = faults.IRD | faults.ELK


class Charger:
    def __init__(self, hw, settings):
        self.hw = hw
        self.clock = time.ticks_ms  # replaceable in tests; calling it allocates nothing
        self._cp = hw.cp
        self._relays = hw.relays
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
        self.offer = offer.Offer(self)  # what the PWM offers, its pauses, the wake-up
        self.lock = socketlock.SocketLock(self, hw)
        self.rcd_test = RcdSelfTest(self, hw)
        self._pp_bad_ms = None
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
        self.case_b = self.hw.lock.fitted
        if (s["charging_mode"] == "B") != self.case_b:
            _log.warning(
                "charging_mode %s does not match the hardware: running Case %s",
                s["charging_mode"],
                "B" if self.case_b else "C",
            )
        lk = self.lock
        if not self.case_b:
            lk.state = socketlock.LOCK_NONE
        elif lk.state == socketlock.LOCK_NONE:
            lk.state = socketlock.LOCK_OPEN
        self.phases = 3 if s["charger_power"] == "22kW" else 1

    def set_external_limit(self, name, amps):
        """Registers or updates a named limit (None removes it). A limit below what the
        pilot offers cuts the offer at once; anything else applies at the next tick."""
        if amps is None:
            self.external.pop(name, None)
        else:
            self.external[name] = amps
            if limits.finite_or_0(amps) < self.offered_a:  # NaN: a pause, cut now
                self.offer.cut_now()

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
            self.offer.changed_ms = self.clock()  # a stop of the offer: the next raise waits 5 s
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
        self.latched |= bit & faults.IRD  # latched here (LATCH_AT_TRIP); protection.py writes it
        self._irq_on(st)

    def pause(self, bit):
        """A mild condition (offer.MILD): Offer.pause(); any other bit trips."""
        self.offer.pause(bit)

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
            self.offer.changed_ms = self.clock()  # a raise waits 5 s after this stop too
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
        # test input was released (RcdSelfTest._watched).
        self.rcd_irq_count += 1
        if not self.rcd_test.testing:
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
        if s == pilot.STATE_F and self._cp.duty_pm == cpduty.DUTY_F:
            return  # we drive F ourselves: nothing to learn about the vehicle
        if s == pilot.INVALID and not self._clf.diode_ok:
            self._diode_bad += 1
        if self._deb.feed(s):
            old = self.cp_state
            self.cp_state = self._deb.state
            cd = (pilot.STATE_C, pilot.STATE_D)
            if old in cd and self.cp_state not in cd:
                # Vehicle opened S2 or left: open now (<= 100 ms, Annex A seq. 8.1).
                self._relays.open()
            self._on_state_change(old, self.cp_state)

    def _calibrate(self, duty, s, hi_mv):
        # Static +12 V before and after the sample, nothing plugged (A read and accepted):
        # the positive plateau is the generator's own level.
        cal = self.cp_cal
        if duty != cpduty.DUTY_X1 or self._cp.duty_pm != cpduty.DUTY_X1 or s != pilot.STATE_A or self.cp_state != s:
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
                self.lock.elk_unplugged = True  # its clear (protection.py), even if replugged
            self.lock.seated = False  # the next plug-in may not seat
            self.cable_a = None  # the vehicle left with its cable: the next one is read anew
            if self.session is not None:
                self.end_session("Unplug")
            self.finishing = False
            self.rcd_test.stop(self.clock(), forget=True)
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
        self.offer.forget_pauses()
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
        self.offer.wake_end()
        self.offer.stop(count=False)
        self.offer.pause_ms = None  # the next session starts without the pause of this one
        s.stop_mode = stop_mode
        s.end_s = self.hw.rtc.now()
        self.session = None
        self.offer.forget_pauses()
        # Anything but A: a pilot at a fault level (shorted, no diode) still has the
        # vehicle plugged, and free mode must wait for its unplug before the next session.
        self.finishing = self.cp_state != pilot.STATE_A
        self.rcd_test.stop(self.clock(), forget=True)
        _log.info("session end: %s, %d Wh", stop_mode, int(s.energy_wh))
        for fn in self.listeners:
            fn("session_end", self, s)
        return s

    # ---- the control tick ------------------------------------------------------------
    def tick_control(self, now_ms):
        if self._estop:
            self._end_after_safe_state()
        if self.offer.pausing and not self._relays.closed:
            self.offer.end_pause()  # a trip, the vehicle leaving C, the supervisor: open now
        self._track_contacts(now_ms)
        o = self.offer
        o.raise_held(now_ms)  # every tick, so its time never outlives a ticks wrap
        o.follow_ref_a(now_ms)  # the same for the offers the duty left
        o.update(now_ms)
        if self.active:
            o.backoff_ms = None  # a back-off is counted from the clear
            self._pp_bad_ms = None  # the cable is not checked meanwhile: its hold restarts
            o.wake = offer.WK_OFF  # the fault owns the pilot; its end is a new offer
            self._fault_outputs(now_ms)
            self.rcd_test.stop(now_ms)
            self.lock.manage(now_ms, want=False)
            self.lock.run_test(now_ms)
            return
        if self._cp.duty_pm == cpduty.DUTY_F and o.wake != offer.WK_F:
            # The fault went (a technician's clear) while its state F was still held:
            # back to X1, or the pilot would never see the vehicle again.
            self._x1()
        if not self.connected:
            self._pp_bad_ms = None  # a stale start would read as negative after the wrap
            self.cable_a = None  # the next cable is read before anything is offered
            o.wake = offer.WK_OFF
            if self._cp.duty_pm != cpduty.DUTY_X1:
                self._x1()
            self._relays.open()
            self.offered_a = 0.0
            self.rcd_test.stop(now_ms)
            self.lock.manage(now_ms, want=False)
            return
        self._check_cable(now_ms)
        if self.active:
            self.rcd_test.stop(now_ms)
            return
        # Again with the cable just read: it is not read while a fault stands, and the first
        # offer after one must not go by the rating from before it.
        o.update(now_ms)
        authorized = self.session is not None
        self.lock.manage(now_ms, want=authorized)
        backoff = o.backoff_held(now_ms)  # every tick: its time survives the wrap
        ready = (
            authorized
            and not self.unavailable
            and not self.halted
            and not self.offer.pausing
            and not backoff
            and self.cable_a is not None  # no offer before the cable's rating is known
            and (not self.case_b or self.lock.state == socketlock.LOCK_LOCKED)
        )
        target = o.target(now_ms)  # 0.0: the limits pause the charge
        paused = ready and target < limits.MIN_A
        if paused:
            ready = False
        if ready and not self.rcd_test.done(now_ms):
            ready = False
        elif not ready:
            self.rcd_test.stop(now_ms)  # nothing waits for a test that has started
        if ready:
            o.give(now_ms, target)
        else:
            o.wake_end()
            o.stop(pause=paused)
        self._control_relays(now_ms)
        if self.offer.pausing and not self._relays.closed:
            o.end_pause()

    def _end_after_safe_state(self):
        # The outputs went safe in emergency_stop(); ending the session here, not there,
        # keeps that path allocation-free. Without it the next tick would offer again
        # and re-close within 100 ms, and a task that keeps dying would cycle the
        # contactor under load.
        self._estop = False
        if self.session is not None:
            _log.error("safe state: session ended, a new authorization is needed")
            self.end_session("Fault")

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
        self.offer.update(self.clock())
        if self.limit_a < self.offered_a:
            self.offer.cut_now()

    def limit_changed(self):
        """A limit held here (the thermal derating) went down: the offer follows at once,
        not at the next control tick."""
        self.offer.update(self.clock())
        if self.limit_a < self.offered_a:
            self.offer.cut_now()

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
        elif self.offer.stop_ms is not None and time.ticks_diff(
            now_ms, self.offer.stop_ms
        ) > _FORCE_OPEN_MS:  # '>': the stop fell somewhere inside its millisecond tick
            r.open()  # first: the log may wait on a UART
            _log.warning("EV stayed in C 6 s after the PWM stopped: opening under load")

    def _close(self, now_ms):
        # Every condition once more, right where the coil is driven.
        if (
            self.active
            or self.latched
            or self.offer.pausing
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
            or (self.case_b and not self.hw.lock.feedback())
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
        self.offer.stop_ms = None
        held = self._f_hold  # a trip may add a bit from here on: it is not cleared below
        if held and time.ticks_diff(now_ms, self._trip_ms) < _F_HOLD_MS:
            if self._cp.duty_pm != cpduty.DUTY_F:
                self._cp.low()
            return
        # The hold is over: a flag from now on, not the trip time. A fault waiting days
        # for a technician would read it as negative once the ticks wrap (2**29 ms, 6.2
        # days on a 32-bit port) and go back to F.
        st = self._irq_off()
        self._f_hold &= ~held
        self._irq_on(st)
        if self._cp.duty_pm != cpduty.DUTY_X1:
            self._x1()  # X1 while the fault lasts: we can see the vehicle leave

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
        if self.offered_a <= 0 and not self.offer.waking:
            return "SuspendedEVSE"  # withholding energy wins over the EV's pause
        if self._relays.closed:
            return "Charging"
        return "SuspendedEV"
