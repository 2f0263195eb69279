# The JSON route of tests/httpd_app.py on microdot, for tools/bench_http.py:
#
#   MICRODOT_LIB=DIR micropython -X heapsize=64k tests/microdot_app.py PORT
#
# DIR holds microdot (the pinned test dependency) compiled with mpy-cross, as
# tools/bench_http.py prepares it at run time: at a 64 KB heap the unix port can't
# compile it from source. Prints "READY <port> <mem_free>" once listening.
import os
import sys

if os.getenv("MICRODOT_LIB"):
    sys.path.insert(0, os.getenv("MICRODOT_LIB"))

import asyncio
import gc

from microdot import Microdot

app = Microdot()


@app.get("/api/status")
async def status(req):
    return {"state": "Available", "mem_free": gc.mem_free()}


async def main(port):
    server = asyncio.create_task(app.start_server(host="127.0.0.1", port=port))
    # start_server only returns when the server stops: wait until it listens.
    while app.server is None:
        await asyncio.sleep(0.01)
    gc.collect()
    print("READY", port, gc.mem_free())
    await server


asyncio.run(main(int(sys.argv[1])))
