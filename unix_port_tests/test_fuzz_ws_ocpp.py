# Seeded fuzzing of what the central system sends: lib/wsclient.py's handshake response
# and frame decoding (over a scripted stream), then the OCPP-J layer: rpc.decode, the
# link's answers to bad frames, schema.check, isotime.parse, ChangeConfiguration values
# and SetChargingProfile profiles. The oracle: only the documented errors (WsError,
# RpcError, ValueError where a docstring says so), every frame we send back well formed,
# rejected input changes nothing, valid samples round-trip. See fuzz.py for FUZZ_SEED /
# FUZZ_N.
import asyncio
import binascii
import hashlib
import json
import struct

import fuzz
import log
import wsclient
from check import eq, true
from evse.ocpp import isotime, rpc, schema
from evse.ocpp.config import KEYS, Config
from evse.ocpp.link import Link
from evse.ocpp.rpc import RpcError
from evse.ocpp.smart import Smart

_DIR = fuzz.scratch_dir("fuzz_ocpp")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CLOSE_CODES = (1000, 1002, 1003, 1007, 1009)
log.set_level(log.ERROR)  # every refused frame logs a warning: thousands of lines


# ---- a scripted WebSocket server side ---------------------------------------------------------
class _Raw:
    def close(self):
        pass


class _Peer(fuzz.PieceStream):
    """The stream wsclient reads: `data` in pieces of `step`, then EOF; what it writes is
    kept. With `head` set, the data is made from the handshake request when it arrives."""

    def __init__(self, data=b"", step=64, head=None):
        super().__init__(data, step)
        self.head = head
        self.s = _Raw()

    def write(self, b):
        if self.head is not None and not self.out:
            text = bytes(b).decode()
            key = text.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0].encode()
            acc = binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)
            self.data = self.head(acc)
        self.out.extend(b)


def frame(op, payload=b"", fin=True, rsv=0, mask=False, length=None, form=None):
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | op
    m = 0x80 if mask else 0
    if form is None:
        form = 0 if n < 126 else (1 if n < 65536 else 2)
    if form == 0:
        h = bytes((b0, m | (n & 0x7F)))
    elif form == 1:
        h = bytes((b0, m | 126)) + struct.pack(">H", n & 0xFFFF)
    else:
        h = bytes((b0, m | 127)) + struct.pack(">Q", n & 0xFFFFFFFFFFFFFFFF)
    if mask:
        h += b"\x01\x02\x03\x04"
    return h + payload


def _client_frames(out):
    """The frames wsclient sent: every one masked and well framed; [(op, payload)]."""
    res = []
    pos = 0
    while pos < len(out):
        true(pos + 6 <= len(out), "client frame header")
        b0, b1 = out[pos], out[pos + 1]
        true(b1 & 0x80, "client frame masked")
        true(not b0 & 0x70, "client RSV clear")
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = (out[pos] << 8) | out[pos + 1]
            pos += 2
        true(n < 126 or b0 & 0x0F < 8, "control frame short")
        key = out[pos : pos + 4]
        pos += 4
        true(pos + n <= len(out), "client frame payload")
        res.append((b0 & 0x0F, bytes(out[pos + i] ^ key[i & 3] for i in range(n))))
        pos += n
    return res


# ---- wsclient: frames in ---------------------------------------------------------------------
MSGS = ['[2,"1","Heartbeat",{}]', '[3,"a",{"status":"Accepted"}]', "é€" * 30, "x" * 300]


def _frames_case(r, i):
    if i == 0:  # the valid sample: text, fragmented text with a ping inside, binary, pong
        data = (frame(1, MSGS[0]) + frame(1, MSGS[2][:5], fin=False) + frame(9, b"p")
                + frame(0, MSGS[2][5:]) + frame(2, b"\x00\x01") + frame(10, b""))
        return data, 64
    parts = []
    for _ in range(1 + r.below(5)):
        op = r.pick((0, 1, 1, 1, 2, 8, 9, 10, 3, 11, 15))
        if r.chance(1, 3):
            payload = r.bytes(r.pick((0, 1, 2, 3, 125, 126, 200, 511, 513)))
        else:
            payload = r.pick(MSGS).encode()
        if op == 8 and r.chance(1, 2):
            payload = struct.pack(">H", r.pick((1000, 1001, 1005, 1006, 1015, 3000, 0, 65535))) + payload[:10]
        length = None
        if r.chance(1, 6):
            length = r.pick((0, 125, 126, 127, 65535, 65536, 1 << 31, 1 << 63, (1 << 64) - 1))
        parts.append(frame(op, payload, fin=r.chance(4, 5), rsv=r.pick((0, 0, 0, 0x40, 0x10)),
                           mask=r.chance(1, 10), length=length, form=r.pick((None, None, 0, 1, 2))))
    data = b"".join(parts)
    if r.chance(1, 2):
        data = fuzz.mutate(r, data, [frame(1, MSGS[0])], [b"\x81", b"\x88\x02\x03\xe8", b"\x7f", b"\xff"])
    return data, r.pick((1, 2, 3, 64, 4096))


async def _recv_all(ws):
    msgs = []
    err = None
    while True:
        try:
            m = await ws.recv()
        except wsclient.WsError as e:  # kind "closed" too: the documented end of a recv
            err = e
            break
        true(isinstance(m, (str, bytes)), "message type")
        true(len(m.encode() if isinstance(m, str) else m) <= 512, "message over max_message")
        msgs.append(m)
    return msgs, err


def test_fuzz_ws_frames():
    """RFC 6455 §5: any server byte stream ends in messages and one WsError, never another
    exception; our answers (pong, close) are masked, framed, with a standard close code."""
    async def main():
        n = fuzz.count(6000)
        r = fuzz.rng_for("wsclient.frames")
        print("fuzz wsclient.frames: %d cases, FUZZ_SEED=0x%08x" % (n, fuzz.seed()))
        for i in range(n):
            data, step = _frames_case(r, i)
            try:
                ws = wsclient.WsClient(max_message=512, tx_size=256)
                peer = _Peer(data, step)
                ws._s = peer
                msgs, err = await _recv_all(ws)
                true(err is not None, "ended with a WsError")
                for op, payload in _client_frames(peer.out):
                    true(op in (8, 10), "only pong and close sent, got %d" % op)
                    if op == 8 and payload:
                        true(len(payload) >= 2, "close body of %d bytes" % len(payload))
                        code = (payload[0] << 8) | payload[1]
                        true(code in _CLOSE_CODES or code == ws.close_code, "close code %d" % code)
                if i == 0:
                    eq(msgs, [MSGS[0], MSGS[2], b"\x00\x01"], "valid frames round-trip")
                    eq(ws.pongs, 1, "pong counted")
            except Exception as e:
                raise AssertionError("fuzz wsclient.frames case %d: %r on %r, step %d (replay: "
                                     "FUZZ_SEED=0x%08x FUZZ_N=%d)" % (i, e, data[:200], step, fuzz.seed(), i + 1))

    asyncio.run(main())


# ---- wsclient: the handshake response -------------------------------------------------------------
_TOKENS = [b"\r\n", b"\r\n\r\n", b":", b"HTTP/1.1 ", b"101", b"\xff\xfe", b"\xc3",
           b"Sec-WebSocket-Extensions: x\r\n", b"Sec-WebSocket-Protocol: ocpp2.0\r\n"]
_HEAD = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n")


def test_fuzz_ws_handshake():
    """RFC 6455 §4.1: a bad handshake response is a WsError, never another error."""
    real_open = wsclient._open
    state = {}

    async def fake_open(host, port, ssl, server_hostname):
        return state["peer"]

    async def main():
        n = fuzz.count(3000)
        r = fuzz.rng_for("wsclient.handshake")
        print("fuzz wsclient.handshake: %d cases, FUZZ_SEED=0x%08x" % (n, fuzz.seed()))
        for i in range(n):
            sub = None if i == 0 else fuzz.Rng(r.u32())
            def head(acc, sub=sub):
                good = _HEAD % acc
                if sub is None:
                    return good + frame(1, "hello")
                return fuzz.mutate(sub, good, None, _TOKENS) + frame(1, "hello")

            state["peer"] = _Peer(step=1 + (i % 7) * 40, head=head)
            ws = wsclient.WsClient(max_message=512, max_head=256)
            try:
                try:
                    await ws.connect("ws://127.0.0.1:9/ocpp/CP1", protocols=("ocpp1.6",))
                    ok = True
                except wsclient.WsError:
                    ok = False
                    true(not ws.open, "aborted after a refused handshake")
                if i == 0:
                    true(ok, "valid handshake accepted")
                    eq(await ws.recv(), "hello", "frame right behind the head")
                if ok:
                    eq(ws.protocol, "ocpp1.6", "subprotocol")
            except Exception as e:
                raise AssertionError("fuzz wsclient.handshake case %d: %r (replay: FUZZ_SEED=0x%08x "
                                     "FUZZ_N=%d)" % (i, e, fuzz.seed(), i + 1))

    wsclient._open = fake_open
    try:
        asyncio.run(main())
    finally:
        wsclient._open = real_open


# ---- OCPP-J: frames ------------------------------------------------------------------------------
FRAMES = [
    [2, "m1", "Reset", {"type": "Soft"}],
    [2, "m2", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}],
    [2, "m3", "RemoteStartTransaction", {"idTag": "04A1B2C3", "connectorId": 1}],
    [2, "m4", "SetChargingProfile", {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "validFrom": "2024-01-01T00:00:00Z",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z",
                             "duration": 3600, "chargingSchedulePeriod": [
                                 {"startPeriod": 0, "limit": 16}, {"startPeriod": 600, "limit": 10.5,
                                                                   "numberPhases": 1}]}}}],
    [2, "m5", "SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
        {"idTag": "AA", "idTagInfo": {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00+02:00"}}]}],
    [2, "m6", "ReserveNow", {"connectorId": 1, "expiryDate": "2030-01-01T00:00:00.5Z",
                             "idTag": "T", "reservationId": 4}],
    [2, "m7", "GetConfiguration", {"key": ["HeartbeatInterval", "x"]}],
    [2, "m8", "TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1}],
    [2, "m9", "UpdateFirmware", {"location": "http://h/f.bin", "retrieveDate": "2024-05-01T12:00:00Z"}],
    [3, "r1", {"status": "Accepted", "currentTime": "2024-05-01T12:00:00Z", "interval": 300}],
    [4, "r2", "GenericError", "boom", {}],
]
_ACTIONS = [row[0] for row in schema.REQUESTS]
_KEYS = sorted(set(f[0] for row in schema.REQUESTS for f in row[1])) + [
    "chargingSchedule", "chargingSchedulePeriod", "limit", "startPeriod", "idTag"]


def _frame_case(r, i):
    if i < len(FRAMES):
        return json.dumps(FRAMES[i])
    base = r.pick(FRAMES)
    if r.chance(1, 4):
        return fuzz.as_text(fuzz.mutate(r, json.dumps(base).encode(),
                                        [json.dumps(f).encode() for f in FRAMES],
                                        [b'"', b"[", b"]", b"{", b"}", b",", b":", b"null", b"1e999"]))
    msg = fuzz.mutate_value(r, base, _KEYS)
    if isinstance(msg, list) and msg and r.chance(1, 3):
        msg[0] = r.pick((2, 3, 4, True, "2", 2.0, None))
    if isinstance(msg, list) and len(msg) > 2 and r.chance(1, 4):
        msg[2] = r.pick(_ACTIONS + ["", "x" * 5000, "FooBar"])
    return json.dumps(msg)


class _Ws:
    def __init__(self):
        self.sent = []

    async def send(self, text):
        true(isinstance(text, str), "text frame")
        self.sent.append(text)


def test_fuzz_ocpp_frames():
    """OCPP-J §4: every frame is taken, answered with a CALLERROR, or ignored (an answer);
    decode raises RpcError only; schema.check raises RpcError only; nothing else escapes."""
    calls = []

    async def on_call(mid, action, payload):
        calls.append(action)

    async def main():
        ws = _Ws()
        link = Link(ws, on_call)
        link.up = True
        n = fuzz.count(8000)
        r = fuzz.rng_for("ocpp.frames")
        print("fuzz ocpp.frames: %d cases, FUZZ_SEED=0x%08x" % (n, fuzz.seed()))
        for i in range(n):
            text = _frame_case(r, i)
            try:
                ws.sent = []
                link._inbox = []
                try:
                    msg = rpc.decode(text)
                except RpcError as e:
                    msg = None
                    true(isinstance(e.code, str) and isinstance(e.msg_id, str), "error fields")
                    true(0 < len(e.msg_id) <= 36, "echoed id length")
                before = link.bad_frames
                await link._frame(text)
                for t in ws.sent:
                    a = json.loads(t)
                    true(a[0] == 4 and len(a) == 5 and isinstance(a[1], str), "CALLERROR %r" % a)
                if msg is None:
                    eq(link.bad_frames, before + 1, "bad frame counted")
                    eq(link._inbox, [], "nothing queued")
                elif msg[0] == 2:
                    eq(len(link._inbox), 1, "call queued")
                    if msg[2] in _ACTIONS:
                        try:
                            schema.check(msg[2], msg[3], msg[1])
                        except RpcError as e:
                            true(e.code in ("FormationViolation", "OccurenceConstraintViolation",
                                            "TypeConstraintViolation", "PropertyConstraintViolation"),
                                 "schema code %s" % e.code)
                    if i < len(FRAMES):
                        schema.check(msg[2], msg[3], msg[1])  # the valid samples pass
                else:
                    eq(ws.sent, [], "answers are never answered")
            except Exception as e:
                raise AssertionError("fuzz ocpp.frames case %d: %r on %r (replay: FUZZ_SEED=0x%08x "
                                     "FUZZ_N=%d)" % (i, e, text[:300], fuzz.seed(), i + 1))

    asyncio.run(main())


def test_fuzz_isotime():
    """OCPP 1.6 §3.15 date-times: parse raises ValueError only; fmt/parse round-trip."""
    good = "2024-05-01T12:34:56Z"

    def case(r, i):
        if r.chance(1, 3):
            return r.text(r.below(30), "0123456789-T:Zz+.,: \x00é")
        return fuzz.as_text(fuzz.mutate(r, good.encode(), [b"2024-02-29T23:59:60.123456+05:30"],
                                        [b"-", b":", b"T", b"Z", b"+99:99", b"."]))

    def check(s):
        try:
            t = isotime.parse(s)
        except ValueError:
            return
        true(isinstance(t, int), "epoch int")
        eq(isotime.parse(isotime.fmt(t)), t, "fmt/parse round trip")

    fuzz.run("isotime", 6000, case, check)
    r = fuzz.rng_for("isotime.rt")
    for _ in range(500):
        t = r.u32() * 2 - (1 << 31)
        eq(isotime.parse(isotime.fmt(t)), t, "round trip of %d" % t)


# ---- OCPP: values the handlers store -----------------------------------------------------------
def test_fuzz_change_configuration():
    """OCPP 1.6 §5.3/§9: any key/value gets Accepted, Rejected or NotSupported; a refused
    value changes nothing in memory or on flash; what is stored loads back the same."""
    path = _DIR + "/cfg.json"
    fuzz.remove_quietly(path)
    cfg = Config(path)
    names = [row[0] for row in KEYS]

    def case(r, i):
        key = r.pick(names)
        if r.chance(1, 5):
            key = r.pick((key.lower(), key.upper(), key + " ", "", "x" * 51, "é"))
        value = r.pick(("true", "False", " 60 ", "0", "-1", "86401", "1e3", "9999999999", "",
                        "Energy.Active.Import.Register,Voltage", "0.RST,1.XYZ", "a" * 16,
                        "a" * 41, "key with spaces 1234", "\x00" * 20, "Voltage," * 9,
                        str(r.int_edge()), r.text(r.below(20))))
        return key, value

    def check(kv):
        key, value = kv
        before = dict(cfg._values)
        on_disk = _read(path)
        st = cfg.change(key, value)
        true(st in ("Accepted", "Rejected", "NotSupported"), "status %r" % st)
        seen[st] = seen.get(st, 0) + 1
        if st != "Accepted":
            eq(cfg._values, before, "refused value changed memory")
            eq(_read(path), on_disk, "refused value changed the file")
        else:
            eq(Config(path)._values, cfg._values, "stored values load back")

    seen = {}
    fuzz.run("ocpp.config", 2500, case, check)
    print("  changes by answer:", seen)
    eq(len(seen), 3, "the cases reach every answer")
    fuzz.remove_quietly(path)
    fuzz.remove_quietly(path + ".bak")


def _read(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None


def test_fuzz_charging_profiles():
    """OCPP 1.6 §3.13: a schema-valid profile is Accepted or Rejected (RpcError only for a
    bad connector); limits and composite schedules of what was accepted never raise."""
    path = _DIR + "/ocpp_profiles.json"
    fuzz.remove_quietly(path)
    smart = Smart(_DIR)
    base = FRAMES[3][3]
    t0 = isotime.parse("2024-01-01T00:10:00Z")

    def typed(r):
        # A schema-valid profile with odd but well-typed values: reaches install().
        p = json.loads(json.dumps(base))
        prof = p["csChargingProfiles"]
        s = prof["chargingSchedule"]
        pers = s["chargingSchedulePeriod"]
        p["connectorId"] = r.pick((0, 1, 1, 1, 2, -1))
        for _ in range(1 + r.below(4)):
            k = r.below(8)
            if k == 0:
                prof["stackLevel"] = r.pick((-1, 0, 8, 9, 1 << 40))
            elif k == 1:
                s["duration"] = r.pick((0, -1, 1, 1 << 40))
            elif k == 2:
                pers[r.below(len(pers))]["limit"] = r.pick((0, -0.5, 1e300, float("inf"), 6, 5000))
            elif k == 3:
                pers[r.below(len(pers))]["startPeriod"] = r.pick((0, -1, 600, 1 << 40, -(1 << 40)))
            elif k == 4:
                pers[r.below(len(pers))]["numberPhases"] = r.pick((0, 1, 2, 3, 4))
            elif k == 5:
                s["chargingSchedulePeriod"] = pers * r.pick((0, 12, 13))
            elif k == 6:
                s["chargingRateUnit"] = "W"
                prof["chargingProfilePurpose"] = r.pick(schema.PURPOSES)
            else:
                prof[r.pick(("validFrom", "validTo"))] = r.pick((
                    "1970-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "2024-01-01T00:10:00Z"))
        return p

    def case(r, i):
        if i and r.chance(1, 2):
            return typed(r)
        p = fuzz.mutate_value(r, base, _KEYS) if i else base
        if isinstance(p, dict) and r.chance(1, 3):
            prof = p.get("csChargingProfiles")
            if isinstance(prof, dict):
                prof["chargingProfileKind"] = r.pick(("Recurring", "Relative", "Absolute"))
                prof["recurrencyKind"] = r.pick(("Daily", "Weekly"))
        return p

    def check(p):
        try:
            schema.check("SetChargingProfile", p)
        except RpcError:
            return
        before = list(smart.profiles)
        try:
            st = smart.install(p["connectorId"], p["csChargingProfiles"], None, t0)
        except RpcError:
            eq(smart.profiles, before, "refused profile stored")
            return
        true(st in ("Accepted", "Rejected"), "status")
        seen[st] = seen.get(st, 0) + 1
        if st == "Rejected":
            eq(smart.profiles, before, "rejected profile stored")
        else:
            eq(Smart(_DIR).profiles, smart.profiles, "stored profiles load back")
        for t in (t0 - 86400, t0, t0 + 599, t0 + 600, t0 + 86400 * 8):
            a = smart.limit(t, 1, t0, None)
            true(a is None or a >= 0, "limit %r" % a)
        for unit in ("A", "W"):
            s = smart.composite(1, t0, 86400, unit, 32.0, t0, None)
            true(s["chargingSchedulePeriod"], "composite periods")
            json.dumps(s)

    seen = {}
    fuzz.run("ocpp.smart", 3000, case, check)
    print("  profiles by answer:", seen)
    true(seen.get("Accepted") and seen.get("Rejected"), "the cases reach both answers")
    fuzz.remove_quietly(path)
    fuzz.remove_quietly(path + ".bak")


# ---- regressions found by the fuzzer ------------------------------------------------------------
def test_regression_handshake_head_not_utf8_is_a_handshake_error():
    """Was a bare UnicodeError out of connect() (FUZZ_SEED=0x5eed2026, case 22)."""
    real_open = wsclient._open

    async def fake_open(host, port, ssl, server_hostname):
        return _Peer(b"HTTP/1.1 101 \xff\xfe\r\nUpgrade: websocket\r\n\r\n")

    async def main():
        ws = wsclient.WsClient()
        try:
            await ws.connect("ws://127.0.0.1:9/ocpp/CP1", protocols=("ocpp1.6",))
        except wsclient.WsError as e:
            return e if e.kind == "handshake" else None
        return None

    wsclient._open = fake_open
    try:
        true(asyncio.run(main()) is not None, "a refused handshake")
    finally:
        wsclient._open = real_open


def test_regression_close_with_one_byte_body_echoed_without_body():
    """RFC 6455 5.5.1: a Close body starts with a 2-byte code; a 1-byte body from the
    server was echoed as a 1-byte body (FUZZ_SEED=0x5eed2026, wsclient.frames)."""
    ws = wsclient.WsClient(max_message=512)
    peer = _Peer(b"\x88\x01x")
    ws._s = peer

    async def main():
        try:
            await ws.recv()
        except wsclient.WsError as e:
            return e.code if e.kind == "closed" else None
        return None

    eq(asyncio.run(main()), 1000, "no code given: normal closure")
    eq(_client_frames(peer.out), [(8, b"")], "empty close echoed")


def test_regression_non_finite_number_refused_by_the_schema():
    """A limit of 1e999 parsed as inf, was accepted, and made ocpp_profiles.json unloadable
    ("inf" is no JSON): the profiles of before came back after a reboot (FUZZ_SEED=0x5eed2026,
    ocpp.smart case 530)."""
    msg = rpc.decode(json.dumps(FRAMES[3]).replace('"limit": 16', '"limit": 1e999'))
    try:
        schema.check(msg[2], msg[3], msg[1])
    except RpcError as e:
        eq(e.code, "TypeConstraintViolation", "code")
    else:
        raise AssertionError("inf accepted as a number")


def test_regression_surrogate_escapes_sent_as_utf8():
    """A central system's "\\ud83d\\ude00" (valid JSON; Python escapes every non-ASCII
    character so) came back in our answers as raw surrogates, which are not UTF-8: the
    central system closed with 1007 (RFC 6455 §8.1; found by host.ocpp, tests/test_fuzz_inputs.py)."""
    ws = wsclient.WsClient(max_message=512)
    peer = _Peer()
    ws._s = peer
    text = json.dumps(json.loads('["a\\ud83d\\ude00b", "\\ud800", "é€"]'))
    asyncio.run(ws.send(text))
    (op, payload), = _client_frames(peer.out)
    eq(op, 1, "text frame")
    eq(json.loads(str(payload, "utf-8")), ["a😀b", "\ufffd", "é€"], "UTF-8 on the wire")


def test_regression_frame_over_the_free_heap_is_refused_not_fatal():
    """A MemoryError in json.loads killed the link's reader (a reconnect, the CALL never
    answered; found by host.ocpp under a fragmented heap): now an InternalError CALLERROR."""
    real = rpc.json

    class _NoRoom:
        @staticmethod
        def loads(text):
            raise MemoryError

    rpc.json = _NoRoom
    try:
        rpc.decode('[2, "a", "Reset", {"type": "Soft"}]')
    except RpcError as e:
        eq(e.code, "InternalError", "code")
    else:
        raise AssertionError("no RpcError")
    finally:
        rpc.json = real


def test_call_over_the_receive_buffer_answered_and_the_link_kept():
    """A CALL longer than the receive buffer (a SendLocalList of too many entries) closed
    the connection with 1009, and the central system sent it again on the next one: now it
    is dropped and answered with a CALLERROR carrying its id, the link stays up, and the
    next CALL is taken. An answer too large fails the CALL it answers."""
    calls = []

    async def on_call(mid, action, payload):
        calls.append((mid, action))

    big = '[2, "big-1", "SendLocalList", {"listVersion": 1, "updateType": "Full", "x": "%s"}]' % (
        "y" * 900)
    peer = _Peer(frame(1, big) + frame(1, '[2,"next","ClearCache",{}]')
                 + frame(1, '[3,"ours",{"d":"%s"}]' % ("z" * 700)), step=200)
    ws = wsclient.WsClient(max_message=512, max_skip=2048)
    ws._s = peer

    async def main():
        link = Link(ws, on_call)
        link.up = True
        link._wait_id = "ours"
        reader = asyncio.create_task(link._reader())
        handler = asyncio.create_task(link._handler())
        for _ in range(100):
            if link._resp is not None:
                break
            await asyncio.sleep_ms(10)
        resp = link._resp
        await asyncio.sleep_ms(20)
        reader.cancel()
        handler.cancel()
        return link, resp

    link, resp = asyncio.run(main())
    sent = [json.loads(p) for op, p in _client_frames(peer.out) if op == 1]
    eq(len(sent), 1, "one answer sent: %r" % sent)
    eq(sent[0][:3], [4, "big-1", "GenericError"], "CALLERROR with the big CALL's id")
    eq(calls, [("next", "ClearCache")], "the next CALL taken")
    true(isinstance(resp, RpcError), "our CALL's too-large answer fails it")
    eq(link.bad_frames, 2, "both counted")
