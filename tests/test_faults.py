"""Every fault of the manual's table (docs/errors.md), injected through the simulated
plant in standby, while charging and while paused; checks what the driver sees, the
outputs, the fault record and the clear rule.

Safety rules checked (DEVELOPERS.md, IEC 61851-1): a fault opens the relays and stops
the PWM first; protective trips (IRD, PE, welded relay, ELK) latch, survive a restart
and are never re-closed automatically; other faults clear by their documented condition
and charging resumes only through a fresh pilot handshake.
"""

import time

import pytest

FREE = {"auth_mode": "free"}
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware
NOMINAL = {"grid": {"volts": [230.0, 230.0, 230.0], "hz": 50.0},
           "temp": {"relay_c": 25.0, "socket_c": 25.0, "env_c": 25.0}}


def charging(c):
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["pwm_duty_pct"])
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"], timeout=WAIT_S)


def paused(c):
    charging(c)
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: not s["relays_closed"] and s["state"] == "SuspendedEV")


def standby(c):
    c.sim("ev", state="A")
    # After the power-on self-test (white belt): stand-by, green.
    c.wait_for(lambda s: s["state"] == "Available" and s["led_belt"]["colour"] == "green")


PHASES = {"standby": standby, "charging": charging, "paused": paused}

# code: (inject ops, remove ops, latching, phases where the fault can physically occur)
FAULTS = {
    "OVP": ([("grid", {"volts": [280.0, 230.0, 230.0], "hz": 50.0})],
            [("grid", NOMINAL["grid"])], False, PHASES),
    "LVP": ([("grid", {"volts": [180.0, 180.0, 180.0], "hz": 50.0})],
            [("grid", NOMINAL["grid"])], False, PHASES),
    "MIS": ([("grid", {"volts": [230.0, 0.0, 230.0], "hz": 50.0})],
            [("grid", NOMINAL["grid"])], False, PHASES),
    "MET": ([("fault", {"name": "internal_meter", "active": True})],
            [("fault", {"name": "internal_meter", "active": False})], False, PHASES),
    "ROT": ([("temp", {"relay_c": 90.0})], [("temp", NOMINAL["temp"])], False, PHASES),
    "OCT": ([("temp", {"socket_c": 80.0})], [("temp", NOMINAL["temp"])], False, PHASES),
    "FAN": ([("temp", {"env_c": 45.0}), ("fault", {"name": "fan", "active": True})],
            [("fault", {"name": "fan", "active": False})], False, PHASES),
    "IRD": ([("fault", {"name": "rcd_dc", "active": True})],
            [("fault", {"name": "rcd_dc", "active": False})], True, PHASES),
    "PE": ([("fault", {"name": "pe", "active": True})],
           [("fault", {"name": "pe", "active": False})], True, PHASES),
    "R12": ([("fault", {"name": "relay_weld", "active": True, "relay": 1})],
            [("fault", {"name": "relay_weld", "active": False, "relay": 1})], True, PHASES),
    "R3N": ([("fault", {"name": "relay_weld", "active": True, "relay": 2})],
            [("fault", {"name": "relay_weld", "active": False, "relay": 2})], True, PHASES),
    "CP": ([("fault", {"name": "cp_short", "active": True})],
           [("fault", {"name": "cp_short", "active": False})], False, PHASES),
    # The lock is only exercised while a session holds the plug.
    "ELK": ([("fault", {"name": "lock", "active": True})],
            [("fault", {"name": "lock", "active": False})], True,
            {"charging": charging, "paused": paused}),
    # PP is read while a vehicle is connected.
    "PP": ([("cable", {"pp_ohms": 50})], [("cable", {"pp_ohms": 220})], False,
           {"charging": charging, "paused": paused}),
    # Over-current needs current: the relays must be closed.
    "OCP": ([("ev", {"state": "C", "diode": True, "max_a": 16, "draw_a": 45.0})],
            [("ev", {"state": "C", "diode": True, "max_a": 16, "draw_a": None})], False,
            {"charging": charging}),
}

CASES = [(code, phase) for code, spec in FAULTS.items() for phase in spec[3]]


def apply(c, ops):
    for op, fields in ops:
        c.sim(op, **fields)


def login(c):
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200


@pytest.mark.parametrize("code, phase", CASES, ids=[f"{c}-{p}" for c, p in CASES])
def test_fault(start_charger, code, phase):
    inject, remove, latching, phases = FAULTS[code]
    c = start_charger(settings=FREE)
    phases[phase](c)
    t0 = c.snapshot()["t_us"]
    apply(c, inject)
    if code in ("R12", "R3N") and phase == "charging":
        # A welded contact looks like a closed one until the coil is released.
        c.sim("ev", state="B", diode=True, max_a=16)
    # What the driver sees (the display and LEDs follow within one HMI tick). The slowest
    # detection of the table is FAN's: 2 s spin-up, then 5 s (docs/errors.md).
    snap = c.wait_for(lambda s: code in s["errors"] and s["led_belt"]["colour"] == "red"
                      and s["leds"]["fault"]["colour"] == "red", timeout=7 + WAIT_S)
    assert snap["state"] == "Faulted"
    snap = c.wait_for(lambda s: s["display"] == f"ERR {code}" or len(s["errors"]) > 1)
    # Outputs: relays open and the PWM stopped, the relays first.
    assert not snap["relays_closed"] and snap["pwm_duty_pct"] is None
    events = c.events(t0)
    err = next(e for e in events if e["what"] == "error" and e["value"] == code)
    opened = [e for e in events if e["what"] == "relays" and e["value"] is False]
    if phase == "charging":
        assert opened and opened[0]["t_us"] <= err["t_us"], "relays open before the report"
    # The lock: released after the relays opened, kept for a welded relay.
    if code in ("R12", "R3N"):
        assert snap["lock"] in ("locked", "unlocked")
    elif phase != "standby":
        c.wait_for(lambda s: s["lock"] == "unlocked", timeout=WAIT_S)
    # The record.
    faults = c.http("GET", "/api/faults").body["faults"]
    assert faults[0]["code"] == code
    # The clear rule.
    apply(c, remove)
    if code in ("PP", "CP") and phase != "standby":
        c.sim("ev", state="A")
    if latching:
        status = c.http("GET", "/api/status").body
        assert code in status["latched"]
        # Never cleared automatically, not even by a restart.
        c.kill()
        c.start()
        snap = c.wait_for(lambda s: code in s["errors"], timeout=WAIT_S)
        assert not snap["relays_closed"]
        assert c.http("POST", "/api/faults/clear", json={}).status == 401, "needs a login"
        login(c)
        r = c.http("POST", "/api/faults/clear", json={"codes": [code]})
        if code == "ELK":
            # The first clear starts a lock test (engage, feedback, release, feedback gone:
            # up to 4 s, docs/errors.md); the technician clears again once it has passed.
            assert r.status == 400 and "lock test" in r.body["error"], r
            deadline = time.monotonic() + 4 + WAIT_S
            while r.status != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                r = c.http("POST", "/api/faults/clear", json={"codes": [code]})
        assert r.status == 200, r
    # The longest clear rules (docs/errors.md): OCP 60 s after the trip, the voltages 10 s.
    timeout = 60 + WAIT_S if code == "OCP" else 10 + WAIT_S
    c.wait_for(lambda s: code not in s["errors"], timeout=timeout)
    t_clear = c.snapshot()["t_us"]
    if not latching:  # the clear's own time: a resume may follow it before this snapshot
        cleared = [e for e in c.events(t0)
                   if e["what"] == "error" and e["value"] == code and not e["active"]]
        t_clear = cleared[-1]["t_us"] if cleared else t_clear
    # Charging again through a fresh pilot handshake.
    if phase == "standby" or code in ("PP", "CP") or latching:
        charging(c)
    else:
        c.sim("ev", state="C", diode=True, max_a=16)
        c.wait_for(lambda s: s["relays_closed"], timeout=WAIT_S)
    ev = c.events(t_clear)
    pwm_back = [e for e in ev if e["what"] == "pwm_duty_pct" and e["value"]]
    closed = [e for e in ev if e["what"] == "relays" and e["value"] is True]
    assert pwm_back and closed, "a fresh handshake: PWM first, then the relays"
    assert pwm_back[0]["t_us"] < closed[0]["t_us"]


def test_standby_overcurrent_draw_does_not_trip(start_charger):
    """With the relays open no current flows: a misbehaving EV cannot cause OCP."""
    c = start_charger(settings=FREE)
    c.sim("ev", state="B", diode=True, max_a=16, draw_a=40.0)
    t0 = c.snapshot()["t_us"]
    c.wait_for(lambda s: s["t_us"] > t0 + 3_000_000)
    assert "OCP" not in c.snapshot()["errors"]
