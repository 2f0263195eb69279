# IEC 61851-1 control pilot: current <-> duty cycle, and classification of the sampled
# plateaus into states A-F, the zero calibration of that measurement. Pure functions and
# small state holders; no hardware.
from micropython import const

STATE_A = const(0)  # 12 V: no vehicle
STATE_B = const(1)  # 9 V: vehicle connected, not requesting
STATE_C = const(2)  # 6 V: vehicle requests energy
STATE_D = const(3)  # 3 V: requests energy, ventilation needed
STATE_E = const(4)  # 0 V: CP shorted to PE / EVSE unpowered
STATE_F = const(5)  # -12 V: EVSE not available (we drive it)
INVALID = const(6)  # out of range, or diode missing
NAMES = "ABCDEF?"

# STANDARDS.md §1.3. Duty in per-mille; < 6 A is never signalled (pause with x1 instead).
MIN_A = 6.0


def duty_pm(amps):
    """Per-mille duty for a current offer (6-80 A), rounded down to 0.1 %.

    6-51 A: duty = I / 0.6; 51-52.5 A is undefined in the table and clamps to 51 A;
    52.5-80 A: duty = I / 2.5 + 64.
    """
    if amps < MIN_A:
        raise ValueError("below 6 A: pause with a static pilot instead")
    if amps > 80:
        amps = 80.0
    if amps <= 51:
        return int(amps * 1000 / 60 + 1e-6)
    if amps < 52.5:
        return 850
    return int(amps * 4 + 640 + 1e-6)


def amps_of(duty):
    """Current an EV may draw for a per-mille duty (the EV side of the same table)."""
    if duty < 80 or duty > 970:
        return 0.0
    if duty < 100:
        return 6.0  # 8-10 % means 6 A to the EV
    if duty <= 850:
        return duty * 0.06
    if duty <= 960:
        return (duty / 10 - 64) * 2.5
    return 80.0


# Nominal plateau in mV of each state, behind R1 = 1 kOhm, before the diode drop.
# The positive plateau the EVSE measures is Vd + (12 V - Vd) * R / (R + 1 kOhm): the
# `cp_type` setting gives the diode drop Vd that the EV side is built with (0.8 V or
# 1.0 V), and the level of B, C and D moves with it.
#
# Each plateau is classified by the midpoints between neighbouring levels (A 12, B 9,
# C 6, D 3, E 0, F -12 V; STANDARDS.md section 1.2), as OpenEVSE does: the +-1 V windows of
# the standard left gaps that a +-0.6 V generator and an ADC zero error reach, and a
# level in a gap is no fault of the vehicle. Only what no pilot can read is out of range:
# beyond +-14 V, 12 V plus the generator's 0.6 V, a 0.6 V zero error and margin
# (docs/errors.md, "Control pilot levels").
_R_B = 2740
_R_C = 882  # 2.74 kOhm // 1.3 kOhm
_R_D = 246  # 2.74 kOhm // 270 Ohm
_A_MV = const(12000)
_EF_MV = const(-6000)  # midpoint of E (0 V) and F (-12 V)
_RANGE_MV = const(14000)
# The vehicle's diode: with it the negative plateau is -12 V; without it the line
# follows the generator through the EV's resistance, -8.8 V in B (2.74 kOhm), less in
# C and D. Flag it at the midpoint, -10.4 V: 1.6 V of margin each side.
DIODE_MAX_MV = const(-10400)

# Zero calibration from the +12 V plateau (static +12 V, nothing plugged): the line is
# at the generator's level then, so its reading minus 12 V is the measurement's offset.
# The generator's +-0.6 V and the ADC zero's +-0.6 V make at most 1.2 V; more is a
# broken measurement, whose estimate is refused (docs/errors.md).
CAL_MAX_MV = const(1200)
CAL_SAMPLES = const(50)  # one estimate per 0.5 s of samples, averaged


def _level(r, vd_mv):
    return vd_mv + (12000 - vd_mv) * r // (r + 1000)


class Classifier:
    """Maps (hi_mv, lo_mv) to a state for one cp_type, by the midpoints between the
    nominal levels (docs/errors.md, "Control pilot levels")."""

    def __init__(self, diode_mv=1000):
        self.set_diode(diode_mv)

    def set_diode(self, diode_mv):
        self.b_mv = _level(_R_B, diode_mv)
        self.c_mv = _level(_R_C, diode_mv)
        self.d_mv = _level(_R_D, diode_mv)
        # A level at a midpoint goes to the higher state.
        self.ab_mv = (_A_MV + self.b_mv) // 2
        self.bc_mv = (self.b_mv + self.c_mv) // 2
        self.cd_mv = (self.c_mv + self.d_mv) // 2
        self.de_mv = self.d_mv // 2
        self.diode_ok = True

    def classify(self, hi_mv, lo_mv, pwm_on):
        """State of one sample. With the PWM running and a vehicle present the negative
        plateau must be near -12 V; otherwise the diode is missing (INVALID, flagged).
        Written so that NaN fails every comparison and lands on INVALID."""
        self.diode_ok = True
        hi = hi_mv
        if hi >= self.ab_mv:
            return STATE_A if hi <= _RANGE_MV else INVALID
        if hi >= self.bc_mv:
            s = STATE_B
        elif hi >= self.cd_mv:
            s = STATE_C
        elif hi >= self.de_mv:
            s = STATE_D
        elif hi > _EF_MV:
            return STATE_E
        elif hi >= -_RANGE_MV:
            return STATE_F
        else:
            return INVALID  # below -14 V, or not a number
        if not pwm_on:
            return s
        lo = lo_mv
        if -_RANGE_MV <= lo <= DIODE_MAX_MV:
            return s
        if DIODE_MAX_MV < lo <= _RANGE_MV:
            self.diode_ok = False
        return INVALID


class ZeroCal:
    """A check of the measurement from the +12 V plateau: `feed` the positive plateau of
    samples taken with the generator at static +12 V and nothing plugged. Every
    CAL_SAMPLES samples it makes an estimate of the offset (the generator's error plus
    the ADC's zero); one within +-CAL_MAX_MV is `zero_mv` (reported), one outside is a
    broken measurement (`error` set: CP CAL ERROR; `zero_mv` back to 0)."""

    def __init__(self):
        self.zero_mv = 0
        self.error = False
        self.done = False  # an estimate was accepted since boot
        self.last_mv = None  # the last estimate, accepted or not
        self._sum = 0
        self._n = 0

    def restart(self):
        """Drops a partial estimate (the line left +12 V or a vehicle came)."""
        self._sum = 0
        self._n = 0

    def feed(self, hi_mv):
        """True when this sample completed an estimate."""
        if not -_RANGE_MV <= hi_mv <= _RANGE_MV:  # also NaN
            self.restart()
            return False
        self._sum += int(hi_mv) - _A_MV
        self._n += 1
        if self._n < CAL_SAMPLES:
            return False
        est = self._sum // self._n
        self.restart()
        self.last_mv = est
        if -CAL_MAX_MV <= est <= CAL_MAX_MV:
            self.zero_mv = est
            self.error = False
            self.done = True
        else:
            self.zero_mv = 0
            self.error = True
        return True


class Debouncer:
    """Accepts a new state after it held for `need` consecutive samples.

    Leaving C/D (the vehicle opened S2 or unplugged) needs fewer samples than entering:
    the relays must open within 100 ms (IEC 61851-1 Annex A, seq. 8.1). Samples outside
    C and D count towards leaving them even when they differ; the last one is taken."""

    def __init__(self, need=5, need_leave=2):
        self.state = STATE_A
        self._cand = STATE_A
        self._count = 0
        self._need = need
        self._need_leave = need_leave

    def feed(self, s):
        """Returns True when the accepted state changed."""
        if s == self.state:
            self._count = 0
            return False
        energy = (STATE_C, STATE_D)
        leaving = self.state in energy
        if s != self._cand:
            # Leaving C/D, every sample outside C and D counts: a pilot that alternates
            # between two such levels (a contact bouncing at unplug) has left C too.
            if not (leaving and s not in energy and self._cand not in energy):
                self._count = 0
            self._cand = s
        self._count += 1
        need = self._need_leave if leaving else self._need
        if self._count >= need:
            self.state = s
            self._count = 0
            return True
        return False
