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
HOW_TO_GET = (
    f"mcu: the MicroPython {VERSION} source is not here ({TARBALL}).\n"
    f"  Get the same tree with:\n"
    f"    git clone --depth 1 --branch v{VERSION} https://github.com/micropython/micropython\n"
    f"    make -C micropython/ports/unix submodules\n"
    f"  and run again with MCU_SRC=/path/to/micropython."
)


def log(msg):
    print(f"mcu: {msg}", flush=True)


def source_tree():
    """The MicroPython tree to build in (unpacked once from the tarball)."""
    given = os.environ.get("MCU_SRC")
    if given:
        src = Path(given)
        if not (src / "ports" / "unix").is_dir():
            raise SystemExit(f"mcu: MCU_SRC={given} is not a MicroPython tree")
        return src
    tar = Path(os.environ.get("MCU_SRC_TAR") or TARBALL)
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


def write_manifest(path):
    """The firmware of BOARD, the entry scripts and asyncio, frozen; no port manifest (the
    unix port's asks for micropython-lib packages the firmware does not use)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from manifest import manifest_text
    finally:
        sys.path.pop(0)
    lines = manifest_text(BOARD, path.parent).splitlines()
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
    for top in ("firmware", "lib", f"boards/{BOARD}", "tools/manifest.py", "tools/build.py",
                "tools/mcu.py"):
        p = ROOT / top
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
    shutil.copy2(src / "ports" / "unix" / "build-standard" / "micropython", exe)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak-s", type=float, default=150, help="seconds of soak (>= 120)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--heap", default="192k", help="the interpreter's heap")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args(argv)
    exe = build()
    if args.build_only:
        print(exe)
        return 0
    report = soak(exe, args.soak_s, args.seed, args.heap)
    (OUT / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    for k in ("boot_heap_kb", "firmware_heap_worst_kb", "total_heap_worst_kb", "sim_heap_kb",
              "largest_free_min_kb", "least_free_kb", "heap_growth_kb", "sessions"):
        print(f"  {k:24} {report[k]}")
    for v in report["violations"][:20]:
        print(f"  VIOLATION {v}")
    print(f"mcu: report in {(OUT / 'report.json').relative_to(ROOT)}")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
