# The CP plateaus from a burst of ADC reads, for a board whose timers cannot sample the
# pilot phase-locked (ESP32: timer callbacks are soft, scheduled).
import array

import evplus_power as power


class BurstCpAdc:
    """CP plateaus from a burst of reads longer than one PWM period (min = low plateau,
    max = high plateau). Not phase-locked: at duty below ~5 % the high plateau may be
    missed by a burst; the pilot task samples every 10 ms and the state machine
    debounces, so one short burst never decides a state. ISR-safe.

    adc: read_uv() in microvolts; burst: reads per sample(), spanning more than one 1 kHz
    period at the port's read time; zero_mv and gain_x1000: the CP divider (pins.py)."""

    def __init__(self, adc, burst, zero_mv, gain_x1000):
        self.adc = adc
        self._read_uv = adc.read_uv  # bound once: sample() must not allocate
        self._buf = array.array("i", [0] * burst)
        self._zero = zero_mv
        self._gain = gain_x1000
        self.hi_mv = 0
        self.lo_mv = 0

    def sample(self):
        b = self._buf
        rd = self._read_uv
        for i in range(len(b)):
            b[i] = rd()
        self.hi_mv = power.cp_mv(max(b) // 1000, self._zero, self._gain)
        self.lo_mv = power.cp_mv(min(b) // 1000, self._zero, self._gain)
