# An HTTP/1.0 GET of one large body (a firmware file), read in the caller's pieces, and
# the rule for the http(s):// locations a central system names. Every wait has a
# deadline and every line a length cap: a server that stalls, trickles or sends endless
# headers fails the transfer, the heap does not grow and the loop never blocks.
#
#   get = Get(stall_ms, head_ms, total_ms)
#   try:
#       status, length, early = await get.open(host, port, path, ssl, dns_server, dns_ms)
#       ... early, then n = await get.readinto(mv) until it returns 0
#   finally:
#       await get.close()
import asyncio
import time


MAX_LINE = 512  # a status line or header line, CRLF included
MAX_LINES = 32  # lines of a response head


def check_url(url):
    """ValueError for a location that is not a plain http(s) URL: a space, CR, LF or any
    control or non-ASCII byte would end up in the request line."""
    for ch in url.encode():
        if ch <= 0x20 or ch >= 0x7F:
            raise ValueError("character 0x%02x in the location" % ch)
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ValueError("only http:// and https:// locations")


def split(url):
    """(https?, host, port, path from its "/") of a location check_url() takes."""
    check_url(url)
    secure = url.startswith("https://")
    rest = url[8:] if secure else url[7:]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    port = int(port) if port else (443 if secure else 80)
    return secure, host, port, "/" + path


async def read_head(r, stall_ms):
    """(status code, Content-Length or None, body bytes read past the head) of an HTTP
    response, each line at most MAX_LINE bytes and at most MAX_LINES of them. OSError when
    the head is not one."""
    buf = bytearray(MAX_LINE)
    mv = memoryview(buf)
    n = 0
    lines = 0
    code = None
    length = None
    while True:
        i = buf.find(b"\n", 0, n)
        if i < 0:
            if n >= MAX_LINE:
                raise OSError("response line over %d bytes" % MAX_LINE)
            got = await asyncio.wait_for_ms(r.readinto(mv[n:]), stall_ms)
            if got is None:
                continue  # TLS record not complete yet
            if not got:
                raise OSError("connection closed in the response head")
            n += got
            continue
        line = bytes(mv[:i])
        rest = bytes(mv[i + 1 : n])
        buf[: len(rest)] = rest
        n = len(rest)
        lines += 1
        if lines > MAX_LINES:
            raise OSError("response head over %d lines" % MAX_LINES)
        if line.endswith(b"\r"):
            line = line[:-1]
        if code is None:
            parts = line.split(b" ")
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise OSError("not an HTTP response: %r" % line[:40])
            try:
                code = int(parts[1])
            except ValueError:
                raise OSError("bad status line: %r" % line[:40])
        elif not line:
            return code, length, rest
        else:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                try:
                    length = int(v.strip())
                except ValueError:
                    raise OSError("bad Content-Length")


class Get:
    """One GET. stall_ms: the connect, and the longest wait for more bytes; head_ms: the
    whole response head; total_ms: the whole body, from the end of the head (a server
    trickling a byte now and then never trips the stall timeout)."""

    def __init__(self, stall_ms, head_ms, total_ms):
        self.stall_ms = stall_ms
        self.head_ms = head_ms
        self.total_ms = total_ms
        self._r = self._w = None
        self._end = 0

    async def open(self, host, port, path, ssl, dns_server, dns_timeout_ms):
        """Sends the request for path ("/..."); (status, Content-Length or None, body
        bytes already read). OSError when the host cannot be reached or does not answer
        HTTP, asyncio.TimeoutError past a deadline."""
        # asyncio.open_connection calls socket.getaddrinfo, which blocks the whole loop
        # (pilot and protection included) on a name: it only ever gets the address; the
        # name stays in the Host header and the TLS server name.
        import dnsclient  # only while in use: its callers may forget it after

        addr = await dnsclient.address(host, dns_server, dns_timeout_ms)
        self._r, self._w = await asyncio.wait_for_ms(
            asyncio.open_connection(addr, port, ssl=ssl, server_hostname=host if ssl else None),
            self.stall_ms)
        self._w.write(b"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        await self._w.drain()
        head = await asyncio.wait_for_ms(read_head(self._r, self.stall_ms), self.head_ms)
        self._end = time.ticks_add(time.ticks_ms(), self.total_ms)
        return head

    async def readinto(self, mv):
        """Body bytes read into mv, 0 at its end. asyncio.TimeoutError after stall_ms
        without data, OSError once total_ms has passed."""
        while True:
            left = time.ticks_diff(self._end, time.ticks_ms())
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                n = await asyncio.wait_for_ms(self._r.readinto(mv), min(self.stall_ms, left))
            except asyncio.TimeoutError:
                if left > self.stall_ms:
                    raise  # no data for stall_ms
                raise OSError("download not complete within %d s" % (self.total_ms // 1000))
            if n is not None:  # None: TLS record not complete yet
                return n

    async def close(self):
        w = self._w
        if w is None:
            return
        self._r = self._w = None
        w.close()
        try:
            await w.wait_closed()  # MicroPython's close() alone leaves the socket open
        except OSError:
            pass
