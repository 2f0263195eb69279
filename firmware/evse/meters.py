# Register maps of the external meters at the grid connection, and their decoding.
#
# A map lists, for each quantity, the function code (03 holding / 04 input), the first
# register, the type, the word order and the scale to volts, amps, watts or kWh. The
# registers are grouped into as few reads as the meter allows: one block per run of
# registers that fits the meter's maximum count (registers between the wanted ones are
# read and ignored), so one cycle costs `len(map.blocks)` exchanges.
#
# Quantities: v_l1 v_l2 v_l3 (V, phase to neutral), i_l1 i_l2 i_l3 (A), p_l1 p_l2 p_l3
# and p_total (W, negative = export), e_import (kWh). Currents are required (power
# management works in amps); the others are shown when the meter has them.
#
# The custom map is a JSON file in the data directory (CUSTOM_FILE); its format is in
# docs/power-management.md.
import struct
from micropython import const

from evse.settings import METER_MAPS as MODELS  # the one list of them: the setting's

QUANTITIES = (
    "v_l1", "v_l2", "v_l3",
    "i_l1", "i_l2", "i_l3",
    "p_l1", "p_l2", "p_l3",
    "p_total", "e_import",
)
N_QTY = const(11)
V_L1 = const(0)
I_L1 = const(3)
P_L1 = const(6)
P_TOTAL = const(9)
E_IMPORT = const(10)
NOMINAL_V = 230.0  # where a reading shows no voltage


def total_w(v):
    """A reading's signed power at the grid connection (W, import > 0, export < 0):
    p_total, else the sum of the phases' powers, else None (currents only: no
    direction). A phase with a current and no power (a map without it, a value "not
    available" in this reading) makes the sum None too: without that phase's import
    it would be too low, more room than there is."""
    p = v[P_TOTAL]
    if p is None:
        for k in range(3):
            x = v[P_L1 + k]
            if x is None:
                if v[I_L1 + k] is not None:
                    return None
            else:
                p = x if p is None else p + x
    return p


def volts(v):
    """A reading's mean phase voltage, NOMINAL_V where it shows none."""
    u = [x for x in v[V_L1 : V_L1 + 3] if x is not None and x > 80]
    return sum(u) / len(u) if u else NOMINAL_V


def charge_phases(pm):
    """The phases the charge of evse.power.PowerManager `pm` draws on: those the car was
    measured on, else the charger's wiring (to turn watts of a reading into amps)."""
    if pm.settings["phase_set"] != "L123":
        return 1
    car = getattr(pm.metering, "car_mask", None)
    if car:
        return (car & 1) + (car >> 1 & 1) + (car >> 2 & 1)
    return 3 if pm.ch.phases == 3 else 1


def own_w(pm, u):
    """The charger's own power at voltage u, from the currents of the same reading
    (evse.power.PowerManager `pm`): what it draws of the grid's power."""
    a = pm.own_a
    return (a[0] + a[1] + a[2]) * u


CUSTOM_FILE = "meter_custom.json"
MAX_READ = const(125)  # Modbus: at most 125 registers per read

# (type name, registers, struct format, signed), in the order of the names: a tuple of
# constants, in flash on a board. A map's fields hold their row.
_TYPES = (
    ("f32", 2, ">f", True),
    ("i16", 1, ">h", True),
    ("i32", 2, ">i", True),
    ("i64", 4, ">q", True),
    ("u16", 1, ">H", False),
    ("u32", 2, ">I", False),
    ("u64", 4, ">Q", False),
)
WORD_ORDERS = ("big", "little")  # big: high word first (ABCD); little: low word first (CDAB)


class MeterMap:
    """Fields grouped into read blocks: `blocks` is a list of (fc, start, count, entries)."""

    def __init__(self, name, fields, max_regs=MAX_READ, na_ff=False, serial="9600 8N1"):
        """fields: iterable of (quantity, fc, register, type, word_order, scale).

        na_ff: an all-0xFF value (0x7FFF... for signed types) means "not available"
        (ABB). Raises ValueError on a bad field."""
        if not 1 <= max_regs <= MAX_READ:
            raise ValueError("max_regs must be 1 to 125")
        self.name = name
        self.max_regs = max_regs
        self.na_ff = na_ff
        self.serial = serial  # the meter's usual factory setting, for the docs and the UI
        self._b = bytearray(8)
        items = []
        seen = []
        for qty, fc, reg, typ, words, scale in fields:
            if qty not in QUANTITIES:
                raise ValueError("unknown quantity %r" % (qty,))
            if qty in seen:
                raise ValueError("quantity %s given twice" % qty)
            seen.append(qty)
            if fc != 3 and fc != 4:
                raise ValueError("%s: function must be 3 or 4" % qty)
            for t in _TYPES:
                if t[0] == typ:
                    break
            else:
                raise ValueError("%s: type must be one of %s" % (qty, " ".join(t[0] for t in _TYPES)))
            if words not in WORD_ORDERS:
                raise ValueError("%s: word_order must be big or little" % qty)
            nregs = t[1]
            if not isinstance(reg, int) or not 0 <= reg <= 0x10000 - nregs:
                raise ValueError("%s: register must be 0 to 65535" % qty)
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale == 0:
                raise ValueError("%s: scale must be a non-zero number" % qty)
            items.append((fc, reg, QUANTITIES.index(qty), t, words == "little", float(scale)))
        if "i_l1" not in seen:
            raise ValueError("the map needs at least i_l1 (current of phase 1)")
        self.quantities = seen
        self.slots = [QUANTITIES.index(q) for q in seen]  # reading slots this map fills
        self.blocks = _group(items, max_regs)
        self.registers = sum(b[2] for b in self.blocks)

    def decode(self, block, data, values):
        """Writes the quantities of block `block` from its register bytes `data` into
        `values` (a list of N_QTY; None = not available)."""
        start = self.blocks[block][1]
        for slot, off, typ, lo_first, scale in self.blocks[block][3]:
            values[slot] = self._value(data, 2 * (off - start), typ, lo_first, scale)

    def _value(self, data, pos, typ, lo_first, scale):
        _, nregs, fmt, signed = typ  # its _TYPES row
        b = self._b
        if lo_first:
            for w in range(nregs):
                src = pos + 2 * (nregs - 1 - w)
                b[2 * w] = data[src]
                b[2 * w + 1] = data[src + 1]
        else:
            for i in range(2 * nregs):
                b[i] = data[pos + i]
        if self.na_ff and _all_ff(b, 2 * nregs, signed):
            return None
        v = struct.unpack_from(fmt, b, 0)[0]
        if v - v != 0:  # NaN or infinity: the meter has no value
            return None
        return v * scale


_V_MIN = 80.0  # a phase-to-neutral mains voltage: 100-240 V nominal, with sags
_V_MAX = 300.0
_I_MAX = 2000.0  # amps: beyond any house supply


def plausible(m, vals):
    """True when a reading through map `m` looks like a meter's: the test of every
    reading of the configured meter (evse/power.py) and of the search's candidates
    (evse/meterprobe.py). Another make's registers read as tiny floats or garbage."""
    v = vals[V_L1]
    if V_L1 in m.slots and (v is None or not _V_MIN <= v <= _V_MAX):
        return False
    for q in range(I_L1, I_L1 + 3):
        i = vals[q]
        if (q == I_L1 or q in m.slots) and (i is None or not -_I_MAX <= i <= _I_MAX):
            return False
    return True


def _all_ff(b, n, signed):
    first = 0x7F if signed else 0xFF
    if b[0] != first:
        return False
    for i in range(1, n):
        if b[i] != 0xFF:
            return False
    return True


def _group(items, max_regs):
    """Contiguous read blocks: per function code, in register order, a new block when
    the next field would not fit within max_regs of the block's start."""
    items.sort(key=lambda it: (it[0], it[1]))
    blocks = []
    cur = None
    for fc, reg, slot, typ, lo_first, scale in items:
        end = reg + typ[1]
        if cur is not None and cur[0] == fc and reg < cur[1] + cur[2]:
            raise ValueError("registers of two quantities overlap at %d" % reg)
        if cur is None or cur[0] != fc or end - cur[1] > max_regs:
            cur = [fc, reg, 0, []]
            blocks.append(cur)
        cur[2] = end - cur[1]
        cur[3].append((slot, reg, typ, lo_first, scale))
    return [tuple(b) for b in blocks]


# ---- the built-in maps ---------------------------------------------------------------------
def _fields(fc, words, typ, regs, scales=None):
    """(quantity, fc, reg, type, words, scale) for pairs (quantity, register) or
    (quantity, (register, type)); scales by the quantity's first letter (v, i, p, e)."""
    out = []
    for qty, reg in regs:
        if isinstance(reg, tuple):
            reg, t = reg
        else:
            t = typ
        scale = (scales or {}).get(qty[0], 1)
        out.append((qty, fc, reg, t, words, scale))
    return out


def builtin(model):
    """The MeterMap of a supported meter, or None for an unknown name."""
    if model in ("SDM630", "SDM72"):
        # Eastron SDM630 Modbus protocol (input registers, IEEE 754 float, high word
        # first), STANDARDS.md §5. SDM72D-M V2 uses the same registers (Eastron SDM72DM-V2
        # protocol sheet, as read by volkszaehler/mbmd meters/rs485/sdm72v2.go); the older
        # SDM72D-M has no per-phase voltage or current and cannot be used.
        # Eastron answers at most 40 values (80 registers) per request.
        regs = (
            ("v_l1", 0x0000), ("v_l2", 0x0002), ("v_l3", 0x0004),
            ("i_l1", 0x0006), ("i_l2", 0x0008), ("i_l3", 0x000A),
            ("p_l1", 0x000C), ("p_l2", 0x000E), ("p_l3", 0x0010),
            ("p_total", 0x0034), ("e_import", 0x0048),
        )
        return MeterMap(model, _fields(4, "big", "f32", regs), max_regs=80)
    if model == "SDM120":
        # Eastron SDM120-Modbus (STANDARDS.md §5): single phase, same layout as the SDM630
        # L1 registers. Ships at 2400 8N1.
        regs = (("v_l1", 0x0000), ("i_l1", 0x0006), ("p_l1", 0x000C), ("e_import", 0x0048))
        return MeterMap(model, _fields(4, "big", "f32", regs), max_regs=80, serial="2400 8N1")
    if model == "ABB_B23":
        # ABB B23/B24 (STANDARDS.md §5; ABB B-series manual as read by volkszaehler/mbmd
        # meters/rs485/abb.go): holding registers, big-endian integers; voltage u32 0.1 V,
        # current u32 0.01 A, power s32 0.01 W, import energy u64 0.01 kWh. All-FF (signed:
        # 7F FF..) means "not available".
        regs = (
            ("v_l1", (0x5B00, "u32")), ("v_l2", (0x5B02, "u32")), ("v_l3", (0x5B04, "u32")),
            ("i_l1", (0x5B0C, "u32")), ("i_l2", (0x5B0E, "u32")), ("i_l3", (0x5B10, "u32")),
            ("p_total", (0x5B14, "i32")),
            ("p_l1", (0x5B16, "i32")), ("p_l2", (0x5B18, "i32")), ("p_l3", (0x5B1A, "i32")),
            ("e_import", (0x5000, "u64")),
        )
        scales = {"v": 0.1, "i": 0.01, "p": 0.01, "e": 0.01}
        return MeterMap(
            model, _fields(3, "big", "u32", regs, scales), na_ff=True, serial="19200 8E1"
        )
    if model == "EM340":
        # Carlo Gavazzi EM330/EM340/ET330/ET340 communication protocol (linked from
        # volkszaehler/mbmd meters/rs485/carlogavazzi-ex3x0.go): input registers, INT32
        # with the low word first; V 0.1 V, A 0.001 A, W 0.1 W, kWh 0.1 kWh. The EM300
        # series answers at most 50 registers per request.
        regs = (
            ("v_l1", 0x0000), ("v_l2", 0x0002), ("v_l3", 0x0004),
            ("i_l1", 0x000C), ("i_l2", 0x000E), ("i_l3", 0x0010),
            ("p_l1", 0x0012), ("p_l2", 0x0014), ("p_l3", 0x0016),
            ("p_total", 0x0028), ("e_import", 0x0034),
        )
        scales = {"v": 0.1, "i": 0.001, "p": 0.1, "e": 0.1}
        return MeterMap(model, _fields(4, "little", "i32", regs, scales), max_regs=50)
    if model == "DTSU666":
        # Chint DTSU666 user manual (register table as used by openems
        # io.openems.edge.meter.chint.dtsu666 and gerontec/dtsu666): holding registers,
        # IEEE 754 float, high word first, in tenths of volts, milliamps and tenths of
        # watts; Ua/Ub/Uc at 0x2006 (0x2000 holds the line-to-line voltages); ImpEp
        # (import energy, kWh) at 0x401E.
        regs = (
            ("v_l1", 0x2006), ("v_l2", 0x2008), ("v_l3", 0x200A),
            ("i_l1", 0x200C), ("i_l2", 0x200E), ("i_l3", 0x2010),
            ("p_total", 0x2012),
            ("p_l1", 0x2014), ("p_l2", 0x2016), ("p_l3", 0x2018),
            ("e_import", 0x401E),
        )
        scales = {"v": 0.1, "i": 0.001, "p": 0.1, "e": 1}
        return MeterMap(model, _fields(3, "big", "f32", regs, scales))
    return None


def parse_custom(obj):
    """MeterMap from the decoded JSON of a custom map; raises ValueError naming the
    problem."""
    if not isinstance(obj, dict):
        raise ValueError("the custom map must be a JSON object")
    fc = obj.get("function", 4)
    words = obj.get("word_order", "big")
    max_regs = obj.get("max_regs", MAX_READ)
    na_ff = obj.get("not_available_ff", False)
    if not isinstance(max_regs, int) or isinstance(max_regs, bool):
        raise ValueError("max_regs must be a whole number")
    if not isinstance(na_ff, bool):
        raise ValueError("not_available_ff must be true or false")
    fields = obj.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise ValueError("fields must be an object of quantity: {reg, type, ...}")
    out = []
    for qty, f in fields.items():
        if not isinstance(f, dict):
            raise ValueError("%s must be an object" % qty)
        reg = f.get("reg")
        if isinstance(reg, str):
            try:
                reg = int(reg, 0)
            except ValueError:
                raise ValueError("%s: reg %r is not a number" % (qty, reg))
        out.append(
            (
                qty,
                f.get("function", fc),
                reg,
                f.get("type", "f32"),
                f.get("word_order", words),
                f.get("scale", 1),
            )
        )
    name = obj.get("name", "custom")
    if not isinstance(name, str) or len(name) > 32:
        raise ValueError("name must be text of at most 32 characters")
    return MeterMap(name, out, max_regs=max_regs, na_ff=na_ff, serial=obj.get("serial", "?"))


def load_custom(path):
    """The custom map in the file at `path`; raises ValueError (bad content) or OSError."""
    import json

    with open(path) as f:
        text = f.read(8192)
    try:
        obj = json.loads(text)
    except ValueError:
        raise ValueError("%s is not valid JSON" % path)
    return parse_custom(obj)


def make(model, data_dir="."):
    """The map for the `meter_model` setting (custom: read from the data dir)."""
    if model == "custom":
        return load_custom(data_dir + "/" + CUSTOM_FILE)
    m = builtin(model)
    if m is None:
        raise ValueError("unknown meter model %r" % (model,))
    return m
