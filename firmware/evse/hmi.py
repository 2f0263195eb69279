# What the driver sees and touches (manual §7): the display rotation (AREA1), the LED
# belt, the AREA2 indicators, the AREA3 tap-area light, the buzzer and the WiFi button.
import asyncio
import time
from micropython import const

from evse import faults
from evse.auth import PLUG_IN_TEXT
import log

_log = log.get("hmi")

_ROTATE_MS = const(3000)
_LONG_PRESS_MS = const(3000)
_HOTSPOT_MS = const(60000)  # how long the hotspot's name and key stay in the rotation
_WELCOME_MS = const(3000)  # the welcome text after a restart, before the rotation
WELCOME_TEXT = "WELCOME"  # manual §12: its showing says the charger has restarted
BEEP_OK_MS = 150
BEEP_FAIL_MS = 150
BEEP_FAIL_GAP_MS = 500  # two beeps about 0.5 s apart (manual §9)
BEEP_WIFI_MS = 1000  # one 1 s tone when the WiFi mode changed (manual §8.1.3)


class Hmi:
    def __init__(self, hw, charger, metering, wifi_mode_toggle, settings=None):
        self.hw = hw
        self.ch = charger
        self.met = metering
        self._settings = settings  # its can_addr is the station number in the rotation
        self._toggle_wifi = wifi_mode_toggle
        self.message = None  # (text, until_ms) shown instead of the rotation (e.g. "100 UP")
        # fn() -> text or None: warnings that are not faults (the load-balancing master
        # lost): shown between the rotation's items, the fault LED blinking slowly.
        self.notices = []
        self._warned = None
        self.selftest_until = time.ticks_add(time.ticks_ms(), 2000)  # None once over
        self._rot_i = 0
        self._rot_ms = 0
        self._err_i = 0
        self._press_ms = None
        self._press_done = False
        self._hotspot_ms = None  # ticks_ms since the hotspot's name and key are shown
        self._hotspot_idle = False  # shown only with no session (the boot's showing)
        # ticks_ms of the first tick, -1 before it (ticks are never negative), None once
        # the welcome is over (no stale deadline across the ticks wrap)
        self._welcome_ms = -1
        self._pending = False  # an authorization waited for the vehicle at the last tick
        self._last = {}

    # ---- buzzer ------------------------------------------------------------------------
    def beep_ok(self):
        self.hw.buzzer.beep(BEEP_OK_MS)

    def beep_fail(self):
        asyncio.create_task(self._two_beeps())

    async def _two_beeps(self):
        self.hw.buzzer.beep(BEEP_FAIL_MS)
        await asyncio.sleep_ms(BEEP_FAIL_GAP_MS)
        self.hw.buzzer.beep(BEEP_FAIL_MS)

    def show_message(self, text, ms):
        self.message = (text, time.ticks_add(time.ticks_ms(), ms))

    def show_hotspot(self, now_ms=None, idle_only=False):
        """ACPILE_xx and its WPA2 key (hw.wlan.ap_key) in the display's rotation for a
        minute, while the hotspot is on: the boot in AP mode (idle_only: not over a
        session's figures), the switch to AP mode, a short press of the button in it.
        Fault codes still take the display. False when there is no hotspot to show."""
        w = self.hw.wlan
        if w.mode != "ap" or not getattr(w, "ap_key", None):
            return False
        now = time.ticks_ms() if now_ms is None else now_ms
        self._hotspot_ms = now
        self._hotspot_idle = idle_only
        if not idle_only:
            self._rot_ms = now  # asked for with the button: the name first, at once
            self._rot_i = 0
        return True

    def _hotspot(self, now_ms):
        """(ssid, key) while they are to be shown, else None."""
        since = self._hotspot_ms
        if since is None:
            return None
        w = self.hw.wlan
        age = time.ticks_diff(now_ms, since)
        if w.mode != "ap" or not 0 <= age < _HOTSPOT_MS:
            self._hotspot_ms = None  # forgotten: no stale deadline across the ticks wrap
            return None
        if self._hotspot_idle and self.ch.session is not None:
            return None
        return (w.ap_ssid, w.ap_key)

    # ---- periodic ----------------------------------------------------------------------
    def tick(self, now_ms):
        self._button(now_ms)
        status = self.ch.ocpp_status()
        self._set("belt", self._belt(now_ms, status))
        self._set("display", self._display(now_ms, status))
        self._leds(status)
        self._set("tap", self.ch.connected)

    def _set(self, what, value):
        if self._last.get(what) == value:
            return
        self._last[what] = value
        hw = self.hw
        if what == "belt":
            hw.belt.set(value[0], value[1])
        elif what == "display":
            hw.display.show(value)
        elif what == "tap":
            hw.tap_light.set(value)
        else:
            hw.leds.set(what, value[0], value[1])

    def _belt(self, now_ms, status):
        if self.selftest_until is not None:
            if time.ticks_diff(self.selftest_until, now_ms) > 0:
                return ("white", "steady")  # power-on self-test
            # Over: forgotten, or 6.2 days later (2**29 ms, half the ticks period of a
            # 32-bit port) the deadline would read as ahead again for as long.
            self.selftest_until = None
        if status == "Faulted":
            return ("red", "steady")
        if status == "Charging":
            return ("blue", "slow")
        if status in ("SuspendedEV", "SuspendedEVSE"):
            return ("blue", "fast")  # pause during the charging process
        if self.ch.session is not None:
            return ("blue", "steady")  # setting up: authorized, not yet charging
        if status == "Unavailable":
            return ("red", "slow")
        return ("green", "slow")  # stand-by

    def _display(self, now_ms, status):
        if self._welcome_ms == -1:
            self._welcome_ms = now_ms  # from the first tick, whatever the display shows
        if self.message is not None:
            text, until = self.message
            if time.ticks_diff(until, now_ms) > 0:
                return text
            self.message = None
        codes = faults.codes(self.ch.active | self.ch.latched)
        if codes:
            if time.ticks_diff(now_ms, self._rot_ms) >= _ROTATE_MS:
                self._rot_ms = now_ms
                self._err_i += 1
            return faults.display_text(codes[self._err_i % len(codes)])
        pending = self.ch.auth_pending is not None
        if pending and not self._pending:
            # A card just tapped (or a remote start) waits for the vehicle: PLUG IN now,
            # not after the welcome or the hotspot's name.
            self._welcome_ms = None
            self._rot_ms = now_ms
            self._rot_i = 0
        self._pending = pending
        if self._welcome_ms is not None:
            if 0 <= time.ticks_diff(now_ms, self._welcome_ms) < _WELCOME_MS:
                self._rot_ms = now_ms  # the rotation begins with its first item after
                self._rot_i = 0
                return WELCOME_TEXT
            self._welcome_ms = None
        items = self._rotation(status)
        if pending:
            # The rotation's only item: a prompt, not a warning (the fault LED stays off,
            # and a warning still comes between).
            items = (PLUG_IN_TEXT,)
        hot = self._hotspot(now_ms)
        if hot is not None:
            items = items + hot if pending else hot + items  # the prompt first
        warn = self._warning()
        if warn is not None:
            if self._warned is None:
                self._rot_ms = now_ms  # a new warning is shown at once
                self._rot_i = 0
            items = tuple(x for item in items for x in (warn, item))
        self._warned = warn
        if time.ticks_diff(now_ms, self._rot_ms) >= _ROTATE_MS:
            self._rot_ms = now_ms
            self._rot_i += 1
        return items[self._rot_i % len(items)]

    def _warning(self):
        for fn in self.notices:
            text = fn()
            if text:
                return text
        return None

    def _rotation(self, status):
        m = self.met
        volts = "%d.0 V" % int(m.volts[0] + 0.5)
        hz = "%.1f Hz" % m.hz
        # The station number (manual §7.1.1) tells chargers apart in a CAN pool: the
        # CAN address (docs/load-balancing.md).
        station = () if self._settings is None else ("STATION %d" % self._settings["can_addr"],)
        s = self.ch.session
        if s is None or status not in ("Charging", "SuspendedEV", "SuspendedEVSE"):
            return (volts, hz) + station
        mins = max(0, self.hw.rtc.now() - s.start_s) // 60
        return (
            volts,
            "%.1f A" % max(m.amps),
            hz,
            "%.1f kWh" % (s.energy_wh / 1000),
            "%d Min" % mins,
        ) + station

    def _leds(self, status):
        self._set("wifi", self._wifi_led())
        self._set("plug", ("white", "steady") if self.ch.connected else ("off", "steady"))
        if status == "Charging":
            chg = ("white", "steady")
        elif status in ("SuspendedEV", "SuspendedEVSE"):
            chg = ("white", "slow")
        else:
            chg = ("off", "steady")
        self._set("charging", chg)
        faulted = self.ch.active or self.ch.latched
        if faulted:
            fault = ("red", "steady")
        elif self._warning() is not None:
            fault = ("red", "slow")  # a warning: not a fault, charging goes on
        else:
            fault = ("off", "steady")
        self._set("fault", fault)

    def _wifi_led(self):
        w = self.hw.wlan
        try:
            if not w.module_ok:
                return ("red", "steady")  # manual §7.1.3: damaged WiFi module
            if w.mode == "ap":
                return ("blue", "slow" if w.ap_clients() else "steady")
            return ("green", "slow" if w.isconnected() else "steady")
        except OSError:
            return ("red", "steady")  # the module does not answer

    def _button(self, now_ms):
        if self.hw.button.pressed():
            if self._press_ms is None:
                self._press_ms = now_ms
                self._press_done = False
            elif not self._press_done and time.ticks_diff(now_ms, self._press_ms) > _LONG_PRESS_MS:
                self._press_done = True  # one toggle per press, however long it is held
                mode = self._toggle_wifi()
                _log.info("button: WiFi mode -> %s", mode)
                self.hw.buzzer.beep(BEEP_WIFI_MS)
                if mode == "ap":
                    self.show_hotspot(now_ms)
        else:
            if self._press_ms is not None and not self._press_done:
                self.show_hotspot(now_ms)  # a short press: the hotspot's name and key again
            self._press_ms = None
