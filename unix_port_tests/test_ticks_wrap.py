# Stored times against the ticks wrap of a 32-bit port: ticks_ms wraps every 2**30 ms
# (12.4 days) and ticks_diff is right only for intervals under 2**29 ms (6.2 days). Each
# test puts the firmware module's `time` on the 32-bit arithmetic of fakes/fake_time.py,
# starts its clock just before the wrap, and lets more than 6.2 days pass (in steps, each
# with the periodic calls a running charger makes) where a stored time would be compared
# days later.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import fake_time  # noqa: E402
from check import eq, true  # noqa: E402
from fakehw import IdleCharger as _Idle, IdleMeter as _Met
from evse import faults  # noqa: E402

Ticks32 = fake_time.Ticks32
PERIOD = fake_time.TICKS_PERIOD
MASK = PERIOD - 1
HALF = PERIOD // 2  # 2**29 ms: 6.2 days
WEEK_MS = 7 * 24 * 3600 * 1000  # between 2**29 and 2**30: reads as negative
NEAR_WRAP = PERIOD - 3000  # the wrap comes 3 s after the start


class WrapClock:
    """ms of a 32-bit port: always within 0 .. 2**30 - 1."""

    def __init__(self, start):
        self._ms = start & MASK

    @property
    def ms(self):
        return self._ms

    @ms.setter
    def ms(self, v):
        self._ms = v & MASK

    def __call__(self):
        return self._ms


def _charger_modules():
    import evse.charger
    import evse.offer
    import evse.protection
    import evse.rcdtest
    import evse.socketlock

    return evse.charger, evse.protection, evse.offer, evse.socketlock, evse.rcdtest


def _rig(**kw):
    from test_charger import Rig

    r = Rig(**kw)
    r.clock = r.ch.clock = WrapClock(NEAR_WRAP)
    return r


def _leap(r, ms, step_ms=3_600_000):
    """Lets `ms` pass in steps (an hour by default), with one pilot sample, control tick,
    protection tick and meter reading at each: a charger that runs on, seen hourly."""
    while ms > 0:
        d = min(ms, step_ms)
        r.clock.ms += d
        ms -= d
        r.ch.tick_pilot()
        r.ch.tick_control(r.clock.ms)
        r.prot.tick(r.clock.ms)
        r.prot.on_meter(r.clock.ms, not r.hw.meter.fail)


def test_a_latched_trip_waiting_a_week_stays_at_x1():
    """A latched trip waits for a technician: after its 1 s of state F the pilot shows X1
    for as long as it lasts, not F again once its trip time reads as negative."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.charge()
        r.hw.rcd.fire()
        r.run(200)
        eq(r.hw.cp.duty_pm, -2, "state F after the trip")
        r.hw.rcd.line = False
        r.run(1500)
        eq(r.hw.cp.duty_pm, -1, "X1 after the F hold")
        _leap(r, WEEK_MS)
        true(r.ch.latched & faults.IRD, "still latched")
        r.run(500)
        eq(r.hw.cp.duty_pm, -1, "X1 a week later, the trip still latched")
        r.hw.ev.state = "A"
        r.run(300)
        eq(r.ch.connected, False, "the vehicle leaving is seen")


def test_a_pause_lasting_a_week_ends_once_the_limit_is_back():
    """A pause the limits made lasts min_pause_s from its stop: after a week of a limit
    below 6 A, the stop's time must not read as recent once the ticks wrap."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.charge()
        r.ch.set_external_limit("power", 0.0)
        r.run(200)
        eq(r.hw.cp.duty_pm, -1, "paused")
        _leap(r, WEEK_MS)
        r.run(7000)  # hourly meter readings are a meter outage: MET, cleared by 5 s of them
        true(not r.ch.active, "no fault left")
        r.ch.set_external_limit("power", 16.0)
        r.run(5300)
        eq(r.ch.offered_a, 16.0, "resumed 5 s after the limit came back, a week later")
        # The limit up for a week: a raise comes at once, not a week later.
        r.ch.set_external_limit("power", 10.0)
        r.run(6000)
        r.ch.set_external_limit("power", 20.0)
        r.run(200)
        eq(r.ch.offered_a, 10.0, "not yet")
        _leap(r, WEEK_MS)
        r.run(7000)
        true(not r.ch.active, "no fault left")
        r.run(5300)  # MET stopped the offer: a change, 5 s before a raise
        eq(r.ch.offered_a, 20.0, "raised after a week of the limit 1 A above the offer")


def test_a_fault_lasting_a_week_clears_once_its_cause_is_gone():
    """The 1 s after a trip in which no clear rule runs is counted once: a relay
    over-temperature lasting a week clears as soon as the relay has cooled."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.hw.temps.relay_c = 95.0
        r.run(2000)
        true(r.ch.active & faults.ROT, "ROT")
        _leap(r, WEEK_MS)
        true(r.ch.active & faults.ROT, "still there while hot")
        r.hw.temps.relay_c = 25.0
        r.run(300)
        true(not r.ch.active & faults.ROT, "cleared once the relay cooled")


def test_a_new_trip_after_a_week_holds_f_again():
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.hw.temps.relay_c = 95.0
        r.run(2000)
        r.hw.temps.relay_c = 25.0
        r.run(500)
        true(not r.ch.active, "cleared")
        _leap(r, WEEK_MS)
        r.hw.temps.socket_c = 90.0
        r.run(200)
        eq(r.hw.cp.duty_pm, -2, "state F at the new trip")
        r.run(500)
        eq(r.hw.cp.duty_pm, -2, "held")
        r.run(800)
        eq(r.hw.cp.duty_pm, -1, "X1 after 1 s")


def test_a_fan_running_a_week_is_still_watched():
    """The fan's 2 s spin-up is counted once: a fan driven for a week (a hot enclosure)
    that then blocks is a FAN fault, not ignored while its start reads as negative."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.hw.temps.env_c = 45.0
        r.run(3000)
        true(r.hw.fan.running, "fan driven")
        _leap(r, WEEK_MS)
        r.hw.fan.blocked = True
        r.run(6000)
        true(r.ch.active & faults.FAN, "blocked fan found")


def test_ocp_reference_follows_the_offer_after_a_week_without_readings():
    """The over-current reference is the highest offer of the last 5 s: after a week
    without a meter reading it is the offer of now, not the one from before."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.charge()
        eq(r.ch.offered_a, 32.0, "32 A")
        r.run(2000)
        r.hw.meter.fail = True
        r.run(4000)
        true(r.ch.active & faults.MET, "meter lost")
        _leap(r, WEEK_MS)
        r.ch.set_external_limit("ocpp", 10.0)
        r.hw.meter.fail = False
        r.run(8000)
        true(not r.ch.active & faults.MET, "meter back")
        r.run(1500)
        eq(r.ch.offered_a, 10.0, "10 A offered")
        true(r.hw.relays.closed, "charging")
        r.hw.meter.amps = [16.0, 16.0, 16.0]  # above (10 + 0.5) * 1.1, not 32 A's
        r.run(9000)
        true(r.ch.active & faults.OCP, "over-current against 10 A")


def test_a_metering_task_hung_for_a_week_keeps_met():
    """No reading at all for a week (the metering task hangs): MET stays tripped, not
    cleared once the last valid reading's time reads as recent after the wrap."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.charge()
        r.metering = False
        r.run(5000)
        true(r.ch.active & faults.MET, "MET 4 s after the last valid reading")
        for _ in range(WEEK_MS // 3_600_000):  # hourly, with the ticks a charger makes
            r.clock.ms += 3_600_000
            r.ch.tick_pilot()
            r.ch.tick_control(r.clock.ms)
            r.prot.tick(r.clock.ms)
            true(r.ch.active & faults.MET, "MET held while nothing is read")
        true(not r.hw.relays.closed, "open")


def test_the_over_voltage_timer_survives_a_week_long_meter_outage():
    """One reading above 264.5 V starts the 2 s over-voltage timer, then the meter goes
    silent for a week: once it answers again, 268 V trips OVP within seconds."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.charge()
        r.hw.meter.volts = [268.0, 230.0, 230.0]
        r.run(1000)  # one reading above 264.5 V: the 2 s timer starts
        true(not r.ch.active & faults.OVP, "not yet")
        r.hw.meter.fail = True
        _leap(r, WEEK_MS)
        r.hw.meter.fail = False
        r.run(20000)
        true(r.ch.active & faults.OVP, "268 V for 20 s after the meter came back")


def test_under_voltage_and_a_missing_phase_after_a_week_long_meter_outage():
    """The same for the under-voltage and missing-phase timers."""
    for volts, bit in (([190.0, 230.0, 230.0], faults.LVP), ([20.0, 230.0, 230.0], faults.MIS)):
        with Ticks32(*_charger_modules()):
            r = _rig()
            r.charge()
            r.hw.meter.volts = volts
            r.run(1000)
            true(not r.ch.active & bit, "not yet")
            r.hw.meter.fail = True
            _leap(r, WEEK_MS)
            r.hw.meter.fail = False
            r.run(20000)
            true(r.ch.active & bit, "%r for 20 s after the meter came back" % faults.codes(bit))


def test_a_bad_pp_before_an_unplug_does_not_blind_the_next_plug_in():
    """A PP out of window for less than 300 ms, then an unplug: a week later a cable
    with an open PP trips after 300 ms, not after days."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        r.plug("B")
        r.hw.pp_adc.ohm = 5000
        r.run(200)
        true(not r.ch.active & faults.PP, "not yet")
        r.hw.ev.state = "A"  # unplugged with the PP still out of window
        r.run(300)
        true(not r.ch.connected and not r.ch.active, "unplugged, no fault")
        _leap(r, WEEK_MS)
        r.run(8000)  # hourly readings in the leap are a meter failure (MET): it clears
        true(not r.ch.active, "no fault before the plug-in")
        r.plug("B")
        r.run(500)
        true(r.ch.active & faults.PP, "open PP at the next plug-in")


def test_a_condition_held_for_a_week_stays_held():
    """A per-rule timer whose hold is over stays over, however long its condition lasts."""
    with Ticks32(*_charger_modules()):
        r = _rig()
        p = r.prot
        now = NEAR_WRAP
        true(not p._cond("x", True, now, 2000), "starts")
        true(p._cond("x", True, (now + 2000) & MASK, 2000), "held")
        true(p._cond("x", True, (now + WEEK_MS) & MASK, 2000), "still held a week later")
        true(not p._cond("x", False, (now + WEEK_MS) & MASK, 2000), "gone")
        true(not p._cond("x", True, (now + WEEK_MS + 10) & MASK, 2000), "starts again")


# ---- the driver's side: HMI, card reader ------------------------------------------------------
class _Out:
    v = None

    def set(self, *a):
        self.v = a

    def show(self, text):
        self.v = text

    def beep(self, ms):
        pass


class _HmiHw:
    def __init__(self):
        import fakehw

        self.belt = _Out()
        self.display = _Out()
        self.tap_light = _Out()
        self.leds = _Out()
        self.buzzer = _Out()
        self.rtc = fakehw.Rtc()

        class Wlan:
            mode = "ap"
            module_ok = True

            def ap_clients(self):
                return 0

            def isconnected(self):
                return False

        class Button:
            def pressed(self):
                return False

        self.wlan = Wlan()
        self.button = Button()




def test_the_power_on_self_test_light_does_not_come_back_a_week_later():
    """The belt is white for 2 s after power-on; that deadline, kept, would read as ahead
    again 6.2 days later and show the self-test for 6.2 more days."""
    import evse.hmi as hmi_mod

    with Ticks32(hmi_mod):
        fake_time.set_ms(NEAR_WRAP)
        hw = _HmiHw()
        hmi = hmi_mod.Hmi(hw, _Idle(), _Met(), lambda: "ap")
        now = NEAR_WRAP
        hmi.tick(now)
        eq(hw.belt.v, ("white", "steady"), "self-test at power-on")
        now = (now + 2500) & MASK
        hmi.tick(now)
        eq(hw.belt.v, ("green", "slow"), "stand-by")
        for _ in range(WEEK_MS // 3_600_000):
            now = (now + 3_600_000) & MASK
            hmi.tick(now)
            eq(hw.belt.v, ("green", "slow"), "stand-by at %d ms" % now)


class _Card:
    kind = "M1"

    def uid_hex(self):
        return "04A1B2C3"


class _Reader:
    """The RC522 driver: nothing on the reader unless a card is put there."""

    def __init__(self):
        self.card = None

    def init(self):
        pass

    def poll(self):
        return self.card

    def halt(self):
        pass


class _Auth:
    def __init__(self):
        self.seen = []
        self.hmi = _Out()
        self.unknown = False  # the cards this test taps are accepted

    async def present(self, uid, kind):
        self.seen.append(uid)


def _run(coro):
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("waited on something")


def test_the_same_card_a_week_later_is_a_new_tap():
    """A card held on the reader counts once; the same card tapped a week later (the
    reader polled all along) is a new tap, not the same one read again."""
    import evse.rfid as rfid_mod

    with Ticks32(rfid_mod):
        auth = _Auth()
        r = rfid_mod.RfidReader(_Rfid(), auth)
        r._reader = _Reader()
        now = NEAR_WRAP
        fake_time.set_ms(now)
        _run(r._handle(_Card()))
        eq(auth.seen, ["04A1B2C3"], "first tap")
        for _ in range(WEEK_MS // 200_000):  # polled every 200 ms: seen here every 200 s
            now = (now + 200_000) & MASK
            fake_time.set_ms(now)
            r._poll()
        _run(r._handle(_Card()))
        eq(auth.seen, ["04A1B2C3"] * 2, "the tap a week later counts")


class _Rfid:
    """hw as the card reader's driver sees it at construction."""

    def __init__(self):
        from fakehw import Nothing

        self.rfid_spi = Nothing()
        self.rfid_cs = Nothing()
        self.rfid_rst = Nothing()


# ---- supervisor, web login, metering, uptime ---------------------------------------------------
def test_deaths_a_week_apart_do_not_add_up_to_a_reset():
    """Five deaths of a critical task within a minute stop the watchdog feed: four deaths
    a week ago and one now are not five within a minute."""
    import evse.supervisor as sup_mod

    with Ticks32(sup_mod):
        sup = sup_mod.Supervisor(None, lambda: None)
        now = NEAR_WRAP
        fake_time.set_ms(now)
        for _ in range(4):
            sup._note_death("pilot")
        for _ in range(WEEK_MS // 3_600_000):  # the watchdog loop runs on (every 500 ms)
            now = (now + 3_600_000) & MASK
            fake_time.set_ms(now)
            sup.late()
        sup._note_death("pilot")
        eq(sup.escalated, None, "no reset for deaths a week apart")


def test_a_login_session_and_a_lockout_do_not_come_back_a_week_later():
    import asyncio

    import evse.web_auth as wa_mod
    from check import raises, tmpdir

    def login(pw):  # the password check yields to the loop: a coroutine
        r = asyncio.run(auth.login(pw))
        asyncio.new_event_loop()
        return r

    with Ticks32(wa_mod):
        clock = WrapClock(NEAR_WRAP)
        auth = wa_mod.WebAuth(tmpdir("wrap_auth"), clock_ms=clock)
        token = login("123456")
        true(auth.valid(token), "logged in")
        for _ in range(5):
            raises(ValueError, login, "wrong")
        raises(ValueError, login, "123456")  # locked for 30 s
        for _ in range(WEEK_MS // 60_000):  # app.py: every minute
            clock.ms += 60_000
            auth.expire()
        true(not auth.valid(token), "a session idle for a week has ended")
        true(auth.valid(login("123456")), "the lockout is over")


def test_session_power_samples_go_on_after_a_week_without_meter():
    from evse import metering as met_mod
    from evse.history import Session
    import fakehw

    class Prot:
        readings = None

        def on_meter(self, now_ms, ok):
            pass

    class History:
        progress = 0

        def session_progress(self, s):
            self.progress += 1

    with Ticks32(met_mod):
        hw = fakehw.Hw()
        ch = _Idle()
        ch.session = s = Session("X", "RFID", 0, 0.0)
        hist = History()
        m = met_mod.Metering(hw, ch, Prot(), hist)
        now = NEAR_WRAP
        for _ in range(120):
            m.read(now)
            now = (now + 1000) & MASK
        eq((len(s.power_dkw), hist.progress), (2, 2), "one sample and one record a minute")
        hw.meter.fail = True
        for _ in range(WEEK_MS // 3_600_000):
            m.read(now)
            now = (now + 3_600_000) & MASK
        hw.meter.fail = False
        m.read(now)
        eq((len(s.power_dkw), hist.progress), (3, 3), "sampled at the first reading back")


def test_uptime_counts_on_past_the_wrap():
    import evse.app as app_mod

    class Up:
        uptime_s = 0
        _up_ms = NEAR_WRAP

    with Ticks32(app_mod):
        up = Up()
        now = NEAR_WRAP
        for _ in range(WEEK_MS // 100_000):
            now = (now + 100_000) & MASK
            app_mod.App._count_uptime(up, now)
        eq(up.uptime_s, WEEK_MS // 1000, "a week")


# ---- power management, load balancing, Modbus --------------------------------------------------
def test_power_management_resumes_after_a_meter_outage_a_week_in():
    """Ample headroom for a week, then the external meter lost for a moment: charging
    resumes once the meter is back, not days later."""
    import evse.limits as limits_mod  # limits.held: the power task's held conditions
    import evse.power as power_mod
    from test_power import Rig as PowerRig
    from modbus_rtu import ModbusError

    with Ticks32(power_mod, limits_mod):
        r = PowerRig()
        r.clock = r.pm.clock = WrapClock(NEAR_WRAP)
        r.house(4, 4, 4, own=(0, 0, 0))
        r.cycle(10)
        eq(r.limit(), 21.0, "charging")
        for _ in range(WEEK_MS // 3_600_000):
            r.clock.ms += 3_600_000
            r.cycle()
        eq(r.limit(), 21.0, "a week on")
        r.master.fail = ModbusError("silent", "timeout")
        r.cycle(7)
        eq(r.limit(), 0.0, "paused while the meter is lost")
        r.master.fail = None
        r.cycle(8)
        true(r.limit() >= 6.0, "resumed once the meter is back: %r" % r.limit())


def test_the_meter_search_still_sweeps_a_week_later():
    """meter_model auto with nothing on the bus for a week: the pause between two sweeps
    still ends, and a meter wired then is found."""
    import evse.limits as limits_mod
    import evse.power as power_mod
    from evse import meterprobe
    from test_meter_search import SWEEP, _rig

    with Ticks32(power_mod, limits_mod):
        r = _rig(addr=None, model="auto")
        r.clock = r.pm.clock = WrapClock(NEAR_WRAP)
        r.cycle(SWEEP)
        for _ in range(WEEK_MS // 3_600_000):
            r.clock.ms += 3_600_000
            r.cycle()
        r.master.addr = 3
        r.cycle(meterprobe.PAUSE_MS // 1000 + 2 * SWEEP)
        eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 3), "found")

def _leap_pool(pool, ms, step_ms=3_600_000):
    while ms > 0:
        d = min(ms, step_ms)
        pool.t += d
        ms -= d
        for i, b in enumerate(pool.nodes):
            if i not in pool.off:
                b.tick(pool.t)
                b.ch.follow()


def test_a_load_balancing_master_still_allocates_a_week_later():
    from evse.balance import node as bal, planner
    from test_balance import Pool

    with Ticks32(bal, planner):
        pool = Pool([1])
        pool.plug(0)
        pool.run(6000)
        b = pool.nodes[0]
        eq((b.master, b.ch.offered_a), (1, 32.0), "its own master, charging")
        _leap_pool(pool, WEEK_MS)
        pool.run(70_000)
        eq((b.fallback, b.ch.offered_a), (False, 32.0), "still allocating a week later")


def test_a_node_without_master_stays_paused_a_week_later():
    """The fallback share lasts 60 s, then the node pauses until a master allocates
    again: not 6 A again once the last allocation reads as recent."""
    from evse.balance import node as bal, planner
    from test_balance import Pool

    with Ticks32(bal, planner):
        pool = Pool([1, 2])
        pool.plug(0)
        pool.plug(1)
        pool.run(6000)
        b = pool.nodes[1]
        true(b.ch.offered_a >= 6.0, "charging")
        pool.power_off(0)
        pool.run(bal.MASTER_TIMEOUT_MS + bal.FALLBACK_HOLD_MS + 1000)
        eq(b.ch.offered_a, 0.0, "paused after the fallback share")
        _leap_pool(pool, WEEK_MS)
        pool.run(1000)
        eq(b.ch.offered_a, 0.0, "still paused a week later")


def test_a_turn_that_began_a_week_ago_is_over():
    from evse.balance import codec, planner
    from test_balance import _follow, _node

    with Ticks32(planner):
        p = planner.Planner(rotate_ms=10000)
        lim = [10.0] * 3  # room for one
        a, b = _node(1), _node(2, state=codec.ST_IDLE)
        t = NEAR_WRAP
        for _ in range(3):
            _follow([a, b], p.plan(t, lim, [a, b]))
            t = (t + 1000) & MASK
        true(a.offered_a >= 6.0, "the only one charges")
        for _ in range(WEEK_MS // 3_600_000):  # the master's cycles, seen hourly
            _follow([a, b], p.plan(t, lim, [a, b]))
            t = (t + 3_600_000) & MASK
        b.state = codec.ST_WANT
        for _ in range(5):
            _follow([a, b], p.plan(t, lim, [a, b]))
            t = (t + 1000) & MASK
        eq((a.offered_a, b.offered_a), (0.0, 10.0), "a week-long turn yields to who waits")


def test_a_demand_cap_set_a_week_ago_is_still_lifted():
    """The cap's time is kept at most CAP_LIFT_MS old: a week later it is lifted within
    one CAP_LIFT_MS, not days later once its time reads as recent."""
    from evse.balance import planner
    from test_balance import _follow, _node

    with Ticks32(planner):
        p = planner.Planner()
        lim = [40.0] * 3
        a, b = _node(1), _node(2)
        t = NEAR_WRAP
        for _ in range(WEEK_MS // 3_600_000):  # the master's cycles, seen hourly
            sent = p.plan(t, lim, [a, b])
            _follow([a, b], sent)
            a.draw_a = min(a.offered_a, 5.0)
            b.draw_a = b.offered_a
            t = (t + 3_600_000) & MASK
        lifted = False
        for _ in range(planner.CAP_LIFT_MS // 1000 + 5):
            sent = p.plan(t, lim, [a, b])
            _follow([a, b], sent)
            a.draw_a = min(a.offered_a, 5.0)
            b.draw_a = b.offered_a
            lifted = lifted or sent[1] > 6.0
            t = (t + 1000) & MASK
        true(lifted, "lifted within CAP_LIFT_MS a week later")


def test_a_car_starting_a_week_ago_is_no_longer_starting():
    from evse.balance import node as bal, planner
    from test_balance import Pool

    with Ticks32(bal, planner):
        pool = Pool([1])
        pool.plug(0)
        pool.run(1000)
        b = pool.nodes[0]
        true(b.me.starting, "starting after the plug-in")
        _leap_pool(pool, WEEK_MS, WEEK_MS)  # no tick for a week
        pool.run(200)
        true(not b.me.starting, "not starting a week later")


def test_modbus_waits_no_days_for_a_line_silent_for_a_week():
    import modbus_rtu
    from test_modbus_rtu import regs_reply, rig, run

    with Ticks32(modbus_rtu):
        m, uart, clock, pin = rig()
        clock.ms += WEEK_MS  # nothing on the bus since the driver was built
        uart.replies = [(5, regs_reply(1, 4, [0x4366, 0]))]
        m.start(1, 4, 0, 2)
        r, ms = run(m, clock)
        true(ms < 100, "answered after %d ms" % ms)


def test_ocpp_heartbeat_and_ping_switched_on_after_a_week():
    """HeartbeatInterval and WebSocketPingInterval set to 0 for a week, then on: the
    first heartbeat and ping go out one interval later, not days later."""
    from evse.ocpp import service as svc_mod

    class Ws:
        last_rx_ms = NEAR_WRAP
        pings = 0

        async def ping(self, data):
            self.pings += 1

    class Svc:
        cfg = {"HeartbeatInterval": 0, "WebSocketPingInterval": 0}
        _hb_ms = NEAR_WRAP
        _ping_ms = None
        calls = 0

        async def call(self, action, payload):
            self.calls += 1
            return {}

        def _sync_clock(self, t):
            pass

    with Ticks32(svc_mod):
        s = Svc()
        s.ws = Ws()
        now = NEAR_WRAP
        for _ in range(WEEK_MS // 3_600_000):
            now = (now + 3_600_000) & MASK
            fake_time.set_ms(now)
            _run(svc_mod.Service._heartbeat(s))
            _run(svc_mod.Service._keepalive(s))
        s.cfg = {"HeartbeatInterval": 60, "WebSocketPingInterval": 30}
        fake_time.set_ms((now + 61_000) & MASK)
        _run(svc_mod.Service._heartbeat(s))
        _run(svc_mod.Service._keepalive(s))
        eq((s.calls, s.ws.pings), (1, 1), "heartbeat and ping sent")


# ---- the EV PLUS boards -----------------------------------------------------------------------
def _board():
    import boardload

    return boardload.make("esp32_evplus", {"EVSE_DATA_DIR": "/tmp/evplus_wrap_test",
                                           "EVSE_SERIAL": "EVPLUS-00077"})


def test_an_internal_meter_silent_for_a_week_stays_failed():
    """read() raises once the last answer is 3 s old: a week later too, not the values
    of a week ago taken as a reading once their time reads as recent."""
    from check import raises

    ld, hw = _board()
    try:
        now = NEAR_WRAP
        ld.time.set_ms(now)
        hw.meter._good = now  # its last answer
        hw.meter.read()
        for _ in range(WEEK_MS // 3_600_000):  # metering reads it every second
            now = (now + 3_600_000) & MASK
            ld.time.set_ms(now)
            raises(OSError, hw.meter.read)
    finally:
        ld.__exit__()


def test_a_fan_off_for_a_week_reads_its_speed_again():
    """The tachometer figure after a week with the fan off is measured anew: a blocked
    fan reads 0 rpm, not the speed of a week ago."""
    ld, hw = _board()
    try:
        ctr = hw._tach._ctr
        now = hw.fan._t  # when the board was made
        hw.fan.run(True)
        for _ in range(20):  # 2400 rpm: 2 pulses a turn, 8 per 100 ms
            now = (now + 100) & MASK
            ld.time.set_ms(now)
            ctr.n += 8
            hw.fan.rpm()
        eq(hw.fan.rpm(), 2400, "spinning")
        hw.fan.run(False)
        now = (now + WEEK_MS) & MASK
        hw.fan.run(True)  # blocked: no pulse from now on
        for _ in range(30):
            now = (now + 100) & MASK
            ld.time.set_ms(now)
            hw.fan.rpm()
        eq(hw.fan.rpm(), 0, "blocked")
    finally:
        ld.__exit__()
