# Detection and clearing of every fault of the manual's table (docs/errors.md).
#
# The relay-open path is charger.trip(), called right here where a rule fires (and from
# the RCD interrupt through the board). This module then does the slow part: fault
# records, latches on disk, thermal derating, and the clear condition of each fault.
import math
import time
from micropython import const

import atomicfile
from evse import charger
from evse import faults
from evse import limits
from evse import offer
import log
from evse import pilot

_log = log.get("protection")

# Thresholds (docs/errors.md). Mains 230 V ±15 % (manual §5).
OVP_V = 264.5
OVP_FAST_V = 276.0  # +20 %: trip at once
OVP_CLEAR_V = 257.0
LVP_V = 195.5
LVP_CLEAR_V = 202.0
MIS_V = 50.0  # below this a phase is missing, not just low
_V_HOLD_MS = const(2000)
_V_CLEAR_MS = const(10000)
# Over-current: EVerest rule (STANDARDS.md §3): above (offered + 0.5 A) * 1.10 for 7 s;
# far above (offered + 8 A) at the next reading. The vehicle has 5 s to follow a lower
# offer, counted from the change of the duty, and the whole 6 s window of a stop to
# follow the stop (Offer.follow_ref_a).
_OCP_SLOW_MS = const(7000)
OCP_FAST_MARGIN_A = 8.0
_OCP_CLEAR_MS = const(60000)
_MET_TRIP_MS = const(3000)
# No valid reading for this long, failed or never taken (a metering task that hangs): the
# 3 s of failures after a last good reading that may be up to one 1 s period older.
_NO_READING_MS = const(4000)
_MET_CLEAR_MS = const(5000)
PE_N_V = 30.0  # TN/TT: neutral-to-earth voltage above this = earth fault
_PE_HOLD_MS = const(200)
_PE_NV_HOLD_MS = const(1000)
ROT_TRIP_C = limits.RELAY_DERATE_C[1]
ROT_CLEAR_C = 60.0
OCT_TRIP_C = limits.SOCKET_DERATE_C[1]
OCT_CLEAR_C = 55.0
FAN_ON_ENV_C = 40.0
FAN_ON_RELAY_C = 50.0
FAN_MIN_RPM = 300
_FAN_HOLD_MS = const(5000)
_FAN_RETRY_MS = const(60000)
_WELD_HOLD_MS = const(500)
_STUCK_HOLD_MS = const(1000)
_CP_CLEAR_MS = const(3000)
_CAN_CLEAR_MS = const(10000)
# The thresholds in each fault's clear text (faults.TABLE), from the constants above:
# one source for the rule and for what the Report page says of it.
_CLEAR_ARGS = (
    ("OCP", (_OCP_CLEAR_MS // 1000,)),
    ("OVP", (OVP_CLEAR_V, _V_CLEAR_MS // 1000)),
    ("LVP", (LVP_CLEAR_V, _V_CLEAR_MS // 1000)),
    ("MET", (_MET_CLEAR_MS // 1000,)),
    ("CP", (_CP_CLEAR_MS // 1000,)),
    ("ROT", (ROT_CLEAR_C,)),
    ("OCT", (OCT_CLEAR_C,)),
    ("FAN", (_FAN_RETRY_MS // 1000,)),
    ("MIS", (LVP_V, _V_CLEAR_MS // 1000)),
    ("CAN", (_CAN_CLEAR_MS // 1000,)),
)


def clear_text(code):
    """What clears fault `code` (faults.TABLE's text with its thresholds), or None."""
    r = faults.row(code)
    if r is None:
        return None
    for c, args in _CLEAR_ARGS:
        if c == code:
            return r[5] % args
    return r[5]
# A timer whose hold is over keeps this instead of its start (ticks are never negative):
# a start days old would read as negative once the ticks wrap (2**29 ms, 6.2 days, on a
# 32-bit port), and a condition that has long held would look new again.
_HELD = const(-1)
# The latching trips whose cause the sensors show (ELK's needs a lock test).
_SENSED = faults.PE | faults.IRD | faults.R12 | faults.R3N


class Protection:
    def __init__(self, charger, hw, settings, history=None, data_dir="."):
        self.ch = charger
        self.hw = hw
        self.settings = settings
        self.history = history
        self._latch_path = data_dir + "/latched.json"
        self._saved = 0  # the latched bits last written to flash whole
        self._save_failed = False  # the last write failed: retried every tick, logged once
        self._failed_bits = None  # the latched bits whose write failed in this tick
        self._since = {}  # rule name -> ticks_ms when its condition began, or _HELD
        self._trip_ms = {}  # bit -> ticks_ms of its trip, _HELD once its F hold is over
        self._spin_ms = None  # when the fan was last switched; None: spun up
        self.meter_ok = True
        self._valid_ms = None  # the last valid reading (from the first tick until one comes)
        self._meter_fail_ms = None
        self._meter_good_ms = None
        self.weld = 0  # R12/R3N bits that are welds (latched), not stuck-open
        self.readings = None  # last internal meter readings (dict) for views
        self.fan_on = False
        self.external_meter_lost = False
        self.can_clash = False

    # ---- latches survive restarts ------------------------------------------------------
    def load_latches(self):
        # Fail closed: a record that cannot be read in full (a bad copy, the wrong types,
        # a code this firmware does not latch) may have held any trip, so LAT latches on
        # top of whatever could be read, until a technician clears it.
        # A latch is only ever added between two writes but by a technician's clear, so
        # every copy that may be the newest counts (a whole .tmp the renames never
        # reached holds a trip the older latched.json lacks): a trip is never lost, at
        # worst a clear cut by the power comes back.
        bad = []
        copies = atomicfile.load_json_copies(self._latch_path, bad.append, want=dict)
        bits = 0
        for saved in copies:
            codes = saved.get("latched") if isinstance(saved, dict) else None
            if not isinstance(codes, list):
                bad.append("no list of latched codes")
                continue
            for code in codes:
                r = faults.row(code) if isinstance(code, str) else None
                if r and r[2]:
                    bits |= r[1]
                else:
                    bad.append("%r is no latching code" % (code,))
        if bad:
            bits |= faults.LAT
        if bits:
            self.ch.latch(bits)
            for b in _bits(bits):
                self.ch.trip(b)
            # Recorded before the restart (not a trip since); LAT is new: it is recorded.
            self.ch.take_tripped(bits & ~faults.LAT)
            self.weld = bits & (faults.R12 | faults.R3N)
        # Trip first, then log (the log may wait on a UART).
        if bad:
            _log.error("latched trips unreadable (%s): ERR LAT", "; ".join(bad))
        if bits:
            _log.warning("latched trips from before the restart: %s", faults.codes(bits))
        self._saved = bits & ~faults.LAT
        if bad or len(copies) > 1:
            # The write a cut interrupted is completed first: a whole .tmp may be the
            # only copy of the newest trip, and the rewrite below starts by truncating
            # .tmp. Renamed to latched.json it stays whole through a cut of the rewrite.
            try:
                atomicfile.finish_write(self._latch_path)
            except OSError as e:
                _log.error("latched.json: interrupted write not completed (%s)", e)
            self._save_latches()  # whole again, LAT in it: a restart keeps it

    def _causes_present(self, bits):
        """The latched bits among `bits` whose cause the sensors still show."""
        hw = self.hw
        still = 0
        if bits & faults.PE:
            pe = hw.pe
            pe.read()
            if not self._pe_continuity(pe) or (self._tn() and pe.n_pe_v > PE_N_V):
                still |= faults.PE
        if bits & faults.IRD and hw.rcd.tripped():
            still |= faults.IRD
        # A lock that failed: only a lock test since (engaged, then released, each
        # confirmed by its feedback) shows it works again. A board without a lock has
        # nothing to test.
        if bits & faults.ELK and hw.lock.fitted and not self.ch.lock.tested:
            still |= faults.ELK
        # A welded contact reads closed with the coil released (the relays are open
        # while a trip is latched).
        for n, bit in ((1, faults.R12), (2, faults.R3N)):
            if bits & bit and not hw.relays.closed and hw.relays.feedback(n):
                still |= bit
        # LAT stands for trips that are unknown: any of them whose cause the sensors show
        # (a weld, no earth, the RCD line up) keeps it, or the clear would take that one.
        if bits & faults.LAT and self._causes_present(_SENSED):
            still |= faults.LAT
        return still

    def _test_lock(self, still):
        """ELK's cause counts as present until a lock test has passed: start one."""
        if still & faults.ELK:
            self.ch.lock.start_test()
            return True
        return False

    def _save_latches(self):
        """Writes the latched trips. A failed write (flash full or failing) leaves them
        unsaved: _persist() tries again at every tick until one succeeds."""
        bits = self.ch.latched
        try:
            atomicfile.save_json(self._latch_path, {"latched": faults.codes(bits)})
        except OSError as e:
            self._failed_bits = bits  # not again in this tick unless a latch changes
            if not self._save_failed:
                self._save_failed = True
                _log.error("latched trips %s not saved (%s): retrying", faults.codes(bits), e)
            return
        self._saved = bits
        if self._save_failed:
            self._save_failed = False
            _log.warning("latched trips %s saved", faults.codes(bits))

    def _persist(self):
        """Writes the latched trips whenever they differ from what flash holds: a trip the
        interrupt latched, a write that failed before (once per tick: a failing flash
        write is slow, and the same bits written again in the same tick would fail too)."""
        latched = self.ch.latched
        if latched != self._saved and latched != self._failed_bits:
            self._save_latches()

    def technician_clear(self, codes=None):
        """Authenticated action of the Report page: clears latched trips whose cause is
        gone (all of them when codes is None). Named codes that are not latched but
        active, or whose cause is still present, raise ValueError and clear nothing."""
        ch = self.ch
        # Before the causes are read: an RCD edge after the fault line was read down is
        # a new trip, which unlatch() below keeps.
        rcd_count = ch.rcd_irq_count
        # A trip latched in trip() itself (the RCD interrupt's IRD) that this task has not
        # recorded yet (its record, its report, the end of the session it hit) is not
        # cleared before it is recorded.
        pending = ch.tripped_new & charger.LATCH_AT_TRIP
        if codes is None:
            bits = ch.latched & ~pending
            still = self._causes_present(bits)
            self._test_lock(still)
            bits &= ~still  # the rest stay latched
        else:
            bits = 0
            for code in codes:
                r = faults.row(code)
                if r is None:
                    raise ValueError("unknown fault code " + code)
                if ch.latched & pending & r[1]:
                    raise ValueError(code + " has just tripped: not recorded yet, clear it again")
                if ch.latched & r[1]:
                    bits |= r[1]
                elif ch.active & r[1]:
                    # Its own clear rule decides (docs/errors.md): clearing an active
                    # over-voltage by hand would let the relays close into it.
                    raise ValueError(code + " is not a latched trip: it clears by itself")
            still = self._causes_present(bits)
            if still:
                msg = "cause still present: " + ", ".join(faults.codes(still))
                if self._test_lock(still):
                    msg += " (a lock test has started: clear again once it has passed)"
                raise ValueError(msg)
        if not bits:
            return []
        asked = bits
        bits = ch.unlatch(bits, rcd_count)
        if asked & ~bits:
            _log.error("RCD tripped during the clear: IRD stays latched")
        if not bits:
            return []
        if bits & faults.ELK:
            ch.lock.tested = False  # a later ELK needs a test of its own
        self.weld &= ~bits
        if bits & faults.IRD:
            ch.rcd_test.failed = False
        self._save_latches()
        cleared = faults.codes(bits)
        for code in cleared:
            self._report(code, False)
        _log.warning("technician cleared %s", cleared)
        return cleared

    # ---- called by the tasks -----------------------------------------------------------
    def tick(self, now_ms):
        """Every ~100 ms: fast sensors, then record what tripped, then clear rules."""
        ch = self.ch
        hw = self.hw
        # First, before any sensor read that may raise: a trip latched since the last
        # tick (the RCD interrupt's IRD) reaches flash even if the rest of the tick fails.
        self._failed_bits = None  # a write that failed last tick is tried again now
        self._persist()
        if hw.rcd.tripped() and not ch.rcd_test.testing:
            ch.trip(faults.IRD)  # backup for a missed interrupt edge
            self._persist()
        if self._valid_ms is None:
            self._valid_ms = now_ms
        elif _held(now_ms, self._valid_ms, _NO_READING_MS):
            # No valid reading, failed or not taken at all (the metering task hangs): OVP,
            # LVP, MIS and OCP are as blind as with a silent meter. Kept just held, so
            # an outage of days does not read as negative once the ticks wrap.
            self._valid_ms = time.ticks_add(now_ms, -_NO_READING_MS)
            self.meter_ok = False
            self._meter_good_ms = None
            ch.trip(faults.MET)
        self._check_relays(now_ms)
        self._check_pe(now_ms)
        self._check_temps(now_ms)
        self._check_fan(now_ms)
        self._record_new(now_ms)
        self._clear_rules(now_ms)

    def on_meter(self, now_ms, ok):
        """After each internal-meter read (~1 s): voltage, phases, current, comms."""
        if ok and not meter_valid(self.hw.meter):
            if self._meter_fail_ms is None:
                _log.error("internal meter reading is not a number")
            ok = False
        if not ok:
            self._meter_good_ms = None
            # The voltage and current rules run on good readings only: a timer one of
            # them started would otherwise outlive an outage of days, read as negative
            # once the ticks wrap, and never fire again. The next good reading starts it.
            for name in ("ovp", "lvp", "mis", "ocp"):
                self._since.pop(name, None)
            if self._meter_fail_ms is None:
                self._meter_fail_ms = now_ms
            # Once tripped, a failure lasting days no longer looks at when it began.
            elif not self.meter_ok or _held(now_ms, self._meter_fail_ms, _MET_TRIP_MS):
                self.meter_ok = False
                self.ch.trip(faults.MET)
            return
        self._meter_fail_ms = None
        self._valid_ms = now_ms
        if self._meter_good_ms is None:
            self._meter_good_ms = now_ms
        if not self.meter_ok and _held(now_ms, self._meter_good_ms, _MET_CLEAR_MS):
            self.meter_ok = True
        m = self.hw.meter
        if self.ch.offer.pausing and max(m.amps) < offer.CURRENT_GONE_A:
            self.ch.offer.current_gone()  # a mild pause: the vehicle has stopped drawing
        self._check_voltage(now_ms, m.volts)
        self._check_current(now_ms, m.amps)

    # ---- rules ----------------------------------------------------------------------------
    def _cond(self, name, cond, now_ms, hold_ms):
        """True once `cond` has held for hold_ms (a per-rule timer)."""
        if not cond:
            self._since.pop(name, None)
            return False
        t = self._since.get(name)
        if t is None:
            t = self._since[name] = now_ms
        if t != _HELD:
            if not _held(now_ms, t, hold_ms):
                return False
            self._since[name] = _HELD
        return True

    def _used_phases(self):
        return 3 if self.ch.phases == 3 else 1

    def _check_voltage(self, now_ms, volts):
        n = self._used_phases()
        vs = volts[:n]
        hi = max(vs)
        lo = min(vs)
        if hi >= OVP_FAST_V or self._cond("ovp", hi > OVP_V, now_ms, _V_HOLD_MS):
            self.ch.trip(faults.OVP)
        missing = n == 3 and lo < MIS_V and hi >= LVP_V
        # Mild conditions (docs/errors.md): a pause that lets the vehicle stop drawing.
        if self._cond("mis", missing, now_ms, _V_HOLD_MS):
            self.ch.pause(faults.MIS)
        if not missing and self._cond("lvp", lo < LVP_V, now_ms, _V_HOLD_MS):
            self.ch.pause(faults.LVP)

    def _check_current(self, now_ms, amps):
        ch = self.ch
        # A vehicle still following a lower offer or a stop is not over-current: one
        # still drawing when a stop's 6 s are over is opened under load, not tripped.
        ref = ch.offer.follow_ref_a(now_ms)
        draw = max(amps)
        if not self.hw.relays.closed:
            self._since.pop("ocp", None)
            return
        if draw > ref + OCP_FAST_MARGIN_A or self._cond(
            "ocp", draw > (ref + 0.5) * 1.10, now_ms, _OCP_SLOW_MS
        ):
            ch.trip(faults.OCP)  # first: the log may wait on a UART
            _log.error("over-current: %.1f A drawn, %.1f A offered", draw, ref)

    def _tn(self):
        return self.settings["power_system"] == "TN_TT"

    def _pe_continuity(self, pe):
        """The earth's continuity as the board reads it. Without a continuity input a lost
        PE floats above PE_N_V in TN/TT; in IT the N-PE voltage says nothing about the
        earth (docs/errors.md), so there the board has no check of its own."""
        if pe.continuity is None:
            return not self._tn() or pe.n_pe_v < PE_N_V
        return pe.continuity

    def _check_pe(self, now_ms):
        pe = self.hw.pe
        pe.read()
        tn = self._tn()
        bad = not self._pe_continuity(pe)
        if self._cond("pe", bad, now_ms, _PE_HOLD_MS):
            self._latch(faults.PE, "no earth continuity")
        if self._cond("pe_nv", tn and pe.n_pe_v > PE_N_V, now_ms, _PE_NV_HOLD_MS):
            self._latch(faults.PE, "neutral-earth voltage %.0f V" % pe.n_pe_v)

    def _check_relays(self, now_ms):
        r = self.hw.relays
        for n, bit in ((1, faults.R12), (2, faults.R3N)):
            fb = r.feedback(n)
            if self._cond("weld%d" % n, not r.closed and fb, now_ms, _WELD_HOLD_MS):
                if not self.weld & bit:
                    self.weld |= bit
                    self._latch(bit, "relay %d welded" % n)
            if self._cond("stuck%d" % n, r.closed and not fb, now_ms, _STUCK_HOLD_MS):
                self.ch.trip(bit)

    def _check_temps(self, now_ms):
        t = self.hw.temps
        t.read()
        ch = self.ch
        if t.relay_c is None or t.relay_c >= ROT_TRIP_C:
            ch.trip(faults.ROT)
        if t.socket_c is None or t.socket_c >= OCT_TRIP_C:
            ch.trip(faults.OCT)
        # Heat follows the current, so derate from the hardware rating, not the setting.
        was = ch.thermal_a
        ch.thermal_a = limits.thermal_limit(limits.MODEL_A, t.relay_c, t.socket_c)
        if ch.thermal_a is not None and (was is None or ch.thermal_a < was):
            ch.limit_changed()  # a lower derating cuts the offer now

    def _check_fan(self, now_ms):
        t = self.hw.temps
        fan = self.hw.fan
        hot = (t.env_c is not None and t.env_c >= FAN_ON_ENV_C) or (
            t.relay_c is not None and t.relay_c >= FAN_ON_RELAY_C
        )
        want = hot or self.hw.relays.closed or bool(self.ch.active & faults.FAN)
        if want != fan.running:
            fan.run(want)
            self._since.pop("fan", None)
            self._spin_ms = now_ms
        if not fan.running:
            return
        # Give the fan 2 s to spin up before judging the tachometer; then forget when it
        # started: a fan that runs for days would read that time as negative.
        if self._spin_ms is not None:
            if not _held(now_ms, self._spin_ms, 2000):
                return
            self._spin_ms = None
        if self._cond("fan", fan.rpm() < FAN_MIN_RPM, now_ms, _FAN_HOLD_MS):
            self.ch.pause(faults.FAN)  # mild: the temperatures have their own trips

    def _latch(self, bit, why):
        ch = self.ch
        fresh = not ch.latched & bit  # before trip(), which latches IRD and ELK itself
        ch.trip(bit)
        if fresh:
            # Recorded as new even when the bit was already active without a latch (a relay
            # stuck open, then welded): the latch ends the session and has its own record.
            ch.latch(bit, new=bit)
            self._save_latches()
            _log.error("%s latched: %s", faults.codes(bit), why)

    # ---- records ---------------------------------------------------------------------------
    def _record_new(self, now_ms):
        ch = self.ch
        new = ch.take_tripped()
        if not new:
            return
        # IRD latched in trip() itself, a latching ELK beside it (charger.LATCH_AT_TRIP).
        self._persist()
        for bit in _bits(new):
            code = faults.codes(bit)[0]
            self._trip_ms[bit] = now_ms
            _log.error("fault %s (%s)", code, faults.row(code)[4])
            self._report(code, True)
            if ch.session is not None and ch.latched & bit:
                ch.end_session("Fault")
            if self.history is not None:
                self.history.add_fault(code, self._fault_values(code))

    def _fault_values(self, code):
        ch = self.ch
        v = {"cp_state": pilot.NAMES[ch.cp_state], "offered_a": ch.offered_a}
        m = self.readings
        if m:
            v["volts"] = m.get("volts")
            v["amps"] = m.get("amps")
        t = self.hw.temps
        v["relay_c"] = t.relay_c
        v["socket_c"] = t.socket_c
        if code == "CP":
            v["cause"] = ch.cp_fault_cause
            v["cp_hi_mv"] = ch.cp_fault_hi_mv
            v["cp_lo_mv"] = ch.cp_fault_lo_mv
            v["cp_zero_mv"] = ch.cp_cal.zero_mv
        return v

    def _report(self, code, active):
        rep = getattr(self.hw, "report_error", None)
        if rep:
            rep(code, active)

    # ---- clear conditions (docs/errors.md) ---------------------------------------------------
    def _clear_rules(self, now_ms):
        ch = self.ch
        act = ch.active & ~ch.latched
        if not act:
            return
        m = self.hw.meter
        volts = m.volts[: self._used_phases()] if self.meter_ok else None
        t = self.hw.temps
        conds = (
            (faults.OCP, "c_ocp", True, _OCP_CLEAR_MS),
            (faults.OVP, "c_ovp", volts is not None and max(volts) < OVP_CLEAR_V, _V_CLEAR_MS),
            (faults.LVP, "c_lvp", volts is not None and min(volts) > LVP_CLEAR_V, _V_CLEAR_MS),
            (faults.MIS, "c_mis", volts is not None and min(volts) > LVP_V, _V_CLEAR_MS),
            (faults.MET, "c_met", self.meter_ok and not self.external_meter_lost, 0),
            (faults.ROT, "c_rot", t.relay_c is not None and t.relay_c < ROT_CLEAR_C, 0),
            (faults.OCT, "c_oct", t.socket_c is not None and t.socket_c < OCT_CLEAR_C, 0),
            (faults.FAN, "c_fan", self.hw.fan.running and self.hw.fan.rpm() >= FAN_MIN_RPM, 2000),
            (faults.CP, "c_cp", self._cp_ok(), _CP_CLEAR_MS),
            (faults.PP, "c_pp", self._pp_ok(), 0),
            (faults.CAN, "c_can", not self.can_clash, _CAN_CLEAR_MS),
            (faults.R12, "c_r12", ch.cp_state == pilot.STATE_A, 0),
            (faults.R3N, "c_r3n", ch.cp_state == pilot.STATE_A, 0),
            # A lock that never confirmed (not latched): the plug was pulled out.
            (faults.ELK, "c_elk", ch.lock.elk_unplugged, 0),
        )
        for bit, name, cond, hold in conds:
            if not act & bit:
                self._since.pop(name, None)
                continue
            # No clear during the F hold right after the trip.
            t = self._trip_ms.get(bit, now_ms)
            if t != _HELD:
                if not _held(now_ms, t, 1000):
                    continue
                self._trip_ms[bit] = _HELD
            if self._cond(name, cond, now_ms, hold):
                self._since.pop(name, None)
                ch.clear(bit)
                self._report(faults.codes(bit)[0], False)
                if self.history is not None:
                    self.history.fault_cleared(faults.codes(bit)[0])

    def _cp_ok(self):
        ch = self.ch
        cause = ch.cp_fault_cause
        s = ch.cp_state
        if cause == "diode":
            # A missing diode only clears with a new plug-in: once the vehicle has left,
            # the levels of whatever is plugged in next decide, as for any CP fault.
            if s != pilot.STATE_A:
                return False
            ch.cp_fault_cause = "level"
            return True
        if cause == "ventilation":
            return s in (pilot.STATE_A, pilot.STATE_B)
        return s in (pilot.STATE_A, pilot.STATE_B)

    def _pp_ok(self):
        ch = self.ch
        if ch.cp_state == pilot.STATE_A:
            return True
        return limits.cable_rating(self.hw.pp_adc.read_ohm()) is not None


def meter_valid(m):
    """True when every reading of the meter is a finite number. NaN compares false with
    every threshold, so a NaN voltage or current would blind OVP, LVP, MIS and OCP:
    such a reading counts as no answer (MET)."""
    try:
        for vals in (m.volts, m.amps):
            for v in vals:
                if not math.isfinite(v):
                    return False
        return math.isfinite(m.hz) and math.isfinite(m.power_w) and math.isfinite(m.energy_wh)
    except TypeError:  # None or text where a number belongs
        return False


def _held(now_ms, since_ms, hold_ms):
    return time.ticks_diff(now_ms, since_ms) >= hold_ms


def _bits(mask):
    b = 1
    while b <= mask:
        if mask & b:
            yield b
        b <<= 1
