# OCPP configuration keys (1.6 §9 and the security whitepaper): access, type, default,
# validation and persistence (EVSE_DATA_DIR/ocpp_config.json, only values that differ
# from the defaults, written atomically). Keys are matched case-insensitively (CiString).
#
# change(key, value) answers as ChangeConfiguration must: NotSupported for an unknown
# key, Rejected for a read-only key or a bad value (nothing changes), else Accepted.
# AuthorizationKey is write-only: listed without a value, never disclosed. It is bound to
# the central system it was set for (scheme, host and port of ocpp_url, stored beside it
# as _KEY_HOST): once ocpp_url names another, the key is cleared (bind_key), so whoever
# may change the URL cannot have the key sent to a server of their own. Over ws://
# without ocpp_allow_insecure_auth a new key is Rejected (service.py's veto): the
# charger would refuse every connection with it.
import os

import atomicfile
import log

_log = log.get("ocpp.config")

MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Power.Offered",
    "Current.Import",
    "Current.Offered",
    "Voltage",
    "Frequency",
    "Temperature",
)
_ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
MAX_CSL = 8
_DAY = 86400
_FILE_MAX = 4096
_KEY_HOST = "_AuthorizationKeyHost"  # not a configuration key: never listed

# name, access, kind, default[, lo, hi]. Kinds: b bool, i int, m measurand list,
# r phase rotation list, c constant text, k authorization key.
KEYS = (
    # Core
    ("AllowOfflineTxForUnknownId", "RW", "b", False),
    ("AuthorizationCacheEnabled", "RW", "b", True),
    ("AuthorizeRemoteTxRequests", "RW", "b", False),
    ("ClockAlignedDataInterval", "RW", "i", 0, 0, _DAY),
    ("ConnectionTimeOut", "RW", "i", 60, 5, 3600),
    ("ConnectorPhaseRotation", "RW", "r", "0.RST,1.RST"),
    ("ConnectorPhaseRotationMaxLength", "R", "i", 2),
    ("GetConfigurationMaxKeys", "R", "i", 60),
    ("HeartbeatInterval", "RW", "i", 3600, 0, _DAY),
    ("LocalAuthorizeOffline", "RW", "b", True),
    ("LocalPreAuthorize", "RW", "b", False),
    ("MaxEnergyOnInvalidId", "RW", "i", 0, 0, 1000000),
    ("MessageTimeout", "RW", "i", 30, 1, 600),
    ("MeterValuesAlignedData", "RW", "m", "Energy.Active.Import.Register"),
    ("MeterValuesAlignedDataMaxLength", "R", "i", MAX_CSL),
    ("MeterValuesSampledData", "RW", "m", "Energy.Active.Import.Register"),
    ("MeterValuesSampledDataMaxLength", "R", "i", MAX_CSL),
    ("MeterValueSampleInterval", "RW", "i", 60, 0, _DAY),
    ("MinimumStatusDuration", "RW", "i", 0, 0, 3600),
    ("NumberOfConnectors", "R", "i", 1),
    ("ResetRetries", "RW", "i", 2, 0, 10),
    ("StopTransactionOnEVSideDisconnect", "R", "b", True),
    ("StopTransactionOnInvalidId", "RW", "b", True),
    ("StopTxnAlignedData", "RW", "m", ""),
    ("StopTxnAlignedDataMaxLength", "R", "i", MAX_CSL),
    ("StopTxnSampledData", "RW", "m", ""),
    ("StopTxnSampledDataMaxLength", "R", "i", MAX_CSL),
    ("SupportedFeatureProfiles", "R", "c",
     "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger"),
    ("SupportedFeatureProfilesMaxLength", "R", "i", 6),
    ("SupportedFileTransferProtocols", "R", "c", "HTTP,HTTPS"),
    ("TransactionMessageAttempts", "RW", "i", 3, 1, 10),
    ("TransactionMessageRetryInterval", "RW", "i", 60, 1, 3600),
    ("UnlockConnectorOnEVSideDisconnect", "R", "b", True),
    ("WebSocketPingInterval", "RW", "i", 60, 0, 3600),
    # LocalAuthListManagement
    ("LocalAuthListEnabled", "RW", "b", True),
    ("LocalAuthListMaxLength", "R", "i", 100),
    ("SendLocalListMaxLength", "R", "i", 20),
    # Reservation
    ("ReserveConnectorZeroSupported", "R", "b", False),
    # SmartCharging
    ("ChargeProfileMaxStackLevel", "R", "i", 8),
    ("ChargingScheduleAllowedChargingRateUnit", "R", "c", "Current,Power"),
    ("ChargingScheduleMaxPeriods", "R", "i", 24),
    ("ConnectorSwitch3to1PhaseSupported", "R", "b", False),
    ("MaxChargingProfilesInstalled", "R", "i", 8),
    # Security (whitepaper)
    ("AuthorizationKey", "W", "k", ""),
    ("SecurityProfile", "RW", "i", 0, 0, 3),
    # Reconnection back-off (OCPP 2.0.1 names; vendor keys in 1.6)
    ("RetryBackOffWaitMinimum", "RW", "i", 3, 1, 600),
    ("RetryBackOffRandomRange", "RW", "i", 10, 0, 600),
    ("RetryBackOffRepeatTimes", "RW", "i", 4, 0, 10),
)

# Vendor keys kept in the charger's settings, not in ocpp_config.json: (key, setting,
# the setting's values, or None: a whole number). ChangeConfiguration goes through
# Settings.apply, so the web app, the central system and a DataTransfer see and set the
# one value.
SETTING_KEYS = (
    ("ChargeMode", "charge_mode", ("normal", "solar", "solar_min")),
    ("CapacityTariffLimit", "tariff_limit_w", None),  # W, 0: off
)


def _row(table, key):
    """The row of `table` whose first field is `key`, matched case-insensitively
    (CiString50), or None."""
    k = key.lower()
    for row in table:
        if row[0].lower() == k:
            return row
    return None


def setting_key(key):
    """The SETTING_KEYS row of a key (case-insensitive), or None."""
    return _row(SETTING_KEYS, key)


def change_setting(settings, row, text):
    """ChangeConfiguration of a key kept in the settings: 'Accepted' or 'Rejected'."""
    value = text.strip()
    if row[2] is None:
        if not value.isdigit() or len(value) > 9:
            return "Rejected"
        value = int(value)  # its range: the setting's check
    elif value not in row[2]:
        return "Rejected"
    try:
        errors = settings.apply({row[1]: value})
    except OSError as e:  # flash full or failing: nothing changed
        _log.error("%s=%s not stored: %r", row[0], value, e)
        return "Rejected"
    return "Rejected" if errors else "Accepted"


def load_json(path, cap, on_bad=None):
    """The stored object (a dict) of path, read by the rule of settings.json: the first
    copy that can be read of the file itself, a .tmp whose CRC proves it whole (a save cut
    after the old file became the .bak: the newer copy), the older .bak, a .tmp without a
    CRC. No copy is read past the largest of path/.bak/.tmp (capped): its read buffer is
    allocated whole, and a fragmented heap may not have `cap` bytes in one piece. A
    missing file gives {}. on_bad(why) is called when the newest state is unknown: the
    file is there but no copy can be read, or only a copy that may be older (the .bak, a
    .tmp without a CRC); the caller then fails closed, and {} is returned. Without
    on_bad the older copy is used."""
    n = 0
    for p in (path, path + ".bak", path + ".tmp"):
        try:
            n = max(n, os.stat(p)[6])
        except OSError:
            pass
    cap = min(n, cap) or 1
    name = path.rpartition("/")[2]
    bad = []

    def note(msg):
        bad.append(msg)
        _log.error("%s", msg)

    obj, suffix, newest = atomicfile.load_dict_newest(path, cap, note)
    if obj is not None:
        if newest:
            if suffix:
                _log.warning("%s: the whole copy of an interrupted save in use", path)
            return obj
        _log.error("%s unusable: the older copy %s%s may lack the newest state",
                   path, name, suffix)
        if on_bad is None:
            return obj
        on_bad("%s unusable, older copy %s%s" % (name, name, suffix))
        return {}
    if bad:
        _log.error("%s: no valid copy", path)
        if on_bad is not None:
            on_bad("%s unreadable" % name)
    return {}


def _csl_ok(kind, text):
    if text == "":
        return True
    items = text.split(",")
    if len(items) > MAX_CSL:
        return False
    for it in items:
        it = it.strip()
        if kind == "m":
            if it not in MEASURANDS:
                return False
        else:
            conn, dot, rot = it.partition(".")
            if not dot or not conn.isdigit() or int(conn) > 1 or rot not in _ROTATIONS:
                return False
    return True


def _parse(row, text):
    """The typed value of `text` for a key, or raises ValueError."""
    kind = row[2]
    if kind == "b":
        t = text.strip().lower()
        if t not in ("true", "false"):
            raise ValueError("not a boolean")
        return t == "true"
    if kind == "i":
        t = text.strip()
        if not t.isdigit() or len(t) > 9:
            raise ValueError("not a whole number")
        v = int(t)
        if len(row) > 4 and not row[4] <= v <= row[5]:
            raise ValueError("out of range")
        return v
    if kind in "mr":
        t = ",".join(x.strip() for x in text.split(",")) if text.strip() else ""
        if not _csl_ok(kind, t):
            raise ValueError("unsupported item")
        return t
    if kind == "k":
        # Whitepaper: 16-40 characters (16-20 bytes as hex); printable ASCII only.
        if not 16 <= len(text) <= 40 or any(not 32 < ord(ch) < 127 for ch in text):
            raise ValueError("bad key")
        return text
    raise ValueError("read-only")


def check_key(text):
    """None when `text` may be an AuthorizationKey ("" clears it), else why not."""
    if not isinstance(text, str):
        return "must be text"
    if text == "":
        return None
    try:
        _parse(Config.row("AuthorizationKey"), text)
    except ValueError:
        return "must be 16 to 40 printable characters, no spaces"
    return None


def text_of(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


class Config:
    def __init__(self, path):
        self._path = path
        self._values = {}
        for row in KEYS:
            self._values[row[0]] = row[3]
        self.listeners = []  # fn(name) after a change was stored
        self.vetoes = {}  # name -> fn(value) -> None to allow or a reason to reject
        self.dynamic = {}  # name -> fn() giving the current value of a read-only key
        self.key_host = ""  # the central system the AuthorizationKey was set for
        # fn() -> the central system ocpp_url names now ("" when none): a key set from
        # here on is bound to it
        self.host_now = None
        for name, text in load_json(path, _FILE_MAX).items():
            if name == _KEY_HOST and isinstance(text, str):
                self.key_host = text
                continue
            row = self.row(name)
            if row is None or row[1] == "R" or not isinstance(text, str):
                continue
            try:
                self._values[row[0]] = _parse(row, text)
            except ValueError:
                _log.error("stored %s=%r ignored", name, text)

    def __getitem__(self, name):
        fn = self.dynamic.get(name)
        return fn() if fn else self._values[name]

    @staticmethod
    def row(key):
        """The KEYS row of a key, matched case-insensitively (CiString50), or None."""
        return _row(KEYS, key)

    def change(self, key, text):
        """ChangeConfiguration: 'Accepted', 'Rejected' or 'NotSupported'."""
        row = self.row(key)
        if row is None:
            return "NotSupported"
        if row[1] == "R":
            return "Rejected"
        try:
            value = _parse(row, text)
        except ValueError as e:
            _log.info("%s=%r rejected: %s", row[0], text[:40], e)
            return "Rejected"
        veto = self.vetoes.get(row[0])
        if veto is not None:
            why = veto(value)
            if why:
                _log.info("%s=%r rejected: %s", row[0], text[:40] if row[2] != "k" else "***", why)
                return "Rejected"
        self.set(row[0], value)
        return "Accepted"

    def set(self, name, value):
        """Stores a typed value (e.g. the heartbeat interval from BootNotification)."""
        if name == "AuthorizationKey":
            host = (self.host_now() if self.host_now else "") if value else ""
            if self._values[name] == value and self.key_host == host:
                return
            self.key_host = host
        elif self._values.get(name) == value:
            return
        self._values[name] = value
        self._save()
        for fn in self.listeners:
            fn(name)

    def _save(self):
        out = {}
        for row in KEYS:
            v = self._values[row[0]]
            if row[1] != "R" and v != row[3]:
                out[row[0]] = text_of(v)
        if self.key_host and self._values["AuthorizationKey"]:
            out[_KEY_HOST] = self.key_host
        atomicfile.save_json(self._path, out)

    def bind_key(self, host, at_boot=False):
        """The rule for the AuthorizationKey before it may be sent to `host` (the
        central system ocpp_url names: scheme://host:port): None when it is bound to it
        (or there is none), else why it was cleared. A key stored without a host
        (pre-seeded, or set before the binding existed) is bound only to the URL stored
        at boot (at_boot): a URL set later may come from anyone with a session."""
        if not self._values["AuthorizationKey"] or not host:
            return None
        if not self.key_host and at_boot:
            self.key_host = host
            self._save()
            return None
        if self.key_host == host:
            return None
        if self.key_host:
            why = "ocpp_url moved from %s to %s" % (self.key_host, host)
        else:
            why = "ocpp_url %s set after the boot, the key bound to none" % host
        self.key_host = ""
        self._values["AuthorizationKey"] = ""
        self._save()
        for fn in self.listeners:
            fn("AuthorizationKey")
        return why

    def entry(self, row):
        """The KeyValue object of GetConfiguration for a key."""
        kv = {"key": row[0], "readonly": row[1] == "R"}
        if row[1] != "W":
            kv["value"] = text_of(self[row[0]])
        return kv

    def listing(self, keys=None, settings=None):
        """(configurationKey, unknownKey) for GetConfiguration; `settings` holds the
        values of SETTING_KEYS (listed only with it)."""
        if not keys:
            known = [self.entry(row) for row in KEYS]
            if settings is not None:
                for row in SETTING_KEYS:
                    known.append(_setting_entry(settings, row))
            return known, []
        known = []
        unknown = []
        for k in keys:
            row = self.row(k)
            if row is not None:
                known.append(self.entry(row))
                continue
            row = setting_key(k) if settings is not None else None
            if row is None:
                unknown.append(k)
            else:
                known.append(_setting_entry(settings, row))
        return known, unknown


def _setting_entry(settings, row):
    return {"key": row[0], "readonly": False, "value": text_of(settings[row[1]])}
