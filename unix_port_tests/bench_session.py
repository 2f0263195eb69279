# A scripted 2-hour charging session on the fake board and the firmware's own clock
# (`make bench`, tools/bench_session.py, docs/development.md).
#
#   micropython unix_port_tests/bench_session.py [--seed 1] [--minutes 120]
#
# One three-phase car on a 22 kW charger with power management on an external meter
# (an SDM630 behind a fake Modbus master, 25 A main fuse). The house load is noisy
# (+-0.5 A at every reading) and goes through scripted segments: steady, random steps,
# kettle spells, a stretch where the headroom sits around 6 A, relay temperature noise
# (+-0.3 C) at the onset of the derating and where it meets the offer, a wobbling OCPP
# limit (set as the OCPP layer sets it), then everything at once. The car follows a lower offer within 2 s, a higher one
# within 3 s, opens S2 3 s after the PWM stops and closes it 1.5 s after the PWM is back.
#
# Everything is counted at the board (the outputs the charger writes) and from the
# charger's session events, never from its internals, so the same bench measures a
# changed offer path: contactor cycles, duty changes (PWM duty writes that changed the
# value), pauses (PWM -> static +12 V during a session), relays opened under load (the
# car drawing > 1 A at that moment), trips (state F) and the energy the car took. The
# house and the temperatures are functions of the time and the seed, not of when the
# firmware reads them: same seed, same world, whatever the firmware does.
# Prints one JSON line.
import sys
import time

_HERE = __file__.rpartition("/")[0] or "."
for _p in (_HERE, _HERE + "/../firmware", _HERE + "/../lib", _HERE + "/../boards/unix_sim"):
    if _p not in sys.path:
        sys.path.append(_p)

import struct  # noqa: E402

import fuzz  # noqa: E402
import log  # noqa: E402
from core_model import Aio, Board, Loop, Meter, Temps, Time, amps_of, patch_modules, restore  # noqa: E402
from fakehw import FakeSettings  # noqa: E402

MIN = 60000
SEGMENTS = (  # (name, minutes)
    ("steady", 10),
    ("load steps", 20),
    ("kettle", 10),
    ("headroom ~6 A", 20),
    ("derate onset 70C", 10),
    ("derate binds 79C", 10),
    ("OCPP wobble", 20),
    ("all at once", 20),
)
HOUSE_MAX_A = 25
CAR_MAX_A = 16.0
FOLLOW_DOWN_MS = 2000  # the car follows a lower offer within this
FOLLOW_UP_MS = 3000  # ... and a higher one within this
S2_OPEN_MS = 3000  # no PWM this long: the car opens S2 (C -> B)
S2_CLOSE_MS = 1500  # PWM back this long: it closes S2 again (B -> C)
LOAD_A = 1.0  # relays opened while the car draws more than this: opened under load
VOLTS = 230.0
PLANT_MS = 100

_M32 = 0xFFFFFFFF


def _unit(seed, slot, chan):
    """A uniform number in [-1, 1) for (slot, channel): the same for a given time
    whatever the firmware reads when, so a changed firmware sees the same house."""
    r = fuzz.Rng((seed * 0x9E3779B1 ^ slot * 0x85EBCA6B ^ chan * 0xC2B2AE35) & _M32)
    r.u32()
    return r.u32() / 2147483648.0 - 1.0


class Script:
    """The scripted world, drawn once from the seed."""

    def __init__(self, seed):
        self.seed = seed
        r = fuzz.Rng(seed)
        for _ in range(4):
            r.u32()
        self.bounds = []
        t = 0
        for name, minutes in SEGMENTS:
            self.bounds.append((name, t, t + minutes * MIN))
            t += minutes * MIN
        self.end = t
        seg = {name: (a, b) for name, a, b in self.bounds}
        base = [3.0 + r.below(20) / 10.0 for _ in range(3)]
        self.levels = []  # (from, [amps per phase]): the house's slow part, in order
        self.loads = []  # (from, to, phase, amps): a kettle and the like, on top
        self.temps = []  # (from, to, relay centre C)
        self.ocpp = []  # (t, amps or None)
        self.levels.append((0, list(base)))

        def steps(a, b):
            t = a
            while t < b:
                self.levels.append((t, [2.0 + r.below(100) / 10.0 for _ in range(3)]))
                t += MIN + r.below(4 * MIN)
            self.levels.append((b, list(base)))

        def kettles(a, b, n):
            for i in range(n):
                span = (b - a) // n
                t = a + i * span + r.below(span // 2)
                self.loads.append((t, t + 150000 + r.below(90000), r.below(3), 9.5))

        def wobble(a, b):
            t = a
            while t < b:
                self.ocpp.append((t, 11.0 + r.below(21) / 10.0))  # 11 .. 13 A
                t += 10000 + r.below(30000)
            self.ocpp.append((b, None))

        steps(*seg["load steps"])
        kettles(seg["kettle"][0], seg["kettle"][1], 2)
        a, b = seg["headroom ~6 A"]
        t = a
        while t < b:  # the other loads leave 5 .. 8 A (a slow drift, every phase), and the noise
            drift = (r.below(31) - 15) / 10.0
            self.levels.append((t, [HOUSE_MAX_A - 6.5 + drift + r.below(4) / 10.0 for _ in range(3)]))
            t += 30000 + r.below(90000)
        self.levels.append((b, list(base)))
        self.temps.append(seg["derate onset 70C"] + (70.0,))
        # Where the relay derating meets the car's 16 A (protection's thermal limit).
        self.temps.append(seg["derate binds 79C"] + (79.2,))
        wobble(*seg["OCPP wobble"])
        a, b = seg["all at once"]
        steps(a, b)
        kettles(a, b, 2)
        wobble(a, b)
        self.temps.append((a, b, 76.0))
        self.levels.sort(key=lambda e: e[0])

    def segment(self, t):
        for i in range(len(self.bounds)):
            if t < self.bounds[i][2]:
                return i
        return len(self.bounds) - 1

    def house(self, t):
        """Amps per phase of the house's other loads at t (ms), noise included."""
        lv = self.levels[0][1]
        for t0, amps in self.levels:
            if t0 > t:
                break
            lv = amps
        out = list(lv)
        for a, b, k, amps in self.loads:
            if a <= t < b:
                out[k] += amps
        sec = t // 1000
        for k in range(3):
            out[k] = max(0.0, out[k] + 0.5 * _unit(self.seed, sec, k))
        return out

    def relay_c(self, t):
        for a, b, centre in self.temps:
            if a <= t < b:
                return centre + 0.3 * _unit(self.seed, t // PLANT_MS, 7)
        return 40.0


# ---- the plant ------------------------------------------------------------------------------
class Counts:
    FIELDS = ("contactor_cycles", "opens", "duty_changes", "pauses", "opens_under_load", "trips",
              "energy_wh")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)

    def as_dict(self):
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["energy_kwh"] = round(d.pop("energy_wh") / 1000, 3)
        return d


class Car:
    """A three-phase car: follows the offer it reads on the pilot (its own reading of
    the duty, core_model.amps_of) a little late, and works S2 as cars do."""

    def __init__(self, board):
        self.b = board
        self.set_a = 0.0  # what it draws, once the contacts are closed
        self._want = None  # (amps, since) a different setpoint it is moving to
        self._pwm_since = None
        self._static_since = None

    def step(self, now):
        b = self.b
        ev = b.ev
        duty = b.cp.duty_pm
        offer = amps_of(duty)
        closed = b.relays.contact(1) and b.relays.contact(2)
        if not closed or ev.state != "C":
            self.set_a = 0.0
            self._want = None
        else:
            want = min(CAR_MAX_A, offer)
            if want == self.set_a:
                self._want = None
            else:
                if self._want is None or self._want[0] != want:
                    self._want = (want, now if self._want is None else self._want[1])
                lag = FOLLOW_DOWN_MS if want < self.set_a else FOLLOW_UP_MS
                if now - self._want[1] >= lag:
                    self.set_a = want
                    self._want = None
        if duty > 0:
            self._static_since = None
            if self._pwm_since is None:
                self._pwm_since = now
            if ev.state == "B" and offer >= 6.0 and now - self._pwm_since >= S2_CLOSE_MS:
                ev.state = "C"
        else:
            self._pwm_since = None
            if self._static_since is None:
                self._static_since = now
            if ev.state == "C" and now - self._static_since >= S2_OPEN_MS:
                ev.state = "B"


class BenchMeter(Meter):
    """The internal meter: the car's draw now; energy counted over time, not per read
    (the power manager reads it too)."""

    def read(self):
        b = self._b
        d = b.draw_a()
        self.volts = [VOLTS, VOLTS, VOLTS]
        self.amps = [d, d, d]
        self.power_w = 3 * d * VOLTS
        self.energy_wh = b.energy_wh


class BenchTemps(Temps):
    def __init__(self, board, script):
        super().__init__()
        self._b = board
        self._s = script

    def read(self):
        self.relay_c = self._s.relay_c(self._b.clock.now)


class Plant(Board):
    def __init__(self, clock, script):
        super().__init__(clock, socket=True, three_phase=True)
        self.script = script
        self.car = Car(self)
        self.meter = BenchMeter(self)
        self.temps = BenchTemps(self, script)
        self.energy_wh = 0.0
        self.in_session = False
        self.counts = [Counts() for _ in script.bounds]
        self.total = Counts()
        self.ev.max_a = CAR_MAX_A

    def draw_a(self):
        if self.ev.state != "C" or not (self.relays.contact(1) and self.relays.contact(2)):
            return 0.0
        return self.car.set_a * 0.98  # a little under the offer, as cars draw

    def _count(self, field, n=1):
        c = self.counts[self.script.segment(self.clock.now)]
        setattr(c, field, getattr(c, field) + n)
        setattr(self.total, field, getattr(self.total, field) + n)

    def out(self, what, value):
        if what == "relays":
            if value and not self.relays.closed:
                self._count("contactor_cycles")
            elif not value and self.relays.closed:
                self._count("opens")
                if self.draw_a() > LOAD_A:
                    self._count("opens_under_load")
        elif what == "cp":
            old = self.cp.duty_pm
            if value != old:
                if value > 0:
                    self._count("duty_changes")
                elif value == -1 and old > 0 and self.in_session:
                    self._count("pauses")
                elif value == -2:
                    self._count("trips")
        Board.out(self, what, value)
        if len(self.trace) > 50:
            del self.trace[:]

    def tick(self, now, dt):
        self.car.step(now)
        wh = 3 * self.draw_a() * VOLTS * dt / 3600000.0
        self.energy_wh += wh
        self._count("energy_wh", wh)


def _words(value):
    b = struct.pack(">f", value)
    return ((b[0] << 8) | b[1], (b[2] << 8) | b[3])


class GridMeter:
    """The external meter at the grid connection: an SDM630 register image of the house
    load plus the car's draw at the moment of each read, behind a Modbus master."""

    def __init__(self, plant):
        self.p = plant
        self.reads = 0

    async def read_registers(self, fc, slave, start, count):
        p = self.p
        house = p.script.house(p.clock.now)
        d = p.draw_a()
        regs = {}
        for k in range(3):
            a = house[k] + d
            for reg, v in ((0x0000 + 2 * k, VOLTS), (0x0006 + 2 * k, a), (0x000C + 2 * k, a * VOLTS)):
                w = _words(v)
                regs[reg] = w[0]
                regs[reg + 1] = w[1]
        w = _words(1000.0)
        regs[0x0048], regs[0x0049] = w
        self.reads += 1
        out = bytearray()
        for r in range(start, start + count):
            v = regs.get(r, 0)
            out.append(v >> 8)
            out.append(v & 0xFF)
        return memoryview(out)


# ---- the firmware, as evse/app.py builds it ---------------------------------------------------
class _Hmi:
    def beep_ok(self):
        pass

    def beep_fail(self):
        pass


class _History:
    def session_progress(self, s):
        pass


class _AppShim:
    pass


def _data_dir():
    d = fuzz.scratch_dir("bench_session")
    fuzz.remove_quietly(d + "/latched.json")
    return d


def _patch_rest(clock, aio):
    """The virtual `time` and `asyncio` for every other firmware module loaded (power
    management, and whatever module the offer path lives in next)."""
    real = {"time": time, "asyncio": sys.modules.get("asyncio")}
    saved = []
    for name in list(sys.modules):
        mod = sys.modules[name]
        if not (name.startswith("evse") or name in ("periodic", "modbus_rtu")):
            continue
        for attr, value in (("time", clock), ("asyncio", aio)):
            cur = mod.__dict__.get(attr)
            if cur is not None and cur is real[attr]:
                saved.append((mod, attr, cur))
                setattr(mod, attr, value)
    return saved


def run(seed=1, minutes=None):
    # Power management loads these two at its first cycle: loaded now, they get the
    # virtual clock too (_patch_rest).
    import modbus_rtu  # noqa: F401
    from evse import meters  # noqa: F401
    from evse.app import App
    from evse.auth import Authorizer
    from evse.charger import Charger
    from evse.metering import Metering
    from evse.power import PowerManager
    from evse.protection import Protection
    from evse.supervisor import Supervisor

    script = Script(seed)
    until = script.end if minutes is None else min(script.end, int(minutes * MIN))
    clock = Time()
    aio = Aio(None)
    loop = Loop(clock)
    aio._loop = loop
    plant = Plant(clock, script)
    settings = FakeSettings(
        charger_power="22kW", max_current_a=32, auth_mode="free", meter_model="SDM630",
        max_house_current_a=HOUSE_MAX_A, phase_set="L123",
    )
    saved = patch_modules(clock, aio)
    saved += _patch_rest(clock, aio)
    had_asyncio = sys.modules.get("asyncio")
    sys.modules["asyncio"] = aio  # PowerManager.run imports it when it starts
    level = log._level
    log.set_level(log.ERROR + 10)
    data = _data_dir()
    t0 = time.ticks_ms()
    try:
        ch = Charger(plant, settings)
        prot = Protection(ch, plant, settings, None, data)
        met = Metering(plant, ch, prot, _History())
        auth = Authorizer(ch, settings, _Hmi(), met)
        pm = PowerManager(ch, settings, prot, met, master=GridMeter(plant), data_dir=data,
                          own_meter=plant.meter, clock=clock.ticks_ms,
                          clock_us=lambda: clock.ticks_ms() * 1000)
        sup = Supervisor(plant.wdt, ch.emergency_stop, ch.hold)
        plant.rcd.set_handler(ch.rcd_handler)
        prot.load_latches()

        def on_charger(event, c, *rest):
            if event == "session_start":
                plant.in_session = True
            elif event == "session_end":
                plant.in_session = False

        ch.listeners.append(on_charger)
        a = _AppShim()
        a.charger, a.protection, a.metering, a.auth, a.supervisor = ch, prot, met, auth, sup
        a.uptime_s = 0
        a._up_ms = clock.ticks_ms()
        a._count_uptime = lambda now, a=a: App._count_uptime(a, now)
        for name, fn, critical in (("pilot", App._pilot_task, True),
                                   ("protection", App._protection_task, True),
                                   ("metering", App._metering_task, False)):
            sup.add(name, (lambda fn=fn: fn(a)), critical=critical)
        sup.add("power", pm.run)

        async def world():
            ocpp = list(script.ocpp)
            plant.ev.state = "B"  # plugged in at the start; free mode starts the session
            while True:
                now = clock.now
                while ocpp and ocpp[0][0] <= now:
                    ch.set_external_limit("ocpp", ocpp.pop(0)[1])  # as the OCPP layer feeds it
                plant.tick(now, PLANT_MS)
                await aio.sleep_ms(PLANT_MS)

        loop.spawn(sup.run())
        loop.spawn(world())
        steps = 0
        while True:
            nt = loop.next_task()
            if nt is None or nt[0] >= until:
                break
            clock.now = nt[0]
            loop.step(nt[1])
            steps += 1
            if loop.crash is not None:
                raise loop.crash
    finally:
        loop.close()
        log.set_level(level)
        restore(saved)
        if had_asyncio is None:
            sys.modules.pop("asyncio", None)
        else:
            sys.modules["asyncio"] = had_asyncio
    segs = []
    for i, (name, a, b) in enumerate(script.bounds):
        if a >= until:
            break
        d = plant.counts[i].as_dict()
        d["segment"] = name
        d["from_min"] = a // MIN
        d["to_min"] = min(b, until) / MIN
        segs.append(d)
    return {
        "seed": seed,
        "minutes": until / MIN,
        "segments": segs,
        "total": plant.total.as_dict(),
        "restarts": dict(sup.restarts),
        "meter_reads": pm.reads,
        "steps": steps,
        "wall_s": time.ticks_diff(time.ticks_ms(), t0) / 1000,
    }


def main(argv):
    import json

    usage = "usage: bench_session.py [--seed N] [--minutes M > 0]"
    seed, minutes = 1, None
    i = 0
    while i < len(argv):
        try:
            if argv[i] == "--seed" and i + 1 < len(argv):
                seed = int(argv[i + 1], 0)
            elif argv[i] == "--minutes" and i + 1 < len(argv):
                minutes = float(argv[i + 1])
                if not minutes > 0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            print(usage)
            sys.exit(2)
        i += 2
    print(json.dumps(run(seed, minutes)))


if __name__ == "__main__":
    main(sys.argv[1:])
