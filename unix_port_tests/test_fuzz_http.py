# Seeded fuzzing of lib/httpd.py's request parsing (request line, header fields, target,
# query, Content-Length framing, Expect, pipelining), in process: each case is one
# connection whose bytes come from a scripted stream in random-sized pieces. The oracle:
# no connection ever fails (no 500, nothing in the error log, the slot comes back), every
# answer is a well-framed HTTP/1.1 response with a known status and a Content-Length
# that matches, nothing outside the static root is ever served, and the unmutated
# requests get their 2xx. See fuzz.py for FUZZ_SEED / FUZZ_N.
import asyncio

import fuzz
import httpd
import webroot
from check import eq, true

_ROOT = webroot.name("fuzz_httpd")
_WWW = _ROOT + "/www"
_SECRET = b"SECRET-OUTSIDE-THE-STATIC-ROOT"
_LOG = []

SAMPLES = [
    b"GET /api/status?a=1&b=%41+c HTTP/1.1\r\nHost: t\r\nCookie: s=1; t=2\r\n\r\n",
    b'PUT /api/cards/2 HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"uid": "AB"}',
    b"POST /api/upload HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789",
    b'GET /app.js HTTP/1.1\r\nAccept-Encoding: gzip, br\r\nIf-None-Match: "zz"\r\n\r\n',
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /sub/ HTTP/1.1\r\n\r\nGET /api/status HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"DELETE /api/cards/1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n\r\n", b"\n", b":", b": ", b" ", b"\t", b"%", b"%2e%2e/", b"/..", b"//",
    b"?", b"&", b"=", b"+", b"%00", b"%c0%ae", b"\\", b"\x00", b"\xff", b"HTTP/1.1",
    b"HTTP/1.0", b"HTTP/2", b"Content-Length: ", b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n",
    b"Connection: keep-alive\r\n", b" folded\r\n", b"GET ", b"POST ", b"X" * 600,
]
_STATUS = (200, 201, 204, 304, 400, 404, 405, 406, 408, 411, 413, 414, 417, 431, 501, 505)


async def h_status(req):
    return {"query": req.query, "cookies": req.cookies}


async def h_card(req):
    body = await req.json()
    uid = body.get("uid") if isinstance(body, dict) else None
    return httpd.Response({"slot": req.params["slot"], "uid": uid}, 201)


async def h_upload(req):
    total = 0
    buf = bytearray(64)
    while True:
        n = await req.read_into(buf)
        if not n:
            return {"bytes": total}
        total += n


async def h_none(req):
    return None


ROUTES = [
    ("GET", "/api/status", h_status),
    ("PUT", "/api/cards/<slot>", h_card),
    ("DELETE", "/api/cards/<slot>", h_none),
    ("POST", "/api/upload", h_upload, 1024),
]


_FILES = (
    ("/index.html", b"<h1>home</h1>"),
    ("/app.js", b"console.log(1)"),
    ("/app.js.gz", b"\x1f\x8bGZ"),
    ("/sub/index.html", b"<p>sub</p>"),
)


class _Sock:
    def close(self):
        pass


def _responses(out):
    """[(status, body)] of the responses in `out`; AssertionError when badly framed."""
    res = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n\r\n", pos)
        true(end > pos, "response head complete")
        lines = bytes(out[pos:end]).split(b"\r\n")
        true(lines[0].startswith(b"HTTP/1.1 "), "status line %r" % lines[0])
        st = int(lines[0][9:12])
        pos = end + 4
        if st == 100:
            continue
        true(st in _STATUS, "known status %d" % st)
        n = None
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            true(k and v[:1] == b" ", "header line %r" % line)
            if k.lower() == b"content-length":
                n = int(v)
        if st in (204, 304):
            n = 0
        true(n is not None, "Content-Length in a %d" % st)
        if n and (pos == len(out) or out[pos : pos + 9] == b"HTTP/1.1 "):
            n = 0  # the answer to a HEAD: no body
        true(pos + n <= len(out), "body of %d bytes complete" % n)
        res.append((st, bytes(out[pos : pos + n])))
        pos += n
    return res


def _server():
    return httpd.Server(ROUTES, static_root=_WWW, log=lambda m, e=None: _LOG.append((m, e)))


async def _one(srv, data, step):
    c = [x for x in srv._slots if x.free][-1]  # a slot taken as the accept loop does
    c.free = False
    srv._nfree -= 1
    c.sock = _Sock()
    c.stream = s = fuzz.PieceStream(data, step)
    c.peer = ("fuzz", 0)
    await srv._serve(c)
    return s.out


def _compose(r):
    """A request built from parts, each sometimes odd."""
    method = r.pick(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "BREW", ""))
    segs = [r.pick(("api", "status", "cards", "sub", "index.html", "app.js", "..", ".x",
                    "%2e%2E", "%2f", "%ZZ", "%", "", "é", "a" * 40)) for _ in range(r.below(5))]
    target = "/" + "/".join(segs)
    if r.chance(1, 3):
        target += "?" + "&".join(r.pick(("a=1", "b", "=", "%zz=1", "c=%e2%82", "+=+", ""))
                                 for _ in range(r.below(40)))
    ver = r.pick(("HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/1", "http/1.1", ""))
    head = "%s %s %s\r\n" % (method, target, ver)
    body = r.bytes(r.below(40)) if r.chance(1, 2) else b""
    for _ in range(r.below(6)):
        name = r.pick(("Content-Length", "Host", "Cookie", "Expect", "Connection",
                       "Transfer-Encoding", "Accept-Encoding", "If-None-Match", "X-A", ""))
        val = r.pick((str(len(body)), str(r.int_edge()), "", "chunked", "100-continue",
                      "close", "keep-alive", "gzip", "*", "a=b; c", " x "))
        head += "%s:%s%s\r\n" % (name, r.pick((" ", "", "  ")), val)
    return head.encode() + b"\r\n" + body


def _case(r, i):
    if i < len(SAMPLES):
        return SAMPLES[i], 1 + r.below(64)
    if r.chance(1, 4):
        data = _compose(r)
    else:
        data = fuzz.mutate(r, r.pick(SAMPLES), SAMPLES, TOKENS, max_rounds=5)
    return data, r.pick((1, 2, 7, 64, 512, 4096))


def test_fuzz_request_parsing_never_fails_a_connection():
    """RFC 9112 §2-§6 framing: any byte sequence gets well-framed answers or a close."""
    webroot.make(_ROOT, _SECRET, _FILES)
    srv = _server()
    try:
        async def main():
            n = fuzz.count(8000)
            r = fuzz.rng_for("httpd")
            print("fuzz httpd: %d cases, FUZZ_SEED=0x%08x" % (n, fuzz.seed()))
            seen = {}
            for i in range(n):
                data, step = _case(r, i)
                try:
                    out = await _one(srv, data, step)
                    res = _responses(out)
                    for st, _b in res:
                        seen[st] = seen.get(st, 0) + 1
                    eq(srv.errors, 0, "connections failed (500)")
                    eq(_LOG, [], "error log")
                    eq(srv.live, 0, "slots in use after the connection")
                    true(_SECRET not in out, "file outside the static root served")
                    if i < len(SAMPLES):
                        true(res and 200 <= res[0][0] < 300, "valid sample answered %r" % res)
                except Exception as e:
                    raise AssertionError(
                        "fuzz httpd case %d: %r on %r, step %d (replay: FUZZ_SEED=0x%08x FUZZ_N=%d)"
                        % (i, e, data[:300], step, fuzz.seed(), i + 1))
            print("  answers by status:", sorted(seen.items()))
            true(len(seen) >= 8, "the cases reach most answers")

        asyncio.run(main())
    finally:
        webroot.remove(_ROOT)


def test_fuzz_unquote_and_query():
    """Percent-decoding (RFC 3986 §2.1) raises only ValueError; valid text round-trips."""
    srv = _server()

    def case(r, i):
        if r.chance(1, 3):
            s = "".join(r.pick(("%", "%2", "%41", "%e2%82%ac", "%c3", "+", "&", "=", "a", "é",
                                "%ZZ", "%00")) for _ in range(r.below(12)))
        else:
            s = r.text(r.below(20), "ab%+=&09fF/\x00é")
        return s

    def check(s):
        try:
            out = httpd.unquote(s, True)
            true(isinstance(out, str), "str")
            if "%" not in s and "+" not in s:
                eq(out, s, "plain text unchanged")
        except ValueError:
            pass
        try:
            q = srv._query(s)
            true(len(q) <= srv.max_query, "query cap")
        except ValueError:
            pass

    fuzz.run("httpd.unquote", 5000, case, check)
    # Round trip: every byte escaped comes back.
    r = fuzz.rng_for("httpd.unquote.rt")
    for _ in range(300):
        text = "".join(chr(32 + r.below(0x2000)) for _ in range(r.below(10)))
        esc = "".join("%%%02X" % b for b in text.encode())
        eq(httpd.unquote(esc), text, "round trip")
