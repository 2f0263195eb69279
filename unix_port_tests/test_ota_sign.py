# Signed upgrade files (evse/ota.py, docs/ota.md): the signature trailer against hostile
# files, the installed key's rules, the kept download checked again after a restart, and
# a download's response head read in bounded lines. The signed files are made on the
# host (tools/p256_vectors.py).
import asyncio
import binascii
import os
import struct

import ab_boot
import p256_vectors as V
from check import eq, true, raises, tmpdir
from crc import crc32
import httpget
from evse import ota
from evse import otadownload
from evse import otaimage

KEY = binascii.unhexlify(V.KEY)
OTHER = binascii.unhexlify(V.OTHER)
LANG = binascii.unhexlify(V.LANG)
LANG_SIGNED = binascii.unhexlify(V.LANG_SIGNED)
LANG_FORGED = binascii.unhexlify(V.LANG_FORGED)
FW_SIGNED = binascii.unhexlify(V.FW_SIGNED)
KEY_TO_OTHER = binascii.unhexlify(V.KEY_TO_OTHER)
KEY_BY_OTHER = binascii.unhexlify(V.KEY_BY_OTHER)


class _Hw:
    name = "unix_sim"


def _run(coro):
    r = asyncio.run(coro)
    asyncio.new_event_loop()
    return r


def _sink(data, defer=True, total=None, chunk=7):
    s = otaimage.Sink(None, total, "EVPLUS", "unix_sim", defer=defer)
    mv = memoryview(data)
    for i in range(0, len(data), chunk):  # in odd pieces: the trailer spans several
        s.write(mv[i : i + chunk])
    return s


def _trailer(sig, magic=b"EVPS", alg=1, n=64, crc=None):
    t = magic + struct.pack("<BBH", alg, 0, n) + sig
    return t + struct.pack("<I", crc32(t) if crc is None else crc)


def _ota(d=None):
    return ota.Ota(_Hw(), d or tmpdir("otasign"), {"ocpp_url": "ws://127.0.0.1:9/cp"}, None,
                   None, ab=ab_boot)


def test_trailer_parsed_and_hostile_trailers_refused():
    s = _sink(LANG_SIGNED)
    eq(s.verify()["kind"], "language")  # a trailer on a language pack: it is signed too
    eq(len(s.sig), 64)
    s = _sink(LANG)
    s.verify()
    eq(s.sig, None)
    sig = LANG_SIGNED[-68:-4]
    for bad in (
        LANG + _trailer(sig, magic=b"EVPX"),  # wrong magic
        LANG + _trailer(sig, crc=0),  # damaged
        LANG + _trailer(sig, n=0xFFFF),  # huge length
        LANG + _trailer(sig, alg=2),  # unknown algorithm
        LANG_SIGNED + LANG_SIGNED[-76:],  # two trailers
        LANG_SIGNED + b"\0",
        LANG + b"x" * 76,
    ):
        e = raises(otaimage.OtaError, _sink(bad).verify)
        eq(e.code, otaimage.E_FILE)
        true(not e.truncated, e.msg)
    # a trailer cut short is a broken transfer (another try), not a forgery
    e = raises(otaimage.OtaError, _sink(LANG_SIGNED[:-5]).verify)
    true(e.truncated, "cut short")
    eq(e.code, otaimage.E_FILE)
    # an upload states its length: header + payload, or that plus one trailer
    s = _sink(LANG_SIGNED, defer=False, total=len(LANG_SIGNED))
    s.f = None
    true(s.info is not None)
    for total in (len(LANG) + 1, len(LANG_SIGNED) + 1, len(LANG_SIGNED) + 76):
        raises(otaimage.OtaError, _sink, LANG_SIGNED + b"\0" * 76, False, total)


def test_sha256_covers_header_and_payload_only():
    import hashlib

    s = _sink(LANG_SIGNED, chunk=5)
    eq(s.sha.digest(), hashlib.sha256(LANG).digest())


def test_a_verified_sink_keeps_its_results_not_its_state():
    # Once whole and checked, the hashes' state and the header/trailer copies go (heap
    # for the signature check); a second verify() (the download's own, then the
    # service's) answers the same.
    import hashlib

    s = _sink(LANG_SIGNED)
    info = s.verify()
    eq(s.digest, hashlib.sha256(LANG).digest(), "SHA-256 of header and payload")
    eq(s.md5sum(), "".join("%02x" % b for b in hashlib.md5(LANG_SIGNED).digest()), "MD5")
    eq((s.sha, s.md5, s.hdr, s.tail), (None, None, None, None), "state let go")
    true(s.verify() is info, "asked again: the same info")
    true(s.sig is not None, "the signature kept")


def test_without_a_key_signatures_cannot_be_checked():
    o = _ota()
    eq(o.key_view()["installed"], False)
    s = _sink(LANG)
    s.verify()
    eq(_run(o.authenticate(s)), "unsigned")
    s = _sink(LANG_FORGED)
    s.verify()
    eq(_run(o.authenticate(s)), "unchecked: no key installed")


def test_with_a_key_only_its_signatures_pass():
    o = _ota()
    o.install_key(KEY)
    view = o.key_view()
    eq(view["installed"], True)
    eq(view["fingerprint"], ota.fingerprint(KEY))
    for data, why in ((LANG, "not signed"), (LANG_FORGED, "signature does not match")):
        s = _sink(data)
        s.verify()
        e = raises(otaimage.OtaError, _run, o.authenticate(s))
        eq(e.code, otaimage.E_FILE)
        true(e.msg.startswith(why), e.msg)
    s = _sink(LANG_SIGNED)
    s.verify()
    eq(_run(o.authenticate(s)), "verified")


def test_key_installed_once_then_only_by_a_signed_key_file():
    o = _ota()
    raises(ValueError, o.install_key, b"\x04" + bytes(64))  # not a point
    eq(o.key_installed(), False)
    o.install_key(KEY)
    e = raises(otaimage.OtaError, o.install_key, OTHER)
    true("installed" in e.msg)
    # a key file signed by another key: refused before anything is written
    s = _sink(KEY_BY_OTHER)
    info = s.verify()
    raises(otaimage.OtaError, _run, o.authenticate(s))
    info["signature"] = "unchecked: no key installed"
    with open(o.staging, "wb") as f:
        f.write(KEY_BY_OTHER)
    raises(otaimage.OtaError, _run, o.install(info, o.staging))
    eq(o.load_key()[0], KEY)
    # signed by the installed key: hands over to the new one
    s = _sink(KEY_TO_OTHER)
    info = s.verify()
    eq(info["kind"], "key")
    info["signature"] = _run(o.authenticate(s))
    with open(o.staging, "wb") as f:
        f.write(KEY_TO_OTHER)
    _run(o.install(info, o.staging))
    eq(o.load_key()[0], OTHER)
    s = _sink(LANG_SIGNED)  # the old key's files are refused from now on
    s.verify()
    raises(otaimage.OtaError, _run, o.authenticate(s))


def test_unreadable_key_refuses_every_file():
    # a key file that cannot be read takes the safe side: nothing installs
    o = _ota()
    with open(o.key_path, "wb") as f:
        f.write(b"garbage")
    eq(o.key_installed(), True)
    true("error" in o.key_view())
    s = _sink(LANG)
    s.verify()
    e = raises(otaimage.OtaError, _run, o.authenticate(s))
    true("cannot be read" in e.msg, e.msg)
    raises(otaimage.OtaError, o.install_key, KEY)


def test_key_replacement_cut_by_a_power_cut():
    # write_atomic's renames: only .tmp (the new key, whole) or only .bak (the old) left
    o = _ota()
    with open(o.key_path + ".tmp", "wb") as f:
        f.write(OTHER)
    eq(o.load_key()[0], OTHER)
    os.remove(o.key_path + ".tmp")
    with open(o.key_path + ".bak", "wb") as f:
        f.write(KEY)
    eq(o.load_key()[0], KEY)


def test_a_replaced_signing_key_never_comes_back():
    # KEY handed over to OTHER (e.g. because KEY leaked); when ota_pub.key later cannot
    # be read (a flash error), every file is refused: the retired KEY is no stand-in
    o = _ota()
    o.install_key(KEY)
    o._write_key(OTHER)  # what _install_key does with a key file KEY signed
    eq(o.load_key()[0], OTHER)
    raises(OSError, os.stat, o.key_path + ".bak")  # not kept after the handover
    with open(o.key_path + ".bak", "wb") as f:  # as a handover cut before its removal
        f.write(KEY)
    with open(o.key_path, "wb") as f:
        f.write(b"\x04" + bytes(64))  # the current key damaged
    s = _sink(LANG_SIGNED)
    s.verify()
    e = raises(otaimage.OtaError, _run, o.authenticate(s))
    true("cannot be read" in e.msg, e.msg)
    with open(o.key_path + ".tmp", "wb") as f:  # a cut handover's new key: not used either
        f.write(KEY)
    raises(otaimage.OtaError, _run, o.authenticate(s))
    # a boot with the key file whole drops a .bak left by a cut handover
    with open(o.key_path, "wb") as f:
        f.write(OTHER)
    o = _ota(o.data_dir)
    raises(OSError, os.stat, o.key_path + ".bak")
    eq(o.load_key()[0], OTHER)


def test_key_text_pem_or_hex():
    hexkey = binascii.hexlify(KEY).decode()
    eq(otaimage.parse_key_text(hexkey), KEY)
    eq(otaimage.parse_key_text(" " + hexkey.upper() + "\n"), KEY)
    der = otaimage._SPKI_P256 + KEY
    pem = "-----BEGIN PUBLIC KEY-----\n%s-----END PUBLIC KEY-----\n" % (
        binascii.b2a_base64(der).decode())
    eq(otaimage.parse_key_text(pem), KEY)
    for bad in ("", hexkey[:-2], hexkey + "00", "zz" * 65, "04" + "00" * 64,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                "-----BEGIN PUBLIC KEY-----\n" + binascii.b2a_base64(der).decode()):
        raises(ValueError, otaimage.parse_key_text, bad)


def test_kept_download_is_checked_again_after_a_restart():
    o = _ota()
    url = "http://127.0.0.1:8000/EVPLUS.bin"
    for data in (LANG_SIGNED, LANG):
        sink = otaimage.Sink(o.staging, None, "EVPLUS", "unix_sim", defer=True)
        sink.write(memoryview(data))
        sink.finish()
        sink.verify()
        otadownload.keep(o, url, sink)
        eq(_run(otadownload.resume(o, url))["kind"], "language")
    # a key installed since: the unsigned kept file is not trusted, it is fetched again
    o.install_key(KEY)
    eq(_run(otadownload.resume(o, url)), None)
    sink = otaimage.Sink(o.staging, None, "EVPLUS", "unix_sim", defer=True)
    sink.write(memoryview(LANG_FORGED))
    sink.finish()
    sink.verify()
    otadownload.keep(o, url, sink)
    eq(_run(otadownload.resume(o, url)), None)


class _Stream:
    """A download server's answer in pieces; endless when `endless` repeats forever."""

    def __init__(self, head, endless=None):
        self.data = head
        self.endless = endless
        self.sent = 0

    async def readinto(self, mv):
        if not self.data and self.endless:
            self.data = self.endless
        n = min(len(mv), len(self.data))
        mv[:n] = self.data[:n]
        self.data = self.data[n:]
        self.sent += n
        return n


def test_response_head_lines_are_bounded():
    code, length, early = _run(httpget.read_head(_Stream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\nBODY"), 15000))
    eq((code, length, early), (200, 12, b"BODY"))
    eq(_run(httpget.read_head(_Stream(b"HTTP/1.0 404 Not found\n\n"), 15000))[0], 404)
    for stream, why in (
        (_Stream(b"HTTP/1.1 200 OK\r\nX-Long: ", endless=b"a" * 100), "over 512 bytes"),
        (_Stream(b"HTTP/1.1 200 OK\r\n", endless=b"X: y\r\n"), "over 32 lines"),
        (_Stream(b"", endless=b"z" * 64), "over 512 bytes"),
        (_Stream(b"SSH-2.0\r\n\r\n"), "not an HTTP response"),
        (_Stream(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), "Content-Length"),
        (_Stream(b"HTTP/1.1 200 OK\r\n"), "closed"),
    ):
        e = raises(OSError, _run, httpget.read_head(stream, 15000))
        true(why in str(e), str(e))
        true(stream.sent < 32 * 512 + 512, stream.sent)  # stops reading at the cap


def test_download_locations_with_control_characters_are_refused():
    o = _ota()
    for url in ("http://h/a\r\nX-Injected: 1", "http://h/a b", "http://h\n/a", "http://h/\x00",
                "http://h/\x7f", "http://h/\xe9", "ftp://h/a", "file:///etc/passwd", ""):
        raises(ValueError, httpget.check_url, url)
        e = raises(otaimage.OtaError, otadownload.check_source, o, url)
        eq(e.code, otaimage.E_TIMEOUT)
    httpget.check_url("https://example.com:8443/fw/EVPLUS.bin?x=1&y=%20")
    o.profile = lambda: 2
    e = raises(otaimage.OtaError, otadownload.check_source, o, "http://example.com/fw.bin")
    true("security profile 2" in e.msg, e.msg)
    otadownload.check_source(o, "https://example.com/fw.bin")
    o.profile = lambda: 1
    e = raises(otaimage.OtaError, otadownload.check_source, o, "http://example.com/fw.bin")
    true("without a signing key" in e.msg, e.msg)  # OCPP gives no MD5: nothing else checks
    o.install_key(KEY)
    otadownload.check_source(o, "http://example.com/fw.bin")  # the signature protects the file
    o.profile = lambda: 2
    e = raises(otaimage.OtaError, otadownload.check_source, o, "http://example.com/fw.bin")
    true("security profile 2" in e.msg, e.msg)


def test_an_older_signed_firmware_needs_an_explicit_downgrade():
    from evse import version

    o = _ota()
    run = version.VERSION
    eq(otaimage.version_key("1.0.12-rc1"), (1, 0, 12))
    eq(otaimage.version_key("dev"), None)
    true(otaimage.version_key("1.10") > otaimage.version_key("1.9"))

    def fw(v, sig="verified", kind="firmware"):
        return {"kind": kind, "version": v, "signature": sig}

    older = "0.9.9"
    true(otaimage.version_key(older) < otaimage.version_key(run))
    for info in (fw(older), fw("dev")):
        e = raises(otaimage.OtaError, o.check_floor, info)
        eq(e.code, otaimage.E_FILE)
        true("older than the running" in e.msg, e.msg)
        o.check_floor(info, True)  # the technician asked for it
    o.check_floor(fw(run))  # the same version reinstalls
    o.check_floor(fw("99.0"))
    o.check_floor(fw(older, "unsigned"))  # without a key the floor protects nothing
    o.check_floor(fw(older, kind="language"))


async def _trickle(r, w):
    """A download server's answer: a big file announced, then one byte every 20 ms,
    never a stall and never the end."""
    await r.read(512)
    w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\nEVPB")
    try:
        while True:
            await w.drain()
            await asyncio.sleep_ms(20)
            w.write(b"\0")
    except OSError:
        pass  # the charger hung up
    w.close()


def test_a_trickling_download_ends_at_its_overall_deadline():
    import time

    o = _ota()
    o.install_key(KEY)  # http:// needs a key
    o.download_ms = 400

    async def go():
        for _ in range(20):  # a free port
            port = 20000 + (os.urandom(2)[0] << 6) + (os.urandom(1)[0] & 63)
            try:
                srv = await asyncio.start_server(_trickle, "127.0.0.1", port)
                break
            except OSError:
                continue
        try:
            await asyncio.wait_for_ms(otadownload.download(o, "http://127.0.0.1:%d/fw.bin" % port), 5000)
        finally:
            srv.close()

    t0 = time.ticks_ms()
    e = raises(OSError, _run, go())
    ms = time.ticks_diff(time.ticks_ms(), t0)
    true("not complete within" in str(e), repr(e))
    true(ms < 2000, ms)
