# Random scenarios of the charging core: their generator, the runner that plays one on
# the fake board (core_model.py) under the oracle (core_check.py), and the shrinker that
# finds the shortest event trace still failing the same way (docs/invariants.md).
import os

import fuzz
import log
from evse import faults
from core_check import Oracle
from core_model import Aio, Board, Loop, Time, TICKS_PERIOD, patch_modules, restore
from fakehw import FakeSettings

CARD = "04A1B2C3"
REMOTE = "REMOTE01"
CRITICAL = ("pilot", "protection")
TASKS = ("pilot", "protection", "metering", "hmi")


class Scenario:
    def __init__(self, cfg, events):
        self.cfg = cfg  # board, settings, clock bases, EV
        self.events = events  # (t_ms, kind, arg, trigger): trigger None or (condition, delay_ms)


class Result:
    def __init__(self, run):
        o = run.oracle
        self.failure = o.failure
        self.stats = o.stats
        self.steps = run.steps
        self.ms = run.clock.now
        self.trace = run.board.trace
        self.boots = run.boots
        self.stats["woken"] = run.board.woken


# ---- playing one scenario ---------------------------------------------------------------------
class _Cards:
    async def authorize(self, id_tag):
        return "Accepted"


class _History:
    def session_progress(self, s):
        pass


class _AppShim:
    """What the app's task bodies (evse/app.py) read from the application."""


def _run_now(coro):
    try:
        while True:
            coro.send(None)
    except StopIteration as e:
        return e.value


_DATA = None


def _data_dir():
    global _DATA
    if _DATA is None:
        _DATA = fuzz.scratch_dir("invariants")
    return _DATA


class Run:
    def __init__(self, scn):
        cfg = scn.cfg
        self.cfg = cfg
        self.scn = scn
        self.clock = Time()
        self.aio = Aio(None)
        self.board = Board(self.clock, socket=cfg["socket"], three_phase=cfg["charger_power"] == "22kW")
        ev = self.board.ev
        ev.max_a = cfg["ev_max_a"]
        ev.lag_ms = cfg["ev_lag_ms"]
        self.board.pp_adc.ohm = cfg["pp_ohm"] if cfg["socket"] else -1
        keys = ("charger_power", "charging_mode", "ventilation", "cp_type", "max_current_a",
                "power_system", "cable_max_a", "auth_mode", "min_pause_s")
        self.settings = FakeSettings(**{k: cfg[k] for k in keys})
        self.data_dir = _data_dir()
        for suffix in ("", ".bak", ".tmp"):
            fuzz.remove_quietly(self.data_dir + "/latched.json" + suffix)
        self.steps = 0
        self.boots = 0
        self.clearing = False  # inside a technician's clear
        self.alive = {}
        self.stall = {}  # task name -> (since, until)
        self.can_clash = False  # load balancing: another node uses our CAN address
        self.ext_lost = False  # power management: no valid reading of the external meter
        self.oracle = Oracle(self)
        self.board.watch = self.oracle.watch
        self.loop = None

    # ---- the firmware, as evse/app.py builds it ------------------------------------------
    def boot(self):
        from evse.app import App
        from evse.auth import Authorizer
        from evse.charger import Charger
        from evse.hmi import Hmi
        from evse.metering import Metering
        from evse.protection import Protection
        from evse.supervisor import Supervisor

        bases = self.cfg["bases"]
        self.clock.base = bases[self.boots % len(bases)]
        self.clock.boot = self.clock.now
        self.loop = Loop(self.clock)
        self.aio._loop = self.loop
        b = self.board
        ch = self.ch = Charger(b, self.settings)
        prot = self.prot = Protection(ch, b, self.settings, None, self.data_dir)
        met = Metering(b, ch, prot, _History())
        hmi = Hmi(b, ch, met, lambda: "ap")
        auth = self.auth = Authorizer(ch, self.settings, hmi, met)
        auth.sources.append(_Cards())
        sup = self.sup = Supervisor(b.wdt, ch.emergency_stop, ch.hold)
        b.rcd.set_handler(ch.rcd_handler)
        prot.load_latches()
        app = _AppShim()
        app.charger = ch
        app.protection = prot
        app.metering = met
        app.hmi = hmi
        app.auth = auth
        app.supervisor = sup
        app.uptime_s = 0
        app._up_ms = self.clock.ticks_ms()
        app._count_uptime = lambda now, a=app: App._count_uptime(a, now)
        for name, fn in (("pilot", App._pilot_task), ("protection", App._protection_task),
                         ("metering", App._metering_task), ("hmi", App._hmi_task)):
            sup.add(name, self._factory(name, fn, app), critical=name in CRITICAL)
        self.loop.spawn(sup.run())

    def _factory(self, name, fn, app):
        def factory():
            return self._alive(name, fn(app))

        return factory

    async def _alive(self, name, coro):
        self.alive[name] = True
        try:
            await coro
        finally:
            self.alive[name] = False

    def running(self, name):
        if not self.alive.get(name):
            return False
        st = self.stall.get(name)
        return st is None or not st[0] <= self.clock.now < st[1]

    def stalled_since(self, name):
        st = self.stall.get(name)
        if st is not None and st[0] <= self.clock.now < st[1]:
            return st[0]
        return None

    def power_cut(self, corrupt=None):
        self.loop.close()
        b = self.board
        # The coils, the pilot and the test input lose their drive; the lock stays put.
        b.relays.closed = False
        b.sync_contacts()
        b.rcd.testing = False
        b.fan.running = False
        b.cp.duty_pm = -1
        b.ev_sees_pilot()
        b.offers.append((self.clock.now, 0.0))
        b.wdt.started = False
        b.trace.append((self.clock.now, "power", "cut" if corrupt is None else "cut, latched.json " + corrupt))
        if corrupt:
            _corrupt(self.data_dir + "/latched.json", corrupt)
            self.oracle.on_damaged_latches(_readable_latches(self.data_dir + "/latched.json"))
        self.boots += 1
        self.oracle.dirty = True
        self.alive = {}
        self.stall = {}
        self.can_clash = self.ext_lost = False  # the features find them again after a boot
        self.oracle.reboot()
        self.boot()

    # ---- events ------------------------------------------------------------------------
    def apply(self, kind, arg):
        b = self.board
        o = self.oracle
        ch = self.ch
        s = self.settings
        if kind == "ev":
            b.ev.state = arg
            if arg != "B":
                b.ev.asleep = False  # a car that leaves B is awake
            b.ev.interruptions = 0  # the driver moved the car: a car that gave up asks again
        elif kind == "asleep":  # it falls asleep in B (plugged in asleep, if it was in A)
            b.ev.state = "B"
            b.ev.asleep = True
        elif kind == "gives_up":
            b.ev.gives_up_after = arg
            b.ev.interruptions = 0
        elif kind == "diode":
            b.ev.diode = arg
        elif kind == "pilot_tol":
            b.ev.gen_pos_mv, b.ev.gen_neg_mv, b.ev.adc_zero_mv = arg
        elif kind == "short":
            b.ev.short = arg
        elif kind == "pp":
            if self.cfg["socket"]:
                b.pp_adc.ohm = arg
        elif kind == "card":
            ok, msg = _run_now(self.auth.present(CARD, s["rfid_type"]))
            if msg == "started":
                o.on_start(True)
            elif msg == "stopped":
                o.on_stop(True)
            elif msg in ("plug in", "cancelled"):
                o.on_pending(msg == "plug in")
        elif kind == "remote_start":
            ok, msg = self.auth.start(REMOTE, "OCPP")
            if msg == "plug in":
                o.on_pending(True)
            else:
                o.on_start(ok)
        elif kind == "remote_stop":
            o.on_stop(ch.end_session("Remote") is not None)
        elif kind == "limit":
            o.on_limit(arg[0], arg[1])
            ch.set_external_limit(arg[0], arg[1])
        elif kind == "max":
            s["max_current_a"] = arg
        elif kind == "cable_max":
            s["cable_max_a"] = arg
        elif kind == "temp":
            setattr(b.temps, arg[0], arg[1])
        elif kind == "leak":
            b.rcd.set_leak(arg)
        elif kind == "rcd_dead":
            b.rcd.set_dead(arg)
        elif kind == "pe":
            b.pe.continuity = not arg
        elif kind == "npe":
            b.pe.n_pe_v = arg
        elif kind == "volts":
            b.meter.true_volts = list(arg)
        elif kind == "silent":
            b.meter.silent = arg
        elif kind == "nan":
            b.meter.nan = arg
        elif kind == "overdraw":
            b.ev.overdraw = arg
        elif kind == "follow":
            b.ev.follow_ms = arg
        elif kind == "fan_block":
            b.fan.blocked = arg
        elif kind == "weld":
            b.relays.weld[arg[0]] = arg[1]
            b.sync_contacts()
        elif kind == "stuck":
            b.relays.stuck[arg[0]] = arg[1]
            b.sync_contacts()
        elif kind == "lock_broken":
            b.lock.broken = arg
        elif kind == "die":
            if self.running(arg):
                o.on_safe_state("death of " + arg)
                self.loop.step(self.sup.tasks[arg], RuntimeError("injected death of " + arg))
        elif kind == "stall":
            name, ms = arg
            if self.running(name):
                now = self.clock.now
                self.stall[name] = (now, now + ms)
                self.sup.tasks[name].stalled_until = now + ms
        elif kind == "cut":
            self.power_cut(arg)
        elif kind == "clear":
            self.clearing = True
            try:
                cleared = self.prot.technician_clear(arg)
            except ValueError:
                cleared = None
            finally:
                self.clearing = False
            o.on_clear(arg, cleared)
        elif kind == "mode":
            s["charging_mode"] = arg
            ch.apply_settings(["charging_mode"])
        elif kind == "vent":
            s["ventilation"] = arg
            ch.apply_settings(["ventilation"])
        elif kind == "irq_write":
            b.irq_before = arg
        elif kind == "can_clash":  # as evse/balance/node.py reports it
            self.can_clash = self.prot.can_clash = arg
            if arg:
                ch.pause(faults.CAN)
        elif kind == "slow_start":  # a car that draws nothing below this (Zoe: ~8 A)
            b.ev.start_min_a = arg
        elif kind == "ext_lost":  # as evse/power.py reports it
            self.ext_lost = self.prot.external_meter_lost = arg
            if arg:
                ch.pause(faults.MET)
        else:
            raise ValueError("unknown event " + kind)

    def _trigger(self, cond):
        b = self.board
        if cond == "test":
            return b.rcd.testing
        if cond == "charging":
            return b.relays.closed
        if cond == "window":  # the 6 s force-open window: PWM stopped, relays still closed
            return b.relays.closed and b.cp.duty_pm <= 0
        if cond == "pwm":
            return b.cp.duty_pm > 0
        if cond == "F":
            return b.cp.duty_pm == -2
        return False

    # ---- the main loop -----------------------------------------------------------------
    def go(self, until):
        clock = self.clock
        timed = [(e[0], i, e) for i, e in enumerate(self.scn.events) if e[3] is None]
        armed_at = [(e[0], i, e) for i, e in enumerate(self.scn.events) if e[3] is not None]
        timed.sort()
        armed_at.sort()
        armed = []
        ti = ai = 0
        o = self.oracle
        saved = patch_modules(clock, self.aio)
        level = log._level
        log.set_level(log.ERROR + 10)  # every fault logs; thousands of scenarios
        try:
            self.boot()
            o.check()
            while o.failure is None:
                now = clock.now
                while ai < len(armed_at) and armed_at[ai][0] <= now:
                    armed.append(armed_at[ai][2])
                    ai += 1
                if armed:
                    for e in list(armed):
                        if self._trigger(e[3][0]):
                            armed.remove(e)
                            timed.append((now + e[3][1], len(timed) + 1000, e))
                            timed[ti:] = sorted(timed[ti:])
                nt = self.loop.next_task()
                te = timed[ti][0] if ti < len(timed) else None
                if ai < len(armed_at) and (te is None or armed_at[ai][0] < te):
                    te = armed_at[ai][0]
                    event = None
                else:
                    event = timed[ti][2] if te is not None else None
                if te is not None and (nt is None or te <= nt[0]):
                    if te > until:
                        break
                    clock.now = max(now, te)
                    if event is not None:
                        ti += 1
                        self.board.trace.append((clock.now, "event", (event[1], event[2])))
                        o.dirty = True
                        try:
                            self.apply(event[1], event[2])
                        except Exception as e:  # an API of the core that raised
                            o.fail("api-raised", "%s %r raised %r" % (event[1], event[2], e))
                        o.check()
                    continue
                if nt is None or nt[0] > until:
                    break
                clock.now = nt[0]
                task = nt[1]
                task.stalled_until = None
                self.loop.step(task)
                self.steps += 1
                if self.loop.crash is not None:
                    o.fail("task-raised", "an exception left a task: %r" % (self.loop.crash,))
                o.check()
                wdt = self.board.wdt
                if wdt.started and clock.now - wdt.fed_ms > wdt.timeout_ms:
                    o.on_safe_state("watchdog")
                    self.power_cut()
                    o.check()
        finally:
            log.set_level(level)
            restore(saved)
            if self.loop is not None:
                self.loop.close()
        return Result(self)


def _corrupt(path, how):
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except OSError:
        return
    if how == "garbage":
        data = b"\x00\xff{latched" * 3
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip" and len(data) >= 3:
        data[len(data) - 3] ^= 0x20
    elif how == "flip":
        data = b"\xff"
    else:
        data = b""
    with open(path, "wb") as f:
        f.write(data)


def _readable_latches(path):
    """The codes a boot still reads from the copies of a damaged latched.json."""
    import atomicfile

    codes = set()
    for saved in atomicfile.load_json_copies(path, want=dict):
        listed = saved.get("latched")
        if isinstance(listed, list):
            codes.update(c for c in listed if isinstance(c, str))
    return codes


def play(scn, until=None):
    return Run(scn).go(scn.cfg["duration_ms"] if until is None else until)


# ---- the generator ------------------------------------------------------------------------------
# (kind, weight): every kind of event of the brief, weighted to reach deep states.
_KINDS = (
    ("ev", 10), ("bounce", 3), ("diode", 2), ("short", 1), ("pp", 3), ("card", 4),
    ("remote_start", 3), ("remote_stop", 2), ("restart", 4), ("replug", 3), ("limit", 8),
    ("max", 2), ("cable_max", 1), ("temp", 4), ("leak", 3), ("rcd_dead", 2), ("pe", 2),
    ("npe", 1), ("volts", 4), ("silent", 2), ("nan", 3), ("overdraw", 2), ("fan_block", 1),
    ("weld", 2), ("stuck", 2), ("lock_broken", 2), ("die", 3), ("stall", 3), ("cut", 2),
    ("clear", 4), ("mode", 1), ("vent", 1), ("irq_write", 2), ("can_clash", 1), ("ext_lost", 1),
    ("pilot_tol", 2),
    ("slow_start", 2),
    ("follow", 2), ("badplug", 3),
)
_TRIGGERS = ("test", "window", "charging", "pwm", "F")
_FAULTS = ("leak", "rcd_dead", "pe", "npe", "volts", "silent", "nan", "overdraw", "fan_block",
           "weld", "stuck", "lock_broken", "temp", "short", "diode", "pp", "can_clash", "ext_lost")


def _pick_kind(r):
    total = 0
    for _, w in _KINDS:
        total += w
    x = r.below(total)
    for k, w in _KINDS:
        if x < w:
            return k
        x -= w
    return _KINDS[0][0]


def _span(r):
    """How long a fault lasts: a glitch, a few seconds, or long."""
    k = r.below(4)
    if k == 0:
        return 20 + r.below(300)
    if k == 1:
        return 300 + r.below(3000)
    if k == 2:
        return 3000 + r.below(15000)
    return None  # stays


def _base(r, dur):
    k = r.below(10)
    if k < 4:
        return TICKS_PERIOD - 1 - r.below(dur + 5000)  # the wrap falls inside the run
    if k == 4:
        return (TICKS_PERIOD >> 1) - r.below(dur + 5000)
    return r.below(TICKS_PERIOD)


def make(r, index=0):
    """One scenario from the generator `r` (a fuzz.Rng)."""
    # Mostly short runs, some long enough for the slow clears (10 s voltage, 60 s OCP).
    dur = 4000 + r.below(12000) if r.below(5) else 16000 + r.below(50000)
    socket = r.below(5) != 0
    mode = "B" if socket else "C"
    if r.below(5) == 0:
        mode = "C" if mode == "B" else "B"  # a setting that does not match the board
    cfg = {
        "index": index,
        "duration_ms": dur,
        "socket": socket,
        "charger_power": r.pick(("7kW", "7kW", "22kW")),
        "charging_mode": mode,
        "ventilation": r.below(3) == 0,
        "cp_type": r.pick(("0.8V", "1.0V")),
        "max_current_a": r.pick((6, 10, 16, 20, 32, 32, 32)),
        "power_system": r.pick(("IT", "TN_TT")),
        "cable_max_a": r.pick((13, 16, 20, 32)),
        "auth_mode": "free" if r.below(6) == 0 else "rfid",
        "pp_ohm": r.pick((220, 220, 220, 680, 1500, 100)),
        "ev_max_a": r.pick((16.0, 32.0, 32.0)),
        "ev_lag_ms": r.below(3000),
        "bases": [_base(r, dur), _base(r, dur), r.below(1000)],
    }
    ev = []

    def add(t, kind, arg, trig=None):
        if t is not None and 0 <= t < dur:
            ev.append((t, kind, arg, trig))

    # A charge to perturb: plug-in (B, or straight into C or D), an authorization, C.
    t_plug = r.below(600)
    first = r.pick(("B", "B", "B", "C", "C", "D"))
    if r.below(14) == 0:
        add(0, "diode", False)
    if r.below(6) == 0:
        add(0, "pilot_tol", _pilot_tol(r))  # from boot: calibrated before the plug-in, or not
    add(t_plug, "ev", first)
    t_auth = max(0, t_plug - 300 + r.below(2800))
    add(t_auth, "card" if r.below(5) < 3 else "remote_start", None)
    if first == "B":
        add(t_auth + 200 + r.below(3000), "ev", "C")
    for _ in range(dur // 3000 + r.below(5)):
        _random_event(r, r.below(dur), add)
    if r.below(12) == 0:
        ev += _asleep_events(r, cfg, ev)
    # Drawn after everything above, so that each scenario of a seed stays what it was
    # before these choices came: short minimum pauses too, so that resumes after a pause
    # fall inside a run; and in one scenario in seven a car that stops asking (stays in
    # B) after a few interruptions of the PWM, from the start half the time, so that the
    # scenario's pauses and faults count.
    cfg["min_pause_s"] = r.pick((5, 10, 60))
    if r.below(7) == 0:
        add(r.below(dur) if r.below(2) else 0, "gives_up", r.pick((1, 1, 2, 3, 5)))
    ev.sort(key=lambda e: e[0])
    return Scenario(cfg, ev)


def _asleep_events(r, cfg, ev):
    """A car plugged in asleep (in B, deaf to the PWM until the wake-up sequence), then a
    start, sometimes a pause and a resume of the offer; the scenario runs on long enough
    for the charger's wake-up (30 s under an offer, F 4 s, X1 0.75 s). One in two keeps
    the random events around it, the others let it sleep in peace."""
    if r.below(2):
        del ev[:]
        t = r.below(3000)
    else:
        t = r.below(cfg["duration_ms"])
    out = [(t, "ev", "A", None), (t + 200, "asleep", True, None)]
    t += 200 + r.below(4000)
    out.append((t, r.pick(("card", "remote_start")), None, None))
    if r.below(2):
        t += r.below(20000)
        out.append((t, "limit", ("power", r.pick((0.0, 3.0))), None))
        t += 500 + r.below(8000)
        out.append((t, "limit", ("power", None), None))
    cfg["duration_ms"] = max(cfg["duration_ms"], t + 38000 + r.below(10000))
    return out


# Faults after which charging needs a technician (latched) or a new authorization.
_LATCHING = ("leak", "rcd_dead", "pe", "npe", "weld", "lock_broken")


def _pilot_tol(r):
    """The charger's pilot anywhere within its tolerances (docs/errors.md): each generator
    level and the ADC zero within +-0.6 V, often at a corner."""

    def one():
        return r.pick((-600, 600, 0)) if r.below(2) else r.below(1201) - 600

    return (12000 + one(), -12000 + one(), one())


def _random_event(r, t, add):
    kind = _pick_kind(r)
    trig = None
    if kind in _FAULTS or kind in ("die", "stall", "cut", "limit", "restart", "irq_write"):
        k = r.below(6)
        if k < 3:
            trig = ("charging", r.below(3000))  # while the relays are closed
        elif k == 3:
            trig = (r.pick(_TRIGGERS), r.below(400))
    span = _span(r)
    if kind in _LATCHING and span is None and r.below(2) == 0:
        span = 500 + r.below(5000)
    if kind in ("weld", "stuck") and span is not None and span < 200:
        span += 200  # a contact that sticks does so for longer than a control period

    def at(d, kind, arg):
        # `d` ms after this event: armed with it, so both wait for the same trigger.
        if trig is None:
            add(t + d, kind, arg)
        else:
            add(t, kind, arg, (trig[0], trig[1] + d))

    def pair(kind, on, off):
        add(t, kind, on, trig)
        if span is not None:
            at(span, kind, off)
            if kind in _LATCHING or r.below(4) == 0:
                # A technician clears what latched, then the driver starts again.
                d = span + 300 + r.below(3000)
                at(d, "clear", None)
                d += 200 + r.below(2000)
                at(d, r.pick(("card", "remote_start")), None)

    if kind == "ev":
        add(t, "ev", r.pick(("A", "B", "B", "C", "C", "C", "D")))
    elif kind == "follow":
        # A car slow to follow a lower offer or a stop: within the 5 s of IEC 61851-1,
        # within the 6 s of a stop, or slower than both.
        add(t, "follow", r.pick((None, 1000 + r.below(4000), 5000 + r.below(1000),
                                 6000 + r.below(4000))))
    elif kind == "badplug":
        # A plug that does not seat (its lock never confirms) on one to four plug-ins in
        # a row, the driver trying again each time; then, maybe, one that does.
        t //= 3  # early: room for the plug-ins in a row
        add(t, "ev", "A")
        add(t + 20, "lock_broken", True)  # the plug already out: no lock lost under it
        tt = t
        for i in range(1 + r.below(4)):
            if i:
                add(tt, "ev", "A")
            tt += 150 + r.below(1000)
            add(tt, "ev", r.pick(("B", "C")))
            add(tt + r.below(500), r.pick(("card", "remote_start")), None)
            tt += 2000 + r.below(4000)
        if r.below(2):
            add(tt, "lock_broken", False)
    elif kind == "bounce":
        base = r.pick(("C", "B"))
        other = r.pick(("B", "A", "C", "D"))
        tt = t
        for i in range(2 + r.below(5)):
            add(tt, "ev", other if i % 2 == 0 else base)
            tt += 5 + r.below(40)
        add(tt, "ev", base)
    elif kind == "diode":
        pair("diode", False, True)
    elif kind == "pilot_tol":
        add(t, "pilot_tol", _pilot_tol(r))
    elif kind == "short":
        pair("short", True, False)
    elif kind == "pp":
        pair("pp", r.pick((100, 680, 1500, 50, 3000, -1)), 220)
    elif kind == "card":
        add(t, "card", None)
    elif kind == "remote_start":
        add(t, "remote_start", None)
    elif kind == "remote_stop":
        add(t, "remote_stop", None)
    elif kind == "restart":
        # A stop and a new start while the EV stays in C: the new session falls inside the
        # 6 s force-open window of the old one.
        add(t, r.pick(("remote_stop", "card")), None, trig)
        d = 100 + r.below(5000)
        at(d, r.pick(("remote_start", "card")), None)
    elif kind == "replug":
        add(t, "ev", "A")
        t2 = t + 150 + r.below(2000)
        add(t2, "ev", r.pick(("B", "C")))
        add(t2 + r.below(1500), r.pick(("card", "remote_start")), None)
        add(t2 + 1500 + r.below(2000), "ev", "C")
    elif kind == "limit":
        name = r.pick(("ocpp", "power", "balance", "solar", "tariff"))
        v = r.pick((None, 0.0, 3.0, 5.9, 6.0, 8.0, 10.0, 13.5, 16.0, 20.0, 25.0, 32.0, None))
        if r.below(4) == 0 and v is not None:
            v = 6 + r.below(270) / 10.0
        add(t, "limit", (name, v), trig)
        if r.below(2) == 0:  # limits that move up and down
            d = 200 + r.below(6000)
            at(d, "limit", (name, r.pick((None, 6.0, 12.0, 20.0, 32.0))))
    elif kind == "max":
        add(t, "max", r.pick((6, 10, 16, 20, 32)))
    elif kind == "cable_max":
        add(t, "cable_max", r.pick((13, 16, 20, 32)))
    elif kind == "temp":
        which = r.pick(("relay_c", "relay_c", "socket_c", "env_c"))
        hot = {"relay_c": (65.0, 72.0, 78.0, 84.0, 86.0, 95.0, None),
               "socket_c": (58.0, 62.0, 70.0, 76.0, None),
               "env_c": (45.0,)}[which]
        pair("temp", (which, r.pick(hot)), (which, 25.0))
    elif kind == "leak":
        pair("leak", True, False)
    elif kind == "rcd_dead":
        pair("rcd_dead", True, False)
    elif kind == "pe":
        pair("pe", True, False)
    elif kind == "npe":
        pair("npe", 40.0, 0.0)
    elif kind == "volts":
        v = r.pick(([270.0] * 3, [280.0] * 3, [190.0] * 3, [230.0, 0.0, 230.0], [260.0] * 3,
                    [230.0, 230.0, 0.0]))
        pair("volts", v, [230.0] * 3)
    elif kind == "silent":
        pair("silent", True, False)
    elif kind == "nan":
        pair("nan", r.pick(("volts", "amps")), None)
    elif kind == "overdraw":
        pair("overdraw", True, False)
    elif kind == "fan_block":
        pair("fan_block", True, False)
    elif kind == "weld":
        n = 1 + r.below(2)
        pair("weld", (n, True), (n, False))
    elif kind == "stuck":
        n = 1 + r.below(2)
        pair("stuck", (n, True), (n, False))
    elif kind == "lock_broken":
        pair("lock_broken", True, False)
    elif kind == "die":
        add(t, "die", r.pick(("pilot", "protection", "metering", "hmi", "pilot", "protection")), trig)
        d = 300 + r.below(3000)
        at(d, r.pick(("card", "remote_start")), None)
    elif kind == "stall":
        ms = 100 + r.below(1400) if r.below(2) else 3000 + r.below(5000)
        add(t, "stall", (r.pick(("pilot", "protection", "metering", "hmi")), ms), trig)
        d = ms + 300 + r.below(3000)
        at(d, r.pick(("card", "remote_start")), None)
    elif kind == "cut":
        add(t, "cut", r.pick((None, None, None, "garbage", "truncate", "flip", "empty")), trig)
        d = 300 + r.below(3000)
        at(d, r.pick(("card", "remote_start")), None)
    elif kind == "clear":
        add(t, "clear", r.pick((None, None, ["PE"], ["IRD"], ["R12"], ["R3N"], ["ELK"], ["OVP"],
                                 ["OCP"], ["CP"], ["IRD", "PE"], ["MET"], ["ROT"])))
    elif kind == "mode":
        add(t, "mode", r.pick(("B", "C")))
    elif kind == "vent":
        add(t, "vent", r.below(2) == 0)
    elif kind == "can_clash":
        pair("can_clash", True, False)
    elif kind == "ext_lost":
        pair("ext_lost", True, False)
    elif kind == "slow_start":
        pair("slow_start", r.pick((7.0, 8.0, 10.0, 40.0)), 0.0)
    elif kind == "irq_write":
        # A residual current whose interrupt lands inside the next write of that output.
        add(t, "irq_write", r.pick(("relays", "cp", "lock", "rcd_test", "error")), trig)
        if span is not None:
            at(span, "leak", False)


def case_rng(seed, i):
    r = fuzz.Rng((seed ^ (i * 0x9E3779B1)) & 0xFFFFFFFF)
    for _ in range(4):
        r.u32()
    return r


# ---- shrinking and known failures ---------------------------------------------------------
def shrink(scn, failure, budget=200):
    """The shortest event list (dropping events, in halves then one by one) that still
    fails the same invariant. Returns (scenario, failure, runs)."""
    rule = failure[0]
    events = list(scn.events)
    runs = 0
    until = failure[1] + 2000  # a candidate that fails much later is not wanted anyway
    chunk = max(1, len(events) // 2)
    while chunk >= 1 and runs < budget:
        i = 0
        while i < len(events) and runs < budget:
            cand = events[:i] + events[i + chunk:]
            runs += 1
            res = play(Scenario(scn.cfg, cand), until)
            if res.failure is not None and res.failure[0] == rule:
                events = cand
                failure = res.failure
            else:
                i += chunk
        chunk //= 2
    return Scenario(scn.cfg, events), failure, runs


def _irq_only(scn, failure):
    """The same residual current, arriving between two steps instead of inside a write."""
    if not any(e[1] == "irq_write" for e in scn.events):
        return False
    res = play(scn)
    fired = [t for t, what, _ in res.trace if what == "irq"]
    rest = [e for e in scn.events if e[1] != "irq_write"]
    rest += [(t, "leak", True, None) for t in fired]
    rest.sort(key=lambda e: e[0])
    res = play(Scenario(scn.cfg, rest))
    return res.failure is None or res.failure[0] != failure[0]


# Failures the charger cannot avoid, each with its reason (docs/invariants.md). A failure
# that goes away when its cause is taken out of the (shrunk) scenario counts as known and
# does not fail `make test`; INV_STRICT=1 fails on them too.
def _clear_report_irq(scn, failure):
    return failure[0] == "clear-cause" and _irq_only(scn, failure)


KNOWN = (
    ("6", "an RCD interrupt inside the technician clear's report: IRD trips again at once "
     "and latches at the next protection tick; the report said cleared just before", _clear_report_irq),
)


def known(scn, failure):
    for item, note, test in KNOWN:
        if test(scn, failure):
            return item, note
    return None


# ---- reports ---------------------------------------------------------------------------------
def describe(scn):
    c = scn.cfg
    lines = ["case %d: %s board, %s, %s, charging_mode %s, ventilation %s, max %d A, %s, "
             "PP %d ohm, cable_max %d A, EV max %.0f A lag %d ms, min pause %d s, tick bases %s, "
             "%d ms" % (
                 c["index"], "socket" if c["socket"] else "tethered", c["auth_mode"], c["charger_power"],
                 c["charging_mode"], c["ventilation"], c["max_current_a"], c["power_system"],
                 c["pp_ohm"], c["cable_max_a"], c["ev_max_a"], c["ev_lag_ms"], c["min_pause_s"],
                 ["0x%08x" % b for b in c["bases"]], c["duration_ms"])]
    for t, kind, arg, trig in scn.events:
        when = "" if trig is None else " (once %s, +%d ms)" % trig
        lines.append("  %6d ms  %s %s%s" % (t, kind, "" if arg is None else repr(arg), when))
    return "\n".join(lines)


def _quiet(what, value):
    """Indicator changes that say nothing about safety (the display's rotation...)."""
    if what == "display":
        return not value.startswith("ERR")
    if what == "leds":
        return value[0] != "fault"
    return what in ("belt", "tap", "beep", "fan")


def outputs(res, last=30, everything=False):
    lines = []
    for t, what, value in res.trace:
        if everything or not _quiet(what, value):
            lines.append("  %6d ms  %s %r" % (t, what, value))
    return "\n".join(lines[-last:])


DEFAULT_SEED = fuzz.DEFAULT_SEED


def seed():
    s = os.getenv("INV_SEED")
    if not s:
        return DEFAULT_SEED
    return int(s, 16) if s[:2] in ("0x", "0X") else int(s)
