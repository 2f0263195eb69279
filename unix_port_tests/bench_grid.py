# A scripted day at the grid connection on the fakes of test_tariff (`make bench`,
# tools/bench_grid.py, docs/development.md): the power task, evse/tariff.py and
# evse/solar.py on simulated time, one reading a second, 86 400 of them a day.
#
#   micropython unix_port_tests/bench_grid.py [--hours 24]
#
# A three-phase car that takes up to CAR_MAX_A and follows the offer one reading later.
# Capacity tariff: test_tariff's day of house load, charging all day, once without and
# once with a 5 kW limit on the 15-minute average: the highest window average of each
# (what the meter operator bills) and the energy the car took. Solar: a sunny day with
# clouds from 6:00 (a PV curve to 20:00 peaking at PV_PEAK_W, dips of 20 s to 5 min
# to a quarter, seeded), a base load with a few appliances, charge_mode solar with the
# default delays: the energy the car took from surplus against the ideal (the surplus a
# car drawing anything from 0 to CAR_MAX_A could have taken), and the grid import the
# charging caused (what the car took beyond the surplus). Measures only. Prints one
# JSON line.
import sys
import time

_HERE = __file__.rpartition("/")[0] or "."
for _p in (_HERE, _HERE + "/../firmware", _HERE + "/../lib", _HERE + "/../boards/unix_sim"):
    if _p not in sys.path:
        sys.path.append(_p)

import log  # noqa: E402
import test_tariff as tt  # noqa: E402

CAR_MAX_A = 16.0
PV_PEAK_W = 9000.0
TARIFF_W = 5000
V3 = 3 * 230.0  # watts per amp on three phases


class Session:
    pass


class DayRig(tt.Rig):
    def offer(self):
        return min(CAR_MAX_A, tt.Rig.offer(self))


def _tariff(limit_w, seconds):
    """-> (the highest 15-minute average import, W; the car's energy, kWh)."""
    r = DayRig(limit_w=limit_w, window=15)
    r.drive(seconds, tt._day)
    return max(tt._averages(r)), r.car_ws / 3.6e6


def _clouds(seed):
    """(start s, length s) of the day's clouds: a linear congruential sequence."""
    x = seed
    out = []
    t = 7 * 3600
    while t < 19 * 3600:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        t += 600 + x % 2400
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((t, 20 + x % 280))
    return out


def _pv(t, clouds):
    s = t % 86400
    if not 6 * 3600 < s < 20 * 3600:
        return 0.0
    x = (s - 6 * 3600) / (14 * 3600)  # 0..1 over the day
    w = PV_PEAK_W * 4 * x * (1 - x)  # a parabola: sunrise to sunset
    for a, n in clouds:
        if a <= s < a + n:
            return w / 4
    return w


def _house_solar(t):
    s = t % 86400
    w = 300.0
    if 7 * 3600 <= s < 7 * 3600 + 1200:
        w += 2000  # breakfast
    if 12 * 3600 <= s < 12 * 3600 + 1800:
        w += 2500  # lunch
    if 15 * 3600 <= s < 15 * 3600 + 3600 and s % 1200 < 300:
        w += 2200  # the washing machine heats
    return w


def _solar(seconds, seed=1):
    clouds = _clouds(seed)
    r = DayRig(limit_w=0, charge_mode="solar", solar_start_s=60, solar_stop_s=300,
               min_on=600, epoch=tt.T0 + 6 * 3600)  # from sunrise
    r.ch.session = Session()
    ideal = taken = caused = 0.0
    for _ in range(seconds):
        t = r.rtc()
        pv = _pv(t, clouds)
        h = _house_solar(t)
        r.load(h - pv)
        r.ch.offered_a = r.own
        r.cycle()
        surplus = max(0.0, pv - h)
        car = r.own * V3
        ideal += min(surplus, CAR_MAX_A * V3)
        taken += min(car, surplus)
        caused += max(0.0, car - surplus)
        r.own = r.offer()
    sess_wh = getattr(r.ch.session, "solar_wh", 0.0)
    return {"ideal_kwh": ideal / 3.6e6, "taken_kwh": taken / 3.6e6,
            "import_kwh": caused / 3.6e6, "counted_kwh": sess_wh / 1000,
            "clouds": len(clouds)}


def run(hours=24.0):
    log.set_level(log.WARNING)
    seconds = int(hours * 3600)
    t0 = time.ticks_ms()
    free_max, free_kwh = _tariff(0, seconds)
    lim_max, lim_kwh = _tariff(TARIFF_W, seconds)
    sol = _solar(seconds)
    return {
        "hours": hours,
        "tariff_limit_w": TARIFF_W,
        "window_max_w_without": round(free_max),
        "window_max_w_with": round(lim_max),
        "car_kwh_without": round(free_kwh, 1),
        "car_kwh_with": round(lim_kwh, 1),
        "solar": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sol.items()},
        "wall_s": time.ticks_diff(time.ticks_ms(), t0) / 1000,
    }


def main(argv):
    import json

    hours = 24.0
    if len(argv) == 2 and argv[0] == "--hours":
        hours = float(argv[1])
    elif argv:
        print("usage: bench_grid.py [--hours H]")
        sys.exit(2)
    print(json.dumps(run(hours)))


if __name__ == "__main__":
    main(sys.argv[1:])
