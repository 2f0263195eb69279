"""Compress the web app's static files for the device filesystem.

    python tools/build_www.py [--src firmware/evse/www] [--dst build/unix_sim/evse/www]
                              [--keep-plain]

Each file under src is stored in dst as `name.gz` (gzip, level 9). lib/httpd.py serves
`/app.js` from `app.js.gz` with `Content-Encoding: gzip` to every client that accepts
gzip, which every browser does, and inflated on the way to one that does not (curl);
so by default the flash holds each asset once, and a plain copy of it already in dst
(tools/build.py copies firmware/ as is) is removed. --keep-plain keeps the plain files
too. A file that gzip does not make smaller is stored plain only.

The output is deterministic (no file name, mtime 0 in the gzip header): an unchanged
asset has the same bytes in every build.
"""

import argparse
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "firmware" / "evse" / "www"


def _files(src):
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        hidden = any(p.startswith(".") for p in rel.parts)
        if path.is_file() and not hidden and path.suffix != ".gz":
            yield path, rel


# The deflate window: lib/httpd.py inflates an asset for a client without gzip with a
# window this size (GZIP_WBITS there), 8 KB of heap instead of 32 KB; it costs about 2 %
# of compression on the web app.
WBITS = 13


def compress(data):
    """gzip (RFC 1952) at level 9 with a 2**WBITS window; no name and mtime 0 in its header."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + WBITS)
    return z.compress(data) + z.flush()


def build_www(src_dir, dst_dir, keep_plain=False):
    """Writes the compressed assets of src_dir into dst_dir.

    Returns one (relative path, plain bytes, stored bytes, stored file) per asset, where
    stored bytes counts everything that ends up in dst for that asset.
    """
    src = Path(src_dir)
    dst = Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    out = []
    for path, rel in _files(src):
        data = path.read_bytes()
        packed = compress(data)
        plain = dst / rel
        gz = plain.with_name(plain.name + ".gz")
        plain.parent.mkdir(parents=True, exist_ok=True)
        if len(packed) < len(data):
            gz.write_bytes(packed)
            stored = len(packed)
            if keep_plain:
                plain.write_bytes(data)
                stored += len(data)
            elif plain.exists():
                plain.unlink()
            name = rel.as_posix() + ".gz"
        else:
            plain.write_bytes(data)
            if gz.exists():
                gz.unlink()
            stored = len(data)
            name = rel.as_posix()
        out.append((rel.as_posix(), len(data), stored, name))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=SRC, help="web app sources (default %(default)s)")
    ap.add_argument("--dst", type=Path, default=ROOT / "build" / "unix_sim" / "evse" / "www",
                    help="output directory (default %(default)s)")
    ap.add_argument("--keep-plain", action="store_true",
                    help="also keep the uncompressed files (for clients without gzip)")
    args = ap.parse_args(argv)
    try:
        rows = build_www(args.src, args.dst, args.keep_plain)
    except OSError as e:
        print(f"build_www: {e}", file=sys.stderr)
        return 1
    width = max((len(r[0]) for r in rows), default=4)
    for rel, plain, stored, name in rows:
        print(f"  {rel:<{width}}  {plain:>7}  ->  {stored:>7}  {name}")
    total_plain = sum(r[1] for r in rows)
    total_stored = sum(r[2] for r in rows)
    print(f"build_www: {args.dst}: {len(rows)} files, {total_plain} bytes -> {total_stored} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
