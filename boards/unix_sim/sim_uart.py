# Simulated RS-485 UART: a serial device (a pty from socat) in raw mode at 9600 8N1.
#
# Reads never block: bytes are moved one at a time, only while poll() says one is
# waiting, into a fixed receive ring. (The unix port cannot set O_NONBLOCK on a file,
# and its readinto() loops until the buffer is full.)
import select
from micropython import const

_RX_SIZE = const(512)  # receive ring; a Modbus RTU frame is at most 256 bytes
_BAUD = const(9600)


def _configure_tty(fd):
    import termios

    termios.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[4] = termios.B9600  # ispeed
    attrs[5] = termios.B9600  # ospeed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SimUart:
    def __init__(self, path):
        self.path = path
        self.baudrate = _BAUD
        self._f = open(path, "r+b")
        try:
            _configure_tty(self._f.fileno())
        except OSError:
            # Not a terminal (a FIFO in the tests): bytes pass through unchanged.
            self.tty = False
        else:
            self.tty = True
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)
        self._ring = bytearray(_RX_SIZE)
        self._one = bytearray(1)
        self._head = 0  # next byte to hand out
        self._count = 0
        self.overruns = 0  # bytes lost because nobody read the ring in time

    def _drain_device(self):
        ring = self._ring
        one = self._one
        for _ in range(_RX_SIZE):  # bounded: a chattering peer cannot hold us here
            ready = self._poll.poll(0)
            if not ready or not ready[0][1] & select.POLLIN:
                return  # nothing waiting (or the other end hung up)
            if self._f.readinto(one) != 1:
                return
            if self._count == _RX_SIZE:
                self._head = (self._head + 1) % _RX_SIZE  # drop the oldest
                self._count -= 1
                self.overruns += 1
            ring[(self._head + self._count) % _RX_SIZE] = one[0]
            self._count += 1

    def any(self):
        self._drain_device()
        return self._count

    def readinto(self, buf, nbytes=None):
        """Copies waiting bytes into buf; returns the count (0 when none). Never blocks."""
        self._drain_device()
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, self._count)
        ring = self._ring
        h = self._head
        for i in range(n):
            buf[i] = ring[h]
            h += 1
            if h == _RX_SIZE:
                h = 0
        self._head = h
        self._count -= n
        return n

    def read(self, nbytes=None):
        self._drain_device()
        n = self._count if nbytes is None else min(nbytes, self._count)
        if n == 0:
            return None
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def write(self, buf):
        return self._f.write(buf)  # FileIO is unbuffered (and fsync fails on a tty)

    def close(self):
        self._f.close()
