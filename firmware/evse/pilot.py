# IEC 61851-1 control pilot: current <-> duty cycle, and classification of the sampled
# plateaus into states A-F. Pure functions and one small debouncer; no hardware.
from micropython import const

STATE_A = const(0)  # 12 V: no vehicle
STATE_B = const(1)  # 9 V: vehicle connected, not requesting
STATE_C = const(2)  # 6 V: vehicle requests energy
STATE_D = const(3)  # 3 V: requests energy, ventilation needed
STATE_E = const(4)  # 0 V: CP shorted to PE / EVSE unpowered
STATE_F = const(5)  # -12 V: EVSE not available (we drive it)
INVALID = const(6)  # between windows, or diode missing
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
# 1.0 V), and the window centres move with it. Windows are +-1 V (STANDARDS.md §1.2).
_R_B = 2740
_R_C = 882  # 2.74 kOhm // 1.3 kOhm
_R_D = 246  # 2.74 kOhm // 270 Ohm
_WINDOW_MV = const(1000)
DIODE_MAX_MV = const(-11000)  # negative plateau must be at or below -11 V


def _level(r, vd_mv):
    return vd_mv + (12000 - vd_mv) * r // (r + 1000)


class Classifier:
    """Maps (hi_mv, lo_mv) to a state with the windows for one cp_type."""

    def __init__(self, diode_mv=1000):
        self.set_diode(diode_mv)

    def set_diode(self, diode_mv):
        self.b_mv = _level(_R_B, diode_mv)
        self.c_mv = _level(_R_C, diode_mv)
        self.d_mv = _level(_R_D, diode_mv)
        self.diode_ok = True

    def classify(self, hi_mv, lo_mv, pwm_on):
        """State of one sample. With the PWM running and a vehicle present the negative
        plateau must be at -12 V; otherwise the diode is missing (INVALID, flagged)."""
        self.diode_ok = True
        if hi_mv <= -10000:
            return STATE_F
        if hi_mv > 11000:
            return STATE_A
        if abs(hi_mv - self.b_mv) <= _WINDOW_MV:
            s = STATE_B
        elif abs(hi_mv - self.c_mv) <= _WINDOW_MV:
            s = STATE_C
        elif abs(hi_mv - self.d_mv) <= _WINDOW_MV:
            s = STATE_D
        elif -1000 <= hi_mv <= 1000:
            return STATE_E
        else:
            return INVALID
        if pwm_on and lo_mv > DIODE_MAX_MV:
            self.diode_ok = False
            return INVALID
        return s


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
