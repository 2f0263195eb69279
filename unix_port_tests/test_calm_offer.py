# The offer's calm rules (docs/errors.md, "Current limits"): pauses that cars survive and
# few, meaningful duty changes. On the unit rig: the charging core with its protection on
# the fake board and a virtual clock, so minutes of a limit that moves every second run
# in a moment; the fake car (fakehw.Ev) counts the interruptions it sees.
from check import eq, true
from evse import limits
from test_charger import Rig


def _duty_log(r):
    """[(ms, duty)] of every change of the pilot from now on (PWM, X1, F)."""
    log = []
    cp = r.hw.cp

    def wrap(name):
        write = getattr(cp, name)

        def w(*args):
            before = cp.duty_pm
            write(*args)
            if cp.duty_pm != before:
                log.append((r.clock.ms, cp.duty_pm))

        setattr(cp, name, w)

    for name in ("pwm", "high", "low"):
        wrap(name)
    return log


def _stops(log):
    return len([1 for _, d in log if d <= 0])


class _Noise:
    """Deterministic noise in [-amp, +amp] (a linear congruential generator)."""

    def __init__(self, amp, seed=12345):
        self.amp = amp
        self.x = seed

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.amp * (2.0 * self.x / 0x7FFFFFFF - 1.0)


def test_a_limit_alternating_5_5_and_6_5_a_every_second_pauses_once():
    """A pool limit alternating 5.5 / 6.5 A every second for 5 minutes: the old core
    paused and resumed every 2 s (150 interruptions) and a car that gives up after 5 did.
    Now one pause: 6.5 A is not 1 A above 6 A, and the limit never held 6 A through a
    whole minimum pause."""
    r = Rig()
    r.hw.ev.gives_up_after = 5
    r.charge()
    r.run(6000)
    log = _duty_log(r)
    for i in range(300):
        r.ch.set_external_limit("balance", 5.5 if i % 2 == 0 else 6.5)
        r.run(1000)
    true(not r.hw.ev.gave_up, "the car gave up after %d interruptions" % r.hw.ev.interruptions)
    eq(_stops(log), 1, "pauses in 5 minutes")
    eq(r.ch.session.pauses, 1, "the session counts its pause")
    eq(r.hw.ev.state, "C", "the car still asks")
    # The limit back for good: the charge resumes at once (the pause is long over).
    r.ch.set_external_limit("balance", 10.0)
    r.run(200)
    eq(r.ch.offered_a, 10.0, "resumed")
    r.run(1000)
    true(r.hw.relays.closed, "charging again")


def test_a_limit_alternating_5_5_and_7_5_a_pauses_at_most_once_a_minute():
    r = Rig()
    r.hw.ev.gives_up_after = 10
    r.charge()
    r.run(6000)
    log = _duty_log(r)
    for i in range(600):  # 10 minutes: 7.5 A is enough margin, 1 s later it is gone
        r.ch.set_external_limit("power", 5.5 if i % 2 == 0 else 7.5)
        r.run(1000)
    true(_stops(log) <= 10, "%d pauses in 10 minutes" % _stops(log))
    true(_stops(log) >= 9, "it resumes after each minimum pause: %d pauses" % _stops(log))
    true(not r.hw.ev.gave_up, "the car gave up")


def test_a_pause_lasts_min_pause_s_then_needs_1a_of_margin_or_a_steady_limit():
    r = Rig(min_pause_s=30)
    r.charge()
    r.ch.set_external_limit("power", 3.0)
    eq(r.ch.offered_a, 0.0, "a cut below 6 A pauses at once")
    r.ch.set_external_limit("power", 16.0)
    r.run(29800)
    eq(r.hw.cp.duty_pm, -1, "paused for min_pause_s (30 s)")
    r.run(300)
    eq(r.ch.offered_a, 16.0, "resumed: 16 A is 1 A above 6 A, the pause 30 s long")
    # 6.5 A is no 1 A margin above 6 A: it ends a pause only once it has stayed 5 s.
    r.ch.set_external_limit("power", 0.0)
    r.run(28000)
    r.ch.set_external_limit("power", 6.5)
    r.run(4800)
    eq(r.hw.cp.duty_pm, -1, "the pause is over, but 6.5 A for 4.8 s only: paused")
    r.run(400)
    eq(r.ch.offered_a, 6.5, "6.5 A held for 5 s: resumed")
    eq(r.ch.session.pauses, 2)
    r.ch.set_external_limit("power", 0.0)
    for i in range(100):  # 5.5 / 6.5 A, 2 s each: never 5 s at 6 A
        r.ch.set_external_limit("power", 6.5 if i % 2 else 5.5)
        r.run(2000)
    eq(r.ch.session.pauses, 3, "no resume on a limit wobbling around 6 A")


def test_a_setting_below_its_range_is_refused():
    from evse import settings

    for bad in (4, 601, 60.5, "60", None, True):
        true("min_pause_s" in settings.validate({"min_pause_s": bad}), "%r refused" % (bad,))
    eq(settings.validate({"min_pause_s": 5}), {})
    eq(settings.defaults()["min_pause_s"], 60)


def test_offers_are_whole_half_amps_rounded_down():
    eq(limits.offer_of(12.3), 12.0)
    eq(limits.offer_of(12.5), 12.5)
    eq(limits.offer_of(6.0), 6.0)
    eq(limits.offer_of(5.9), 0.0)
    eq(limits.offer_of(31.9), 31.5)
    r = Rig()
    r.charge()
    r.ch.set_external_limit("ocpp", 12.3)
    eq(r.ch.offered_a, 12.0, "12.3 A: 12 A offered at once")
    eq(r.hw.cp.duty_pm, 200)
    r.ch.set_external_limit("ocpp", 11.9)
    eq(r.ch.offered_a, 11.5, "a cut of any size below the offer goes out at once")


def test_a_cut_needed_by_a_limit_is_immediate_however_small():
    r = Rig()
    r.charge()
    r.ch.set_external_limit("power", 16.0)
    r.run(200)
    eq(r.ch.offered_a, 16.0)
    r.ch.set_external_limit("power", 15.9)  # 0.1 A below the offer: no tick, no wait
    eq(r.ch.offered_a, 15.5)
    r.ch.set_external_limit("power", 15.5)
    eq(r.ch.offered_a, 15.5, "not below the offer: nothing to cut")


def test_a_raise_needs_the_limit_1a_above_the_offer_for_5s():
    r = Rig()
    r.charge()
    r.ch.set_external_limit("ocpp", 12.0)
    r.run(10000)
    log = _duty_log(r)
    r.ch.set_external_limit("ocpp", 12.9)  # less than 1 A above: never a raise
    r.run(30000)
    eq(log, [], "12.9 A over a 12 A offer moves nothing")
    r.ch.set_external_limit("ocpp", 13.5)
    r.run(4800)
    eq(r.ch.offered_a, 12.0, "13.5 A for 4.8 s: no raise yet")
    r.run(400)
    eq(r.ch.offered_a, 13.5, "raised once the limit has stayed 1 A above for 5 s")
    # A limit wobbling between 13.6 and 15.4 A every half second: the offer does not
    # chase it up and down.
    log = _duty_log(r)
    for i in range(120):
        r.ch.set_external_limit("ocpp", 13.6 if i % 2 else 15.4)
        r.run(500)
    eq(log, [], "a wobbling limit above the offer moves nothing")
    # A limit that stays up: raised to the lowest value it had over those 5 s.
    for v in (20.0, 19.2, 21.0, 20.4, 19.6, 22.0):
        r.ch.set_external_limit("ocpp", v)
        r.run(1000)
    eq(r.ch.offered_a, 19.0, "raised to the lowest limit of the last 5 s, rounded down")


def test_a_noisy_thermal_derating_gives_few_duty_changes():
    """Relay temperature 78 °C +- 0.3 °C (about +-0.5 A of derating), read every 100 ms
    and moving every second: the old core changed the duty 16 times in 30 s in 0.3-1.2 A
    steps (cuts at once, a raise after each 5 s). Now the offer settles below the noise."""
    r = Rig()
    r.charge()
    r.hw.temps.relay_c = 78.0
    r.run(1000)
    noise = _Noise(0.3)
    log = _duty_log(r)
    for _ in range(120):  # 2 minutes
        r.hw.temps.relay_c = 78.0 + noise.next()
        r.run(1000)
    true(len(log) <= 3, "%d duty changes in 2 minutes: %r" % (len(log), log))
    lim = limits.thermal_limit(limits.MODEL_A, 78.3, None)
    true(r.ch.offered_a <= lim, "never above the limit")
    true(r.ch.offered_a >= lim - 1.5, "%.1f A offered: not far below the limit" % r.ch.offered_a)
    true(r.hw.relays.closed, "charging all along")


def test_pauses_are_counted_per_session_and_recorded():
    r = Rig(min_pause_s=5)
    r.charge()
    for _ in range(3):
        r.ch.set_external_limit("power", 0.0)
        r.run(1000)
        r.ch.set_external_limit("power", None)
        r.run(12000)
        true(r.ch.offered_a > 0, "resumed")
    s = r.ch.session
    eq(s.pauses, 3)
    eq(s.as_dict()["pauses"], 3, "in the status and the simulator snapshot")
    r.hw.ev.state = "A"
    r.run(200)
    eq(s.pauses, 3, "the end of the session is not a pause")
    r.plug("B")
    eq(r.ch.start_session("04A1B2C3", "RFID"), None)
    eq(r.ch.session.pauses, 0, "a new session counts from 0")


# ---- end to end with load balancing: the real charging core behind a CAN pool ----------------
def _pool(headroom):
    """A meter master (node 1, no car) and node 2: the real charging core of a Rig with
    its car, on an in-memory CAN bus, all on the rig's virtual clock. headroom(t_ms) is
    the master's meter headroom per phase with node 2's own current taken out (the meter
    sees node 2 as house load)."""
    from evse.balance import node as bal
    from test_balance import Bus, FakeCharger, Prot, _Power, _settings

    r = Rig(lb_enabled=True, can_addr=2, phase_set="L123", max_house_current_a=40,
            meter_model="none", charger_power="7kW")
    bus = Bus()
    pw = _Power([40.0, 40.0, 40.0])
    master = bal.Balancer(FakeCharger(), _settings(1, meter_model="SDM630"), Prot(), bus.port(),
                         clock=r.clock, power=pw, epoch=1)
    node = bal.Balancer(r.ch, r.settings, Prot(), bus.port(), clock=r.clock, epoch=2)

    def run(ms):
        for _ in range(ms // 100):
            t = r.clock.ms
            if t % 1000 == 0:  # a meter reading every second
                h = headroom(t) - r.ch.offered_a  # the car draws what is offered
                pw.headroom_a = [h, h, h]
                pw.last_ok_ms = t
            master.tick(t)
            node.tick(t)
            r.run(100)

    return r, node, run


def test_a_pool_limit_alternating_5_5_and_6_5_a_pauses_at_most_once_a_minute():
    """End to end through load balancing: the master's pool limit alternates 5.5 / 6.5 A
    (its meter's headroom, every 2 s: a rise counts from the second reading that shows
    it, docs/load-balancing.md), so its allocation to the car's node alternates 0 / 6.5 A
    for 5 minutes. The old core paused and resumed with it every 4 s and the car gave up
    after its 5th interruption; now at most one pause a minute, and the car charges on."""
    level = [40.0]
    r, node, run = _pool(lambda t: level[0])
    r.hw.ev.gives_up_after = 5
    r.hw.ev.state = "B"
    run(1000)
    eq(r.ch.start_session("04A1B2C3", "RFID"), None)
    run(1500)
    r.hw.ev.state = "C"
    run(8000)
    true(r.hw.relays.closed and r.ch.offered_a >= 6.0, "charging: %.1f A" % r.ch.offered_a)
    log = _duty_log(r)
    for i in range(150):  # 5 minutes
        level[0] = 5.5 if i % 2 == 0 else 6.5
        run(2000)
    minutes = 5
    true(not r.hw.ev.gave_up, "the car gave up after %d interruptions" % r.hw.ev.interruptions)
    true(_stops(log) <= minutes, "%d stops of the PWM" % _stops(log))
    true(r.ch.session.pauses <= minutes, "%d pauses in %d minutes" % (r.ch.session.pauses, minutes))
    eq(r.hw.ev.state, "C", "the car still asks")
    true(len(log) <= 2 * minutes + 2, "%d duty changes in %d minutes" % (len(log), minutes))
    level[0] = 20.0  # room again for good
    run(70000)
    true(r.ch.offered_a >= 12.0, "charging again: %.1f A" % r.ch.offered_a)
    true(r.hw.relays.closed, "relays closed")
    eq(node.limit_a, node.alloc_a, "the node offers what the master allocates")


def test_the_pause_count_is_in_the_history_and_survives_a_power_loss():
    from check import tmpdir
    from evse.history import Session
    from evse.history import History

    d = tmpdir("pauses")
    h = History(d, lambda: 1_790_000_000)
    s = Session("04A1B2C3", "RFID", 1_790_000_000, 0.0)
    s.pauses = 4
    h.session_started(s)
    s.stop_mode, s.end_s = "Unplug", 1_790_000_600
    h.session_ended(s)
    eq(h.session_list()[0]["pauses"], 4, "in the session record")
    s2 = Session("04A1B2C3", "RFID", 1_790_001_000, 0.0)
    s2.pauses = 2
    h.session_started(s2)  # then the power goes
    h2 = History(d, lambda: 1_790_002_000)
    rec = h2.recover_open_session(1_790_002_000)
    eq((rec["stop_mode"], rec["pauses"]), ("PowerLoss", 2), "kept through the power loss")
