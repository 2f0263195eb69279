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
from evse import faults  # noqa: E402

PERIOD = fake_time.TICKS_PERIOD
MASK = PERIOD - 1
HALF = PERIOD // 2  # 2**29 ms: 6.2 days
WEEK_MS = 7 * 24 * 3600 * 1000  # between 2**29 and 2**30: reads as negative
NEAR_WRAP = PERIOD - 3000  # the wrap comes 3 s after the start


class Ticks32:
    """The `time` of the given modules does 32-bit tick arithmetic while inside."""

    def __init__(self, *mods):
        self.mods = mods
        self.saved = []

    def __enter__(self):
        self.saved = [m.time for m in self.mods]
        for m in self.mods:
            m.time = fake_time
        return self

    def __exit__(self, *exc):
        for m, t in zip(self.mods, self.saved):
            m.time = t
        fake_time.set_ms(-1)
        return False


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
    import evse.protection

    return evse.charger, evse.protection


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
