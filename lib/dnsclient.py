"""DNS A-record lookups that never block the asyncio loop (lib/dnsclient.py).

    addr = await dnsclient.resolve("cs.example.com", ("192.168.1.1", 53), timeout_ms=4000)

socket.getaddrinfo() of a name blocks the whole interpreter until the resolver gives up
(lwIP: seconds per DNS server), so every other task, however urgent, waits. Here one
query goes out over UDP (RFC 1035), is sent once more halfway through `timeout_ms`, and
the answer is awaited through asyncio like any socket. IP literals and `localhost`
(RFC 6761) are answered without a query. IPv4 only (A records).

What it checks in an answer, and refuses (DnsError): our random id, the response bit,
the question section exactly as we sent it (resolvers copy it), a success code, every
length inside the datagram (a compression pointer ends a name; nothing is followed).
Datagrams that are not the answer (another id, another question) are dropped and the
wait goes on; the socket is connected, so only the server's datagrams arrive at all.
"""
import asyncio
import os
import socket
from errno import EAGAIN
from micropython import const

_PORT = const(53)
_MAX_NAME = const(253)  # RFC 1035 2.3.4, as text without the final dot
_MAX_DGRAM = const(512)  # RFC 1035 4.2.1: UDP answers up to 512 bytes
_T_A = const(1)
_C_IN = const(1)
_HDR = const(12)


class DnsError(Exception):
    pass


class WrongAnswer(DnsError):
    """A datagram that does not answer our query (another id or question)."""


_HEX = "0123456789abcdefABCDEF"


def is_ipv4(host):
    """True for an IPv4 dotted quad (four decimal numbers 0..255)."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or int(p) > 255:
            return False
    return True


def is_ipv6(host):
    """True for an IPv6 address as text (RFC 4291 2.2): eight groups of 1..4 hex digits,
    '::' at most once for one or more zero groups, the last two groups optionally as an
    IPv4 dotted quad. No brackets, no zone. A name with a ':' in it is not one."""
    head, sep, tail = host.partition("::")
    if "::" in tail:
        return False
    groups = (head.split(":") if head else []) + (tail.split(":") if tail else [])
    n = 0
    last = len(groups) - 1
    for i, g in enumerate(groups):
        if i == last and "." in g and (tail or not sep):
            if not is_ipv4(g):
                return False
            n += 2
            continue
        if not 0 < len(g) <= 4:
            return False
        for c in g:
            if c not in _HEX:
                return False
        n += 1
    return n <= 7 if sep else n == 8


def is_literal(host):
    """True for an IPv4 dotted quad or an IPv6 address: text socket.getaddrinfo turns
    into an address without asking any server. Anything else is a name."""
    return is_ipv4(host) or is_ipv6(host)


def wlan_server(wlan):
    """(ip, 53) of the DNS server a network interface got (ifconfig()[3]), or None."""
    try:
        ip = wlan.ifconfig()[3]
    except (AttributeError, IndexError, OSError, TypeError):
        return None
    return (ip, _PORT) if ip and ip != "0.0.0.0" else None


def query(name, qid):
    """The query datagram for the A record of `name` (ValueError for a bad name)."""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]  # the root label is added below
    if not name or len(name) > _MAX_NAME:
        raise ValueError("bad host name length")
    q = bytearray(_HDR)
    q[0] = qid >> 8
    q[1] = qid & 0xFF
    q[2] = 0x01  # RD: recursion desired
    q[5] = 1  # QDCOUNT
    for label in name.split("."):
        n = len(label)
        if not 0 < n < 64:
            raise ValueError("bad label in host name")
        for ch in label:
            if ord(ch) > 127 or not (ch.isalpha() or ch.isdigit() or ch in "-_"):
                raise ValueError("bad character in host name")
        q.append(n)
        q.extend(label.encode())
    q.extend(b"\x00\x00\x01\x00\x01")  # root, QTYPE A, QCLASS IN
    return bytes(q)


def _skip_name(msg, i, end):
    """Index after the (possibly compressed) name at msg[i]; DnsError when it runs out."""
    while True:
        if i >= end:
            raise DnsError("name runs past the answer")
        n = msg[i]
        if n & 0xC0 == 0xC0:  # pointer: the name ends here (we never follow it)
            if i + 2 > end:
                raise DnsError("pointer runs past the answer")
            return i + 2
        if n & 0xC0:
            raise DnsError("bad label type")
        i += 1 + n
        if n == 0:
            return i


def parse(msg, q):
    """The address (text) of the first A record answering query `q`. DnsError
    otherwise; WrongAnswer for a datagram that does not answer `q` at all."""
    end = len(msg)
    if end < _HDR:
        raise WrongAnswer("shorter than a header")
    if msg[0] != q[0] or msg[1] != q[1] or not msg[2] & 0x80:
        raise WrongAnswer("not the answer to our query")
    qlen = len(q) - _HDR
    if end < _HDR + qlen or msg[4:6] != b"\x00\x01" or msg[_HDR : _HDR + qlen] != q[_HDR:]:
        raise WrongAnswer("another question")
    if msg[2] & 0x78:
        raise DnsError("opcode %d" % ((msg[2] >> 3) & 0x0F))
    rcode = msg[3] & 0x0F
    if rcode:
        raise DnsError("no such name" if rcode == 3 else "server error %d" % rcode)
    i = _HDR + qlen
    for _ in range((msg[6] << 8) | msg[7]):  # ANCOUNT; each record moves i forward
        i = _skip_name(msg, i, end)
        if i + 10 > end:
            raise DnsError("record runs past the answer")
        rtype = (msg[i] << 8) | msg[i + 1]
        rclass = (msg[i + 2] << 8) | msg[i + 3]
        rdlen = (msg[i + 8] << 8) | msg[i + 9]
        i += 10
        if i + rdlen > end:
            raise DnsError("record data runs past the answer")
        if rtype == _T_A and rclass == _C_IN and rdlen == 4:
            return "%d.%d.%d.%d" % (msg[i], msg[i + 1], msg[i + 2], msg[i + 3])
        i += rdlen
    raise DnsError("no address in the answer")


def _readable(s):
    yield asyncio.core._io_queue.queue_read(s)


def local(host):
    """The address of an IP literal or a localhost name (RFC 6761), which no DNS server
    is asked for; None for any other name."""
    if is_literal(host):
        return host
    h = host.lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return "127.0.0.1"
    return None


async def resolve(host, server, timeout_ms=4000):
    """The IPv4 address of `host` as text. server: (ip, port) of the DNS server, an IP
    literal. Raises DnsError, ValueError (bad name), OSError or asyncio.TimeoutError;
    never blocks the loop."""
    addr = local(host)
    if addr is not None:
        return addr
    if not server or not is_literal(server[0]) or server[0] == "0.0.0.0":
        raise DnsError("no DNS server")
    r = os.urandom(2)
    q = query(host, (r[0] << 8) | r[1])
    # A literal: getaddrinfo only builds the socket address, it asks no server.
    ai = socket.getaddrinfo(server[0], server[1], 0, socket.SOCK_DGRAM)[0]
    s = socket.socket(ai[0], socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.connect(ai[-1])
        half = max(1, timeout_ms // 2)
        for _ in range(2):  # one resend: a lost datagram costs half the time, not all
            s.send(q)
            try:
                return await asyncio.wait_for_ms(_answer(s, q), half)
            except asyncio.TimeoutError:
                pass
        raise asyncio.TimeoutError()
    finally:
        s.close()


async def address(host, server, timeout_ms=4000):
    """The address to connect to for `host` (resolve()), with every failure to find one
    as OSError, the error a failed connection gives: a caller hands only this address,
    never the name, to asyncio.open_connection or socket.getaddrinfo, which block the
    loop on a name."""
    try:
        return await resolve(host, server, timeout_ms)
    except (ValueError, DnsError, asyncio.TimeoutError) as e:
        raise OSError("cannot resolve %s: %r" % (host, e))


async def _answer(s, q):
    while True:
        await _readable(s)
        try:
            msg = s.recv(_MAX_DGRAM)
        except OSError as e:
            if e.errno == EAGAIN:  # woken with nothing to read
                continue
            raise  # ECONNREFUSED: nothing listens on the server's port
        try:
            return parse(msg, q)
        except WrongAnswer:
            continue  # a late answer to an earlier query, or noise
