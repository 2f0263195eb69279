# Simulated CAN bus: every controller on the host broadcasts its frames as UDP datagrams
# to 127.255.255.255:EVSE_CAN_PORT and listens on that port.
#
# Frame datagram (16 bytes): id u32 LE, dlc u8, 3 pad bytes (zero), 8 data bytes.
# Frames go out from a second socket bound to a port of our own, so the copy of our own
# broadcast that comes back is recognised by its source port and dropped (a CAN
# controller does not receive what it transmits).
#
# `up` False is a cut CAN cable (the simulator socket's `can` op): nothing is received
# (datagrams are read and thrown away) and a send fails as an unacknowledged frame does.
#
# With a clock, the controller keeps a trace of the frames it sent and handed to the
# application, stamped on the board's clock (the `can` op's `since`), as an analyzer on
# the node's own port would: a reaction to a frame is measured from when this node read
# it, on the one clock that also stamps what it did.
import array
import os
import socket
import struct
from micropython import const

DEFAULT_PORT = const(29536)
_FRAME_LEN = const(16)
_MAX_ID = const(0x7FF)  # 11-bit identifiers (docs/hal.md)
_MAX_DRAIN = const(32)  # datagrams looked at per recv(): bounded work per call
_SO_REUSEPORT = const(15)  # Linux value; the unix port's socket module lacks the name
_EAGAIN = const(11)
_ETIMEDOUT = const(110)
_TX_PORT_FIRST = const(40000)
_TX_PORT_SPAN = const(20000)
TRACE_SIZE = const(128)  # frames kept in the trace; the oldest are overwritten (~2.4 KB)


class FrameTrace:
    """A ring of (t_us, sent or received, id, data); appending allocates nothing."""

    def __init__(self, clock_us, size=TRACE_SIZE):
        self._clock_us = clock_us
        self._size = size
        self._t_us = array.array("q", bytes(8 * size))
        self._id = array.array("H", bytes(2 * size))
        self._tx = bytearray(size)
        self._dlc = bytearray(size)
        self._data = bytearray(8 * size)
        self._next = 0
        self._count = 0
        self.dropped = 0  # frames overwritten (the ring was full), read or not

    def add(self, tx, can_id, data, n):
        i = self._next
        self._t_us[i] = self._clock_us()
        self._id[i] = can_id
        self._tx[i] = tx
        self._dlc[i] = n
        for k in range(n):
            self._data[8 * i + k] = data[k]
        i += 1
        self._next = 0 if i == self._size else i
        if self._count < self._size:
            self._count += 1
        else:
            self.dropped += 1

    def oldest_us(self):
        """t_us of the oldest frame kept, or None when empty: a reader asking from an
        earlier time while frames were dropped has lost some."""
        if not self._count:
            return None
        return self._t_us[(self._next - self._count) % self._size]

    def since(self, since_us):
        """Frames with t_us >= since_us, oldest first, as JSON-ready dicts."""
        out = []
        n = self._count
        i = (self._next - n) % self._size
        for _ in range(n):
            if self._t_us[i] >= since_us:
                n_data = self._dlc[i]
                out.append({
                    "t_us": self._t_us[i],
                    "dir": "tx" if self._tx[i] else "rx",
                    "id": self._id[i],
                    "data": bytes(self._data[8 * i : 8 * i + n_data]).hex(),
                })
            i = (i + 1) % self._size
        return out


def _addr(host, port):
    return socket.getaddrinfo(host, port)[0][-1]


def _port_of(sockaddr):
    return (sockaddr[2] << 8) | sockaddr[3]  # sockaddr_in: family, port (big-endian), ...


class SimCan:
    def __init__(self, port=DEFAULT_PORT, clock_us=None):
        self.port = port
        self.trace = FrameTrace(clock_us) if clock_us is not None else None
        self._dest = _addr("127.255.255.255", port)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            rx.setsockopt(socket.SOL_SOCKET, _SO_REUSEPORT, 1)
        except OSError:
            pass  # not Linux: SO_REUSEADDR alone shares a broadcast port on BSDs
        rx.bind(_addr("0.0.0.0", port))
        rx.setblocking(False)
        self._rx = rx
        self._tx, self.tx_port = self._open_tx()
        self._frame = bytearray(_FRAME_LEN)
        self.sent = 0
        self.received = 0
        self.dropped = 0  # malformed datagrams
        self.up = True  # False: cut off from the bus
        self.lost = 0  # frames sent or arriving while cut off

    def _open_tx(self):
        # The unix port has no getsockname(): pick our source port ourselves.
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        seed = os.urandom(2)
        for i in range(64):
            port = _TX_PORT_FIRST + ((seed[0] << 8 | seed[1]) + i * 997) % _TX_PORT_SPAN
            try:
                tx.bind(_addr("127.0.0.1", port))
                return tx, port
            except OSError:
                continue
        tx.close()
        raise OSError("no free UDP port for the CAN transmitter")

    def send(self, can_id, data):
        if not 0 <= can_id <= _MAX_ID:
            raise ValueError("CAN id must be 11-bit")
        n = len(data)
        if n > 8:
            raise ValueError("CAN data is at most 8 bytes")
        if not self.up:
            self.lost += 1
            raise OSError(_ETIMEDOUT)  # nobody acknowledges the frame
        f = self._frame
        struct.pack_into("<IB", f, 0, can_id, n)
        for i in range(8):
            f[8 + i] = data[i] if i < n else 0
        self._tx.sendto(f, self._dest)
        self.sent += 1
        if self.trace is not None:
            self.trace.add(1, can_id, data, n)

    def recv(self):
        """Next frame from another node as (can_id, bytes), or None. Never blocks."""
        for _ in range(_MAX_DRAIN):
            try:
                dgram, src = self._rx.recvfrom(64)
            except OSError as e:
                if e.errno == _EAGAIN:
                    return None
                raise
            if _port_of(src) == self.tx_port:
                continue  # our own broadcast
            if not self.up:
                self.lost += 1
                continue  # the cable is cut: never reaches the controller
            if len(dgram) != _FRAME_LEN:
                self.dropped += 1
                continue
            can_id, dlc = struct.unpack_from("<IB", dgram, 0)
            if can_id > _MAX_ID or dlc > 8:
                self.dropped += 1
                continue
            self.received += 1
            if self.trace is not None:
                self.trace.add(0, can_id, memoryview(dgram)[8:], dlc)
            return can_id, dgram[8 : 8 + dlc]
        return None

    def close(self):
        self._rx.close()
        self._tx.close()
