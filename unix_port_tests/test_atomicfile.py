# atomicfile: atomic replace, the fallback chain over every broken state, JSON formats.
# On unix os.rename is atomic, so the states a power cut leaves on FAT are seeded by hand.
import os
import json
from check import eq, true, raises, tmpdir
import atomicfile
from atomicfile import write_atomic, read_latest, save_json, load_json, encode_json
from crc import crc32, crc32_nibble

_ENOENT = 2


def _tmpdir():
    return tmpdir("atomic")


def _rmtree(d):
    for n in os.listdir(d):
        os.remove(d + "/" + n)
    os.rmdir(d)


def _put(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _get(path):
    with open(path, "rb") as f:
        return f.read()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class _Case:
    """A fresh directory with `settings.json` in it, and the on_error messages heard."""

    def __init__(self):
        self.dir = _tmpdir()
        self.path = self.dir + "/settings.json"
        self.msgs = []

    def load(self, default=None):
        return load_json(self.path, default, self.msgs.append)

    def done(self):
        _rmtree(self.dir)


def _new_old(c):
    # The normal state after two saves: main = new, .bak = old.
    save_json(c.path, {"v": "old"})
    save_json(c.path, {"v": "new"})


def test_crc32_known_value_and_fallback_agree():
    eq(crc32(b"123456789"), 0xCBF43926, "crc32 check value")
    eq(crc32_nibble(b"123456789"), 0xCBF43926, "nibble crc32 check value")
    data = bytes(range(256)) * 3
    eq(crc32_nibble(data), crc32(data), "nibble vs binascii")
    eq(crc32(b"lo", crc32(b"hel")), crc32(b"hello"), "chained")
    eq(crc32_nibble(b"lo", crc32_nibble(b"hel")), crc32(b"hello"), "nibble chained")


def test_write_atomic_keeps_previous_as_bak():
    c = _Case()
    try:
        write_atomic(c.path, b"one")
        eq(_get(c.path), b"one")
        true(not _exists(c.path + ".bak"), "no .bak after the first write")
        write_atomic(c.path, "two")  # str is accepted too
        eq(_get(c.path), b"two")
        eq(_get(c.path + ".bak"), b"one")
        true(not _exists(c.path + ".tmp"), "no .tmp left")
        write_atomic(c.path, b"three")
        eq(_get(c.path + ".bak"), b"two")
    finally:
        c.done()


def test_roundtrip_json():
    c = _Case()
    try:
        obj = {"max_current_a": 16, "ocpp_url": "ws://h:9000/CP1", "lb_enabled": False}
        save_json(c.path, obj)
        eq(c.load(), obj)
        true(_get(c.path).startswith(b"#crc32 "), "crc header written")
        eq(c.msgs, [], "no messages on a clean load")
    finally:
        c.done()


def test_plain_human_json_loads():
    c = _Case()
    try:
        # What an installer writes by hand: a few keys, CRLF, trailing newline, BOM.
        _put(c.path, b'\xef\xbb\xbf{\r\n  "max_current_a": 10,\r\n  "language": "de"\r\n}\r\n')
        eq(c.load(), {"max_current_a": 10, "language": "de"})
        eq(c.msgs, [])
        # Saving over it keeps the human file as .bak and writes the CRC form.
        save_json(c.path, {"max_current_a": 12})
        eq(c.load(), {"max_current_a": 12})
        eq(_get(c.path + ".bak")[:3], b"\xef\xbb\xbf")
    finally:
        c.done()


def test_all_missing_gives_default_silently():
    c = _Case()
    try:
        eq(c.load(lambda: {"d": 1}), {"d": 1})
        eq(c.msgs, [], "first boot is not an error")
        e = raises(OSError, load_json, c.path)
        eq(e.errno, _ENOENT, "no default: ENOENT")
        e = raises(OSError, read_latest, c.path, atomicfile.decode_json)
        eq(e.errno, _ENOENT)
    finally:
        c.done()


def test_missing_main_uses_bak():
    # FAT cut between "rename main -> .bak" and "rename .tmp -> main": .tmp may be anything.
    for tmp in (None, b"", b"#crc32 0000", encode_json({"v": "newer"})):
        c = _Case()
        try:
            _new_old(c)
            os.rename(c.path, c.path + ".bak")  # replaces the old .bak, like step 3
            if tmp is not None:
                _put(c.path + ".tmp", tmp)
            eq(c.load(), {"v": "new"}, "from .bak")
            true(any("using %s.bak" % c.path in m for m in c.msgs), "fallback reported")
        finally:
            c.done()


def test_only_tmp_left_is_used_when_valid():
    # Cut after step 2 of a write whose main was already bad: only .tmp is whole.
    c = _Case()
    try:
        _put(c.path + ".tmp", encode_json({"v": "tmp"}))
        eq(c.load(), {"v": "tmp"})
        true(any("using %s.tmp" % c.path in m for m in c.msgs), "fallback reported")
    finally:
        c.done()


def test_orphan_tmp_ignored_when_main_good():
    # Cut during step 1: a torn .tmp beside a good main.
    c = _Case()
    try:
        _new_old(c)
        full = encode_json({"v": "newest", "pad": "x" * 40})
        _put(c.path + ".tmp", full[: len(full) // 2])
        eq(c.load(), {"v": "new"})
        eq(c.msgs, [], "an orphan .tmp is no error")
        save_json(c.path, {"v": "next"})  # the next save overwrites the orphan
        eq(c.load(), {"v": "next"})
        true(not _exists(c.path + ".tmp"), "orphan gone")
    finally:
        c.done()


def test_bad_main_falls_back_to_bak():
    good = encode_json({"v": "new", "n": 1234})
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # "n": 1234 -> 1224: still JSON, only the CRC sees it
    cases = (
        ("bad crc", bytes(flipped)),
        ("torn, parseable prefix", good[:-4] + b"}"),  # "n": 1
        ("garbage", b"\x00\xff\x13garbage\xfe"),
        ("empty", b""),
        ("crc line only", good[:16]),
        ("non-hex crc", b"#crc32 zzzzzzzz\n{}"),
        ("torn crc line", b"#crc32 12"),
        ("plain JSON, torn", b'{"v": "ne'),
        ("invalid UTF-8", b'{"v": "\xff\xfe"}'),
    )
    for what, data in cases:
        c = _Case()
        try:
            _new_old(c)
            _put(c.path, data)
            eq(c.load(), {"v": "old"}, what)
            true(any("corrupt" in m for m in c.msgs), what + ": corruption reported")
            true(any("using %s.bak" % c.path in m for m in c.msgs), what + ": fallback reported")
        finally:
            c.done()


def test_everything_bad_gives_default_and_says_so():
    c = _Case()
    try:
        for suffix in ("", ".bak", ".tmp"):
            _put(c.path + suffix, b"#crc32 00000000\n{}")
        eq(c.load(lambda: {"d": 2}), {"d": 2})
        eq(len([m for m in c.msgs if "corrupt" in m]), 3, "three bad files")
        true("defaults" in c.msgs[-1], "default use reported")
    finally:
        c.done()


def test_oversized_file_is_not_read():
    c = _Case()
    try:
        _new_old(c)
        _put(c.path, b" " * 20000)  # over the 16 KB default cap
        eq(c.load(), {"v": "old"})
        true(any("cap" in m for m in c.msgs), "size cap reported")
    finally:
        c.done()


def test_write_after_cut_keeps_good_bak():
    # After a cut between the two renames (main missing, .bak good), the next save must
    # not throw the good .bak away.
    c = _Case()
    try:
        _new_old(c)
        os.rename(c.path, c.path + ".bak")
        save_json(c.path, {"v": "after"})
        eq(c.load(), {"v": "after"})
        eq(json.loads(_get(c.path + ".bak")[16:]), {"v": "new"})
    finally:
        c.done()


def test_read_latest_with_custom_validator():
    c = _Case()
    try:
        write_atomic(c.path, b"old!")
        write_atomic(c.path, b"new")

        def must_end_with_bang(data):
            if not data.endswith(b"!"):
                raise ValueError("no bang")

        eq(read_latest(c.path, must_end_with_bang), (b"old!", c.path + ".bak"))
    finally:
        c.done()


def test_json_copies_for_a_record_that_only_grows():
    """load_json_copies: path and a whole .tmp (newer, a cut before the renames); .bak
    only in place of a missing or bad path; every bad copy reported."""
    d = _tmpdir()
    p = d + "/l.json"
    errs = []
    eq(atomicfile.load_json_copies(p, errs.append), [], "no file")
    eq(errs, [], "silently")
    save_json(p, {"v": 1})
    save_json(p, {"v": 2})  # .bak holds v 1
    eq(atomicfile.load_json_copies(p, errs.append), [{"v": 2}], "not the older .bak")
    _put(p + ".tmp", encode_json({"v": 3}))
    eq(atomicfile.load_json_copies(p, errs.append), [{"v": 2}, {"v": 3}], "and the .tmp")
    eq(errs, [], "nothing wrong")
    _put(p + ".tmp", encode_json({"v": 3})[:-2])
    eq(atomicfile.load_json_copies(p, errs.append), [{"v": 2}], "a torn .tmp")
    eq(len(errs), 1, "is reported")
    os.remove(p + ".tmp")
    os.rename(p, p + ".tmp")  # a cut after step 3: .bak old, .tmp new
    del errs[:]
    eq(atomicfile.load_json_copies(p, errs.append), [{"v": 1}, {"v": 2}], ".bak and .tmp")
    eq(len(errs), 1, "the missing path is reported")
    _put(p, b"{bad")
    del errs[:]
    eq(atomicfile.load_json_copies(p, errs.append), [{"v": 1}, {"v": 2}], "bad path")
    eq(len(errs), 1, "reported")
    _put(p, encode_json([1]))
    del errs[:]
    eq(atomicfile.load_json_copies(p, errs.append, want=dict), [{"v": 1}, {"v": 2}], "a list")
    eq(len(errs), 1, "is the wrong type")
    _rmtree(d)


def test_stored_sees_any_copy():
    d = _tmpdir()
    p = d + "/k.json"
    eq(atomicfile.stored(p), False, "nothing")
    for suffix in ("", ".tmp", ".bak"):
        with open(p + suffix, "w") as f:
            f.write("x")
        eq(atomicfile.stored(p), True, "the copy %r alone" % suffix)
        os.remove(p + suffix)
