# Solar surplus charging (evse/solar.py) on the fakes of test_power: the charge modes, the
# start and stop delays, the minimum on-time, the limit's damping, no meter or a lost one,
# the energy from surplus, the 32-bit tick wrap.
import sys

from check import eq, true, tmpdir
from evse.power import LOST_MS
from modbus_rtu import ModbusError
from test_power import Rig as PowerRig

# The runner frees each test module after its run; test_power, imported here, goes too.
sys.modules.pop("test_power", None)

_P_TOTAL_REG = 0x0034


class Session:
    pass


class Rig(PowerRig):
    def __init__(self, mode="solar", start=10, stop=30, min_on=0, **kw):
        s = {"charge_mode": mode, "solar_start_s": start, "solar_stop_s": stop,
             "solar_min_on_s": min_on, "max_house_current_a": 32}
        s.update(kw)
        super().__init__(**s)
        self.ch.session = Session()
        self.ch.offered_a = 0.0

    def sun(self, export_a, own=0.0):
        """The house exports export_a per phase besides the charger's own draw `own` per
        phase (the meter shows the net of both)."""
        self.house(-export_a, -export_a, -export_a, own=(own, own, own))
        self.master._put(_P_TOTAL_REG, (own - export_a) * 3 * 230.0)

    def solar(self):
        return self.ch.external.get("solar")

    def view(self):
        return self.pm.solar_view()


def test_normal_mode_carries_no_solar_code():
    sys.modules.pop("evse.solar", None)
    r = PowerRig()
    r.house(1, 1, 1, own=(0, 0, 0))
    r.cycle(3)
    true("evse.solar" not in sys.modules, "imported in charge_mode normal")
    eq(r.pm.solar_view(), None, "no solar view")
    true("solar" not in r.ch.external, "no solar limit")


def test_back_to_normal_drops_the_limit_and_the_module():
    r = Rig(start=0)
    r.sun(10)
    r.cycle(2)
    true("evse.solar" in sys.modules, "imported for solar")
    r.settings["charge_mode"] = "normal"
    r.cycle()
    true("solar" not in r.ch.external, "limit removed")
    true("evse.solar" not in sys.modules, "module forgotten")
    eq(r.pm.solar_view(), None, "no view")


def test_start_waits_for_the_start_delay():
    r = Rig(start=10)
    r.sun(5)  # 5 A per phase: below 6 A
    r.cycle(20)
    eq(r.solar(), 0.0, "no surplus, no charge")
    v = r.view()
    eq(v["waiting"], "export", "waits for export")
    eq(v["need_w"], 690, "1 A per phase more export on three phases")
    r.sun(10)
    r.cycle(10)
    eq(r.solar(), 0.0, "still in the start delay")
    eq(r.view()["waiting"], "start_delay", "the reason")
    r.cycle()
    eq(r.solar(), 8.0, "started at 6 A + one raise step")
    true(r.view()["running"], "running")
    eq(r.view()["waiting"], None, "not waiting")


def test_a_dip_restarts_the_start_delay():
    r = Rig(start=10)
    r.sun(10)
    r.cycle(6)
    r.sun(4)
    r.cycle()
    r.sun(10)
    r.cycle(10)
    eq(r.solar(), 0.0, "the delay counts again from the dip's end")
    r.cycle()
    eq(r.solar(), 8.0, "then it starts")


def _running(r, export=10, own=8.0):
    r.sun(export)
    r.cycle(r.settings["solar_start_s"] + 2)
    if r.settings["charge_mode"] == "solar":
        true(r.view()["running"], "started")
    r.sun(export, own=own)  # the charger draws `own`: the meter shows less export
    r.ch.offered_a = own


def test_follows_the_surplus_down_at_once_and_up_damped():
    r = Rig(start=0)
    _running(r, export=10, own=8)
    r.cycle()
    eq(r.solar(), 10.0, "the surplus is the export plus the own draw")
    r.sun(12, own=8)  # more sun: 12 A surplus
    r.cycle()
    eq(r.solar(), 12.0, "up by one step")
    r.sun(20, own=8)
    r.cycle()
    eq(r.solar(), 14.0, "up by at most 2 A a reading")
    r.cycle()
    eq(r.solar(), 16.0, "and again")
    r.sun(7, own=8)  # a cloud: 7 A surplus, the house now imports 1 A a phase
    r.cycle()
    eq(r.solar(), 7.0, "down at once, in the reading that shows it")


def test_a_passing_cloud_does_not_stop_before_the_stop_delay():
    r = Rig(start=0, stop=30)
    _running(r, export=10, own=8)
    r.cycle()
    r.sun(2, own=8)  # 2 A of surplus for 20 s
    r.cycle(20)
    eq(r.solar(), 6.0, "never below 6 A while it runs")
    true(r.view()["running"], "still running")
    true(r.view()["stop_in_s"] is not None, "the stop is counted down")
    r.sun(10, own=8)
    r.cycle()
    true(r.solar() >= 6.0, "the sun is back: it goes on")
    eq(r.view()["stop_in_s"], None, "no stop ahead")
    r.sun(2, own=8)
    r.cycle(30)
    eq(r.solar(), 6.0, "the stop delay counts again from the start")
    r.cycle()
    eq(r.solar(), 0.0, "stopped after 30 s below 6 A")
    true(not r.view()["running"], "waiting again")
    eq(r.view()["waiting"], "export", "for export")


def test_the_minimum_on_time_holds_a_stop():
    r = Rig(start=0, stop=5, min_on=60)
    _running(r, export=10, own=8)
    r.sun(0, own=8)
    r.cycle(40)
    eq(r.solar(), 6.0, "the stop delay is over, the minimum on-time is not")
    r.cycle(25)
    eq(r.solar(), 0.0, "stopped once it has run 60 s")
    r.sun(20)
    r.cycle(1)
    eq(r.solar(), 8.0, "a start delay of 0 s: at once")


def test_solar_min_offers_6_a_and_the_surplus_above():
    r = Rig(mode="solar_min")
    r.sun(0)
    r.cycle()
    eq(r.solar(), 6.0, "6 A from the grid without sun")
    r.sun(12, own=6)
    r.cycle()
    eq(r.solar(), 8.0, "up by one step")
    r.cycle(3)
    eq(r.solar(), 12.0, "the surplus")
    r.sun(-10, own=6)  # the house imports 10 A a phase besides the charger
    r.cycle()
    eq(r.solar(), 6.0, "never below 6 A")
    eq(r.view()["waiting"], None, "not waiting")


def test_min_start_a_is_the_start_current():
    r = Rig(mode="solar_min", min_start_a=8)
    r.sun(0)
    r.cycle()
    eq(r.solar(), 8.0, "the car's start current from the grid")
    r = Rig(start=0, min_start_a=8)
    r.sun(7)
    r.cycle(3)
    eq(r.solar(), 0.0, "7 A of surplus starts no car that needs 8 A")


def test_no_meter():
    r = Rig(model="none")
    r.cycle()
    eq(r.solar(), 0.0, "solar: nothing without a meter")
    eq(r.view()["waiting"], "no_meter", "the reason")
    r = Rig(mode="solar_min", model="none")
    r.cycle()
    eq(r.solar(), 6.0, "solar_min: 6 A without a meter")
    r = Rig(model="auto", master=False)
    r.cycle()
    eq(r.solar(), 0.0, "solar: nothing while the meter is looked for")


def test_meter_lost_stops_solar_and_leaves_solar_min_at_6_a():
    for mode, want in (("solar", 0.0), ("solar_min", 6.0)):
        r = Rig(mode=mode, start=0)
        _running(r, export=15, own=8)
        r.cycle(3)
        true(r.solar() > 6.0, mode + ": charging from surplus")
        r.master.fail = ModbusError("silent", "timeout")
        r.cycle()
        true(r.solar() > 6.0, mode + ": one failed read keeps the limit")
        r.cycle(LOST_MS // 1000 + 1)
        true(r.pm.lost, "lost")
        eq(r.solar(), want, mode + ": lost meter")
        if mode == "solar":
            eq(r.view()["waiting"], "meter_lost", "the reason")


def test_a_meter_without_power_readings_gives_no_surplus():
    r = Rig(start=0)
    r.sun(10)
    r.cycle()
    # A map without power fields (a custom one with currents only) leaves them None.
    from evse import meters

    for q in range(meters.P_L1, meters.P_TOTAL + 1):
        r.pm.values[q] = None  # no power, per phase or total
    r.pm.solar.step(r.clock(), True)
    eq(r.solar(), 0.0, "no direction, no surplus")
    eq(r.view()["waiting"], "no_power", "the reason")


def test_energy_from_surplus_is_counted_for_the_session():
    r = Rig(start=0)
    _running(r, export=10, own=8)
    s = r.ch.session
    s.solar_wh = 0.0
    r.cycle(3600)  # one hour: 8 A x 3 x 230 V all from export
    true(abs(s.solar_wh - 5520) < 10, "all from surplus: %r" % s.solar_wh)
    s.solar_wh = 0.0
    r.sun(5, own=8)  # the house imports 3 A a phase: 5 of the 8 A come from the sun
    r.cycle(3600)
    true(abs(s.solar_wh - 3450) < 10, "5/8 from surplus: %r" % s.solar_wh)
    eq(r.view()["session_solar_kwh"], round(s.solar_wh / 1000, 3), "in the view")


def test_switch_to_solar_while_charging_with_surplus_goes_on():
    for export, goes_on in ((10, True), (3, False)):
        r = Rig(mode="normal", start=60)
        r.sun(export, own=8)
        r.ch.offered_a = 8.0
        r.cycle()
        r.settings["charge_mode"] = "solar"
        r.cycle()
        if goes_on:
            true(r.solar() >= 6.0, "enough surplus: no stop, no start delay")
        else:
            eq(r.solar(), 0.0, "no surplus: stopped in the first cycle")


def test_delays_survive_the_tick_wrap():
    r = Rig(start=10, stop=30)
    r.clock.ms = (1 << 30) - 5000  # the 32-bit port's ticks wrap at 2**30
    r.sun(10)
    r.cycle(11)
    eq(r.solar(), 8.0, "started across the wrap")
    r.sun(0, own=8)
    r.cycle(30)
    eq(r.solar(), 6.0, "the stop delay runs")
    r.cycle()
    eq(r.solar(), 0.0, "and ends across the wrap")


def _history():
    from evse.history import History

    return History(tmpdir("solar"), lambda: 1700000000)


def test_the_history_records_the_energy_from_surplus():
    from evse.charger import Session as ChSession

    h = _history()
    s = ChSession("A", "Local", 1700000000, 0.0)
    s.energy_wh = 5000.0
    s.end_s = 1700003600
    s.stop_mode = "Local"
    eq("solar_kwh" in h.session_ended(s), False, "normal mode: not counted, not named")
    s.solar_wh = 3250.0
    eq(h.session_ended(s)["solar_kwh"], 3.25, "solar mode: counted")
    recs = h.session_list(2)
    eq([r.get("solar_kwh") for r in recs], [3.25, None], "as stored (newest first)")


def test_a_session_cut_by_a_power_loss_keeps_its_energy_from_surplus():
    from evse.charger import Session as ChSession

    h = _history()
    s = ChSession("A", "Local", 1700000000, 0.0)
    s.solar_wh = 1200.0
    h.session_started(s)
    rec = h.recover_open_session(1700003600)
    eq(rec["solar_kwh"], 1.2, "from session.json")


def test_a_car_plugged_in_after_the_start_delay_starts_at_once():
    r = Rig(start=10)
    r.ch.session = None
    r.sun(10)
    r.cycle(15)
    eq(r.solar(), 0.0, "no car, no offer")
    eq(r.view()["waiting"], None, "only the car is missing")
    r.ch.session = Session()
    r.cycle()
    eq(r.solar(), 8.0, "the sun has held for the delay already")
