# evse/hmi.py against the manual's tables (§7.1): the belt, the AREA2 LEDs, the display's
# welcome and rotation, with the charger's state set by hand.
import time

from check import eq, true
from fakehw import HmiHw, IdleMeter as _Met


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


def _Hw():  # noqa: N802 (a fake board, built like the others)
    return HmiHw(_Wlan(), _Button(), _Leds(), now_s=600)


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


def _hmi(settings=None):
    from evse.hmi import Hmi

    hw = _Hw()
    ch = _Charger()
    return hw, ch, Hmi(hw, ch, _Met(), lambda: "ap", settings)


def _run(hmi, t0, t1, step=100):
    for t in range(t0, t1, step):
        hmi.tick(t)
    return t1


def test_welcome_after_a_restart_then_the_rotation():
    from evse import faults
    from evse.hmi import WELCOME_TEXT

    hw, ch, hmi = _hmi({"can_addr": 1})
    t = _run(hmi, 5000, 7900)
    eq(set(hw.display.shown), {WELCOME_TEXT}, "the welcome alone for its first seconds")
    t = _run(hmi, t, 8100)
    eq(hw.display.v, "230.0 V", "then the rotation from its first item")
    hw.display.shown.clear()
    _run(hmi, t, t + 60000)
    true(WELCOME_TEXT not in hw.display.shown, "once only")
    # A fault at boot is shown at once; the welcome's time runs all the same.
    hw, ch, hmi = _hmi()
    ch.active = faults.MET
    t = _run(hmi, 5000, 5200)
    true(hw.display.v.startswith("ERR"), "fault first: %r" % hw.display.v)
    ch.active = 0
    _run(hmi, t, 9000)
    eq(hw.display.v, "230.0 V", "no welcome after the fault")


def test_station_number_in_the_rotation_idle_and_charging():
    hw, ch, hmi = _hmi({"can_addr": 3})
    t = _run(hmi, 0, 3000)  # the welcome
    hw.display.shown.clear()
    t = _run(hmi, t, t + 9000)
    eq(hw.display.shown[:4], ["230.0 V", "50.0 Hz", "STATION 3", "230.0 V"], "idle rotation")
    ch.session = _Session()
    ch.status = "Charging"
    ch.connected = True
    hw.display.shown.clear()
    _run(hmi, t, t + 18000)
    eq(sorted(set(hw.display.shown)),
       sorted(["230.0 V", "0.0 A", "50.0 Hz", "1.5 kWh", "10 Min", "STATION 3"]),
       "charging rotation")
    hw, ch, hmi = _hmi()  # no settings: no station number (a unit rig's Hmi)
    t = _run(hmi, 0, 12000)
    true(not any(x.startswith("STATION") for x in hw.display.shown), "none")


def test_belt_and_leds_follow_the_manuals_tables():
    from evse import faults

    hw, ch, hmi = _hmi()
    hmi.selftest_until = 2000
    hmi.tick(1000)
    eq(hw.belt.v, ("white", "steady"), "power-on self-test")
    # (status, session, connected) -> belt, plug LED, charging LED (manual §7.1.1, §7.1.3)
    rows = (
        ("Available", False, False, ("green", "slow"), ("off", "steady"), ("off", "steady")),
        ("Preparing", False, True, ("green", "slow"), ("white", "steady"), ("off", "steady")),
        ("Preparing", True, True, ("blue", "steady"), ("white", "steady"), ("off", "steady")),
        ("Charging", True, True, ("blue", "slow"), ("white", "steady"), ("white", "steady")),
        ("SuspendedEV", True, True, ("blue", "fast"), ("white", "steady"), ("white", "slow")),
        ("SuspendedEVSE", True, True, ("blue", "fast"), ("white", "steady"), ("white", "slow")),
        ("Finishing", False, True, ("green", "slow"), ("white", "steady"), ("off", "steady")),
        ("Unavailable", False, False, ("red", "slow"), ("off", "steady"), ("off", "steady")),
    )
    t = 3000
    for status, session, plugged, belt, plug, charging in rows:
        ch.status = status
        ch.session = _Session() if session else None
        ch.connected = plugged
        t += 100
        hmi.tick(t)
        eq((hw.belt.v, hw.leds.v["plug"], hw.leds.v["charging"], hw.leds.v["fault"]),
           (belt, plug, charging, ("off", "steady")), status)
        eq(hw.tap_light.v, (plugged,), "tap area lit with a cable: " + status)
    ch.status = "Faulted"
    ch.latched = faults.PE
    hmi.tick(t + 100)
    eq((hw.belt.v, hw.leds.v["fault"], hw.leds.v["charging"]),
       (("red", "steady"), ("red", "steady"), ("off", "steady")), "fault")


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


def test_a_card_before_plug_in_says_plug_in_at_once():
    """A tap with nothing plugged shows PLUG IN at the next tick, even during the welcome
    or while the hotspot's name rotates: the wait may be only a few seconds
    (ConnectionTimeOut)."""
    from evse.auth import PLUG_IN_TEXT

    hw, ch, hmi = _hmi({"can_addr": 1})
    t = _run(hmi, 5000, 6000)  # the welcome is showing
    ch.auth_pending = ("04A1B2C3", "RFID", 0, None, None)
    t = _run(hmi, t, t + 200)
    eq(hw.display.v, PLUG_IN_TEXT, "at once")
    t = _run(hmi, t, t + 10000)
    true(hw.display.v == PLUG_IN_TEXT, "and it stays the prompt")
