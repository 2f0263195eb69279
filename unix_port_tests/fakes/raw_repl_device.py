# A board on a serial line, for testing `make deploy` with the real mpremote: speaks
# MicroPython's raw REPL on stdin/stdout (a pty) and runs what it receives in this
# interpreter, whose filesystem root is ROOT (a VfsPosix mount). machine.reset() writes
# ROOT/.reset and ends the process, as a hard reset drops the connection.
#
#   micropython raw_repl_device.py ROOT   (stdin and stdout: the pty's device side)
#
# Raw-paste mode is refused (R\x00): mpremote then sends in plain raw REPL.
import io
import os
import sys

import vfs

_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_out = sys.stdout.buffer
_in = sys.stdin.buffer


class _Machine:
    @staticmethod
    def reset():
        f = open("/.reset", "w")
        f.write("1")
        f.close()
        sys.exit(0)


def _send(b):
    _out.write(b)
    _out.flush()


_ns = {"__name__": "__main__"}  # one namespace for every command, as the REPL keeps
_capture = [None]  # the StringIO of the command that runs


def _print(*args, sep=" ", end="\n", file=None):
    print(*args, sep=sep, end=end, file=file or _capture[0])


def _run(code):
    """Runs `code`; returns (stdout bytes, traceback bytes) as the raw REPL reports them.
    sys.stdout cannot be rebound on this port: the command's print() is ours instead."""
    out = io.StringIO()
    err = io.StringIO()
    _capture[0] = out
    _ns["print"] = _print
    try:
        exec(code, _ns)
    except SystemExit:
        raise
    except BaseException as e:  # the device reports every error, as the REPL does
        sys.print_exception(e, err)
    return out.getvalue().encode(), err.getvalue().encode()


def main(root):
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(root), "/")
    os.chdir("/")
    sys.modules["machine"] = _Machine
    raw = False
    buf = bytearray()
    while True:
        c = _in.read(1)
        if not c:
            return
        if not raw:
            if c == b"\x01":
                raw = True
                buf = bytearray()
                _send(b"\r\n" + _BANNER + b">")
            continue
        if c == b"\x02":
            raw = False
            _send(b"\r\n>>> ")
        elif c == b"\x03":
            buf = bytearray()
        elif c == b"\x01":
            buf = bytearray()
            _send(b"\r\n" + _BANNER + b">")
        elif c == b"\x05":
            _in.read(2)  # "A\x01": the raw-paste request
            _send(b"R\x00")
        elif c == b"\x04":
            if not buf:
                _send(b"OK\r\nMPY: soft reboot\r\n" + _BANNER + b">")
                continue
            _send(b"OK")
            out, err = _run(bytes(buf).decode())
            buf = bytearray()
            _send(out + b"\x04" + err + b"\x04>")
        else:
            buf.extend(c)


main(sys.argv[1])
