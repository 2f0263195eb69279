# Seeded fuzzing of what the charger reads back from flash or takes as a file: the
# settings file (evse/settings.py over lib/atomicfile.py: torn, bit-flipped, hand-edited
# or hostile copies of settings.json and its .bak), settings changes from the web app,
# and the `.bin` upgrade header and archive (evse/otaimage.py). The oracle: loading never
# raises and ends with valid settings (the newest good copy, else defaults), a refused
# change changes nothing in memory or on flash, a `.bin` is accepted or refused with
# OtaError only and its archive never names a path outside its tree, valid samples
# round-trip. See fuzz.py for FUZZ_SEED / FUZZ_N.
import struct

import atomicfile
import fuzz
import json
import log
from check import eq, true
from crc import crc32
from evse import otaimage
from evse import settings as st

log.set_level(log.ERROR + 10)  # every corrupt copy logs an error: thousands of lines

_DIR = fuzz.scratch_dir("fuzz_storage")


def _read(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None


def _put(p, data):
    if data is None:
        fuzz.remove_quietly(p)
        return
    with open(p, "wb") as f:
        f.write(data)


GOOD = dict(st.defaults(), charger_power="7kW", max_current_a=16, ocpp_url="ws://10.0.0.5:80/ocpp/CP01",
            lb_enabled=True, can_addr=3, wifi_ssid="HOME", language="it")
OLDER = dict(st.defaults(), max_current_a=10)
_TOKENS = [b"#crc32 ", b"\xef\xbb\xbf", b"{", b"}", b"[", b"]", b'"', b",", b":", b"null",
           b"\r\n", b"\x00", b"1e999"]


def _file_case(r, i):
    """(settings.json, .bak, .tmp) contents: None for a missing file."""
    good = atomicfile.encode_json(GOOD)
    older = atomicfile.encode_json(OLDER)
    if i == 0:
        return good, older, None
    k = r.below(6)
    if k == 0:  # a torn or bit-flipped copy (CRC-framed)
        main = fuzz.mutate(r, good, [older], _TOKENS)
    elif k == 1:  # hand-written plain JSON, damaged
        main = fuzz.mutate(r, b'{"max_current_a": 20, "language": "de"}', None, _TOKENS)
    elif k == 2:  # a well-framed file with hostile values (the CRC matches)
        main = atomicfile.encode_json(fuzz.mutate_value(r, GOOD, st.keys()))
    elif k == 3:  # plain JSON with hostile values
        main = json.dumps(fuzz.mutate_value(r, GOOD, st.keys())).encode()
    elif k == 4:
        main = r.bytes(r.below(64))
    else:
        main = None
    bak = r.pick((older, None, fuzz.mutate(r, older), b""))
    tmp = r.pick((None, None, good, fuzz.mutate(r, good)))
    return main, bak, tmp


def test_fuzz_settings_file():
    """Any settings.json/.bak/.tmp on flash: load() never raises, every value it keeps is
    valid, a good copy is used in the documented order (file, .bak, .tmp) and nothing on
    flash is rewritten by loading."""
    path = _DIR + "/settings.json"
    names = (path, path + ".bak", path + ".tmp")

    def check(files):
        for p, data in zip(names, files):
            _put(p, data)
        s = st.Settings(path)
        s.load()
        eq(st.validate(s._values), {}, "loaded values valid")
        eq(sorted(s._values), sorted(st.keys()), "every key")
        eq(tuple(_read(p) for p in names), tuple(None if d is None else d for d in files),
           "load changed the files")
        # The first copy that decodes to an object is the one used (its valid keys), in
        # the order file, .tmp with a CRC, .bak, .tmp without; from any but the first
        # two (an older copy) the limits are at their SAFE values, and reported.
        main, bak, tmp = files
        framed = tmp is not None and tmp[:7] == b"#crc32 "
        order = ((main, True), (tmp if framed else None, True), (bak, False),
                 (None if framed else tmp, False))
        for data, newest in order:
            try:
                obj = atomicfile.decode_json(data) if data else None
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue  # JSON, but not a settings object: corrupt too
            good = {k: v for k, v in obj.items() if not st.validate({k: v})}
            for k, v in good.items():
                if newest or st.safe(k) is None:
                    eq(s[k], v, "key %s from the first good copy" % k)
            if not newest:
                for k, v in st.SAFE:
                    eq((s[k], k in s.invalid), (v, True), "older copy: %s safe" % k)
            break

    fuzz.run("settings.file", 3000, _file_case, check)
    for p in names:
        fuzz.remove_quietly(p)


def test_fuzz_settings_changes():
    """A change from the web app or an installer (manual §9): refused with field errors
    and nothing changed (memory, flash, listeners), or applied and stored so that it
    loads back the same."""
    path = _DIR + "/live.json"
    for p in (path, path + ".bak", path + ".tmp"):
        fuzz.remove_quietly(p)
    s = st.Settings(path)
    s.load()
    heard = [0]

    def listener(changed):
        heard[0] += 1

    s.on_change(listener)

    def case(r, i):
        if i == 0:
            return {"max_current_a": 20, "language": "de"}
        if r.chance(1, 3):
            return {r.pick(st.keys()): r.pick(list(GOOD.values()))}
        return fuzz.mutate_value(r, {k: GOOD[k] for k in list(GOOD)[: 1 + r.below(6)]}, st.keys())

    def check(changes):
        before = dict(s._values)
        on_disk = _read(path)
        n = heard[0]
        errors = s.apply(changes)
        true(isinstance(errors, dict), "errors dict")
        if errors:
            eq(s._values, before, "refused change kept in memory")
            eq(_read(path), on_disk, "refused change written")
            eq(heard[0], n, "listeners told of a refused change")
            return
        eq(st.validate(s._values), {}, "applied values valid")
        again = st.Settings(path)
        again.load()
        eq(again._values, s._values, "stored settings load back")

    fuzz.run("settings.apply", 3000, case, check)
    for p in (path, path + ".bak", path + ".tmp"):
        fuzz.remove_quietly(p)


def test_fuzz_atomicfile_decode():
    """atomicfile.decode_json raises ValueError only; save/load round-trips any object."""
    good = atomicfile.encode_json({"a": [1, 2.5, None, "é"], "b": {"c": True}})

    def case(r, i):
        return good if i == 0 else fuzz.mutate(r, good, [b'{"x": 1}'], _TOKENS)

    def check(data):
        try:
            atomicfile.decode_json(data)
        except ValueError:
            pass

    fuzz.run("atomicfile.decode", 5000, case, check)
    path = _DIR + "/obj.json"
    r = fuzz.rng_for("atomicfile.rt")
    for _ in range(100):
        v = {"v": fuzz.wild_value(r)}
        try:
            ref = json.loads(json.dumps(v))
        except ValueError:
            continue  # no JSON for it (inf): callers must not store such values
        atomicfile.save_json(path, v)
        eq(json.dumps(atomicfile.load_json(path)), json.dumps(ref), "round trip")
    for p in (path, path + ".bak", path + ".tmp"):
        fuzz.remove_quietly(p)


# ---- the .bin header and archive -------------------------------------------------------------
def _field(s):
    b = s.encode() if isinstance(s, str) else s
    return b + b"\0" * (16 - len(b))


def _header(length, model="EVPLUS", board="unix_sim", version="1.2.3", kind=1, fmt=1, hlen=64):
    h = b"EVPB" + struct.pack("<BBH", fmt, kind, hlen) + _field(model) + _field(board)
    h += _field(version) + struct.pack("<I", length)
    return h + struct.pack("<I", crc32(h))


def _archive(files):
    out = b""
    for p, data in files:
        out += struct.pack("<H", len(p)) + p + struct.pack("<I", len(data)) + data
    return out + struct.pack("<H", 0)


_SAMPLE = _archive([(b"evse/app.mpy", b"\x4d\x06" + b"x" * 40), (b"lib/crc.mpy", b"C" * 9),
                    (b"main.py", b"import evse.app\n")])


def _recrc(h):
    h = bytearray(h)
    h[60:64] = struct.pack("<I", crc32(bytes(h[:60])))
    return bytes(h)


def test_fuzz_bin_header():
    """docs/ota.md `.bin` header: parse_header raises OtaError(E04) only; what it accepts
    is for this model and board; the valid sample round-trips its fields."""
    good = _header(len(_SAMPLE))

    def case(r, i):
        if i == 0:
            return good
        if r.chance(1, 4):
            return _header(r.int_edge() & 0xFFFFFFFF, r.pick(("EVPLUS", "EVPLUS2", "", "\xe9")),
                           r.pick(("unix_sim", "*", "esp32_evplus", "x" * 16)),
                           r.pick(("1.2.3", "", "9" * 16)), r.pick((0, 1, 2, 3, 255)),
                           r.pick((0, 1, 2)), r.pick((64, 0, 65, 0xFFFF)))
        h = fuzz.mutate(r, good, None, [b"\0", b"\xff", b"EVPB", b"*\0"])
        return _recrc(h) if r.chance(2, 3) and len(h) >= 64 else h

    def check(h):
        try:
            info = otaimage.parse_header(h, board="unix_sim")
        except otaimage.OtaError as e:
            eq(e.code, otaimage.E_FILE, "code")
            return
        eq(info["model"], otaimage.MODEL, "model")
        true(info["board"] in ("unix_sim", "*"), "board")
        true(info["kind"] in ("firmware", "language", "key"), "kind")
        if h == good:
            eq(info, {"kind": "firmware", "model": "EVPLUS", "board": "unix_sim", "version": "1.2.3",
                      "length": len(_SAMPLE)}, "valid sample")

    fuzz.run("ota.header", 8000, case, check)


def test_fuzz_bin_archive():
    """docs/ota.md archive records: walking a damaged archive (file length as its header
    says, as Sink.finish guarantees) raises OtaError only and yields only plain relative
    paths whose data lies inside the file."""
    import io

    def case(r, i):
        if i == 0:
            return _SAMPLE
        return fuzz.mutate(r, _SAMPLE, [_archive([(b"../../etc/passwd", b"x")])],
                           [b"\0\0", b"\xff\xff", b"/", b"..", b".x", b"\x00\x10\x00\x00"])

    def check(payload):
        f = io.BytesIO(_header(len(payload)) + payload)
        got = []
        try:
            for path, size in otaimage.records(f, len(payload)):
                true(otaimage.safe_path(path) and ".." not in path.split("/"), "path %r" % path)
                true(size <= len(payload), "size inside the file")
                got.append(path)
        except otaimage.OtaError as e:
            eq(e.code, otaimage.E_FILE, "code")
            return
        if payload == _SAMPLE:
            eq(got, ["evse/app.mpy", "lib/crc.mpy", "main.py"], "valid archive walks")

    fuzz.run("ota.archive", 6000, case, check)


def test_fuzz_bin_upload_pieces():
    """An upload in random pieces (manual §12): the Sink answers OtaError only, refuses a
    file whose length disagrees with its header, and stages exactly the bytes taken."""
    path = _DIR + "/upload.bin"
    good = _header(len(_SAMPLE)) + _SAMPLE

    def case(r, i):
        data = good if i == 0 else (_recrc(fuzz.mutate(r, good)) if r.chance(1, 2) else fuzz.mutate(r, good))
        total = len(data) if r.chance(3, 4) else r.pick((0, 63, 64, len(good), 1 << 32))
        return data, total, r.pick((1, 7, 64, 500, 4096))

    def check(c):
        data, total, step = c
        try:
            s = otaimage.Sink(path, total, otaimage.MODEL, "unix_sim")
        except otaimage.OtaError:
            return
        try:
            for k in range(0, len(data), step):
                s.write(memoryview(data)[k : k + step])
            s.finish()
        except otaimage.OtaError as e:
            true(e.code in (otaimage.E_FILE, otaimage.E_WRITE), "code %s" % e.code)
            s.close()
            return
        eq(_read(path), data, "staged bytes")
        eq(len(data), otaimage.HDR_LEN + s.info["length"], "length as the header says")
        if data == good:
            eq(s.info["version"], "1.2.3", "valid upload")

    fuzz.run("ota.upload", 3000, case, check)
    fuzz.remove_quietly(path)


# ---- regressions found by the fuzzer ------------------------------------------------------------
def test_regression_settings_json_not_an_object_falls_back_to_bak():
    """settings.json holding `null` (FUZZ_SEED=0x5eed2026, settings.file case 127) made the
    charger take the defaults although settings.json.bak held the installer's settings.
    The .bak is used, its limits at their safe values (an older copy)."""
    path = _DIR + "/reg.json"
    for main in (b"null", b"[1, 2]", b"7", atomicfile.encode_json("text")):
        _put(path, main)
        _put(path + ".bak", atomicfile.encode_json(OLDER))
        s = st.Settings(path)
        s.load()
        eq(s["language"], OLDER["language"], "value from .bak under %r" % main)
        eq((s["max_current_a"], "max_current_a" in s.invalid), (6, True), "safe limit")
    eq(atomicfile.load_json(path, dict), OLDER, "any dict-typed load")
    eq(atomicfile.load_json(path, lambda: None), "text", "no type asked: any JSON")
    for p in (path, path + ".bak"):
        fuzz.remove_quietly(p)


def test_regression_ocpp_config_not_an_object_falls_back_to_bak():
    """The same for the OCPP configuration (ocpp_config.json)."""
    from evse.ocpp.config import Config

    path = _DIR + "/cfg_reg.json"
    _put(path, b"null")
    _put(path + ".bak", atomicfile.encode_json({"HeartbeatInterval": "77"}))
    eq(Config(path)["HeartbeatInterval"], 77, "value from .bak")
    for p in (path, path + ".bak"):
        fuzz.remove_quietly(p)
