# Temperature sensors and the cooling fan of the EV PLUS boards (docs/hal.md `temps`,
# `fan`). Port-neutral: the board passes ADC readers and the fan's PWM and counter.
import math
import time

from micropython import const

_T0_K10 = const(29815)  # 25.00 degC in 0.01 K
# A tachometer window longer than this starts anew: the fan was off or not watched, its
# pulse counter may have wrapped (16 bits on the ESP32's PCNT), and after days the start
# would read as negative once the ticks wrap (2**29 ms on a 32-bit port).
_WINDOW_MAX_MS = const(10000)
_KELVIN = 273.15


def ntc_c(r_ohm, r0_ohm=10000, beta=3950):
    """NTC temperature (degC) from its resistance, Beta formula: 1/T = 1/T0 + ln(R/R0)/B."""
    inv_t = 100.0 / _T0_K10 + math.log(r_ohm / r0_ohm) / beta
    return 1.0 / inv_t - _KELVIN


class Temps:
    """Three NTC 10k B3950 on ADC inputs, each with a pull-up `r_pu_ohm` to vref.
    `read_mv` is a tuple of three callables (relay, socket, environment). A reading at
    or above `open_mv` is an open sensor, at or below `short_mv` a shorted one (None):
    the board sets them inside what its ADC can read (an ADC that tops out below vref
    never reaches vref - 20 mV with the sensor open)."""

    def __init__(self, read_mv, vref_mv=3300, r_pu_ohm=10000, beta=3950, open_mv=None,
                 short_mv=20):
        self._read = read_mv
        self._vref = vref_mv
        self._r_pu = r_pu_ohm
        self._beta = beta
        self._open = vref_mv - 20 if open_mv is None else open_mv
        self._short = short_mv
        self.relay_c = self.socket_c = self.env_c = None

    def _one(self, fn):
        mv = fn()
        if mv <= self._short or mv >= self._open:
            return None  # shorted or open sensor
        r = self._r_pu * mv / (self._vref - mv)
        return round(ntc_c(r, 10000, self._beta), 1)

    def read(self):
        r = self._read
        self.relay_c = self._one(r[0])
        self.socket_c = self._one(r[1])
        self.env_c = self._one(r[2])


class Fan:
    """Fan on a PWM channel (`set_pct(0..100)`) and a tachometer `count()` (pulses since
    the last call, 2 per revolution)."""

    def __init__(self, set_pct, count, ticks_ms=time.ticks_ms, pulses_per_rev=2):
        self._set = set_pct
        self._count = count
        self._ticks = ticks_ms
        self._ppr = pulses_per_rev
        self._t = ticks_ms()
        self._rpm = 0
        self.running = False
        set_pct(0)

    def run(self, on):
        self.running = bool(on)
        self._set(100 if on else 0)

    def rpm(self):
        now = self._ticks()
        dt = time.ticks_diff(now, self._t)
        if not 0 <= dt <= _WINDOW_MAX_MS:
            self._count()  # the pulses of that stretch are not this window's
            self._t = now
            self._rpm = 0  # unknown until the new window is long enough
        elif dt >= 250:  # short windows are noise: keep the last figure
            self._rpm = self._count() * 60000 // (dt * self._ppr)
            self._t = now
        return self._rpm
