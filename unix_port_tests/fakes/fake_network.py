# Fake `network`: WLAN interfaces that record active/config/ifconfig/connect.
AP_IF = 1
AUTH_WPA2_PSK = 3
STA_IF = 0
interfaces = {}


class WLAN:
    def __init__(self, kind):
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
        return [(b"home", b"\x00" * 6, 6, -60, 3, False)]

    def connect(self, ssid, key):
        self.connected_to = ssid

    def disconnect(self):
        self.connected_to = None

    def isconnected(self):
        return self.connected_to is not None

    def status(self, what=None):
        return [(b"\x00" * 6,)] if what == "stations" else 0
