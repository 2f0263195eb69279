# WiFi modes (manual §8.1): the hotspot for the installer (AP, the default: SSID
# ACPILE_xx at 192.168.1.1, one client) or client mode on the saved network, used by
# OCPP. In client mode a dropped link is retried by itself with a growing pause; the
# charger never needs a reboot to get back on the network. A module that does not
# answer (OSError from the driver) is logged and shown (`module_ok`, the WiFi LED steady
# red): it never stops a task, since a task that dies takes the charger to its safe state.
import asyncio
import time
from micropython import const

import log

_log = log.get("wifi")

_CHECK_MS = const(1000)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)


class WifiManager:
    def __init__(self, wlan, settings):
        self._wlan = wlan
        self._settings = settings
        self.attempts = 0  # connects since the link was last up
        self._backoff_ms = _BACKOFF_MIN_MS
        self._next_ms = time.ticks_ms()
        self._was_up = False

    def apply(self):
        """Puts the radio in the configured mode (settings changed, button, boot)."""
        mode = self._settings["wifi_mode"]
        try:
            self._wlan.set_mode(mode)
        except OSError as e:
            _log.error("WiFi module does not answer: %r", e)
        self._backoff_ms = _BACKOFF_MIN_MS
        self._next_ms = time.ticks_ms()  # try at once
        self.attempts = 0
        _log.info("mode %s", mode)

    def tick(self, now_ms):
        w = self._wlan
        if self._settings["wifi_mode"] != "client":
            return
        try:
            up = w.isconnected()
        except OSError:
            up = False  # the module does not answer: tried again with the backoff below
        if up != self._was_up:
            self._was_up = up
            if up:
                _log.info("connected to %s after %d attempt(s)", self._settings["wifi_ssid"], self.attempts)
                self.attempts = 0
                self._backoff_ms = _BACKOFF_MIN_MS
            else:
                _log.warning("link to %s lost", self._settings["wifi_ssid"])
                self._next_ms = now_ms
        if up or not self._settings["wifi_ssid"]:
            return
        if time.ticks_diff(now_ms, self._next_ms) < 0:
            return
        try:
            w.connect(self._settings["wifi_ssid"], self._settings["wifi_password"])
        except (OSError, ValueError) as e:
            _log.warning("connect failed: %r", e)
        self.attempts += 1
        self._next_ms = time.ticks_add(now_ms, self._backoff_ms)
        self._backoff_ms = min(self._backoff_ms * 2, _BACKOFF_MAX_MS)

    def view(self):
        w = self._wlan
        ok = w.module_ok
        try:
            connected = w.isconnected()
            clients = w.ap_clients()
        except OSError:
            ok = connected = False
            clients = 0
        return {
            "mode": self._settings["wifi_mode"],
            "module_ok": ok,
            "connected": connected,
            "ssid": self._settings["wifi_ssid"] or None,
            "ap_ssid": getattr(w, "ap_ssid", None),
            "ap_clients": clients,
            "ap_max_clients": w.ap_max_clients,  # "1 of 1": nobody else can join now
            "attempts": self.attempts,
            "retry_in_s": self._backoff_ms // 1000,
        }

    async def run(self):
        while True:
            self.tick(time.ticks_ms())
            await asyncio.sleep_ms(_CHECK_MS)
