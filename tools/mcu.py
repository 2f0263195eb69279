"""`make mcu`: the firmware on a 32-bit MicroPython with its code frozen, as a board runs it.

    python tools/mcu.py [--soak-s 150] [--seed 5] [--heap 192k] [--build-only]

1. Unpacks the vendored MicroPython v1.28.0 source (../shared/vendor, or MCU_SRC_TAR; or
   MCU_SRC: a `git clone --branch v1.28.0` with `make -C ports/unix submodules` done)
   into build/mcu/src, once.
2. Builds mpy-cross and the unix port as a 32-bit interpreter with single-precision floats
   (object sizes and floats of the ESP32 and STM32 ports), axTLS, and the unix_sim
   firmware plus asyncio frozen into it: build/mcu/micropython. Built again only when the
   firmware, the manifest or the flags change (build/mcu/stamp).
3. Runs the soak rig (tests/soak_rig.py: OCPP, the SDM630 on a pty, CAN master of two
   nodes, web polling, sessions and faults) on it and writes build/mcu/report.json: the
   heap after GC of the firmware alone and with the simulator, at boot and worst, and the
   smallest largest free block (docs/development.md "The 32-bit frozen build").

Exit status: 0, 1 when the soak saw a violation (MemoryError included), 2 when the
build could not be made.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "mcu"
VERSION = "1.28.0"
TARBALL = ROOT.parent / "shared" / "vendor" / f"micropython-{VERSION}-unix-src.tar.xz"
BOARD = "unix_sim"
# As the board ports build: 32-bit objects, float32; axTLS is the TLS the vendored tree
# has (it does not verify certificates: wss:// with a CA is measured on the boards only).
MAKE_FLAGS = [
    "MICROPY_FORCE_32BIT=1",
    "MICROPY_PY_FFI=0",
    "MICROPY_PY_BTREE=0",
    "MICROPY_SSL_AXTLS=1",
    "MICROPY_SSL_MBEDTLS=0",
    "CFLAGS_EXTRA=-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT",
]
# The firmware's own heap after GC (the simulator's taken out) with every feature in use,
# worst over a soak, on this build: the budget is 96 KB (docs/development.md "The 32-bit
# frozen build"). The suite holds its soak to it, and an upgrade (signed, checked,
# installed) made beside everything the soak left running (tests/test_soak.py); the soak
# of seed 5 is at 88.3 KB, the upgrade after the suite's soak at 94.4 KB. And the largest
# free block the heap must keep.
FIRMWARE_BUDGET_KB = 96
FIRMWARE_HEAP_CAP_KB = FIRMWARE_BUDGET_KB
LARGEST_FREE_MIN_KB = 16
HOW_TO_GET = (
    f"mcu: the MicroPython {VERSION} source is not here ({TARBALL}).\n"
    f"  Get the same tree with:\n"
    f"    git clone --depth 1 --branch v{VERSION} https://github.com/micropython/micropython\n"
    f"    make -C micropython/ports/unix submodules\n"
    f"  and run again with MCU_SRC=/path/to/micropython."
)


def log(msg):
    print(f"mcu: {msg}", flush=True)


def _tarball():
    """The vendored source: MCU_SRC_TAR, else shared/vendor beside this checkout or beside
    one of its parent directories."""
    given = os.environ.get("MCU_SRC_TAR")
    if given:
        return Path(given)
    for d in ROOT.parents:
        p = d / "shared" / "vendor" / TARBALL.name
        if p.is_file():
            return p
    return TARBALL


def source_missing():
    """Whether neither MCU_SRC nor the vendored tarball is on this machine."""
    return not os.environ.get("MCU_SRC") and not _tarball().is_file()


def source_tree():
    """The MicroPython tree to build in (unpacked once from the tarball)."""
    given = os.environ.get("MCU_SRC")
    if given:
        src = Path(given)
        if not (src / "ports" / "unix").is_dir():
            raise SystemExit(f"mcu: MCU_SRC={given} is not a MicroPython tree")
        return src
    tar = _tarball()
    if not tar.is_file():
        print(HOW_TO_GET, file=sys.stderr)
        raise SystemExit(2)
    src = OUT / "src" / f"micropython-{VERSION}"
    mark = OUT / "src" / ".unpacked"
    want = f"{tar.resolve()} {tar.stat().st_size} {tar.stat().st_mtime_ns}"
    if not (mark.is_file() and mark.read_text() == want and src.is_dir()):
        shutil.rmtree(OUT / "src", ignore_errors=True)
        (OUT / "src").mkdir(parents=True)
        log(f"unpacking {tar.name}")
        with tarfile.open(tar) as t:
            t.extractall(OUT / "src", filter="data")
        mark.write_text(want)
    return src


def _tools(name):
    """A module of tools/ (this file may be imported from tests/, without tools/ on the path)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def write_manifest(path):
    """The firmware of BOARD, the entry scripts and asyncio, frozen; no port manifest (the
    unix port's asks for micropython-lib packages the firmware does not use)."""
    lines = _tools("manifest").manifest_text(BOARD, path.parent).splitlines()
    lines = [x for x in lines if "$(PORT_DIR)/boards/manifest.py" not in x]
    fw = os.path.relpath(ROOT / "firmware", path.parent)
    lines += [
        f'module("main.py", base_path="{fw}")',
        f'module("ab_boot.py", base_path="{fw}")',
        'include("$(MPY_DIR)/extmod/asyncio")',
    ]
    path.write_text("\n".join(lines) + "\n")


def _stamp(src):
    h = hashlib.sha256()
    h.update(" ".join(MAKE_FLAGS).encode())
    h.update(str(src.resolve()).encode())
    # What the manifest freezes (the same directory list as the build), and the tools
    # that write it.
    dirs = [ROOT / "firmware", *_tools("build").module_dirs(ROOT, BOARD)]
    tools = [ROOT / "tools" / n for n in ("manifest.py", "build.py", "mcu.py")]
    for p in dirs + tools:
        for f in sorted([p] if p.is_file() else p.rglob("*.py")):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def build():
    """build/mcu/micropython, made again only when its inputs changed."""
    OUT.mkdir(parents=True, exist_ok=True)
    src = source_tree()
    exe = OUT / "micropython"
    stamp = OUT / "stamp"
    want = _stamp(src)
    if exe.is_file() and stamp.is_file() and stamp.read_text() == want:
        return exe
    manifest = OUT / "manifest.py"
    write_manifest(manifest)
    jobs = f"-j{os.cpu_count() or 2}"
    t0 = time.monotonic()
    for cmd in (
        ["make", "-C", str(src / "mpy-cross"), jobs],
        ["make", "-C", str(src / "ports" / "unix"), jobs, *MAKE_FLAGS,
         f"FROZEN_MANIFEST={manifest.resolve()}"],
    ):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(r.stdout[-4000:], file=sys.stderr)
            raise SystemExit(f"mcu: build failed: {' '.join(cmd[:3])}")
    # A rename, not a copy over it: a charger may still run the old one.
    tmp = exe.with_name(exe.name + ".new")
    shutil.copy2(src / "ports" / "unix" / "build-standard" / "micropython", tmp)
    os.replace(tmp, exe)
    stamp.write_text(want)
    log(f"built {exe.relative_to(ROOT)} in {time.monotonic() - t0:.0f} s")
    return exe


def kb(b):
    return None if b is None else round(b / 1024, 1)


def soak(exe, seconds, seed, heap):
    """The soak rig on the frozen interpreter; the report's figures."""
    os.environ["EVSE_MCU"] = str(exe)
    sys.path.insert(0, str(ROOT / "tests"))
    from soak_rig import Rig
    from soak_scenario import Soak

    work = OUT / "soak"
    shutil.rmtree(work, ignore_errors=True)
    rig = Rig(work, heap=heap)
    try:
        rig.start()
        boot = rig.main.sim("heap")
        result = Soak(rig, seed, seconds, log=lambda m: log(f"soak: {m}")).run()
        end = rig.main.sim("heap")
    finally:
        rig.close()
    sim = end["sim_heap"]
    worst = result["heap_alloc_worst"]
    report = {
        "interpreter": "MicroPython %s unix port, 32-bit, float32, firmware frozen" % VERSION,
        "heap": heap,
        "soak_s": seconds,
        "seed": seed,
        "sim_heap_kb": kb(sim),
        "boot_heap_kb": kb(boot["heap_alloc"] - sim),
        "boot_total_heap_kb": kb(boot["heap_alloc"]),
        "firmware_heap_worst_kb": kb(worst - sim),
        "total_heap_worst_kb": kb(worst),
        "largest_free_min_kb": kb(result.get("heap_largest_min")),
        "least_free_kb": kb(result.get("heap_free_min")),
        "heap_growth_kb": kb(result.get("heap_growth")),
        "sessions": result["sessions"],
        "violations": result["violations"],
    }
    return report


def table(r):
    """Rows for tools/bench_report.py (measures only)."""
    rows = [
        ("heap after GC at boot, every feature configured, firmware", "boot_heap_kb"),
        ("heap after GC at boot, with the simulator", "boot_total_heap_kb"),
        ("heap after GC worst over the soak, firmware", "firmware_heap_worst_kb"),
        ("heap after GC worst over the soak, with the simulator", "total_heap_worst_kb"),
        ("smallest largest free block over the soak", "largest_free_min_kb"),
        ("the simulator's own heap", "sim_heap_kb"),
    ]
    return [{"what": w, "value": r[k], "peer": None, "unit": "KB"} for w, k in rows]


def _heap(c):
    h = c.sim("heap")
    return h["heap_alloc"] - h["sim_heap"], h["heap_alloc"], h["heap_largest"]


def features(exe, heap, settle_s=5.0):
    """What each feature adds to the firmware's heap after GC on this build: rows of
    (step, firmware bytes, with the simulator, largest free block). Each configured step
    boots a fresh charger with the features so far; the last three are measured on the
    last one while it charges, serves the web app and receives an upgrade."""
    import socket

    os.environ["EVSE_MCU"] = str(exe)
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tools"))
    import csms
    import mkbin
    from cryptography.hazmat.primitives.asymmetric import ec
    from harness import Charger, firmware_tree, free_port
    from soak_rig import CARD, seed_ocpp
    from test_power_management import MeterServer, PtyPair

    key = ec.generate_private_key(ec.SECP256R1())
    work = OUT / "features"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cs = csms.CentralSystem()
    cs.start()
    pty = PtyPair(work)
    meter = None
    steps = [
        ("boot, nothing configured", {}, {}),
        ("+ OCPP, connected", {"ocpp_url": cs.url("CP1"), "auth_mode": "rfid"}, {}),
        ("+ external meter (SDM630)", {"meter_model": "SDM630", "max_house_current_a": 40},
         {"EVSE_RS485": str(pty.a)}),
        ("+ load balancing (CAN master)", {"lb_enabled": True, "can_addr": 1},
         {"EVSE_CAN_PORT": str(free_port(socket.SOCK_DGRAM))}),
    ]
    rows = []
    settings, env = {}, {}
    c = None
    try:
        for i, (name, more, more_env) in enumerate(steps):
            settings.update(more)
            env.update(more_env)
            if c is not None:
                c.stop()
            c = Charger(work / f"step{i}", settings=dict(settings), env=dict(env), heap=heap)
            seed_ocpp(c)
            # A signing key installed: the upgrade at the end is signed and checked, its
            # worst moment the signature check's numbers (docs/ota.md).
            (c.data_dir / "ota_pub.key").write_bytes(mkbin.raw_public(key))
            if "EVSE_RS485" in more_env:
                meter = MeterServer("SDM630", pty.b, work, c.sim_port, "L123", [4.0] * 3)
                meter.start()
            c.start()
            if "ocpp_url" in settings:
                cs.wait_connected("CP1", timeout=20)
            time.sleep(settle_s)
            rows.append((name, *_heap(c)))
            log(f"{name}: {rows[-1][1] / 1024:.1f} KB")
        c.sim("ev", state="B", diode=True, max_a=32)
        c.wait_for(lambda s: s["cp_state"] == "B", 10)
        c.tap(CARD)
        c.sim("ev", state="C", diode=True, max_a=32)
        c.wait_for(lambda s: s["relays_closed"], 15)
        time.sleep(settle_s)
        rows.append(("+ a charge running", *_heap(c)))
        c.login()
        for path in ("/", "/api/status", "/api/config", "/api/history?limit=50",
                     "/api/faults", "/api/cards", "/api/upgrade", "/api/status"):
            c.http("GET", path)
        rows.append(("+ web app in use", *_heap(c)))
        # An upgrade file half sent: the upload's buffers and the MD5 in the heap. The
        # charger takes no upload while it charges (docs/ota.md): the car leaves first.
        c.sim("ev", state="A")
        c.wait_for(lambda s: not s["session"]["active"], 15)
        data = mkbin.sign(mkbin.make_bin("firmware", list(mkbin.tree_files(firmware_tree())),
                                         "9.9.9", BOARD), key)
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        s = socket.create_connection(("127.0.0.1", c.http_port))
        try:
            s.sendall((f"POST /api/upgrade?md5={hashlib.md5(data).hexdigest()} HTTP/1.1\r\n"
                       f"Host: 127.0.0.1\r\nCookie: {cookie}\r\n"
                       "Content-Type: application/octet-stream\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:len(data) // 2])
            deadline = time.monotonic() + 10
            while c.http("GET", "/api/upgrade").body.get("busy") != "upload":
                if time.monotonic() > deadline:
                    raise SystemExit("mcu: the upload never started")
                time.sleep(0.1)
            time.sleep(1)
            rows.append(("+ OTA upload in progress (car gone)", *_heap(c)))
            # The rest of the file: the signature check and the install, the answer's
            # heap_peak their worst moment (live heap after a collection, sampled).
            sim = c.sim("heap")["sim_heap"]
            s.settimeout(120)
            s.sendall(data[len(data) // 2:])
            ans = b""
            while b"heap_peak" not in ans or not ans.endswith(b"}"):
                more = s.recv(4096)
                if not more:
                    break
                ans += more
            body = json.loads(ans.partition(b"\r\n\r\n")[2])
            if body.get("code") != "100 UP":
                raise SystemExit(f"mcu: the upgrade failed: {body}")
            peak = body["heap_peak"]
            rows.append(("+ OTA upgrade, its worst moment (signature check, install)",
                         peak - sim, peak, None))
        finally:
            s.close()
    finally:
        if c is not None:
            c.stop()
        if meter is not None:
            meter.stop()
        pty.close()
        cs.close()
    return rows


def print_features(rows):
    print(f"  {'step':34} {'firmware':>9} {'+sim':>7} {'largest free':>13}")
    prev = None
    for name, fw, total, largest in rows:
        d = "" if prev is None else f" ({(fw - prev) / 1024:+.1f})"
        free = "-" if largest is None else f"{largest / 1024:.1f} KB"
        print(f"  {name:34} {fw / 1024:6.1f} KB{d:9} {total / 1024:6.1f} KB {free:>12}")
        prev = fw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak-s", type=float, default=150, help="seconds of soak (>= 120)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--heap", default="192k", help="the interpreter's heap")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the report here (make bench)")
    ap.add_argument("--features", action="store_true",
                    help="what each feature costs, instead of the soak")
    args = ap.parse_args(argv)
    exe = build()
    if args.build_only:
        print(exe)
        return 0
    if args.features:
        rows = features(exe, args.heap)
        (OUT / "features.json").write_text(json.dumps(
            [{"step": n, "firmware_kb": kb(f), "total_kb": kb(t),
              "largest_free_kb": None if g is None else kb(g)}
             for n, f, t, g in rows], indent=1) + "\n")
        print_features(rows)
        return 0
    report = soak(exe, args.soak_s, args.seed, args.heap)
    report["table"] = table(report)
    text = json.dumps(report, indent=1) + "\n"
    (OUT / "report.json").write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    for k in ("boot_heap_kb", "firmware_heap_worst_kb", "total_heap_worst_kb", "sim_heap_kb",
              "largest_free_min_kb", "least_free_kb", "heap_growth_kb", "sessions"):
        print(f"  {k:24} {report[k]}")
    for v in report["violations"][:20]:
        print(f"  VIOLATION {v}")
    print(f"mcu: report in {(OUT / 'report.json').relative_to(ROOT)}")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
