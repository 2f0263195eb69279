"""Print the MD5 of files, as the Upgrade page wants it typed (manual §12 step 5-6).

    python tools/check_sum_tool.py firmware.bin [more files]
"""

import hashlib
import sys


def md5_file(path, chunk=1 << 16):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    status = 0
    for path in argv:
        try:
            print(f"{md5_file(path)}  {path}")
        except OSError as e:
            print(f"check_sum_tool: {path}: {e.strerror}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
