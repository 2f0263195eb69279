# Meter register maps: batching into reads, and decoding known register images of each
# supported meter (float32 / int32 / uint32 / int16 / uint16 / int64, both word orders).
import struct

from check import eq, true, raises
from evse import meters


def words_of(fmt, value, low_first=False):
    b = struct.pack(fmt, value)
    w = [(b[i] << 8) | b[i + 1] for i in range(0, len(b), 2)]
    if low_first:
        w.reverse()
    return w


class Image:
    """A meter's registers: reg -> 16-bit word (unset registers read 0)."""

    def __init__(self):
        self.regs = {}

    def put(self, reg, words):
        for i, w in enumerate(words):
            self.regs[reg + i] = w

    def read(self, start, count):
        out = bytearray()
        for r in range(start, start + count):
            w = self.regs.get(r, 0)
            out.append(w >> 8)
            out.append(w & 0xFF)
        return memoryview(out)


def decode_all(m, img):
    vals = [None] * meters.N_QTY
    for i, (fc, start, count, _) in enumerate(m.blocks):
        m.decode(i, img.read(start, count), vals)
    return dict(zip(meters.QUANTITIES, vals))


def near(got, want, what, tol=1e-3):
    if got is None or abs(got - want) > tol:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


# ---- Eastron ----------------------------------------------------------------------------------
def eastron_image(phases=3):
    img = Image()
    img.put(0x0000, [0x4366, 0x0000])  # 230.0 V: the STANDARDS.md vector
    if phases == 3:
        img.put(0x0002, words_of(">f", 231.5))
        img.put(0x0004, words_of(">f", 229.0))
        img.put(0x0008, words_of(">f", 5.25))
        img.put(0x000A, words_of(">f", 0.0))
        img.put(0x000E, words_of(">f", 1200.0))
        img.put(0x0010, words_of(">f", 0.0))
        img.put(0x0034, words_of(">f", 3615.0))
    img.put(0x0006, words_of(">f", 10.5))
    img.put(0x000C, words_of(">f", 2415.0))
    img.put(0x0048, words_of(">f", 1234.5))
    return img


def test_sdm630_one_read_of_74_registers():
    m = meters.builtin("SDM630")
    eq(len(m.blocks), 1, "one exchange")
    fc, start, count, _ = m.blocks[0]
    eq((fc, start, count), (4, 0, 0x4A), "FC 04 from 0x0000, 74 registers")
    true(count <= 80, "within Eastron's 80")
    v = decode_all(m, eastron_image())
    eq(v["v_l1"], 230.0, "0x43660000 = 230.0 V")
    near(v["v_l2"], 231.5, "v_l2")
    near(v["i_l1"], 10.5, "i_l1")
    near(v["i_l2"], 5.25, "i_l2")
    near(v["p_l1"], 2415.0, "p_l1")
    near(v["p_total"], 3615.0, "p_total")
    near(v["e_import"], 1234.5, "e_import")


def test_sdm72_uses_the_eastron_layout():
    m = meters.builtin("SDM72")
    eq([b[:3] for b in m.blocks], [(4, 0, 0x4A)])
    v = decode_all(m, eastron_image())
    near(v["i_l2"], 5.25, "i_l2")


def test_sdm120_single_phase():
    m = meters.builtin("SDM120")
    eq([b[:3] for b in m.blocks], [(4, 0, 0x4A)])
    eq(m.serial, "2400 8N1")
    v = decode_all(m, eastron_image(phases=1))
    eq(v["v_l1"], 230.0)
    near(v["i_l1"], 10.5, "i_l1")
    eq(v["i_l2"], None, "no second phase")
    eq(v["p_total"], None, "no total register: the manager sums the phases")


# ---- ABB ----------------------------------------------------------------------------------------
def abb_image():
    img = Image()
    img.put(0x5B00, words_of(">I", 2301))  # 230.1 V
    img.put(0x5B02, words_of(">I", 2299))
    img.put(0x5B04, [0xFFFF, 0xFFFF])  # not available
    img.put(0x5B0C, words_of(">I", 1050))  # 10.50 A
    img.put(0x5B0E, words_of(">I", 7))
    img.put(0x5B10, words_of(">I", 0))
    img.put(0x5B14, words_of(">i", -150000))  # -1500.00 W: export
    img.put(0x5B16, words_of(">i", 241500))
    img.put(0x5B18, [0x7FFF, 0xFFFF])  # signed "not available"
    img.put(0x5000, words_of(">Q", 123456))  # 1234.56 kWh
    return img


def test_abb_two_reads_and_not_available():
    m = meters.builtin("ABB_B23")
    eq([b[:3] for b in m.blocks], [(3, 0x5000, 4), (3, 0x5B00, 0x1C)])
    v = decode_all(m, abb_image())
    near(v["v_l1"], 230.1, "v_l1")
    eq(v["v_l3"], None, "all-FF u32 = not available")
    near(v["i_l1"], 10.5, "i_l1")
    near(v["i_l2"], 0.07, "i_l2")
    near(v["p_total"], -1500.0, "signed power")
    near(v["p_l1"], 2415.0, "p_l1")
    eq(v["p_l2"], None, "7FFF.. s32 = not available")
    near(v["e_import"], 1234.56, "u64 energy")


# ---- Carlo Gavazzi ---------------------------------------------------------------------------------
def test_em340_low_word_first_and_50_register_limit():
    m = meters.builtin("EM340")
    eq([b[:3] for b in m.blocks], [(4, 0x00, 0x2A), (4, 0x34, 2)], "split at 50 registers")
    img = Image()
    img.put(0x0000, words_of(">i", 2300, low_first=True))  # 230.0 V
    img.put(0x000C, words_of(">i", 16000, low_first=True))  # 16.000 A
    img.put(0x000E, words_of(">i", 70000, low_first=True))  # 70.000 A: needs both words
    img.put(0x0012, words_of(">i", -12345, low_first=True))
    img.put(0x0028, words_of(">i", 36800, low_first=True))
    img.put(0x0034, words_of(">i", 98765, low_first=True))  # 9876.5 kWh
    v = decode_all(m, img)
    near(v["v_l1"], 230.0, "v_l1")
    near(v["i_l1"], 16.0, "i_l1")
    near(v["i_l2"], 70.0, "i_l2 across the word boundary")
    near(v["p_l1"], -1234.5, "p_l1 signed")
    near(v["p_total"], 3680.0, "p_total")
    near(v["e_import"], 9876.5, "e_import")


# ---- Chint --------------------------------------------------------------------------------------------
def test_dtsu666_scaled_floats():
    m = meters.builtin("DTSU666")
    eq([b[:3] for b in m.blocks], [(3, 0x2006, 20), (3, 0x401E, 2)])
    img = Image()
    img.put(0x2000, words_of(">f", 4000.0))  # line-to-line: not read as phase voltage
    img.put(0x2006, words_of(">f", 2305.0))
    img.put(0x200C, words_of(">f", 10500.0))
    img.put(0x2012, words_of(">f", 24150.0))
    img.put(0x401E, words_of(">f", 321.25))
    v = decode_all(m, img)
    near(v["v_l1"], 230.5, "0.1 V")
    near(v["i_l1"], 10.5, "mA")
    near(v["p_total"], 2415.0, "0.1 W")
    near(v["e_import"], 321.25, "kWh")


# ---- decoding of every type ------------------------------------------------------------------------
def _one(typ, words, word_order="big", scale=1, na_ff=False):
    m = meters.MeterMap(
        "t", [("i_l1", 3, 10, typ, word_order, scale)], na_ff=na_ff
    )
    img = Image()
    img.put(10, words)
    return decode_all(m, img)["i_l1"]


def test_every_type_in_both_word_orders():
    eq(_one("u16", [0xFFFE]), 65534)
    eq(_one("i16", [0xFFFE]), -2)
    eq(_one("u32", [0x0001, 0x0002]), 0x00010002)
    eq(_one("u32", [0x0002, 0x0001], "little"), 0x00010002)
    eq(_one("i32", [0xFFFF, 0xFFFE]), -2)
    eq(_one("i32", [0xFFFE, 0xFFFF], "little"), -2)
    eq(_one("f32", [0x4366, 0x0000]), 230.0)
    eq(_one("f32", [0x0000, 0x4366], "little"), 230.0)
    eq(_one("i64", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFB]), -5)
    eq(_one("i64", [0xFFFB, 0xFFFF, 0xFFFF, 0xFFFF], "little"), -5)
    eq(_one("u64", [0, 0, 1, 0]), 65536)
    near(_one("u32", [0, 1234], scale=0.01), 12.34, "scale")
    eq(_one("f32", [0x7FC0, 0x0000]), None, "NaN is no value")
    eq(_one("u16", [0xFFFF], na_ff=True), None)
    eq(_one("u16", [0xFFFF]), 65535, "FF is a value unless the map says otherwise")


def test_blocks_respect_max_regs_and_function():
    fields = [
        ("i_l1", 4, 0, "f32", "big", 1),
        ("i_l2", 4, 8, "f32", "big", 1),
        ("i_l3", 4, 20, "f32", "big", 1),
        ("v_l1", 3, 0, "u16", "big", 1),
    ]
    m = meters.MeterMap("t", fields, max_regs=10)
    eq([b[:3] for b in m.blocks], [(3, 0, 1), (4, 0, 10), (4, 20, 2)])
    eq(m.registers, 13)


def test_bad_maps_are_refused():
    f = ("i_l1", 4, 0, "f32", "big", 1)
    raises(ValueError, meters.MeterMap, "t", [("v_l1", 4, 0, "f32", "big", 1)])  # no i_l1
    raises(ValueError, meters.MeterMap, "t", [f, ("i_l2", 4, 1, "f32", "big", 1)])  # overlap
    raises(ValueError, meters.MeterMap, "t", [("i_l1", 5, 0, "f32", "big", 1)])
    e = raises(ValueError, meters.MeterMap, "t", [("i_l1", 4, 0, "f48", "big", 1)])
    eq(str(e), "i_l1: type must be one of f32 i16 i32 i64 u16 u32 u64", "the types named")
    raises(ValueError, meters.MeterMap, "t", [("i_l1", 4, 0, "f32", "middle", 1)])
    raises(ValueError, meters.MeterMap, "t", [f, ("volts", 4, 8, "f32", "big", 1)])
    raises(ValueError, meters.MeterMap, "t", [f], max_regs=126)
    raises(ValueError, meters.MeterMap, "t", [("i_l1", 4, 0, "f32", "big", 0)])


# ---- custom map ------------------------------------------------------------------------------------------
CUSTOM = {
    "name": "Test meter",
    "function": 3,
    "word_order": "little",
    "max_regs": 40,
    "fields": {
        "v_l1": {"reg": "0x0100", "type": "u16", "scale": 0.1, "word_order": "big"},
        "i_l1": {"reg": 258, "type": "i32", "scale": 0.001},
        "p_total": {"reg": "0x0200", "type": "f32", "function": 4},
        "e_import": {"reg": 0x0300, "type": "u64", "scale": 0.01},
    },
}


def test_custom_map_from_json():
    m = meters.parse_custom(CUSTOM)
    eq(m.name, "Test meter")
    eq([b[:3] for b in m.blocks], [(3, 0x0100, 4), (3, 0x0300, 4), (4, 0x0200, 2)])
    img = Image()
    img.put(0x0100, [2301])
    img.put(0x0102, words_of(">i", 16500, low_first=True))
    img.put(0x0200, words_of(">f", 3680.0, low_first=True))
    img.put(0x0300, words_of(">Q", 123456, low_first=True))
    v = decode_all(m, img)
    near(v["v_l1"], 230.1, "v_l1")
    near(v["i_l1"], 16.5, "i_l1")
    near(v["p_total"], 3680.0, "p_total")
    near(v["e_import"], 1234.56, "e_import")


def test_custom_map_errors_name_the_field():
    import json

    bad = json.loads(json.dumps(CUSTOM))
    bad["fields"]["i_l1"]["type"] = "float"
    e = raises(ValueError, meters.parse_custom, bad)
    true("i_l1" in str(e), str(e))
    bad = json.loads(json.dumps(CUSTOM))
    bad["fields"]["v_l1"]["reg"] = "zero"
    e = raises(ValueError, meters.parse_custom, bad)
    true("v_l1" in str(e), str(e))
    raises(ValueError, meters.parse_custom, [])
    raises(ValueError, meters.parse_custom, {"fields": {}})


def test_custom_map_file_in_the_data_dir():
    import json
    import os
    import time

    d = "/tmp/evse_meter_test_%d" % (time.ticks_ms() & 0xFFFFF)
    try:
        os.mkdir(d)
    except OSError:
        pass
    path = d + "/" + meters.CUSTOM_FILE
    with open(path, "w") as f:
        f.write(json.dumps(CUSTOM))
    try:
        m = meters.make("custom", d)
        eq(m.name, "Test meter")
        with open(path, "w") as f:
            f.write("{not json")
        raises(ValueError, meters.make, "custom", d)
        os.remove(path)
        raises(OSError, meters.make, "custom", d)
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rmdir(d)


def test_every_setting_model_has_a_map():
    from evse.settings import METER_MODELS

    for model in METER_MODELS:
        if model in ("auto", "none", "custom"):  # auto: a search, not a map
            continue
        m = meters.builtin(model)
        true(m is not None, model)
        true("i_l1" in m.quantities, model)
        for fc, start, count, _ in m.blocks:
            true(count <= m.max_regs, "%s block within its max" % model)
    raises(ValueError, meters.make, "SDM999")
