# evse/hmi.py against the manual's tables (§7.1): the belt, the AREA2 LEDs, the display's
# welcome and rotation, with the charger's state set by hand.
import time

from check import eq, true
from fakehw import IdleMeter as _Met


class _Out:
    def __init__(self):
        self.v = None
        self.shown = []

    def show(self, text):
        self.v = text
        self.shown.append(text)

    def set(self, *a):
        self.v = a

    def beep(self, ms):
        self.v = ms


class _Leds:
    def __init__(self):
        self.v = {}

    def set(self, name, colour, pattern):
        self.v[name] = (colour, pattern)


class _Wlan:
    ap_ssid = "ACPILE_42"
    ap_key = None  # no hotspot showing: the rotation alone
    module_ok = True
    ap_max_clients = 1

    def __init__(self):
        self.mode = "ap"
        self.clients = 0
        self.up = False

    def ap_clients(self):
        return self.clients

    def isconnected(self):
        return self.up


class _Dead(_Wlan):
    """A module that stopped answering: every call to the driver fails."""

    def ap_clients(self):
        raise OSError(116)  # ETIMEDOUT

    isconnected = ap_clients

    def set_mode(self, mode):
        raise OSError(116)

    def connect(self, ssid, password=""):
        raise OSError(116)


class _Button:
    def pressed(self):
        return False


class _Rtc:
    def now(self):
        return 600


class _Hw:
    def __init__(self):
        self.display = _Out()
        self.belt = _Out()
        self.tap_light = _Out()
        self.buzzer = _Out()
        self.leds = _Leds()
        self.wlan = _Wlan()
        self.button = _Button()
        self.rtc = _Rtc()


class _Session:
    start_s = 0
    energy_wh = 1500.0


class _Charger:
    active = 0
    latched = 0
    session = None
    connected = False
    auth_pending = None
    status = "Available"

    def ocpp_status(self):
        return self.status


def _hmi():
    from evse.hmi import Hmi

    hw = _Hw()
    ch = _Charger()
    return hw, ch, Hmi(hw, ch, _Met(), lambda: "ap")


def _run(hmi, t0, t1, step=100):
    for t in range(t0, t1, step):
        hmi.tick(t)
    return t1


def test_wifi_led_per_mode_and_red_when_the_module_does_not_answer():
    from evse.wifi import WifiManager

    hw, ch, hmi = _hmi()
    w = hw.wlan
    for mode, clients, up, want in (("ap", 0, False, ("blue", "steady")),
                                    ("ap", 1, False, ("blue", "slow")),
                                    ("client", 0, False, ("green", "steady")),
                                    ("client", 0, True, ("green", "slow"))):
        w.mode, w.clients, w.up = mode, clients, up
        hmi.tick(1000)
        eq(hw.leds.v["wifi"], want, "%s %d %s" % (mode, clients, up))
    w.module_ok = False  # the board found no module (NoWlan)
    hmi.tick(1100)
    eq(hw.leds.v["wifi"], ("red", "steady"), "no module")
    hw.wlan = _Dead()
    hw.wlan.mode = "client"
    hmi.tick(1200)
    eq(hw.leds.v["wifi"], ("red", "steady"), "module not answering: no exception")
    # Nor does the WiFi task or the status fail on it (a task that dies opens the relays).
    settings = {"wifi_mode": "client", "wifi_ssid": "home", "wifi_password": "pw"}
    m = WifiManager(hw.wlan, settings)
    m.apply()
    m.tick(time.ticks_ms())
    eq((m.attempts, m.view()["module_ok"], m.view()["connected"]), (1, False, False), "view")
    hw.wlan = _Wlan()
    hmi.tick(1300)
    eq(hw.leds.v["wifi"], ("blue", "steady"), "back")
