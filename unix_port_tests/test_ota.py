# ota/ab_boot on the unix port: header checks, archive walking, boot-time slot choice over
# every state a power cut can leave (seeded by hand, as in test_atomicfile).
import asyncio
import os
import json
import struct
from check import eq, true, raises, tmpdir
from crc import crc32
import ab_boot
from evse import ota
from evse import otadownload
from evse import otaimage


def _tmpdir():
    return tmpdir("ota")


def _field(s):
    b = s.encode()
    return b + b"\0" * (16 - len(b))


def _header(model="EVPLUS", board="unix_sim", version="1.2.3", length=2, kind=1):
    h = b"EVPB" + struct.pack("<BBH", 1, kind, 64) + _field(model) + _field(board)
    h += _field(version) + struct.pack("<I", length)
    return h + struct.pack("<I", crc32(h))


def _archive(files):
    out = b""
    for p, data in files:
        out += struct.pack("<H", len(p)) + p.encode() + struct.pack("<I", len(data)) + data
    return out + struct.pack("<H", 0)


def test_header_ok_and_rejections():
    info = otaimage.parse_header(_header(), "EVPLUS", "unix_sim")
    eq(info["version"], "1.2.3")
    eq(info["kind"], "firmware")
    for bad in (
        _header(model="OTHER"),
        _header(board="esp32_evplus"),
        b"XXXX" + _header()[4:],
        _header()[:63] + b"\0",
        _header()[:40],
    ):
        e = raises(otaimage.OtaError, otaimage.parse_header, bad, "EVPLUS", "unix_sim")
        eq(e.code, otaimage.E_FILE)
    # a language pack for any board
    eq(otaimage.parse_header(_header(board="*", kind=2), "EVPLUS", "unix_sim")["kind"], "language")
    eq(otaimage.parse_header(_header(board="*", kind=3), "EVPLUS", "unix_sim")["kind"], "key")
    for kind in (0, 4, 255):
        e = raises(otaimage.OtaError, otaimage.parse_header, _header(board="*", kind=kind), "EVPLUS", "unix_sim")
        eq((e.code, e.msg), (otaimage.E_FILE, "unknown file kind %d" % kind), "kind %d" % kind)


def test_safe_paths():
    for p in ("evse/app.mpy", "lib/board.mpy", "lang/it.json"):
        true(otaimage.safe_path(p), p)
    for p in ("", "/etc/passwd", "../x", "evse/../x", "a//b", ".hidden", "a b", "x" * 200):
        true(not otaimage.safe_path(p), p)


def test_records_walk_and_reject():
    d = _tmpdir()
    payload = _archive([("evse/app.mpy", b"abc"), ("lib/x.mpy", b"")])
    p = d + "/f.bin"
    with open(p, "wb") as f:
        f.write(_header(length=len(payload)) + payload)
    with open(p, "rb") as f:
        eq([r for r in otaimage.records(f, len(payload))],
           [("evse/app.mpy", 3), ("lib/x.mpy", 0)])
    bad = _archive([("../evil", b"abc")])
    with open(p, "wb") as f:
        f.write(_header(length=len(bad)) + bad)
    with open(p, "rb") as f:
        raises(otaimage.OtaError, list, otaimage.records(f, len(bad)))


def _slot(d, name, version):
    sd = d + "/fw/" + name
    ota._mkdirs(sd)
    with open(sd + "/slot.json", "w") as f:
        f.write(json.dumps({"complete": True, "version": version}))


def test_ab_boot_states():
    d = _tmpdir()
    eq(ab_boot.decide(d)["active"], "factory")  # nothing yet
    _slot(d, "a", "2.0")
    ab_boot.save(d, {"active": "a", "previous": "factory", "trial": True, "tries": 0,
                     "version": "2.0"})
    st = ab_boot.decide(d)  # first boot of the new version: counted
    eq((st["active"], st["tries"]), ("a", 1))
    st = ab_boot.decide(d)  # it never said healthy: back to the factory tree
    eq((st["active"], st["rolled_back"], st["trial"]), ("factory", "2.0", False))
    # a torn boot.json: the .bak is used
    ab_boot.save(d, {"active": "a", "previous": "factory", "trial": False, "tries": 0})
    ab_boot.save(d, {"active": "a", "previous": "factory", "trial": False, "tries": 0})
    with open(d + "/boot.json", "w") as f:
        f.write('{"active": "a", "prev')
    eq(ab_boot.decide(d)["active"], "a")
    # the active slot lost its slot.json (cut while it was rewritten): previous, or factory
    os.remove(d + "/fw/a/slot.json")
    ab_boot.save(d, {"active": "a", "previous": "b", "trial": False, "tries": 0})
    eq(ab_boot.decide(d)["active"], "factory")
    _slot(d, "b", "1.5")
    ab_boot.save(d, {"active": "a", "previous": "b", "trial": False, "tries": 0})
    eq(ab_boot.decide(d)["active"], "b")


def _downloaded(d, data):
    sink = otaimage.Sink(d + "/dl.bin", None, "EVPLUS", "unix_sim", defer=True)
    sink.write(memoryview(data))
    sink.finish()
    return sink


def test_download_sink_tells_truncated_from_not_for_us():
    # OCPP UpdateFirmware: a file shorter than its header says is a failed download
    # (truncated, retried); a whole file for another model is an install failure.
    d = _tmpdir()
    payload = _archive([("evse/app.mpy", b"abc")])
    good = _header(length=len(payload)) + payload
    eq(_downloaded(d, good).verify()["version"], "1.2.3")
    e = raises(otaimage.OtaError, _downloaded(d, good[:-2]).verify)
    true(e.truncated, "a short download")
    eq(e.code, otaimage.E_FILE)
    e = raises(otaimage.OtaError, _downloaded(d, _header(model="OTHER", length=len(payload)) + payload).verify)
    true(not e.truncated, "wrong model is not a short download")
    raises(otaimage.OtaError, _downloaded(d, good + b"x").verify)
    true(isinstance(e, ValueError), "an installer's caller sees a ValueError")


class _Hw:
    name = "unix_sim"


class _App:
    """The parts of the application the OTA service is built from (evse/app.py _Upgrades)."""

    def __init__(self, d, ocpp_url="ws://127.0.0.1:9/cp"):
        self.hw = _Hw()
        self.data_dir = d
        self.settings = {"ocpp_url": ocpp_url}
        self.charger = _Charger()
        self.hmi = None


def _ota(app):
    return ota.Ota(app.hw, app.data_dir, app.settings, app.charger, app.hmi, ab=ab_boot)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _kept_file(o, url, data):
    # What update_from_url does once a download is whole and verified.
    sink = otaimage.Sink(o.staging, None, "EVPLUS", "unix_sim", defer=True)
    sink.write(memoryview(data))
    sink.finish()
    sink.verify()
    otadownload.keep(o, url, sink)


def _resume(o, url):
    r = asyncio.run(otadownload.resume(o, url))
    asyncio.new_event_loop()
    return r


def test_kept_download_outlives_a_restart_only_while_whole():
    # OCPP UpdateFirmware, Downloaded, waiting for the charge to end, power cut: the
    # verified file stays (download.bin + download.json) and the next boot installs it
    # if it is still the same file; otherwise it is downloaded again (docs/ota.md).
    d = _tmpdir()
    url = "http://127.0.0.1:8000/EVPLUS.bin"
    payload = _archive([("evse/app.mpy", b"abc" * 3000), ("evse/version.mpy", b"v")])
    data = _header(length=len(payload)) + payload
    o = _ota(_App(d))
    _kept_file(o, url, data)
    true(not _exists(o.staging), "the staging file became the kept one")
    o = _ota(_App(d))  # the restart keeps it while OCPP is configured
    eq(_resume(o, url)["version"], "1.2.3")
    eq(_resume(o, url + "?other"), None)  # another request: not this file
    with open(o.kept, "r+b") as f:  # a byte of the payload changed
        f.seek(64)
        f.write(b"X")
    eq(_resume(o, url), None)
    _kept_file(o, url, data)
    with open(o.kept, "ab") as f:  # longer than when it arrived
        f.write(b"\0")
    eq(_resume(o, url), None)
    os.remove(o.kept_meta)
    eq(_resume(o, url), None)
    _kept_file(o, url, data)
    o.drop_kept()
    true(not _exists(o.kept) and not _exists(o.kept_meta), "dropped")
    eq(_resume(o, url), None)
    # OCPP switched off: nothing will install it, so a boot drops it
    _kept_file(o, url, data)
    _ota(_App(d))
    true(_exists(o.kept), "kept while OCPP is on")
    _ota(_App(d, ocpp_url=""))
    true(not _exists(o.kept) and not _exists(o.kept_meta), "dropped when OCPP is off")


def test_default_data_dir_per_port():
    """The STM32's root holds only mount points: its data dir is under /flash."""

    def stat_flash(p):
        if p != "/flash":
            raise OSError(2)
        return (0x4000,)

    def stat_none(p):
        raise OSError(2)

    eq(ab_boot.default_data_dir("linux", stat_flash), "./data")
    eq(ab_boot.default_data_dir("pyboard", stat_flash), "/flash/data")
    eq(ab_boot.default_data_dir("esp32", stat_none), "/data")


def test_buffer_shrinks_when_the_heap_has_no_chunk_sized_block():
    # A heap fragmented after weeks of running may have 30 KB free and no 4 KB block:
    # the upgrade then streams through a smaller buffer instead of failing (docs/ota.md).
    real = bytearray

    def fragmented(n=0):
        if type(n) is int and n > 1024:
            raise MemoryError("no block of %d bytes" % n)
        return real(n)

    def full(n=0):
        raise MemoryError("heap full")

    d = _tmpdir()
    url = "http://127.0.0.1:8000/EVPLUS.bin"
    payload = _archive([("evse/app.mpy", b"abc" * 3000), ("evse/version.mpy", b"v")])
    data = _header(length=len(payload)) + payload
    otaimage.bytearray = fragmented
    try:
        eq(len(otaimage.buffer()), 1024)
        o = _ota(_App(d))
        _kept_file(o, url, data)
        eq(_resume(o, url)["version"], "1.2.3")  # read back and checked 1 KB at a time
        otaimage.bytearray = full
        raises(MemoryError, otaimage.buffer)
    finally:
        otaimage.bytearray = real


# ---- an upload that ends during a charge -----------------------------------------------------
class _Charger:
    session = None


class _UpHw(_Hw):
    def reset(self):
        pass


class _UpApp(_App):
    def __init__(self, d):
        super().__init__(d, ocpp_url="")
        self.hw = _UpHw()


class _Body:
    """POST /api/upgrade's body in 1000-byte pieces; `start` sets a charge going when the
    first piece arrives (a car plugs in and a card is shown during a slow upload)."""

    def __init__(self, data, app, start):
        self.data = data
        self.content_length = self.left = len(data)
        self.app = app
        self.start = start
        self.body_timeout_ms = 5000

    def buffer(self):  # httpd's Request: the connection's buffer, or None
        return None

    async def read_into(self, buf):
        n = min(len(buf), self.left, 1000)
        off = self.content_length - self.left
        buf[:n] = self.data[off : off + n]
        self.left -= n
        if off == 0 and self.start:
            self.app.charger.session = "a charge"
        await asyncio.sleep_ms(0)
        return n


def _firmware(nfiles=30):
    files = [("evse/app.mpy", b"A" * 100), ("evse/version.mpy", b"V" * 10)]
    files += [("lib/m%d.mpy" % i, b"x" * 50) for i in range(nfiles)]
    payload = _archive(files)
    return _header(version="99.0.0", length=len(payload)) + payload


def _upload(start_charge):
    import binascii
    import hashlib

    d = _tmpdir()
    app = _UpApp(d)
    o = _ota(app)
    data = _firmware()
    md5 = binascii.hexlify(hashlib.md5(data).digest()).decode()
    touched = []
    real = ota._rmtree

    async def spy(path):
        touched.append((path, app.charger.session))
        await real(path)

    ota._rmtree = spy
    try:
        status, res = asyncio.run(o.upload(_Body(data, app, start_charge), md5))
    finally:
        ota._rmtree = real
        asyncio.new_event_loop()
    return o, status, res, touched


def test_an_upload_that_ends_during_a_charge_does_not_install_during_it():
    # The charge check before the body is not enough: an upload takes minutes, and the
    # install (erasing a slot, writing every file) must never run while the relays may
    # be closed. 409 "charging", the staged file dropped, no slot touched.
    o, status, res, touched = _upload(True)
    eq(status, 409)
    eq(res.get("refused"), "charging")
    eq(touched, [], "the inactive slot was wiped and rewritten while a charge ran")
    true(not _exists(o.staging), "the staged file is dropped")
    eq(o.busy, None)
    true(ab_boot.load(o.data_dir).get("version") != "99.0.0", "not installed")
    # without a charge the same file installs
    o, status, res, touched = _upload(False)
    eq((status, res["code"]), (200, otaimage.OK))
    eq(len(touched), 1)
    eq(ab_boot.load(o.data_dir).get("version"), "99.0.0")


def test_install_yields_between_files():
    # Erasing a slot and walking an archive are one flash operation per file: the
    # control loop runs between them, not once at the end.
    d = _tmpdir() + "/tree"
    ota._mkdirs(d + "/sub")
    for i in range(20):
        with open(d + "/sub/f%d" % i, "w") as f:
            f.write("x")
    ticks = [0]

    async def other():
        while True:
            ticks[0] += 1
            await asyncio.sleep_ms(0)

    async def main():
        t = asyncio.create_task(other())
        await asyncio.sleep_ms(0)
        ticks[0] = 0
        await ota._rmtree(d)
        rm = ticks[0]
        data = _firmware(40)
        p = _tmpdir() + "/walk.bin"
        with open(p, "wb") as f:
            f.write(data)
        ticks[0] = 0
        with open(p, "rb") as f:
            held = await otaimage.holds(f, len(data) - 64, ("evse/app.mpy", "nothing/such"))
        t.cancel()
        return rm, ticks[0], held

    rm, walk, held = asyncio.run(main())
    asyncio.new_event_loop()
    true(rm >= 20, "the erase yielded %d times for 20 files" % rm)
    eq(held, 1, "holds() counts the wanted paths the archive has")
    true(walk >= 40, "the walk yielded %d times for 40 records" % walk)
    true(not _exists(d), "erased")


def test_a_path_twice_counts_once():
    # A tree with evse/app.mpy twice and no evse/version.mpy is not a firmware tree.
    files = [("evse/app.mpy", b"A" * 100), ("evse/app.mpy", b"B" * 10)]
    payload = _archive(files)
    p = _tmpdir() + "/twice.bin"
    with open(p, "wb") as f:
        f.write(_header(length=len(payload)) + payload)
    with open(p, "rb") as f:
        held = asyncio.run(otaimage.holds(f, len(payload), ("evse/app.mpy", "evse/version.mpy")))
    asyncio.new_event_loop()
    eq(held, 1, "one of the two wanted paths")


def test_service_built_on_use_and_dropped_when_idle():
    # The app holds the OTA service only while it is used (evse/app.py _Upgrades): idle
    # for a minute, it goes with its modules; the last result stays for the Upgrade page.
    import sys
    from evse import app as appmod

    u = appmod._Upgrades(_App(_tmpdir()))
    o = u._ota
    true(o is not None and "evse.ota" in sys.modules, "built at boot for its clean-up")
    t = u._used
    u._idle(time_add(t, appmod._OTA_IDLE_MS - 1))
    true(u._ota is o, "kept within the idle time")
    o.busy = "upload"
    u._idle(time_add(t, 10 * appmod._OTA_IDLE_MS))
    true(u._ota is o, "never dropped while busy")
    o.busy = None
    o.last = {"code": "E02 UP"}
    u._idle(time_add(u._used, appmod._OTA_IDLE_MS - 1))
    true(u._ota is o, "the idle time counts from the last use")
    u._idle(time_add(u._used, appmod._OTA_IDLE_MS))
    true(u._ota is None, "dropped")
    true("evse.ota" not in sys.modules and "p256" not in sys.modules, "modules forgotten")
    v = u.view()  # the Upgrade page polls: answered from what the service left
    true(u._ota is None and "evse.ota" not in sys.modules, "the page's poll builds nothing")
    eq((v["last"], v["busy"], v["received"]), ({"code": "E02 UP"}, None, 0), "its last result")
    eq(v["key"], o.key_view(), "its key")
    eq(v["running"], ab_boot.running(), "what this boot runs")
    with open(o.staging, "wb") as f:  # as if an upload were being written
        f.write(b"x")
    u.get()  # an upload builds it again
    true(_exists(o.staging), "a rebuilt service leaves the files alone: only a boot cleans")
    true(u._ota is not None, "built again")
    eq(u.view()["key"], v["key"], "the same view from the service")
    u = appmod._Upgrades(_App(_tmpdir()))


    async def first_look():  # the app's task, to its first sleep: no version on trial
        t = asyncio.create_task(u.run())
        await asyncio.sleep_ms(10)
        t.cancel()

    asyncio.run(first_look())
    asyncio.new_event_loop()
    true(u._ota is None and "evse.ota" not in sys.modules, "dropped once the boot is done")


def time_add(t, ms):
    import time

    return time.ticks_add(t, ms)
