"""WebSocket client (RFC 6455) for MicroPython asyncio, with hard limits (lib/wsclient.py).

    ws = WsClient(max_message=8192)
    await ws.connect("wss://cs.example:443/ocpp/CP01", protocols=("ocpp1.6",),
                     headers=(("Authorization", "Basic ..."),), ssl=ctx)
    await ws.send('[2,"1","Heartbeat",{}]')
    text = await ws.recv()          # str (text) or bytes (binary); pings answered inside
    await ws.close()

What it checks, and what it refuses (WsError, with `.code` the close code sent; one class,
whose `.kind` tells the cases a caller handles apart: each class costs heap):
- Handshake: status 101, `Upgrade: websocket`, `Connection: upgrade`, the
  `Sec-WebSocket-Accept` of our random key, a subprotocol we offered (required when
  `protocols` is given), no extension. The response head is capped at `max_head` bytes.
  A refused handshake is kind "handshake"; a non-101 status is also `.status` (401 bad
  credentials, 404 unknown charge point, 400 refused subprotocol).
- Frames: server frames must be unmasked (1002), RSV bits clear (1002), known opcodes
  (1002), control frames final and <= 125 bytes (1002); a message (all its fragments)
  longer than `max_message` is refused from its header, before any payload is read
  (1009), and so is one whose copy finds no room in the heap; text must be UTF-8 (1007). Fragments are joined into one buffer allocated
  once in the constructor. With `max_skip` set, a message longer than `max_message` but
  not than `max_skip` is read and dropped instead: recv raises kind "too big" with its
  `.size` and first bytes (`.head`), and the connection stays (the caller can answer it).
- Deadlines: connect + TLS + handshake within `connect_timeout_ms`; once the first byte
  of a frame arrived, the rest of it within `frame_timeout_ms`; each message sent within
  `write_timeout_ms`. Waiting for the next frame has no deadline of its own: the caller
  bounds it (`recv(timeout_ms)`) or watches `last_rx_ms` and pings (keep-alive).
An outgoing message goes out as one frame, masked with a fresh key from os.urandom a
transmit buffer at a time (the buffer bounds the RAM, not the message). The close handshake: a Close from the server is
answered with the same code and raises kind "closed"; close() sends ours and waits briefly
for the reply.
After any WsError or OSError the connection is unusable: call abort() (close() does it).
"""
import asyncio
import binascii
import hashlib
import os
from time import ticks_add, ticks_diff, ticks_ms
from micropython import const

OP_CONT = const(0)
OP_TEXT = const(1)
OP_BINARY = const(2)
OP_CLOSE = const(8)
OP_PING = const(9)
OP_PONG = const(10)

CLOSE_NORMAL = const(1000)
CLOSE_PROTOCOL = const(1002)
CLOSE_UNSUPPORTED = const(1003)
CLOSE_BAD_DATA = const(1007)
CLOSE_TOO_BIG = const(1009)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK = const(512)  # handshake head read size
_KEEP = const(64)  # first bytes of a dropped message kept for a "too big" error's head


class WsError(Exception):
    """Protocol violation or closed connection; `code` is the close code (None: none).
    `kind`: None, "handshake" (refused; `status` the HTTP status when not 101), "closed"
    (the server closed the connection; `code` is its close code) or "too big" (a message
    over max_message and within max_skip was read and dropped: the connection is still
    usable; `size` is its length, `head` its first bytes)."""

    def __init__(self, msg, code=None, kind=None, status=None):
        super().__init__(msg)
        self.code = code
        self.kind = kind
        self.status = status


def parse_url(url):
    """(secure, host, port, path) of a ws:// or wss:// URL; ValueError otherwise."""
    if url.startswith("ws://"):
        secure, rest = False, url[5:]
    elif url.startswith("wss://"):
        secure, rest = True, url[6:]
    else:
        raise ValueError("not a ws:// or wss:// URL")
    hostport, slash, path = rest.partition("/")
    path = "/" + path
    if hostport.startswith("["):  # [v6]:port
        host, _, port = hostport[1:].partition("]")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise ValueError("no host")
    try:
        port = int(port) if port else (443 if secure else 80)
    except ValueError:
        raise ValueError("bad port")
    if not 0 < port < 65536:
        raise ValueError("bad port")
    return secure, host, port, path


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (bytes)."""
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest(), newline=False)


def _utf8(b):
    """b with its surrogate code units made UTF-8. MicroPython's json.loads keeps a
    \\uD83D\\uDE00 escape as two raw 3-byte surrogates (CESU-8), which a peer must refuse
    (1007): a pair becomes the 4-byte character it stands for, a lone one U+FFFD."""
    out = bytearray()
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c != 0xED or i + 2 >= n or b[i + 1] < 0xA0:
            out.append(c)
            i += 1
            continue
        u = 0xD000 | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F)
        if u < 0xDC00 and i + 5 < n and b[i + 3] == 0xED and b[i + 4] >= 0xB0:
            lo = 0xD000 | ((b[i + 4] & 0x3F) << 6) | (b[i + 5] & 0x3F)
            out.extend(chr(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)).encode())
            i += 6
        else:
            out.extend(b"\xef\xbf\xbd")
            i += 3
    return bytes(out)


def _utf8_ok(mv):
    # str() checks UTF-8; in pieces cut before a character's lead byte (a character has
    # at most 3 continuation bytes), each piece stands on its own.
    n = len(mv)
    i = 0
    while i < n:
        j = min(i + 256, n)
        k = 0
        while j < n and k < 3 and mv[j] & 0xC0 == 0x80:
            j -= 1
            k += 1
        try:
            str(mv[i:j], "utf-8")
        except UnicodeError:
            return False
        i = j
    return True


def _mask(dst, off, src, soff, n, key):
    # dst[off:off+n] = src[soff:soff+n] XOR key (soff a multiple of 4); allocates nothing.
    k0 = key[0]
    k1 = key[1]
    k2 = key[2]
    k3 = key[3]
    i = 0
    end = n - 3
    d = off - soff
    j = soff
    while i < end:
        dst[d + j] = src[j] ^ k0
        dst[d + j + 1] = src[j + 1] ^ k1
        dst[d + j + 2] = src[j + 2] ^ k2
        dst[d + j + 3] = src[j + 3] ^ k3
        i += 4
        j += 4
    while i < n:
        dst[d + j] = src[j] ^ key[i & 3]
        i += 1
        j += 1


def _open(host, port, ssl, server_hostname):
    # asyncio.open_connection (extmod/asyncio/stream.py, v1.29) plus TCP_NODELAY: the
    # pieces of one message go out back to back, and Nagle's algorithm would hold the
    # second until the peer's delayed ACK of the first (~40 ms a message). Waits for the
    # socket as stream.py does, through asyncio.core._io_queue (re-check on upgrades).
    import socket
    from errno import EINPROGRESS

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], ai[1], ai[2])
    s.setblocking(False)
    try:
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (same numbers on Linux and lwIP)
    except OSError:
        pass
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.errno != EINPROGRESS:
            s.close()
            raise
    if ssl is not None:
        s = ssl.wrap_socket(s, server_hostname=server_hostname, do_handshake_on_connect=False)
        s.setblocking(False)
    stream = asyncio.StreamReader(s)
    yield asyncio.core._io_queue.queue_write(s)
    return stream


class WsClient:
    max_message = 8192  # bytes of one received message, all fragments together
    max_skip = 0  # a longer message up to this is dropped (kind "too big"), not closed on
    max_head = 2048  # bytes of the handshake response head
    tx_size = 2048  # transmit buffer: a longer message is masked and written in pieces
    connect_timeout_ms = 10000
    frame_timeout_ms = 10000
    write_timeout_ms = 10000

    def __init__(self, **limits):
        for k, v in limits.items():
            if not hasattr(WsClient, k):
                raise TypeError("unknown limit " + k)
            setattr(self, k, v)
        self._rx = bytearray(self.max_message)
        self._rxmv = memoryview(self._rx)
        self._tx = bytearray(self.tx_size)
        self._txmv = memoryview(self._tx)
        self._hdr = bytearray(14)
        self._hmv = memoryview(self._hdr)
        self._ctl = bytearray(125)
        self._cmv = memoryview(self._ctl)
        self._key = bytearray(4)
        self._wlock = asyncio.Lock()
        self._s = None
        self._pend = None  # bytes that arrived behind the handshake head
        self.protocol = None
        self.last_rx_ms = 0
        self.pongs = 0
        self.close_code = None  # the server's, once it closed
        self._close_sent = False

    @property
    def open(self):
        return self._s is not None

    # ---- connection ---------------------------------------------------------------------
    async def connect(self, url, protocols=(), headers=(), ssl=None, addr=None):
        """Opens the connection and completes the handshake (connect_timeout_ms in all).
        ssl: an SSLContext for wss:// (its verify_mode/CA are the caller's); addr: an
        already resolved host address (IP literal) to connect to. Without it the URL's
        host goes to getaddrinfo, which blocks the whole interpreter on a name: give a
        name's address here (lib/dnsclient.py) unless blocking is harmless."""
        secure, host, port, path = parse_url(url)
        if secure and ssl is None:
            raise ValueError("wss:// needs an SSL context")
        self.abort()
        self._close_sent = False
        self.close_code = None
        try:
            await asyncio.wait_for_ms(
                self._connect(secure, host, port, path, protocols, headers, ssl, addr),
                self.connect_timeout_ms,
            )
        except BaseException:
            self.abort()
            raise
        self.last_rx_ms = ticks_ms()

    async def _connect(self, secure, host, port, path, protocols, headers, ssl, addr):
        r = await _open(addr or host, port, ssl if secure else None, host)
        self._s = r
        key = binascii.b2a_base64(os.urandom(16), newline=False)
        hosthdr = host if ":" not in host else "[" + host + "]"
        if port != (443 if secure else 80):
            hosthdr = "%s:%d" % (hosthdr, port)
        req = [
            "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, hosthdr, key.decode())
        ]
        if protocols:
            req.append("Sec-WebSocket-Protocol: %s\r\n" % ", ".join(protocols))
        for name, value in headers:
            req.append("%s: %s\r\n" % (name, value))
        req.append("\r\n")
        r.write("".join(req).encode())
        await r.drain()
        status, hdrs = await self._read_head()
        if status != 101:
            raise WsError("handshake refused: HTTP %d" % status, None, "handshake", status)
        if hdrs.get("upgrade", "").lower() != "websocket":
            raise WsError("no Upgrade: websocket", None, "handshake")
        if "upgrade" not in hdrs.get("connection", "").lower():
            raise WsError("no Connection: upgrade", None, "handshake")
        if hdrs.get("sec-websocket-accept", "").encode() != accept_key(key):
            raise WsError("wrong Sec-WebSocket-Accept", None, "handshake")
        if "sec-websocket-extensions" in hdrs:
            raise WsError("extension not offered", None, "handshake")
        proto = hdrs.get("sec-websocket-protocol")
        if proto is not None and proto not in protocols:
            raise WsError("subprotocol %s not offered" % proto, None, "handshake")
        if protocols and proto is None:
            raise WsError("server chose no subprotocol", None, "handshake")
        self.protocol = proto

    async def _read_head(self):
        # Reads into the message buffer until CRLFCRLF; keeps what follows for the frames.
        buf = self._rx
        mv = self._rxmv
        cap = min(self.max_head, len(buf))
        n = 0
        while True:
            if n >= cap:
                raise WsError("response head over %d bytes" % cap, None, "handshake")
            got = await self._s.readinto(mv[n : min(cap, n + _CHUNK)])
            if got is None:
                continue  # TLS record not complete yet
            if not got:
                raise WsError("connection closed during the handshake", None, "handshake")
            start = max(0, n - 3)
            n += got
            end = buf.find(b"\r\n\r\n", start, n)
            if end >= 0:
                break
        if end + 4 < n:
            self._pend = bytes(mv[end + 4 : n])
        try:
            head = str(mv[:end], "utf-8").split("\r\n")
        except UnicodeError:
            raise WsError("response head not UTF-8", None, "handshake")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise WsError("not an HTTP response", None, "handshake")
        try:
            status = int(parts[1])
        except ValueError:
            raise WsError("bad status line", None, "handshake")
        hdrs = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if sep:
                hdrs[name.strip().lower()] = value.strip()
        return status, hdrs

    def abort(self):
        """Closes the socket at once (no close handshake)."""
        s = self._s
        self._s = None
        self._pend = None
        if s is not None:
            try:
                s.s.close()
            except OSError:
                pass

    async def close(self, code=CLOSE_NORMAL, timeout_ms=2000):
        """Close handshake (bounded by timeout_ms), then the socket is closed."""
        if self._s is None:
            return
        try:
            if not self._close_sent:
                self._ctl[0] = code >> 8
                self._ctl[1] = code & 0xFF
                await self._send_frame(OP_CLOSE, self._cmv[:2], 2)
            if self.close_code is None:
                await asyncio.wait_for_ms(self._drain_until_close(), timeout_ms)
        except (OSError, WsError, asyncio.TimeoutError):
            pass
        finally:
            self.abort()

    async def _drain_until_close(self):
        while True:
            try:
                await self.recv()
            except WsError as e:
                if e.kind == "closed":
                    return
                raise

    # ---- receiving ------------------------------------------------------------------------
    async def _readinto(self, mv):
        p = self._pend
        if p:
            n = min(len(p), len(mv))
            mv[:n] = p[:n]
            self._pend = p[n:] if n < len(p) else None
            return n
        s = self._s
        if s is None:
            raise WsError("not connected")
        while True:
            n = await s.readinto(mv)
            if n is None:
                continue  # TLS: no complete record yet
            if n == 0:
                raise WsError("connection closed by the peer")
            return n

    async def _fill(self, mv):
        off = 0
        n = len(mv)
        while off < n:
            off += await self._readinto(mv[off:])

    async def recv(self, timeout_ms=None):
        """The next text (str) or binary (bytes) message; ping, pong and close frames
        are handled here. Raises WsError: kind "closed" when the server closes, else on a protocol
        violation (after sending Close with the reason) or a frame not completed within
        frame_timeout_ms, asyncio.TimeoutError when timeout_ms passes with no frame
        started. A recv cancelled in the middle of a message drops the connection."""
        if timeout_ms is not None:
            return await asyncio.wait_for_ms(self.recv(), timeout_ms)
        op, size = await self._message()
        try:
            if op == OP_TEXT:
                try:
                    return str(self._rxmv[:size], "utf-8")
                except UnicodeError:
                    await self._fail("text message not UTF-8", CLOSE_BAD_DATA)
            return bytes(self._rxmv[:size])
        except MemoryError:  # no block for the copy in a fragmented heap: refused as too big
            await self._fail("no memory for a %d-byte message" % size, CLOSE_TOO_BIG)

    async def recv_view(self):
        """As recv(), without a copy: (True for text, memoryview of the message in the
        receive buffer, valid until the next recv). Text is checked to be UTF-8 in
        small pieces, so no block the size of the message is needed."""
        op, size = await self._message()
        mv = self._rxmv[:size]
        if op == OP_TEXT and not _utf8_ok(mv):
            await self._fail("text message not UTF-8", CLOSE_BAD_DATA)
        return op == OP_TEXT, mv

    async def _message(self):
        """Reads the next data message into the receive buffer: (opcode, size)."""
        size = 0  # bytes of the message assembled so far
        op = None  # opcode of the message being assembled
        mid = False
        drop = False  # over max_message: read over the buffer and dropped
        try:
            while True:
                await self._fill(self._hmv[:1])  # idle wait: no deadline of our own
                mid = True
                fin, opcode, n = await self._timed(self._header())
                self.last_rx_ms = ticks_ms()
                if opcode >= OP_CLOSE:
                    await self._timed(self._fill(self._cmv[:n]))
                    await self._control(opcode, n)
                    mid = op is not None
                    continue
                if opcode == OP_CONT:
                    if op is None:
                        await self._fail("continuation without a message", CLOSE_PROTOCOL)
                elif op is not None:
                    await self._fail("new message inside a fragmented one", CLOSE_PROTOCOL)
                else:
                    op = opcode
                if size + n > len(self._rx):
                    if size + n > self.max_skip:
                        await self._fail("message over %d bytes" % len(self._rx), CLOSE_TOO_BIG)
                    drop = True
                if drop:
                    await self._timed(self._drop(size, n))
                else:
                    await self._timed(self._fill(self._rxmv[size : size + n]))
                size += n
                if fin:
                    break
            mid = False
        finally:
            if mid:
                self.abort()
        if drop:
            e = WsError("message of %d bytes dropped" % size, CLOSE_TOO_BIG, "too big")
            e.size = size
            e.head = bytes(self._rxmv[: min(size, _KEEP)])
            raise e
        return op, size

    async def _drop(self, at, n):
        # n bytes of a message at offset `at`: its first _KEEP bytes stay at the buffer's
        # start, the rest is read over the buffer behind them.
        while n:
            mv = self._rxmv[at:_KEEP] if at < _KEEP else self._rxmv[_KEEP:]
            k = min(n, len(mv))
            await self._fill(mv[:k])
            at += k
            n -= k

    async def _timed(self, coro):
        try:
            return await asyncio.wait_for_ms(coro, self.frame_timeout_ms)
        except asyncio.TimeoutError:
            self.abort()
            raise WsError("frame not complete within %d ms" % self.frame_timeout_ms)

    async def _header(self):
        h = self._hdr
        await self._fill(self._hmv[1:2])
        b0 = h[0]
        b1 = h[1]
        if b0 & 0x70:
            await self._fail("reserved bits set", CLOSE_PROTOCOL)
        opcode = b0 & 0x0F
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            await self._fail("unknown opcode %d" % opcode, CLOSE_PROTOCOL)
        if b1 & 0x80:
            await self._fail("masked frame from the server", CLOSE_PROTOCOL)
        n = b1 & 0x7F
        if n == 126:
            await self._fill(self._hmv[2:4])
            n = (h[2] << 8) | h[3]
        elif n == 127:
            await self._fill(self._hmv[2:10])
            if h[2] & 0x80:
                await self._fail("frame length out of range", CLOSE_PROTOCOL)
            n = 0
            for i in range(2, 10):
                n = (n << 8) | h[i]
        fin = b0 & 0x80
        if opcode >= OP_CLOSE and (n > 125 or not fin):
            await self._fail("bad control frame", CLOSE_PROTOCOL)
        if n > len(self._rx) and n > self.max_skip:
            await self._fail("frame over %d bytes" % len(self._rx), CLOSE_TOO_BIG)
        return fin, opcode, n

    async def _control(self, opcode, n):
        if opcode == OP_PING:
            await self._send_frame(OP_PONG, self._cmv[:n], n)
        elif opcode == OP_PONG:
            self.pongs += 1
        else:
            code = (self._ctl[0] << 8) | self._ctl[1] if n >= 2 else CLOSE_NORMAL
            self.close_code = code
            if not self._close_sent:
                k = 2 if n >= 2 else 0  # RFC 6455 5.5.1: a body starts with a 2-byte code
                try:
                    await self._send_frame(OP_CLOSE, self._cmv[:k], k)
                except (OSError, WsError, asyncio.TimeoutError):
                    pass
            self.abort()
            raise WsError("closed by the server (%d)" % code, code, "closed")

    async def _fail(self, why, code):
        """Sends Close with `code` (best effort), drops the connection, raises WsError."""
        if self._s is not None and not self._close_sent:
            self._ctl[0] = code >> 8
            self._ctl[1] = code & 0xFF
            try:
                await self._send_frame(OP_CLOSE, self._cmv[:2], 2)
            except (OSError, WsError, asyncio.TimeoutError):
                pass
        self.abort()
        raise WsError(why, code)

    # ---- sending -------------------------------------------------------------------------
    async def send(self, data):
        """Sends a str as a text message, bytes as binary: one frame of up to 64 KB
        (ValueError beyond: no message of the charger's comes near it)."""
        if isinstance(data, str):
            data = data.encode()
            if b"\xed" in data:  # maybe surrogates: text must be UTF-8 (RFC 6455 5.6)
                data = _utf8(data)
            op = OP_TEXT
        else:
            op = OP_BINARY
        if len(data) > 65535:
            raise ValueError("message over 64 KB")
        async with self._wlock:
            await self._frame_locked(op, memoryview(data), len(data))

    async def ping(self, payload=b""):
        n = min(len(payload), 125)
        await self._send_frame(OP_PING, payload, n)

    async def _send_frame(self, op, payload, n):
        async with self._wlock:
            await self._frame_locked(op, payload, n)

    async def _frame_locked(self, op, payload, n):
        s = self._s
        if s is None:
            raise WsError("not connected")
        if op == OP_CLOSE:
            if self._close_sent:
                return
            self._close_sent = True
        tx = self._tx
        tx[0] = 0x80 | op
        if n < 126:
            tx[1] = 0x80 | n
            h = 2
        else:
            tx[1] = 0x80 | 126
            tx[2] = n >> 8
            tx[3] = n & 0xFF
            h = 4
        key = self._key
        key[:] = os.urandom(4)
        tx[h : h + 4] = key
        h += 4
        # Pieces of a multiple of 4 bytes keep the mask's phase from piece to piece.
        room = (len(tx) - h) & ~3
        off = 0
        deadline = ticks_add(ticks_ms(), self.write_timeout_ms)
        while True:
            k = min(room, n - off)
            _mask(tx, h, payload, off, k, key)
            s.write(self._txmv[: h + k])  # copies what the socket does not take at once
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait_for_ms(s.drain(), left)
            off += k
            if off >= n:
                return
            h = 0
            room = len(tx) & ~3
