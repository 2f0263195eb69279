# CAN on an MCP2515 behind SPI (lib/mcp2515.py), for a board without an on-chip CAN
# controller (the ESP32-S3 controller board): send/recv of docs/hal.md, with set-up
# retried from the board task so a CAN board fitted later works without a reset.
import time

from evplus_board import CanPort
from micropython import const

_RETRY_MS = const(1000)  # first retry of an MCP2515 that did not answer
_RETRY_MAX_MS = const(60000)


class Mcp2515Can(CanPort):
    """MCP2515 on the shared SPI bus: send/recv per docs/hal.md. None of its errors
    escape recv(): a missing chip reads as a silent bus, and counts in `errors`.

    A controller that does not answer at boot (the CAN board fitted or plugged in later,
    a loose connector) is set up again by poll(), which the board task calls: 1 s after
    the failed attempt, then 2, 4, 8 ... s, at most 60 s apart, so a bus connected later
    works without a reset and a missing chip costs one short SPI exchange a minute."""

    def __init__(self, spi, cs, xtal_mhz, bitrate, now_ms):
        from mcp2515 import Mcp2515

        self.dev = Mcp2515(spi, cs, xtal_mhz, bitrate)
        self.ok = False
        self.errors = 0
        self.inits = 0  # set-up attempts, the one at boot included
        self._wait_ms = _RETRY_MS
        self._next_ms = now_ms
        self.poll(now_ms)

    def poll(self, now_ms):
        """Sets the controller up when it is not and its retry time has come."""
        if self.ok or time.ticks_diff(now_ms, self._next_ms) < 0:
            return
        self.inits += 1
        try:
            self.dev.init()
        except OSError:
            self._next_ms = time.ticks_add(now_ms, self._wait_ms)
            self._wait_ms = min(self._wait_ms * 2, _RETRY_MAX_MS)
            return
        self.ok = True
        self._wait_ms = _RETRY_MS

    def send(self, can_id, data):
        if not self.ok:
            raise OSError(5)  # EIO: no controller
        self.dev.send(can_id, data)

    def recv(self):
        if not self.ok:
            return None
        try:
            return self.dev.recv()
        except OSError:
            self.errors += 1
            return None
