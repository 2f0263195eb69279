"""The simulator control socket of the unix_sim board, driven against the real firmware
(docs/simulator.md). Every op and its error replies; every reply carries t_us."""

import json
import socket

import pytest

LINE_TIMEOUT_S = 5.0  # sim_socket.py: a started line must end within this
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def _raw(c, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", c.sim_port), timeout=timeout)
    return s, s.makefile("rb")


def _reply(reader):
    line = reader.readline()
    assert line, "connection closed without a reply"
    assert line.endswith(b"\n")
    return json.loads(line)


def _ask_raw(c, raw):
    s, r = _raw(c)
    try:
        s.sendall(raw)
        return _reply(r)
    finally:
        r.close()
        s.close()


def _assert_error(reply, *words):
    assert reply["ok"] is False, reply
    assert isinstance(reply["t_us"], int), reply
    for w in words:
        assert w in reply["error"], reply


# -- the contract ------------------------------------------------------------------------

def test_snapshot_has_the_contract_fields(charger):
    s = charger.sim("snapshot")
    for key in ("cp_state", "pwm_duty_pct", "offered_a", "relays_closed", "lock", "errors",
                "display", "led_belt", "leds", "session", "wifi_mode", "t_us"):
        assert key in s, key
    assert s["cp_state"] == "A"
    assert s["lock"] in ("locked", "unlocked", "none")
    assert s["wifi_mode"] in ("ap", "client")
    assert set(s["session"]) >= {"active", "energy_kwh", "id_tag", "start_mode"}
    assert set(s["led_belt"]) == {"colour", "pattern"}
    assert set(s["leds"]) == {"wifi", "plug", "charging", "fault"}
    assert isinstance(s["heap_free"], int) and s["heap_free"] > 0


def test_t_us_is_one_monotonic_clock(charger):
    ts = [charger.sim("snapshot")["t_us"] for _ in range(5)]
    ts.append(charger.sim("events", since=0)["t_us"])
    assert ts == sorted(ts)
    assert ts[0] > 0


@pytest.mark.parametrize("op, fields, key", [
    ("ev", {"state": "B", "diode": True, "max_a": 16}, "ev"),
    ("ev", {"draw_a": 20, "phases": 3, "diode_v": 0.8}, "ev"),
    ("ev", {"draw_a": None}, "ev"),
    ("cable", {"pp_ohms": 220}, "pp_ohms"),
    ("cable", {"pp_ohms": None}, "pp_ohms"),
    ("grid", {"volts": [230, 231, 229.5], "hz": 50}, "grid"),
    ("temp", {"relay_c": 40, "socket_c": 30, "env_c": 20}, "temp"),
    ("temp", {"env_c": None}, "temp"),
    ("card", {"uid": "04A1B2C3"}, "card"),
    ("card", {"uid": "04A1B2C3D4E5F6", "kind": "CPU", "ms": 500}, "card"),
    ("button", {"ms": 200}, "until_us"),
    ("wifi", {"up": False, "networks": [{"ssid": "HOME", "rssi": -55, "auth": "wpa2"}]}, "wifi"),
    ("wifi", {"ap_clients": 1}, "wifi"),
    ("events", {"since": 0}, "events"),
    ("events", {}, "events"),
])
def test_each_op_replies_ok_with_t_us(charger, op, fields, key):
    r = charger.sim(op, **fields)
    assert r["ok"] is True
    assert isinstance(r["t_us"], int)
    assert key in r


@pytest.mark.parametrize("name", [
    "rcd_ac", "rcd_dc", "pe", "relay_weld", "relay_stuck_open", "lock", "fan", "cp_short",
    "diode", "internal_meter", "phase_rotation", "rfid_reader",
])
def test_each_fault_switches_on_and_off(charger, name):
    on = charger.sim("fault", name=name, active=True)
    assert isinstance(on["t_us"], int)
    assert any(f.startswith(name) for f in on["faults"])
    off = charger.sim("fault", name=name, active=False)
    assert not any(f.startswith(name) for f in off["faults"])
    assert off["t_us"] >= on["t_us"]


def test_relay_fault_names_its_relay(charger):
    weld = charger.sim("fault", name="relay_weld", active=True, relay=2)
    assert "relay_weld:2" in weld["faults"]
    stuck = charger.sim("fault", name="relay_stuck_open", active=True)
    assert "relay_stuck_open:1" in stuck["faults"]


def test_ev_state_moves_the_pilot(charger):
    charger.sim("ev", state="B")
    s = charger.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    assert s["plant"]["ev"]["state"] == "B"
    charger.sim("ev", state="A")
    charger.wait_for(lambda s: s["cp_state"] == "A", WAIT_S)


def test_cp_short_reads_as_state_e(charger):
    charger.sim("fault", name="cp_short", active=True)
    s = charger.wait_for(lambda s: s["cp_hi_mv"] == 0, WAIT_S)
    assert s["cp_lo_mv"] == 0


def _snapshots_while(c, held):
    """Polls snapshots until held(snapshot) is false; returns them all."""
    seen = []
    c.wait_for(lambda s: seen.append(s) or not held(s), WAIT_S)
    return seen


# A snapshot reads the plant while it is built, a little after its t_us: only the ones
# taken well before the end of a hold must still show it.
BUILD_US = 1_000_000


def test_button_is_released_by_the_plant(charger):
    r = charger.sim("button", ms=2000)
    until = r["until_us"]
    assert until == r["t_us"] + 2_000_000
    seen = _snapshots_while(charger, lambda s: s["plant"]["button_pressed"])
    for s in seen:  # on the firmware's clock: pressed for its 2 s, not a moment longer
        if s["t_us"] < until - BUILD_US:
            assert s["plant"]["button_pressed"] is True, (s["t_us"], until)
        if s["t_us"] >= until:
            assert s["plant"]["button_pressed"] is False, (s["t_us"], until)


def test_card_leaves_the_reader(charger):
    r = charger.sim("card", uid="04a1b2c3", ms=2000)
    until = r["card"]["until_us"]
    assert r["card"] == {"uid": "04A1B2C3", "kind": "M1", "until_us": r["t_us"] + 2_000_000}
    seen = _snapshots_while(charger, lambda s: s["plant"]["card"] is not None)
    for s in seen:  # on the firmware's clock: on the reader until its time is up
        if s["t_us"] < until - BUILD_US:
            assert s["plant"]["card"] == {"uid": "04A1B2C3", "kind": "M1"}, (s["t_us"], until)


def test_events_since_filters_by_t_us(charger):
    first = charger.events(0)
    assert all(set(e) >= {"t_us", "what", "value"} for e in first)
    now = charger.sim("snapshot")["t_us"]
    later = charger.events(now)
    assert all(e["t_us"] >= now for e in later)
    ts = [e["t_us"] for e in first]
    assert ts == sorted(ts)


def test_rcd_trip_latency_on_one_clock(start_charger):
    c = start_charger(settings={"auth_mode": "free"})
    c.sim("cable", pp_ohms=220)
    c.sim("ev", state="B", max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("ev", state="C")
    c.wait_for(lambda s: s["relays_closed"], WAIT_S)
    r = c.sim("fault", name="rcd_dc", active=True)
    opened = [e for e in c.events(r["t_us"]) if e["what"] == "relays" and e["value"] is False]
    assert opened, "relays opened"
    assert 0 <= opened[0]["t_us"] - r["t_us"] < 10_000  # synchronous, as an IRQ
    assert c.snapshot()["relays_closed"] is False


# -- error replies -----------------------------------------------------------------------

@pytest.mark.parametrize("raw, words", [
    (b"hello\n", ["not JSON"]),
    (b"{\"op\": \"snapshot\"\n", ["not JSON"]),
    (b"\xff\xfe\n", ["UTF-8"]),
    (b"[\"snapshot\"]\n", ["object"]),
    (b"42\n", ["object"]),
    (b"{}\n", ["missing op"]),
    (b"{\"op\": \"explode\"}\n", ["unknown op"]),
    (b"{\"op\": \"snapshot\", \"extra\": 1}\n", ["unknown field"]),
])
def test_malformed_requests(charger, raw, words):
    _assert_error(_ask_raw(charger, raw), *words)
    assert charger.snapshot()["ok"]


@pytest.mark.parametrize("req, word", [
    ({"op": "ev", "state": "E"}, "state"),
    ({"op": "ev", "max_a": True}, "max_a"),
    ({"op": "ev", "max_a": "16"}, "max_a"),
    ({"op": "ev", "max_a": 500}, "max_a"),
    ({"op": "ev", "diode": 1}, "diode"),
    ({"op": "ev", "phases": 2}, "phases"),
    ({"op": "cable"}, "pp_ohms"),
    ({"op": "cable", "pp_ohms": "220"}, "pp_ohms"),
    ({"op": "cable", "pp_ohms": False}, "pp_ohms"),
    ({"op": "grid", "volts": [230, 230]}, "volts"),
    ({"op": "grid", "volts": [230, 230, True]}, "volts"),
    ({"op": "grid", "hz": "50"}, "hz"),
    ({"op": "temp", "relay_c": 900}, "relay_c"),
    ({"op": "fault", "name": "gremlins", "active": True}, "name"),
    ({"op": "fault", "name": "pe"}, "active"),
    ({"op": "fault", "name": "pe", "active": 1}, "active"),
    ({"op": "fault", "name": "pe", "active": True, "relay": 1}, "relay"),
    ({"op": "card", "uid": "04A1B2"}, "uid"),
    ({"op": "card", "uid": "XYZ1B2C3"}, "uid"),
    ({"op": "card", "uid": "04A1B2C3", "kind": "NFC"}, "kind"),
    ({"op": "button"}, "ms"),
    ({"op": "button", "ms": True}, "ms"),
    ({"op": "button", "ms": -5}, "ms"),
    ({"op": "wifi", "up": "yes"}, "up"),
    ({"op": "wifi", "networks": [{"ssid": "X"}]}, "networks"),
    ({"op": "events", "since": "0"}, "since"),
])
def test_wrong_fields(charger, req, word):
    reply = charger.request(req)
    _assert_error(reply, word)


def test_huge_line_gets_one_error_and_the_connection_goes_on(charger):
    s, r = _raw(charger)
    try:
        s.sendall(b'{"op": "snapshot", "x": "' + b"y" * 100_000 + b'"}\n')
        _assert_error(_reply(r), "longer than")
        s.sendall(b'{"op": "snapshot"}\n')
        assert _reply(r)["ok"] is True
    finally:
        r.close()
        s.close()


def test_slow_client_times_out(charger):
    s, r = _raw(charger, timeout=LINE_TIMEOUT_S + WAIT_S)
    try:
        t0 = charger.snapshot()["t_us"]  # before the line starts, so before its deadline
        s.sendall(b'{"op": "snap')
        reply = _reply(r)
        _assert_error(reply, "timeout")
        # The reply's t_us is the instant it timed out; asyncio's ms ticks may end a
        # wait up to 1 ms early.
        waited = reply["t_us"] - t0
        assert waited >= LINE_TIMEOUT_S * 1_000_000 - 1_000, waited
        assert r.readline() == b""  # then closed
    finally:
        r.close()
        s.close()
    assert charger.snapshot()["ok"]


def test_blank_lines_get_no_reply(charger):
    s, r = _raw(charger)
    try:
        s.sendall(b"\n\r\n" + b'{"op": "snapshot"}\n')
        assert _reply(r)["ok"] is True
    finally:
        r.close()
        s.close()


def test_client_cap(charger):
    conns = []
    try:
        for _ in range(8):
            conns.append(_raw(charger))
        refused = 0
        for s, r in conns:
            try:
                s.sendall(b'{"op": "events", "since": 0}\n')
            except OSError:
                pass  # refused: the server may have closed already; its reply is waiting
            reply = _reply(r)
            if not reply["ok"]:
                assert "too many clients" in reply["error"]
                refused += 1
        assert refused >= 4  # the harness's own connection counts too
    finally:
        for s, r in conns:
            r.close()
            s.close()
    assert charger.snapshot()["ok"]
