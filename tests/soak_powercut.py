"""Power cuts across features (tools/powercut.py, tests/test_powercut_campaign.py).

One charger (OCPP charge point of a central system on the `ocpp` package, free mode) is
SIGKILLed at seeded random instants while it charges, saves settings (PUT /api/config),
appends a charge record (the vehicle leaves), queues transaction messages (central
system down while sessions start and end) or receives and installs an upgrade (.bin
built with the helpers of tests/test_ota.py). After each cut it is started again on the
same data and checked:

- it boots, and runs the version it ran before or the one being installed;
- the settings are those last acknowledged or those being written, never a mix, never
  the defaults;
- the charge records are numbered without gaps (a torn or corrupt record would be a gap:
  the API skips what does not parse), every record seen before is unchanged, a charge cut
  while running is recorded once as PowerLoss, one that was ending is recorded once
  (Unplug or PowerLoss, not both, not none);
- once the central system is back, every transaction reached it once: one
  StartTransaction and one StopTransaction per charge record, no transaction started or
  stopped twice (a resend after a cut keeps its message id and counts once).

    result = Campaign(workdir, seed=1, cuts=40).run()   # {"violations": [...], ...}
"""

import http.client
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import csms
from soak_rig import OCPP_FAST, SharedCharger, login, read_records, seed_ocpp, transactions
from test_ota import FACTORY_VERSION, _paced_upload, variant

KINDS = ("charging", "config", "session_end", "ocpp_queue", "ota")
SETTINGS = {"auth_mode": "free", "max_current_a": 16, "language": "en"}
LANGS = ("en", "it", "de", "fr", "es")
class Campaign:
    def __init__(self, workdir, seed, cuts, heap=None, log=print, kinds=KINDS):
        self.workdir = Path(workdir)
        self.seed = seed
        self.cuts = cuts
        self.heap = heap
        self.log = log
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.violations = []
        self.cs = None
        self.c = None
        self.bins = {}
        self.versions = {FACTORY_VERSION}
        self.acked = {"max_current_a": SETTINGS["max_current_a"], "language": "en"}
        self.records = {}  # no -> record as last read
        self.counts = {k: 0 for k in KINDS}
        self.boots = 0
        self.where = ""

    def bad(self, what):
        self.violations.append(f"seed {self.seed} cut {self.where}: {what}")
        self.log(f"VIOLATION {self.violations[-1]}")

    # ---- set-up ------------------------------------------------------------------------------
    def start(self):
        self.cs = csms.CentralSystem()
        self.cs.start()
        self.c = SharedCharger(self.workdir / "charger", name="charger", heap=self.heap,
                               settings={**SETTINGS, "ocpp_url": self.cs.url("CP1")})
        seed_ocpp(self.c, {**OCPP_FAST, "MeterValueSampleInterval": 0})
        self.c.start()
        self.cs.wait_connected("CP1", timeout=20)
        if "ota" in self.kinds:
            for v in ("9.0.1", "9.0.2"):
                self.bins[v] = variant(self.workdir / "bins", v)
            self.versions |= set(self.bins)
        return self

    def close(self):
        if self.c is not None:
            self.c.stop()
        if self.cs is not None:
            self.cs.close()

    # ---- the campaign --------------------------------------------------------------------------
    def run(self):
        self._read_history()
        self.base_no = max(self.records, default=0)
        self.tx_mark = self.cs.mark()
        t0 = time.monotonic()
        for i in range(self.cuts):
            kind = self.rng.choice(self.kinds)
            self.where = f"{i} ({kind})"
            self.counts[kind] += 1
            try:
                expect = getattr(self, "_" + kind)()
                self._power_back()
                self._check(expect)
            except Exception as e:
                self.bad(f"stopped: {type(e).__name__}: {e}")
                break
        else:
            self.where = "end"
            try:
                self._final()
            except Exception as e:
                self.bad(f"final check stopped: {type(e).__name__}: {e}")
        return {"seed": self.seed, "cuts": self.cuts, "by_kind": self.counts,
                "boots": self.boots, "records": len(self.records),
                "seconds": round(time.monotonic() - t0, 1), "violations": self.violations}

    def _cut_after(self, delay):
        """SIGKILL after `delay` s, whatever the charger is doing (no lock, no request)."""
        pid = self.c.proc.pid
        proc = self.c.proc

        def cut():
            if proc.poll() is None:
                os.kill(pid, signal.SIGKILL)
            t.fired.set()

        t = threading.Timer(delay, cut)
        t.fired = threading.Event()
        t.start()
        return t

    def _power_back(self):
        self.c.kill()  # reaps it (already dead, or dies now)
        self.c.start()
        self.boots += 1
        login(self.c)

    def _charge(self):
        c = self.c
        c.sim("ev", state="B", diode=True, max_a=16)
        c.wait_for(lambda s: s["session"]["active"], 10)
        c.sim("ev", state="C", diode=True, max_a=16)
        c.wait_for(lambda s: s["relays_closed"], 10)

    # ---- what runs when the power goes -----------------------------------------------------------
    def _charging(self):
        self._charge()
        self._cut_after(self.rng.uniform(0, 2)).join()
        return {"new": [("PowerLoss",)]}

    def _session_end(self):
        self._charge()
        time.sleep(self.rng.uniform(0, 1))
        self.c.sim("ev", state="A")
        self._cut_after(self.rng.uniform(0, 0.3)).join()
        return {"new": [("Unplug", "PowerLoss")]}

    def _config(self):
        inflight = {}
        stop = threading.Event()

        def writer():
            while not stop.is_set():
                want = {"max_current_a": self.rng.randint(6, 32),
                        "language": self.rng.choice(LANGS)}
                inflight.clear()
                inflight.update(want)
                try:
                    r = self.c.http("PUT", "/api/config", json=want, timeout=5)
                except (OSError, http.client.HTTPException):  # the cut, even mid-answer
                    return
                if r.status == 200:
                    self.acked = dict(want)
                    inflight.clear()

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        self._cut_after(self.rng.uniform(0.05, 1.5)).join()
        stop.set()
        th.join(10)
        return {"settings": [dict(self.acked)] + ([dict(inflight)] if inflight else [])}

    def _ocpp_queue(self):
        if self.cs._server is not None:
            self.cs.stop()
        before = len(self.records)
        n = 0
        killed = self._cut_after(self.rng.uniform(0.5, 6))
        try:
            while killed.is_alive():
                self._charge()
                time.sleep(self.rng.uniform(0, 0.5))
                self.c.sim("ev", state="A")
                self.c.wait_for(lambda s: not s["session"]["active"], 5)
                n += 1
        except Exception:
            if not killed.fired.is_set():
                raise
        killed.join()
        self._queue_sessions = n
        if self.rng.random() < 0.5:
            self.cs.start()
        return {"at_least": before + n}

    def _ota(self):
        c = self.c
        if self.cs._server is None:
            self.cs.start()
        version = self.rng.choice(sorted(self.bins))
        data = self.bins[version]
        th = threading.Thread(target=_paced_upload, args=(c, data), daemon=True)
        th.start()
        self._cut_after(self.rng.uniform(0, 2.5)).join()
        th.join(15)
        return {"ota": True}

    # ---- after the power is back -----------------------------------------------------------------
    def _read_history(self):
        recs, bad = read_records(self.c.data_dir)
        for what in bad:
            self.bad(what)
        return recs

    def _check(self, expect):
        c = self.c
        st = c.http("GET", "/api/status").body
        if st["software_version"] not in self.versions:
            self.bad(f"runs version {st['software_version']}")
        if (c.data_dir / "ota" / "upload.bin").exists():
            self.bad("an upload staging file survived the boot")
        cfg = c.http("GET", "/api/config").body
        for k, v in SETTINGS.items():
            if k not in self.acked and cfg.get(k) != v:
                self.bad(f"setting {k} is {cfg.get(k)!r}, not {v!r}")
        if cfg.get("ocpp_url") != self.cs.url("CP1"):
            self.bad(f"ocpp_url lost: {cfg.get('ocpp_url')!r}")
        got = {k: cfg.get(k) for k in self.acked}
        allowed = expect.get("settings", [self.acked])
        if got not in allowed:
            self.bad(f"settings {got}, expected one of {allowed}")
        self.acked = got
        now = self._read_history()
        nos = sorted(now)
        if nos and nos != list(range(nos[0], nos[-1] + 1)):
            self.bad(f"charge records missing or unreadable: numbers {nos}")
        for no, rec in self.records.items():
            if nos and no >= nos[0] and now.get(no) != rec:
                self.bad(f"record {no} changed or lost: {rec} -> {now.get(no)}")
        new = [now[n] for n in nos if n > max(self.records, default=0)]
        if "new" in expect:
            want = expect["new"]
            modes = [r["stop_mode"] for r in new]
            if len(new) != len(want) or any(m not in w for m, w in zip(modes, want, strict=True)):
                self.bad(f"new records {[(r['no'], r['stop_mode']) for r in new]}, expected "
                         f"{want}")
        elif new and "at_least" not in expect:
            self.bad(f"records appeared without a charge: {new}")
        if "at_least" in expect and len(now) < min(expect["at_least"], 200):
            self.bad(f"{len(now)} records, {expect['at_least']} sessions had ended or run")
        self.records = now

    def _final(self):
        c, cs = self.c, self.cs
        if cs._server is None:
            cs.start()
        cs.wait_connected("CP1", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            o = c.http("GET", "/api/status").body["ocpp"]
            if o["connected"] and o["queued"] == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"OCPP queue not drained in 60 s: {o}")
            time.sleep(0.2)
        starts, stops, wrong = transactions(cs, "CP1", self.tx_mark)
        for what in wrong:
            self.bad(what)
        records = [r for n, r in self.records.items() if n > self.base_no]
        if not (len(starts) == len(stops) == len(records)):
            self.bad(f"{len(records)} charge records, central system got {len(starts)} "
                     f"StartTransaction and {len(stops)} StopTransaction")
        # The reasons agree with the records, except that a cut between the record and
        # the queued stop makes the queue's own recovery report PowerLoss.
        reasons = Counter(p.get("reason", "Local") for p in stops)
        modes = Counter({"Unplug": "EVDisconnected"}.get(r["stop_mode"], r["stop_mode"])
                        for r in records)
        if any(n > modes[r] for r, n in reasons.items() if r != "PowerLoss") or \
                reasons["PowerLoss"] < modes["PowerLoss"]:
            self.bad(f"stop reasons {dict(reasons)} do not match the records {dict(modes)}")
        self.transactions = len(starts)
