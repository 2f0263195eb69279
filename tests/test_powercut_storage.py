"""Power-cut campaign for lib/recordlog.py and lib/atomicfile.py.

A MicroPython writer loops appending records and saving a JSON file, and reports on
stdout each append and save once it has returned. It is SIGKILLed at seeded random
instants. After every kill the files are checked twice: here, by a parser of the
documented on-disk format that shares no code with the library, and by a fresh MicroPython
process that opens them as the firmware would at boot. Every record must be whole, the
numbering consecutive, every reported append still there (plus at most the one in
flight), and the JSON file exactly the last reported version or the one in flight.

A killed process stands in for a power cut at the level of the write()/rename() calls: on
unix rename is atomic and written data survives the kill. The states only FAT produces (the
main file gone inside a rename-over) are seeded directly in unix_port_tests/.
"""

import collections
import json
import os
import random
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
ROUNDS = 100
SEED = 61851
# Two logs: "hist" rolls over every 12 appends, so kills land in roll-offs; "wide" keeps
# most of a round's appends in view, so an acknowledged record that went missing shows.
LOGS = {"hist": 12, "wide": 400}
MAX_RECORD_BYTES = 96
HEAP = "100k"  # the MCU budget; objects are twice as big on 64-bit unix


def _micropython():
    """$MICROPYTHON, else the project's (.venv), else the probe build."""
    candidates = [os.environ.get("MICROPYTHON")]
    try:
        from harness import micropython

        candidates.append(micropython())
    except ImportError:
        pass
    candidates.append("/tmp/probe/bin/micropython")
    for c in candidates:
        if c and shutil.which(c):
            return shutil.which(c)
    pytest.skip("no micropython binary (set MICROPYTHON)")


_COMMON = f"""
import sys
sys.path.insert(0, {str(LIB)!r})
from recordlog import RecordLog
from atomicfile import save_json, load_json

def payload(seq):
    return b'{{"no":%d,"pad":"%s"}}' % (seq, b"x" * (seq * 7 % 61))

d = sys.argv[1]
logs = {{name: RecordLog(d, name, n, {MAX_RECORD_BYTES}) for name, n in {LOGS!r}.items()}}
settings = load_json(d + "/settings.json", lambda: {{"gen": 0, "pad": ""}})
"""

# argv: data dir, what to write (log, json, both), grain (bytewise, calls).
WRITER = (
    _COMMON
    + """
if sys.argv[3] == "bytewise":
    # Each byte its own write(): a kill can then tear a file at any byte, as a cut can.
    import atomicfile
    import recordlog

    _open = open

    class _Bytewise:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            for i in range(len(data)):
                self.f.write(data[i : i + 1])
            return len(data)
        def flush(self):
            self.f.flush()
        def close(self):
            self.f.close()

    def _open_bytewise(path, mode="r"):
        f = _open(path, mode)
        return _Bytewise(f) if "w" in mode or "a" in mode else f

    recordlog.open = atomicfile.open = _open_bytewise

do_log = sys.argv[2] != "json"
do_json = sys.argv[2] != "log"
out = sys.stdout.write  # one write() per line: a kill cannot split it
gen = settings["gen"]
while True:
    if do_log:
        for name, log in logs.items():
            out("%s %d\\n" % (name, log.append(payload(log.last_seq + 1))))
    if do_json:
        gen += 1
        save_json(d + "/settings.json", {"gen": gen, "pad": "p" * (gen % 37)})
        out("settings %d\\n" % gen)
"""
)

CHECKER = (
    _COMMON
    + """
import json
report = {"settings": settings}
for name, log in logs.items():
    # Oldest first; compact, so a 400-record log fits the checker's heap too.
    first = None
    n = 0
    bad = []
    for seq, p in log.records(newest_first=False):
        if first is None:
            first = seq
        if seq != first + n or p != payload(seq):
            bad.append(seq)
        n += 1
    again = RecordLog(d, name, log.max_records, log.max_record_bytes)
    report[name] = {
        "last_seq": log.last_seq, "count": log.count, "first": first, "n": n, "bad": bad,
        "reopen": [again.last_seq, again.count],
    }
print(json.dumps(report))
"""
)


def _parse_segment(data):
    """Records of one segment file by the documented format: (seqs, leftover bytes)."""
    seqs, off = [], 0
    while len(data) - off >= 8:
        magic, n, seq = struct.unpack_from("<HHI", data, off)
        end = off + 12 + n
        if magic != 0x4C52 or n > MAX_RECORD_BYTES or end > len(data):
            break
        (crc,) = struct.unpack_from("<I", data, end - 4)
        if crc != zlib.crc32(data[off : end - 4]):
            break
        seqs.append(seq)
        off = end
    return seqs, data[off:]


def _crc_json_ok(data):
    """The documented "#crc32 xxxxxxxx" line + JSON form, checked here independently."""
    if data[:7] != b"#crc32 " or data[15:16] != b"\n":
        return False
    return int(data[7:15], 16) == zlib.crc32(data[16:])


def _check_raw_log(d, log, seen):
    """Only whole records, consecutive numbers; a torn tail only at the newest file's end,
    and only as a proper prefix of one record. Returns the seqs, counts states in `seen`."""
    pre = log + "."
    segs = sorted(n for n in os.listdir(d) if n.startswith(pre) and n.endswith(".log"))
    assert len(segs) <= 2, segs
    seqs = []
    for i, name in enumerate(segs):
        first = int(name[len(pre) : -4])
        got, rest = _parse_segment((Path(d) / name).read_bytes())
        assert got == list(range(first, first + len(got))), (name, got)
        if rest:
            seen["torn record at the end"] += 1
            assert i == len(segs) - 1, f"bytes after the good records of {name}"
            assert rest[:2] == b"RL"[: len(rest)], (name, rest)
            if len(rest) >= 4:
                (n,) = struct.unpack_from("<H", rest, 2)
                assert len(rest) < 12 + n, (name, rest)
        seqs += got
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    return seqs


def _check_raw_settings(d, seen):
    names = set(os.listdir(d))
    tmp = Path(d) / "settings.json.tmp"
    if tmp.exists() and not _crc_json_ok(tmp.read_bytes()):
        seen["settings.json.tmp torn"] += 1
    if "settings.json" in names and "settings.json.bak" not in names:
        seen["settings.json.bak removed, not yet replaced"] += 1


def _acked(path, before):
    """The last append to each log and the last save the writer reported as done."""
    acked = dict(before)
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            what, value = line.split()
            acked[what] = int(value)
    return acked


def _run_checker(mp, script, d):
    out = subprocess.run(
        [mp, "-X", f"heapsize={HEAP}", str(script), str(d)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_power_cut_campaign(tmp_path):
    mp = _micropython()
    writer, checker = tmp_path / "writer.py", tmp_path / "checker.py"
    writer.write_text(WRITER)
    checker.write_text(CHECKER)
    acks = tmp_path / "acks.txt"
    d = tmp_path / "data"
    d.mkdir()
    rng = random.Random(SEED)
    seen = collections.Counter()
    prev = dict.fromkeys([*LOGS, "settings"], 0)  # state found by the last check
    t0 = time.monotonic()
    for rnd in range(ROUNDS):
        # Rounds doing only one kind of write land more kills inside it,
        # and bytewise writes let a kill tear a file at any byte, not only between calls.
        mode = rng.choice(("log", "json", "both"))
        grain = rng.choice(("bytewise", "calls"))
        with open(acks, "wb") as ack_file:  # a file, not a pipe: the writer never blocks
            proc = subprocess.Popen(
                [mp, "-X", f"heapsize={HEAP}", str(writer), str(d), mode, grain],
                stdout=ack_file,
                stderr=subprocess.PIPE,
            )
            try:
                time.sleep(rng.uniform(0.005, 0.12))
                proc.kill()
                _, err = proc.communicate(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        where = f"round {rnd} ({mode}, {grain})"
        assert proc.returncode == -9, f"{where}: the writer died by itself: {err.decode()}"
        acked = _acked(acks, prev)

        raw = {log: _check_raw_log(d, log, seen) for log in LOGS}
        _check_raw_settings(d, seen)
        st = _run_checker(mp, checker, d)
        found = {}
        for log, max_records in LOGS.items():
            s, w = st[log], f"{where}, {log}"
            last = found[log] = s["last_seq"]
            # Every reported append survives; only the one in flight may or may not.
            assert acked[log] <= last <= acked[log] + 1, (w, acked[log], last)
            assert (raw[log][-1] if raw[log] else 0) == last, w
            # Roll-off deletes the oldest file only once a full one remains: never fewer kept.
            assert s["count"] == min(last, max_records), (w, s["count"], last)
            if s["count"]:
                assert (s["first"], s["n"]) == (last - s["count"] + 1, s["count"]), (w, s)
            assert s["bad"] == [], f"{w}: records out of order or changed: {s['bad']}"
            assert s["reopen"] == [last, s["count"]], w
        gen = found["settings"] = st["settings"]["gen"]
        assert gen in (acked["settings"], acked["settings"] + 1), (where, acked, gen)
        assert st["settings"]["pad"] == "p" * (gen % 37), where
        if found != acked:
            seen["write in flight, completed"] += 1
        prev = found
    elapsed = time.monotonic() - t0
    print(f"{ROUNDS} kills in {elapsed:.1f} s, last {prev}; states after a kill: {dict(seen)}")
    # The kills must have landed inside the loop, not all before it started.
    assert min(prev.values()) > ROUNDS, prev
