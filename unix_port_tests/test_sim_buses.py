# unix_sim board: the simulated CAN bus (UDP broadcast) and the RS-485 UART.
import os
import socket
import struct
import time

import check
from sim_can import SimCan
from sim_uart import SimUart


def _port():
    b = os.urandom(2)
    return 40000 + ((b[0] << 8 | b[1]) % 20000)


def _recv(can, timeout_ms=500):
    deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        f = can.recv()
        if f is not None:
            return f
        time.sleep_ms(5)
    return None


def test_two_nodes_hear_each_other_but_not_themselves():
    port = _port()
    a = SimCan(port)
    b = SimCan(port)
    try:
        check.eq(a.recv(), None, "empty bus")
        a.send(0x123, b"\x01\x02\x03")
        check.eq(_recv(b), (0x123, b"\x01\x02\x03"), "b hears a")
        check.eq(_recv(a, 100), None, "a does not hear itself")
        b.send(0x7FF, b"")
        check.eq(_recv(a), (0x7FF, b""), "empty frame")
        b.send(0x001, bytes(range(8)))
        check.eq(_recv(a), (0x001, bytes(range(8))), "8 bytes")
    finally:
        a.close()
        b.close()


def test_trace_keeps_what_a_node_sent_and_read_on_its_clock():
    port = _port()
    now = [1000]
    a = SimCan(port, clock_us=lambda: now[0])
    b = SimCan(port)
    try:
        a.send(0x611, b"\x01\x02")
        now[0] = 2000
        b.send(0x601, bytes(range(8)))
        check.eq(a.trace.since(0), [{"t_us": 1000, "dir": "tx", "id": 0x611, "data": "0102"}],
                 "a frame on the bus is traced when the node reads it, not before")
        check.eq(_recv(a), (0x601, bytes(range(8))))
        frames = a.trace.since(1500)
        check.eq(frames, [{"t_us": 2000, "dir": "rx", "id": 0x601,
                           "data": "0001020304050607"}], "read at 2000 us")
        check.eq(b.trace, None, "no clock, no trace")
        for i in range(200):
            now[0] = 3000 + i
            a.send(0x100, bytes([i]))
        frames = a.trace.since(0)
        check.eq(len(frames), 128, "the ring keeps the last 128")
        check.eq((frames[0]["t_us"], frames[-1]["data"]), (3072, "c7"), "oldest first")
        check.eq(a.trace.dropped, 74, "overwritten frames are counted")
        check.eq(a.trace.oldest_us(), 3072, "the oldest kept")
    finally:
        a.close()
        b.close()


def test_frames_are_checked_both_ways():
    port = _port()
    a = SimCan(port)
    try:
        check.raises(ValueError, a.send, 0x800, b"")
        check.raises(ValueError, a.send, 1, bytes(9))
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        dest = socket.getaddrinfo("127.255.255.255", port)[0][-1]
        raw.sendto(b"short", dest)
        raw.sendto(struct.pack("<IB3x8s", 0x100, 9, bytes(8)), dest)  # dlc 9
        raw.sendto(struct.pack("<IB3x8s", 0x1000, 1, bytes(8)), dest)  # 29-bit id
        raw.sendto(struct.pack("<IB3x8s", 0x42, 2, b"\xaa\xbb" + bytes(6)), dest)
        check.eq(_recv(a), (0x42, b"\xaa\xbb"), "only the good frame")
        check.eq(a.dropped, 3, "three malformed")
        raw.close()
    finally:
        a.close()


def test_uart_reads_never_block_and_keep_order():
    path = "/tmp/sim_test_fifo_%d" % _port()
    os.system("rm -f %s; mkfifo %s" % (path, path))
    try:
        u = SimUart(path)
        check.eq(u.tty, False, "a FIFO is used as is")
        check.eq(u.baudrate, 9600, "baudrate")
        buf = bytearray(4)
        check.eq((u.any(), u.readinto(buf)), (0, 0), "nothing waiting")
        peer = open(path, "r+b")
        peer.write(b"\x01\x03\x00\x00\x00\x02\xc4\x0b")
        check.eq(u.any(), 8, "8 waiting")
        check.eq((u.readinto(buf), bytes(buf)), (4, b"\x01\x03\x00\x00"), "first 4")
        check.eq((u.readinto(buf, 2), bytes(buf[:2])), (2, b"\x00\x02"), "nbytes")
        check.eq(u.read(), b"\xc4\x0b", "rest")
        check.eq(u.read(), None, "empty")
        peer.close()
        u.close()
    finally:
        os.remove(path)
