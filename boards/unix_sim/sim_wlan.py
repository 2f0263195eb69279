# Simulated WiFi interface. AP mode is the factory default (manual §8.1); in client
# mode the `wifi` op's `up` flag decides whether the uplink works.

AP_IFCONFIG = ("192.168.1.1", "255.255.255.0", "192.168.1.1", "192.168.1.1")
CLIENT_IFCONFIG = ("192.168.10.50", "255.255.255.0", "192.168.10.1", "192.168.10.1")
DOWN_IFCONFIG = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")


def host_dns():
    """The host's first IPv4 nameserver: the simulator's uplink is the host's network, so
    ifconfig() names it as the DNS server (None when the host names none)."""
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and parts[1].count(".") == 3:
                    return parts[1]
    except OSError:
        pass
    return None


def _log_error(msg):
    import log

    log.get("wlan").error("%s", msg)


def ap_ssid_for(serial):
    """"ACPILE_" + the last two characters of the serial (the manual's "ACPILE_xx")."""
    return "ACPILE_" + serial[-2:].upper()


class Wlan:
    ap_auth = "WPA2-PSK"  # as the EV PLUS boards: never an open hotspot
    ap_max_clients = 1  # as the EV PLUS boards: one device at a time (manual 8.1.1)
    module_ok = True

    def __init__(self, plant, serial, data_dir):
        import apkey

        self._plant = plant
        self.mode = "ap"
        self.ap_ssid = ap_ssid_for(serial)
        self.ap_key = apkey.derive(apkey.load_secret(data_dir, _log_error), serial)
        self.ssid = None  # network asked for by connect(), kept across uplink drops
        self.connects = 0
        self._dns = host_dns()

    def set_mode(self, mode):
        if mode != "ap" and mode != "client":
            raise ValueError("mode must be 'ap' or 'client'")
        if mode != self.mode:
            self.mode = mode
            self.ssid = None

    def scan(self):
        return list(self._plant.wifi_networks)

    def connect(self, ssid, password=""):
        if type(ssid) is not str or not ssid:
            raise ValueError("ssid must be a non-empty str")
        if self.mode != "client":
            raise OSError("connect needs client mode")
        self.ssid = ssid
        self.connects += 1

    def disconnect(self):
        self.ssid = None

    def isconnected(self):
        return self.mode == "client" and self.ssid is not None and self._plant.wifi_up

    def ap_clients(self):
        # The `wifi` op's ap_clients are the devices that try to join: the hotspot
        # lets one in, as the boards' driver does.
        return min(self._plant.ap_clients, self.ap_max_clients) if self.mode == "ap" else 0

    def ifconfig(self):
        if self.mode == "ap":
            cfg = AP_IFCONFIG
        elif self.isconnected():
            cfg = CLIENT_IFCONFIG
        else:
            return DOWN_IFCONFIG
        return cfg if self._dns is None else cfg[:3] + (self._dns,)

    def view(self):
        return {
            "mode": self.mode,
            "ssid": self.ssid,
            "connected": self.isconnected(),
            "ap_ssid": self.ap_ssid,
            "ap_auth": self.ap_auth,
            "ap_key": self.ap_key,
            "ap_clients": self.ap_clients(),
            "connects": self.connects,
        }
