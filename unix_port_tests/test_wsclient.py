# lib/wsclient.py against a scripted WebSocket server in the same interpreter, over
# loopback: handshake checks, masking, fragments, control frames, limits, deadlines.
import asyncio
import binascii
import hashlib
import os
import struct

from check import eq, true, raises
import wsclient
from wsclient import WsClient, WsError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key):
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False).decode()


def frame(op, payload=b"", fin=True, mask=None, rsv=0, length=None):
    """A server frame (unmasked unless mask is given); length overrides the length field."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | op
    mbit = 0x80 if mask else 0
    if n < 126:
        h = bytes([b0, mbit | n])
    elif n < 65536:
        h = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        h += mask
    return h + payload


class Peer:
    """One server-side connection: the request head, then frames both ways."""

    def __init__(self, r, w):
        self.r = r
        self.w = w
        self.head = None
        self.headers = {}

    async def read_head(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await self.r.read(256)
            if not chunk:
                raise EOFError
            data += chunk
        self.head = data.decode()
        for line in self.head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k:
                self.headers[k.strip().lower()] = v.strip()
        return self.head

    async def respond(self, status=101, accept=True, protocol="ocpp1.6", extra="", tail=b""):
        lines = ["HTTP/1.1 %d X" % status]
        if status == 101:
            lines += ["Upgrade: websocket", "Connection: Upgrade"]
            if accept is True:
                lines.append("Sec-WebSocket-Accept: " + _accept(self.headers["sec-websocket-key"].encode()))
            elif accept:
                lines.append("Sec-WebSocket-Accept: " + accept)
            if protocol:
                lines.append("Sec-WebSocket-Protocol: " + protocol)
        if extra:
            lines.append(extra)
        self.w.write(("\r\n".join(lines) + "\r\n\r\n").encode() + tail)
        await self.w.drain()

    async def send(self, data):
        self.w.write(data)
        await self.w.drain()

    async def read_frame(self):
        """(fin, opcode, payload, masked) of one client frame."""
        h = await self.r.readexactly(2)
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", await self.r.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await self.r.readexactly(8))[0]
        masked = bool(h[1] & 0x80)
        key = await self.r.readexactly(4) if masked else b"\0\0\0\0"
        data = await self.r.readexactly(n) if n else b""
        data = bytes(b ^ key[i & 3] for i, b in enumerate(data))
        return bool(h[0] & 0x80), h[0] & 0x0F, data, masked

    def close(self):
        self.w.close()
        try:
            self.w.s.close()
        except OSError:
            pass


async def serve(script):
    """Starts a one-connection server running script(peer); returns (port, server, done)."""
    done = {"error": None, "finished": False}

    async def cb(r, w):
        p = Peer(r, w)
        try:
            await script(p)
            done["finished"] = True
        except Exception as e:  # reported by the test through `done`
            done["error"] = e
        finally:
            p.close()

    for _ in range(20):
        port = 20000 + (os.urandom(2)[0] << 6) + (os.urandom(1)[0] & 63)
        try:
            srv = await asyncio.start_server(cb, "127.0.0.1", port)
            return port, srv, done
        except OSError:
            continue
    raise OSError("no free port")


def run(coro):
    try:
        return asyncio.run(coro)
    finally:
        asyncio.new_event_loop()


def url(port, path="/ocpp/CP1"):
    return "ws://127.0.0.1:%d%s" % (port, path)


async def _pair(script, ws=None, **kw):
    port, srv, done = await serve(script)
    ws = ws or WsClient(**kw)
    return port, srv, done, ws


# ---- URL and key ----------------------------------------------------------------------
def test_parse_url():
    eq(wsclient.parse_url("ws://10.0.0.5:80/ocpp/CP01"), (False, "10.0.0.5", 80, "/ocpp/CP01"), "ws")
    eq(wsclient.parse_url("wss://cs.example/x"), (True, "cs.example", 443, "/x"), "wss default")
    eq(wsclient.parse_url("ws://[::1]:9000/a/b"), (False, "::1", 9000, "/a/b"), "v6")
    raises(ValueError, wsclient.parse_url, "http://x/y")
    raises(ValueError, wsclient.parse_url, "ws://host:99999/y")
    raises(ValueError, wsclient.parse_url, "ws://:80/y")


def test_accept_key_rfc_example():
    # RFC 6455 section 1.3
    eq(wsclient.accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept")


# ---- handshake -------------------------------------------------------------------------
def test_handshake_and_text_both_ways():
    got = {}

    async def script(p):
        await p.read_head()
        got["head"] = p.head
        got["headers"] = p.headers
        await p.respond()
        fin, op, data, masked = await p.read_frame()
        got["frame"] = (fin, op, data, masked)
        await p.send(frame(1, "[3,\"1\",{}]"))
        fin, op, data, masked = await p.read_frame()  # close
        got["close"] = (op, data)
        await p.send(frame(8, data))

    async def main():
        port, srv, done, ws = await _pair(script)
        await ws.connect(url(port), protocols=("ocpp1.6",), headers=(("Authorization", "Basic QUI6Q0Q="),))
        eq(ws.protocol, "ocpp1.6", "protocol")
        await ws.send('[2,"1","Heartbeat",{}]')
        eq(await ws.recv(2000), '[3,"1",{}]', "reply")
        await ws.close()
        eq(ws.open, False, "closed")
        srv.close()
        return done

    done = run(main())
    eq(done["error"], None, "server error")
    h = got["headers"]
    true(got["head"].startswith("GET /ocpp/CP1 HTTP/1.1\r\n"), "request line")
    eq(h["sec-websocket-protocol"], "ocpp1.6", "offered")
    eq(h["sec-websocket-version"], "13", "version")
    eq(h["upgrade"].lower(), "websocket", "upgrade")
    eq(h["authorization"], "Basic QUI6Q0Q=", "auth header")
    eq(h["host"], "127.0.0.1:%s" % got["head"].split("Host: 127.0.0.1:")[1].split("\r\n")[0], "host")
    eq(len(binascii.a2b_base64(h["sec-websocket-key"])), 16, "key is 16 random bytes")
    fin, op, data, masked = got["frame"]
    eq((fin, op, data, masked), (True, 1, b'[2,"1","Heartbeat",{}]', True), "client frame masked")
    eq(got["close"], (8, b"\x03\xe8"), "close 1000")


def _refused(respond_kw, want_status=None, want=""):
    async def script(p):
        await p.read_head()
        await p.respond(**respond_kw)
        await asyncio.sleep_ms(200)

    async def main():
        port, srv, done, ws = await _pair(script)
        try:
            await ws.connect(url(port), protocols=("ocpp1.6",))
        except WsError as e:
            srv.close()
            eq(e.kind, "handshake", "a refused handshake: %r" % (e,))
            return e
        srv.close()
        raise AssertionError("handshake accepted")

    e = run(main())
    if want_status is not None:
        eq(e.status, want_status, "status")
    true(want in str(e), "reason %r has %r" % (str(e), want))


def test_handshake_wrong_accept_refused():
    _refused({"accept": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}, want="Accept")


def test_handshake_missing_accept_refused():
    _refused({"accept": None}, want="Accept")


def test_handshake_without_subprotocol_refused():
    _refused({"protocol": None}, want="no subprotocol")


def test_handshake_other_subprotocol_refused():
    _refused({"protocol": "ocpp2.0.1"}, want="not offered")


def test_handshake_extension_refused():
    _refused({"extra": "Sec-WebSocket-Extensions: permessage-deflate"}, want="extension")


def test_handshake_http_status_reported():
    _refused({"status": 401}, want_status=401)
    _refused({"status": 404}, want_status=404)


def test_handshake_head_capped():
    _refused({"extra": "X-Junk: " + "a" * 3000}, want="head over")


def test_connect_timeout_on_silent_server():
    async def script(p):
        await asyncio.sleep_ms(2000)

    async def main():
        port, srv, done, ws = await _pair(script, connect_timeout_ms=300)
        try:
            await ws.connect(url(port), protocols=("ocpp1.6",))
        except asyncio.TimeoutError:
            srv.close()
            return True
        raise AssertionError("no timeout")

    true(run(main()), "timed out")


def test_frame_right_behind_the_head():
    async def script(p):
        await p.read_head()
        await p.respond(tail=frame(1, "early") + frame(1, "second"))
        await asyncio.sleep_ms(300)

    async def main():
        port, srv, done, ws = await _pair(script)
        await ws.connect(url(port), protocols=("ocpp1.6",))
        a = await ws.recv(1000)
        b = await ws.recv(1000)
        ws.abort()
        srv.close()
        return a, b

    eq(run(main()), ("early", "second"), "both frames")


# ---- frames ----------------------------------------------------------------------------
def _session(server_frames, after=None, hang_up=False, view=False, **kw):
    """Connects, lets the server send `server_frames`, then collects what recv() gives
    (messages, then the exception) and what the server read back. view: recv_view(),
    each message as (text, bytes)."""
    back = []

    async def script(p):
        await p.read_head()
        await p.respond()
        await p.send(b"".join(server_frames))
        if hang_up:
            return
        try:
            while True:
                f = await asyncio.wait_for_ms(p.read_frame(), 1500)
                back.append(f)
                if f[1] == 8:
                    break
        except (EOFError, OSError, asyncio.TimeoutError):
            pass
        if after:
            await after(p)

    async def main():
        port, srv, done, ws = await _pair(script, **kw)
        await ws.connect(url(port), protocols=("ocpp1.6",))
        out = []
        try:
            while True:
                if view:
                    text, mv = await asyncio.wait_for_ms(ws.recv_view(), 1500)
                    out.append((text, bytes(mv)))
                else:
                    out.append(await ws.recv(1500))
        except (WsError, asyncio.TimeoutError) as e:
            out.append(e)
        await asyncio.sleep_ms(50)
        ws.abort()
        srv.close()
        return out, ws

    out, ws = run(main())
    return out, back, ws


def test_fragments_joined_with_ping_inside():
    out, back, ws = _session([
        frame(1, "[2,\"a\",", fin=False),
        frame(9, "hi"),
        frame(0, "\"Reset\",", fin=False),
        frame(0, "{}]"),
    ])
    eq(out[0], '[2,"a","Reset",{}]', "joined")
    true(isinstance(out[1], asyncio.TimeoutError), "then idle")
    eq([(f[1], f[2], f[3]) for f in back], [(10, b"hi", True)], "pong echoes the ping, masked")


def test_binary_message_is_bytes_and_pong_counted():
    out, back, ws = _session([frame(2, b"\x00\x01"), frame(10, b"")])
    eq(out[0], b"\x00\x01", "binary")
    eq(ws.pongs, 1, "pong seen")


def _violation(frames, code, **kw):
    out, back, ws = _session(frames, **kw)
    e = out[-1]
    true(isinstance(e, WsError), "error %r" % (e,))
    eq(e.code, code, "close code of %r" % (e,))
    closes = [f for f in back if f[1] == 8]
    eq(len(closes), 1, "one close sent")
    eq(struct.unpack(">H", closes[0][2])[0], code, "close code on the wire")
    eq(ws.open, False, "dropped")
    return out


def test_masked_server_frame_refused():
    _violation([frame(1, "x", mask=b"abcd")], 1002)


def test_reserved_bits_refused():
    _violation([frame(1, "x", rsv=0x40)], 1002)


def test_unknown_opcode_refused():
    _violation([frame(3, "x")], 1002)


def test_long_control_frame_refused():
    _violation([frame(9, b"", length=126) + b"x" * 126], 1002)


def test_fragmented_control_frame_refused():
    _violation([frame(9, "x", fin=False)], 1002)


def test_continuation_without_start_refused():
    _violation([frame(0, "x")], 1002)


def test_new_message_inside_fragmented_refused():
    _violation([frame(1, "a", fin=False), frame(1, "b")], 1002)


def test_huge_frame_refused_from_its_header():
    # 2**40 bytes announced, nothing sent: refused before any payload read or allocation.
    out = _violation([frame(1, b"", length=1 << 40)], 1009, max_message=1024)
    true("over" in str(out[-1]), "reason")


def test_message_over_cap_across_fragments_refused():
    _violation([frame(1, b"a" * 600, fin=False), frame(0, b"b" * 600)], 1009, max_message=1024)


def test_message_over_cap_within_skip_dropped_and_connection_kept():
    # max_skip: a message over max_message is read whole and dropped (its first 64 bytes
    # kept for the caller), in one frame or in fragments with a ping inside, and the
    # messages after it come as before; one over max_skip is refused as always.
    big = b'[2,"id-1","SendLocalList",' + b"x" * 1500 + b"]"
    frames = [frame(1, "before"), frame(1, big),
              frame(1, big[:700], fin=False), frame(9, b"p"), frame(0, big[700:1300], fin=False),
              frame(0, big[1300:]), frame(1, "after")]
    back = []

    async def script(p):
        await p.read_head()
        await p.respond()
        await p.send(b"".join(frames))
        try:
            while True:
                back.append(await asyncio.wait_for_ms(p.read_frame(), 1000))
        except (EOFError, OSError, asyncio.TimeoutError):
            pass

    async def main():
        port, srv, done, ws = await _pair(script, max_message=1024, max_skip=4096)
        await ws.connect(url(port), protocols=("ocpp1.6",))
        out = []
        for _ in range(4):
            try:
                out.append(await ws.recv(1500))
            except WsError as e:
                out.append(e)
        await asyncio.sleep_ms(50)
        is_open = ws.open
        ws.abort()
        srv.close()
        return out, is_open

    out, is_open = run(main())
    eq(out[0], "before", "first message")
    e = out[1]
    true(isinstance(e, WsError) and e.kind == "too big", "dropped: %r" % (e,))
    eq((e.size, e.head), (len(big), big[:64]), "size and head")
    true(isinstance(out[2], WsError) and out[2].kind == "too big", "fragmented one dropped too")
    eq(out[2].size, len(big), "its size")
    eq(out[3], "after", "the next message intact")
    eq(is_open, True, "connection kept")
    eq([f[1] for f in back], [10], "the ping inside answered, no close sent")
    _violation([frame(1, b"a" * 5000)], 1009, max_message=1024, max_skip=4096)
    _violation([frame(1, b"a" * 3000, fin=False), frame(0, b"b" * 3000)], 1009,
               max_message=1024, max_skip=4096)


def test_64bit_length_with_top_bit_refused():
    _violation([bytes([0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 1])], 1002)


def test_bad_utf8_refused():
    _violation([frame(1, b"\xff\xfe")], 1007)


def test_view_checks_utf8_across_its_pieces():
    # RFC 6455 8.1: text must be UTF-8. recv_view checks it in 256-byte pieces: a
    # character across a piece boundary is fine, a bad byte far in is still refused.
    good = ("x" * 254 + "\u20ac\U0001f600" * 40).encode()
    out, back, ws = _session([frame(1, good), frame(2, b"\x00")], view=True)
    eq(out[0], (True, good), "text, split characters intact")
    eq(out[1], (False, b"\x00"), "binary")
    out = _violation([frame(1, b"y" * 300 + b"\xc3(")], 1007, view=True)
    _violation([frame(1, b"y" * 255 + b"\x80\x80\x80\x80z")], 1007, view=True)


def test_server_close_echoed():
    out, back, ws = _session([frame(8, struct.pack(">H", 1001) + b"bye")])
    e = out[-1]
    true(isinstance(e, WsError) and e.kind == "closed", "closed %r" % (e,))
    eq(e.code, 1001, "code")
    eq(ws.close_code, 1001, "kept")
    eq([(f[1], f[2]) for f in back], [(8, struct.pack(">H", 1001))], "echoed")


def test_server_closing_mid_frame():
    out, back, ws = _session([frame(1, b"", length=50) + b"only part"], hang_up=True)
    # The server closes its socket after the script: EOF in the middle of the payload.
    e = out[-1]
    true(isinstance(e, WsError) and e.kind is None, "error %r" % (e,))
    eq(ws.open, False, "dropped")


def test_stalled_frame_times_out():
    async def hold(p):
        await asyncio.sleep_ms(1500)

    out, back, ws = _session([frame(1, b"", length=50) + b"part"], after=hold, frame_timeout_ms=300)
    e = out[-1]
    true(isinstance(e, WsError) and "not complete" in str(e), "error %r" % (e,))


class _Big:
    """A 64 KB message as far as send() looks (its length), without the 64 KB block a
    heap cut up by a whole run of tests may no longer have."""

    def __len__(self):
        return 65536


def test_long_message_sent_as_one_frame_through_a_small_buffer():
    # The transmit buffer bounds the RAM, not the message: one frame each, masked a piece
    # at a time (the mask's phase carried across pieces, a last piece not of 4 bytes).
    got = []
    text = "".join("%04d," % i for i in range(1000))  # 5000 bytes
    blob = bytes(range(256)) * 3 + b"tail!"  # 773 bytes

    async def script(p):
        await p.read_head()
        await p.respond()
        for _ in range(2):
            got.append(await p.read_frame())

    async def main():
        port, srv, done, ws = await _pair(script, tx_size=250)
        await ws.connect(url(port), protocols=("ocpp1.6",))
        true(len(ws._tx) == 250, "the buffer is as small as asked")
        await ws.send(text)
        await ws.send(blob)
        try:
            await ws.send(_Big())  # refused on its length alone
            got.append("sent")
        except ValueError:
            pass
        await asyncio.sleep_ms(300)
        ws.abort()
        srv.close()

    run(main())
    eq(len(got), 2, "two frames, no fragments, none over 64 KB")
    eq(got[0][:2], (True, 1), "final text frame")
    eq(got[0][2].decode(), text, "text intact")
    eq(got[1][:2], (True, 2), "final binary frame")
    true(got[1][2] == blob, "binary intact")
    true(got[0][3] and got[1][3], "masked")


def test_ping_from_client_and_idle_timeout_keeps_connection():
    got = {}

    async def script(p):
        await p.read_head()
        await p.respond()
        f = await p.read_frame()
        got["ping"] = f
        await p.send(frame(10, f[2]))
        await asyncio.sleep_ms(500)
        await p.send(frame(1, "late"))
        await asyncio.sleep_ms(200)

    async def main():
        port, srv, done, ws = await _pair(script)
        await ws.connect(url(port), protocols=("ocpp1.6",))
        await ws.ping(b"k")
        try:
            await ws.recv(200)
            raise AssertionError("no timeout")
        except asyncio.TimeoutError:
            pass
        true(ws.open, "still open after an idle timeout")
        msg = await ws.recv(2000)
        ws.abort()
        srv.close()
        return msg, ws.pongs

    msg, pongs = run(main())
    eq(msg, "late", "message after the idle timeout")
    eq(pongs, 1, "pong counted")
    eq(got["ping"][1:3], (9, b"k"), "ping sent")


def test_refused_tcp_connection_is_oserror():
    async def main():
        ws = WsClient()
        try:
            await ws.connect("ws://127.0.0.1:1/x", protocols=("ocpp1.6",))
        except OSError:
            return True
        except WsError:
            return True
        return False

    true(run(main()), "refused")


def test_wss_needs_context():
    async def main():
        ws = WsClient()
        await ws.connect("wss://127.0.0.1:1/x")

    raises(ValueError, run, main())


def test_unknown_limit_is_typeerror():
    raises(TypeError, WsClient, max_mesage=10)
