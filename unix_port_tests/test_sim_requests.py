# unix_sim board: validation of control-socket requests (a pure function).
import json

import check
from sim_requests import MAX_LINE, RequestError, parse


def _ok(obj):
    return parse(json.dumps(obj).encode())


def _bad(line, *words):
    if not isinstance(line, bytes):
        line = json.dumps(line).encode()
    e = check.raises(RequestError, parse, line)
    msg = str(e)
    for w in words:
        check.true(w in msg, "%r in %r" % (w, msg))
    return msg


def test_good_requests_pass_with_only_their_fields():
    check.eq(_ok({"op": "snapshot"}), {"op": "snapshot"}, "snapshot")
    check.eq(
        _ok({"op": "ev", "state": "C", "diode": True, "max_a": 16, "draw_a": None}),
        {"op": "ev", "state": "C", "diode": True, "max_a": 16, "draw_a": None},
        "ev",
    )
    check.eq(_ok({"op": "cable", "pp_ohms": None}), {"op": "cable", "pp_ohms": None}, "no cable")
    check.eq(_ok({"op": "grid", "volts": [230, 231.5, 0], "hz": 50})["volts"], [230.0, 231.5, 0.0], "volts")
    check.eq(_ok({"op": "temp", "relay_c": 70, "env_c": None})["env_c"], None, "open sensor")
    check.eq(_ok({"op": "fault", "name": "relay_weld", "active": True, "relay": 2})["relay"], 2, "relay")
    check.eq(_ok({"op": "card", "uid": "04a1b2c3"})["uid"], "04A1B2C3", "uid upper-cased")
    check.eq(_ok({"op": "card", "uid": "04A1B2C3D4E5F6", "kind": "CPU"})["kind"], "CPU", "7-byte CPU")
    check.eq(_ok({"op": "button", "ms": 3500})["ms"], 3500, "button")
    nets = _ok({"op": "wifi", "up": False, "networks": [{"ssid": "HOME", "rssi": -60, "auth": "wpa2"}]})
    check.eq(nets["networks"], [("HOME", -60, "wpa2")], "networks")
    check.eq(_ok({"op": "events", "since": 123})["since"], 123, "since")
    check.eq(parse(b'{"op": "snapshot"}'), {"op": "snapshot"}, "bytes in")


def test_not_json_or_not_an_object():
    _bad(b"hello", "not JSON")
    _bad(b"{\"op\": ", "not JSON")
    _bad(b"\xff\xfe{}", "UTF-8")
    _bad([1, 2], "object")
    _bad("snapshot", "object")
    _bad(None, "object")


def test_op_is_required_and_known():
    _bad({}, "missing op")
    _bad({"op": 5}, "missing op")
    _bad({"op": "explode"}, "unknown op", "explode")
    _bad({"op": "x" * 200}, "unknown op")


def test_unknown_and_missing_fields():
    _bad({"op": "snapshot", "verbose": True}, "unknown field", "verbose")
    _bad({"op": "cable"}, "needs pp_ohms")
    _bad({"op": "fault", "name": "pe"}, "needs active")
    _bad({"op": "card"}, "needs uid")
    _bad({"op": "button"}, "needs ms")
    _bad({"op": "wifi", "networks": [{"ssid": "A", "rssi": -1}]}, "needs auth")
    _bad({"op": "wifi", "networks": [{"ssid": "A", "rssi": -1, "auth": "open", "x": 1}]}, "unknown field")


def test_bool_is_not_a_number_and_a_number_is_not_a_bool():
    _bad({"op": "ev", "max_a": True}, "max_a", "number")
    _bad({"op": "cable", "pp_ohms": False}, "pp_ohms")
    _bad({"op": "button", "ms": True}, "ms", "integer")
    _bad({"op": "events", "since": True}, "since")
    _bad({"op": "ev", "diode": 1}, "diode", "true or false")
    _bad({"op": "fault", "name": "pe", "active": "yes"}, "active")
    _bad({"op": "wifi", "up": 0}, "up")


def test_types_and_ranges():
    _bad({"op": "ev", "state": "E"}, "state")
    _bad({"op": "ev", "state": "c"}, "state")
    _bad({"op": "ev", "max_a": -1}, "max_a", "0..80")
    _bad({"op": "ev", "max_a": "16"}, "max_a")
    _bad(b'{"op": "ev", "max_a": 1e400}', "max_a")  # inf
    _bad({"op": "ev", "phases": 2}, "phases")
    _bad({"op": "ev", "asleep": "yes"}, "asleep", "true or false")
    _bad({"op": "ev", "start_min_a": 33}, "start_min_a", "0..32")
    _bad({"op": "ev", "start_min_a": True}, "start_min_a")
    _bad({"op": "ev", "start_s": -1}, "start_s")
    _bad({"op": "ev", "draw_a": 101}, "draw_a")
    _bad({"op": "ev", "follow_s": -1}, "follow_s")
    _bad({"op": "ev", "follow_s": 61}, "follow_s")
    _bad({"op": "ev", "follow_s": "5"}, "follow_s")
    _bad({"op": "ev", "follow_s": True}, "follow_s")
    _bad({"op": "grid", "volts": [230, 230]}, "volts", "3")
    _bad({"op": "grid", "volts": [230, 230, "230"]}, "volts[2]")
    _bad({"op": "grid", "volts": [230, 230, True]}, "volts[2]")
    _bad({"op": "grid", "volts": 230}, "volts")
    _bad({"op": "grid", "hz": 0}, "hz")
    _bad({"op": "temp", "relay_c": 500}, "relay_c")
    _bad({"op": "fault", "name": "gremlins", "active": True}, "name")
    _bad({"op": "fault", "name": "pe", "active": True, "relay": 1}, "relay")
    _bad({"op": "fault", "name": "relay_weld", "active": True, "relay": 3}, "relay")
    _bad({"op": "fault", "name": "pe", "active": True, "times": 1}, "times")
    _bad({"op": "fault", "name": "sensor_bug", "active": False, "times": 1}, "times")
    _bad({"op": "fault", "name": "sensor_bug", "active": True, "times": 0}, "times")
    _bad({"op": "card", "uid": "04A1B2"}, "uid", "4, 7 or 10")
    _bad({"op": "card", "uid": "04A1B2CZ"}, "uid", "hex")
    _bad({"op": "card", "uid": 12345678}, "uid")
    _bad({"op": "card", "uid": "04A1B2C3", "kind": "DESFire"}, "kind")
    _bad({"op": "button", "ms": 0}, "ms")
    _bad({"op": "button", "ms": 2.5}, "ms", "integer")
    _bad({"op": "wifi", "networks": "HOME"}, "networks")
    _bad({"op": "wifi", "networks": [{"ssid": "", "rssi": -60, "auth": "open"}]}, "ssid")
    _bad({"op": "wifi", "networks": [{"ssid": "A", "rssi": 10, "auth": "open"}]}, "rssi")
    _bad({"op": "wifi", "networks": [{"ssid": "A", "rssi": -60, "auth": "open"}] * 33}, "at most")
    _bad({"op": "events", "since": -1}, "since")


def test_line_length_cap():
    line = b'{"op": "snapshot", "pad": "' + b"x" * MAX_LINE + b'"}'
    _bad(line, "longer than")


def test_pilot_op_fields_are_checked():
    check.eq(_ok({"op": "pilot", "offset_v": 0.6, "gen_pos_v": 12.6, "gen_neg_v": -11.4}),
             {"op": "pilot", "offset_v": 0.6, "gen_pos_v": 12.6, "gen_neg_v": -11.4}, "pilot")
    check.eq(_ok({"op": "pilot"}), {"op": "pilot"}, "no field: a view")
    for field, bad in (("offset_v", 3.01), ("offset_v", -3.5), ("gen_pos_v", 9.9),
                       ("gen_pos_v", 14.1), ("gen_neg_v", -9.0), ("gen_neg_v", 12)):
        _bad({"op": "pilot", field: bad}, field, "within")
    for bad in (True, None, "0.6", [0.6]):
        _bad({"op": "pilot", "offset_v": bad}, "offset_v", "number")
    for text in (b'{"op": "pilot", "offset_v": NaN}', b'{"op": "pilot", "offset_v": Infinity}'):
        check.raises(RequestError, parse, text)
    _bad({"op": "pilot", "cp_offset_v": 0.6}, "unknown field")


def test_ev_gives_up_after():
    check.eq(_ok({"op": "ev", "gives_up_after": 5})["gives_up_after"], 5, "a count")
    check.eq(_ok({"op": "ev", "gives_up_after": None})["gives_up_after"], None, "never")
    _bad({"op": "ev", "gives_up_after": 0}, "gives_up_after", "1..1000")
    _bad({"op": "ev", "gives_up_after": 2.5}, "gives_up_after", "integer")
    _bad({"op": "ev", "gives_up_after": True}, "gives_up_after")
    _bad({"op": "ev", "gives_up_after": "5"}, "gives_up_after")
