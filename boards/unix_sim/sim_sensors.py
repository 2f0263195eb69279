# Simulated sensors: what the controller's inputs read from the plant. Nothing here
# decides that a value is a fault; the firmware must notice.
import micropython
from micropython import const

from cpduty import DUTY_F, DUTY_X1

_METER_ERRNO = const(110)  # ETIMEDOUT: the meter did not answer


class CpAdc:
    """CP plateaus sampled in step with the PWM (ISR-safe: integer copies only)."""

    def __init__(self, cp, plant):
        self._cp = cp
        self._plant = plant
        self.hi_mv = 0
        self.lo_mv = 0

    def sample(self):
        d = self._cp.duty_pm
        p = self._plant
        z = p.adc_zero_mv  # the ADC's zero error: every reading is off by it
        if d == DUTY_X1 or d >= 1000:
            self.hi_mv = p.cp_pos_mv + z  # static +12 V: the "low" plateau is the same level
            self.lo_mv = p.cp_pos_mv + z
        elif d == DUTY_F or d == 0:
            self.hi_mv = p.cp_neg_mv + z
            self.lo_mv = p.cp_neg_mv + z
        else:
            self.hi_mv = p.cp_pos_mv + z
            self.lo_mv = p.cp_neg_mv + z


class PpAdc:
    def __init__(self, plant):
        self._plant = plant

    def read_ohm(self):
        r = self._plant.pp_ohms
        return -1 if r is None else int(round(r))


class Rcd:
    """RDC-DD residual-current module: one fault line, a self-test input, a trip IRQ.

    The fault line is high while an AC or DC leak fault is injected or the test input is
    driven. On its rising edge the board opens the relays, then calls the handler as an
    interrupt would: with the heap locked, so a handler that allocates is caught here
    rather than on the MCU."""

    def __init__(self, relays, plant):
        self._relays = relays
        self._plant = plant
        self._handler = None
        self._test_on = False
        self._level = False
        self.irq_count = 0
        self.handler_allocates = False  # set when the handler failed under heap_lock

    def set_handler(self, cb):
        self._handler = cb

    def tripped(self):
        return self._level

    def test(self, on):
        self._test_on = bool(on)
        self.update()

    def update(self):
        """Re-evaluates the fault line (after a fault op or a test input change)."""
        p = self._plant
        level = self._test_on or p.fault("rcd_ac") or p.fault("rcd_dc")
        rising = level and not self._level
        self._level = level
        if rising:
            self._trip()

    def _trip(self):
        self._relays.open()  # the board's own IRQ path: relays first
        self.irq_count += 1
        cb = self._handler
        if cb is None:
            return
        ok = False
        micropython.heap_lock()
        try:
            cb()
            ok = True
        except MemoryError:
            pass
        finally:
            micropython.heap_unlock()
        if not ok:
            # Not ISR-safe (or it raised): say so, and run it again unlocked so the
            # application still learns of the trip; a real error then propagates.
            self.handler_allocates = True
            print("sim: the RCD handler allocates under heap_lock: not ISR-safe")
            cb()


class PeMonitor:
    """Earth monitor. A broken PE leaves the neutral-to-PE voltage floating."""

    def __init__(self, plant):
        self._plant = plant
        self.continuity = True
        self.n_pe_v = 0.0

    def read(self):
        p = self._plant
        broken = p.fault("pe")
        self.continuity = not broken
        self.n_pe_v = p.grid_v[0] / 2 if broken else 0.0


class Meter:
    """Internal MID meter: supply-side voltages, the current through the contacts."""

    def __init__(self, plant):
        self._plant = plant
        self.volts = [0.0, 0.0, 0.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 0.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True

    def read(self):
        p = self._plant
        if p.fault("internal_meter"):
            raise OSError(_METER_ERRNO)
        self.volts = list(p.grid_v)
        self.amps = list(p.amps)
        self.hz = p.grid_hz
        self.power_w = p.power_w
        self.energy_wh = p.energy_wh
        self.rotation_ok = not p.fault("phase_rotation")


class Temps:
    def __init__(self, plant):
        self._plant = plant
        self.relay_c = None
        self.socket_c = None
        self.env_c = None

    def read(self):
        p = self._plant
        if p.fault("sensor_bug"):
            p.spend("sensor_bug")
            raise RuntimeError("temperature sensor driver bug (simulated)")
        self.relay_c = p.relay_c
        self.socket_c = p.socket_c
        self.env_c = p.env_c


class Button:
    """WiFi-mode push button; the `button` op holds it, the plant releases it."""

    def __init__(self, plant, now_us):
        self._plant = plant
        self._now_us = now_us

    def pressed(self):
        until = self._plant.button_until_us
        return until != 0 and self._now_us() < until
