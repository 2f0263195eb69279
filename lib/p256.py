# ECDSA P-256 (secp256r1) signature verification over a SHA-256 digest, in plain
# integers: the firmware checks upgrade images with it (docs/ota.md).
#
# Verification only: nothing secret is handled here, so timing does not matter. Points
# are kept in Jacobian coordinates (X, Y, Z) = affine (X/Z^2, Y/Z^3), so the 256-step
# double-and-add needs one modular inversion at the end instead of one per step.
# verify_steps() is a generator that yields every few point operations: the caller
# (averify) lets the control loop run in between, so a check never stalls the charger.
#
# Names are plain module globals, not const(): the numbers are wider than a small int.

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

KEY_LEN = 65  # 0x04 || x || y, big-endian
SIG_LEN = 64  # r || s, big-endian
STEP_OPS = 1  # point operations between two yields of verify_steps() (~10 products)


def _int(b):
    return int.from_bytes(bytes(b), "big")


def _inverse_steps(a, m):
    """Generator: a^-1 mod m (m prime, a not a multiple of m) by extended Euclid,
    yielding every 4 of its ~150 divisions."""
    a %= m
    if a == 0:
        raise ValueError("no inverse of 0")
    x0, x1, r0, r1 = 0, 1, m, a
    k = 0
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        x0, x1 = x1, x0 - q * x1
        k += 1
        if k & 3 == 0:
            yield
    return x0 % m


def _run(it):
    try:
        while True:
            next(it)
    except StopIteration as e:
        return e.value


def inverse(a, m):
    """a^-1 mod m for m prime and a not a multiple of m."""
    return _run(_inverse_steps(a, m))


def on_curve(x, y):
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def parse_key(b):
    """(x, y) of an uncompressed public key (65 bytes); ValueError when it is not a
    point of the curve. P-256 has cofactor 1: any such point is in the group."""
    b = bytes(b)
    if len(b) != KEY_LEN or b[0] != 4:
        raise ValueError("a public key is 65 bytes starting with 04")
    x, y = _int(b[1:33]), _int(b[33:65])
    if not on_curve(x, y):
        raise ValueError("not a point of the P-256 curve")
    return x, y


def _double(p1):
    x, y, z = p1
    if z == 0 or y == 0:
        return (1, 1, 0)  # the point at infinity (no point of order 2 on P-256)
    # a = -3: alpha = 3 (X - Z^2)(X + Z^2)
    delta = z * z % P
    gamma = y * y % P
    beta = x * gamma % P
    alpha = 3 * (x - delta) * (x + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y + z) * (y + z) - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return (x3, y3, z3)


def _add_affine(p1, q):
    """p1 (Jacobian) + q (affine (x, y), never the point at infinity)."""
    x1, y1, z1 = p1
    if z1 == 0:
        return (q[0], q[1], 1)
    zz = z1 * z1 % P
    u2 = q[0] * zz % P
    s2 = q[1] * z1 * zz % P
    h = (u2 - x1) % P
    r = (s2 - y1) % P
    if h == 0:
        if r == 0:
            return _double(p1)
        return (1, 1, 0)  # p1 = -q
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    y3 = (r * (v - x3) - y1 * hhh) % P
    z3 = z1 * h % P
    return (x3, y3, z3)


def _affine_steps(p1):
    x, y, z = p1
    if z == 0:
        return None
    zi = yield from _inverse_steps(z, P)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def verify_steps(key, digest, sig):
    """Generator: yields (None) every STEP_OPS point operations, returns True when sig
    (64 bytes r || s) is the signature of the 32-byte digest by key ((x, y) from
    parse_key). Never raises on a bad signature: it returns False."""
    if len(digest) != 32 or len(sig) != SIG_LEN:
        return False
    r, s = _int(sig[:32]), _int(sig[32:])
    if not (0 < r < N and 0 < s < N):
        return False
    e = _int(digest) % N
    w = yield from _inverse_steps(s, N)
    u1 = e * w % N
    u2 = r * w % N
    g = (GX, GY)
    q = (key[0], key[1])
    # Shamir's trick: one pass over the bits of u1 and u2 with G, Q and G + Q at hand.
    gq = yield from _affine_steps(_add_affine((GX, GY, 1), q))
    acc = (1, 1, 0)
    ops = 0
    for i in range(255, -1, -1):  # u1, u2 < n < 2^256; leading zero bits cost a doubling of nothing
        acc = _double(acc)
        b1 = (u1 >> i) & 1
        b2 = (u2 >> i) & 1
        if b1 and b2:
            if gq is not None:
                acc = _add_affine(acc, gq)
        elif b1:
            acc = _add_affine(acc, g)
        elif b2:
            acc = _add_affine(acc, q)
        ops += 2
        if ops >= STEP_OPS:
            ops = 0
            yield
    pt = yield from _affine_steps(acc)
    if pt is None:
        return False
    return pt[0] % N == r


def verify(key, digest, sig):
    """verify_steps() run to its end without pausing (host tools, tests)."""
    return bool(_run(verify_steps(key, digest, sig)))


async def averify(key, digest, sig, sample=None):
    """verify_steps() with a pause of the event loop after each step: the pilot and
    protection tasks run between two steps. sample(), when given, is called every 64
    steps (the caller's heap measurement)."""
    import asyncio

    it = verify_steps(key, digest, sig)
    k = 0
    try:
        while True:
            next(it)
            k += 1
            if sample is not None and k & 63 == 0:
                sample()
            await asyncio.sleep_ms(0)
    except StopIteration as e:
        return bool(e.value)
