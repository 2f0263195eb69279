# The power path of the EV PLUS boards (docs/hal.md): control pilot, proximity pilot,
# contactors, socket lock, RCD, earth monitor and the internal meter. Port-neutral: each
# class takes the pins, channels and buses its board built, so one file serves the ESP32
# and the STM32 board and runs against the fakes of unix_port_tests/fakes.
#
# ISR-safe methods (relays.open, cp.*, the RCD handler) store small ints and call stored
# references only: no float, no tuple, no bound-method creation.
#
# The RCD interrupt opens the relays and drives the pilot to state F (docs/hal.md, "What
# the interrupts share"): a main-context write of the same outputs runs with interrupts
# off (`disable_irq`/`enable_irq`, the port's), in straight-line code, so that a trip
# never lands between a state attribute and its pins and is never undone by them.
import array
import struct
import time

from micropython import const
from cpduty import DUTY_F, DUTY_X1

_ETIMEDOUT = const(110)


class CpGenerator:
    """1 kHz control pilot. `set_duty` is the board's (duty_pm) -> hardware writer; it
    gets 1000 for static +12 V and 0 for static -12 V (the output stage inverts nothing:
    a 100 % duty is +12 V DC, 0 % is -12 V DC). `duty_pm` and the hardware change in one
    section with interrupts off: a trip's low() between the two would leave the pulse
    width of the write it interrupted, with duty_pm saying state F."""

    def __init__(self, set_duty, disable_irq, enable_irq):
        self._set_duty = set_duty
        self._irq_off = disable_irq
        self._irq_on = enable_irq
        self.duty_pm = DUTY_X1
        set_duty(1000)  # power-on: +12 V, nothing offered (state A/x1)

    def pwm(self, duty_pm):
        if not 0 <= duty_pm <= 1000:
            raise ValueError("duty_pm 0..1000")
        d = int(duty_pm)
        st = self._irq_off()
        self.duty_pm = d
        self._set_duty(d)
        self._irq_on(st)

    def high(self):
        st = self._irq_off()
        self.duty_pm = DUTY_X1
        self._set_duty(1000)
        self._irq_on(st)

    def low(self):  # ISR-safe
        st = self._irq_off()
        self.duty_pm = DUTY_F
        self._set_duty(0)
        self._irq_on(st)


def cp_mv(adc_mv, zero_mv, gain_x1000):
    """Pilot-line millivolts from the ADC pin millivolts of the level shifter
    (pilot = (adc - zero) * gain). Integers only: used from sample()."""
    return (adc_mv - zero_mv) * gain_x1000 // 1000


class Relays:
    """Two contactors (relay 1: L1+L2, relay 2: L3+N) with auxiliary-contact inputs."""

    def __init__(self, out1, out2, fb1, fb2, disable_irq, enable_irq, fb_active=0):
        self._o1 = out1
        self._o2 = out2
        self._fb1 = fb1
        self._fb2 = fb2
        self._irq_off = disable_irq
        self._irq_on = enable_irq
        self._fb_active = fb_active
        self.closed = False
        out1.value(0)
        out2.value(0)

    def close(self):
        # Interrupts off: an RCD trip between these writes would open the relays and
        # then see one coil driven again, or `closed` disagree with the pins.
        st = self._irq_off()
        self._o1.value(1)
        self._o2.value(1)
        self.closed = True
        self._irq_on(st)

    def open(self):  # ISR-safe
        self._o1.value(0)
        self._o2.value(0)
        self.closed = False

    def feedback(self, n):
        if n != 1 and n != 2:
            raise ValueError("relay 1 or 2")
        return (self._fb1 if n == 1 else self._fb2).value() == self._fb_active


class Lock:
    """Case B socket lock: an H-bridge (two pins) and the pin-engaged switch. The motor
    is pulsed for `pulse_ms`; the board's HMI task ends the pulse (no sleep here)."""

    def __init__(self, in_a, in_b, fb, fitted=True, pulse_ms=300, ticks_ms=time.ticks_ms):
        self._a = in_a
        self._b = in_b
        self._fb = fb
        self._ticks = ticks_ms
        self.fitted = fitted
        self.pulse_ms = pulse_ms
        self.engaged = False
        self._until = None
        in_a.value(0)
        in_b.value(0)

    def engage(self):
        self.engaged = True
        self._drive(1, 0)

    def release(self):
        self.engaged = False
        self._drive(0, 1)

    def _drive(self, a, b):
        if not self.fitted:
            return
        self._a.value(a)
        self._b.value(b)
        self._until = time.ticks_add(self._ticks(), self.pulse_ms)

    def poll(self):
        """Stops the motor once the pulse is over (called by the board task)."""
        if self._until is not None and time.ticks_diff(self._ticks(), self._until) >= 0:
            self._a.value(0)
            self._b.value(0)
            self._until = None

    def feedback(self):
        return self.fitted and self._fb.value() == 1


class Rcd:
    """RDC-DD fault line. `_isr` opens the relays first, counts, then calls the
    application's handler. The board wires `_isr` (bound once here) to the pin IRQ."""

    def __init__(self, fault_pin, test_pin, relays, active=1):
        self._pin = fault_pin
        self._test = test_pin
        self._relays_open = relays.open  # bound once: the ISR must not allocate
        self._active = active
        self._handler = None
        self.trips = 0
        self.isr = self._isr
        test_pin.value(0)

    def set_handler(self, cb):
        self._handler = cb

    def _isr(self, _pin):
        self._relays_open()
        self.trips += 1
        cb = self._handler
        if cb is not None:
            cb()

    def tripped(self):
        return self._pin.value() == self._active

    def test(self, on):
        self._test.value(1 if on else 0)


class PpAdc:
    """Proximity pilot: PP-PE resistor against a pull-up `r_pu_ohm` to the ADC reference.
    `read_mv` returns the ADC pin millivolts."""

    def __init__(self, read_mv, vref_mv=3300, r_pu_ohm=1000, open_mv=3200):
        self._read_mv = read_mv
        self._vref = vref_mv
        self._r_pu = r_pu_ohm
        self._open = open_mv

    def read_ohm(self):
        mv = self._read_mv()
        if mv >= self._open:
            return -1
        return self._r_pu * mv // (self._vref - mv)


class PeMonitor:
    """Rectified N-PE voltage on an ADC (`mv_per_v` ADC mV per volt) and, when fitted, a
    PE continuity opto input (1 = continuity). Without the input `continuity` is None:
    only the application knows the supply (the N-PE voltage tells a lost PE in TN/TT,
    and nothing in IT, where it is high with a sound earth too)."""

    def __init__(self, ok_pin, read_mv, mv_per_v=33):
        self._ok = ok_pin
        self._read_mv = read_mv
        self._mv_per_v = mv_per_v
        self.continuity = None if ok_pin is None else True
        self.n_pe_v = 0.0

    def read(self):
        self.n_pe_v = self._read_mv() / self._mv_per_v
        if self._ok is not None:
            self.continuity = self._ok.value() == 1


class Meter:
    """Internal MID meter (Eastron SDM630-class, Modbus RTU slave 1 on its own UART).
    A board task polls it; read() returns the last good values or raises OSError when
    none arrived for `stale_ms`."""

    def __init__(self, modbus, ticks_ms=time.ticks_ms, stale_ms=3000):
        self._mb = modbus
        self._ticks = ticks_ms
        self._stale = stale_ms
        self._good = None
        self.volts = [0.0, 0.0, 0.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 0.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True
        self._vals = array.array("f", [0.0] * 18)

    def read(self):
        # A stale reading is forgotten, not kept to be compared again: after days without
        # an answer its time would read as recent once the ticks wrap (2**29 ms on a 32-bit
        # port), and the last values would count as a reading.
        if self._good is not None and time.ticks_diff(self._ticks(), self._good) > self._stale:
            self._good = None
        if self._good is None:
            raise OSError(_ETIMEDOUT)

    def _floats(self, data, n):
        v = self._vals
        for i in range(n):
            v[i] = struct.unpack_from(">f", data, 4 * i)[0]

    async def poll(self):
        # SDM630 input registers: 0x0000 V1-3, 0x0006 I1-3 (float32, big-endian words)
        data = await self._mb.read_input_registers(1, 0x0000, 12)
        self._floats(data, 6)
        v = self._vals
        self.volts = [v[0], v[1], v[2]]
        self.amps = [v[3], v[4], v[5]]
        data = await self._mb.read_input_registers(1, 0x0034, 2)  # total system power W
        self._floats(data, 1)
        self.power_w = v[0]
        data = await self._mb.read_input_registers(1, 0x0046, 2)  # frequency Hz
        self._floats(data, 1)
        self.hz = v[0]
        data = await self._mb.read_input_registers(1, 0x0156, 2)  # total kWh
        self._floats(data, 1)
        self.energy_wh = v[0] * 1000.0
        self._good = self._ticks()
