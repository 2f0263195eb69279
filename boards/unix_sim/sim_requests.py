# Validation of control-socket requests: one line of bytes in, a checked dict out.
# Pure functions (no board, no I/O), so the unix-port tests drive them directly.
#
# Every field is checked for type and range: a bool is not a number, lists have their
# exact length, strings have a length cap, unknown ops and unknown fields are refused.
import json

import sim_plant

MAX_LINE = 4096  # bytes per request line, newline excluded


class RequestError(ValueError):
    pass


def _is_number(v):
    return type(v) is not bool and isinstance(v, (int, float))


def _number(lo, hi, null=False):
    def check(name, v):
        if v is None and null:
            return None
        if not _is_number(v):
            raise RequestError("%s must be a number%s" % (name, " or null" if null else ""))
        if not lo <= v <= hi:  # also refuses NaN and inf
            raise RequestError("%s must be within %s..%s" % (name, lo, hi))
        return v

    return check


def _int(lo, hi):
    def check(name, v):
        if type(v) is not int:
            raise RequestError("%s must be an integer" % name)
        if not lo <= v <= hi:
            raise RequestError("%s must be within %d..%d" % (name, lo, hi))
        return v

    return check


def _int_choice(*values):
    def check(name, v):
        if type(v) is not int or v not in values:
            raise RequestError("%s must be one of %s" % (name, ", ".join(str(x) for x in values)))
        return v

    return check


def _int_or_null(lo, hi):
    check = _int(lo, hi)

    def check_or_null(name, v):
        return None if v is None else check(name, v)

    return check_or_null


def _bool(name, v):
    if type(v) is not bool:
        raise RequestError("%s must be true or false" % name)
    return v


def _choice(*values):
    def check(name, v):
        if type(v) is not str or v not in values:
            raise RequestError("%s must be one of %s" % (name, ", ".join(values)))
        return v

    return check


def _string(max_len, min_len=1):
    def check(name, v):
        if type(v) is not str or not min_len <= len(v) <= max_len:
            raise RequestError("%s must be a string of %d..%d characters" % (name, min_len, max_len))
        return v

    return check


def _volts(name, v):
    if type(v) is not list or len(v) != 3:
        raise RequestError("%s must be a list of 3 numbers (V per phase)" % name)
    check = _number(0, 500)
    return [float(check("%s[%d]" % (name, i), x)) for i, x in enumerate(v)]


def _uid(name, v):
    if type(v) is not str or len(v) not in (8, 14, 20):
        raise RequestError("%s must be 4, 7 or 10 bytes in hex (8, 14 or 20 digits)" % name)
    try:
        bytes.fromhex(v)
    except ValueError:
        raise RequestError("%s must be hex digits" % name)
    return v.upper()


_SSID = _string(32)
_RSSI = _int(-120, 0)
_AUTH = _string(16)
_MAX_NETWORKS = 32


def _networks(name, v):
    if type(v) is not list or len(v) > _MAX_NETWORKS:
        raise RequestError("%s must be a list of at most %d networks" % (name, _MAX_NETWORKS))
    out = []
    for i, n in enumerate(v):
        where = "%s[%d]" % (name, i)
        if type(n) is not dict:
            raise RequestError("%s must be an object {ssid, rssi, auth}" % where)
        for key in n:
            if key not in ("ssid", "rssi", "auth"):
                raise RequestError("%s has an unknown field %r" % (where, key))
        for key in ("ssid", "rssi", "auth"):
            if key not in n:
                raise RequestError("%s needs %s" % (where, key))
        out.append(
            (_SSID(where + ".ssid", n["ssid"]), _RSSI(where + ".rssi", n["rssi"]), _AUTH(where + ".auth", n["auth"]))
        )
    return out


# op -> {field: (checker, required)}
OPS = {
    "snapshot": {},
    "ev": {
        "state": (_choice("A", "B", "C", "D"), False),
        "diode": (_bool, False),
        "diode_v": (_number(0, 3), False),
        "max_a": (_number(0, 80), False),
        "draw_a": (_number(0, 100, null=True), False),
        "phases": (_int_choice(1, 3), False),
        "asleep": (_bool, False),
        "start_min_a": (_number(0, 32), False),
        "start_s": (_number(0, 600), False),
        "gives_up_after": (_int_or_null(1, 1000), False),
        "follow_s": (_number(0, 60, null=True), False),
    },
    # The charger's own pilot: the ADC zero error and the generator's levels (V).
    "pilot": {
        "offset_v": (_number(-3, 3), False),
        "gen_pos_v": (_number(10, 14), False),
        "gen_neg_v": (_number(-14, -10), False),
    },
    "cable": {"pp_ohms": (_number(0, 100_000, null=True), True)},
    "grid": {"volts": (_volts, False), "hz": (_number(40, 70), False)},
    "temp": {
        "relay_c": (_number(-50, 200, null=True), False),
        "socket_c": (_number(-50, 200, null=True), False),
        "env_c": (_number(-50, 200, null=True), False),
    },
    "fault": {
        "name": (_choice(*sim_plant.FAULTS), True),
        "active": (_bool, True),
        "relay": (_int(1, 2), False),
        "times": (_int(1, 1000), False),
    },
    "card": {
        "uid": (_uid, True),
        "kind": (_choice("M1", "CPU"), False),
        "ms": (_int(1, 60_000), False),
    },
    "button": {"ms": (_int(1, 60_000), True)},
    "wifi": {
        "networks": (_networks, False),
        "up": (_bool, False),
        "ap_clients": (_int(0, 16), False),
    },
    "can": {"up": (_bool, False), "since": (_int(0, 1 << 62), False)},
    "heap": {},
    "plant": {},
    "events": {"since": (_int(0, 1 << 62), False)},
    # Freezes the main loop for good (a firmware hang): the watchdog has to reset it.
    "stall": {"confirm": (_choice("watchdog"), True)},
}


def parse(line):
    """Checks one request line (bytes, newline stripped). Returns the request as a dict
    with "op" and only the fields given; raises RequestError with a message for the
    client otherwise."""
    if len(line) > MAX_LINE:
        raise RequestError("line longer than %d bytes" % MAX_LINE)
    try:
        text = line.decode("utf-8") if not isinstance(line, str) else line
    except UnicodeError:
        raise RequestError("not UTF-8")
    try:
        req = json.loads(text)
    except ValueError:
        raise RequestError("not JSON")
    if type(req) is not dict:
        raise RequestError("request must be a JSON object")
    op = req.get("op")
    if type(op) is not str:
        raise RequestError("missing op")
    spec = OPS.get(op)
    if spec is None:
        raise RequestError("unknown op %r" % op if len(op) <= 32 else "unknown op")
    out = {"op": op}
    for name, value in req.items():
        if name == "op":
            continue
        field = spec.get(name)
        if field is None:
            raise RequestError("%s: unknown field %r" % (op, name[:32]))
        out[name] = field[0](name, value)
    for name, (check, required) in spec.items():
        if required and name not in out:
            raise RequestError("%s needs %s" % (op, name))
    if op == "fault" and "relay" in out and out["name"] not in sim_plant.RELAY_FAULTS:
        raise RequestError("relay applies only to relay_weld and relay_stuck_open")
    if op == "fault" and "times" in out and (out["name"] != "sensor_bug" or not out["active"]):
        raise RequestError("times applies only to sensor_bug being set")
    return out
