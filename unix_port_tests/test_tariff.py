# Capacity tariff (evse/tariff.py) on the fakes of test_power, in simulated time: a day
# of house load whose every window stays under the limit, a jump near a window's end, the
# 6 A floor and the pause, meter loss, windows on the clock's quarter hours or from the
# start, the 32-bit tick wrap, hostile settings.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import fake_time  # noqa: E402
from check import eq, true  # noqa: E402
from evse import limits  # noqa: E402
from evse import settings as settings_mod  # noqa: E402
from evse.power import LOST_MS  # noqa: E402
from modbus_rtu import ModbusError  # noqa: E402
from test_power import Rig as PowerRig  # noqa: E402

# The runner frees each test module after its run; test_power, imported here, goes too.
sys.modules.pop("test_power", None)

_P_TOTAL_REG = 0x0034
T0 = 1767225600  # 2026-01-01 00:00:00 UTC: a quarter hour


class Rig(PowerRig):
    def __init__(self, limit_w=4000, window=15, epoch=T0, min_on=0, phases=3, **kw):
        s = {"tariff_limit_w": limit_w, "tariff_window_min": window, "solar_min_on_s": min_on,
             "max_house_current_a": 63}
        s.update(kw)
        super().__init__(phases=phases, **s)
        self.epoch = epoch  # the RTC at the start (None: never set, it shows 2000)
        self.ms0 = self.clock.ms
        self.pm.rtc = self.rtc
        self.own = 0.0  # the car's draw per phase
        self.windows = {}  # window number -> grid import (W s), as the meter operator counts
        self.car_ws = 0.0  # what the car took

    def rtc(self):
        base = 946684800 if self.epoch is None else self.epoch
        return base + (self.clock.ms - self.ms0) // 1000

    def load(self, house_w):
        """The house's other loads (W, spread over three phases) and the car's draw: the
        meter shows both."""
        o = self.own
        n = self.ch.phases
        self.metering.amps = [o, o, o] if n == 3 else [o, 0.0, 0.0]
        per = house_w / 3 / 230.0
        self.master.set(amps=[per + o, per + (o if n == 3 else 0), per + (o if n == 3 else 0)])
        self.master._put(_P_TOTAL_REG, house_w + o * n * 230.0)

    def offer(self):
        """What the charger offers: the smallest limit, in its steps (evse/limits.py)."""
        return limits.offer_of(min(self.ch.external.values()))

    def drive(self, seconds, house):
        """`seconds` cycles with the house load house(t) (W); the car draws what the
        charger offered after the cycle before. Each second's grid import is added to the
        window of the clock it falls in."""
        win_s = self.settings["tariff_window_min"] * 60
        for _ in range(seconds):
            t = self.rtc()
            h = house(t)
            self.load(h)
            self.cycle()
            car = self.own * self.ch.phases * 230.0
            self.car_ws += car
            w = h + car
            k = t // win_s
            self.windows[k] = self.windows.get(k, 0.0) + max(0.0, w)
            self.own = self.offer()

    def tariff(self):
        return self.ch.external.get("tariff")

    def view(self):
        return self.pm.tariff.view()


def _averages(r, whole_only=True):
    """Average import of each window the run covered whole (W)."""
    win_s = r.settings["tariff_window_min"] * 60
    keys = sorted(r.windows)
    if whole_only:
        keys = keys[1:-1]
    return [r.windows[k] / win_s for k in keys]


def test_off_carries_no_tariff_code():
    sys.modules.pop("evse.tariff", None)
    r = Rig(limit_w=0)
    r.drive(3, lambda t: 500)
    true("evse.tariff" not in sys.modules, "imported with the limit off")
    true("tariff" not in r.ch.external, "no tariff limit")
    eq(r.pm.tariff, None, "no object")


def test_setting_it_to_0_drops_the_limit_and_the_module():
    r = Rig()
    r.drive(3, lambda t: 500)
    true("evse.tariff" in sys.modules, "imported while set")
    true("tariff" in r.ch.external, "limit set")
    r.settings["tariff_limit_w"] = 0
    r.cycle()
    true("tariff" not in r.ch.external, "limit removed")
    true("evse.tariff" not in sys.modules, "module forgotten")
    eq(r.pm.tariff, None, "no object")


def test_the_plan_gives_the_rest_of_the_limit_to_the_car():
    r = Rig(limit_w=6000)
    r.drive(30, lambda t: 1000)
    # 0.97 x 6 kW - 1 kW for the house = 4.82 kW, on three phases at 230 V: 6.98 A
    # (a little more: the first seconds, before the car drew, left some of the budget)
    x = r.tariff()
    true(6.9 <= x <= 7.1, "the limit less the house, per phase: %.1f A" % x)
    v = r.view()
    eq(v["limit_w"], 6000)
    eq(v["window_min"], 15)
    true(v["aligned"], "on the clock")
    true(v["avg_w"] is not None and v["avg_w"] <= 6000, "the window's average so far")
    eq(v["waiting"], None, "offers")


def _day(t):
    """A scripted day of house load (W), by the second of the day: a base load, a morning
    peak, a washing machine's heating cycles, cooking at noon and in the evening, an oven
    switched on a few minutes before quarter hours, a heat pump in the night."""
    s = t % 86400
    h = s // 3600
    w = 250.0
    if 6 <= h < 8:
        w += 1200 + (s % 600) * 2  # kettle, coffee, showers
    if 10 <= h < 12 and s % 1200 < 300:
        w += 2200  # the washing machine heats
    if 12 <= h < 13 or 18 <= h < 20:
        w += 2500 if s % 900 < 600 else 800  # cooking
    if 17 <= h < 22 and s % 900 >= 840:
        w += 3000  # an oven switched on in a window's last minute
    if h < 5:
        w += 1500 if s % 1800 < 900 else 0  # the heat pump
    return w


def test_a_day_of_house_load_keeps_every_window_under_the_limit():
    r = Rig(limit_w=5000, window=15)
    # Charging through the day (simulated time: 96 windows of 15 min).
    r.drive(86400, _day)
    avgs = _averages(r)
    true(len(avgs) >= 94, "the day's windows")
    worst = max(avgs)
    true(worst <= 5000, "the worst window's average: %.0f W" % worst)
    true(worst >= 4500, "and the budget is used: %.0f W" % worst)


def test_without_the_limit_the_same_day_exceeds_it():
    r = Rig(limit_w=0)
    r.drive(3 * 3600, lambda t: _day(t + 17 * 3600))
    true(max(_averages(r)) > 5000, "the car alone would exceed it")


def test_a_jump_near_the_end_of_a_window_cuts_the_charger_at_once():
    r = Rig(limit_w=5000)
    r.drive(880, lambda t: 300)  # 880 s of the first window
    before = r.tariff()
    true(before >= 6, "charging")
    r.drive(1, lambda t: 5200)  # the house alone now imports more than the limit
    eq(r.tariff(), 0.0, "paused in the reading that shows it")
    r.drive(19, lambda t: 5200)
    avgs = [w / 900 for w in r.windows.values()]
    true(avgs[0] <= 5000, "the window's average %.0f W" % avgs[0])


def test_a_smaller_jump_lowers_the_plan_at_once_and_raises_are_damped():
    r = Rig(limit_w=8000)
    r.drive(60, lambda t: 500)
    high = r.tariff()
    r.drive(1, lambda t: 2500)
    low = r.tariff()
    true(low <= high - 2.8, "down by 2 kW / 690 W per A at once: %.1f -> %.1f" % (high, low))
    r.drive(1, lambda t: 500)
    true(r.tariff() <= low + 2.0, "up by one step at most")


def test_below_6_a_the_charge_pauses_and_resumes_with_hysteresis():
    r = Rig(limit_w=5000, min_on=120)
    r.drive(60, lambda t: 300)
    true(r.tariff() >= 6, "charging")
    r.drive(1, lambda t: 4000)  # 0.97 x 5 kW - 4 kW: 0.85 kW, 1.2 A
    eq(r.tariff(), 0.0, "paused, not 1.2 A")
    true(r.view()["paused"], "paused at the limit")
    eq(r.view()["waiting"], None, "not for the meter")
    r.drive(10, lambda t: 300)
    eq(r.tariff(), 0.0, "not back before the minimum on-time since the last start")
    # The plan has room again, but the charge started less than 120 s ago: it waits.
    r.drive(60, lambda t: 300)
    true(r.tariff() >= 6, "back after the minimum on-time and the hold")


def test_a_plan_just_above_6_a_does_not_start_the_charge():
    r = Rig(limit_w=5000)
    r.drive(5, lambda t: 5000)
    eq(r.tariff(), 0.0, "no room")
    # 0.97 x 5 kW - 370 W = 4.48 kW: 6.5 A, below 6 A + RESUME_HYST_A
    r.drive(30, lambda t: 370)
    eq(r.tariff(), 0.0, "within the hysteresis: still paused")


def test_meter_lost_pauses():
    r = Rig(limit_w=8000)
    r.drive(30, lambda t: 500)
    true(r.tariff() >= 6, "charging")
    r.master.fail = ModbusError("silent", "timeout")
    r.drive(2, lambda t: 500)
    true(r.tariff() >= 6, "a failed read or two keep the last limit")
    r.drive(LOST_MS // 1000, lambda t: 500)
    eq(r.tariff(), 0.0, "lost: paused (the house's import is unknown)")
    eq(r.view()["waiting"], "meter_lost", "the reason")


def test_no_meter_or_no_power_reading_pauses():
    r = Rig(model="none")
    r.cycle(3)
    eq(r.tariff(), 0.0, "no meter: paused")
    eq(r.view()["waiting"], "no_meter")
    r = Rig()
    r.load(500)
    r.drive(2, lambda t: 500)
    from evse import meters

    for q in range(meters.P_L1, meters.P_TOTAL + 1):
        r.pm.values[q] = None  # no power, per phase or total
    r.pm.tariff.step(r.clock(), True)
    eq(r.tariff(), 0.0, "currents only: no direction, paused")
    eq(r.view()["waiting"], "no_power")


def test_windows_follow_the_clock_quarter_hours():
    # The RTC shows 10 minutes into a quarter hour: the window has 5 minutes left, and
    # the 10 minutes before count at the limit (unseen).
    r = Rig(limit_w=5000, epoch=T0 + 600)
    r.drive(1, lambda t: 200)
    v = r.view()
    eq(v["left_s"], 300, "the quarter hour's rest")
    true(v["avg_w"] >= 5000, "the unseen part at the limit")
    # 0.97 x 900 s x 5 kW - 600 s x 5 kW (unseen) over 300 s: 4.55 kW less 200 W, 6.3 A
    true(6.0 <= r.tariff() <= 6.5, "the plan for the rest: %.1f A" % r.tariff())
    r.drive(300, lambda t: 200)
    v = r.view()
    eq(v["left_s"], 900, "a new window at the quarter hour")
    true(v["last_avg_w"] <= 5000, "the last one under the limit")
    r.drive(30, lambda t: 200)
    true(r.tariff() >= 6.5, "a whole window's budget")


def test_without_a_set_clock_windows_count_from_the_start():
    r = Rig(limit_w=5000, epoch=None, window=1)
    r.drive(1, lambda t: 500)
    v = r.view()
    true(not v["aligned"], "not on the clock")
    eq(v["left_s"], 60, "a whole window from the first reading")
    true(v["avg_w"] is None, "nothing to average yet")
    r.drive(59, lambda t: 500)
    eq(r.view()["left_s"], 1, "its last second")
    r.drive(1, lambda t: 500)
    eq(r.view()["left_s"], 60, "the next window, 60 s after the first")
    true(r.view()["last_avg_w"] <= 5000, "the last window under the limit")


def test_setting_the_clock_keeps_the_energy_counted():
    r = Rig(limit_w=5000, epoch=None)
    r.drive(120, lambda t: 500)
    e = r.pm.tariff.energy_ws
    r.epoch = T0 + 60 - 121  # set now: a minute into a quarter hour
    r.drive(1, lambda t: 500)
    true(r.view()["aligned"], "on the clock now")
    true(r.pm.tariff.energy_ws >= e, "what was counted stays")


def test_windows_and_pauses_survive_the_tick_wrap():
    # The modules' `time` does the 32-bit port's tick arithmetic (the unix port's ticks
    # wrap at 2**62): the clock starts 30 s before the wrap.
    from evse import power, tariff

    mods = (tariff, limits, power)
    with fake_time.Ticks32(*mods):
        r = Rig(limit_w=5000, epoch=None, window=1, min_on=30)
        r.clock.ms = r.ms0 = fake_time.TICKS_PERIOD - 30000
        r.pm.clock = lambda: r.clock.ms & (fake_time.TICKS_PERIOD - 1)
        r.drive(45, lambda t: 500)  # the ticks wrap 30 s in
        eq(r.view()["left_s"], 16, "the window counts across the wrap")
        r.drive(16, lambda t: 500)
        eq(r.view()["left_s"], 60, "and the next starts on time")
        true(r.tariff() >= 6, "charging")
        r.drive(1, lambda t: 4800)
        eq(r.tariff(), 0.0, "paused")
        r.drive(40, lambda t: 300)
        true(r.tariff() >= 6, "resumed across the wrap")


def test_single_phase_plan():
    r = Rig(limit_w=3000, phases=1, phase_set="L1")
    r.drive(30, lambda t: 300)
    # 0.97 x 3 kW - 300 W = 2610 W on one phase: 11.3 A
    eq(r.tariff(), 11.3, "watts to amps on one phase")


def test_every_charge_mode():
    for mode in ("normal", "solar", "solar_min"):
        r = Rig(limit_w=4000, charge_mode=mode)
        r.drive(5, lambda t: 3900)
        eq(r.tariff(), 0.0, mode + ": the tariff limit holds")


def test_hostile_settings_are_refused():
    bad = (-1, 1, 999, 400001, 1e12, float("nan"), float("inf"), 4500.5, True, "4000",
           None, [], {})
    for v in bad:
        err = settings_mod.validate({"tariff_limit_w": v})
        true("tariff_limit_w" in err, "limit %r refused" % (v,))
    for v in (0, -15, 61, 7.5, False, "15", None, float("nan")):
        err = settings_mod.validate({"tariff_window_min": v})
        true("tariff_window_min" in err, "window %r refused" % (v,))
    for v in (0, 1000, 4500, 400000):
        eq(settings_mod.validate({"tariff_limit_w": v}), {}, "limit %r taken" % v)
    eq(settings_mod.validate({"tariff_window_min": 15}), {}, "15 min taken")
    eq(settings_mod.safe("tariff_limit_w"), 1000, "an unreadable limit: the lowest")


def test_a_clock_that_falls_back_unset_keeps_the_window():
    # The clock is set back before 2021 (a central system's bad time, a clock that lost
    # its battery) 10 minutes into a quarter hour whose import was high: the window goes
    # on from the ticks where it was, it does not start again with a whole budget.
    r = Rig(limit_w=11000, epoch=T0)
    r.drive(600, lambda t: 14000)
    real_ws = sum(r.windows.values())  # what the meter operator has counted so far
    eq(r.tariff(), 0.0, "paused by the heavy house load")
    r.epoch = None  # the RTC now shows 2000: not set
    r.drive(300, lambda t: 1000)  # the rest of the real quarter hour
    true(not r.view()["aligned"], "windows on the ticks now")
    avg = (sum(r.windows.values())) / 900
    true(avg <= 11000, "the real quarter hour under the limit: %d W" % avg)
    true(real_ws > 0, "counted")


def test_a_meter_outage_past_the_tick_wrap_counts_at_the_limit():
    # The meter is lost for more than 2**29 ms (6.2 days): the ticks of its last reading
    # read as the future once they wrap. The part of the window the charger did not see
    # must still count at the limit when the meter is back.
    from evse import power, tariff

    mods = (tariff, limits, power)
    with fake_time.Ticks32(*mods):
        r = Rig(limit_w=5000, epoch=T0)
        r.pm.clock = lambda: r.clock.ms & (fake_time.TICKS_PERIOD - 1)
        r.drive(30, lambda t: 500)
        r.master.fail = ModbusError("silent", "timeout")
        r.drive(LOST_MS // 1000 + 2, lambda t: 500)
        eq(r.view()["waiting"], "meter_lost", "lost")
        # Days later, one cycle a minute (the window rolls on the clock meanwhile), to
        # the second after a quarter hour's start.
        jump = (1 << 29) + 60000 * 1000
        end = r.clock.ms + jump
        while r.clock.ms < end:
            r.clock.ms += 59000
            r.cycle()
        t = r.rtc()
        r.clock.ms += (900 - t % 900 + 1) * 1000
        r.cycle()
        eq(r.view()["left_s"], 899, "just after a window's start")
        r.drive(600, lambda t: 500)  # still lost: 10 minutes the charger does not see
        r.master.fail = None
        r.drive(10, lambda t: 500)  # back, and counted again
        v = r.view()
        eq(v["waiting"], None, "the meter is back")
        true(v["avg_w"] >= 4800, "the unseen part at the limit: avg %r W" % v["avg_w"])


def test_a_gap_across_a_window_start_counts_once():
    # A meter silent from 2 minutes before a quarter hour to 5 minutes into it: those 5
    # minutes count at the limit once, not twice (the charger would sit out a window it
    # has the budget for).
    r = Rig(limit_w=5000, epoch=T0)
    r.drive(780, lambda t: 500)
    r.master.fail = ModbusError("silent", "timeout")
    r.drive(420, lambda t: 500)
    r.master.fail = None
    r.drive(7, lambda t: 500)  # back, and counted again
    e = r.pm.tariff.energy_ws
    true(e <= 5000 * 310, "5 minutes at the limit, not 10: %d W s" % e)
    true(e >= 5000 * 300, "and not less: %d W s" % e)


def test_a_phase_with_current_and_no_power_is_no_power_reading():
    # A meter of per-phase powers only, one of them "not available" in this reading: the
    # sum of the other two would miss that phase's import.
    r = Rig(limit_w=5000)
    r.drive(30, lambda t: 500)
    true(r.tariff() >= 6, "charging")
    from evse import meters

    r.pm.values[meters.P_TOTAL] = None
    r.pm.values[meters.P_L1 + 2] = None  # L3 draws, its power is not known
    eq(meters.total_w(r.pm.values), None, "no total")
    r.pm.tariff.step(r.clock(), True)
    eq(r.tariff(), 0.0, "paused")
    eq(r.view()["waiting"], "no_power")


def test_a_charge_started_by_the_charger_counts_as_the_last_start():
    # The tariff has not paused for long; a car starts charging (the charger offers),
    # a kettle makes the tariff pause two seconds later: the charge resumes only once
    # the minimum on-time has passed since that start, not 5 s later (stop/start/stop).
    r = Rig(limit_w=20000, min_on=120)
    r.drive(200, lambda t: 300)
    true(r.tariff() >= 6, "room")
    r.ch.offered_a = 16.0  # the car starts: the pilot offers
    r.drive(2, lambda t: 300)
    r.drive(1, lambda t: 19800)
    eq(r.tariff(), 0.0, "paused")
    r.ch.offered_a = 0.0
    r.drive(20, lambda t: 300)
    eq(r.tariff(), 0.0, "not back within the minimum on-time of the car's start: %r" % (
        r.view(),))
    r.drive(110, lambda t: 300)
    true(r.tariff() >= 6, "back after it")
