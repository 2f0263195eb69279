# What the RCD and timer interrupts share with the main context (docs/hal.md, "What the
# interrupts share"): each test fires the interrupt between every two steps of a main-
# context operation (a pin write, a read or write of a shared attribute) and checks that
# the trip is neither lost nor undone. The fakes hold an interrupt raised while
# interrupts are disabled until they are enabled again, as the MCU does.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import boardload  # noqa: E402
from check import eq, true  # noqa: E402
from evse import faults  # noqa: E402

_ENV = {"EVSE_DATA_DIR": "/tmp/evplus_irq_test", "EVSE_SERIAL": "EVPLUS-00099"}


# ---- the board layer ---------------------------------------------------------------------------
class _Trigger:
    """Fires `irq` (a function of no argument) at the k-th step it is asked about."""

    def __init__(self, k, irq):
        self.k = k
        self.n = 0
        self.irq = irq
        self.fired = False

    def step(self):
        n = self.n
        self.n += 1
        if n == self.k and not self.fired:
            self.fired = True
            self.irq()


def _on_write(obj, name, trig):
    """obj.name(...) asks trig first: the interrupt lands just before that write."""
    write = getattr(obj, name)

    def hooked(*a):
        if a:
            trig.step()
        return write(*a)

    setattr(obj, name, hooked)


def _rcd_irq(ld, hw):
    import pins

    p = ld.machine.pins[pins.RCD_FAULT]
    return lambda: p.fire()


def test_relays_close_never_undoes_an_rcd_trip():
    """Relays.close() drives two coils and sets `closed`: an RCD trip between any two of
    those steps must leave both coils off and `closed` False."""
    for name in ("esp32_evplus", "stm32_evplus", "stm32h7_evplus"):
        for k in range(3):
            ld, hw = boardload.make(name, _ENV)
            try:
                import pins

                r1 = ld.machine.pins[pins.RELAY1]
                r2 = ld.machine.pins[pins.RELAY2]
                trig = _Trigger(k, _rcd_irq(ld, hw))
                _on_write(r1, "value", trig)
                _on_write(r2, "value", trig)
                hw.relays.close()
                if not trig.fired:
                    _rcd_irq(ld, hw)()  # after the last write
                eq((r1.level, r2.level, hw.relays.closed), (0, 0, False),
                   "%s: trip at step %d" % (name, k))
            finally:
                ld.__exit__()


def _cp_writes(ld, hw, name):
    """The hardware writes of the pilot and a reader of what the hardware outputs now."""
    if name == "esp32_evplus":
        pwm = hw._cp_out._pwm
        return [(pwm, "duty_u16")], lambda: pwm.duty
    tim = ld.pyb.timers[1]
    ch, smp = tim.channels[1], tim.channels[2]
    return [(ch, "pulse_width"), (smp, "compare")], lambda: (ch.pw, smp.cmp)


def test_a_trip_during_a_pilot_write_leaves_state_f_in_the_hardware():
    """The application's RCD handler drives state F (cp.low()). Landing between duty_pm
    and the hardware write of a pwm() or high() must not leave the pulse width of the
    interrupted write with duty_pm saying F."""
    for name in ("esp32_evplus", "stm32_evplus", "stm32h7_evplus"):
        for op in ("pwm", "high"):
            for k in range(3):
                ld, hw = boardload.make(name, _ENV)
                try:
                    writes, out = _cp_writes(ld, hw, name)
                    hw.cp.low()
                    f_out = out()  # what the hardware shows in state F
                    hw.cp.high()
                    hw.rcd.set_handler(hw.cp.low)
                    trig = _Trigger(k, _rcd_irq(ld, hw))
                    for obj, attr in writes:
                        _on_write(obj, attr, trig)
                    if op == "pwm":
                        hw.cp.pwm(266)
                    else:
                        hw.cp.high()
                    if not trig.fired:
                        _rcd_irq(ld, hw)()
                    eq((hw.cp.duty_pm, out()), (-2, f_out), "%s %s: trip at step %d" % (name, op, k))
                finally:
                    ld.__exit__()


class _Raw:
    """The STM32 plateau pair; the first read lets `on_read` (the next period's timer
    interrupts) run before it returns."""

    def __init__(self, hi, lo, on_read):
        self.v = [hi, lo]
        self.on_read = on_read

    def __getitem__(self, i):
        v = self.v[i]
        f = self.on_read
        if f is not None:
            self.on_read = None
            f()
        return v

    def __setitem__(self, i, x):
        self.v[i] = x


def test_stm32_cp_sample_takes_both_plateaus_of_one_period():
    for name in ("stm32_evplus", "stm32h7_evplus"):
        _cp_sample_takes_both_plateaus_of_one_period(name)


def _cp_sample_takes_both_plateaus_of_one_period(name):
    ld, hw = boardload.make(name, _ENV)
    try:
        tim = ld.pyb.timers[1]
        adc = hw._cp_adc_dev

        def next_period(_arg):  # a vehicle in B: +9 V high, -12 V low
            adc.raw = 3310
            tim.cb(tim)
            adc.raw = 310
            tim.channels[2].cb(tim)

        def plateaus(hi, lo, on_read=None):
            hw.cp_adc._raw = raw = _Raw(hi, lo, on_read)
            hw.cp_adc.sample()
            return raw, (hw.cp_adc.hi_mv, hw.cp_adc.lo_mv)

        first = plateaus(3660, 1700)[1]  # +12 V high, a low of -2 V: no vehicle's
        second = plateaus(3310, 310)[1]
        got = plateaus(3660, 1700, lambda: ld.machine.interrupt(next_period, None))[1]
        eq(got, first, "the plateaus of one period, not one of each")
        hw.cp_adc.sample()
        eq((hw.cp_adc.hi_mv, hw.cp_adc.lo_mv), second, "then the next period's")
    finally:
        ld.__exit__()


# ---- the charger -------------------------------------------------------------------------------
_SHARED = ("active", "tripped_new", "_f_hold")


def _race_rig(**kw):
    """A test_charger Rig whose charger fires the RCD interrupt at the k-th read or write
    of a fault-bit attribute it shares with the interrupt (`arm(k)`)."""
    from test_charger import Rig
    from evse.charger import Charger

    class RaceCharger(Charger):
        _at = -1
        _n = 0

        def arm(self, k):
            self._at = k
            self._n = 0

        def _step(self):
            if self._at < 0:
                return
            if self._n == self._at:
                self._at = -1
                self.hw.rcd.fire()
            self._n += 1

    def shared(name):
        key = "_s" + name

        def get(self):
            v = getattr(self, key)  # the value read, then the interrupt may land
            self._step()
            return v

        def put(self, v):
            self._step()
            setattr(self, key, v)

        return property(get, put)

    for name in _SHARED:
        setattr(RaceCharger, name, shared(name))

    import evse.charger

    real = evse.charger.Charger
    import test_charger

    test_charger.Charger = RaceCharger
    try:
        r = Rig(**kw)
    finally:
        test_charger.Charger = real
    return r


def _steps(r, op):
    """Runs op() with the interrupt at step 0, 1, ... until it no longer lands inside."""
    k = 0
    while True:
        r2 = op(k)
        if r2 is None:
            return k
        k += 1
        true(k < 500, "runaway")


def test_a_trip_in_the_main_context_keeps_an_rcd_trip_landing_inside_it():
    def op(k):
        r = _race_rig()
        r.charge()
        r.ch.arm(k)
        r.ch.trip(faults.OCP)
        if r.ch._at >= 0:
            return None  # the interrupt did not land inside
        eq(r.ch.active & (faults.OCP | faults.IRD), faults.OCP | faults.IRD, "step %d: both" % k)
        eq(r.ch.tripped_new & faults.IRD, faults.IRD, "step %d: IRD to record" % k)
        eq((r.hw.cp.duty_pm, r.hw.relays.closed), (-2, False), "step %d: F, open" % k)
        return r

    true(_steps(None, op) > 3, "the interrupt landed between the steps")


def test_an_rcd_trip_during_the_protection_tick_always_latches():
    """Protection takes the new trips and records them: an RCD trip between its read and
    its reset of them must still latch IRD."""

    def op(k):
        r = _race_rig()
        r.charge()
        r.hw.meter.volts = [270.0, 230.0, 230.0]  # an over-voltage to record meanwhile
        r.run(3100)
        true(r.ch.active & faults.OVP, "OVP")
        r.ch.trip(faults.CP)  # a new trip waiting to be recorded
        r.ch.arm(k)
        r.prot.tick(r.clock.ms)
        if r.ch._at >= 0:
            return None
        r.run(200)
        true(r.ch.latched & faults.IRD, "step %d: IRD latched" % k)
        return r

    true(_steps(None, op) > 3, "the interrupt landed between the steps")


def test_an_rcd_trip_during_a_clear_stays():
    def op(k):
        r = _race_rig()
        r.ch.trip(faults.OVP)
        r.ch.arm(k)
        r.ch.clear(faults.OVP)
        if r.ch._at >= 0:
            return None
        eq(r.ch.active, faults.IRD, "step %d: IRD stays, OVP cleared" % k)
        return r

    true(_steps(None, op) > 1, "the interrupt landed between the steps")


def test_an_rcd_trip_as_the_f_hold_ends_keeps_state_f():
    """A lasting fault's F hold ends (X1): an RCD trip landing there starts its own
    state F, which the X1 of the older fault must not replace."""

    def op(k):
        r = _race_rig()
        r.hw.temps.relay_c = 95.0
        r.run(200)
        true(r.ch.active & faults.ROT, "ROT")
        r.run(800)
        eq(r.hw.cp.duty_pm, -2, "held")
        r.clock.ms += 300  # the hold is over at this control tick
        r.ch.arm(k)
        r.ch.tick_control(r.clock.ms)
        if r.ch._at >= 0:
            return None
        eq(r.hw.cp.duty_pm, -2, "step %d: state F of the RCD trip" % k)
        r.run(500)
        eq(r.hw.cp.duty_pm, -2, "step %d: held" % k)
        return r

    true(_steps(None, op) > 1, "the interrupt landed between the steps")


def _before(obj, name, fn):
    """obj.name() calls fn() first, once: an interrupt just before that write."""
    write = getattr(obj, name)

    def hooked(*a):
        setattr(obj, name, write)
        fn()
        return write(*a)

    setattr(obj, name, hooked)


def test_an_rcd_trip_just_before_the_coils_close_keeps_them_open():
    r = _race_rig()
    r.plug("B")
    eq(r.ch.start_session("X", "RFID"), None)
    r.run(1000)
    r.hw.ev.state = "C"
    _before(r.hw.relays, "close", r.hw.rcd.fire)
    for _ in range(50):
        r.clock.ms += 10
        r.ch.tick_pilot()
        r.ch.tick_control(r.clock.ms)
        true(not r.hw.relays.closed, "never closed into the trip")
        if r.ch.active:
            break
    true(r.ch.active & faults.IRD, "tripped")


def test_an_rcd_trip_during_a_return_to_x1_keeps_state_f():
    """A technician clears a latched trip while its F is still held (X1 at the next
    tick), and the supervisor's safe state drives X1: an RCD trip just before either
    write keeps its state F."""
    r = _race_rig()
    r.hw.pe.continuity = False
    r.run(300)
    true(r.ch.latched & faults.PE, "PE latched")
    r.hw.pe.continuity = True
    eq(r.prot.technician_clear(), ["PE"], "cleared during the F hold")
    _before(r.hw.cp, "high", r.hw.rcd.fire)
    r.ch.tick_control(r.clock.ms)
    eq(r.hw.cp.duty_pm, -2, "the RCD trip's state F")

    r = _race_rig()
    r.charge()
    _before(r.hw.cp, "high", r.hw.rcd.fire)
    r.ch.emergency_stop()
    eq((r.hw.cp.duty_pm, r.hw.relays.closed), (-2, False), "safe state: the trip's F")


def test_an_rcd_trip_just_before_a_raise_of_the_offer_leaves_no_offer_after_state_f():
    """The RCD interrupt lands as the control tick writes a raise of the offer to the
    PWM: the fault is checked again with interrupts off right before the write, so no
    offer ever follows the trip's state F (it would be a raise 0 ms after a stop)."""
    r = _race_rig()
    r.charge()
    r.ch.set_external_limit("ocpp", 10.0)
    r.run(6000)
    # Raised once the limit has stayed 1 A above the offer for 5 s (docs/errors.md,
    # "Current limits"): the hook is in place before that.
    r.ch.set_external_limit("ocpp", 20.0)
    r.run(4500)
    eq(r.ch.offered_a, 10.0, "not raised yet")
    cp = r.hw.cp
    seen = []
    for name in ("pwm", "high", "low"):
        def log(*a, _w=getattr(cp, name), _n=name):
            seen.append(_n)
            return _w(*a)

        setattr(cp, name, log)
    _before(cp, "pwm", r.hw.rcd.fire)
    for _ in range(200):
        r.run(10)
        if r.ch.active:
            break
    true(r.ch.active & faults.IRD, "tripped")
    true("low" in seen, "state F driven")
    eq(seen[seen.index("low"):].count("pwm"), 0, "no offer after state F (%r)" % seen)
    eq((r.hw.cp.duty_pm, r.hw.relays.closed), (-2, False), "the trip's F, relays open")
