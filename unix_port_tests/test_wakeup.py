# Wake-up of a car that fell asleep plugged in (IEC 61851-1:2017 A.5.3, STANDARDS.md §1.4):
# the charging core on the fake board, with a car that ignores the PWM in B until the
# pilot has gone F ~4 s, X1 ~0.75 s, then PWM again.
from check import eq, true
from evse import offer
from evse import faults
from test_charger import Rig


def _rig(wakes=True, **settings):
    """A session with the car asleep in B. wakes False: a car no wake-up reaches."""
    r = Rig(**settings)
    if wakes:
        r.hw.ev.clock = r.clock
    r.hw.ev.asleep = True
    r.plug("B")
    eq(r.ch.start_session("04A1B2C3", "RFID"), None, "start")
    return r


def _run(r, ms, log=None):
    """Runs `ms` in 10 ms steps; log: a list that gets (t, duty) at each pilot change and
    (t, "relays", closed) at each relay change."""
    duty = r.hw.cp.duty_pm
    closed = r.hw.relays.closed
    for _ in range(ms // 10):
        r.run(10)
        if log is not None:
            if r.hw.cp.duty_pm != duty:
                duty = r.hw.cp.duty_pm
                log.append((r.clock.ms, duty))
            if r.hw.relays.closed != closed:
                closed = r.hw.relays.closed
                log.append((r.clock.ms, "relays", closed))


def _f_runs(log):
    """(start, length) of each spell of state F in a _run log."""
    out = []
    start = None
    for e in log:
        if len(e) != 2:
            continue
        if e[1] == -2 and start is None:
            start = e[0]
        elif e[1] != -2 and start is not None:
            out.append((start, e[0] - start))
            start = None
    return out


def test_a_car_asleep_in_b2_is_woken_30s_into_the_offer_and_charges():
    r = _rig()
    log = []
    _run(r, 1000, log)
    t_pwm = [e[0] for e in log if len(e) == 2 and e[1] > 0][0]
    eq(r.hw.cp.duty_pm, 533, "offered")
    _run(r, 28000, log)
    eq(r.hw.cp.duty_pm, 533, "no wake-up before 30 s")
    eq(r.hw.ev.state, "B", "the car sleeps on")
    _run(r, 12000, log)
    eq(r.hw.ev.state, "C", "woken, it closed S2")
    true(r.hw.relays.closed, "charging")
    eq(r.ch.session.wakeups, 1, "one wake-up counted")
    eq(r.ch.session.as_dict()["wakeups"], 1, "shown with the session")
    # The sequence: PWM ~30 s, F 4 s, X1 0.75 s, PWM; the relays only after that, in C.
    pilot = [e for e in log if len(e) == 2]
    eq([d for _, d in pilot], [533, -2, -1, 533], "PWM, F, X1, PWM")
    t_f, t_x1, t_back = pilot[1][0], pilot[2][0], pilot[3][0]
    true(30000 <= t_f - t_pwm <= 30100, "F %d ms after the offer" % (t_f - t_pwm))
    true(4000 <= t_x1 - t_f <= 4100, "F held %d ms" % (t_x1 - t_f))
    true(750 <= t_back - t_x1 <= 850, "X1 held %d ms" % (t_back - t_x1))
    closes = [e[0] for e in log if len(e) == 3 and e[2]]
    eq(len(closes), 1, "one close")
    true(closes[0] > t_back, "relays closed only under the PWM that followed")


def test_the_wake_up_is_the_evs_pause_in_ocpp_status():
    r = _rig()
    _run(r, 31000)
    eq(r.hw.cp.duty_pm, -2, "waking: F")
    eq(r.ch.ocpp_status(), "SuspendedEV", "not SuspendedEVSE: the EVSE withholds nothing")
    true(r.ch.offer.waking, "waking")


def test_once_per_resume_and_at_most_wake_max_per_session():
    r = _rig(wakes=False)
    r.settings["min_pause_s"] = 5  # the shortest minimum pause: the resumes are timed here
    log = []
    _run(r, 90000, log)
    eq(len(_f_runs(log)), 1, "one wake-up for this offer, however long it sleeps on")
    eq(r.ch.session.wakeups, 1, "counted")
    eq(r.hw.cp.duty_pm, 533, "the offer stands")
    # Each resume after a pause (power management, balancing, a 0 A profile) arms it anew.
    for i in range(offer.WAKE_MAX + 1):
        r.ch.set_external_limit("power", 0.0)
        _run(r, 2000)
        eq(r.hw.cp.duty_pm, -1, "paused")
        r.ch.set_external_limit("power", None)
        _run(r, 45000, log)  # the pause's last 3 s, 30 s asleep, F 4 s, X1 0.75 s
    eq(len(_f_runs(log)), offer.WAKE_MAX, "no more than WAKE_MAX a session")
    eq(r.ch.session.wakeups, offer.WAKE_MAX, "counted")
    # A new session has its own.
    r.ch.end_session("Remote")
    _run(r, 1000)
    eq(r.ch.start_session("04A1B2C3", "RFID"), None, "new session")
    _run(r, 40000, log)
    eq(r.ch.session.wakeups, 1, "a new session counts from 0")


def test_a_resume_after_a_pause_wakes_a_car_that_fell_asleep_meanwhile():
    """The car charged, the offer paused (power management), the car fell asleep; the
    resume finds it in B2 and wakes it."""
    r = Rig()
    r.hw.ev.clock = r.clock
    r.charge()
    true(r.hw.relays.closed, "charging")
    r.ch.set_external_limit("power", 0.0)
    _run(r, 7000)
    r.hw.ev.state = "B"
    r.hw.ev.asleep = True
    _run(r, 60000)
    true(not r.hw.relays.closed, "paused")
    eq(r.ch.session.wakeups, 0, "nothing offered, nothing to wake")
    r.ch.set_external_limit("power", None)
    log = []
    _run(r, 45000, log)
    eq(len(_f_runs(log)), 1, "woken after the resume")
    true(r.hw.relays.closed, "charging again")


def test_no_wake_up_for_a_car_in_c_or_one_that_charged_and_stopped():
    r = Rig()
    r.hw.ev.clock = r.clock
    r.charge()
    log = []
    _run(r, 40000, log)
    eq(_f_runs(log), [], "in C: no wake-up")
    # The car stops by itself (full): it answered this offer, it is not asleep.
    r.hw.ev.state = "B"
    _run(r, 60000, log)
    eq(_f_runs(log), [], "a car that charged and went to B is not woken")
    eq(r.ch.session.wakeups, 0, "none counted")


def test_no_wake_up_while_a_fault_stands_and_a_fault_ends_one():
    r = _rig(wakes=False)
    _run(r, 20000)
    r.hw.temps.relay_c = 90.0  # ROT: its own F hold, then X1 while it stands
    log = []
    _run(r, 40000, log)
    true(r.ch.active & faults.ROT, "ROT stands")
    eq(r.ch.session.wakeups, 0, "no wake-up under a fault")
    true(all(n <= 1100 for _, n in _f_runs(log)), "only the fault's own F: %r" % _f_runs(log))
    eq(r.hw.cp.duty_pm, -1, "X1 while the fault stands")
    r.hw.temps.relay_c = 25.0
    log = []
    _run(r, 20000, log)
    eq(r.hw.cp.duty_pm, 533, "offered again after the clear")
    # A fault during the wake-up's F: the fault's hold, then X1; the wake-up is over.
    t0 = r.clock.ms
    while r.hw.cp.duty_pm != -2 and r.clock.ms - t0 < 40000:
        r.run(10)
    eq(r.hw.cp.duty_pm, -2, "waking")
    eq(r.ch.session.wakeups, 1, "the resume after the fault armed it")
    r.hw.temps.relay_c = 90.0
    _run(r, 200)
    true(r.ch.active & faults.ROT, "tripped")
    _run(r, 10000)
    eq(r.hw.cp.duty_pm, -1, "X1 while the fault stands, not the wake-up's PWM")
    true(not r.ch.offer.waking, "wake-up dropped")
    true(not r.hw.relays.closed, "open")


def test_a_pause_or_stop_during_the_wake_up_gives_the_pilot_back():
    r = _rig(wakes=False)
    _run(r, 31000)
    eq(r.hw.cp.duty_pm, -2, "waking")
    r.ch.set_external_limit("power", 0.0)
    _run(r, 200)
    eq(r.hw.cp.duty_pm, -1, "a pause: X1, not F")
    r.ch.set_external_limit("power", None)
    _run(r, 31000)
    eq(r.hw.cp.duty_pm, -2, "waking again after the resume")
    r.ch.end_session("Remote")
    eq(r.hw.cp.duty_pm, -1, "the session's end: X1 at once")
    _run(r, 10000)
    eq(r.hw.cp.duty_pm, -1, "and it stays")


def test_the_wake_up_keeps_the_5s_rule_and_never_closes_by_itself():
    r = _rig(max_current_a=32)
    r.ch.set_external_limit("ocpp", 10.0)
    log = []
    _run(r, 31000, log)
    eq(r.hw.cp.duty_pm, -2, "waking")
    r.ch.set_external_limit("ocpp", 20.0)  # a raise during the wake-up
    _run(r, 4800, log)
    eq(r.hw.cp.duty_pm, 166, "back at 10 A, not raised within 5 s of the stop")
    t_back = r.clock.ms
    _run(r, 4000, log)
    eq(r.hw.cp.duty_pm, 166, "no raise within 5 s of the PWM's return")
    _run(r, 2000, log)
    eq(r.hw.cp.duty_pm, 333, "raised after 5 s")
    closes = [e[0] for e in log if len(e) == 3 and e[2]]
    true(closes and closes[0] > t_back - 100, "closed only after the PWM came back, in C")
    eq(r.hw.ev.state, "C", "the car closed S2")


def test_a_car_unplugged_during_the_wake_up_ends_the_session():
    r = _rig(wakes=False)
    _run(r, 31000)
    eq(r.hw.cp.duty_pm, -2, "waking")
    r.hw.ev.state = "A"
    _run(r, 5000)
    true(r.ch.session is None, "unplug seen once the pilot is back at X1")
    eq(r.hw.cp.duty_pm, -1, "X1, nothing offered")
