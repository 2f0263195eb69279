# Simulator control socket: newline-delimited JSON on 127.0.0.1:EVSE_SIM_PORT, one reply
# line per request (docs/simulator.md). This module is the transport: bounded line
# reads, timeouts, a cap on clients. What each op does is in sim_ops.py.
import asyncio
import json
from micropython import const

from jsonout import Chunks
from sim_ops import error_reply
from sim_requests import MAX_LINE

DEFAULT_PORT = const(8090)
_MAX_CLIENTS = const(4)
_BACKLOG = const(4)
_CHUNK = const(512)
_OUT = const(512)  # reply buffer: a snapshot (~2 KB) goes out in pieces, never whole
_LINE_TIMEOUT_MS = const(5000)  # a line once started must be complete within this
_IDLE_TIMEOUT_MS = const(600_000)  # a connection without any request for 10 min is closed
_WRITE_TIMEOUT_MS = const(5000)  # a client that stops reading its replies is dropped


class ControlServer:
    def __init__(
        self,
        controller,
        clock_us,
        port=DEFAULT_PORT,
        host="127.0.0.1",
        max_clients=_MAX_CLIENTS,
        line_timeout_ms=_LINE_TIMEOUT_MS,
        idle_timeout_ms=_IDLE_TIMEOUT_MS,
    ):
        self._controller = controller
        self._clock_us = clock_us
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.line_timeout_ms = line_timeout_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.clients = 0
        self.refused = 0
        self._out = Chunks(bytearray(_OUT))  # shared: emptied before every await

    async def run(self):
        """The board task: serves until cancelled."""
        srv = await asyncio.start_server(self._serve, self.host, self.port, backlog=_BACKLOG)
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            srv.close()

    async def _serve(self, reader, writer):
        try:
            if self.clients >= self.max_clients:
                self.refused += 1
                await self._send(writer, error_reply("too many clients", self._clock_us()))
                return
            self.clients += 1
            try:
                await self._session(reader, writer)
            finally:
                self.clients -= 1
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading: nothing to tell it
        except Exception as e:
            print("sim socket: client dropped after %r" % e)
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass

    async def _session(self, reader, writer):
        buf = b""
        skipping = False  # inside an over-long line: drop bytes up to its newline
        while True:
            nl = buf.find(b"\n")
            if nl >= 0:
                line = buf[:nl]
                buf = buf[nl + 1 :]
                if skipping:
                    skipping = False  # its error reply went out already
                    continue
                if nl > MAX_LINE:
                    await self._send(writer, self._too_long())
                    continue
                line = line.strip()
                if line:
                    await self._send(writer, self._controller.handle_line(line))
                continue
            if len(buf) > MAX_LINE:
                if not skipping:
                    await self._send(writer, self._too_long())
                    skipping = True
                buf = b""
            partial = skipping or len(buf) > 0
            timeout = self.line_timeout_ms if partial else self.idle_timeout_ms
            try:
                chunk = await asyncio.wait_for_ms(reader.read(_CHUNK), timeout)
            except asyncio.TimeoutError:
                why = "timeout: line not finished within %d ms" if partial else "timeout: idle for %d ms"
                await self._send(writer, error_reply(why % timeout, self._clock_us()))
                return
            if not chunk:
                return  # EOF
            buf += chunk

    def _too_long(self):
        return error_reply("line longer than %d bytes" % MAX_LINE, self._clock_us())

    async def _send(self, writer, reply):
        # Piecewise through the fixed buffer: no block the size of the reply is needed
        # (writer.write sends at once or copies what the socket does not take yet).
        out = self._out
        out.reset(writer.write)
        json.dump(reply, out)
        out.write(b"\n")
        out.flush()
        await asyncio.wait_for_ms(writer.drain(), _WRITE_TIMEOUT_MS)
