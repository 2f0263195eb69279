"""Build an upgrade .bin (docs/ota.md) and print its MD5.

    python tools/mkbin.py firmware [--board unix_sim] [--tree build/<board>] [--version V] \
        -o fw.bin
    python tools/mkbin.py language --lang it [--lang de ...] [--src DIR] -o IT.bin

firmware: the compiled tree of tools/build.py (run `make build BOARD=...` first, or pass
--build to compile it now). language: lang/<code>.json files (plus lang/index.json, so a
new code shows up in the language menu). Prints `<file>  <md5>  <bytes>`: the MD5 is what
the technician types on the Upgrade page.
"""

import argparse
import hashlib
import re
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAGIC = b"EVPB"
FORMAT = 1
HDR_LEN = 64
KINDS = {"firmware": 1, "language": 2}
MODEL = "EVPLUS"


def _field(text, name):
    b = text.encode()
    if len(b) > 16:
        raise ValueError(f"{name} {text!r} is longer than 16 bytes")
    return b.ljust(16, b"\0")


def header(kind, model, board, version, payload_len):
    h = MAGIC + struct.pack("<BBH", FORMAT, KINDS[kind], HDR_LEN)
    h += _field(model, "model") + _field(board, "board") + _field(version, "version")
    h += struct.pack("<I", payload_len)
    return h + struct.pack("<I", zlib.crc32(h) & 0xFFFFFFFF)


def archive(files):
    """files: iterable of (path inside the archive, bytes) -> payload bytes."""
    out = bytearray()
    for path, data in files:
        p = path.encode()
        out += struct.pack("<H", len(p)) + p + struct.pack("<I", len(data)) + data
    out += struct.pack("<H", 0)
    return bytes(out)


def make_bin(kind, files, version, board, model=MODEL):
    payload = archive(files)
    return header(kind, model, board, version, len(payload)) + payload


def tree_files(tree):
    tree = Path(tree)
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree)
        if p.is_file() and not any(s.startswith(".") or s == "__pycache__" for s in rel.parts):
            yield rel.as_posix(), p.read_bytes()


def source_version(root=ROOT):
    text = (root / "firmware" / "evse" / "version.py").read_text()
    m = re.search(r'^VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ValueError("no VERSION in firmware/evse/version.py")
    return m.group(1)


def md5_of(data):
    return hashlib.md5(data).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--board", default="unix_sim", help="target board (firmware)")
    ap.add_argument("--tree", type=Path, help="compiled tree (default build/<board>)")
    ap.add_argument("--build", action="store_true", help="run tools/build.py first")
    ap.add_argument("--version", help="version in the header (default firmware/evse/version.py)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--lang", action="append", default=[], help="language code (language)")
    ap.add_argument("--src", type=Path, default=ROOT / "firmware" / "evse" / "www" / "lang")
    args = ap.parse_args(argv)
    version = args.version or source_version()
    if args.kind == "firmware":
        tree = args.tree or ROOT / "build" / args.board
        if args.build:
            sys.path.insert(0, str(ROOT / "tools"))
            import build

            build.build(args.board, tree)
        if not (tree / "evse" / "app.mpy").is_file():
            print(f"mkbin: {tree} is not a compiled tree (make build BOARD={args.board})",
                  file=sys.stderr)
            return 1
        files = list(tree_files(tree))
        board = args.board
    else:
        if not args.lang:
            print("mkbin: give --lang <code> at least once", file=sys.stderr)
            return 2
        files = []
        for code in args.lang + ["index"]:
            p = args.src / f"{code}.json"
            if not p.is_file():
                print(f"mkbin: no {p}", file=sys.stderr)
                return 1
            files.append((f"lang/{code}.json", p.read_bytes()))
        board = "*"
    data = make_bin(args.kind, files, version, board, args.model)
    args.out.write_bytes(data)
    print(f"{args.out}  {md5_of(data)}  {len(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
