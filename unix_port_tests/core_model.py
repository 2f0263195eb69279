# The charging core on a fake board, for the invariant checker (test_invariants.py).
#
# A plant (EV, relays with their auxiliary contacts, socket lock, RCD module, earth,
# meter, temperatures, fan) behind the HAL objects of docs/hal.md: every output write
# goes through Board.out(), which tells the checker before it lands and keeps a trace.
# A virtual clock gives the core the tick arithmetic of a 32-bit board (ticks_ms wraps
# at 2**30), and a small deterministic scheduler runs the firmware's own tasks and its
# Supervisor on that clock: same scenario, same run, on any machine.
import fakehw

TICKS_PERIOD = 1 << 30
_MASK = TICKS_PERIOD - 1
_HALF = TICKS_PERIOD >> 1


def ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


def ticks_add(t, delta):
    return (t + delta) & _MASK


class Time:
    """The `time` module the charging core sees while a scenario runs."""

    def __init__(self):
        self.now = 0  # virtual ms since the scenario began: never wraps (the checker's clock)
        self.base = 0  # ticks_ms at the last boot: near 2**30 to cross the wrap
        self.boot = 0  # `now` at the last boot
        self.ticks_diff = ticks_diff
        self.ticks_add = ticks_add

    def ticks_ms(self):
        return (self.base + self.now - self.boot) & _MASK


# ---- a scheduler on the virtual clock -------------------------------------------------------
class CancelledError(BaseException):
    pass


def _sleep(ms):
    yield ms


class Task:
    def __init__(self, coro, wake, seq):
        self.coro = coro
        self.wake = wake
        self.seq = seq
        self.done = False
        self.stalled_until = None  # a hung task: not run before then

    def cancel(self):
        if not self.done:
            self.done = True
            try:
                self.coro.close()
            except Exception:
                pass


class Loop:
    """Runs coroutines that await `sleep_ms` on the virtual clock, earliest first."""

    def __init__(self, clock):
        self.clock = clock
        self.tasks = []
        self._seq = 0
        self.crash = None  # an exception that left a task: in the app it ends the loop

    def spawn(self, coro):
        self._seq += 1
        t = Task(coro, self.clock.now, self._seq)
        self.tasks.append(t)
        return t

    def next_task(self):
        best = None
        for t in self.tasks:
            if t.done:
                continue
            w = t.wake if t.stalled_until is None else max(t.wake, t.stalled_until)
            if best is None or w < best[0] or (w == best[0] and t.seq < best[1].seq):
                best = (w, t)
        return best

    def step(self, t, exc=None):
        try:
            ms = t.coro.send(None) if exc is None else t.coro.throw(exc)
        except StopIteration:
            t.done = True
            return
        except Exception as e:
            t.done = True
            self.crash = e
            return
        t.wake = self.clock.now + (ms if ms and ms > 0 else 0)

    def close(self):
        for t in self.tasks:
            t.cancel()
        self.tasks = []


class Aio:
    """The `asyncio` the supervisor, the app's tasks and the HMI see."""

    CancelledError = CancelledError

    def __init__(self, loop):
        self._loop = loop

    def sleep_ms(self, ms):
        return _sleep(ms)

    def sleep(self, s):
        return _sleep(int(s * 1000))

    def create_task(self, coro):
        return self._loop.spawn(coro)


# ---- the board and its plant --------------------------------------------------------------------
_R = {"B": 2740, "C": 882, "D": 246}


class Cp:
    def __init__(self, b):
        self._b = b
        self.duty_pm = -1

    def pwm(self, duty_pm):
        self._b.out("cp", duty_pm)

    def high(self):
        self._b.out("cp", -1)

    def low(self):
        self._b.out("cp", -2)


class CpAdc:
    """One sample is one whole PWM period: the plateaus of the EV the plant has now."""

    def __init__(self, b):
        self._b = b
        self.hi_mv = self.lo_mv = 12000

    def sample(self):
        b = self._b
        ev = b.ev
        duty = b.cp.duty_pm
        b.sampled(duty)
        pos = ev.gen_pos_mv
        neg = ev.gen_neg_mv
        z = ev.adc_zero_mv
        if duty == -2:
            self.hi_mv = self.lo_mv = neg + z
            return
        if ev.short:
            hi = 0
        elif ev.state == "A":
            hi = pos
        else:
            r = _R[ev.state]
            hi = 900 + (pos - 900) * r // (r + 1000)
        self.hi_mv = hi + z
        if duty > 0:
            if ev.state != "A" and not ev.diode and not ev.short:
                r = _R[ev.state]
                self.lo_mv = neg * r // (r + 1000) + z  # no diode: the plateau is not -12 V
            else:
                self.lo_mv = neg + z
        else:
            self.lo_mv = hi + z


class Ev:
    def __init__(self):
        self.state = "A"
        self.diode = True
        self.short = False  # CP shorted to PE (state E)
        self.max_a = 32.0
        self.lag_ms = 1000  # how late it follows a change of the offer (IEC: within 5 s)
        self.overdraw = False  # a misbehaving EV: far more than offered
        # The charger's own pilot within its tolerances (docs/errors.md): the generator's
        # levels and the zero error of the ADC that reads the line.
        self.gen_pos_mv = 12000
        self.gen_neg_mv = -12000
        self.adc_zero_mv = 0
        # Asleep in B: deaf to the PWM until the wake-up sequence; woken, it closes S2 as
        # the PWM comes back (fakehw.Sleeper, at every write of the pilot).
        self.asleep = False
        self.wake = fakehw.Sleeper(close_ms=0)
        self.start_min_a = 0.0  # a slow starter: draws nothing while offered less
        # A car that stops asking after this many interruptions (the PWM stopped while it
        # was in C or D): it goes to B and stays there. None: never.
        self.gives_up_after = None
        self.interruptions = 0
        # None, or how long it takes to follow a lower offer, a stop included (the sim's
        # `follow_s`): it goes on drawing the old current that long.
        self.follow_ms = None

    def pwm_stopped(self):
        if self.state in ("C", "D") and not self.short:
            self.interruptions += 1
            n = self.gives_up_after
            if n and self.interruptions >= n:
                self.state = "B"


class Relays:
    def __init__(self, b):
        self._b = b
        self.closed = False  # the coil, as the charger commanded it
        self.weld = [False, False, False]  # [1], [2]: contact stays closed
        self.stuck = [False, False, False]  # contact stays open

    def close(self):
        self._b.out("relays", True)

    def open(self):
        self._b.out("relays", False)

    def contact(self, n):
        return self.weld[n] or (self.closed and not self.stuck[n])

    def feedback(self, n):
        return self.contact(n)


class Lock:
    def __init__(self, b, fitted):
        self._b = b
        self.fitted = fitted
        self.engaged = False  # the actuator's position
        self.broken = False  # the pin does not go in (or falls out)

    def engage(self):
        self._b.out("lock", True)

    def release(self):
        self._b.out("lock", False)

    def feedback(self):
        return self.engaged and not self.broken


class Rcd:
    def __init__(self, b):
        self._b = b
        self._cb = None
        self.leak = False  # a real residual current
        self.testing = False  # the self-test input
        self.dead = False  # does not trip on the test input

    def set_handler(self, cb):
        self._cb = cb

    def tripped(self):
        return self.leak or (self.testing and not self.dead)

    def test(self, on):
        self._b.out("rcd_test", on)

    def set_leak(self, on):
        was = self.tripped()
        self.leak = on
        if not was and self.tripped():
            self._b.rcd_edge()

    def set_dead(self, on):
        was = self.tripped()
        self.dead = on
        if not was and self.tripped():
            self._b.rcd_edge()


class Pe:
    def __init__(self):
        self.continuity = True
        self.n_pe_v = 0.0

    def read(self):
        pass


class Meter:
    def __init__(self, b):
        self._b = b
        self.true_volts = [230.0, 230.0, 230.0]
        self.silent = False
        self.nan = None  # None, "volts" or "amps": that reading is NaN
        self.volts = [230.0, 230.0, 230.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 50.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True

    def read(self):
        if self.silent:
            raise OSError(5)
        b = self._b
        d = b.draw_a()
        self.volts = list(self.true_volts)
        self.amps = [d, d, d] if b.three_phase else [d, 0.0, 0.0]
        if self.nan == "volts":
            self.volts[0] = float("nan")
        elif self.nan == "amps":
            self.amps[0] = float("nan")
        self.power_w = d * 230.0 * (3 if b.three_phase else 1)
        self.energy_wh += self.power_w / 3600.0


class Temps:
    def __init__(self):
        self.relay_c = 25.0
        self.socket_c = 25.0
        self.env_c = 25.0

    def read(self):
        pass


class Fan:
    def __init__(self, b):
        self._b = b
        self.running = False
        self.blocked = False

    def run(self, on):
        self._b.out("fan", on)

    def rpm(self):
        return 2400 if self.running and not self.blocked else 0


class Pp:
    def __init__(self):
        self.ohm = 220

    def read_ohm(self):
        return self.ohm


class _Out:
    """An indicator: every call is an output write."""

    def __init__(self, b, what):
        self._b = b
        self._what = what

    def set(self, *value):
        self._b.out(self._what, value if len(value) > 1 else value[0])

    def show(self, text):
        self._b.out(self._what, text)

    def beep(self, ms):
        self._b.out(self._what, ms)


class _Wlan:
    mode = "ap"
    module_ok = True

    def ap_clients(self):
        return 0

    def isconnected(self):
        return False


class _Button:
    def pressed(self):
        return False


class _Rtc:
    def __init__(self, clock):
        self._clock = clock

    def now(self):
        return 1_790_000_000 + self._clock.now // 1000


class _Wdt:
    def __init__(self, b):
        self._b = b
        self.started = False
        self.fed_ms = 0

    def start(self, timeout_ms):
        self.started = True
        self.timeout_ms = timeout_ms
        self.fed_ms = self._b.clock.now

    def feed(self):
        self.fed_ms = self._b.clock.now


class Board:
    """The fake board (hw of docs/hal.md) and the plant behind it. `watch(what, value)`
    is called before each output write lands; `trace` keeps the writes that changed
    something, with their virtual time."""

    def __init__(self, clock, socket=True, three_phase=False):
        self.clock = clock
        self.name = "fake"
        self.serial = "INV0001"
        self.three_phase = three_phase
        self.watch = None
        self.trace = []
        self.irq_before = None  # an output name: the RCD trips just before its next write
        self.ev = Ev()
        self.cp = Cp(self)
        self.cp_adc = CpAdc(self)
        self.pp_adc = Pp()
        if not socket:
            self.pp_adc.ohm = -1  # a tethered cable: nothing on PP
        self.relays = Relays(self)
        self.lock = Lock(self, socket)
        self.rcd = Rcd(self)
        self.pe = Pe()
        self.meter = Meter(self)
        self.temps = Temps()
        self.fan = Fan(self)
        self.belt = _Out(self, "belt")
        self.leds = _Out(self, "leds")
        self.display = _Out(self, "display")
        self.tap_light = _Out(self, "tap")
        self.buzzer = _Out(self, "beep")
        self.button = _Button()
        self.wlan = _Wlan()
        self.rtc = _Rtc(clock)
        self.wdt = _Wdt(self)
        self.irq = fakehw.Irq()
        self.disable_irq = self.irq.disable  # bound once, as a board binds machine's
        self.enable_irq = self.irq.enable
        self.offers = [(0, 0.0)]  # (t, amps the PWM offers) at each change, for the EV
        self.last_sample = None  # (t, duty, ev state, diode, short)
        self.display_text = ""
        self.copen = clock.now  # both coils released and both contacts open since (None: not)
        self.woken = 0  # times the sleeping EV was woken

    # ---- outputs ------------------------------------------------------------------
    def out(self, what, value):
        if self.irq_before == what:
            self.irq_before = None
            self.trace.append((self.clock.now, "irq", what))
            self.rcd.set_leak(True)  # an interrupt between the caller's checks and its write
        if self.watch is not None:
            self.watch(what, value)
        changed = True
        if what == "relays":
            changed = self.relays.closed != value
            self.relays.closed = value
            self.sync_contacts()
        elif what == "cp":
            was_pwm = self.cp.duty_pm > 0
            changed = self.cp.duty_pm != value
            self.cp.duty_pm = value
            if changed:
                self.offers.append((self.clock.now, amps_of(value)))
                if len(self.offers) > 64:
                    del self.offers[:32]
            if was_pwm and value <= 0:
                self.ev.pwm_stopped()
            self.ev_sees_pilot()
        elif what == "lock":
            changed = self.lock.engaged != value
            self.lock.engaged = value
        elif what == "rcd_test":
            was = self.rcd.tripped()
            changed = self.rcd.testing != value
            self.rcd.testing = value
            if not was and self.rcd.tripped():
                self.rcd_edge()
        elif what == "fan":
            changed = self.fan.running != value
            self.fan.running = value
        elif what == "display":
            changed = self.display_text != value
            self.display_text = value
        if changed:
            self.trace.append((self.clock.now, what, value))
            if len(self.trace) > 400:
                del self.trace[:200]

    def ev_sees_pilot(self):
        ev = self.ev
        if ev.wake.see(self.clock.now, self.cp.duty_pm, ev.asleep and ev.state == "B"):
            ev.asleep = False
            ev.state = "C"
            self.woken += 1
            self.trace.append((self.clock.now, "ev", "woken: C"))

    def rcd_edge(self):
        """The RCD fault line rose: the board opens the relays in the handler, then calls
        the application's callback (docs/hal.md); with interrupts disabled the handler
        runs when they are enabled again, as on the MCU."""
        self.irq.raise_(self._rcd_handler)

    def _rcd_handler(self):
        self.out("relays", False)
        if self.rcd._cb is not None:
            self.rcd._cb()

    def sync_contacts(self):
        r = self.relays
        if r.closed or r.contact(1) or r.contact(2):
            self.copen = None
        elif self.copen is None:
            self.copen = self.clock.now

    def report_error(self, code, active):
        self.out("error", (code, active))

    def sampled(self, duty):
        ev = self.ev
        self.last_sample = (self.clock.now, duty, ev.state, ev.diode, ev.short)

    # ---- the plant ------------------------------------------------------------------
    def contacts_closed(self):
        return self.relays.contact(1) or self.relays.contact(2)

    def offer_at(self, t):
        a = 0.0
        for ts, amps in self.offers:
            if ts > t:
                break
            a = amps
        return a

    def draw_a(self):
        """What the EV draws now: the offer it saw lag_ms ago (it follows a change within
        5 s), through both contacts, in C or D."""
        ev = self.ev
        r = self.relays
        if ev.state not in "CD" or ev.short or not (r.contact(1) and r.contact(2)):
            return 0.0
        now = self.clock.now
        if ev.overdraw:
            # Well above the highest offer of the last 7 s: over-current by any reference.
            top = self.offer_at(now - 7000)
            for ts, amps in self.offers:
                if ts >= now - 7000 and amps > top:
                    top = amps
            return top + 10.0
        a = self.offer_at(now - ev.lag_ms)
        if ev.follow_ms is not None and ev.follow_ms > ev.lag_ms:
            # The highest offer in effect at any time of the follow window.
            a = max(a, self.offer_at(now - ev.follow_ms))
            for ts, amps in self.offers:
                if ts > now - ev.lag_ms:
                    break
                if ts > now - ev.follow_ms and amps > a:
                    a = amps
        a = min(ev.max_a, a)
        return 0.0 if a < ev.start_min_a else a


def amps_of(duty_pm):
    """The current a duty offers, as the EV reads it (IEC 61851-1 Table A.8): the
    checker's own reading of the pilot, not the firmware's."""
    if duty_pm <= 0:
        return 0.0
    d = duty_pm / 10.0  # percent
    if d < 8 or d > 97:
        return 0.0
    if d < 10:
        return 6.0
    if d <= 85:
        return d * 0.6
    return min((d - 64) * 2.5, 80.0)


def pp_rating(ohm):
    """Cable ampacity of a PP resistor (IEC 62196 windows, docs/errors.md), or None."""
    if ohm is None or ohm < 75:
        return None
    for lo, hi, amps in ((75, 150, 63), (150, 330, 32), (330, 1000, 20), (1000, 2200, 13)):
        if lo <= ohm < hi:
            return amps
    return None


def patch_modules(clock, aio):
    """Points the core's `time` and `asyncio` at the virtual ones. Returns what to put
    back (restore()): the modules stay imported for the tests that run after."""
    import periodic
    from evse import app, charger, hmi, metering, protection, supervisor
    from evse import offer, rcdtest, socketlock  # the charger's parts

    saved = []
    for mod in (periodic, app, charger, hmi, metering, protection, supervisor,
                offer, rcdtest, socketlock):
        for name, value in (("time", clock), ("asyncio", aio)):
            if name in mod.__dict__:
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, value)
    return saved


def restore(saved):
    for mod, name, value in saved:
        setattr(mod, name, value)
