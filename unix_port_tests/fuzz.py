# A small seeded fuzzer for unix-port tests: a deterministic PRNG, byte mutators and a
# JSON-value mutator. Every target draws from its own generator, seeded from the run's
# seed and the target's name, so case i of a target is the same whatever FUZZ_N says
# and whatever ran before it.
#
#   FUZZ_SEED=0x1234 FUZZ_N=5000 micropython unix_port_tests/runner.py test_fuzz_http
#
# FUZZ_SEED (decimal or 0x hex; default DEFAULT_SEED) picks the run, FUZZ_N (when set)
# replaces every target's default case count. A failing case names itself with the line
# that replays it. Plain Python as well: the host-side fuzz tests (tests/) import it.
import io
import os
import sys

DEFAULT_SEED = 0x5EED2026
_M32 = 0xFFFFFFFF

# Integers at the edges of the usual field widths, signed and unsigned.
BOUNDARY = (
    0, 1, -1, 2, 5, 6, 7, 8, 12, 16, 31, 32, 63, 64, 125, 126, 127, 128, 255, 256,
    0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000,
    -0x80000000, 1 << 63, 1 << 64, 10**30, -10**30,
)


def seed():
    s = os.getenv("FUZZ_SEED")
    if not s:
        return DEFAULT_SEED
    return int(s, 16) if s[:2] in ("0x", "0X") else int(s)


def count(default):
    n = os.getenv("FUZZ_N")
    return int(n) if n else default


def _hash(text):
    h = 0x811C9DC5  # FNV-1a: a stable per-target offset of the seed
    for ch in text.encode():
        h = ((h ^ ch) * 0x01000193) & _M32
    return h


class Rng:
    """xorshift32: tiny, fast and the same on every port."""

    def __init__(self, s):
        self.s = (s & _M32) or 0x9E3779B9

    def u32(self):
        x = self.s
        x ^= (x << 13) & _M32
        x ^= x >> 17
        x ^= (x << 5) & _M32
        self.s = x
        return x

    def below(self, n):
        return self.u32() % n if n > 0 else 0

    def chance(self, k, n):
        """True with probability k/n."""
        return self.below(n) < k

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, n):
        b = bytearray(n)
        for i in range(n):
            b[i] = self.u32() & 0xFF
        return bytes(b)

    def int_edge(self):
        return self.pick(BOUNDARY)

    def text(self, n, alphabet=None):
        if alphabet is None:
            return "".join(chr(32 + self.below(95)) for _ in range(n))
        return "".join(alphabet[self.below(len(alphabet))] for _ in range(n))


def rng_for(target):
    return Rng(seed() ^ _hash(target))


# ---- byte mutators ---------------------------------------------------------------------------
def _flip(r, b, ctx):
    if b:
        i = r.below(len(b))
        b[i] ^= 1 << r.below(8)


def _set_byte(r, b, ctx):
    if b:
        b[r.below(len(b))] = r.pick((0, 0xFF, 0x7F, 0x80, 0x0A, 0x0D, 0x00, r.u32() & 0xFF))


def _insert(r, b, ctx):
    i = r.below(len(b) + 1)
    tokens = ctx.get("tokens")
    if tokens and r.chance(1, 2):
        ins = r.pick(tokens)
    else:
        ins = r.bytes(1 + r.below(8))
    b[i:i] = ins


def _delete(r, b, ctx):
    if b:
        i = r.below(len(b))
        b[i : i + 1 + r.below(min(16, len(b) - i))] = b""


def _truncate(r, b, ctx):
    if b:
        b[r.below(len(b)) :] = b""


def _duplicate(r, b, ctx):
    if b:
        i = r.below(len(b))
        j = i + 1 + r.below(min(32, len(b) - i))
        b[j:j] = bytes(b[i:j]) * (1 + r.below(4))


def _splice(r, b, ctx):
    samples = ctx.get("samples")
    if samples:
        other = r.pick(samples)
        if other:
            i = r.below(len(b) + 1)
            j = r.below(len(other))
            b[i:] = other[j:]


def _number(r, b, ctx):
    # A run of digits becomes a boundary or huge number: lengths, counts, ids.
    for i in range(r.below(len(b) + 1), len(b)):
        if 48 <= b[i] <= 57:
            j = i
            while j < len(b) and 48 <= b[j] <= 57:
                j += 1
            b[i:j] = str(r.pick(BOUNDARY + (10**20, 99999999999))).encode()
            return
    _insert(r, b, ctx)


def _random(r, b, ctx):
    b[:] = r.bytes(r.below(2 * len(b) + 16))


MUTATORS = (_flip, _set_byte, _insert, _delete, _truncate, _duplicate, _splice, _number, _random)
_WEIGHTS = (_flip, _flip, _set_byte, _set_byte, _insert, _insert, _delete, _delete, _truncate,
            _duplicate, _splice, _splice, _number, _number, _random)


def mutate(r, data, samples=None, tokens=None, max_rounds=4, max_len=None):
    """A mutated copy (bytes) of data: 1..max_rounds stacked mutations. samples: other
    valid inputs to splice in; tokens: byte strings worth inserting (delimiters...)."""
    b = bytearray(data)
    ctx = {"samples": samples, "tokens": tokens}
    for _ in range(1 + r.below(max_rounds)):
        r.pick(_WEIGHTS)(r, b, ctx)
    if max_len is not None and len(b) > max_len:
        b[max_len:] = b""
    return bytes(b)


def as_text(data):
    """bytes -> str without failing: UTF-8 when it is, else one char per byte."""
    try:
        return str(data, "utf-8")
    except UnicodeError:
        return "".join(chr(c) for c in data)


# ---- structure-aware: JSON values -------------------------------------------------------------
def wild_value(r, depth=0):
    """Any JSON value, weighted to the troublesome ones."""
    k = r.below(12 if depth < 3 else 9)
    if k == 0:
        return None
    if k == 1:
        return r.chance(1, 2)
    if k == 2:
        return r.int_edge()
    if k == 3:
        return r.pick((0.5, -0.0, 1e300, -1e300, float("inf"), 5.9, 6.0, 32.5))
    if k == 4:
        return ""
    if k == 5:
        return r.text(r.below(24))
    if k == 6:
        return "x" * r.pick((21, 51, 256, 501, 4000))
    if k == 7:
        return r.pick(("\x00", "\ud800", "é€😀", "..", "%00", "2024-02-30T25:61:61Z", "\n"))
    if k == 8:
        return "".join(chr(r.below(0x3000)) for _ in range(r.below(8)))
    if k == 9:
        return [wild_value(r, depth + 1) for _ in range(r.below(4))]
    if k == 10:
        return {r.text(1 + r.below(8)): wild_value(r, depth + 1) for _ in range(r.below(4))}
    return [[[[]]]] if r.chance(1, 2) else {"a": {"b": {"c": {}}}}


def mutate_value(r, v, keys=(), depth=0):
    """A copy of the JSON value v with some parts replaced, removed or added. keys: field
    names worth adding (a schema's own names, put where they do not belong)."""
    if depth > 6 or r.chance(1, 6):
        return wild_value(r, depth)
    if isinstance(v, dict):
        out = dict(v)
        for _ in range(1 + r.below(2)):
            op = r.below(4)
            if op == 0 and out:
                out.pop(r.pick(list(out)))
            elif op == 1:
                name = r.pick(keys) if keys and r.chance(1, 2) else r.text(1 + r.below(10))
                out[name] = wild_value(r, depth + 1)
            elif out:
                k = r.pick(list(out))
                out[k] = mutate_value(r, out[k], keys, depth + 1)
        return out
    if isinstance(v, list):
        out = list(v)
        op = r.below(4)
        if op == 0 and out:
            out.pop(r.below(len(out)))
        elif op == 1:
            out.insert(r.below(len(out) + 1), wild_value(r, depth + 1))
        elif op == 2 and out:
            out = out * (2 + r.below(30))
        elif out:
            i = r.below(len(out))
            out[i] = mutate_value(r, out[i], keys, depth + 1)
        return out
    return wild_value(r, depth)


# ---- running a target -------------------------------------------------------------------------
def run(target, default_n, case, check):
    """Feeds `check(input)` count(default_n) inputs made by `case(rng, i)`; any exception
    fails the test with the input and how to replay it. Returns the count run."""
    n = count(default_n)
    r = rng_for(target)
    s = seed()
    print("fuzz %s: %d cases, FUZZ_SEED=0x%08x" % (target, n, s))
    for i in range(n):
        x = case(r, i)
        try:
            check(x)
        except Exception as e:
            if hasattr(sys, "print_exception"):  # MicroPython: the traceback of the case
                sys.print_exception(e)
            raise AssertionError(
                "fuzz %s case %d: %r on input %r (replay: FUZZ_SEED=0x%08x FUZZ_N=%d)"
                % (target, i, e, x if not isinstance(x, (bytes, str)) or len(x) < 400 else x[:400],
                   s, i + 1)
            )
    return n


# ---- pieces the fuzz tests share ---------------------------------------------------------------
class _PieceSock(io.IOBase):
    def __init__(self, stream):
        self.readinto = stream.take
        self.out = stream.out

    def write(self, b):
        self.out.extend(b)
        return len(b)

    def ioctl(self, req, arg):
        return 0  # select.poll: nothing waiting beyond what take() gives

    def close(self):
        pass


class PieceStream:
    """One connection as the code under test sees it: `data` in pieces of `step` bytes,
    then EOF; what it writes is kept in `out`."""

    def __init__(self, data, step):
        self.data = data
        self.pos = 0
        self.step = step
        self.out = bytearray()
        self.out_buf = b""  # as asyncio's Stream: nothing left unsent
        self.s = _PieceSock(self)  # the socket, which lib/httpd.py reads heads from

    async def readinto(self, mv):
        return self.take(mv)

    def take(self, mv):
        n = min(len(mv), len(self.data) - self.pos, self.step)
        mv[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def write(self, b):
        self.out.extend(b)

    async def drain(self):
        pass


def scratch_dir(prefix):
    """/tmp/<prefix>_<random>, created if missing (parallel runs do not share it)."""
    path = "/tmp/%s_%d" % (prefix, os.urandom(1)[0] * 256 + os.urandom(1)[0])
    try:
        os.mkdir(path)
    except OSError:
        pass
    return path


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
