"""Upload throughput and heap of a 2 MB `.bin` upgrade (POST /api/upgrade, docs/ota.md).

    python tools/bench_ota.py [--runs 5] [--size-mb 2] [--json build/bench/ota.json]

The `.bin` is the compiled firmware tree (tools/build.py, as the tests run it) plus a
padding file, built with tools/mkbin.py. Each run starts a fresh simulated charger
(tests/harness.py, the harness's default heap: 128 KB of data + the code footprint) on
its own data directory, reads its idle heap (`heap_alloc` of a simulator snapshot, right
after gc.collect), then one CPython client on loopback sends the file and its MD5.
Measured:

  - receive throughput: bytes / the firmware's own receive time (`ms` of the answer:
    body read in 4 KB pieces, MD5 on the way, written to the staging file), and the
    client's wall time for the whole request (receive + A/B install + answer);
  - heap: the firmware's live heap before the upload and its peak during it (`heap_before`
    / `heap_peak` of the answer, gc.collect()ed every 32 pieces), against the idle
    snapshot.

Peer, in the same run: the same client sending the same bytes over loopback to a CPython
http.server handler doing the same work (4 KB reads, MD5, write to a file),
its receive time taken the same way (from the handler's first read to its last byte).
Prints a table and writes JSON ({"table": [...]} for tools/bench_report.py). It only
measures: no figure makes it fail; it exits non-zero only when a charger cannot start.
"""

import argparse
import hashlib
import http.server
import json
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
import mkbin  # noqa: E402
from harness import Charger, NotReady, default_heap, firmware_tree  # noqa: E402

CHUNK = 4096
TIMEOUT = 120.0


def build_bin(tmp, size):
    """The compiled tree plus `size` bytes of padding, as a firmware .bin."""
    files = list(mkbin.tree_files(firmware_tree()))
    files.append(("evse/www/pad.bin", random.Random(1).randbytes(size)))
    return mkbin.make_bin("firmware", files, "9.9.9", "unix_sim")


def post(port, data, cookie=""):
    """Sends the .bin as one request; returns (status, answer dict, client seconds)."""
    digest = hashlib.md5(data).hexdigest()
    head = (f"POST /api/upgrade?md5={digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(head)
        mv = memoryview(data)
        for i in range(0, len(data), 65536):
            s.sendall(mv[i:i + 65536])
        raw = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            raw += part
    wall = time.perf_counter() - t0
    status_line, _, rest = raw.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    return int(status_line.split()[1]), answer, wall


def firmware_run(work, data):
    c = Charger(work, name="bench")
    try:
        c.start()
        r = c.http("POST", "/api/login", json={"password": c.password})
        if r.status != 200:
            raise NotReady(f"login answered {r.status}")
        idle = c.snapshot()["heap_alloc"]
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        status, ans, wall = post(c.http_port, data, cookie)
        if status != 200 or ans.get("code") != "100 UP":
            raise NotReady(f"upload answered {status} {ans}")
        return {
            "bytes": ans["bytes"],
            "receive_ms": ans["ms"],
            "receive_mb_s": ans["bytes"] / 1e6 / max(ans["ms"], 1) * 1000,
            "request_s": wall,
            "heap_idle": idle,
            "heap_before": ans["heap_before"],
            "heap_peak": ans["heap_peak"],
        }
    finally:
        c.stop()


class _Receiver(http.server.BaseHTTPRequestHandler):
    """The peer: reads the body in 4 KB pieces, MD5 on the way, into a file."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        n = int(self.headers["Content-Length"])
        md5 = hashlib.md5()
        t0 = time.perf_counter()  # as the firmware: from the handler's first read
        with open(self.server.path, "wb") as f:
            left = n
            while left:
                piece = self.rfile.read(min(CHUNK, left))
                if not piece:
                    break
                md5.update(piece)
                f.write(piece)
                left -= len(piece)
        ms = (time.perf_counter() - t0) * 1000
        body = json.dumps({"code": "100 UP", "bytes": n - left, "ms": ms,
                           "md5": md5.hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def peer_run(work, data):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    srv.path = str(Path(work) / "peer-upload.bin")
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        status, ans, wall = post(srv.server_address[1], data)
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(5)
    return {"bytes": ans["bytes"], "receive_ms": ans["ms"],
            "receive_mb_s": ans["bytes"] / 1e6 / max(ans["ms"], 1e-3) * 1000, "request_s": wall}


def p50(xs):
    return statistics.median(xs) if xs else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "ota.json")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    try:
        data = build_bin(tmp, int(args.size_mb * (1 << 20)))
        print(f"bench_ota: {len(data)} bytes .bin, {args.runs} runs, heap "
              f"{default_heap(firmware_tree())}", flush=True)
        fw, peer = [], []
        row = "{:>4} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10} {:>10}"
        print(row.format("run", "fw MB/s", "fw req s", "peer MB/s", "peer req s",
                         "heap idle", "heap pre", "heap peak"))
        for i in range(args.runs):
            try:
                f = firmware_run(tmp / f"run{i}", data)
            except NotReady as e:
                print(f"bench_ota: the charger failed: {e}", file=sys.stderr)
                return 1
            p = peer_run(tmp, data)
            fw.append(f)
            peer.append(p)
            print(row.format(i + 1, f"{f['receive_mb_s']:.2f}", f"{f['request_s']:.2f}",
                             f"{p['receive_mb_s']:.1f}", f"{p['request_s']:.3f}",
                             f["heap_idle"], f["heap_before"], f["heap_peak"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def col(rows, key):
        return [r[key] for r in rows]

    summary = {
        "bytes": len(data),
        "fw_receive_mb_s": {"p50": p50(col(fw, "receive_mb_s")),
                            "max": max(col(fw, "receive_mb_s"))},
        "fw_request_s": {"p50": p50(col(fw, "request_s")), "max": max(col(fw, "request_s"))},
        "peer_receive_mb_s": {"p50": p50(col(peer, "receive_mb_s")),
                              "max": max(col(peer, "receive_mb_s"))},
        "peer_request_s": {"p50": p50(col(peer, "request_s")), "max": max(col(peer, "request_s"))},
        "heap_idle": {"p50": p50(col(fw, "heap_idle")), "max": max(col(fw, "heap_idle"))},
        "heap_peak": {"p50": p50(col(fw, "heap_peak")), "max": max(col(fw, "heap_peak"))},
        "heap_peak_over_idle": {"max": max(r["heap_peak"] - r["heap_idle"] for r in fw)},
        "heap_peak_over_before": {"max": max(r["heap_peak"] - r["heap_before"] for r in fw)},
    }
    s = summary
    table = [
        {"what": "2 MB upload receive throughput, p50 (peer: CPython http.server)",
         "value": round(s["fw_receive_mb_s"]["p50"], 2),
         "peer": round(s["peer_receive_mb_s"]["p50"], 1), "unit": "MB/s"},
        {"what": "2 MB upload receive throughput, max",
         "value": round(s["fw_receive_mb_s"]["max"], 2),
         "peer": round(s["peer_receive_mb_s"]["max"], 1), "unit": "MB/s"},
        {"what": "2 MB upload request incl. A/B install, p50",
         "value": round(s["fw_request_s"]["p50"] * 1000, 1),
         "peer": round(s["peer_request_s"]["p50"] * 1000, 1), "unit": "ms (peer: no install)"},
        {"what": "live heap at idle (snapshot)", "value": round(s["heap_idle"]["max"] / 1024, 1),
         "peer": None, "unit": "KB, max of runs"},
        {"what": "live heap peak during the 2 MB upload",
         "value": round(s["heap_peak"]["max"] / 1024, 1), "peer": None, "unit": "KB, max of runs"},
        {"what": "heap peak minus idle", "value": round(s["heap_peak_over_idle"]["max"] / 1024, 1),
         "peer": None, "unit": "KB, max of runs"},
    ]
    print(f"\nfirmware receive {s['fw_receive_mb_s']['p50']:.2f} MB/s p50, "
          f"{s['fw_receive_mb_s']['max']:.2f} max; peer (CPython http.server, same client, "
          f"same work) {s['peer_receive_mb_s']['p50']:.1f} MB/s p50")
    print(f"heap: idle {s['heap_idle']['max']} B, peak during upload {s['heap_peak']['max']} B "
          f"(+{s['heap_peak_over_idle']['max']} B over idle, "
          f"+{s['heap_peak_over_before']['max']} B over the handler's start)")
    out = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "heap": default_heap(firmware_tree()), "runs": {"firmware": fw, "peer": peer},
           "summary": summary, "table": table}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
