"""Slow-client floods at the whole firmware's web server while it charges.

The charger (harness.Charger, free mode) charges a car; then 30 clients dribble request
heads, or 12 send bodies a byte a second, each reconnecting at once when the server lets
go of it (tests/flood.py). Under each flood GET /api/status must still answer, every
time, well within a second (the figure for the record is `make bench`'s), and the
control loop must not notice: the car pauses (C -> B) in the middle of the flood and the
relays open within IEC 61851-1's 100 ms, then close again when it resumes. 127.0.0.1
only; every wait is bounded.
"""

import time

from flood import Flood, p99, status_latencies

FREE = {"auth_mode": "free"}
FLOOD_S = 3.0  # of flood before the car pauses


def first_event(events, what, value):
    for e in events:
        if e["what"] == what and e["value"] == value:
            return e
    return None


def charging(c):
    t0 = c.sim("ev", state="C", diode=True, max_a=16)["t_us"]
    c.wait_for(lambda s: s["relays_closed"], timeout=15)
    return t0


def pause_and_resume(c):
    """C -> B under the flood: -> ms until the relays opened (from the charger's events)."""
    t_b = c.sim("ev", state="B", diode=True, max_a=16)["t_us"]
    c.wait_for(lambda s: not s["relays_closed"], timeout=5)
    opened = first_event(c.events(t_b), "relays", False)
    assert opened, c.events(t_b)
    charging(c)
    return (opened["t_us"] - t_b) / 1000.0


def flood_while_charging(c, kind, n, **kw):
    restarts = dict(c.snapshot()["restarts"])
    with Flood(c.http_port, n, kind, interval=1.0, **kw) as f:
        time.sleep(FLOOD_S)
        ms = status_latencies(c.http_port, 10, timeout=10)
        open_ms = pause_and_resume(c)
        ms += status_latencies(c.http_port, 10, timeout=10)
        snap = c.snapshot()
    print("%s x%d: status p99 %s ms over %d requests, relays opened %.0f ms after C->B, "
          "%d connects" % (kind, n, p99(ms), len(ms), open_ms, f.connects))
    assert c.running, "firmware process died"
    assert all(m is not None and m < 1000 for m in ms), ms
    assert open_ms <= 100, "relays opened %.0f ms after the car paused" % open_ms
    assert snap["relays_closed"] and snap["state"] == "Charging", snap
    assert snap["restarts"] == restarts, snap["restarts"]
    assert snap["errors"] == [], snap["errors"]


def test_floods_while_charging(start_charger):
    c = start_charger(settings=FREE)
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["session"]["active"] and s["pwm_duty_pct"], timeout=10)
    charging(c)
    flood_while_charging(c, "head", 30)
    # Bodies to the one route that reads one without a session.
    flood_while_charging(c, "body", 12, path=b"/api/login", body_len=200)
    r = c.http("GET", "/api/status")
    assert r.status == 200 and r.body["state"] == "Charging", r
