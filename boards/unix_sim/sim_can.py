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


def _addr(host, port):
    return socket.getaddrinfo(host, port)[0][-1]


def _port_of(sockaddr):
    return (sockaddr[2] << 8) | sockaddr[3]  # sockaddr_in: family, port (big-endian), ...


class SimCan:
    def __init__(self, port=DEFAULT_PORT):
        self.port = port
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
            return can_id, dgram[8 : 8 + dlc]
        return None

    def close(self):
        self._rx.close()
        self._tx.close()
