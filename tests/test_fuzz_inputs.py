"""Seeded fuzzing of a running charger's network inputs: the web server (raw HTTP over
sockets), the simulator socket (JSON lines) and OCPP from a hostile central system
(mutated OCPP-J frames and broken WebSocket framing). One firmware process per test.

The oracle, as for every input (ARCHITECTURE §7, "bad input gets a clear error and
changes nothing; never crashes a task"): each request gets a well-formed answer that is
never a 500 or an "internal error", the process keeps running (same pid), the supervisor
restarted no task (snapshot `restarts`), the safety invariants of IEC 61851-1 hold while
charging (relays closed only in state C with a session and at least 6 A offered), and a
normal request is still answered afterwards.

The generator is unix_port_tests/fuzz.py (the same one the unix-port fuzz tests use):
FUZZ_SEED picks the run, FUZZ_N the number of cases per test; a failure names its case.
"""

import json
import socket
import sys
import time
from pathlib import Path

import csms
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unix_port_tests"))
import fuzz  # noqa: E402  (the shared seeded generator)


def _replay(target, i):
    return f"{target} case {i} (replay: FUZZ_SEED=0x{fuzz.seed():08x} FUZZ_N={i + 1})"


def assert_no_dead_task(c):
    """No task of the firmware died outside the supervisor (asyncio prints this line for
    a task that ended with an exception nobody awaited)."""
    log = c.log_path.read_text(errors="replace")
    assert "Task exception wasn't retrieved" not in log, log[log.find("Task exception"):][:800]


def assert_safe(snap):
    """IEC 61851-1 §6.3 / DEVELOPERS.md: relays closed only in state C, with a session,
    offering at least 6 A and no more than the binding limit."""
    if snap["relays_closed"]:
        assert snap["cp_state"] in ("C", "D"), snap
        assert snap["session"]["active"], snap
        assert snap["offered_a"] >= 6, snap
    assert snap["offered_a"] <= snap["limit_a"] + 1e-6, snap


# ---- HTTP -------------------------------------------------------------------------------------
def _http_raw(port, data, timeout=5.0):
    """Sends data, half-closes, reads until the server closes: the bytes it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed before taking everything
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return out
            out += chunk
        raise AssertionError(f"connection not closed within {timeout} s; got {out[:200]!r}")


def _statuses(out):
    """Status codes of the responses in out; AssertionError when one is badly framed."""
    codes = []
    while out:
        head, sep, rest = out.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), out[:200]
        code = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if code != 100:
            codes.append(code)
        else:
            length = 0
        if length and (not rest or rest[:9] == b"HTTP/1.1 "):
            length = 0  # a HEAD answer: no body
        out = rest[length:]
    return codes


def _http_samples(cookie):
    ck = b"Cookie: " + cookie + b"\r\n"
    js = b"Content-Type: application/json\r\n"

    def req(line, body=b"", extra=b""):
        head = line + b"\r\nHost: 127.0.0.1\r\n" + extra
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    return [
        req(b"GET /api/status HTTP/1.1"),
        req(b"GET /api/history?limit=5 HTTP/1.1"),
        req(b"GET /api/faults HTTP/1.1"),
        req(b"GET /api/config HTTP/1.1", extra=ck),
        req(b"PUT /api/config HTTP/1.1",
            b'{"max_current_a": 16, "language": "de", "lb_enabled": false, "charging_mode": "B"}',
            ck + js),
        req(b"POST /api/login HTTP/1.1", b'{"password": "wrong-one"}', js),
        req(b"PUT /api/time HTTP/1.1", b'{"epoch_s": 1700000000}', ck + js),
        req(b"PUT /api/cards/1 HTTP/1.1", b'{"uid": "04A1B2C3"}', ck + js),
        req(b"DELETE /api/cards/1 HTTP/1.1", b"", ck),
        req(b"POST /api/session/stop HTTP/1.1", b"{}", ck + js),
        req(b"POST /api/upgrade?md5=00112233445566778899aabbccddeeff HTTP/1.1",
            b"EVPB\x01\x01\x40\x00EVPLUS" + b"\x00" * 60,
            ck + b"Content-Type: application/octet-stream\r\n"),
        req(b"GET /index.html HTTP/1.1", extra=b"Accept-Encoding: gzip\r\n"),
        req(b"GET /lang/it.json HTTP/1.1"),
    ]


_HTTP_TOKENS = [b"\r\n", b"\r\n\r\n", b":", b" ", b"%", b"/..", b"?", b"&", b"{", b"}", b'"',
                b"\x00",
                b"\xff", b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n",
                b"Expect: 100-continue\r\n", b"Origin: http://evil\r\n", b"null", b"[]", b"1e999"]


def test_http_server_under_seeded_hostile_requests(charger):
    """RFC 9112 framing and the JSON API under mutated requests (logged in and not)."""
    st, _h, _b = charger.http("POST", "/api/login", json={"password": charger.password})
    assert st == 200
    cookie = "; ".join(f"{k}={v}" for k, v in charger.cookies.items()).encode()
    samples = _http_samples(cookie)
    r = fuzz.rng_for("host.http")
    n = fuzz.count(1200)
    seen = {}
    t0 = time.monotonic()
    for i in range(n):
        data = samples[i] if i < len(samples) else fuzz.mutate(r, r.pick(samples), samples,
                                                               _HTTP_TOKENS, max_rounds=4)
        try:
            codes = _statuses(_http_raw(charger.http_port, data))
            assert 500 not in codes, codes
            if i < len(samples):
                assert codes and codes[0] < 500, codes
        except AssertionError as e:
            raise AssertionError(f"{_replay('host.http', i)}: {data[:300]!r}: {e}") from None
        for c in codes:
            seen[c] = seen.get(c, 0) + 1
        if i % 50 == 49:
            assert charger.proc.poll() is None, _replay("host.http", i)
    took = time.monotonic() - t0
    print(f"host.http: {n} requests in {took:.1f} s, FUZZ_SEED=0x{fuzz.seed():08x}; "
          f"answers: {sorted(seen.items())}")
    st, _h, body = charger.http("GET", "/api/status")
    assert st == 200 and body["state"], body
    snap = charger.snapshot()
    assert snap["restarts"] == {}, snap["restarts"]
    assert_safe(snap)
    assert_no_dead_task(charger)
    log = charger.log_path.read_text(errors="replace")
    assert "httpd: " not in log, [line for line in log.splitlines() if "httpd: " in line][:5]


# ---- the simulator socket ----------------------------------------------------------------------
_SIM_SAMPLES = [
    {"op": "snapshot"},
    {"op": "events", "since": 0},
    {"op": "ev", "state": "B", "diode": True, "max_a": 16},
    {"op": "ev", "draw_a": 10, "phases": 3, "diode_v": 0.8},
    {"op": "cable", "pp_ohms": 220},
    {"op": "grid", "volts": [230, 231, 229.5], "hz": 50},
    {"op": "temp", "relay_c": 40, "socket_c": 30, "env_c": 20},
    {"op": "card", "uid": "04A1B2C3D4E5F6", "kind": "CPU", "ms": 300},
    {"op": "button", "ms": 100},
    {"op": "wifi", "up": False, "networks": [{"ssid": "HOME", "rssi": -55, "auth": "wpa2"}]},
    {"op": "fault", "name": "pe", "active": False},
    {"op": "fault", "name": "relay_weld", "active": False, "relay": 1},
    {"op": "pilot", "offset_v": 0.3, "gen_pos_v": 12.2, "gen_neg_v": -11.8},
]
_SIM_KEYS = ["op", "state", "diode", "max_a", "draw_a", "phases", "diode_v", "pp_ohms", "volts",
             "hz", "relay_c", "socket_c", "env_c", "uid", "kind", "ms", "up", "networks",
             "ap_clients", "name", "active", "relay", "since", "offset_v", "gen_pos_v", "gen_neg_v"]


def _sim_line(r, i):
    if i < len(_SIM_SAMPLES):
        return json.dumps(_SIM_SAMPLES[i]).encode()
    base = r.pick(_SIM_SAMPLES)
    if r.chance(1, 2):
        v = fuzz.mutate_value(r, base, _SIM_KEYS)
        if isinstance(v, dict) and v.get("name") == "sensor_bug":
            v["name"] = "pe"  # kills the protection task on purpose (docs/simulator.md)
        line = json.dumps(v).encode()
    else:
        line = fuzz.mutate(r, json.dumps(base).encode(), None,
                           [b'"', b"{", b"}", b"[", b",", b":", b"null", b"1e999", b"\xff"])
    line = line.replace(b"\n", b" ").replace(b"\r", b" ")[:4000]
    return line if line.strip() else b"{}"


def test_sim_socket_under_seeded_hostile_lines(charger):
    """docs/simulator.md: one reply line per request line, valid JSON with `ok` and
    `t_us`, never an internal error; the charger keeps running its tasks."""
    r = fuzz.rng_for("host.sim")
    n = fuzz.count(1500)
    with socket.create_connection(("127.0.0.1", charger.sim_port), timeout=10) as s:
        rd = s.makefile("rb")
        for i in range(n):
            line = _sim_line(r, i)
            try:
                s.sendall(line + b"\n")
                reply = rd.readline()
                assert reply.endswith(b"\n"), reply
                obj = json.loads(reply)
                assert isinstance(obj["ok"], bool) and isinstance(obj["t_us"], int), obj
                if not obj["ok"]:
                    assert isinstance(obj["error"], str), obj
                    assert "internal error" not in obj["error"], obj
                if i < len(_SIM_SAMPLES):
                    assert obj["ok"], obj
            except (AssertionError, ValueError, OSError) as e:
                raise AssertionError(f"{_replay('host.sim', i)}: {line[:300]!r}: {e!r}") from None
        rd.close()
    print(f"host.sim: {n} lines, FUZZ_SEED=0x{fuzz.seed():08x}")
    snap = charger.snapshot()
    assert snap["restarts"] == {}, snap["restarts"]
    assert_safe(snap)
    assert charger.proc.poll() is None
    assert charger.http("GET", "/api/status").status == 200
    assert_no_dead_task(charger)


# ---- OCPP from a hostile central system ---------------------------------------------------------
# Central-system CALLs, valid; mutated from here. Reset, UpdateFirmware and GetDiagnostics
# are left out: a valid one legitimately reboots the charger or reaches out to the network.
_OCPP_CALLS = [
    ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "300"}),
    ("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "60"}),
    ("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]}),
    ("TriggerMessage", {"requestedMessage": "Heartbeat"}),
    ("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}),
    ("DataTransfer", {"vendorId": "Cabur", "messageId": "Status", "data": "x"}),
    ("GetLocalListVersion", {}),
    ("SendLocalList", {"listVersion": 2, "updateType": "Full",
                       "localAuthorizationList": [
                           {"idTag": "AA11", "idTagInfo": {"status": "Accepted"}}]}),
    ("ReserveNow", {"connectorId": 1, "expiryDate": "2035-01-01T00:00:00Z", "idTag": "T1",
                    "reservationId": 9}),
    ("CancelReservation", {"reservationId": 9}),
    ("ClearCache", {}),
    ("RemoteStartTransaction", {"idTag": "04A1B2C3", "connectorId": 1}),
    ("GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"}),
    ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 5, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative", "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}]}}}),
    ("ClearChargingProfile", {"id": 5}),
    ("ChangeAvailability", {"connectorId": 0, "type": "Operative"}),
]
_OCPP_KEYS = sorted({k for _a, p in _OCPP_CALLS for k in p} | {
    "chargingProfilePurpose", "chargingSchedule", "limit", "startPeriod", "transactionId"})
_SAFE_ACTIONS = [a for a, _p in _OCPP_CALLS] + [
    "", "FooBar", "x" * 300, "Heartbeat", "BootNotification"]


def _ocpp_frame(r, i):
    """(text, message id we expect an answer for or None)."""
    mid = "f%d" % i
    if i < len(_OCPP_CALLS):
        action, payload = _OCPP_CALLS[i]
        return json.dumps([2, mid, action, payload]), mid
    action, payload = r.pick(_OCPP_CALLS)
    k = r.below(4)
    if k == 0:  # wrong types, unknown or missing fields, huge values
        msg = [2, mid, action, fuzz.mutate_value(r, payload, _OCPP_KEYS)]
    elif k == 1:  # wrong frame structure
        msg = fuzz.mutate_value(r, [2, mid, action, payload], _OCPP_KEYS)
        if isinstance(msg, list) and len(msg) > 2 and msg[0] == 2 and isinstance(msg[2], str) \
                and msg[2] not in _SAFE_ACTIONS:
            msg[2] = r.pick(_SAFE_ACTIONS)
    elif k == 2:  # an unknown or odd action
        msg = [2, mid, r.pick(_SAFE_ACTIONS), payload]
    else:  # broken JSON text
        text = fuzz.as_text(fuzz.mutate(r, json.dumps([2, mid, action, payload]).encode(), None,
                                        [b'"', b"[", b"]", b"{", b"}", b",", b"null", b"1e999"]))
        return text, None
    try:
        text = json.dumps(msg, allow_nan=False)
    except ValueError:  # Infinity: not JSON, refused as a whole (id "-1")
        return json.dumps(msg), None
    want = (mid if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and msg[1] == mid
            and isinstance(msg[2], str) and msg[2] and isinstance(msg[3], dict) else None)
    return text, want


_MAX_MESSAGE = 4096  # the charger's WsClient max_message (evse/ocpp/service.py)
_MAX_SKIP = 65536  # ... and max_skip: longer than this, a message closes the connection

# Broken WebSocket framing (RFC 6455 §5): each makes the charger close with 1002/1007/1009.
_BAD_FRAMES = [
    b"\x83\x02hi",  # reserved opcode 3
    b"\xc1\x02hi",  # RSV1 without an extension
    b"\x81\x82abcdhi",  # a masked server frame
    b"\x89\x7e\x00\x80" + b"p" * 128,  # a ping over 125 bytes
    b"\x81\x7f\x00\x00\x00\x01\x00\x00\x00\x00",  # 4 GB announced
    b"\x81\x03\xff\xfe\xfd",  # text that is not UTF-8
    b"\x00\x02hi",  # a continuation with no message
]



def _send_closing(cs, text):
    try:
        cs.send_raw("CP1", text)
    except websockets.ConnectionClosed:
        pass  # the charge point closed while it was still going out


def _drops_and_reconnects(cs, send, what):
    k = len(cs.connections)
    send()
    cs.wait_for(lambda: len(cs.connections) > k and cs.connected("CP1"), 20,
                f"reconnected after {what}")


def _send_call(cs, text, want):
    """Sends one frame; the answer to `want` (None: none awaited), or "no room" when the
    charger refused a large frame for want of a heap block right now (wsclient closes with
    1009, or the parser answers InternalError without the id it could not read)."""
    closes = len(cs.closes)
    nrep = len(cs.replies("CP1"))
    cs.send_raw("CP1", text)
    if want is None:
        return None
    big = len(text) > 2048

    def answer():
        got = cs.replies("CP1")
        m = next((m for m in got if m[1] == want), None)
        if m is None and big:
            if ("CP1", 1009) in cs.closes[closes:] or any(
                    x[0] == 4 and x[1] == "-1" and x[2] == "InternalError" for x in got[nrep:]):
                return "no room"
        return m

    return cs.wait_for(answer, 15, f"answer to {want}")


def test_ocpp_under_a_hostile_central_system(cs, ocpp):
    """OCPP-J 1.6 §4 (RPC framework) and RFC 6455: mutated CALLs each get exactly one
    CALLRESULT or CALLERROR; broken JSON and answers to nothing change nothing; broken
    WebSocket framing closes the connection and the charger reconnects to the (proper)
    central system; all the while an EV charges safely."""
    c = ocpp(settings={"auth_mode": "free"},
             config={"RetryBackOffWaitMinimum": 1, "RetryBackOffRandomRange": 0})
    pid = c.proc.pid
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"], timeout=15)
    cs.wait_for(lambda: cs.calls("CP1", "StartTransaction"), 15, "StartTransaction")
    r = fuzz.rng_for("host.ocpp")
    n = fuzz.count(400)
    answered = no_room = 0
    t0 = time.monotonic()
    for i in range(n):
        text, want = _ocpp_frame(r, i)
        try:
            cs.wait_connected("CP1", 20)
            size = len(text.encode())
            if size > _MAX_SKIP:  # refused from its header: 1009, reconnect
                _drops_and_reconnects(cs, lambda t=text: _send_closing(cs, t), "oversized")
                assert ("CP1", 1009) in cs.closes[-3:], cs.closes[-3:]
                continue
            if size > _MAX_MESSAGE:  # dropped, a CALL answered by its id, the connection kept
                k = len(cs.connections)
                ans = _send_call(cs, text, want)
                if want is not None:
                    assert ans[0] == 4 and ans[2] == "GenericError", ans
                    answered += 1
                assert len(cs.connections) == k and cs.connected("CP1"), "connection kept"
                continue
            ans = _send_call(cs, text, want)
            if ans == "no room":
                no_room += 1
            elif ans is not None:
                assert ans[0] in (3, 4), ans
                if ans[0] == 4:
                    assert ans[2] != "InternalError", ans
                answered += 1
            if i % 10 == 9:
                assert_safe(c.snapshot())
            if i % 60 == 59:  # broken framing now and then: the connection goes, comes back
                raw = _BAD_FRAMES[(i // 60) % len(_BAD_FRAMES)]
                _drops_and_reconnects(cs, lambda raw=raw: cs.send_bytes("CP1", raw), repr(raw[:4]))
        except AssertionError as e:
            raise AssertionError(f"{_replay('host.ocpp', i)}: {text[:300]!r}: {e}") from None
    took = time.monotonic() - t0
    for raw in _BAD_FRAMES[4:]:  # the rest of the framing cases, back to back
        _drops_and_reconnects(cs, lambda raw=raw: cs.send_bytes("CP1", raw), repr(raw[:4]))
    print(f"host.ocpp: {n} frames in {took:.1f} s ({answered} CALLs answered, {no_room} "
          f"refused for memory), {len(cs.connections)} connections, heap free "
          f"{c.snapshot()['heap_free']} B, FUZZ_SEED=0x{fuzz.seed():08x}")
    # Still the same process, no task restarted, safe, and a proper central system works.
    assert c.proc.poll() is None and c.proc.pid == pid
    snap = c.snapshot()
    assert snap["restarts"] == {}, snap["restarts"]
    assert_safe(snap)
    assert cs.call("CP1", "GetConfiguration", key=["HeartbeatInterval"])["configurationKey"]
    mark = cs.mark()
    assert cs.call("CP1", "TriggerMessage", requestedMessage="StatusNotification",
                   connectorId=1)["status"] == "Accepted"
    csms.wait_status(cs, "CP1", 1, since=mark, timeout=10)
    assert csms.ocpp_view(c)["connected"]
    assert_no_dead_task(c)
