"""The supervisor on the running firmware: a control task that dies puts the charger in
its safe state first (relays open, PWM stopped), is logged and restarted; a critical task
that keeps dying ends in a watchdog reset (DEVELOPERS.md safety rules)."""

WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def test_dying_protection_task_opens_relays_and_restarts(start_charger):
    c = start_charger(settings={"auth_mode": "free"})
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["pwm_duty_pct"])
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"], timeout=WAIT_S)
    # One death: the test need not clear the bug before the next ones (five within a
    # minute end in a watchdog reset, the next test's matter).
    t0 = c.sim("fault", name="sensor_bug", active=True, times=1)["t_us"]
    c.wait_for(lambda s: s["restarts"].get("protection", 0) >= 1, timeout=WAIT_S)
    assert "sensor_bug" not in c.snapshot()["plant"]["faults"]
    events = c.events(t0)
    opened = [e for e in events if e["what"] == "relays" and e["value"] is False]
    pwm_off = [e for e in events if e["what"] == "pwm_duty_pct" and e["value"] is None]
    assert opened and pwm_off, "safe state: relays open and PWM stopped"
    assert "task protection died" in c.log_tail(200)
    # The safe state ended the session (docs/errors.md, Internal errors): the relays stay
    # open although the car still asks, until a fresh handshake (free mode: a new plug-in).
    snap = c.wait_for(lambda s: not s["session"]["active"], timeout=WAIT_S)
    assert not snap["relays_closed"] and snap["pwm_duty_pct"] is None
    t1 = snap["t_us"]
    c.sim("ev", state="A")
    c.wait_for(lambda s: s["cp_state"] == "A", timeout=WAIT_S)
    assert not any(e["what"] == "relays" and e["value"] is True for e in c.events(t1)), \
        "closed again without a new handshake"
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["pwm_duty_pct"], timeout=WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=16)
    # Restarted: it detects faults again, and charging resumes through the pilot.
    snap = c.wait_for(lambda s: s["relays_closed"], timeout=WAIT_S)
    assert snap["restarts"]["protection"] >= 1
    c.sim("temp", relay_c=90.0)
    c.wait_for(lambda s: "ROT" in s["errors"], timeout=WAIT_S)


def test_critical_task_that_keeps_dying_ends_in_a_watchdog_reset(start_charger):
    c = start_charger()
    c.sim("fault", name="sensor_bug", active=True)
    status = c.wait_exit(timeout=60)
    assert status == 3, "watchdog reset (exit status 3)"
    assert "watchdog" in c.log_tail(50)
