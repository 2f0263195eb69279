# A minimal in-memory board for logic tests of the charging core: outputs are recorded,
# inputs are plain attributes a test sets. The CP "ADC" follows a tiny EV model so the
# charger's own classification code runs unchanged.
import sim_wake  # boards/unix_sim: the sleeping car's view of the pilot, shared


class Cp:
    def __init__(self):
        self.duty_pm = -1

    def pwm(self, duty_pm):
        self.duty_pm = duty_pm

    def high(self):
        self.duty_pm = -1

    def low(self):
        self.duty_pm = -2


_R = {"B": 2740, "C": 882, "D": 246}


class CpAdc:
    def __init__(self, cp, ev):
        self._cp = cp
        self._ev = ev
        self.hi_mv = 12000
        self.lo_mv = 12000

    def sample(self):
        ev = self._ev
        ev.watch(self._cp.duty_pm)
        pos = ev.gen_pos_mv
        neg = ev.gen_neg_mv
        z = ev.adc_zero_mv
        ev.see(self._cp.duty_pm)
        if self._cp.duty_pm == -2:
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
        if self._cp.duty_pm > 0:
            if ev.state != "A" and not ev.diode:
                self.lo_mv = neg * _R.get(ev.state, 0) // (_R.get(ev.state, 0) + 1000) + z
            else:
                self.lo_mv = neg + z
        else:
            self.lo_mv = hi + z


class Ev:
    def __init__(self):
        self.state = "A"
        self.diode = True
        self.short = False
        # The charger's own pilot, within its tolerances: the generator's levels and the
        # zero error of the ADC that reads the line (added to every reading).
        self.gen_pos_mv = 12000
        self.gen_neg_mv = -12000
        self.adc_zero_mv = 0
        self.asleep = False  # in B, deaf to the PWM until the wake-up sequence (Sleeper)
        self.clock = None  # ms, set by a test that lets the car wake up
        self._sleep = Sleeper()
        self.start_min_a = 0.0  # a slow starter: draws nothing while offered less
        # A car that stops asking after this many interruptions (the PWM stopped while
        # it was in C or D): it goes to B and stays there. None: never.
        self.gives_up_after = None
        self.interruptions = 0
        self.gave_up = False
        self._pwm = False

    def draw_a(self, offered_a, closed):
        """What the car draws on its phase: the offer through closed contacts in C/D,
        nothing while the offer is below its start_min_a (tests copy it into meter.amps)."""
        if self.state not in ("C", "D") or not closed or offered_a < self.start_min_a:
            return 0.0
        return offered_a

    def watch(self, duty):
        """The pilot as the car sees it at each sample: a sleeping car woken closes S2."""
        if self.clock is not None and self._sleep.see(
            self.clock(), duty, self.asleep and self.state == "B"
        ):
            self.asleep = False
            self.state = "C"


    def see(self, duty_pm):
        """The pilot as the car sees it at each sample: counts interruptions."""
        if self._pwm and duty_pm <= 0 and self.state in ("C", "D"):
            self.interruptions += 1
            n = self.gives_up_after
            if n and self.interruptions >= n:
                self.state = "B"
                self.gave_up = True
        self._pwm = duty_pm > 0


# The wake-up sequence a sleeping car answers (IEC 61851-1:2017 A.5.3, STANDARDS.md
# §1.4: F 4 s, X1 0.75 s, then the PWM), with some tolerance on each part.
WAKE_F_MS = 3500
WAKE_X1_MS = 500


def Sleeper(close_ms=1000):
    """The pilot as a car asleep in B follows it (boards/unix_sim/sim_wake.py), in ms.
    close_ms: how long after the PWM came back the woken car closes S2."""
    return sim_wake.Sleeper(WAKE_F_MS, WAKE_X1_MS, close_ms)


class Relays:
    def __init__(self):
        self.closed = False
        self.weld = 0  # relay number whose contact stays closed
        self.stuck = 0

    def close(self):
        self.closed = True

    def open(self):
        self.closed = False

    def feedback(self, n):
        if self.weld == n:
            return True
        if self.stuck == n:
            return False
        return self.closed


class Lock:
    fitted = True

    def __init__(self):
        self.engaged = False
        self.broken = False  # the pin does not go in (or falls out)
        self.stuck = False  # the pin does not come out: reads engaged after a release

    def engage(self):
        self.engaged = True

    def release(self):
        self.engaged = False

    def feedback(self):
        return (self.engaged or self.stuck) and not self.broken


class Irq:
    """The board's interrupts: disable()/enable(state) as machine.disable_irq and
    enable_irq; an interrupt raised while they are disabled runs once they are enabled."""

    def __init__(self):
        self.off = False
        self.pending = []

    def disable(self):
        st = self.off
        self.off = True
        return st

    def enable(self, st):
        self.off = st
        while not self.off and self.pending:
            self.pending.pop(0)()

    def raise_(self, fn):
        if self.off:
            self.pending.append(fn)
        else:
            fn()


class Rcd:
    def __init__(self, relays, irq=None):
        self._relays = relays
        self._irq = irq
        self._cb = None
        self.line = False
        self.testing = False
        self.dead = False  # does not react to the test input

    def set_handler(self, cb):
        self._cb = cb

    def tripped(self):
        return self.line or (self.testing and not self.dead)

    def test(self, on):
        self.testing = on

    def fire(self):
        """The fault line rises: its interrupt (held while interrupts are disabled)."""
        self.line = True
        if self._irq is None:
            self._isr()
        else:
            self._irq.raise_(self._isr)

    def _isr(self):
        self._relays.open()
        if self._cb:
            self._cb()


class Pe:
    def __init__(self):
        self.continuity = True
        self.n_pe_v = 0.0

    def read(self):
        pass


class Meter:
    def __init__(self):
        self.volts = [230.0, 230.0, 230.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 50.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True
        self.fail = False

    def read(self):
        if self.fail:
            raise OSError(5)


class Temps:
    relay_c = 25.0
    socket_c = 25.0
    env_c = 25.0

    def read(self):
        pass


class Fan:
    running = False
    blocked = False

    def run(self, on):
        self.running = on

    def rpm(self):
        return 2400 if self.running and not self.blocked else 0


class Rtc:
    t = 1_790_000_000

    def now(self):
        return self.t


class Pp:
    ohm = 220

    def read_ohm(self):
        return self.ohm


class Nothing:
    def __getattr__(self, name):
        return lambda *a, **k: None


class Hw:
    def __init__(self):
        self.name = "fake"
        self.serial = "TEST0001"
        self.ev = Ev()
        self.cp = Cp()
        self.cp_adc = CpAdc(self.cp, self.ev)
        self.pp_adc = Pp()
        self.relays = Relays()
        self.lock = Lock()
        self.irq = Irq()
        self.disable_irq = self.irq.disable  # bound once, as a board binds machine's
        self.enable_irq = self.irq.enable
        self.rcd = Rcd(self.relays, self.irq)
        self.pe = Pe()
        self.meter = Meter()
        self.temps = Temps()
        self.fan = Fan()
        self.rtc = Rtc()
        self.errors = []

    def report_error(self, code, active):
        self.errors.append((code, active))


class Car:
    """A vehicle that draws what the pilot offers, in C or D through closed relays (a
    test sets `hw.meter.amps` itself otherwise). follow_ms: how long it takes to follow
    a lower offer, a stop (X1) included: it goes on drawing the old current that long;
    a higher offer it follows at once."""

    def __init__(self, hw, follow_ms=500, max_a=32.0, phases=3):
        self.hw = hw
        self.follow_ms = follow_ms
        self.max_a = max_a
        self.phases = phases
        self.a = 0.0  # what it draws while it can
        self._lower_ms = None  # a lower offer seen since

    def step(self, now_ms):
        from evse import pilot

        hw = self.hw
        offer = min(pilot.amps_of(hw.cp.duty_pm), self.max_a)
        if offer >= self.a:
            self.a = offer
            self._lower_ms = None
        elif self._lower_ms is None:
            self._lower_ms = now_ms
        elif now_ms - self._lower_ms >= self.follow_ms:
            self.a = offer
            self._lower_ms = None
        on = hw.ev.state in ("C", "D") and hw.relays.feedback(1) and hw.relays.feedback(2)
        a = self.a if on else 0.0
        hw.meter.amps = [a if i < self.phases else 0.0 for i in range(3)]


class FakeSettings(dict):
    def __init__(self, **kw):
        from evse.settings import defaults

        super().__init__(defaults())
        self.update(kw)

    def apply(self, changes):  # evse.settings.Settings.apply, without validation
        self.update(changes)
        return {}


def pe_latched(pe, power_system, ms=2000):
    """Whether the protection latches ERR PE within `ms` with the earth monitor `pe` (a
    board's), the rest of the board fake."""
    from evse import faults
    from evse.charger import Charger
    from evse.protection import Protection

    hw = Hw()
    hw.pe = pe
    settings = FakeSettings(power_system=power_system)
    ch = Charger(hw, settings)
    prot = Protection(ch, hw, settings, None, "/tmp")
    prot._save_latches = lambda: None
    for t in range(0, ms + 100, 100):
        prot.tick(1000 + t)
    return bool(ch.latched & faults.PE)


class IdleCharger:
    """The charger as the HMI and metering see it: stand-by, no fault."""

    active = 0
    latched = 0
    session = None
    connected = False
    auth_pending = None

    def ocpp_status(self):
        return "Available"


class IdleMeter:
    """Mains readings of an idle charger."""

    volts = [230.0, 230.0, 230.0]
    amps = [0.0, 0.0, 0.0]
    hz = 50.0


class HmiOut:
    """A display, belt, tap light or buzzer of the HMI tests: the last value set, and every
    text shown."""

    def __init__(self):
        self.v = None
        self.shown = []

    def show(self, text):
        self.v = text
        self.shown.append(text)

    def set(self, *a):
        self.v = a

    def beep(self, ms):
        self.v = ms


class HmiHw:
    """What evse/hmi.py drives of a board: recorded outputs, and the given WiFi, button,
    LEDs and a clock that stands at now_s."""

    def __init__(self, wlan, button, leds, now_s=0):
        self.display = HmiOut()
        self.belt = HmiOut()
        self.tap_light = HmiOut()
        self.buzzer = HmiOut()
        self.leds = leds
        self.wlan = wlan
        self.button = button
        self.rtc = Rtc()
        self.rtc.t = now_s
