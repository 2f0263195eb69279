# A small app on lib/httpd.py for tests/test_httpd_hostile.py (and rough benchmarks):
#
#   micropython -X heapsize=64k tests/httpd_app.py PORT STATIC_DIR [limit=value ...]
#
# Prints "READY <port> <mem_free>" once listening, then serves until killed. At a
# 64 KB heap the unix port can't compile lib/httpd.py from source (the device freezes
# it), so the test puts an mpy-cross'd httpd.mpy in the directory named by HTTPD_LIB.
import os
import sys

sys.path.insert(0, (__file__.rpartition("/")[0] or ".") + "/../lib")
if os.getenv("HTTPD_LIB"):
    sys.path.insert(0, os.getenv("HTTPD_LIB"))

import asyncio
import gc
import hashlib

import httpd


async def status(req):
    return {"state": "Available", "mem_free": gc.mem_free()}


async def echo(req):
    return {"got": await req.json()}


# Streams every body through one shared 1 KB buffer (a 2 MB upload never lands in RAM):
# each read is hashed before the next await, so uploads at once don't mix.
buf = bytearray(1024)
mv = memoryview(buf)


async def upload(req):
    h = hashlib.md5()
    total = 0
    while True:
        n = await req.read_into(buf)
        if not n:
            break
        h.update(mv[:n])
        total += n
    return {"md5": "".join("%02x" % b for b in h.digest()), "bytes": total}


async def card(req):
    return {"slot": req.params["slot"], "uid": (await req.json()).get("uid")}


async def wait(req):
    # A handler that only waits (as a card read does): it gives way to new clients.
    req.evictable = True
    await asyncio.sleep_ms(int(req.query.get("ms", "30000")))
    return {"waited": True}


def log(msg, exc=None):
    print(msg)
    if exc is not None:
        sys.print_exception(exc)


async def main(port, root, limits):
    srv = httpd.Server(
        [
            ("GET", "/api/status", status),
            ("POST", "/api/echo", echo),
            ("PUT", "/api/cards/<slot>", card),
            ("POST", "/api/upload", upload, 8 << 20),
            ("GET", "/api/wait", wait),
        ],
        static_root=root,
        log=log,
        **limits,
    )
    await srv.start("127.0.0.1", port)
    gc.collect()
    print("READY", port, gc.mem_free())
    while True:
        await asyncio.sleep(3600)


def _limits(args):
    d = {}
    for a in args:
        k, _, v = a.partition("=")
        d[k] = int(v)
    return d


asyncio.run(main(int(sys.argv[1]), sys.argv[2], _limits(sys.argv[3:])))
