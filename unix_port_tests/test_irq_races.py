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
    for name in ("esp32_evplus", "stm32_evplus"):
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
    for name in ("esp32_evplus", "stm32_evplus"):
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
    ld, hw = boardload.make("stm32_evplus", _ENV)
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

