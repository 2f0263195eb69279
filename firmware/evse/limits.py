# Composition of every current limit into the one the pilot may offer.
#
# effective = min(configured max, model, cable, thermal derating, every named external
# limit such as the OCPP charging profile, power management and load balancing).
# Below 6 A the charge pauses (SuspendedEVSE): the result is then 0 and the binding
# limit still names who asked for less than 6 A.

import math
import time

from evse.pilot import MIN_A  # IEC 61851-1: the least a PWM offers (one source)
MODEL_A = 32  # both models: 32 A per phase (7.4 kW single-phase, 22 kW three-phase)

# Thermal derating (°C): full current up to `start`, linearly down to 6 A at the trip
# temperature, where protection.py opens the relays (ROT / OCT).
RELAY_DERATE_C = (70.0, 85.0)
SOCKET_DERATE_C = (60.0, 75.0)


def thermal_limit(max_a, relay_c, socket_c):
    """Current allowed by the temperatures, or None when no derating applies."""
    limit = None
    for temp, (start, trip) in ((relay_c, RELAY_DERATE_C), (socket_c, SOCKET_DERATE_C)):
        if temp is None or temp <= start:
            continue
        frac = (trip - temp) / (trip - start)
        a = MIN_A + (max_a - MIN_A) * frac if frac > 0 else 0.0
        a = int(a * 10) / 10  # 0.1 A steps, rounded down
        if limit is None or a < limit:
            limit = a
    return limit


def supply_a(settings):
    """The supply's limit per phase at the grid connection: max_house_current_a, or
    where that is not set (0) Max Current, as the manual sets power management up (its
    chapter 10, step 4: Max Current = the contract's maximum). A value that is no
    number counts as 0 A: nothing is offered."""
    house = settings["max_house_current_a"]
    return finite_or_0(house if house else settings["max_current_a"])


# Offers are whole multiples of STEP_A, rounded down: a limit that moves by a tenth (a
# meter reading, a derating) does not move the duty, and every offer is one a car reads
# the same (many follow in whole or half amps). 0.5 A is also the unit of the CAN load
# balancing's allocations, which are thus offered exactly.
STEP_A = 0.5


def offer_of(limit_a):
    """The offer for a limit: rounded down to STEP_A, 0.0 below 6 A (a pause)."""
    if limit_a < MIN_A:
        return 0.0
    return int(limit_a / STEP_A + 1e-6) * STEP_A


def start_a(settings):
    """The least current that starts the car (`min_start_a`, some need 8 A), never below
    MIN_A: a pause of power management, solar or the tariff ends only with this much."""
    return max(MIN_A, float(settings.get("min_start_a") or MIN_A))


def held(now_ms, since_ms, hold_ms):
    """A condition seen since since_ms (None: not seen) has lasted hold_ms by now_ms."""
    return since_ms is not None and time.ticks_diff(now_ms, since_ms) >= hold_ms


def floor_tenth(a):
    """Rounded down to 0.1 A: never offer more than computed."""
    return (a * 10 + 1e-6) // 1 / 10


def finite_or_0(value):
    """value as a float when it is a finite number, else 0.0 (a pause)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    v = float(value)
    return v if math.isfinite(v) else 0.0


def compose(configured_a, model_a, cable_a, thermal_a, external):
    """Returns (amps, binding) where binding names the smallest limit.

    `external` maps a name ("ocpp", "power", "balance", …) to amps or None (no limit).
    Inputs that are None do not limit. Any other input that is not a finite number
    (NaN, inf, text) counts as 0 (pause) and binds: NaN compares false with everything,
    so it would otherwise lift the limit it stands for. amps is 0.0 when the smallest
    limit is below 6 A (pause), never below 6 otherwise, and never above any input.
    """
    amps = finite_or_0(configured_a)
    binding = "max_current"
    for name, value in (("model", model_a), ("cable", cable_a), ("thermal", thermal_a)):
        if value is not None:
            value = finite_or_0(value)
            if value < amps:
                amps = value
                binding = name
    for name in sorted(external):
        value = external[name]
        if value is not None:
            value = finite_or_0(value)
            if value < amps:
                amps = value
                binding = name
    if amps < MIN_A:
        return 0.0, binding
    return int(amps * 10 + 1e-6) / 10, binding


# PP resistor windows (IEC 62196 via STANDARDS.md §2): (low ohm, high ohm, rating A).
PP_WINDOWS = ((75, 150, 63), (150, 330, 32), (330, 1000, 20), (1000, 2200, 13))


def cable_rating(pp_ohm):
    """Cable ampacity from the PP resistor, or None when no valid cable is detected."""
    if pp_ohm is None or pp_ohm < 75:
        return None
    for lo, hi, amps in PP_WINDOWS:
        if lo <= pp_ohm < hi:
            return amps
    return None
