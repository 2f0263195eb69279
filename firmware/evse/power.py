# Power management with an external meter at the grid connection (manual §10).
#
# Every cycle (about 1 s) the meter chosen by `meter_model` is read over RS-485 Modbus
# RTU. For each phase the charger uses, the current the other loads leave is
#
#     headroom = supply limit - (house current - the charger's own current)
#
# (the supply limit: max_house_current_a, or Max Current where that is not set, as the
# manual sets it up; the charger's own current comes from its internal meter). The smallest headroom is
# fed to the charging core as the named limit "power": a lower value applies at once, a
# higher one at most RAISE_STEP_A per cycle. Below 6 A the charge pauses; it resumes
# once the headroom has stayed at 6 A + RESUME_HYST_A for RESUME_HOLD_MS.
#
# Meter loss: no valid reading for LOST_MS -> ERR MET (protection.external_meter_lost,
# charger.trip(MET)) and the limit falls back to FALLBACK_A (a pause). Valid readings
# for RECOVER_MS clear it. Details and numbers: docs/power-management.md.
#
# charge_mode solar / solar_min: after each cycle evse/solar.py (imported only then)
# turns the same reading's export into the named limit "solar"; with tariff_limit_w set,
# evse/tariff.py (imported only then) its import into the named limit "tariff" (in a load
# balancing pool only on its master, into a cap of the pool's budget).
import math
import time
from micropython import const

import evse
from evse import faults
from evse import limits
import log

# evse.meters and lib/modbus_rtu are imported once a meter is configured: a charger
# without one does not carry them on its heap.

_log = log.get("power")

LIMIT_NAME = "power"  # the charger's external limit this module owns
CYCLE_MS = const(1000)  # one meter read and one regulation step
LOST_MS = const(5000)  # no valid reading this long -> ERR MET
RECOVER_MS = const(5000)  # valid readings this long -> the meter counts as back
RAISE_STEP_A = 2.0  # the limit rises at most this much per cycle
RESUME_HYST_A = 1.0  # a pause ends at 6 A + this much headroom ...
RESUME_HOLD_MS = const(5000)  # ... held this long
FALLBACK_A = 0.0  # limit while the meter is lost: pause (house load unknown)
_RETRIES = const(1)  # a failed exchange is repeated once within the cycle
_MAP_RETRY_MS = const(30000)  # a bad custom map file is read again this often
_MIN_CYCLE_MS = const(50)
_PHASES = ("L1", "L2", "L3")
_WIRED_A = 1.0  # current on the charger's L2 or L3 terminal: it is wired to three phases


def _finite_or_0(v):
    try:
        return float(v) if math.isfinite(v) else 0.0
    except TypeError:
        return 0.0


class PowerManager:
    def __init__(
        self, charger, settings, protection, metering, rs485=None, data_dir=".",
        own_meter=None, master=None, slave=1, clock=None, clock_us=None, rtc=None,
    ):
        """rs485: the board's `hw.rs485` (None or (uart, de_pin)); `master` replaces the
        Modbus master built on it (tests). own_meter: the board's internal meter
        (`hw.meter`), read again right after the grid meter so that both readings show
        the same moment; without it (or when it fails) metering.amps is used.
        slave: the grid meter's Modbus address (a `meter_addr` setting, when the
        schema has one, overrides it). clock_us: the board's `hw.clock_us`, which
        stamps each valid reading (`read_t_us` in the view: what a reaction to the
        reading is measured from). rtc: () -> epoch seconds (the board's `hw.rtc.now`):
        the capacity tariff's windows follow it once it is set."""
        self.ch = charger
        self.settings = settings
        self.prot = protection
        self.metering = metering
        self.own_meter = own_meter
        self.rs485 = rs485
        self.master = master  # built on rs485 when a meter is first configured
        self._slave = slave
        self.slave = slave
        self.data_dir = data_dir
        self.clock = clock or time.ticks_ms
        self.clock_us = clock_us or time.ticks_us
        self.rtc = rtc
        self.model = "none"
        self.map = None
        self.map_error = None
        self._map_ms = None
        # Slots of a reading (evse/meters.py, made with the meter's map): the one a read
        # fills, kept only when it is whole, and the last valid one.
        self._vals = self.values = None
        self.ok = False  # the last cycle gave a valid reading
        self.lost = False  # ERR MET raised for this meter
        self.last_ok_ms = None
        self.read_t_us = None  # clock_us() when the last valid reading was complete
        self._blind_since = None  # configured, no reading yet
        self._good_since = None  # start of the current run of valid readings
        self._resume_since = None  # start of the current run of headroom >= 7 A
        self._resume_ok = False  # ... and it has lasted RESUME_HOLD_MS
        self._fresh = True  # the next valid reading is the first one
        self.headroom_a = [None, None, None]  # per house phase, None when not used
        self.own_a = [0.0, 0.0, 0.0]  # the charger's own current at the last reading
        self.target_a = None  # smallest headroom of the used phases
        self.limit_a = None  # what is fed to the charger (None: no limit)
        self.paused = False
        self.reads = 0
        self.errors = {
            "timeout": 0, "crc": 0, "exception": 0, "frame": 0, "bus": 0, "value": 0,
        }
        self.last_error = None  # text of the last failed read (kept for diagnostics)
        self._fails = 0  # failed exchanges since the last valid reading
        self.cycle_ms = 0
        # The meter search (evse/meterprobe.py): made for meter_model "auto", or once a
        # configured meter is lost; the end of its last sweep that found nothing.
        self.probe = None
        self._swept_ms = None
        self.adopt_error = None  # why a meter found could not be stored as the setting
        self.solar = None  # evse.solar.Solar while charge_mode is not normal
        self.pool = None  # the Balancer while it runs: the pool's mode governs (no "solar")
        self.tariff = None  # evse.tariff.Tariff while tariff_limit_w is set

    # ---- the task ----------------------------------------------------------------------
    async def run(self):
        import asyncio

        due = self.clock()
        while True:
            await self.poll_once()
            # Reads on a 1 s grid, so that a late one does not delay all the next ones;
            # a cycle that overran (timeouts, retries) starts the grid again after a pause.
            due = time.ticks_add(due, CYCLE_MS)
            wait = time.ticks_diff(due, self.clock())
            if wait < _MIN_CYCLE_MS:
                wait = _MIN_CYCLE_MS
                due = time.ticks_add(self.clock(), wait)
            await asyncio.sleep_ms(wait)

    async def poll_once(self):
        """One cycle: configuration, meter read, regulation, then the charge mode and the
        capacity tariff."""
        ok = await self._cycle()
        s = self.settings
        solar_on = s["charge_mode"] != "normal" and not self.pool  # a pool's mode governs
        self.solar = self._feature(self.solar, "solar", "Solar", solar_on, ok)
        # In a pool the tariff is its master's, for the pool's budget: a follower's is ignored.
        tariff_on = s["tariff_limit_w"] and (not self.pool or self.pool.master == self.pool.addr)
        self.tariff = self._feature(self.tariff, "tariff", "Tariff", tariff_on, ok)

    def _feature(self, obj, name, cls, on, ok):
        """evse/solar.py (charge_mode solar or solar_min), evse/tariff.py (tariff_limit_w
        set): imported only while the setting asks for it (a charger without the feature
        does not carry it) and forgotten after. -> the feature's object, or None."""
        if not on:
            if obj is not None:
                self.ch.set_external_limit(name, None)  # its named limit bears its name
                evse.unload("evse." + name)
                evse.unload("evse.balance.pool" + name)  # a pool's part of it (pooltariff)
            return None
        if obj is None:
            __import__("evse." + name)
            obj = getattr(getattr(evse, name), cls)(self)
        obj.step(self.clock(), ok)
        return obj

    def solar_view(self):
        """/api/status `solar`: None in charge_mode normal."""
        return None if self.solar is None else self.solar.view(self.clock())

    def tariff_view(self):
        """/api/status `tariff`: None while unset; a pool's follower: the master's governs."""
        t, lim, pool = self.tariff, self.settings["tariff_limit_w"], self.pool
        if t is not None or not lim or pool is None:
            return None if t is None else t.view()
        return {"limit_w": lim, "pool_master": pool.master, "follower": True}

    async def _cycle(self):
        """-> True when this cycle took a valid reading."""
        t0 = self.clock()
        self._configure(t0)
        if self.model == "none":
            return False
        if self.model == "auto":
            found = await self._search(t0)
            if found is None and self.probe is not None:
                found = self.probe.found  # found before, not stored yet (_adopt)
            if found is not None:
                self._adopt(found)
            return False
        ok = False
        if self.map is None:
            self._error("value", self.map_error or "no meter map")
        elif self.master is None:
            self._error("value", "no RS-485 bus wired")
        else:
            ok = await self._read()
            if ok:
                self.read_t_us = self.clock_us()
        now = self.clock()
        self.cycle_ms = time.ticks_diff(now, t0)
        self.step(now, ok)
        if self.lost and self.model != "custom":
            # Silent for LOST_MS: is it on another address, or another make? What is
            # found is shown, never used in its place (the installer decides).
            await self._search(now, skip=(self.model, self.slave))
        elif self.probe is not None and not self.lost:
            self._drop_probe()  # it answers again: nothing to look for
        return ok

    def _drop_probe(self):
        """The search is over: its module goes too (0.4 KB; a next search imports it)."""
        self.probe = None
        evse.unload("evse.meterprobe")

    # ---- configuration -------------------------------------------------------------------
    def _configure(self, now):
        self.slave = self.settings.get("meter_addr") or self._slave
        model = self.settings["meter_model"]
        if model != self.model:
            self._switch(model, now)
        elif self.map is None and model == "custom" and limits.held(now, self._map_ms, _MAP_RETRY_MS):
            self._load_map(now)

    def _switch(self, model, now):
        if model in ("none", "auto") and self.lost:
            self._set_lost(False, "turned off")
        self.probe = None  # "auto": a new search, from its start
        if model != "auto":
            self._drop_probe()
        self._swept_ms = None
        self.model = model
        self.map = None
        self.map_error = None
        self.ok = False
        self.last_ok_ms = None
        self.read_t_us = None
        self._good_since = None
        self._resume_since = None
        self._resume_ok = False
        self._fresh = True
        self.headroom_a = [None, None, None]
        self.target_a = None
        if model in ("none", "auto"):
            # auto: no power management until a meter is found and stored as the setting
            _log.info("external meter off" if model == "none" else
                      "external meter: looking for one on the RS-485 bus")
            self.limit_a = None
            self.paused = False
            self.ch.set_external_limit(LIMIT_NAME, None)
            return
        _log.info("external meter %s at address %d", model, self.slave)
        self._blind_since = now
        # No reading yet: nothing is known about the house load, so no charging yet.
        self.paused = True
        self.limit_a = FALLBACK_A
        self._feed()
        self._load_map(now)

    def _bus(self):
        """The Modbus master on the board's RS-485 bus (None: no bus wired)."""
        if self.master is None and self.rs485 is not None:
            from modbus_rtu import ModbusRtu

            uart, de = self.rs485
            self.master = ModbusRtu(uart, de)
        return self.master

    def _load_map(self, now):
        from evse import meters

        self._vals = [None] * meters.N_QTY
        self.values = [None] * meters.N_QTY
        self._bus()
        self._map_ms = now
        try:
            self.map = meters.make(self.model, self.data_dir)
            self.map_error = None
        except (ValueError, OSError) as e:
            self.map = None
            self.map_error = "meter map %s: %s" % (self.model, e)
            _log.error("%s", self.map_error)

    # ---- the meter search -------------------------------------------------------------------
    async def _search(self, now, skip=None):
        """One candidate of the meter search per cycle: a sweep at once, then one every
        meterprobe.PAUSE_MS while none is found. -> (model, address) found, or None."""
        from evse import meterprobe

        bus = self._bus()
        if bus is None:
            return None
        p = self.probe
        if p is None:
            p = self.probe = meterprobe.Probe()
            p.restart()
        elif not p.searching:
            if p.found is not None or not limits.held(now, self._swept_ms, meterprobe.PAUSE_MS):
                return None
            p.restart()
        found = await p.step(bus, skip)
        if not p.searching and found is None:
            self._swept_ms = self.clock()
        if found is not None:
            _log.info("meter search: %s answers at address %d", found[0], found[1])
        elif not p.searching and len(p.meters) > 1:
            _log.warning("meter search: %d meters answer, none taken", len(p.meters))
        return found

    def _adopt(self, found):
        """meter_model auto: the meter found becomes the setting, as if the installer had
        chosen it; from the next cycle it is read (no charging until its first reading)
        and its loss is ERR MET."""
        model, addr = found
        s = self.settings
        if s["meter_model"] != "auto":
            return  # set while the bus was read: the installer's choice stands
        bad = getattr(s, "invalid", None)
        if bad:
            # A setting that cannot be read (meter_model's "auto" may be its fallback, the
            # file unreadable): storing would clear that error and rewrite the file.
            why = "not stored: configuration error in " + ", ".join(sorted(bad))
            if why != self.adopt_error:
                self.adopt_error = why
                _log.error("meter %s at %d found, %s", model, addr, why)
            return
        try:
            errors = self.settings.apply({"meter_model": model, "meter_addr": addr})
        except OSError as e:
            errors = {"meter_model": "not stored: %r" % (e,)}
        if errors:
            self.adopt_error = "; ".join("%s %s" % kv for kv in errors.items())
            _log.error("meter %s at %d found, not stored: %s", model, addr, self.adopt_error)
            self.probe.found = None  # look again after the pause: the next may be stored
            self._swept_ms = self.clock()
            return
        self.adopt_error = None
        _log.info("external meter %s at address %d found: power management on", model, addr)

    def search_view(self):
        """The meter search for the Load Balance page (/api/status `meter_search`): None
        while a meter is off or in use and answering."""
        if self.model == "none" or (self.model != "auto" and not self.lost):
            return None
        p = self.probe
        if self.rs485 is None and self.master is None:
            state = "no_bus"
        elif p is None:
            state = "waiting"
        elif p.found is not None:
            state = "found"
        else:
            state = "searching" if p.searching else "waiting"
        if p is None:
            return {"state": state, "found": None, "meters": [], "tried": 0, "of": 0,
                    "sweeps": 0, "error": self.adopt_error}
        out = p.view(state)
        out["error"] = self.adopt_error
        if out["error"] is None and self.model == "auto" and len(p.meters) > 1:
            out["error"] = "%d meters answer: none taken, set meter_model" % len(p.meters)
        return out

    # ---- reading ---------------------------------------------------------------------------
    async def _read(self):
        import modbus_rtu as mb
        from evse import meters

        m = self.map
        vals = self._vals
        for i in range(meters.N_QTY):
            vals[i] = None
        for i in range(len(m.blocks)):
            fc, start, count, _ = m.blocks[i]
            for _ in range(1 + _RETRIES):
                try:
                    data = await self.master.read_registers(fc, self.slave, start, count)
                except mb.ModbusError as e:
                    err = self._error(e.kind, e)  # timeout, crc, exception, frame, bus
                else:
                    m.decode(i, data, vals)
                    break
            else:
                return err
        for k in range(3):
            if meters.I_L1 + k in m.slots and vals[meters.I_L1 + k] is None:
                return self._error("value", "the meter has no current for L%d" % (k + 1))
        if not meters.plausible(m, vals):
            # Another make's registers, or garbage: 1e30 A exported would be 1e30 A of room
            return self._error("value", "not a meter's reading: V %r A %r" % (
                vals[0], vals[meters.I_L1 : meters.I_L1 + 3]))
        self._vals = self.values
        self.values = vals
        self._read_own()
        return True

    def _read_own(self):
        """The charger's own current at (nearly) the moment of the grid reading: a stale
        one makes the charger's own ramp look like house load, or the reverse."""
        m = self.own_meter
        own = self.own_a
        src = self.metering.amps
        if m is not None:
            try:
                m.read()
                src = m.amps
            except OSError:
                pass  # the metering task reports a silent internal meter (ERR MET)
        for k in range(3):
            # A reading that is not a finite number (NaN, inf, None) is no reading: the
            # charger then counts none of its own current as room, the low side (a NaN
            # here would make the 'power' limit NaN, which no comparison can bind).
            own[k] = _finite_or_0(src[k])

    def _error(self, kind, err):
        self.errors[kind] += 1
        self.last_error = msg = str(err)
        self._fails += 1
        if self._fails == 3:  # one bad exchange is line noise, a run of them a problem
            _log.warning("meter read failing (%s): %s", kind, msg)
        else:
            _log.debug("meter read failed (%s): %s", kind, msg)
        return False

    # ---- regulation ------------------------------------------------------------------------
    def step(self, now, ok):
        """One regulation step after a read (`ok`: self.values holds a fresh reading)."""
        if ok:
            self.ok = True
            self.reads += 1
            self.last_ok_ms = now
            self._blind_since = None
            if self._good_since is None:
                self._good_since = now
            self._headroom()
            if self._fails >= 3:
                _log.info("meter read ok after %d failed exchanges", self._fails)
            self._fails = 0
            if self.lost and limits.held(now, self._good_since, RECOVER_MS):
                self._set_lost(False)
        else:
            self.ok = False
            self._good_since = None
            ref = self.last_ok_ms if self.last_ok_ms is not None else self._blind_since
            if not self.lost and limits.held(now, ref, LOST_MS):
                self._set_lost(True)
        self._regulate(now, ok)
        self._feed()

    def _set_lost(self, lost, why="answers again"):
        self.lost = lost
        self.prot.external_meter_lost = lost
        if lost:
            _log.error(
                "external meter %s: no valid reading for %d s -> ERR MET, charging paused",
                self.model, LOST_MS // 1000,
            )
            self.ch.pause(faults.MET)  # mild: docs/errors.md
        else:
            _log.warning("external meter %s %s", self.model, why)

    def _regulate(self, now, ok):
        t = self.target_a
        # A pause ends only with room to start the car (`min_start_a`: some need 8 A).
        start = limits.start_a(self.settings)
        if ok:
            if t >= start + RESUME_HYST_A:
                if self._resume_since is None:
                    self._resume_since = now
                elif not self._resume_ok and limits.held(now, self._resume_since, RESUME_HOLD_MS):
                    # A flag from now on: a run of headroom lasting days would read its
                    # start as negative once the ticks wrap (2**29 ms on a 32-bit port),
                    # and a pause (a meter outage) would then last for days.
                    self._resume_ok = True
            else:
                self._resume_since = None
                self._resume_ok = False
        if self.lost:
            self.paused = True
            self.limit_a = FALLBACK_A
            return
        if not ok:
            return  # blind for less than LOST_MS: the last limit stays
        if self._fresh:
            # First reading after boot or a change of meter: take it as it is.
            self._fresh = False
            self.paused = t < start
            self.limit_a = 0.0 if self.paused else t
            return
        if self.paused:
            if self._resume_ok:
                self.paused = False
                self.limit_a = min(t, start + RAISE_STEP_A)
                _log.info("resume: %.1f A available", t)
            else:
                self.limit_a = 0.0
            return
        if t < limits.MIN_A:
            self.paused = True
            self.limit_a = 0.0
            _log.info("pause: only %.1f A available", t)
        elif t < self.limit_a:
            self.limit_a = t  # the house needs it: cut at once
        else:
            self.limit_a = min(t, self.limit_a + RAISE_STEP_A)

    def _feed(self):
        if self.limit_a is not None:
            self.ch.set_external_limit(LIMIT_NAME, self.limit_a)

    def _house(self, k):
        """Signed house current of phase k (negative while that phase exports)."""
        from evse import meters as mt

        v = self.values
        m = self.map
        q = mt.I_L1 + k
        if m is not None and q not in m.slots:
            q = mt.I_L1  # single-phase meter: it measures the one phase there is
            k = 0
        a = v[q]
        p = v[mt.P_L1 + k]
        if p is None and q == mt.I_L1 and m is not None and mt.P_L1 not in m.slots:
            p = v[mt.P_TOTAL]
        if p is not None and p < 0:
            return -abs(a)
        return abs(a)

    def _headroom(self):
        s = self.settings
        max_a = limits.supply_a(s)
        ps = s["phase_set"]
        own = self.own_a
        h = self.headroom_a
        if ps in _PHASES:
            # One phase: the charger's L1 terminal is on that house phase.
            k = _PHASES.index(ps)
            for i in range(3):
                h[i] = None
            h[k] = limits.floor_tenth(max_a - (self._house(k) - own[0]))
            self.target_a = h[k]
            return
        car = getattr(self.metering, "car_mask", None)
        if self.ch.phases == 3 or own[1] >= _WIRED_A or own[2] >= _WIRED_A or (
                car is not None and car & 6):
            # Three-phase wiring (a "7kW" setting too, once its meter shows current on
            # L2 or L3): L1->L1, L2->L2, L3->L3, its own current is room on its phase.
            for i in range(3):
                h[i] = limits.floor_tenth(max_a - (self._house(i) - own[i]))
            if self.ch.phases == 3 and car is not None:
                # Only the phases the car draws on (as measured) bound its current;
                # before it has drawn, all three.
                t = None
                for i in range(3):
                    if car >> i & 1 and (t is None or h[i] < t):
                        t = h[i]
                self.target_a = t
                return
        else:
            # A single-phase charger on an unknown phase: its current may flow in any
            # of them, so count it as room on each and take the worst phase.
            mine = own[0]
            for i in range(3):
                h[i] = limits.floor_tenth(max_a - self._house(i) + mine)
        self.target_a = min(h[0], h[1], h[2])

    # ---- views -----------------------------------------------------------------------------
    def view(self):
        """External meter readings and the headroom (/api/status `meter`, the snapshot);
        None while no meter is configured (or none found yet: meter_search)."""
        if self.model == "none" or self.model == "auto":
            return None
        from evse import meters as mt

        v = self.values
        age = None
        if self.last_ok_ms is not None:
            age = round(time.ticks_diff(self.clock(), self.last_ok_ms) / 1000, 1)
        m = self.map
        return {
            "model": self.model,
            "ok": self.ok,
            "lost": self.lost,
            "age_s": age,
            "read_t_us": self.read_t_us,
            "volts": [_r(x, 1) for x in v[0:3]],
            "amps": [_r(x, 2) for x in v[mt.I_L1 : mt.I_L1 + 3]],
            "power_w": _r(mt.total_w(v), 0),
            "energy_kwh": _r(v[mt.E_IMPORT], 3),
            "headroom_a": list(self.headroom_a),
            "own_a": [_r(x, 2) for x in self.own_a],
            "limit_a": self.limit_a,
            "paused": self.paused,
            "exchanges": len(m.blocks) if m else 0,
            "cycle_ms": self.cycle_ms,
            "reads": self.reads,
            "errors": dict(self.errors),
            "last_error": self.last_error,
        }


def _r(x, nd):
    return None if x is None else round(x, nd)
