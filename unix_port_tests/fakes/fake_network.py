# Fake `network`: WLAN interfaces that record active/config/ifconfig/connect, and the
# STM32 port's wired LAN.
AP_IF = 1
AUTH_WPA2_PSK = 3
STA_IF = 0
interfaces = {}
broken = False  # a test's: the module does not answer (esp_wifi_init fails)


class WLAN:
    def __init__(self, kind):
        if broken:
            raise OSError(5)  # EIO
        self.kind = kind
        self.is_active = False
        self.cfg = {}
        self.ifcfg = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        self.connected_to = None
        interfaces[kind] = self

    def active(self, on=None):
        if on is None:
            return self.is_active
        self.is_active = bool(on)

    def config(self, **kw):
        self.cfg.update(kw)

    def ifconfig(self, cfg=None):
        if cfg is None:
            return self.ifcfg
        self.ifcfg = cfg

    def scan(self):
        # The ESP32 port scans on the station interface only, and only while it is on.
        if self.kind != STA_IF or not self.is_active:
            raise OSError("STA must be active")
        return [(b"home", b"\x00" * 6, 6, -60, 3, False)]

    def connect(self, ssid, key):
        self.connected_to = ssid

    def disconnect(self):
        self.connected_to = None

    def isconnected(self):
        return self.connected_to is not None

    def status(self, what=None):
        return [(b"\x00" * 6,)] if what == "stations" else 0


class LAN:
    """network.LAN of the STM32 port (ports/stm32/network_lan.c, eth.c): one Ethernet
    interface. active(True) resets the PHY and waits for its link (OSError ETIMEDOUT
    after 10 s without one), then starts lwIP's DHCP client; status() is 0 link down,
    1 PHY link but interface down, 2 up without an address, 3 up with one;
    isconnected() is status 3. `cable`, `lease` and `waited_ms` are the test's."""

    def __init__(self, phy_addr=0, phy_type=0):
        self.cable = True  # a link partner on the wire
        self.lease = ("192.168.7.42", "255.255.255.0", "192.168.7.1", "192.168.7.1")
        self.up = False
        self.starts = 0
        self.waited_ms = 0  # what active(True) blocked for, in all
        interfaces["lan"] = self

    def active(self, on=None):
        if on is None:
            return self.status() != 0
        if not on:
            self.up = False
            return None
        self.starts += 1
        if not self.cable:
            self.waited_ms += 10000  # PHY_INIT_TIMEOUT_MS
            raise OSError(110)  # ETIMEDOUT
        self.waited_ms += 2000  # PHY reset and autonegotiation
        self.up = True
        return None

    def status(self, what=None):
        if what is not None:
            raise ValueError("unknown status param")
        if not self.up:
            return 1 if self.cable else 0
        if not self.cable:
            return 0
        return 3 if self.lease is not None else 2

    def isconnected(self):
        return self.status() == 3

    def ifconfig(self, cfg=None):
        if cfg is not None:
            self.lease = cfg
            return None
        if self.up and self.lease is not None:
            return self.lease
        return ("0.0.0.0", "255.255.255.0", "192.168.0.1", "8.8.8.8")  # eth.c before DHCP

    def config(self, *a, **kw):
        if a == ("mac",):
            return b"\x02\x80\xe1\x00\x00\x01"
        raise ValueError("unknown config param")
