"""Fault -> relay-open latency on the simulated charger, with the web server under load.

Measured on the firmware's own clock: the t_us of the simulator request that changes the
plant against the t_us of the relay-open event. Two faults:
  - CP C->B (the vehicle opens S2): the pilot task opens the relays (IEC 61851-1 asks
    <= 100 ms),
  - over-current far above the offer: the next internal-meter reading trips OCP (~1 s
    meter period).
Prints p50 / p99 / max in ms. Never passes or fails on time.

    python tools/bench_latency.py [--runs 30] [--json out.json]
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Charger  # noqa: E402


def _percentile(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(ms):
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(_percentile(ms, 99), 2), "max_ms": round(max(ms), 2)}


class WebLoad:
    """Keeps GET /api/status going from a few client threads (bounded by a stop flag)."""

    def __init__(self, charger, clients=3):
        self.c = charger
        self.stop = threading.Event()
        self.requests = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        import http.client

        while not self.stop.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.c.http_port, timeout=5)
                for _ in range(50):
                    if self.stop.is_set():
                        break
                    conn.request("GET", "/api/status")
                    conn.getresponse().read()
                    self.requests += 1
                conn.close()
            except OSError:
                time.sleep(0.05)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)


def _relay_open_after(c, t0, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in c.events(t0):
            if e["what"] == "relays" and e["value"] is False:
                return e["t_us"]
        time.sleep(0.01)
    raise TimeoutError("relays did not open")


def _charge(c, draw=None):
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"], timeout=10)


def measure(runs, heap):
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        c = Charger(Path(tmp) / "bench", settings={"auth_mode": "free"}, heap=heap)
        c.start()
        try:
            c.sim("ev", state="B", diode=True, max_a=16)
            c.wait_for(lambda s: s["pwm_duty_pct"], timeout=10)
            with WebLoad(c) as load:
                cp = []
                for _ in range(runs):
                    _charge(c)
                    t0 = c.sim("ev", state="B", diode=True, max_a=16)["t_us"]
                    cp.append((_relay_open_after(c, t0) - t0) / 1000)
                results["cp_c_to_b"] = summary(cp)
                ocp = []
                for _ in range(3):  # each waits out the 60 s OCP clear time
                    c.wait_for(lambda s: not s["errors"], timeout=90)
                    _charge(c)
                    t0 = c.sim("ev", state="C", diode=True, max_a=16, draw_a=45.0)["t_us"]
                    ocp.append((_relay_open_after(c, t0) - t0) / 1000)
                    c.sim("ev", state="A")
                    c.sim("ev", state="B", diode=True, max_a=16)
                results["ocp_fast"] = summary(ocp)
                results["web_requests_during"] = load.requests
        finally:
            c.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description="fault -> relay-open latency")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--heap", default=None, help="micropython heapsize (default: 128 KB data)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from harness import default_heap, firmware_tree

    heap = args.heap or default_heap(firmware_tree())
    res = measure(args.runs, heap)
    print("fault -> relay open (firmware clock, web server under load, heapsize %s)" % heap)
    print("%-14s %5s %8s %8s %8s" % ("fault", "n", "p50 ms", "p99 ms", "max ms"))
    for name in ("cp_c_to_b", "ocp_fast"):
        r = res[name]
        print("%-14s %5d %8.1f %8.1f %8.1f" % (name, r["n"], r["p50_ms"], r["p99_ms"], r["max_ms"]))
    print("web requests served meanwhile: %d" % res["web_requests_during"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
