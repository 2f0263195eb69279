"""Small HTTP/1.1 server for MicroPython asyncio with hard limits (lib/httpd.py).

Routes are a table; handlers are `async def h(req)` returning a Response, a dict or
list (JSON 200), or None (204). `<name>` segments land in `req.params`; GET routes
also answer HEAD. Routes win over static files under static_root (GET/HEAD only).

    routes = (
        ("GET", "/api/status", get_status),
        ("PUT", "/api/cards/<slot>", "put_card"),       # a method of handlers, by name
        ("POST", "/api/upgrade", upgrade, 4 << 20),     # 4th item: body limit in bytes
    )
    srv = Server(routes, static_root="/www", log=my_log, max_conns=6, handlers=api)
    await srv.start("0.0.0.0", 80)   # ... srv.close()

The table is kept as it is given, never copied: a tuple of constant tuples whose
handlers are names (and body limits literals or const()) is a constant a frozen build
keeps in flash, so it costs no heap; a handler named by a str is looked up on the
handlers object at each request (the bound method is the request's garbage). A path is
matched against the patterns' strings as it comes, with nothing allocated but for a
`<name>` route that matches (its params) or a 405 (its Allow).

log(msg, exc) is called for handler exceptions and MemoryErrors (print_exception is
the caller's business). Every limit and hook is a Server class attribute, overridable
per instance as a keyword (an unknown keyword is a TypeError).

Request: method, path (raw, no query), params, query (decoded; last duplicate wins),
headers (lower-case names; only keep_headers plus framing ones; the slot's own dict,
emptied for its next request: copy what must outlive the answer), cookies,
content_length, left (body bytes unread), remote.
  await req.read_into(buf) -> n    bytes into buf, 0 at the end; never reads past the body
  await req.read(n) -> bytearray   exactly min(n, left) bytes (n >= 0)
  await req.json(max_bytes=None)   whole body (cap: max_bytes, else the route's limit);
                                   HTTPError 413 too big, 400 empty/bad JSON or UTF-8
Deadlines, each overall (a byte now and then does not extend it), each enforced by
cancelling the connection's task: let CancelledError through.
  head      head_timeout_ms from its first byte (5 s): 408
  body      from the first read_into: req.body_timeout_ms (5 s; a handler may set its
            own before reading, as the OTA upload does: 15 s) plus the announced size at
            min_rate (8 KB/s: 4 MB gets 512 s, so 527 s for the OTA upload, against 210 s
            at a slow WiFi link's 20 KB/s); no single wait for more bytes longer than
            req.body_timeout_ms: 408
  handler   none: a card read waits 20 s. One that only waits sets req.evictable = True
            and may then be cancelled for a new client at the cap (503, Retry-After: 1)
  answer    write_timeout_ms (10 s) plus its size at min_rate, from its first write; a
            client that has not taken it by then gets a reset, not the rest of it. With
            clients waiting it may end sooner (see Connections)
Response(body=b"", status=200, headers=None, ctype=None): body bytes/str/dict/list/None;
headers a dict or a list of pairs. Response.file(path) streams a file in chunk_size
pieces. Raise HTTPError(status, msg) in a handler for a JSON `{"error": msg}` answer.

Keep-alive: HTTP/1.1 unless "Connection: close", 1.0 only with "keep-alive"; at most
max_requests per connection; an unread body up to drain_max is skipped, larger closes.
Static: GET/HEAD under static_root, "/" and "dir/" map to index.html; name.gz is sent
(Content-Encoding: gzip, Vary) when the client accepts gzip, else inflated on the way
(a window of GZIP_WBITS: the assets are compressed with it); ETag from static_tag, size
and mtime; Cache-Control from cache_control; 304 on a matching If-None-Match. A handler
gives a file outside static_root the same answer with Server.static_file(req, path).

Status codes: 400 malformed request line/header/query/path (absolute-form targets,
obs-fold, traversal: `..`/`.x` segments, `\\`, NUL, `//`, also percent-encoded),
404/405 (+Allow) routing, 408 head not
complete within head_timeout_ms, or a body within its deadline, or evicted before its
request was in, 411 chunked request body (send Content-Length),
501 other Transfer-Encoding or unknown method, 413 Content-Length above the route's
limit (answered before reading), 414 request line > max_line, 417 Expect other than
100-continue, 431 header line > buf_size - 2, > max_headers lines or > max_header_bytes,
500 handler exception (connection then closed), 503 an evictable handler gave way, or
(Retry-After: 1, connection closed) a MemoryError, the heap's fault not the request's,
505 not HTTP/1.0 or 1.1. Not 503 for a full server: see below. Every response has
Content-Length; errors that leave the framing unknown close.

Connections: a fixed pool of max_conns slots, made whole at Server(): each its buf_size
line buffer, headers dict, stream and the task that serves its clients one after
another (its frame made once), as many as the heap holds (a board's all; the unix
port at 64 KB, which keeps this code in its heap too, fewer). Taking a client costs
its socket; a request, ~1.8 KB of short-lived objects (64-bit unix port), none larger
than its Request (~130 B), no coroutine but its handler's: the head is read and parsed
by plain functions over the slot's buffer, the answer's head written piece by piece
into the scratch, a handler's dict/list/None sent without a Response, and the request
let go of before the answer's last drain. With every slot busy, or less than min_free
heap, we stop calling accept(), so clients wait in the kernel's listen backlog
(backlog 64: longer than a crowd of slow clients, else the overflow's SYNs are dropped
and a new client waits out TCP's 1 s retransmit) rather than getting 503s; a slot let
go of wakes the accept loop at once, and meanwhile answers say Connection: close, so a
keep-alive client hands its slot over between requests. While one
waits there (short of heap only after a collection said so: garbage closes no
connection), one connection gives way per waiting client, at once: the oldest idle or
in its head for evict_after_ms (20 ms; 80 ms if it has sent nothing yet, a phone a WiFi
round trip away), else the body or answer furthest behind min_rate, else the oldest
handler that set req.evictable. A body gives way once more than evict_after_ms behind
min_rate since its first read; one whose handler lengthened req.body_timeout_ms (the
OTA upload, 15 s) is allowed that much lag, so a WiFi stall the body deadline allows
does not end it for a newcomer. An answer gives way once its client, counting the
bytes the socket took, is more than answer_grace_ms (0.5 s) behind min_rate: pipelined
answers count as one, from the first while the client has not made us wait since, so a
client that never reads (a board's send buffer takes ~5.7 KB) holds a slot for about a
second, not write_timeout_ms for each request. Bytes of its own already waiting in the
kernel keep an idle, head or body connection (the wait is ours then). Each slow client
thus holds a slot for 20 ms, not seconds: under 30 slow heads that reconnect at once, a
status request waits for the ones queued ahead of it, ~100 ms p99 on loopback (make
bench). A handler that may not be cancelled is never evicted. One reaper task enforces
every deadline by cancelling the slot's task, which then lets that client go and
waits for the next: a read costs no wait_for task. Each answer yields once, in the
drain of its last write (drain() yields even if the socket took it all). A file goes
from the scratch straight to the socket; what the socket does not take is read from
the file again after the wait, not copied. We run our own accept loop instead of
asyncio.start_server: a MemoryError while start_server's loop wraps a new socket kills
that loop and leaves the port bound but dead (seen on v1.29). Ours catches it, runs
gc.collect() and keeps accepting. It waits on sockets via asyncio.core._io_queue as
extmod/asyncio/stream.py does, parks a slot's task between clients and wakes it with
asyncio.core._task_queue.push() (as Task.cancel() does), and sets a slot's socket as
its Stream's .s (pinned firmware; re-check on upgrades). Needs bytearray.find (v1.29).
"""
import asyncio
import gc
import json
import os
import select
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

import jsonout

_FREE = const(0)
_IDLE = const(1)  # between requests: evictable
_HEAD = const(2)  # reading the request head: evictable, 408 on timeout
_BUSY = const(3)  # handler, response
_BODY = const(4)  # reading the request body: evictable while below min_rate
_NEW = const(5)  # accepted, nothing received yet: evictable, later than _IDLE
_S_IFDIR = const(0x4000)
_LINGER_BYTES = const(16384)
_IPPROTO_TCP = const(6)  # same numbers on Linux and lwIP
_TCP_NODELAY = const(1)
_LONG = const(-1)  # _line(): longer than the limit
_MORE = const(-2)  # _line(): no complete line buffered yet
_ABORT = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}: close resets
_MAX_MS = const(0x8000000)  # longest deadline (37 h): ticks_add takes < 2**29 ms

_WS = b" \t"
_FRAMING = ("content-length", "transfer-encoding", "connection", "expect")  # always kept
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
# Key, value, key, value...: one tuple of constants stays in flash on a frozen build
# (a dict, or a tuple per pair where the code is loaded into RAM, takes heap) (_get).
_REASONS = (
    200, "OK", 201, "Created", 204, "No Content", 304, "Not Modified", 400, "Bad Request",
    401, "Unauthorized", 403, "Forbidden", 404, "Not Found", 405, "Method Not Allowed",
    406, "Not Acceptable", 408, "Request Timeout", 409, "Conflict", 411, "Length Required",
    413, "Content Too Large", 414, "URI Too Long", 417, "Expectation Failed",
    421, "Misdirected Request", 422, "Unprocessable Content",
    431, "Request Header Fields Too Large", 500, "Internal Server Error",
    501, "Not Implemented", 503, "Service Unavailable", 505, "HTTP Version Not Supported",
)
_TYPES = (
    "html", "text/html; charset=utf-8", "htm", "text/html; charset=utf-8",
    "js", "text/javascript; charset=utf-8", "mjs", "text/javascript; charset=utf-8",
    "css", "text/css; charset=utf-8", "json", "application/json", "map", "application/json",
    "txt", "text/plain; charset=utf-8", "svg", "image/svg+xml", "png", "image/png",
    "jpg", "image/jpeg", "jpeg", "image/jpeg", "gif", "image/gif", "ico", "image/x-icon",
    "webp", "image/webp", "woff", "font/woff", "woff2", "font/woff2",
    "webmanifest", "application/manifest+json", "wasm", "application/wasm",
)


def _get(flat, key, default):
    for i in range(0, len(flat), 2):
        if flat[i] == key:
            return flat[i + 1]
    return default


# Sent without allocating when things already went wrong (MemoryError, timeout).
_R500 = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    b'Content-Length: 27\r\nConnection: close\r\n\r\n{"error": "internal error"}'
)
_R408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b'Content-Length: 28\r\nConnection: close\r\n\r\n{"error": "request timeout"}'
)
_R503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
    b'{"error": "evicted"}'
)
# A MemoryError before any answer: the heap, not the request, so the client may retry.
_RBUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
    b'{"error": "busy"}'
)
_RETRY = (("Retry-After", "1"),)
_SEND_TRIES = const(5)  # an answer without heap for its coroutine: tries, a tick apart
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HTTPError(Exception):
    def __init__(self, status, msg=None):
        self.status = status
        self.msg = msg or _get(_REASONS, status, "error").lower()


def content_type(path):
    return _get(_TYPES, path.rpartition(".")[2].lower(), "application/octet-stream")


def _hex(ch):
    if 48 <= ch <= 57:
        return ch - 48
    ch |= 32
    if 97 <= ch <= 102:
        return ch - 87
    raise ValueError("bad %-escape")


def unquote(s, plus=False):
    """Percent-decodes s (and '+' to space if plus); ValueError on a bad escape or UTF-8."""
    if plus and "+" in s:
        s = s.replace("+", " ")
    if "%" not in s:
        return s
    b = s.encode()
    out = bytearray()
    i = 0
    n = len(b)
    while i < n:
        ch = b[i]
        if ch == 37:  # '%'
            if i + 2 >= n:
                raise ValueError("bad %-escape")
            ch = _hex(b[i + 1]) * 16 + _hex(b[i + 2])
            i += 2
        out.append(ch)
        i += 1
    return str(out, "utf-8")


class Response:
    def __init__(self, body=b"", status=200, headers=None, ctype=None):
        self.obj = None  # a JSON body: written in pieces (lib/jsonout), never whole
        if body is None:
            body = b""
        elif isinstance(body, (dict, list, jsonout.Lazy)):
            self.obj = body
            ctype = ctype or "application/json"
        if isinstance(body, str):
            body = body.encode()
            ctype = ctype or "text/plain; charset=utf-8"
        self.status = status
        self.headers = headers
        self.lazy = False
        if self.obj is None:
            self.body = body
            self.size = len(body)
        else:
            self.body = None
            self.size = jsonout.size(body)
            self.lazy = jsonout.has_lazy()
        self.ctype = ctype or ("application/octet-stream" if body else None)
        self.path = None  # set by file(): streamed from flash in chunks
        self.gunzip = 0  # a .gz file sent decompressed: its window bits (see static_file)

    @classmethod
    def file(cls, path, ctype=None, headers=None, size=None):
        r = cls(b"", 200, headers, ctype or content_type(path))
        r.path = path
        r.size = os.stat(path)[6] if size is None else size
        return r


class Request:
    # One is made per request, with as few attributes of its own as it can (the rest is
    # on its slot, or a class default until a handler sets it): its table is then among
    # the heap's smallest blocks, which a heap cut up by long-lived objects still has.
    _cookies = None
    _started = False
    body_timeout_ms = 5000  # Server's default; set on the request when the server's differs
    evictable = False  # a handler that only waits sets it: see Connections

    def __init__(self, c, method, path, query, headers, params, length):
        self._c = c
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # the slot's own dict, emptied for its next request
        self.params = params
        self.content_length = self.left = length

    @property
    def remote(self):
        return self._c.peer

    @property
    def cookies(self):
        if self._cookies is None:
            d = {}
            for part in self.headers.get("cookie", "").split(";"):
                k, _, v = part.partition("=")
                k = k.strip()
                if k:
                    d[k] = v.strip()
            self._cookies = d
        return self._cookies

    def buffer(self):
        """The connection's own line buffer (buf_size bytes), for a handler to read a long
        body into with read_into() and, once the body is read, to work in until it answers,
        instead of allocating one of its own. None while it holds bytes past the body (a
        pipelined request). Body bytes that came with the head are moved to its start
        (read_into copies them forward, never over what is still unread)."""
        c = self._c
        return c.mv if c.hi - c.lo <= self.left else None

    async def read_into(self, buf):
        """Reads up to len(buf) body bytes into buf; returns the count, 0 at the end."""
        left = self.left
        if left <= 0:
            return 0
        c = self._c
        srv = c.srv
        if not self._started:
            self._started = True  # the body's clock runs (c.since: its first read)
            c.since = ticks_ms()
        c.phase = _BODY
        if c.expect:
            c.expect = False
            c.deadline = ticks_add(ticks_ms(), srv.write_timeout_ms)
            await srv._write(c, _CONTINUE)
        n = min(len(buf), left)
        k = min(c.hi - c.lo, n)
        if k:  # bytes that arrived with the head come first
            buf[:k] = c.mv[c.lo : c.lo + k]
            c.lo += k
        else:
            mv = memoryview(buf)[:n]
            # Overall: a stall plus the announced size at min_rate, from the first read.
            end = self.body_timeout_ms + srv._ms(self.content_length)
            end = ticks_add(c.since, end if end < _MAX_MS else _MAX_MS)
            stall = ticks_add(ticks_ms(), self.body_timeout_ms)
            c.deadline = stall if ticks_diff(end, stall) > 0 else end
            c.armed = True
            k = None
            while k is None:
                try:
                    k = await c.stream.readinto(mv)
                except OSError:
                    c.broken = True
                    raise
            c.armed = False
            if not k:  # peer closed before sending the announced body
                c.broken = True
                raise EOFError
        self.left = left - k
        if self.left == 0:
            c.phase = _BUSY
        return k

    async def read(self, n):
        n = min(n, self.left)
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            got += await self.read_into(mv[got:])
        return buf

    async def json(self, max_bytes=None):
        if self.left > (max_bytes or self._c.limit):
            raise HTTPError(413)
        if not self.left:
            raise HTTPError(400, "empty body")
        try:
            return json.loads(await self.read(self.left))
        except ValueError:  # includes UnicodeError
            raise HTTPError(400, "bad json") from None


class _Conn:
    """One connection slot, made whole at Server() (see Connections): its line buffer,
    headers dict, stream and task. Few attributes: each costs heap."""

    def __init__(self, srv, buf):
        self.srv = srv
        self.buf = buf
        self.mv = memoryview(self.buf)
        self.hdrs = {}  # the request's headers: emptied in place, its table kept
        self.line = None  # the head's request line: [method, target, version]
        self.limit = 0  # the request's body limit, and whether 100 Continue is owed
        self.expect = False
        self.free = True  # no client: the accept loop may hand it one
        self.hs = self.hc = 0  # head parser: state; header lines << 16 | their bytes
        self.task = None  # the slot's own, for the server's life (Server(), start())
        self.parked = False  # its task waits for _accept to hand it a client
        self.stream = None  # the slot's own too: its socket (.s) is the client's
        self.peer = None
        self.phase = _FREE
        self.lo = self.hi = self.ls = 0  # unread bytes: buf[lo:hi]; last line at ls
        self.since = self.deadline = 0
        self.req = None  # the request being served, for _evict
        self.armed = self.killed = self.broken = self.sent = False
        # Answers since the client last made us wait (pipelined ones add up): started at
        # ans (None: no run), bytes handed to the stream (put) and taken by the socket (took).
        self.ans = None
        self.put = self.took = 0


def _fits(pat, segs, params):
    """Whether a path's segments (segs[0] the empty one before its "/") fit pattern pat,
    segment by segment, a `<name>` one any but an empty one. With params, the names are
    filled; nothing else is allocated (the pattern's pieces are compared in place)."""
    n = len(pat)
    j = 1  # where pat's segment i starts
    for i in range(1, len(segs)):
        if j > n:
            return False
        k = pat.find("/", j)
        if k < 0:
            k = n
        s = segs[i]
        if pat.startswith("<", j):
            if not s:
                return False
            if params is not None:
                params[pat[j + 1 : k - 1]] = s
        elif len(s) != k - j or not pat.startswith(s, j):
            return False
        j = k + 1
    return j == n + 1


def _writable(io, s):
    yield io.queue_write(s)


def _readable(s):
    # Same wait as extmod/asyncio/stream.py Server._serve: park the task until s polls in.
    yield asyncio.core._io_queue.queue_read(s)


# Window of the web app's .gz assets (tools/build_www.py): what inflating one for a client
# without gzip takes from the heap (8 KB), instead of deflate's 32 KB default.
GZIP_WBITS = 13


def _gz_size(path):
    """The inflated size of a .gz file: its trailer's ISIZE (RFC 1952; files < 4 GB)."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        b = f.read(4)
    return b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24


def _stat(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if st[0] & _S_IFDIR else st


class Server:
    max_conns = 6  # live connections (slots): a browser opens up to 6 per host
    # listen() queue, where clients wait while all slots are busy: longer than a flood
    # of slow clients, whose overflow would drop a new client's SYN (1 s, 3 s... to retry);
    # lwIP caps it at its free PCBs anyway
    backlog = 64
    buf_size = 1024  # per-connection line buffer; a header line must fit (else 431)
    chunk_size = 2048  # shared scratch: coalesced response head + small body, file chunks
    max_line = 512  # request line (414)
    max_headers = 24  # header lines (431)
    max_header_bytes = 2048  # all header lines together (431)
    max_query = 32  # query parameters (400)
    max_body = 4096  # default route body limit (413)
    drain_max = 4096  # unread body a handler left that we skip to keep the connection
    max_requests = 100  # per connection, then Connection: close
    # Free heap a new client needs (its socket, a request's short-lived objects: ~1.8 KB
    # on the 64-bit unix port): below it, the client waits in the backlog as at the cap.
    min_free = 2048
    head_timeout_ms = 5000  # first byte to end of head, overall (408)
    idle_timeout_ms = 10000  # keep-alive wait for the next request
    body_timeout_ms = 5000  # longest wait for more body bytes (a stall); per request
    write_timeout_ms = 10000  # an answer's whole write, plus its size at min_rate
    # Bytes/s a body must average (its overall deadline: body_timeout_ms + size at this
    # rate, 512 s for 4 MB) and an answer gets. Well below a slow WiFi link's 20 KB/s.
    min_rate = 8192
    evict_after_ms = 20  # idle/head age, or body lag behind min_rate, before eviction
    answer_grace_ms = 500  # answer lag behind min_rate before it may give way
    linger_ms = 300  # discard input after an error answer so the client can read it
    tick_ms = 100  # reaper period: deadline resolution
    # Request headers decoded into req.headers (besides framing ones); None keeps all.
    # Browsers send a dozen more (user-agent, sec-fetch-*...): skipping them saves heap.
    keep_headers = ("host", "content-type", "cookie", "accept-encoding", "if-none-match",
                    "authorization", "origin")
    cache_control = "no-cache"  # static assets: always revalidate (cheap 304)
    static_tag = ""  # mixed into static ETags, e.g. the firmware build id
    # The application's hooks: check_request(headers) runs before routing and returns None
    # to go on or a status (421, 403...) answered at once, connection closed; after(req,
    # res) gets what a route's handler returned (not an exception, a 404/405 or a static
    # file) and returns the answer to send; extra_headers ("Name: value\r\n" lines) go
    # into every answer. handlers: the object whose methods the routes name by str.
    check_request = None
    after = None
    extra_headers = ""
    handlers = None

    def __init__(self, routes, static_root=None, log=None, **limits):
        for k in limits:
            if not hasattr(Server, k):
                raise TypeError("unknown limit " + k)
            setattr(self, k, limits[k])
        self.static_root = static_root.rstrip("/") if static_root else None
        self._log = log
        for r in routes:  # a named handler that is not there fails now, not at its request
            if isinstance(r[2], str) and not hasattr(self.handlers, r[2]):
                raise ValueError("no handler " + r[2])
        self._routes = routes  # as given: a constant table stays where it is (flash)
        # The first use of StreamReader loads asyncio's stream module (1.9 KB on the unix
        # port, for good): now, first of our lasting objects, not amid a connection's.
        asyncio.StreamReader
        self._scratch = memoryview(bytearray(self.chunk_size))
        self._lines = {}  # status -> its encoded status line, made at first use
        self._ctypes = {}  # Content-Type -> encoded, the first few seen
        self._extra = None  # extra_headers encoded, at the first answer
        keep = self.keep_headers  # the names a request's headers dict can hold
        self._names = _FRAMING + tuple(keep) if keep is not None else _FRAMING
        self._out = jsonout.Chunks(self._scratch)  # answers: the head, a small body
        # The pool: each slot whole (its buffer, its task's frame and its stream, kept for
        # the server's life), as many as the heap holds up to max_conns; a client beyond
        # them waits in the backlog. A board's heap holds them all; the unix port's at 64
        # KB, which also keeps this code and the app's, fewer.
        self._slots = []
        for _ in range(self.max_conns):
            try:
                c = _Conn(self, bytearray(self.buf_size))
                c.stream = asyncio.StreamReader(None)
                c.task = self._serve(c, True)  # start() makes it the slot's task
            except MemoryError:
                c = None
                gc.collect()
                if not self._slots:
                    raise
                break
            self._slots.append(c)
        self._nfree = len(self._slots)  # slots with c.free set: no list that could grow
        self._collected = ticks_ms()  # _room's last collection
        self._inflating = False  # one .gz answer inflated at a time (_send_gunzip)
        self._sock = self._tasks = self._linger = None
        self._probe = select.poll()  # _pending(): one poller, no allocation per look
        self._sol = 1
        self._crowd = False  # a client waits in the backlog
        self._napping = False  # _accept sleeps with a client waiting
        self.requests = self.timeouts = self.evictions = self.errors = 0

    def _ms(self, n):
        """Milliseconds n bytes take at min_rate (no big ints on 32-bit boards)."""
        r = self.min_rate
        return n // r * 1000 + n % r * 1000 // r

    @property
    def live(self):
        return len(self._slots) - self._nfree

    async def start(self, host="0.0.0.0", port=80):
        """Binds and listens (host: an IP; getaddrinfo blocks on names), then serves."""
        import socket

        ai = socket.getaddrinfo(host, port)[0]
        s = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(ai[-1])
            s.listen(self.backlog)
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._sock = s
        self._linger = getattr(socket, "SO_LINGER", None)
        self._sol = socket.SOL_SOCKET
        self._tasks = (asyncio.create_task(self._accept(s)), asyncio.create_task(self._reap()))
        for c in self._slots:
            c.task = asyncio.create_task(c.task)

    def close(self):
        if self._tasks:
            for t in self._tasks:
                t.cancel()
            self._tasks = None
            self._napping = False
        for c in self._slots:
            t = c.task
            c.task = None
            if t is None:
                continue
            if not isinstance(t, asyncio.Task):
                pass  # never started
            elif c.parked:  # woken without a connection: it ends, the server being closed
                c.parked = False
                asyncio.core._task_queue.push(t)
            else:
                c.killed = True
                t.cancel()
        if self._sock:
            self._sock.close()
            self._sock = None

    def _note(self, msg, exc=None):
        # Never raises: it is called from except blocks, where an exception of the log's
        # own (a MemoryError formatting the line) would end a slot's task or the accept
        # loop for good.
        if self._log:
            try:
                self._log(msg, exc)
            except Exception:
                pass

    # -- connections: accept, slots, deadlines -------------------------------------
    async def _accept(self, ls):
        while True:
            s = c = None
            try:
                await _readable(ls)
                room = self._room()
                if room:
                    for c in self._slots:
                        if c.free and c.parked:
                            break
                    else:
                        c = None  # at the cap, or a slot's task is still letting its last client go
                if c is None or not c.parked:
                    # At the cap or short of heap: the client waits in the backlog.
                    c = None
                    self._napping = True  # a slot let go of wakes us (_release)
                    if room is None:  # maybe only garbage: no one gives way before a collection
                        await asyncio.sleep_ms(self._uncollected_ms())
                    else:
                        self._crowd = True  # answers close their connections meanwhile
                        await asyncio.sleep_ms(self._evict())
                    self._napping = False
                    continue
                self._crowd = False
                s, c_peer = ls.accept()
                s.setblocking(False)
                try:  # TCP_NODELAY: else Nagle holds each file chunk for the peer's delayed ACK
                    s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
                except Exception:
                    pass
                c.stream.s = s
                c.stream.out_buf = b""
                c.peer = c_peer
                c.phase = _NEW
                c.since = ticks_ms()
                c.free = False
                self._nfree -= 1
                c.parked = False
                asyncio.core._task_queue.push(c.task)  # the slot's task takes it from here
                s = None
            except Exception as e:  # EAGAIN, EMFILE, ECONNABORTED, MemoryError
                if c is not None and c.parked:  # not handed over
                    c.phase = _FREE
                    c.peer = c.stream.s = None
                    if not c.free:
                        c.free = True
                        self._nfree += 1
                if s is not None:
                    s.close()
                if isinstance(e, MemoryError):
                    gc.collect()
                    self.errors += 1
                    self._note("httpd: MemoryError in accept", e)
                await asyncio.sleep_ms(10)

    def _room(self):
        """Heap for one more client's request (min_free), after a collection if need be:
        True; False if short after one; None if short and the last collection was less
        than tick_ms ago (not one per look), so the shortage may be garbage and no
        connection gives way for it. The first client always gets in."""
        if self._nfree == len(self._slots) or gc.mem_free() >= self.min_free:
            return True
        if self._uncollected_ms():
            return None
        self._collected = ticks_ms()
        gc.collect()
        return gc.mem_free() >= self.min_free

    def _uncollected_ms(self):
        """ms until _room may collect again (0: now)."""
        return max(0, self.tick_ms - ticks_diff(ticks_ms(), self._collected))

    def _release(self, c):
        # out.sink too: the stream's write would keep the closed stream and socket.
        c.peer = c.req = c.line = c.stream.s = None
        c.stream.out_buf = b""
        c.phase = _FREE
        c.lo = c.hi = 0
        c.armed = c.killed = c.broken = False
        c.ans = None  # a new client's answers: a new run
        if not c.free:
            c.free = True
            self._nfree += 1
        if self._napping and self._tasks:  # a client waits in the backlog: take it now, not at the nap's end
            self._napping = False
            q = asyncio.core._task_queue  # as Task.cancel() brings a sleeping task forward
            q.remove(self._tasks[0])
            q.push(self._tasks[0])

    def _evict(self):
        """At the cap, with a client waiting: cancels the one connection that gives way
        best, if any -> ms before looking again (0: one is going, its slot frees now).

        In order: idle or in its head for evict_after_ms (oldest first); a body or an
        answer behind min_rate beyond its grace (furthest behind first); a handler that
        said it only waits (req.evictable, oldest first). Other handlers stay.
        """
        now = ticks_ms()
        old = None
        bk = ba = 0
        wait = 10
        for c in self._slots:
            if c.killed:
                return 1  # one is already going: its slot frees on its next step
            ph = c.phase
            if ph == _IDLE or ph == _HEAD or ph == _NEW:
                a = ticks_diff(now, c.since) - self.evict_after_ms
                if ph == _NEW:  # nothing sent yet: a client a round trip away gets longer
                    a -= 3 * self.evict_after_ms
                k = 3
            elif ph == _BODY:  # how far behind min_rate since its first read
                r = c.req
                a = ticks_diff(now, c.since) - self._ms(r.content_length - r.left)
                g = r.body_timeout_ms  # a handler that lengthened it allows that stall
                a -= g if g > self.body_timeout_ms else self.evict_after_ms
                k = 2
            elif ph == _BUSY and c.sent:  # how far the client's taking is behind min_rate
                a = ticks_diff(now, c.ans) - self._ms(c.took) - self.answer_grace_ms
                k = 2
            elif ph == _BUSY and c.req is not None and c.req.evictable:
                k, a = 1, ticks_diff(now, c.since)
            else:
                continue
            if a < 0:
                if -a < wait:
                    wait = -a
            elif (k > bk or (k == bk and a > ba)) and (ph == _BUSY or not self._pending(c)):
                old, bk, ba = c, k, a
        if old is None or old.task is None:
            return wait
        old.killed = True
        old.task.cancel()
        self.evictions += 1
        return 0

    def _pending(self, c):
        """True if c's client has sent what we have not read yet: then the wait is ours
        (a busy loop), not the client's, and c is not evicted for it."""
        p = self._probe
        try:
            p.register(c.stream.s, select.POLLIN)
            for _ in p.ipoll(0):
                return True
            return False
        except Exception:
            return False
        finally:
            try:
                p.unregister(c.stream.s)
            except Exception:
                pass

    def _arm(self, c, ms):
        c.deadline = ticks_add(ticks_ms(), ms)
        c.armed = True

    async def _reap(self):
        """The one deadline enforcer: cancels connections whose armed deadline passed."""
        while True:
            await asyncio.sleep_ms(self.tick_ms)
            now = ticks_ms()
            for c in self._slots:
                if c.armed and c.task is not None and ticks_diff(now, c.deadline) >= 0:
                    c.armed = False
                    c.killed = True
                    self.timeouts += 1
                    try:
                        c.task.cancel()
                    except Exception as e:  # never let the reaper die: no deadlines then
                        self._note("httpd: reaper", e)

    async def _serve(self, c, worker=False):
        # With worker, the slot's task for the server's life (start()): one connection
        # after another, so its frame is made once. The whole request path runs here and
        # in plain functions: a connection holds nothing more than its socket and asyncio's
        # wait on it (as Stream.readinto waits, without its coroutine); a request makes no
        # coroutine but its handler's, and what it made is let go of before the last drain.
        io = asyncio.core._io_queue
        try:
            while True:
                try:
                    if worker and c.phase == _FREE:  # waits for _accept to hand it a client
                        c.parked = True
                        yield
                        if self._tasks is None:
                            return  # woken by close()
                    s = c.stream.s
                    if c.phase == _FREE:  # handed one by a caller of its own (tests)
                        c.phase = _NEW
                    n = 0
                    while True:
                        c.sent = False
                        c.req = None
                        if n:
                            c.phase = _IDLE
                        c.since = ticks_ms()
                        self._arm(c, self.idle_timeout_ms if n else self.head_timeout_ms)
                        if c.lo == c.hi and not self._pending(c):
                            c.ans = None  # the client waits for us no more: a new answer run
                        c.hs = 0
                        try:
                            while True:
                                if c.lo < c.hi:
                                    if c.phase != _HEAD:  # the head's clock runs from its first byte
                                        c.phase = _HEAD
                                        c.since = ticks_ms()
                                        self._arm(c, self.head_timeout_ms)
                                    if self._parse(c) != _MORE:
                                        break
                                while self._recv(c, s) is None:
                                    yield io.queue_read(s)
                            r = self._route(c)
                        except EOFError:
                            if c.phase == _HEAD:
                                raise
                            break  # closed between requests: normal
                        except HTTPError as e:
                            await self._fail(c, e.status)
                            break
                        except ValueError:  # includes UnicodeError
                            await self._fail(c, 400)
                            break
                        rq, route, segs = r
                        r = None
                        method, _, ver = c.line
                        keep = ver == "HTTP/1.1"
                        conn = rq.headers.get("connection", "").lower()
                        if "close" in conn:
                            keep = False
                        elif "keep-alive" in conn:
                            keep = True
                        if self._crowd:
                            keep = False  # a client waits in the backlog: hand the slot over
                        if n + 1 >= self.max_requests:
                            keep = False
                        c.req = rq
                        self.requests += 1
                        try:
                            if isinstance(route, str):
                                res = Response({"error": "method not allowed"}, 405, {"Allow": route})
                            elif route is not None:
                                h = route[2]
                                if isinstance(h, str):
                                    h = getattr(self.handlers, h)
                                res = await h(rq)
                                if self.after is not None:
                                    res = self.after(rq, res)
                            elif self.static_root and (method == "GET" or method == "HEAD"):
                                # segs were percent-decoded and checked by _request: no
                                # '..', '.x', '\', NUL, '//'.
                                p = self.static_root + "/".join(segs)
                                res = self.static_file(rq, p if segs[-1] else p + "index.html")
                            else:
                                res = Response({"error": "not found"}, 404)
                        except HTTPError as e:
                            res = Response({"error": e.msg}, e.status)
                        except Exception as e:
                            if c.broken:
                                raise
                            self.errors += 1
                            self._note("httpd: %s %s failed" % (method, rq.path), e)
                            if isinstance(e, MemoryError):  # the heap, not the request: try again
                                gc.collect()
                                res = Response({"error": "busy"}, 503, _RETRY)
                            else:
                                res = Response({"error": "internal error"}, 500)
                            keep = False
                        if rq.left and (c.expect or rq.left > self.drain_max):
                            keep = False  # body not read: closing is cheaper than reading it
                        c.phase = _BUSY
                        n_try = _SEND_TRIES
                        while True:
                            try:
                                w = self._send(c, res, keep, method == "HEAD", ver == "HTTP/1.0")
                                break
                            except MemoryError:
                                # No room for the answer's coroutine (a file, a large JSON):
                                # its head is still in the scratch, nothing went out; other
                                # answers free their memory meanwhile. Else as any failure.
                                n_try -= 1
                                if not n_try or self._out.total != self._out.n:
                                    raise
                            gc.collect()
                            await asyncio.sleep_ms(self.tick_ms)
                        res = route = segs = method = conn = h = None
                        if w is not None:
                            await w
                            w = None
                        if keep and rq.left:
                            await self._drain(c)  # the whole answer before we read on
                            while rq.left:
                                await rq.read_into(self._scratch)
                        rq = c.req = c.line = None
                        self._clear(c.hdrs)
                        if c.sent:  # the answer's last write, drained now the request is let go of
                            if c.stream.out_buf:
                                await self._drain(c)
                            else:  # all taken: still yield once, as drain() does, but no coroutine
                                c.armed = True
                                await asyncio.sleep_ms(0)
                                c.armed = False
                                c.took = c.put
                        if not keep:
                            break
                        n += 1
                except asyncio.CancelledError:
                    w = rq = h = None  # an answer's generator (an inflater's window), the request
                    if not c.killed:
                        raise
                    if c.phase == _HEAD or (c.phase == _BODY and not c.sent):
                        self._try_write(c, _R408)  # timed out or evicted before the request was in
                    elif c.phase == _BUSY and not c.sent:
                        self._try_write(c, _R503)  # an evictable handler gave way
                    elif c.phase == _BUSY and c.sent and self._linger:
                        try:  # an answer not taken in time: reset, don't keep sending what is queued
                            c.stream.s.setsockopt(self._sol, self._linger, _ABORT)
                        except Exception:
                            pass
                except Exception as e:
                    w = rq = h = None  # an answer's generator (an inflater's window), the request
                    mem = isinstance(e, MemoryError)
                    if mem:
                        gc.collect()
                    if not (c.sent or c.broken):
                        self._try_write(c, _RBUSY if mem else _R500)
                    if not (c.broken or isinstance(e, (OSError, EOFError))):
                        self.errors += 1
                        self._note("httpd: connection failed", e)
                finally:
                    if c.phase != _FREE:
                        try:
                            c.stream.s.close()
                        except Exception:
                            pass
                        self._release(c)
                if not worker or self._tasks is None:
                    return
        finally:
            if worker and c.task is not None and c.task is asyncio.current_task():
                c.task = None  # ended: the slot's next client gets a new one
                c.parked = False

    def _try_write(self, c, data):
        try:
            c.stream.write(data)  # best effort: whatever the socket takes now
        except Exception:
            pass

    # -- reading: a bounded line reader over the slot buffer ----------------------
    def _recv(self, c, s):
        """Reads what socket s has into the slot buffer -> bytes read, or None when it has
        nothing yet (wait for it); EOFError when the client closed."""
        if c.lo == c.hi:
            c.lo = c.hi = 0
        elif c.hi == len(c.buf):  # a partial line at the end: move it to the front
            k = c.hi - c.lo
            c.buf[:k] = c.mv[c.lo : c.hi]  # moves forward in place (memmove): no copy made
            c.lo = 0
            c.hi = k
        try:
            k = s.readinto(c.mv[c.hi :] if c.hi else c.mv)
        except OSError:
            c.broken = True
            raise
        if k is None:
            return None
        if not k:
            c.broken = True
            raise EOFError
        c.hi += k
        return k

    def _line(self, c, limit):
        """Next buffered line at buf[ls:ls+k] without CRLF: k, _LONG, or _MORE (read first).

        Plain function, not a coroutine: a head that arrived whole costs no allocation here.
        """
        i = c.buf.find(b"\n", c.lo, c.hi)
        if i < 0:  # no newline yet: stop reading once it is already too long
            return _LONG if c.hi - c.lo > limit else _MORE
        s = c.lo
        c.lo = i + 1
        if i > s and c.buf[i - 1] == 13:
            i -= 1
        c.ls = s
        return i - s if i - s <= limit else _LONG

    def _parse(self, c):
        """Takes the buffered lines of a head -> _MORE (read more first) or 0 (complete):
        its request line and headers into c. Resumes where it stopped
        (c.hs: 0 request line next, 1 after one empty line, RFC 9112 2.2, 2 header lines).
        Raises HTTPError for 414/431/501/505 and ValueError for anything malformed.
        """
        while c.hs < 2:
            k = self._line(c, self.max_line)
            if k == _MORE:
                return _MORE
            if k == 0 and c.hs == 0:
                c.hs = 1
                continue
            if k < 0:
                raise HTTPError(414)
            parts = str(c.mv[c.ls : c.ls + k], "utf-8").split(" ")
            if len(parts) != 3:
                raise ValueError("bad request line")
            method, target, ver = parts
            if ver != "HTTP/1.1" and ver != "HTTP/1.0":
                if ver.startswith("HTTP/"):
                    raise HTTPError(505)
                raise ValueError("bad version")
            if method not in _METHODS:
                raise HTTPError(501)
            if target[:1] != "/":
                raise ValueError("not origin-form")
            c.line = parts
            self._clear(c.hdrs)
            c.hs = 2
            c.hc = 0
        keep = self.keep_headers
        hdrs = c.hdrs
        while True:
            k = self._line(c, self.buf_size - 2)
            if k == _MORE:
                return _MORE
            if k == 0:
                return 0
            c.hc += 0x10000 + k  # lines above, bytes below: one attribute
            if k < 0 or c.hc >> 16 > self.max_headers or c.hc & 0xFFFF > self.max_header_bytes:
                raise HTTPError(431)
            s = c.ls
            i = c.buf.find(b":", s, s + k)
            if i <= s or c.buf[s] in _WS or c.buf[i - 1] in _WS:  # no name, obs-fold, "Name :"
                raise ValueError("bad header")
            name = str(c.mv[s:i], "utf-8").lower()
            if name in _FRAMING or keep is None or name in keep:  # others: never decoded
                v = str(c.mv[i + 1 : s + k], "utf-8").strip()
                hdrs[name] = hdrs[name] + ", " + v if name in hdrs else v

    def _clear(self, hdrs):
        if self.keep_headers is None:
            hdrs.clear()
        else:
            for name in self._names:  # emptied in place: the dict keeps its table
                if name in hdrs:
                    del hdrs[name]

    def _route(self, c):
        """The head is in: its checks, then routing -> (Request, the route, else the
        Allow string, else None, the path's segments). Raises as _parse does (and 411, 413, 417, the
        check_request hook's status)."""
        c.phase = _BUSY
        c.armed = False
        hdrs = c.hdrs
        if self.check_request is not None:
            refused = self.check_request(hdrs)
            if refused:
                raise HTTPError(refused)
        if "transfer-encoding" in hdrs:  # bodies are framed by Content-Length only
            raise HTTPError(411 if "chunked" in hdrs["transfer-encoding"] else 501)
        cl = hdrs.get("content-length", "0")
        if not cl.isdigit() or len(cl) > 10:
            raise ValueError("bad Content-Length")
        length = int(cl)
        expect = hdrs.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HTTPError(417)
            expect = length > 0
        method, target, _ = c.line
        path, segs, query = self._target(target)
        params = {}
        route = self._match(method, path, segs, params)
        limit = self.max_body
        if route is not None and not isinstance(route, str):
            if len(route) > 3:
                limit = route[3]
            if length > limit:
                raise HTTPError(413)  # before reading any of it
        c.limit = limit
        c.expect = expect  # "100 Continue" owed before the first body read
        rq = Request(c, method, path, query, hdrs, params, length)
        if self.body_timeout_ms != Request.body_timeout_ms:
            rq.body_timeout_ms = self.body_timeout_ms  # a handler may lengthen its own
        return rq, route, segs

    def _target(self, target):
        """-> (path, decoded segments, query dict); ValueError on traversal or bad escapes."""
        path, _, qs = target.partition("?")
        segs = path.split("/")
        last = len(segs) - 1
        for i in range(1, last + 1):
            s = segs[i]
            if "%" in s:
                s = segs[i] = unquote(s)
            if not s:
                if i < last:
                    raise ValueError("empty segment")  # '//'
            elif s[0] == "." or "/" in s or "\\" in s or "\x00" in s:
                raise ValueError("bad segment")  # traversal or hidden file
        return path, segs, self._query(qs) if qs else {}

    def _query(self, qs):
        q = {}
        for part in qs.split("&"):
            if part:
                if len(q) >= self.max_query:
                    raise ValueError("too many query parameters")
                k, _, v = part.partition("=")
                q[unquote(k, True)] = unquote(v, True)
        return q

    def _match(self, method, path, segs, params):
        """The first route for the path's decoded segments and the method (HEAD takes a
        GET route; params filled), else the Allow string of the path's routes, else None.
        A pattern without `<name>` is compared with the path whole: the path as it came
        when it has no %-escape (allocating nothing), else its decoded segments joined."""
        if "%" in path:
            path = "/".join(segs)  # a decoded segment holds no "/" (_target)
        allow = None
        for r in self._routes:
            pat = r[1]
            if "<" in pat:
                if pat.count("/") != len(segs) - 1 or not _fits(pat, segs, None):
                    continue
            elif pat != path:
                continue
            m = r[0]
            if m == method or (method == "HEAD" and m == "GET"):
                if "<" in pat:
                    _fits(pat, segs, params)
                return r
            allow = m if allow is None else allow + ", " + m
        return allow

    def static_file(self, req, p):
        """The answer for the file at path p (checked by the caller) as the static files
        get it: p.gz to a client that takes gzip, else p, else p.gz inflated; ETag,
        Cache-Control, 304. HTTPError(404) when neither p nor p.gz is a file."""
        gz = "gzip" in req.headers.get("accept-encoding", "")
        st = _stat(p + ".gz") if gz else None
        plain = False
        if st is None:
            gz = False
            st = _stat(p)
            if st is None:
                st = _stat(p + ".gz")
                if st is None:
                    raise HTTPError(404)
                plain = True  # only stored compressed: inflated on the way (curl, tools)
        etag = '"%s%x-%x%s"' % (self.static_tag, st[6], st[8],
                                "-gz" if gz else ("-plain" if plain else ""))
        hdrs = [("ETag", etag), ("Cache-Control", self.cache_control), ("Vary", "Accept-Encoding")]
        inm = req.headers.get("if-none-match")
        if inm and (inm == "*" or etag in inm):
            return Response(None, 304, hdrs)
        if gz:
            hdrs.append(("Content-Encoding", "gzip"))
        if plain:
            # One at a time, and only with room to spare: each takes a window and the
            # decompressor's state (about 12 KB) from a heap the control tasks share.
            if self._inflating or gc.mem_free() < (2 << GZIP_WBITS) + self.min_free:
                return Response({"error": "busy"}, 503, _RETRY)
            size = _gz_size(p + ".gz")
            if not 0 < size <= st[6] * 1032:  # deflate expands 1032:1 at the very most
                self._note("httpd: %s.gz is damaged (its trailer says %d bytes)" % (p, size))
                raise HTTPError(500, "damaged file")
            r = Response.file(p + ".gz", content_type(p), hdrs, size)
            r.gunzip = GZIP_WBITS
            return r
        return Response.file(p + ".gz" if gz else p, content_type(p), hdrs, st[6])

    async def _fail(self, c, status):
        """Answers an error that leaves the request framing unknown, then closes."""
        c.phase = _BUSY
        c.armed = False
        res = Response({"error": _get(_REASONS, status, "error").lower()}, status)
        w = self._send(c, res, False, False, False)
        if w is not None:
            await w
        await self._drain(c)
        c.phase = _IDLE  # lingering: no answer owed, nothing to reset
        c.since = ticks_ms()
        self._arm(c, self.linger_ms)
        got = 0
        try:
            while got < _LINGER_BYTES:
                k = await c.stream.readinto(self._scratch)
                if k == 0:
                    break
                got += k or 0
        except OSError:
            pass
        return False

    # -- writing -------------------------------------------------------------------
    # An answer's last write is only put: _serve drains it once _request has returned
    # (see Connections).
    def _put(self, c, data):
        try:
            c.stream.write(data)  # what the socket does not take now waits in the stream
        except OSError:
            c.broken = True
            raise
        c.put += len(data)

    async def _drain(self, c):
        c.armed = True  # c.deadline: the answer's overall one (_send), not one per drain
        try:
            await c.stream.drain()
        except OSError:
            c.broken = True
            raise
        c.armed = False
        c.took = c.put  # the socket has all of it now

    def _write(self, c, data):
        # Plain function returning _drain's coroutine: an awaited write makes no coroutine
        # of its own.
        self._put(c, data)
        return self._drain(c)

    def _send(self, c, res, keep, head_only, v10):
        """Writes the answer, all but its last write, which the caller drains: -> None, or
        a coroutine to await for an answer that takes more than the scratch buffer.

        res: a Response, or a handler's own result (dict, list, Lazy: JSON 200; None: 204;
        bytes or str) sent as it is, without a Response made for it. The head is written
        into the scratch buffer piece by piece, not built as a string.
        """
        if isinstance(res, Response):
            st = res.status
            obj = res.obj
            body = res.body
            size = res.size
            ctype = res.ctype
            hd = res.headers
            path = res.path
            lazy = res.lazy
            if res.gunzip:
                return self._send_gunzip(c, res, keep, head_only, v10)
        elif res is None:
            st = 204
            obj = ctype = hd = path = None
            body = b""
            size = 0
            lazy = False
        elif isinstance(res, (dict, list, jsonout.Lazy)):
            st = 200
            obj = res
            body = hd = path = None
            size = jsonout.size(res)
            lazy = jsonout.has_lazy()
            ctype = "application/json"
        else:
            return self._send(c, Response(res), keep, head_only, v10)
        out = self._out  # every answer that needs no await goes through this one
        out.reset(c.stream.write)
        line = self._lines.get(st)
        if line is None:
            line = ("HTTP/1.1 %d %s\r\n" % (st, _get(_REASONS, st, "Status"))).encode()
            if _get(_REASONS, st, None) is not None:
                self._lines[st] = line
        out.write(line)
        if st != 204 and st != 304:
            out.write(b"Content-Length: %d" % size)
            if ctype:
                out.write(b"\r\nContent-Type: ")
                b = self._ctypes.get(ctype)
                if b is None:
                    b = ctype.encode()
                    if len(self._ctypes) < 8:
                        self._ctypes[ctype] = b
                out.write(b)
            out.write(b"\r\n")
        if hd:
            for k, v in hd.items() if isinstance(hd, dict) else hd:
                out.write(("%s: %s\r\n" % (k, v)).encode())
        if self._extra is None:
            self._extra = self.extra_headers.encode()
        if self._extra:
            out.write(self._extra)
        if not keep:
            out.write(b"Connection: close\r\n")
        elif v10:
            out.write(b"Connection: keep-alive\r\n")
        out.write(b"\r\n")
        c.sent = True
        if c.ans is None:
            c.ans = ticks_ms()
            c.put = c.took = 0
        ms = self.write_timeout_ms + (0 if head_only else self._ms(size))
        c.deadline = ticks_add(ticks_ms(), min(ms, _MAX_MS))
        base = c.put
        m = out.total  # the head's length
        if head_only or st == 204 or st == 304:
            pass
        elif path:
            return self._send_file(c, path, size, base)
        elif obj is not None and (lazy or m + size > len(self._scratch)):
            return self._send_json(c, obj, m + size, base)
        elif obj is not None:  # fits the scratch (most answers): one write, no coroutines
            json.dump(obj, out)
            if out.total != m + size:  # changed since it was counted: framing lost
                c.broken = True
                raise OSError(5)
        elif out.n + len(body) <= len(self._scratch):  # one write: no Nagle stall
            out.write(body)
        else:
            return self._send_body(c, body, base)
        self._flush(c, base)
        return None

    def _flush(self, c, base):
        out = self._out
        try:
            out.flush()
        except OSError:
            c.broken = True
            raise
        finally:
            out.sink = None  # it would keep the stream and its socket
        c.put = base + out.total

    async def _send_body(self, c, body, base):
        self._flush(c, base)
        await self._drain(c)
        self._put(c, body)

    async def _send_json(self, c, obj, total, base):
        # Head and body through the shared scratch, flushed to the socket whenever it
        # fills and before every await (so another connection may use it meanwhile):
        # a small answer is still one write.
        o = self._out  # the head is in the scratch: a writer of its own from there on
        out = jsonout.Chunks(self._scratch, o.sink)
        out.n = o.n
        out.total = o.total
        o.sink = None
        try:
            await jsonout.write(obj, out, lambda: self._pause(c, out, base))
            out.flush()
        except OSError:
            c.broken = True
            raise
        c.put = base + out.total
        if out.total != total:  # never expected: the framing is lost
            c.broken = True
            raise OSError(5)

    async def _pause(self, c, out, base):
        out.flush()
        out.dirty = False
        c.armed = True
        await c.stream.drain()
        c.armed = False
        c.took = base + out.total

    async def _send_gunzip(self, c, res, keep, head_only, v10):
        """A .gz asset inflated for a client without gzip, in scratch-sized pieces through
        the stream (a rare answer: no re-read trick as _send_file's). The decompressor's
        window is GZIP_WBITS (tools/build_www.py compresses with it): about 12 KB while it
        runs, one answer at a time (static_file), none before or after."""
        import deflate

        path = res.path
        res.path = None  # the head goes out as any other answer's (size from the trailer)
        res.gunzip = 0
        if head_only:
            self._send(c, res, keep, True, v10)
            return
        self._inflating = True
        f = z = None
        try:
            f = open(path, "rb")
            z = deflate.DeflateIO(f, deflate.GZIP, GZIP_WBITS)
            first = bytearray(1)  # the window is taken now, before a 200 is promised
            try:
                k0 = z.readinto(first)
            except MemoryError:
                gc.collect()
                self._send(c, Response({"error": "busy"}, 503, _RETRY), False, False, v10)
                c.broken = True  # nothing more on this connection
                return
            self._send(c, res, keep, True, v10)  # the head alone: written, nothing to await
            size = res.size
            c.deadline = ticks_add(ticks_ms(),
                                   min(self.write_timeout_ms + self._ms(size), _MAX_MS))
            self._put(c, first[:k0])
            left = size - k0
            s = self._scratch
            await self._drain(c)
            while left > 0:
                try:
                    k = z.readinto(s[: min(len(s), left)])
                except (OSError, ValueError) as e:  # damaged data: the framing is lost
                    k = 0
                    self._note("httpd: %s: %r" % (path, e))
                if not k:
                    c.broken = True
                    raise OSError(5)  # shorter than its trailer says: close, never desync
                left -= k
                self._put(c, s[:k])
                await self._drain(c)
        finally:
            self._inflating = False
            z = None
            if f is not None:
                f.close()

    async def _send_file(self, c, path, size, base):
        # Straight from the shared scratch to the socket: what it does not take is read
        # from the file again after the wait, not copied into the stream (a chunk-sized
        # block each time the client is slower than we are).
        s = self._scratch
        out = self._out
        m = out.n  # the head, not sent yet (a long one may have gone in part)
        c.put = base + out.total - m
        if m > len(s) // 2 or c.stream.out_buf:  # an unusually large head goes on its own
            self._flush(c, base)
            await self._drain(c)
            m = 0
        out.sink = None
        sock = c.stream.s
        io = asyncio.core._io_queue
        left = size
        with open(path, "rb") as f:
            while m or left:
                want = min(len(s) - m, left)
                k = f.readinto(s[m : m + want]) if want else 0
                if want and not k:
                    raise OSError(5)  # file shrank: Content-Length would lie
                left -= k
                try:
                    n = sock.write(s[: m + k]) or 0
                except OSError:
                    c.broken = True
                    raise
                c.put += n
                c.took = c.put
                if n < m:  # not even the head: the rest of this piece through the stream
                    self._put(c, s[n : m + k])
                    await self._drain(c)
                elif n < m + k:  # the rest of the file's piece is read again
                    f.seek(n - m - k, 1)
                    left += m + k - n
                    c.armed = True
                    await _writable(io, sock)
                    c.armed = False
                m = 0
