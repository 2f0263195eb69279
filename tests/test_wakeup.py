"""A car that fell asleep plugged in (IEC 61851-1:2017 A.5.3): the simulated EV with
`asleep` ignores the PWM until the pilot goes F ~4 s, X1 ~0.75 s, then PWM again.

Timings are measured on the firmware's own clock (the t_us of the simulator's events);
the host's clock only bounds how long the test waits.
"""

import pytest
from harness import SimError

CARD = "04A1B2C3"
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def pilot_changes(c, since):
    return [(e["t_us"], e["cp"], e["value"]) for e in c.events(since)
            if e["what"] == "pwm_duty_pct"]


@pytest.mark.duration(45)
def test_a_card_after_the_car_fell_asleep_charges_within_40s(start_charger):
    c = start_charger(settings={"auth_mode": "rfid"})
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    assert c.http("POST", "/api/cards", json={"uid": CARD}).status == 200
    c.sim("ev", state="B", diode=True, max_a=16, asleep=True)
    c.wait_for(lambda s: s["cp_state"] == "B" and s["tap_light"])
    t_card = c.sim("card", uid=CARD)["t_us"]
    c.wait_for(lambda s: s["session"]["active"] and s["pwm_duty_pct"])
    snap = c.wait_for(lambda s: s["relays_closed"], timeout=40 + WAIT_S, step=0.5)
    assert snap["state"] == "Charging" and snap["cp_state"] == "C"
    assert snap["plant"]["ev"]["asleep"] is False
    assert snap["session"]["wakeups"] == 1
    closed = [e["t_us"] for e in c.events(t_card) if e["what"] == "relays" and e["value"]]
    assert closed and closed[0] - t_card <= 40_000_000, (closed, t_card)
    # The pilot: the offer, F 4 s, X1 0.75 s, the offer again; the relays only after it.
    seq = pilot_changes(c, t_card)
    assert [m for _, m, _ in seq] == ["pwm", "-12", "+12", "pwm"], seq
    (t_pwm, _, duty), (t_f, _, _), (t_x1, _, _), (t_back, _, duty2) = seq
    # The charger times each phase in ms from its control tick's clock; the events are
    # stamped in us at each write, up to a ms on either side of that tick's `now`.
    ms = 2_000
    assert 30_000_000 - ms <= t_f - t_pwm <= 30_300_000, t_f - t_pwm
    assert 4_000_000 - ms <= t_x1 - t_f <= 4_300_000, t_x1 - t_f
    assert 750_000 - ms <= t_back - t_x1 <= 1_000_000, t_back - t_x1
    assert duty == duty2 == 53.3  # 32 A before and after
    assert closed[0] > t_back
    status = c.http("GET", "/api/status").body
    assert status["session"]["wakeups"] == 1


def test_an_awake_car_gets_no_wake_up(start_charger):
    """The same start with a car that answers: it closes S2 and nothing else happens."""
    c = start_charger(settings={"auth_mode": "free"})
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["session"]["active"] and s["pwm_duty_pct"])
    t0 = c.sim("ev", state="C", diode=True, max_a=16)["t_us"]
    snap = c.wait_for(lambda s: s["relays_closed"], timeout=WAIT_S)
    assert snap["session"]["wakeups"] == 0
    assert [m for _, m, _ in pilot_changes(c, t0)] == []


def test_the_ev_op_refuses_asleep_outside_b(start_charger):
    c = start_charger(settings={"auth_mode": "free"})
    with pytest.raises(SimError, match="asleep needs the car in B"):
        c.sim("ev", state="C", asleep=True)
    with pytest.raises(SimError, match="asleep"):
        c.sim("ev", asleep="yes")
    assert c.snapshot()["plant"]["ev"]["state"] == "A"  # a refused request changes nothing
