# The CAN frames of load balancing (docs/load-balancing.md, "Frames"): ids, the status
# and allocation frames' bytes, their checks, and the phase mask they carry.
from micropython import const

VERSION = const(1)
ID_ALLOC = const(0x600)  # + destination address: master -> node
ID_STATUS = const(0x610)  # + sender address: node -> all
MAX_NODES = const(8)

ST_IDLE = const(0)  # no vehicle
ST_CONNECTED = const(1)  # vehicle, no session: needs nothing
ST_WANT = const(2)  # session running: needs an allocation
ST_FAULT = const(3)

ALL = const(7)  # phase mask L1|L2|L3
# The pool's charge mode in an allocation frame (byte 5 bits 1-2), by its code.
MODES = ("normal", "solar", "solar_min")
_SHARE = const(31)  # byte 5 bits 3-7: the pool's share from surplus, in 31sts
_PHASES = ((), (0,), (1,), (0, 1), (2,), (0, 2), (1, 2), (0, 1, 2))


def phases(mask):
    """The phases (0-2: L1-L3) that phase mask `mask` loads, in order; bits above 2 are
    not phases. A table: no tuple is made per call."""
    return _PHASES[mask & 7]


def _ha(a):
    """Amps -> half-amps in a byte, rounded down (an allocation is never overstated)."""
    v = int(a * 2 + 1e-6)
    return 0 if v < 0 else (255 if v > 255 else v)


def _ha_up(a):
    """Amps -> half-amps rounded up (a reported offer or draw is never understated)."""
    v = int(a * 2 + 0.999)
    return 0 if v < 0 else (255 if v > 255 else v)


def encode_status(buf, pool, seq, epoch, state, mask, meter, min_a, max_a, draw_a, offered_a,
                  starting=False):
    buf[0] = (VERSION << 4) | (epoch & 0x0F)
    buf[1] = pool & 0xFF
    buf[2] = seq & 0xFF
    buf[3] = (state & 3) | ((mask & 7) << 2) | (0x20 if meter else 0) | (0x40 if starting else 0)
    buf[4] = _ha(min_a)
    buf[5] = _ha(max_a)
    buf[6] = _ha_up(draw_a)
    buf[7] = _ha_up(offered_a)


def encode_alloc(buf, pool, seq, epoch, master, amps, waiting, n_nodes, limit_a, mode=0,
                 share=0.0):
    """mode: the pool's charge mode, its index in MODES; share: of the pool's power, the
    part from surplus at the last reading (0-1, sent in 31sts rounded down: the low side)."""
    buf[0] = (VERSION << 4) | (epoch & 0x0F)
    buf[1] = pool & 0xFF
    buf[2] = seq & 0xFF
    buf[3] = master
    buf[4] = _ha(amps)
    sh = int(share * _SHARE + 1e-6) if share else 0
    sh = 0 if sh < 0 else (_SHARE if sh > _SHARE else sh)
    buf[5] = (1 if waiting else 0) | (mode & 3) << 1 | sh << 3
    buf[6] = n_nodes
    buf[7] = _ha(limit_a)


class Status:
    """A node's status frame (ID_STATUS + addr), as decode() gives it."""

    def __init__(self):
        self.addr = 0
        self.epoch = 0
        self.seq = 0
        self.state = ST_IDLE
        self.mask = ALL
        self.meter = False
        self.min_a = 0.0
        self.max_a = 0.0
        self.draw_a = 0.0
        self.offered_a = 0.0
        self.starting = False


class Alloc:
    """The master's allocation frame to one node (ID_ALLOC + dest), as decode() gives it."""

    def __init__(self):
        self.dest = 0
        self.epoch = 0
        self.seq = 0
        self.master = 0
        self.amps = 0.0
        self.waiting = False
        self.n_nodes = 0
        self.limit_a = 0.0
        self.mode = 0  # the pool's charge mode (index in MODES)
        self.share = 0.0  # of the pool's power, the part from surplus (solar modes)


# One object per kind, filled again by every decode: the balancer handles each frame
# before it reads the next (up to 32 a tick), so a frame costs no object of its own on
# the heap. A caller that keeps a frame past the next decode copies what it needs.
_status = Status()
_alloc = Alloc()


def decode(can_id, data, pool):
    """A frame of this pool, or None for anything else (foreign, malformed): a Status or
    an Alloc, the one object of its kind that the next decode overwrites."""
    if len(data) != 8 or data[0] >> 4 != VERSION or data[1] != pool:
        return None
    if ID_STATUS < can_id <= ID_STATUS + MAX_NODES:
        b = data[3]
        mask = (b >> 2) & 7
        if b & 0x80 or mask == 0 or data[4] < 12 or data[5] < data[4]:
            return None
        f = _status
        f.addr = can_id - ID_STATUS
        f.epoch = data[0] & 0x0F
        f.seq = data[2]
        f.state = b & 3
        f.mask = mask
        f.meter = bool(b & 0x20)
        f.min_a = data[4] / 2
        f.max_a = data[5] / 2
        f.draw_a = data[6] / 2
        f.offered_a = data[7] / 2
        f.starting = bool(b & 0x40)
        return f
    if ID_ALLOC < can_id <= ID_ALLOC + MAX_NODES:
        master = data[3]
        amps = data[4]
        flags = data[5]
        if not 1 <= master <= MAX_NODES or flags & 7 > 5 or not 1 <= data[6] <= MAX_NODES:
            return None  # mode 3 unknown
        if 0 < amps < 12:
            return None  # 0 (pause) or at least 6 A
        f = _alloc
        f.dest = can_id - ID_ALLOC
        f.epoch = data[0] & 0x0F
        f.seq = data[2]
        f.master = master
        f.amps = amps / 2
        f.waiting = bool(flags & 1)
        f.mode = flags >> 1 & 3
        f.share = (flags >> 3) / _SHARE
        f.n_nodes = data[6]
        f.limit_a = data[7] / 2
        return f
    return None


def fresh(last, epoch, seq):
    """True when (epoch, seq) follows `last` = (epoch, seq) or None: a repeated or older
    frame is stale; a new epoch is a restarted sender."""
    if last is None or last[0] != epoch:
        return True
    return 1 <= ((seq - last[1]) & 0xFF) <= 127

