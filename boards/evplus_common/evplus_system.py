# System services of the EV PLUS boards (docs/hal.md `wlan`, `rtc`, `wdt`, `rs485`,
# the data dir) and the 74HC595 output latch. Port-neutral: the board passes its
# `network` module, machine.RTC/WDT/UART objects and the SPI bus.
import sys
import time


class Hc595:
    """74HC595 output latch on the shared SPI bus (slow outputs only: lock motor, RCD
    test, buzzer, tap light). bit(n) gives a pin-like object with value(v)."""

    def __init__(self, spi, latch):
        self._spi = spi
        self._latch = latch
        self._buf = bytearray(1)
        latch.value(0)
        self._flush()

    def _flush(self):
        self._spi.write(self._buf)
        self._latch.value(1)  # RCLK rising edge copies the shift register to Q0-Q7
        self._latch.value(0)

    def put(self, n, v):
        b = self._buf
        b[0] = (b[0] | (1 << n)) if v else (b[0] & ~(1 << n))
        self._flush()

    def get(self, n):
        return (self._buf[0] >> n) & 1

    def bit(self, n):
        return _Hc595Bit(self, n)


class _Hc595Bit:
    def __init__(self, sr, n):
        self._sr = sr
        self._n = n

    def value(self, v=None):
        if v is None:
            return self._sr.get(self._n)
        self._sr.put(self._n, v)
        return None


def _log_error(msg):
    import log

    log.get("wlan").error("%s", msg)


_AUTH_WPA2_PSK = 3  # ESP-IDF wifi_auth_mode_t, where the port names no constant
_CYW43_WPA2_AES_PSK = 0x00400004  # cyw43_ll.h: WPA2 security flag | AES


class Wlan:
    """network.WLAN in AP (ACPILE_xx, 192.168.1.1) or client mode, the hal.md contract.
    The hotspot is WPA2-PSK with the board's key (lib/apkey.py), one client at a time
    (manual §8.1.1); it is never brought up open."""

    AP_IFCONFIG = ("192.168.1.1", "255.255.255.0", "192.168.1.1", "192.168.1.1")
    ap_auth = "WPA2-PSK"
    ap_max_clients = 1
    module_ok = True

    def __init__(self, network, serial, data_dir, log=_log_error):
        self._net = network
        self.ap_ssid = "ACPILE_" + serial[-2:].upper()
        self._serial = serial
        self._dir = data_dir
        self._log = log
        self.ap_key = None
        self._ap = network.WLAN(network.AP_IF)
        self._sta = network.WLAN(network.STA_IF)
        self.mode = None
        self.set_mode("ap")

    def set_mode(self, mode):
        if mode != "ap" and mode != "client":
            raise ValueError("mode must be 'ap' or 'client'")
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "ap":
            if self.ap_key is None:
                import apkey

                # Before the hotspot is up, with the radio on (the ESP32's RNG is a true
                # one only then): the station interface runs while the secret is read or
                # made and written to flash, and the key derived.
                self._sta.active(True)
                self.ap_key = apkey.derive(apkey.load_secret(self._dir, self._log), self._serial)
                sys.modules.pop("apkey", None)  # used once: 0.25 KB of heap otherwise kept
            self._sta.active(False)
            self._start_ap()
            self._ap.ifconfig(self.AP_IFCONFIG)
        else:
            self._ap.active(False)
            self._sta.active(True)

    def _start_ap(self):
        """The hotspot on with its WPA2 key. A driver that takes the configuration
        while the interface is off (CYW43) starts with it; the ESP32's refuses it
        then (esp_wifi_set_config needs the interface enabled, OSError): there the key
        is set by the very next call after active(True), nothing in between."""
        ap = self._ap
        err = self._secure_ap()
        if err is not None and not isinstance(err, OSError):
            self._log("hotspot off: WPA2 cannot be set (%r)" % (err,))
            return  # the driver knows no WPA2 setting: never switched on
        ap.active(True)
        err = self._secure_ap()  # again once on: a driver may drop what it took while off
        if err is not None:
            ap.active(False)  # no hotspot rather than an open one
            self._log("hotspot off: WPA2 cannot be set (%r)" % (err,))

    def _secure_ap(self):
        """None once ssid, key and WPA2 are set, else the error (an OSError among them
        when one form failed for the interface's state)."""
        ap = self._ap
        net = self._net
        state_err = None
        try:
            # ESP32: key, mode and client limit in one esp_wifi_set_config
            ap.config(ssid=self.ap_ssid, key=self.ap_key, max_clients=1,
                      authmode=getattr(net, "AUTH_WPA2_PSK", _AUTH_WPA2_PSK))
            return None
        except (ValueError, TypeError, OSError) as e:
            if isinstance(e, OSError):
                state_err = e
        try:
            # CYW43 modules: `security` (the driver restarts the AP with it), no limit
            ap.config(ssid=self.ap_ssid, key=self.ap_key, security=_CYW43_WPA2_AES_PSK)
            return None
        except (ValueError, TypeError, OSError) as e:
            return state_err or e

    def scan(self):
        """Networks in reach, in either mode. The driver scans only on the station
        interface, which AP mode keeps off: it is switched on for the scan alone and
        left as it was. The hotspot is not touched (the ESP32 runs AP and station
        together, as CYW43 does); its client may miss a few beacons while the radio
        visits the other channels."""
        sta = self._sta
        was_on = sta.active()
        if not was_on:
            sta.active(True)
        try:
            found = sta.scan()
        finally:
            if not was_on:
                sta.active(False)
        # network scan tuples: (ssid, bssid, channel, RSSI, security, hidden)
        return [(s[0].decode(), s[3], s[4]) for s in found]

    def connect(self, ssid, password=""):
        if type(ssid) is not str or not ssid:
            raise ValueError("ssid must be a non-empty str")
        if self.mode != "client":
            raise OSError("connect needs client mode")
        self._sta.connect(ssid, password)

    def disconnect(self):
        self._sta.disconnect()

    def isconnected(self):
        return self.mode == "client" and self._sta.isconnected()

    def ap_clients(self):
        if self.mode != "ap":
            return 0
        try:
            return len(self._ap.status("stations"))
        except (OSError, ValueError):
            return 0

    def ifconfig(self):
        return (self._ap if self.mode == "ap" else self._sta).ifconfig()


def make_wlan(network, serial, data_dir, log=_log_error):
    """Wlan, or NoWlan when the module does not answer at boot (OSError from the
    driver): the charger still starts and charges, the WiFi LED steady red (manual
    §7.1.3, "damaged WiFi module")."""
    try:
        return Wlan(network, serial, data_dir, log)
    except OSError as e:
        log("WiFi module does not answer (%r): no hotspot, no client mode" % (e,))
    try:
        network.WLAN(network.AP_IF).active(False)  # never a hotspot left half set up
    except OSError:
        pass
    return NoWlan(serial)


class NoWlan:
    """hw.wlan of a board without a radio: AP mode that nobody can join."""

    ap_auth = None
    ap_key = None
    ap_max_clients = 0
    module_ok = False  # the WiFi LED steady red: no module, or one that did not start

    def __init__(self, serial):
        self.mode = "ap"
        self.ap_ssid = "ACPILE_" + serial[-2:].upper()

    def set_mode(self, mode):
        if mode != "ap" and mode != "client":
            raise ValueError("mode must be 'ap' or 'client'")
        self.mode = mode

    def scan(self):
        return []

    def connect(self, ssid, password=""):
        raise OSError(19)  # ENODEV

    def disconnect(self):
        pass

    def isconnected(self):
        return False

    def ap_clients(self):
        return 0

    def ifconfig(self):
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")


class Lan:
    """hw.wlan of a wired board: network.LAN (Ethernet, lwIP's DHCP client) under the
    hal.md contract. No hotspot and no radio: `mode` is always "client", set_mode("ap")
    changes nothing (the installer reaches the web app over the wire), scan() is [] and
    connect() joins nothing (the cable is the network), ap_key and ap_auth are None.

    The port's LAN.active(True) resets the PHY and waits for its link, up to 10 s
    (ports/stm32/eth.c PHY_INIT_TIMEOUT_MS), so it runs here, at boot, before any task
    and before the watchdog: never later, where it would stall the control loop. The
    interface stays up once started: a cable pulled and put back gets its link and
    lease again by itself. A boot without the cable has no network until the next boot
    (`started` False, logged)."""

    ap_auth = None
    ap_key = None
    ap_max_clients = 0
    module_ok = True  # the interface is there; a missing cable is `isconnected()` False
    mode = "client"

    def __init__(self, network, serial, log=_log_error):
        self.ap_ssid = "ACPILE_" + serial[-2:].upper()
        self._lan = network.LAN()
        self.started = False
        try:
            self._lan.active(True)  # DHCP starts with the interface (eth.c)
            self.started = True
        except OSError as e:
            log("Ethernet not started (%r): no link at boot; it is tried again at the "
                "next boot" % (e,))

    def set_mode(self, mode):
        # "ap" is taken and changes nothing: the charger's default setting asks for the
        # hotspot at every boot, and the wire stays the network.
        if mode != "ap" and mode != "client":
            raise ValueError("mode must be 'ap' or 'client'")

    def scan(self):
        return []

    def connect(self, ssid, password=""):
        if type(ssid) is not str or not ssid:
            raise ValueError("ssid must be a non-empty str")

    def disconnect(self):
        pass

    def isconnected(self):
        """Link up with an address (the port's status 3)."""
        return self.started and self._lan.isconnected()

    def ap_clients(self):
        return 0

    def ifconfig(self):
        if not self.started:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return self._lan.ifconfig()


class Rtc:
    """Wall clock in seconds since 1970 on machine.RTC, whatever the port's epoch."""

    def __init__(self, rtc):
        self._rtc = rtc
        self._offset = 946684800 if time.gmtime(0)[0] == 2000 else 0

    def now(self):
        return time.time() + self._offset

    def set(self, epoch_s):
        # gmtime: (year, month, mday, hour, minute, second, weekday, yearday[, isdst])
        t = time.gmtime(int(epoch_s) - self._offset)
        self._rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


class Wdt:
    """machine.WDT once started (it cannot be stopped), fed by the supervisor only."""

    def __init__(self, wdt_class):
        self._cls = wdt_class
        self._wdt = None

    def start(self, timeout_ms):
        if self._wdt is None:
            self._wdt = self._cls(timeout=timeout_ms)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()


class Rs485Uart:
    """machine.UART with the hal.md readinto contract (0, never None, when nothing waits)."""

    def __init__(self, uart, baudrate):
        self._u = uart
        self.baudrate = baudrate

    def write(self, buf):
        return self._u.write(buf)

    def readinto(self, buf):
        if not self._u.any():
            return 0
        n = self._u.readinto(buf)
        return n or 0

    def any(self):
        return self._u.any()


class ErrorReporter:
    """hw.report_error(code, active): kept for the bench REPL (`hw.errors.active`)."""

    def __init__(self):
        self.active = {}

    def report(self, code, active):
        if active:
            self.active[code] = True
        else:
            self.active.pop(code, None)


def ensure_dir(os_mod, path):
    try:
        os_mod.mkdir(path)
    except OSError:
        pass  # exists
