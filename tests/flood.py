"""Slow-client floods against an HTTP server on 127.0.0.1, and status latency under them.

    with Flood(port, 30, "head"):        # 30 clients dribbling a request head
        ms = status_latencies(port, 20)  # GET /api/status times, in ms (None: no answer)

A flood keeps `n` connections open from one thread: "head" sends a request head one
byte per `interval` s; "body" sends a whole head announcing `body_len` bytes to `path`
and then the body one byte per `interval` s. A connection the server closes is opened
again at once, as an attacker would, so the server never gets rid of the flood. Used by
tests/test_httpd_hostile.py, tests/test_security_dos.py and tools/bench_http.py.
"""

import select
import socket
import threading
import time

HEAD = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"z" * 200 + b"\r\n\r\n"
STATUS = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class Flood:
    def __init__(self, port, n, kind, interval=1.0, body_len=100000, path=b"/api/upload",
                 host=b"127.0.0.1"):
        assert kind in ("head", "body")
        self.port, self.n, self.kind, self.interval = port, n, kind, interval
        if kind == "head":
            self.head = HEAD.replace(b"127.0.0.1", host)
        else:
            self.head = (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/"
                         b"octet-stream\r\nContent-Length: %d\r\n\r\n" % (path, host, body_len))
        self.body_len = body_len
        self.connects = self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _open(self):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        self.connects += 1
        # [socket, bytes of the request sent, next send time]; a body flood sends its head
        # whole as soon as the connection takes it.
        return [s, 0, time.monotonic()]

    def _send(self, c, now):
        s, sent, due = c
        if now < due:
            return
        if self.kind == "body" and sent < len(self.head):
            data = self.head[sent:]
        else:
            total = len(self.head) + (self.body_len if self.kind == "body" else 0)
            if sent >= total:
                return
            data = (self.head[sent:sent + 1] if sent < len(self.head) else b"x")
        try:
            k = s.send(data)
        except OSError:  # not connected yet (waiting in the backlog), or reset: later
            c[2] = now + 0.01
            return
        c[1] = sent + k
        if c[1] > len(self.head) or self.kind == "head":
            c[2] = now + self.interval

    def _run(self):
        conns = [self._open() for _ in range(self.n)]
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for c in conns:
                    self._send(c, now)
                r, _, _ = select.select([c[0] for c in conns], [], [], 0.01)
                for i, c in enumerate(conns):
                    if c[0] not in r:
                        continue
                    try:
                        data = c[0].recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the server let go of us: come back
                        c[0].close()
                        self.closed += 1
                        conns[i] = self._open()
        finally:
            for c in conns:
                c[0].close()


def status_once(port, timeout=5.0, request=STATUS):
    """Milliseconds from connect to the whole 200 answer of GET /api/status; None if
    anything else came (another status, a close, a timeout)."""
    t = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return None
    if not (got.startswith(b"HTTP/1.1 200 ") or got.startswith(b"HTTP/1.0 200 ")):
        return None
    return (time.monotonic() - t) * 1000.0


def status_latencies(port, count, pause=0.05, timeout=5.0, request=STATUS):
    out = []
    for _ in range(count):
        out.append(status_once(port, timeout, request))
        time.sleep(pause)
    return out


def p99(values):
    """p99 of the answered ones (nearest rank); None if none answered."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    return v[min(len(v) - 1, int(len(v) * 0.99))]
