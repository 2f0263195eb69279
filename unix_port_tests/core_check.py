# The invariants of the charging core, judged from the outside (docs/invariants.md).
#
# The oracle sees what a test bench would: the board's output writes (relay coils, the
# pilot, the lock actuator, the RCD test input, the fault report, the indicators), the
# pilot samples the charger took, what the plant did (EV, contacts, RCD, earth, meter,
# temperatures, fan) and the answers of the session and technician APIs. It never reads
# the charger's own flags. Its reference is the documentation: docs/errors.md gives
# every fault's detection and clear times; a fault is "sure" once its cause has been
# visible to the charger longer than the slowest documented detection, and stays sure
# until the earliest documented clear. Margins go the lenient way, so a violation is a
# defect, not a timing accident of the model.
from core_model import amps_of, pp_rating
from evse.auth import PENDING_MS

_INF = 1e9

LATCHING = ("IRD", "PE", "R12", "R3N", "ELK")
# A mild condition's pause (docs/errors.md): the PWM stops at once, the relays open once
# the vehicle's current is below 1 A at a meter reading (1 s apart), or 6 s after the stop.
CURRENT_GONE_A = 1.0
_GONE_SEEN_MS = 1300  # one meter period, the reading's task step and margin
# Plug-ins in a row whose lock never confirmed that latch ELK (socketlock._LOCK_FAILS_LATCH).
LOCK_FAILS_LATCH = 3
# The lock's feedback seen this long with the pilot task (the control tick) running: the
# charger has seen it confirm.
_LOCK_SEEN_MS = 200


class Rule:
    """One way a fault of the table is caused, as the plant shows it. `sure`: the charger
    must have this fault active now; `maybe`: it may have (its cause was visible and has
    not been gone long enough for any clear), which relaxes the checks that the charger
    makes only while no fault stands (the lock, PP)."""

    def __init__(self, code, det_ms, clear_ms=0, latched=False, from_trip=False, glitch_ms=100,
                 mild=False):
        self.code = code
        # A pause, not an immediate opening: the relays may stay closed while the vehicle
        # still draws, within the 6 s after the PWM stopped.
        self.mild = mild
        self.det_ms = det_ms
        # A cause shorter than this can slip between the charger's looks (protection's
        # 100 ms tick, the pilot's debounce, the meter's 1 s reading): it restarts no clear.
        self.glitch_ms = glitch_ms
        self.clear_ms = clear_ms
        self.latched = latched
        self.from_trip = from_trip  # clears clear_ms after the trip (OCP), not after a condition
        self.reset()

    def reset(self):
        self.on = None  # cause visible to the charger continuously since
        self.sure = None  # the charger must have tripped by then: it is active
        self.sure_lb = None  # ... and it cannot have tripped before then
        self.maybe = None  # the cause was first visible then
        self.last = None  # ... and last visible then
        self.clr = None  # clear condition continuously since
        self.unclear = None  # ... broken since

    def update(self, now, cause, clear):
        if cause:
            if self.on is None:
                self.on = now
            if self.maybe is None:
                self.maybe = now
            self.last = now
            if self.sure is None and now - self.on >= self.det_ms:
                self.sure = now
                self.sure_lb = self.on
            if now - self.on >= self.glitch_ms:
                self.clr = None
            return
        self.on = None
        if self.maybe is None or self.latched:
            return
        if self.from_trip:
            if self.sure is not None and now - self.sure_lb >= self.clear_ms:
                self.sure = None
            if now - self.last >= self.clear_ms + 2000:
                self.maybe = self.sure = None
            return
        if not clear:
            # The same for a spell that breaks the clear condition.
            if self.unclear is None:
                self.unclear = now
            if now - self.unclear >= self.glitch_ms:
                self.clr = None
            return
        self.unclear = None
        if self.clr is None:
            self.clr = now
        # (The charger holds F 1 s after its trip, but its trip may predate what the model
        # saw: no bound from it.)
        if self.sure is not None and now - self.clr >= self.clear_ms:
            self.sure = None
        # Past any clear the charger may make, late readings and holds included.
        if now - self.clr >= self.clear_ms + 6000:
            self.maybe = self.sure = None


class Src:
    """A limit and its recent values: a reduction may take `grace_ms` to reach the
    pilot, so the offer is judged against the highest value of that window."""

    def __init__(self, grace_ms, value):
        self.grace = grace_ms
        self.hist = [(-_INF, value)]

    def set(self, now, value):
        if value != self.hist[-1][1]:
            self.hist.append((now, value))
            if len(self.hist) > 16:
                del self.hist[:8]

    def eff(self, now):
        lim = -1.0
        since = now - self.grace
        for i in range(len(self.hist) - 1, -1, -1):
            t, v = self.hist[i]
            v = _INF if v is None else v
            if v > lim:
                lim = v
            if t <= since:
                break
        return lim


def thermal_a(relay_c, socket_c):
    """docs/errors.md: derated linearly from 32 A to 6 A, relays 70-85 °C, socket 60-75 °C;
    at the trip temperature (or an open sensor) nothing."""
    lim = _INF
    for temp, start, trip in ((relay_c, 70.0, 85.0), (socket_c, 60.0, 75.0)):
        if temp is None or temp >= trip:
            return 0.0
        if temp > start:
            lim = min(lim, 6.0 + 26.0 * (trip - temp) / (trip - start))
    return lim


class Oracle:
    def __init__(self, run):
        self.run = run  # the scenario runner: clock, board, settings, task states
        self.b = run.board
        self.clock = run.clock
        self.failure = None  # (rule, t, message): the first violation
        self.stats = {"closes": 0, "offers": 0, "trips": 0, "sessions": 0, "selftests": 0,
                      "releases": 0, "latches": 0, "holds": 0, "boots": -1, "clears": 0}
        r = Rule
        self.rules = [
            r("OCP", 1300, 60000, from_trip=True),
            r("OVP", 3100, 10000, glitch_ms=1100),
            r("OVP", 1100, 10000, glitch_ms=1100),  # 276 V and above: at the next reading
            r("LVP", 3100, 10000, glitch_ms=1100, mild=True),
            r("MIS", 3100, 10000, glitch_ms=1100, mild=True),
            # 4 s after the last valid reading, whatever the metering task does.
            r("MET", 4300, 5000, glitch_ms=1100),
            r("PE", 400, latched=True),
            r("PE", 1300, latched=True),  # TN/TT: N-PE voltage
            r("R12", 700, latched=True),  # welded
            r("R3N", 700, latched=True),
            r("R12", 1200),  # stuck open: clears with the vehicle gone
            r("R3N", 1200),
            r("ROT", 300),
            r("OCT", 300),
            r("FAN", 7300, 2100, mild=True),
            r("CP", 100, 3000, glitch_ms=50),  # shorted to PE
            r("CP", 100, 3000, glitch_ms=50),  # no diode under the PWM: a plug-out clears it
            r("CP", 100, 3000, glitch_ms=50),  # D without ventilation
            r("PP", 600),
            r("ELK", 400, latched=True),  # a lock that confirmed, then lost
            r("IRD", 800, latched=True),  # a residual current
            r("IRD", 700, latched=True),  # the self-test input does not trip the module
            r("CAN", 0, 10000, mild=True),  # load balancing saw its CAN address used twice
            r("MET", 0, 0, mild=True),  # power management lost the external meter
            # A lock that never confirmed in this session: not latched (no current has
            # flowed), cleared by the unplug; the third plug-in in a row latches it.
            r("ELK", 2300),
        ]
        self.lock_fails = 0  # plug-ins in a row the charger must have counted as a lock failure
        self.diode_fault = False  # a missing diode tripped: only a plug-out clears it
        self._cause = [False] * len(self.rules)
        self._clear = [False] * len(self.rules)
        self.any_sure = None
        self.latched = set()  # codes the charger must keep until a technician clears them
        # ... those of them that a damaged latched.json hid: LAT stands for them at boot,
        # and a clear of LAT takes them (only once no cause of theirs is present)
        self.lat_hidden = set()
        grace = 150  # a setting or a PP reading reaches the pilot at the next control tick
        self.src = {
            "max": Src(grace, float(run.settings["max_current_a"])),
            "cable": Src(grace, None),
            "thermal": Src(250, None),  # protection reads the sensors, then the control tick
        }
        self.free = run.settings["auth_mode"] == "free"
        self.dirty = True  # something but the clock moved since the last check
        self.checked = 0
        self.reboot()

    # ---- state that a power cut loses ---------------------------------------------------
    def reboot(self):
        now = self.clock.now
        self.stats["boots"] += 1
        self.auth_t = None  # the session's authorization was accepted then
        self.auth_end = ("boot", now)
        self.held_from = None  # the supervisor must hold the charger from then
        self.last_nonzero = 0.0  # the last current the PWM offered
        self.offer_t = -_INF  # the last change of the offer
        self.pwm_start = None
        self.pwm_stop = now  # PWM static since
        self.test_on = None  # RCD test input driven since
        self.test_state = None  # "on": the line rose on the test input; "off": input released
        self.selftest_ok = None
        self.lock_lost = None  # lock feedback missing (with the coil closed) since
        self.lock_fails = 0  # the charger counts them in RAM
        self.lock_seated = None  # the charger surely saw the lock confirm on this plug-in then
        self._lock_session()
        self.low_since = None  # the vehicle's current below 1 A, the meter answering, since
        self.ev_bad = now  # the EV outside C (or D with ventilation) since
        self.ev_a = None  # the EV in state A since
        for rule in self.rules:
            if not rule.latched:
                rule.reset()
            else:
                rule.on = None
        self.diode_fault = False
        self.cp_cause = False  # a CP cause seen since boot or since the CP fault last cleared
        self.d_vent = None  # the ventilation setting when the EV entered D
        self.not_ab = now  # the EV outside A and B (or shorted) since
        self.boot_t = now
        self.plugged = False  # the EV seen out of A since the boot or its last unplug
        self.a_from = None  # ... which began then
        self.grant = None  # free mode: "unused" until the plug-in's session shows, "used"
        self.pending = None  # an authorization given before plug-in: its expiry (auth.py)
        # ... taken by a plug-in the charger may not have seen yet (no PWM, no self-test):
        # an unplug before it was seen leaves the charger's wait in place.
        self.pend_unseen = None
        self.latched_seen = now
        self._limit_key = None
        # Named limits live in RAM: after a restart their owners (OCPP, power management,
        # load balancing) register them again, and this scenario's owner is the generator.
        self.ext = {}
        self.pilot_out = now  # the pilot task last seen not running
        self.prot_out = now
        self.meter_out = now
        self._cable_from_pp()

    def _lock_reset(self):
        """A new engagement of the lock: what the charger saw of the last one is over."""
        self.lock_fb = None  # the lock's feedback true (pilot task running) since
        self.lock_held = False  # ... for _LOCK_SEEN_MS: the charger has it locked
        self.lock_glimpse = False  # ... at all: the charger may have it locked

    def _lock_session(self):
        """A session starts or ends: so do its tries to lock."""
        self._lock_reset()
        # Kept through the charger's own release after ELK (the cause stays, the fault
        # too): the engagement that began the try (not the retry's pulse), and when a
        # lock the charger had confirmed read open.
        self.lock_try = None
        self.lock_lost_t = None
        self.lock_off = None  # a confirmed lock reading open since
        self.lock_rel_t = None  # the last release write

    def fail(self, rule, msg):
        if self.failure is None:
            self.failure = (rule, self.clock.now, msg)

    # ---- what the charger could have seen -------------------------------------------------
    def ventilation(self):
        return bool(self.run.settings["ventilation"])

    def ev_ok(self):
        ev = self.b.ev
        return not ev.short and (ev.state == "C" or (ev.state == "D" and self.ventilation()))

    def sure(self, code=None):
        if code is None:
            return self.any_sure
        for rule in self.rules:
            if rule.sure is not None and (code is None or rule.code == code):
                return rule
        return None

    def limit(self):
        now = self.clock.now
        lim = 32.0
        for s in self.src.values():
            lim = min(lim, s.eff(now))
        for s in self.ext.values():
            lim = min(lim, s.eff(now))
        return lim

    def _cable_from_pp(self):
        run = self.run
        if run.cfg["socket"]:
            a = pp_rating(self.b.pp_adc.ohm)
            if a is not None:
                self.src["cable"].set(self.clock.now, float(a))
        else:
            self.src["cable"].set(self.clock.now, float(run.settings["cable_max_a"]))

    # ---- the plant, after every step and event -------------------------------------------
    def update(self):
        run = self.run
        b = self.b
        now = self.clock.now
        pilot = run.running("pilot")
        prot = run.running("protection")
        meter = run.running("metering")
        if not pilot:
            self.pilot_out = now
        if not prot:
            self.prot_out = now
        if not meter:
            self.meter_out = now
        crit = pilot and prot
        ev = b.ev
        r = b.relays
        duty = b.cp.duty_pm
        # The EV, as the pilot samples it (not while the charger drives state F).
        sampling = pilot and duty != -2
        if self.ev_ok():
            self.ev_bad = None
        elif self.ev_bad is None or not sampling:
            self.ev_bad = now
        if ev.state == "A" and not ev.short and sampling:
            if self.ev_a is None:
                self.ev_a = now
        else:
            if self.ev_a is not None and now - self.ev_a >= 100:
                self.end_auth("unplug", self.ev_a + 100)
            self.ev_a = None
        if ev.state == "A":
            self.lock_seated = None  # (a glitch the charger missed: it may latch sooner)
            if self.plugged:
                self.plugged = False
                self.a_from = now
                if self.pend_unseen is not None:
                    self.pending = self.pend_unseen  # the charger's wait goes on
                    self.pend_unseen = None
        elif not self.plugged:
            # Free mode: a plug-in (or a boot with the EV plugged) authorizes a session.
            self.plugged = True
            seen = self.a_from is None or now - self.a_from >= 100  # not a glitch of A
            if seen and run.cfg["socket"] and pp_rating(b.pp_adc.ohm) is None:
                # A cable whose rating cannot be read gets no offer (IEC 61851-1 Case B),
                # nor the rating of the cable plugged in before it.
                self.src["cable"].set(now, 0.0)
            if self.pending is not None:
                # Identification before plug-in: the charger starts the session once it
                # sees the vehicle, if that comes before the expiry (it cannot see it
                # sooner than now).
                if now < self.pending:
                    self._pending_start(now)
                    self.pend_unseen = self.pending
                self.pending = None
            if self.free:
                if self.auth_t is None:
                    self.auth_t = now
                    self.auth_end = None
                # An unplug too short for the model to end the authorization may still have
                # ended the charger's session: the plug-in's new one is not used up yet.
                self.grant = "unused"
        if self.grant == "unused" and (duty > 0 or b.rcd.testing):
            self.grant = "used"  # the charger has started the plug-in's session
        if self.pend_unseen is not None and (duty > 0 or b.rcd.testing):
            self.pend_unseen = None  # ... and the one that waited for the vehicle
        if self.ev_a is not None:
            self.diode_fault = False
            if now - self.ev_a >= 100 and self.auth_t is not None:
                self.end_auth("unplug", self.ev_a + 100)
        # The limits the pilot must keep to (worked out again when an input moved).
        t = b.temps
        st = run.settings
        key = (b.pp_adc.ohm, st["cable_max_a"], st["max_current_a"], t.relay_c, t.socket_c)
        if key != self._limit_key:
            self._limit_key = key
            self._cable_from_pp()
            self.src["thermal"].set(now, thermal_a(t.relay_c, t.socket_c))
            self.src["max"].set(now, float(st["max_current_a"]))
        # The faults of docs/errors.md: (cause visible to the charger, clear condition), in
        # the order of self.rules.
        m = b.meter
        used = 3 if b.three_phase else 1
        v = m.true_volts
        hi = max(v[:used])
        lo = min(v[:used])
        answers = meter and not m.silent and m.nan is None
        missing = used == 3 and lo < 50.0 and hi >= 195.5
        tn = run.settings["power_system"] == "TN_TT"
        a_now = self.ev_a is not None
        tr = t.relay_c
        ts = t.socket_c
        fan = b.fan
        # A valid A or B level, as the charger's 100 ms clear rule sees the debounced
        # pilot: a spell elsewhere shorter than five samples and a tick is not seen. (The
        # charger counts its own F hold in.)
        if not sampling:
            pass  # a hung pilot task, or the charger's own F, keeps its last view
        elif not ev.short and ev.state in "AB":
            self.not_ab = None
        elif self.not_ab is None:
            self.not_ab = now
        ab = self.not_ab is None or now - self.not_ab < 150
        pp_bad = run.cfg["socket"] and pp_rating(b.pp_adc.ohm) is None
        others = pp_bad and self._maybe_other("PP")
        lk = b.lock
        rcd = b.rcd
        cz = self._cause
        cl = self._clear
        cz[0] = answers and r.closed and ev.overdraw and b.draw_a() > 0
        cz[1] = answers and hi > 264.5
        cz[2] = answers and hi >= 276.0
        # The clears judge the last readings: a metering task restarting or a meter silent
        # (for less than MET's 3 s) do not reset them; NaN voltages do.
        valid = m.silent or m.nan != "volts"
        cl[1] = cl[2] = valid and hi < 257.0
        cz[3] = answers and not missing and lo < 195.5
        cl[3] = valid and lo > 202.0
        cz[4] = answers and missing
        cl[4] = valid and min(v) > 195.5
        # No valid reading for 3 s: a silent meter, a NaN, or a metering task that hangs.
        cz[5] = prot and (not meter or m.silent or m.nan is not None)
        cl[5] = meter and not m.silent and m.nan is None
        cz[6] = prot and not b.pe.continuity
        cz[7] = prot and tn and b.pe.n_pe_v > 30.0
        cz[8] = prot and not r.closed and r.contact(1)
        cz[9] = prot and not r.closed and r.contact(2)
        cz[10] = prot and r.closed and not r.contact(1)
        cz[11] = prot and r.closed and not r.contact(2)
        cl[10] = cl[11] = a_now
        cz[12] = prot and (tr is None or tr >= 85.0)
        cl[12] = tr is not None and tr < 60.0
        cz[13] = prot and (ts is None or ts >= 75.0)
        cl[13] = ts is not None and ts < 55.0
        cz[14] = prot and fan.running and fan.blocked
        cl[14] = not fan.blocked  # (it stays driven while FAN lasts, and stops once cleared)
        cz[15] = sampling and ev.short
        cl[15] = cl[17] = ab
        cz[16] = sampling and duty > 0 and ev.state != "A" and not ev.short and not ev.diode
        cl[16] = ab and not self.diode_fault
        # D is a CP fault when the EV enters it with ventilation off (docs/errors.md); the
        # setting switched off under an EV already in D only stops the charge.
        if ev.state != "D" or ev.short:
            self.d_vent = None
        elif self.d_vent is None and sampling:
            self.d_vent = self.ventilation()
        cz[17] = sampling and not ev.short and ev.state == "D" and self.d_vent is False
        if cz[15] or cz[16] or cz[17]:
            self.cp_cause = True  # a CP cause the pilot sampled: a CP fault may follow
        cz[18] = crit and not others and pp_bad and ev.state != "A" and not ev.short
        cl[18] = not pp_bad or ev.state == "A"
        # (a free-mode plug-in whose session has not shown yet may have none at all)
        authed = self.auth_t is not None and self.grant != "unused" and ev.state != "A"
        if authed and lk.fitted and lk.feedback():
            if not self.lock_glimpse:
                self.lock_glimpse = True
                self.lock_fails = 0  # the charger may have seen it confirm: lenient
            if not pilot or self.lock_fb is None:
                self.lock_fb = now
            elif now - self.lock_fb >= _LOCK_SEEN_MS:
                self.lock_held = True
                if self.lock_seated is None:
                    self.lock_seated = now
        else:
            self.lock_fb = None
        if not authed:
            self.lock_try = self.lock_lost_t = self.lock_off = None
        elif (crit and lk.fitted and lk.engaged and not lk.feedback() and self.lock_held
              and not self._maybe_other("ELK")):
            # Open longer than a control period: the charger has seen it, and trips.
            if self.lock_off is None:
                self.lock_off = now
            elif self.lock_lost_t is None and now - self.lock_off >= 150:
                self.lock_lost_t = self.lock_off
        else:
            self.lock_off = None
        cz[19] = self.lock_lost_t is not None
        cz[24] = (crit and authed and lk.fitted and self.lock_try is not None
                  and not self.lock_glimpse and not self._maybe_other("ELK"))
        cl[24] = a_now
        cz[20] = crit and rcd.leak
        cz[21] = crit and rcd.testing and rcd.dead and not rcd.leak
        cz[22] = run.can_clash  # both trip synchronously where the feature finds them
        cl[22] = not run.can_clash
        cz[23] = run.ext_lost
        cl[23] = not run.ext_lost  # (a meter silent for less than 3 s is tolerated: MET above)
        self.any_sure = None
        i = -1
        for rule in self.rules:
            i += 1
            if cz[i] or rule.maybe is not None:
                was = rule.sure
                rule.update(now, cz[i], cl[i])
                if rule.sure is not None:
                    if self.any_sure is None:
                        self.any_sure = rule
                    if was is None:
                        if i == 16:
                            self.diode_fault = True
                        if i == 24:
                            self._lock_failed(now)
                        if rule.latched:
                            if i == 19:
                                self.lock_fails = 0
                            self.stats["latches"] += 1
                            self.latched.add(rule.code)
                            self.end_auth("latched " + rule.code, now)
        # The supervisor: a critical task late for its 2 s check-in (+ its 0.5 s loop).
        for name in ("pilot", "protection"):
            st = run.stalled_since(name)
            if st is not None and now - st >= 2600 and self.held_from is None:
                self.stats["holds"] += 1
                self.held_from = st + 2600
                self.end_auth("late " + name, st + 2600)
        if self.held_from is not None and run.stalled_since("pilot") is None and run.stalled_since("protection") is None:
            self.held_from = None
        # Self-test bookkeeping: the input released with the line down is a passed test.
        # The line up while the input is driven, then down within 500 ms of its release:
        # a passed test.
        if self.test_state == "pending" and rcd.testing and rcd.tripped():
            self.test_state = "on"
        if self.test_state == "off":
            if not rcd.tripped():
                self.selftest_ok = now
                self.test_state = None
                self.stats["selftests"] += 1
            elif now - self.test_off > 600:
                self.test_state = None

    def _lock_failed(self, now):
        """A lock that never confirmed: the charger counted it; the third in a row must
        latch (it may latch sooner: it may have counted one the model could not be sure
        of). An engagement after the lock had confirmed on this plug-in latches at once:
        the plug is seated, the lock is broken."""
        self.lock_fails += 1
        seated = (self.lock_seated is not None and self.lock_try is not None
                  and self.lock_try > self.lock_seated)
        if self.lock_fails >= LOCK_FAILS_LATCH or seated:
            self.lock_fails = 0
            self.stats["latches"] += 1
            self.latched.add("ELK")
            self.end_auth("latched ELK", now)

    def _maybe_other(self, code):
        for rule in self.rules:
            if rule.maybe is not None and rule.code != code:
                return True
        return False

    def end_auth(self, why, t):
        if self.grant == "unused" and why != "unplug" and why != "stop":
            # Free mode: a fault or safe state before the plug-in's session started ends
            # nothing; the session starts once it is gone (evse/auth.py).
            return
        if self.auth_t is not None:
            self.grant = None
            self.auth_t = None
            self.auth_end = (why, t)
            self._lock_session()

    # ---- the invariants between writes ---------------------------------------------------
    def check(self):
        now = self.clock.now
        if not self.dirty and now - self.checked < 20:
            return  # nothing moved but the clock: every deadline has 50 ms or more to spare
        self.dirty = False
        self.checked = now
        self.update()
        b = self.b
        now = self.clock.now
        run = self.run
        r = b.relays
        duty = b.cp.duty_pm
        pilot_ok = now - self.pilot_out
        prot_ok = now - self.prot_out
        if r.closed:
            self._track_current()
            f = self.sure()
            if f is not None and f.mild:
                f = self._sure_hard() or f
            if f is not None and not f.mild:
                self.fail("closed-fault", "relays closed while %s is active (sure since %d)" % (f.code, f.sure))
            elif f is not None and self.low_since is not None and now - max(self.low_since, f.sure) > _GONE_SEEN_MS:
                self.fail("closed-mild", "relays closed %d ms after the current was gone, %s paused (sure since %d)"
                          % (now - self.low_since, f.code, f.sure))
            if self.ev_bad is not None and now - max(self.ev_bad, self.pilot_out) > 100:
                self.fail("closed-ev", "relays closed %d ms after the EV left C (EV %s, ventilation %s)" % (
                    now - self.ev_bad, b.ev.state, self.ventilation()))
            if duty <= 0 and pilot_ok > 150 and now - self.pwm_stop > 6200:
                self.fail("closed-pwm", "relays closed %d ms after the PWM stopped" % (now - self.pwm_stop))
            if self.held_from is not None:
                self.fail("closed-held", "relays closed while the supervisor must hold the charger")
            if self.auth_t is None:
                why, t = self.auth_end
                if not (why == "stop" or why == "unplug") and now > t:
                    self.fail("closed-auth", "relays closed after the session ended (%s at %d)" % (why, t))
            if b.lock.fitted:
                if not b.lock.feedback():
                    if self.lock_lost is None:
                        self.lock_lost = now
                    elif now - max(self.lock_lost, self.pilot_out) > 150:
                        self.fail("closed-lock", "relays closed without the lock for %d ms" % (now - self.lock_lost))
                else:
                    self.lock_lost = None
        else:
            self.lock_lost = None
            self.low_since = None
        if duty > 0:
            f = self.sure()
            if f is not None:
                self.fail("pwm-fault", "PWM offered while %s is active (sure since %d)" % (f.code, f.sure))
            if self.held_from is not None:
                self.fail("pwm-held", "PWM offered while the supervisor must hold the charger")
            if self.auth_t is None:
                why, t = self.auth_end
                late = 150 if why == "unplug" else 0
                if now > t + late and pilot_ok > 150:
                    self.fail("pwm-auth", "PWM offered after the session ended (%s at %d)" % (why, t))
            if pilot_ok > 150 and prot_ok > 300:
                self._check_offer(amps_of(duty))
        # (The control tick releases it: a pilot task that hangs holds it, relays open.)
        if self.test_on is not None and now - max(self.test_on, self.pilot_out) > 1000:
            self.fail("selftest-held", "RCD test input driven for %d ms" % (now - self.test_on))
        if not self.latched or not run.running("hmi"):
            self.latched_seen = now
        elif now - max(self.latched_seen, self.boot_t) > 400 and not b.display_text.startswith("ERR"):
            self.fail("latch-shown", "latched %s but the display shows %r" % (sorted(self.latched), b.display_text))

    def _sure_hard(self):
        for rule in self.rules:
            if rule.sure is not None and not rule.mild:
                return rule
        return None

    def _track_current(self):
        """Since when the vehicle's current has been below CURRENT_GONE_A on every phase
        with the meter answering (what the charger can read)."""
        b = self.b
        m = b.meter
        if (self.run.running("metering") and not m.silent and m.nan is None
                and b.draw_a() < CURRENT_GONE_A):
            if self.low_since is None:
                self.low_since = self.clock.now
        else:
            self.low_since = None

    def _check_offer(self, amps):
        lim = self.limit()
        if amps > lim + 1e-3:
            self.fail("offer-limit", "PWM offers %.2f A, the binding limit is %.2f A (%s)" % (amps, lim, self._limits_text()))

    def _limits_text(self):
        now = self.clock.now
        parts = ["%s %s" % (k, _a(s.eff(now))) for k, s in self.src.items()]
        parts += ["%s %s" % (k, _a(s.eff(now))) for k, s in self.ext.items()]
        return ", ".join(parts)

    # ---- the invariants at each output write ----------------------------------------------
    def watch(self, what, value):
        self.dirty = True
        b = self.b
        now = self.clock.now
        r = b.relays
        if what == "relays":
            if value and not r.closed:
                self._on_close()
        elif what == "cp":
            old = amps_of(b.cp.duty_pm)
            new = amps_of(value)
            if value == -2 and r.closed:
                self.fail("trip-order", "state F driven with the relays still closed")
            if value > 0 and b.cp.duty_pm <= 0:
                self.pwm_start = now
            if value <= 0 and b.cp.duty_pm > 0:
                self.pwm_stop = now
            if new != old:
                if new > 0:
                    self.stats["offers"] += 1
                    if new > self.last_nonzero + 1e-3 and now - self.offer_t < 5000:
                        self.fail("raise-5s", "offer raised to %.2f A %d ms after the last change (last offer %.2f A)"
                                  % (new, now - self.offer_t, self.last_nonzero))
                    self.last_nonzero = new
                    if self.run.running("pilot"):
                        self._check_offer(new)
                self.offer_t = now
        elif what == "lock":
            if not value and b.lock.engaged:
                self._on_release()
                if self.lock_glimpse:
                    # The engagement confirmed: a release for a fault that keeps the
                    # session ends its try (one that never confirmed keeps it: ELK stays).
                    self.lock_try = None
                self._lock_reset()  # the next engagement is judged on its own
                self.lock_rel_t = now
            elif value and not b.lock.engaged and self.lock_rel_t != now:
                self.lock_try = now  # not the pulse of a retry (release, engage at once)
        elif what == "rcd_test":
            if value and not b.rcd.testing:
                if r.closed or self._contacts_open_ms() < 500:
                    self.fail("selftest-load", "RCD self-test started with the contacts open for %d ms (coil %s)"
                              % (self._contacts_open_ms(), "closed" if r.closed else "open"))
                self.test_on = now
                self.test_state = "pending"  # until the module's line is seen up
            elif not value and b.rcd.testing:
                self.test_on = None
                self.test_off = now
                self.test_state = "off" if self.test_state == "on" else None
        elif what == "error":
            code, active = value
            if active:
                self.stats["trips"] += 1
                if code in ("PE", "IRD"):
                    # These always latch, and a latch ends the session, however fast the
                    # charger saw its cause. (ELK does not at the start of a session.)
                    self.end_auth("latched " + code, now)
                if r.closed:
                    self.fail("trip-order", "fault %s reported with the relays still closed" % code)
                if code == "CP" and not self.cp_cause:
                    # The pilot's levels, its generator and ADC zero within their
                    # tolerances, read as their states (docs/errors.md): a CP fault needs
                    # a short, a missing diode or D without ventilation.
                    self.fail("cp-spurious", "CP fault with the EV in %s, diode %s, pilot %d/%d mV, zero %d mV"
                              % (b.ev.state, b.ev.diode, b.ev.gen_pos_mv, b.ev.gen_neg_mv, b.ev.adc_zero_mv))
            elif code == "CP":
                self.cp_cause = False  # the next CP fault needs a cause seen after this clear
            elif code in LATCHING and code in self.latched and not self.run.clearing:
                self.fail("latch-kept", "latched %s cleared without a technician" % code)
        elif what == "display":
            if value.startswith("ERR") and r.closed:
                self.fail("trip-order", "%r shown with the relays closed" % value)
        elif what == "belt":
            if value[0] == "red" and r.closed:
                self.fail("trip-order", "belt red with the relays closed")
        elif what == "leds":
            if value[0] == "fault" and value[1] == "red" and r.closed:
                self.fail("trip-order", "fault LED red with the relays closed")

    def _cp_cause_seen(self):
        for rule in self.rules[15:18]:
            if rule.code == "CP" and rule.maybe is not None:
                return True
        return False

    def _contacts_open_ms(self):
        t = self.b.copen
        return -1 if t is None else self.clock.now - t

    def _on_close(self):
        b = self.b
        now = self.clock.now
        self.stats["closes"] += 1
        ev = b.ev
        if not self.ev_ok():
            self.fail("close-ev", "relays closed with the EV in %s%s (ventilation %s)" % (
                ev.state, " shorted" if ev.short else "", self.ventilation()))
        if self.auth_t is None:
            self.fail("close-auth", "relays closed without an authorized session (%s at %d)" % self.auth_end)
        if b.lock.fitted and not b.lock.feedback():
            self.fail("close-lock", "relays closed without the lock confirmed")
        duty = b.cp.duty_pm
        if amps_of(duty) < 6.0 or self.limit() < 6.0:
            self.fail("close-limit", "relays closed with %.1f A offered, limit %.1f A" % (amps_of(duty), self.limit()))
        f = self.sure()
        if f is not None:
            self.fail("close-fault", "relays closed while %s is active" % f.code)
        if self.held_from is not None:
            self.fail("close-held", "relays closed while the supervisor must hold the charger")
        s = b.last_sample
        if s is None or s[1] <= 0 or self.pwm_start is None or s[0] < self.pwm_start or s[2] not in "CD" or not s[3] or s[4]:
            self.fail("close-diode", "relays closed without a sample under the PWM proving the diode (last sample %r, PWM since %r)"
                      % (s, self.pwm_start))
        elif self.auth_t is not None and s[0] < self.auth_t:
            self.fail("close-diode", "diode proof older than the authorization")
        if self.selftest_ok is None or self.auth_t is None or self.selftest_ok < self.auth_t:
            self.fail("close-selftest", "relays closed without an RCD self-test passed this session (passed %r, auth %r)"
                      % (self.selftest_ok, self.auth_t))

    def _on_release(self):
        self.stats["releases"] += 1
        ms = self._contacts_open_ms()
        if self.b.relays.closed or ms < 500:
            self.fail("lock-release", "lock released with the contacts open for %d ms (coil %s)"
                      % (ms, "closed" if self.b.relays.closed else "open"))

    # ---- the APIs the scenario calls --------------------------------------------------------
    def on_start(self, accepted):
        now = self.clock.now
        if not accepted:
            return
        self.stats["sessions"] += 1
        if self.latched:
            self.fail("start-refused", "a session started with %s latched" % sorted(self.latched))
        if self.held_from is not None and now >= self.held_from:
            self.fail("start-refused", "a session started while the supervisor must hold the charger")
        self.auth_t = now
        self.auth_end = None
        self.grant = None
        self._lock_session()

    def on_pending(self, tapped):
        """auth.start answered "plug in" (the charger saw no vehicle): the authorization
        waits PENDING_MS for one; `tapped` False: the same card withdrew it."""
        now = self.clock.now
        if not tapped:
            self.pending = None
            self.pend_unseen = None
        elif self.plugged:
            self._pending_start(now)  # plugged already, not yet seen: it starts at once
        else:
            self.pending = now + PENDING_MS

    def _pending_start(self, now):
        self.stats["sessions"] += 1
        self.auth_t = now
        self.auth_end = None
        self.grant = None
        self._lock_session()

    def on_stop(self, accepted):
        if accepted:
            self.end_auth("stop", self.clock.now)

    def on_safe_state(self, why):
        self.end_auth(why, self.clock.now)

    def on_limit(self, name, amps):
        s = self.ext.get(name)
        if s is None:
            s = self.ext[name] = Src(0, None)
        s.set(self.clock.now, None if amps is None else float(amps))

    def on_damaged_latches(self, readable):
        """A power cut damaged latched.json: the latches not among the codes its copies
        still give (`readable`) are known at boot only as LAT."""
        self.lat_hidden |= self.latched - set(readable)

    def on_clear(self, named, cleared):
        """A technician's clear: `cleared` is the list the charger gave back (None when it
        refused the request)."""
        if cleared and "LAT" in cleared:
            for code in sorted(self.lat_hidden & self.latched):
                if self._cause_present(code):
                    self.fail("clear-cause", "technician clear took LAT, which stood for %s, "
                              "with that cause still present" % code)
                self.latched.discard(code)
                for rule in self.rules:
                    if rule.code == code:
                        rule.reset()
            self.lat_hidden = set()
        for code in cleared or ():
            if code not in LATCHING:
                if self.sure(code) is not None:
                    self.fail("clear-active", "technician clear took %s, a fault that clears by itself" % code)
                continue
            self.stats["clears"] += 1
            self.end_auth("latched " + code, self.clock.now)  # it ended the session it hit
            if self._cause_present(code):
                self.fail("clear-cause", "technician clear took %s with its cause still present" % code)
            self.latched.discard(code)
            if code == "ELK":
                self.lock_fails = 0
            for rule in self.rules:
                if rule.code == code:
                    rule.reset()

    def _cause_present(self, code):
        b = self.b
        if code == "PE":
            tn = self.run.settings["power_system"] == "TN_TT"
            return not b.pe.continuity or (tn and b.pe.n_pe_v > 30.0)
        if code == "IRD":
            return b.rcd.tripped()
        if code == "R12":
            return b.relays.contact(1) and not b.relays.closed
        if code == "R3N":
            return b.relays.contact(2) and not b.relays.closed
        return False


def _a(v):
    return "none" if v >= _INF else "%.1f" % v
