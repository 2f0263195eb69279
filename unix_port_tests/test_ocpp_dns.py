# The central system's host name: resolved without ever blocking the loop that opens the
# relays (lib/dnsclient.py, evse/ocpp/service.py), and DNS answers taken apart safely.
import asyncio
import json
import os
import socket
import sys
import time

import board
import check
import dnsclient
import log
from check import eq, true

_URL = "ws://csms.example:9/ocpp/CP1"


def _port():
    b = os.urandom(2)
    return 30000 + ((b[0] << 8 | b[1]) % 9000)


class _Socket:
    """The socket module as the firmware sees it, but getaddrinfo of a name is a silent
    DNS server to a blocking resolver: it holds the interpreter 400 ms, then fails."""

    def __init__(self, real):
        self._real = real
        self.names = []  # (host, relays closed then)
        self.relays = None

    def __getattr__(self, name):
        return getattr(self._real, name)

    def getaddrinfo(self, host, port, *args):
        if not dnsclient.is_literal(host):
            self.names.append((host, self.relays.closed))
            time.sleep_ms(400)
            raise OSError(-3)  # EAI_AGAIN
        return self._real.getaddrinfo(host, port, *args)


def _app():
    d = check.tmpdir("ocpp_dns")
    with open(d + "/settings.json", "w") as f:
        json.dump({"ocpp_url": _URL, "auth_mode": "free"}, f)
    hw = board.make({"EVSE_DATA_DIR": d, "EVSE_CAN_PORT": str(_port()),
                     "EVSE_SIM_PORT": str(_port())})
    from evse.app import App

    return App(hw)


class _DnsServer:
    """A DNS server on 127.0.0.1 that answers `addr` for every A query, or nothing."""

    def __init__(self, addr=None):
        self.addr = addr
        self.queries = 0
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.port = _port()
        self.s.bind(socket.getaddrinfo("127.0.0.1", self.port)[0][-1])
        self.s.setblocking(False)

    async def run(self):
        while True:
            await dnsclient._readable(self.s)
            try:
                q, peer = self.s.recvfrom(512)
            except OSError:
                continue
            self.queries += 1
            if self.addr is None:
                continue  # silent
            a = bytes(int(x) for x in self.addr.split("."))
            hdr = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00"
            rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + a
            self.s.sendto(hdr + q[12:] + rr, peer)


async def _gaps(stop, out):
    """The longest the loop went without running this task (ms)."""
    last = time.ticks_ms()
    while not stop[0]:
        await asyncio.sleep_ms(5)
        now = time.ticks_ms()
        out[0] = max(out[0], time.ticks_diff(now, last))
        last = now


def test_reconnect_while_charging_never_blocks_the_loop_on_dns():
    """A reconnect while the relays are closed, WiFi up and its DNS server silent: the
    pilot task must keep its 10 ms rhythm (C -> B opens within 100 ms), so no
    getaddrinfo of the central system's name may run on the loop."""
    log.set_level(log.ERROR + 10)
    app = _app()
    svc = app.ocpp.service
    fake = _Socket(socket)
    fake.relays = app.hw.relays
    dns = _DnsServer()  # silent
    svc.dns_server = lambda: ("127.0.0.1", dns.port)
    svc.dns_timeout_ms = 300
    app.hw.relays.close()  # charging
    gap = [0]
    stop = [False]

    async def main():
        server = asyncio.create_task(dns.run())
        ticker = asyncio.create_task(_gaps(stop, gap))
        await asyncio.sleep_ms(20)
        saved = sys.modules.get("socket")
        sys.modules["socket"] = fake  # what `import socket` gives from now on
        try:
            for _ in range(2):  # two reconnect attempts
                eq(await svc._session(), False, "no connection without an address")
        finally:
            if saved is None:
                del sys.modules["socket"]
            else:
                sys.modules["socket"] = saved
        stop[0] = True
        await ticker
        server.cancel()

    try:
        asyncio.run(main())
    finally:
        dns.s.close()
        asyncio.new_event_loop()
        log.set_level(log.WARNING)
    eq(fake.names, [], "getaddrinfo of a name (host, relays closed)")
    true(dns.queries >= 2, "the name went to the DNS server (%d queries)" % dns.queries)
    true(gap[0] < 100, "the loop stalled %d ms" % gap[0])


def test_a_moved_central_system_is_found_and_a_silent_dns_keeps_the_last_address():
    """Each connection asks the DNS server again (the central system may move); while the
    server is silent the last answer is used; a name never answered is no address."""
    log.set_level(log.ERROR + 10)
    app = _app()
    svc = app.ocpp.service
    dns = _DnsServer("10.1.2.3")
    svc.dns_server = lambda: ("127.0.0.1", dns.port)
    svc.dns_timeout_ms = 200

    async def main():
        server = asyncio.create_task(dns.run())
        await asyncio.sleep_ms(10)
        eq(await svc._address("csms.example"), "10.1.2.3", "answered")
        true("dnsclient" not in sys.modules, "the resolver forgotten once connected")
        dns.addr = "10.9.9.9"
        eq(await svc._address("csms.example"), "10.9.9.9", "moved: asked again")
        dns.addr = None
        eq(await svc._address("csms.example"), "10.9.9.9", "silent: the last answer")
        try:
            await svc._address("other.example")
            true(False, "a name never answered gave an address")
        except OSError:
            pass
        eq(await svc._address("10.0.0.7"), "10.0.0.7", "an IP literal as it is")
        eq(await svc._address("localhost"), "127.0.0.1", "localhost (RFC 6761)")
        svc.dns_server = lambda: None  # no network: the last answer still serves
        eq(await svc._address("csms.example"), "10.9.9.9", "no DNS server")
        server.cancel()

    try:
        asyncio.run(main())
    finally:
        dns.s.close()
        asyncio.new_event_loop()
        log.set_level(log.WARNING)


# ---- the DNS messages ----------------------------------------------------------------------------
def _answer(q, records=(), rcode=0, qid=None, question=None, ancount=None):
    hdr = bytearray(q[:12])
    if qid is not None:
        hdr[0:2] = qid
    hdr[2] = 0x81
    hdr[3] = 0x80 | rcode
    n = len(records) if ancount is None else ancount
    hdr[6] = n >> 8
    hdr[7] = n & 0xFF
    return bytes(hdr) + (q[12:] if question is None else question) + b"".join(records)


def _a(addr, name=b"\xc0\x0c", rclass=1, rdlen=4):
    return (name + b"\x00\x01" + bytes((0, rclass)) + b"\x00\x00\x0e\x10"
            + bytes((rdlen >> 8, rdlen & 0xFF)) + bytes(int(x) for x in addr.split(".")))


def test_dns_query_is_one_well_formed_question():
    q = dnsclient.query("CS.Example.com.", 0x1234)
    eq(q, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
          b"\x02cs\x07example\x03com\x00\x00\x01\x00\x01", "query")
    for bad in ("", ".", "a..b", "x" * 64 + ".com", ("a" * 60 + ".") * 5, "bad name.com",
                "caf\xe9.com", "a/b"):
        check.raises(ValueError, dnsclient.query, bad, 1)
    for lit in ("10.0.0.5", "::1", "fe80::1"):
        true(dnsclient.is_literal(lit), lit)
    for name in ("10.0.0", "10.0.0.256", "1.2.3.4.5", "cs.example.com", "1.2.3.x"):
        true(not dnsclient.is_literal(name), name)


def test_only_a_real_ipv6_address_counts_as_an_ipv6_literal():
    for lit in ("::", "::1", "fe80::1", "1:2:3:4:5:6:7:8", "1::8", "1:2:3:4:5:6:7::",
                "::ffff:10.0.0.5", "64:ff9b::192.0.2.33", "1:2:3:4:5:6:1.2.3.4",
                "ABCD:ef01::"):
        true(dnsclient.is_ipv6(lit) and dnsclient.is_literal(lit), lit)
    for name in ("cs.example.com:1", "a:b", ":", ":::", "1:::2", "1::2::3", ":1::",
                 "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::1", "::1:",
                 "1.2.3.4::", "::1.2.3", "::1.2.3.256", "1:2:3:4:5:6:7:1.2.3.4",
                 "fe80::1%wlan0", "[::1]", ""):
        true(not dnsclient.is_literal(name), "a name: %r" % name)
        if name:
            eq(dnsclient.local(name), None, name)


def test_an_ocpp_host_name_never_reaches_a_blocking_getaddrinfo():
    """A host in brackets is taken as an IPv6 address by the websocket client, which then
    hands it to socket.getaddrinfo: the settings refuse anything else in brackets, and
    dnsclient never calls a name with a ':' an address."""
    import wsclient
    from evse.settings import check_ocpp_url

    for url in ("ws://[cs.example.com:1]:80/ocpp/CP01", "ws://[cs.example.com]:80/ocpp/CP01",
                "ws://[10.0.0.5]:80/ocpp/CP01", "ws://[::1:80/ocpp/CP01",
                "ws://cs.example.com:1:80/ocpp/CP01", "ws://[]:80/ocpp/CP01"):
        true(check_ocpp_url(url), "refused: " + url)
    _s, host, _p, _path = wsclient.parse_url("ws://[cs.example.com:1]:80/ocpp/CP01")
    eq(dnsclient.local(host), None, "a name, for the DNS server")
    for url in ("ws://[fd00::5]:80/ocpp/CP01", "wss://[::1]:443/CP1"):
        eq(check_ocpp_url(url), None, url)
        _s, host, _p, _path = wsclient.parse_url(url)
        eq(dnsclient.local(host), host, "an address: " + url)


def test_dns_answers_hostile_and_good():
    q = dnsclient.query("cs.example.com", 0xBEEF)
    cname = b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x05\x02cs\xc0\x0c"
    eq(dnsclient.parse(_answer(q, [_a("10.1.2.3")]), q), "10.1.2.3", "one A record")
    eq(dnsclient.parse(_answer(q, [cname, _a("10.4.5.6", b"\x02cs\xc0\x0c")]), q), "10.4.5.6",
       "a CNAME, then the A record")
    eq(dnsclient.parse(_answer(q, [_a("1.1.1.1", rclass=3), _a("10.7.7.7")]), q), "10.7.7.7",
       "a record of another class is skipped")
    wrong = [
        b"", q[:11],  # shorter than a header
        _answer(q, [_a("10.1.2.3")], qid=b"\x00\x01"),  # another id
        q,  # our own query echoed: not a response
        _answer(q, [_a("10.1.2.3")], question=b"\x05other\x00\x00\x01\x00\x01"),
    ]
    for msg in wrong:
        check.raises(dnsclient.WrongAnswer, dnsclient.parse, msg, q)
    bad = [
        _answer(q, rcode=3),  # NXDOMAIN
        _answer(q, rcode=2),  # SERVFAIL
        _answer(q, []),  # no answer at all
        _answer(q, [_a("10.1.2.3", rdlen=16)]),  # data length past the end
        _answer(q, [cname], ancount=2),  # a second record that is not there
        _answer(q, [_a("10.1.2.3")])[:-2],  # cut short
        _answer(q, [b"\x3f" + b"a" * 10]),  # a label past the end
        _answer(q, [b"\x80\x00" + b"\x00" * 14]),  # a reserved label type
        _answer(q, [b"\xc0"]),  # half a pointer
        _answer(q, [cname]),  # only a CNAME
        _answer(q, [_a("10.1.2.3", rdlen=6)[:-2] + b"\x00\x00\x00\x00"]),  # an A of 6 bytes
    ]
    for msg in bad:
        check.raises(dnsclient.DnsError, dnsclient.parse, msg, q)
    # 65535 records announced in a 512-byte datagram of self-referencing pointers: ends
    loop = _answer(q, [b"\xc0\x0c" * 200], ancount=0xFFFF)
    check.raises(dnsclient.DnsError, dnsclient.parse, loop, q)
    seed = os.urandom(1)[0]
    good = _answer(q, [cname, _a("10.4.5.6")])
    for i in range(2000):  # every byte of a good answer flipped or cut: DnsError or an address
        b = bytearray(good)
        j = (i * 7 + seed) % len(b)
        b[j] ^= 1 << (i % 8)
        msg = bytes(b[: len(b) - (i % 5)])
        try:
            got = dnsclient.parse(msg, q)
        except dnsclient.DnsError:
            continue
        true(dnsclient.is_literal(got), "an address: %r" % got)
