"""JSON written in pieces through one small fixed buffer (lib/jsonout.py).

json.dumps builds the whole text as one string and .encode() copies it again: on a
charger that runs for months those are large short-lived blocks, and a heap that long-
lived small objects have cut into pieces cannot place them although plenty is free.
json.dump(obj, stream) writes the same bytes in small pieces; here they go through one
preallocated buffer to a sink (a socket's write). The bytes are those of json.dumps.

    out = Chunks(bytearray(512))
    out.sink = writer.write        # takes a memoryview each time the buffer fills
    json.dump(obj, out); out.flush()
    size(obj)                      # len(json.dumps(obj).encode()) without building it

A Lazy stands for a list whose items are produced while writing (records read from
flash one by one): write(obj, out, pause) walks dicts and lists two levels deep and
awaits pause() between items, so a socket can drain; size() counts a Lazy by
producing its items once.
"""
import io
import json


class Chunks(io.IOBase):
    def __init__(self, buf, sink=None):
        self.mv = memoryview(buf)
        self.n = 0  # bytes waiting in the buffer
        self.sink = sink
        self.total = 0  # bytes written since reset()
        self.dirty = False  # the sink got something since the last pause

    def reset(self, sink):
        self.sink = sink
        self.n = self.total = 0
        self.dirty = False

    def write(self, b):
        k = len(b)
        self.total += k
        mv = self.mv
        cap = len(mv)
        if self.n + k <= cap:  # the usual case: a small piece, no slicing
            mv[self.n : self.n + k] = b
            self.n += k
            return k
        src = memoryview(b)
        i = 0
        while i < k:
            if self.n == cap:
                self.flush()
            m = min(cap - self.n, k - i)
            mv[self.n : self.n + m] = src[i : i + m]
            self.n += m
            i += m
        return k

    def flush(self):
        if self.n:
            n = self.n
            self.n = 0
            self.dirty = True
            self.sink(self.mv[:n])


class _Count(io.IOBase):
    def __init__(self):
        self.total = 0
        self.lazy = False  # the last size() met a Lazy: only write() can send it

    def write(self, b):
        self.total += len(b)
        return len(b)


_count = _Count()


class Lazy:
    """A JSON list whose items come from items() each time it is walked.

    The second walk (the send) must give a subset of the first (the count): items that
    went away in between are left out and their room filled with spaces, so the length
    announced before sending stays true."""

    # A subclass defines items(counting) -> iterable of JSON values; counting is True
    # for size()'s walk, False for the send.

    def __init__(self):
        self.nbytes = None  # set by size()


def _count_into(obj, c, depth):
    if isinstance(obj, Lazy):
        c.lazy = True
        t0 = c.total
        c.write(b"[")
        sep = False
        for item in obj.items(True):
            if sep:
                c.write(b", ")
            sep = True
            json.dump(item, c)
        c.write(b"]")
        obj.nbytes = c.total - t0
    elif depth and isinstance(obj, dict):
        c.write(b"{")
        sep = False
        for k, v in obj.items():
            c.write(b", " if sep else b"")
            sep = True
            json.dump(k, c)
            c.write(b": ")
            _count_into(v, c, depth - 1)
        c.write(b"}")
    elif depth and isinstance(obj, list):
        c.write(b"[")
        sep = False
        for v in obj:
            c.write(b", " if sep else b"")
            sep = True
            _count_into(v, c, depth - 1)
        c.write(b"]")
    else:
        json.dump(obj, c)


def size(obj, depth=2):
    """Encoded length of obj as JSON (a Lazy inside counted once, see Lazy); has_lazy()
    then tells whether obj held one."""
    c = _count
    c.total = 0
    c.lazy = False
    _count_into(obj, c, depth)
    return c.total


def has_lazy():
    return _count.lazy


async def write(obj, out, pause, depth=2):
    """Writes obj into out (a Chunks); awaits pause() between items once out.dirty."""
    if isinstance(obj, Lazy):
        await _write_lazy(obj, out, pause)
    elif depth and isinstance(obj, dict):
        out.write(b"{")
        sep = False
        for k, v in obj.items():
            if sep:
                out.write(b", ")
            sep = True
            json.dump(k, out)
            out.write(b": ")
            await write(v, out, pause, depth - 1)
        out.write(b"}")
    elif depth and isinstance(obj, list):
        out.write(b"[")
        sep = False
        for v in obj:
            if sep:
                out.write(b", ")
            sep = True
            await write(v, out, pause, depth - 1)
        out.write(b"]")
    else:
        json.dump(obj, out)
        if out.dirty:
            await pause()


async def _write_lazy(obj, out, pause):
    room = obj.nbytes - 2  # between the brackets
    out.write(b"[")
    sep = False
    for item in obj.items(False):
        k = size(item, 0) + (2 if sep else 0)
        if k > room:
            continue  # not there when counted: cannot fit the announced length
        room -= k
        if sep:
            out.write(b", ")
        sep = True
        json.dump(item, out)
        if out.dirty:
            await pause()
    while room > 0:  # an item gone since the count: JSON allows the blanks
        k = min(room, 8)
        out.write(b"        "[:k])
        room -= k
    out.write(b"]")
