# lib/apkey.py: the hotspot's WPA2 key from the board's secret and its serial, and the
# secret written once to the data directory and kept.
import os

import apkey
from check import eq, raises, tmpdir, true
from fakehw import HmiHw, IdleCharger as _Charger, IdleMeter as _Met

_SECRET = bytes(range(16))


def test_hmac_sha256_matches_rfc_2104():
    # Reference values from CPython's hmac module.
    eq(apkey.hmac_sha256(b"key", b"The quick brown fox jumps over the lazy dog").hex(),
       "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8", "short key")
    eq(apkey.hmac_sha256(b"x" * 100, b"msg").hex(),
       "175fdb6d265014ec97161b4e45aff9df9ac4e7a6c4a89f63d30462ba21ef4b1b", "key over a block")


def test_key_is_stable_and_typable():
    k = apkey.derive(_SECRET, "EVPLUS-00042")
    eq(k, "U92QDT4EKQ5Q", "the first 60 bits of HMAC-SHA256, 5 bits a symbol")
    eq(apkey.derive(bytearray(_SECRET), "EVPLUS-00042"), k, "same secret and serial")
    eq(len(k), 12, "length")
    eq(len(apkey.ALPHABET), 32, "5 bits a symbol: 60 bits in all")
    for ch in "01OIl":
        true(ch not in apkey.ALPHABET, "no %r in the alphabet" % ch)
    for serial in ("EVPLUS-00001", "X", "022101000266JSS070RE3CA02"):
        for ch in apkey.derive(_SECRET, serial):
            true(ch in apkey.ALPHABET, "symbol %r of %s" % (ch, serial))


def test_key_differs_across_serials_and_secrets():
    seen = set()
    for i in range(50):
        seen.add(apkey.derive(_SECRET, "EVPLUS-%05d" % i))
    eq(len(seen), 50, "50 serials, 50 keys")
    other = bytes(b ^ 1 for b in _SECRET)
    true(apkey.derive(other, "EVPLUS-00042") != apkey.derive(_SECRET, "EVPLUS-00042"),
         "another board's secret, another key for the same serial")
    raises(ValueError, apkey.derive, b"short", "EVPLUS-00042")
    raises(ValueError, apkey.derive, "not bytes" * 4, "EVPLUS-00042")


def test_secret_written_once_and_kept():
    d = tmpdir("apkey")
    s1 = apkey.load_secret(d)
    eq(len(s1), 16, "16 random bytes")
    with open(d + "/" + apkey.FILE, "rb") as f:
        eq(f.read(), s1, "on flash")
    eq(apkey.load_secret(d), s1, "read back, not made again: the printed label stays valid")
    true(apkey.FILE + ".tmp" not in os.listdir(d), "no temporary file left")
    # Another data directory (another board): another secret.
    true(apkey.load_secret(tmpdir("apkey")) != s1, "per board")


def test_bad_secret_file_is_kept_and_a_key_for_this_boot_used():
    d = tmpdir("apkey")
    path = d + "/" + apkey.FILE
    with open(path, "wb") as f:
        f.write(b"short")
    notes = []
    s = apkey.load_secret(d, notes.append)
    eq(len(s), 16, "a secret all the same: the hotspot is never open")
    true(notes and "5 bytes" in notes[0], "said why: %r" % notes)
    with open(path, "rb") as f:
        eq(f.read(), b"short", "the file is left as it was")
    true(apkey.load_secret(d, notes.append) != s, "random for each boot")


class _Leds:
    def set(self, *a):
        pass


class _Wlan:
    ap_ssid = "ACPILE_42"
    ap_key = "U92QDT4EKQ5Q"
    module_ok = True

    def __init__(self):
        self.mode = "ap"

    def ap_clients(self):
        return 0

    def isconnected(self):
        return False


class _Button:
    down = False

    def pressed(self):
        return self.down


def _Hw():  # noqa: N802 (a fake board, built like the others)
    return HmiHw(_Wlan(), _Button(), _Leds(), now_s=0)




def _hmi():
    from evse.hmi import Hmi

    hw = _Hw()
    ch = _Charger()

    def toggle():
        hw.wlan.mode = "client" if hw.wlan.mode == "ap" else "ap"
        return hw.wlan.mode

    return hw, ch, Hmi(hw, ch, _Met(), toggle)


def _run(hmi, t0, t1):
    for t in range(t0, t1, 100):
        hmi.tick(t)
    return t1


def test_display_shows_the_hotspot_at_boot_on_the_switch_and_on_a_short_press():
    from evse import faults

    hw, ch, hmi = _hmi()
    t = 10000
    true(hmi.show_hotspot(t, idle_only=True), "boot in AP mode")
    t = _run(hmi, t, t + 12000)
    true("ACPILE_42" in hw.display.shown and "U92QDT4EKQ5Q" in hw.display.shown, "both shown")
    true("230.0 V" in hw.display.shown, "between the rotation's items")
    hw.display.shown.clear()
    t = _run(hmi, t, t + 50000)  # a minute after it began: gone
    hw.display.shown.clear()
    t = _run(hmi, t, t + 12000)
    true("U92QDT4EKQ5Q" not in hw.display.shown, "not after a minute: %r" % hw.display.shown)
    # A short press in AP mode: shown again, no mode change, no beep.
    hw.button.down = True
    t = _run(hmi, t, t + 500)
    hw.button.down = False
    t = _run(hmi, t, t + 200)
    eq((hw.wlan.mode, hw.display.v, hw.buzzer.v), ("ap", "ACPILE_42", None), "short press")
    t = _run(hmi, t, t + 3000)
    eq(hw.display.v, "U92QDT4EKQ5Q", "then the key")
    # A fault takes the display: the hotspot never hides a fault code.
    ch.active = faults.MET
    t = _run(hmi, t, t + 6000)
    true(hw.display.v.startswith("ERR"), "fault first: %r" % hw.display.v)
    ch.active = 0
    # Long press: to client mode (no key shown), long press again: back to AP, shown.
    hw.button.down = True
    t = _run(hmi, t, t + 3500)
    hw.button.down = False
    t = _run(hmi, t, t + 200)
    eq(hw.wlan.mode, "client", "long press")
    hw.display.shown.clear()
    t = _run(hmi, t, t + 7000)
    true("U92QDT4EKQ5Q" not in hw.display.shown, "not in client mode")
    hw.button.down = True
    t = _run(hmi, t, t + 3500)
    hw.button.down = False
    t = _run(hmi, t, t + 200)
    eq((hw.wlan.mode, hw.display.v), ("ap", "ACPILE_42"), "into AP mode: the name at once")
    # The boot's showing steps aside for a session's figures; the button's does not.
    hmi.show_hotspot(t, idle_only=True)

    class Session:
        start_s = 0
        energy_wh = 0.0

    ch.session = Session()
    hw.display.shown.clear()
    t = _run(hmi, t, t + 7000)
    true("U92QDT4EKQ5Q" not in hw.display.shown, "boot showing: not over a session")
    true(hmi.show_hotspot(t), "a press")
    t = _run(hmi, t, t + 3100)
    eq(hw.display.v, "U92QDT4EKQ5Q", "the button's showing: also during a session")
    hw.wlan.ap_key = None
    eq(hmi.show_hotspot(t), False, "a board without a key shows nothing")
