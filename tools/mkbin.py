"""Build an upgrade .bin (docs/ota.md) and print its MD5.

    python tools/mkbin.py firmware [--board unix_sim] [--tree build/<board>] [--version V] \
        -o fw.bin
    python tools/mkbin.py language --lang it [--lang de ...] [--src DIR] -o IT.bin
    python tools/mkbin.py key --pub NEW_PUBLIC.pem --sign CURRENT.pem -o key.bin

--sign KEY.pem (an EC P-256 private key, e.g. `openssl ecparam -name prime256v1 -genkey
-noout -out KEY.pem`) appends the signature trailer of docs/ota.md: ECDSA P-256 over the
SHA-256 of the header and payload. A charger with the matching public key installed takes
only files signed by it; a key file (kind key) hands it over to the key --pub names.

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
KINDS = {"firmware": 1, "language": 2, "key": 3}
MODEL = "EVPLUS"
SIG_MAGIC = b"EVPS"
SIG_P256 = 1


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


def trailer(sig64):
    """The 76-byte signature trailer of r || s."""
    t = SIG_MAGIC + struct.pack("<BBH", SIG_P256, 0, len(sig64)) + sig64
    return t + struct.pack("<I", zlib.crc32(t) & 0xFFFFFFFF)


def load_private(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not an EC P-256 private key")
    return key


def raw_public(key):
    """The 65-byte uncompressed point of a public or private key."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def load_public(path):
    from cryptography.hazmat.primitives import serialization

    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        return raw_public(serialization.load_pem_private_key(data, password=None))
    return raw_public(serialization.load_pem_public_key(data))


def fingerprint(raw):
    """As the charger shows it (evse/ota.py fingerprint)."""
    return hashlib.sha256(raw).digest()[:8].hex()


def sign(data, key):
    """data (header + payload) with its signature trailer appended."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return data + trailer(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def key_bin(raw, version="key"):
    """A kind-3 file whose payload is the 65-byte public key (sign it before use)."""
    return header("key", MODEL, "*", version, len(raw)) + raw


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
    ap.add_argument("--sign", type=Path, metavar="KEY.pem", help="EC P-256 private key")
    ap.add_argument("--pub", type=Path, metavar="PUB.pem", help="the new public key (key)")
    args = ap.parse_args(argv)
    version = args.version or source_version()
    key = None
    if args.sign:
        try:
            key = load_private(args.sign)
        except (OSError, ValueError, TypeError) as e:
            print(f"mkbin: --sign: {e}", file=sys.stderr)
            return 1
    if args.kind == "key":
        if not args.pub or key is None:
            print("mkbin: a key file needs --pub NEW.pem and --sign CURRENT.pem", file=sys.stderr)
            return 2
        raw = load_public(args.pub)
        data = key_bin(raw, args.version or "key")
        data = sign(data, key)
        args.out.write_bytes(data)
        print(f"{args.out}  {md5_of(data)}  {len(data)}  new key {fingerprint(raw)}"
              f"  signed by {fingerprint(raw_public(key))}")
        return 0
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
    note = ""
    if key is not None:
        data = sign(data, key)
        note = f"  signed by {fingerprint(raw_public(key))}"
    args.out.write_bytes(data)
    print(f"{args.out}  {md5_of(data)}  {len(data)}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
