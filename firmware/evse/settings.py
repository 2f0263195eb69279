# Charger settings: the schema, validation with field-level errors, and persistence.
#
# One file, EVSE_DATA_DIR/settings.json, written atomically with a .bak (lib/atomicfile).
# A file that names only some keys is completed with defaults, so an installer can
# pre-seed a charger. A corrupt file gives way to the whole .tmp of a save that was cut
# (proven by its CRC), else to the older .bak, whose limits are not used: they may be
# higher than the lost ones. A value that cannot be used (refused by its check, from an
# older copy, or every copy of the file unreadable) never falls back to a more permissive
# one: a limit takes its SAFE value, the rest the default, and each is a configuration
# error (`invalid`) until that setting is saved again (docs/errors.md).
import os

import atomicfile
import log

_log = log.get("settings")

_MAX_BYTES = 16384  # a settings file is far smaller: a huge size is a corrupt entry

# The shipped languages; add_languages() adds those of installed language packs.
LANGS = ["it", "en", "de", "es", "fr"]
# The meter models with a register map (evse/meters.py; custom: a map file), and the
# setting's choices: those, the search (auto) and none. The one list of them.
METER_MAPS = ("SDM630", "SDM120", "SDM72", "ABB_B23", "EM340", "DTSU666", "custom")
# Written out (a tuple of constants stays in flash; one computed from another is built in
# the heap): a unit test holds it to ("auto", "none") + METER_MAPS.
METER_MODELS = ("auto", "none", "SDM630", "SDM120", "SDM72", "ABB_B23", "EM340", "DTSU666", "custom")


def add_languages(data_dir):
    """The `language` setting may also name a language a pack installed (docs/ota.md):
    every <data_dir>/www/lang/<code>.json[.gz] but index.json. Called at boot before the
    settings are loaded, and after a pack is installed."""
    try:
        names = os.listdir(data_dir + "/www/lang")
    except OSError:
        return
    for name in names:
        if not (name.endswith(".json") or name.endswith(".json.gz")):
            continue
        code = name.split(".")[0]
        if 2 <= len(code) <= 8 and code.isalpha() and code == code.lower():
            if code != "index" and code not in LANGS:
                LANGS.append(code)


def _normal(key, value):
    """A valid value as stored: a whole number given as a float becomes an int."""
    if isinstance(value, float) and type(spec(key)[1]) is int:
        return int(value)
    return value


# A setting's check is a tuple of constants (kept in flash on a frozen build, where a
# closure per setting would take heap): ("c", option, ...) one of the options; ("i", lo,
# hi) a whole number in range, ("i0", lo, hi) the same or 0 (not set); ("t", max, min)
# text; "b" true or false; "l" a language; "u" an OCPP URL.
def check(spec, v):
    """Why v is not a valid value for a setting of this check, or None."""
    if spec == "b":
        return None if isinstance(v, bool) else "must be true or false"
    if spec == "u":
        return check_ocpp_url(v)
    if spec == "l":
        return _one_of(v, LANGS)
    kind = spec[0]
    if kind == "c":
        return _one_of(v, spec[1:])
    if kind == "t":
        return _check_text(v, spec[1], spec[2])
    if kind == "i0" and v == 0 and not isinstance(v, bool):
        return None
    msg = _check_int(v, spec[1], spec[2])
    return msg + ", or 0 (not set)" if msg and kind == "i0" else msg


def _one_of(v, options):
    if v not in options:
        return "must be one of " + ", ".join(options)


def _check_int(v, lo, hi):
    # 32.0 is a whole number too (a hand-written file, a JSON library's float); it is
    # stored as 32 (_normal). inf and nan fail the range test.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "must be a whole number"
    if not lo <= v <= hi:
        return "must be between %d and %d" % (lo, hi)
    if isinstance(v, float) and v != int(v):
        return "must be a whole number"


def _check_text(v, max_len, min_len):
    if not isinstance(v, str):
        return "must be text"
    if len(v) > max_len:
        return "must be at most %d characters" % max_len
    if 0 < len(v) < min_len:
        return "must be empty or at least %d characters" % min_len
    for ch in v:
        if ord(ch) < 32:
            return "must not contain control characters"


def check_ocpp_url(v):
    """ws://host:port/path/CPID or wss://…; empty means OCPP is off."""
    if not isinstance(v, str):
        return "must be text"
    if v == "":
        return None
    if len(v) > 200:
        return "must be at most 200 characters"
    if v.startswith("ws://"):
        rest = v[5:]
    elif v.startswith("wss://"):
        rest = v[6:]
    else:
        return "must start with ws:// or wss://"
    host_port, _, path = rest.partition("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port:
        return "must name the host and the port, e.g. ws://10.0.0.5:80/ocpp/CP01"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "port must be a number from 1 to 65535"
    if host.startswith("["):
        # Brackets hold an IPv6 address and nothing else (RFC 3986 3.2.2): the client
        # takes what is inside them as an address, and a name there would reach the
        # blocking resolver (socket.getaddrinfo) instead of lib/dnsclient.
        import dnsclient

        if not host.endswith("]") or not dnsclient.is_ipv6(host[1:-1]):
            return "host in brackets must be an IPv6 address, e.g. ws://[fd00::5]:80/ocpp/CP01"
    else:
        for ch in host:
            if not (ch.isalpha() or ch.isdigit() or ch in ".-"):
                return "host has an invalid character"
    cpid = path.rpartition("/")[2]
    if not cpid:
        return "must end with the charge point id, e.g. …/ocpp/CP01"
    if len(cpid) > 48:
        return "charge point id must be at most 48 characters"
    for ch in v:
        if ord(ch) <= 32 or ch in "\"'<>\\`{}|^#?":
            return "must not contain spaces or the characters \"'<>\\`{}|^#?"
    return None


# (key, default, check: see check()), in the order of the web pages. Tuples of constants
# (in flash on a frozen build, where a dict would be built in the heap): spec(key) finds a
# row, keys() lists them.
SCHEMA = (
    ("charger_power", "22kW", ("c", "7kW", "22kW")),
    ("rfid_type", "M1", ("c", "M1", "CPU")),
    ("charging_mode", "B", ("c", "B", "C")),
    ("cp_type", "1.0V", ("c", "0.8V", "1.0V")),
    ("max_current_a", 32, ("i", 6, 32)),
    # The least current the car needs to start charging (some need ~8 A): load balancing
    # and power management offer no less to start it (docs/load-balancing.md).
    ("min_start_a", 6, ("i", 6, 16)),
    ("cable_max_a", 32, ("i", 6, 63)),
    # A pause the current limits make lasts at least this long (docs/errors.md): some
    # cars stop asking after a few interruptions.
    ("min_pause_s", 60, ("i", 5, 600)),
    ("ocpp_url", "", "u"),
    # The AuthorizationKey goes over ws:// (unencrypted: anyone on the path reads it)
    # only when the technician ticks this (docs/ocpp.md).
    ("ocpp_allow_insecure_auth", False, "b"),
    ("lb_enabled", False, "b"),
    # The supply's limit per phase at the grid connection; 0: not set, Max Current is the
    # supply limit (the manual's chapter 10, step 4). An advanced setting for a charger
    # whose own maximum is below what the supply gives.
    ("max_house_current_a", 0, ("i0", 6, 500)),
    ("can_addr", 1, ("i", 1, 8)),
    ("lb_pool_id", 1, ("i", 1, 255)),
    ("phase_set", "L123", ("c", "L1", "L2", "L3", "L123")),
    ("power_system", "TN_TT", ("c", "IT", "TN_TT")),
    ("language", "en", "l"),
    ("wifi_ssid", "", ("t", 32, 0)),
    ("wifi_password", "", ("t", 63, 8)),
    # auto: the charger looks for a supported meter on the RS-485 bus and adopts it when
    # a sweep finds exactly one (evse/meterprobe.py); none: no power management.
    # The check is ("c",) + METER_MODELS written out (a unit test holds them equal).
    ("meter_model", "auto", ("c", "auto", "none", "SDM630", "SDM120", "SDM72", "ABB_B23", "EM340",
                             "DTSU666", "custom")),
    ("meter_addr", 1, ("i", 1, 247)),
    # normal; solar: only from export; solar_min: 6 A from the grid at least, the rest from
    # export (docs/power-management.md, "Solar charging"). Its delays, in seconds.
    ("charge_mode", "normal", ("c", "normal", "solar", "solar_min")),
    ("solar_start_s", 60, ("i", 0, 3600)),
    ("solar_stop_s", 300, ("i", 0, 3600)),
    ("solar_min_on_s", 600, ("i", 0, 7200)),
    # Capacity tariff: the grid import averaged over a window of tariff_window_min kept
    # under tariff_limit_w (W; 0: off) by the charger (docs/power-management.md,
    # "Capacity tariff").
    ("tariff_limit_w", 0, ("i0", 1000, 400000)),
    ("tariff_window_min", 15, ("i", 1, 60)),
    ("auth_mode", "rfid", ("c", "rfid", "free")),
    ("ventilation", False, "b"),
    ("wifi_mode", "ap", ("c", "ap", "client")),
)

# The most restrictive value of every setting that limits the current or a protection:
# what a value that cannot be used falls back to (never the default, e.g. 32 A / 40 A).
# (key, value) rows: safe(key) finds one.
SAFE = (
    ("max_current_a", 6),
    ("cable_max_a", 6),
    ("max_house_current_a", 6),
    ("ventilation", False),  # state D does not charge
    ("power_system", "TN_TT"),  # the neutral-earth check stays on
    ("charging_mode", "B"),  # the lock and the PP cable rating, where the hardware has them
    ("charge_mode", "solar"),  # nothing from the grid: the owner may pay for every kWh of it
    ("tariff_limit_w", 1000),  # the lowest limit: a lost one may have been low
)

# Never sent back to a browser or a central system.
SECRETS = ("wifi_password",)


def spec(key):
    """The SCHEMA row (key, default, check) of a setting, or None for an unknown key."""
    for row in SCHEMA:
        if row[0] == key:
            return row
    return None


def keys():
    """Every setting's key, in SCHEMA's order."""
    return [row[0] for row in SCHEMA]


def safe(key):
    """The SAFE value of a setting that limits the current or a protection, else None."""
    for row in SAFE:
        if row[0] == key:
            return row[1]
    return None


def defaults():
    return {row[0]: row[1] for row in SCHEMA}


_IT_1PH = "IT is for single-phase (7kW) models only"


def validate(changes, current=None):
    """Returns {key: message} for every bad field of a partial settings object; with
    `current` (the values in use), also the rules between settings."""
    if not isinstance(changes, dict):
        return {"_": "must be an object"}
    errors = {}
    for key, value in changes.items():
        row = spec(key)
        if row is None:
            errors[key] = "unknown setting"
            continue
        msg = check(row[2], value)
        if msg:
            errors[key] = msg
    if current is not None and not errors:
        # Manual §6.7: an IT supply only for single-phase models. The error goes to the
        # setting this change names (power system first).
        new = dict(current)
        new.update(changes)
        if new.get("power_system") == "IT" and new.get("charger_power") == "22kW":
            key = "charger_power" if "power_system" not in changes else "power_system"
            errors[key] = _IT_1PH
    return errors


class Settings:
    """The live settings; `apply` validates, persists and then notifies listeners."""

    def __init__(self, path):
        self._path = path
        self._values = defaults()
        self._listeners = []
        self.invalid = {}  # key -> why its stored value is not used, and what is instead
        self._kept = {}  # key -> the unusable stored value, written back until replaced
        # key -> (check(v, changes) -> message or None, store(v), view() -> dict): a
        # setting kept elsewhere, written only through apply() (the OCPP AuthorizationKey).
        self.extra = {}

    def _read(self, note):
        """(stored object, its copy, newest) by the rule of atomicfile.load_dict_newest:
        the file, a .tmp whose CRC proves it whole, the older .bak, a .tmp without a CRC."""
        return atomicfile.load_dict_newest(self._path, _MAX_BYTES, note)

    def load(self):
        errors = [0]

        def note(msg):
            errors[0] += 1
            _log.error("%s", msg)

        stored, source, newest = self._read(note)
        why = None
        if stored is None:
            stored = {}
            if errors[0]:
                # The file is there but no copy of it can be read: the values it held
                # are unknown. null is stored for each limit until it is saved: refused
                # at the next boot too, so it stays safe and reported.
                _log.error("%s: no valid copy, using defaults", self._path)
                stored = {row[0]: None for row in SAFE}
                why = "settings.json unreadable"
        elif not newest:
            # An older copy (the .bak), or one that cannot be proven whole: the newer
            # values are unknown, and they may have been lower. The limits take their
            # SAFE values and are configuration errors until saved; null is kept on
            # flash for them, so saving another setting does not lift them.
            _log.error("%s unusable: the older copy %s in use, limits at their safe values",
                       self._path, self._path + source)
            for row in SAFE:
                stored[row[0]] = None
            why = "settings.json unusable, older copy settings.json" + source
        elif source == ".tmp":
            _log.warning("%s: the whole copy of an interrupted save in use", self._path)
        for key, msg in validate(stored).items():
            row = spec(key)
            if row is None:
                _log.warning("unknown setting %s ignored", key)
                continue
            value = safe(key)
            if value is None:
                value = row[1]
            self.invalid[key] = "%s: %r in use" % (why or msg, value)
            self._kept[key] = stored.pop(key)
            self._values[key] = value
            _log.error("setting %s %s", key, self.invalid[key])
        for key, value in stored.items():
            if spec(key) is not None:
                self._values[key] = _normal(key, value)
        v = self._values
        if v["power_system"] == "IT" and v["charger_power"] == "22kW":
            # A three-phase model on IT: the neutral-earth check stays on (SAFE) until set
            self._kept["power_system"] = v["power_system"]
            v["power_system"] = safe("power_system")
            self.invalid["power_system"] = "%s: %r in use" % (_IT_1PH, v["power_system"])
            _log.error("setting power_system %s", self.invalid["power_system"])

    def __getitem__(self, key):
        return self._values[key]

    def get(self, key, default=None):
        return self._values.get(key, default)

    def public(self):
        """All settings with the secrets replaced by whether they are set."""
        out = dict(self._values)
        for key in SECRETS:
            out[key + "_set"] = bool(out.pop(key))
        for spec in self.extra.values():
            out.update(spec[2]())
        return out

    def on_change(self, fn):
        self._listeners.append(fn)

    def apply(self, changes):
        """Validates and stores a partial update; returns {key: error} (empty when applied).
        The `extra` settings are stored after the others (a new key after the new URL)."""
        ext = {}
        if isinstance(changes, dict) and self.extra:
            ext = {k: v for k, v in changes.items() if k in self.extra}
            if ext:
                changes = {k: v for k, v in changes.items() if k not in ext}
        errors = validate(changes, self._values)
        for k, v in ext.items():
            msg = self.extra[k][0](v, changes)
            if msg:
                errors[k] = msg
        if errors:
            return errors
        if changes or not ext:
            self._store(changes)
        for k, v in ext.items():
            self.extra[k][1](v)
        return {}

    def _store(self, changes):
        changes = {k: _normal(k, v) for k, v in changes.items()}
        new = dict(self._values)
        new.update(changes)
        kept = {k: v for k, v in self._kept.items() if k not in changes}
        on_flash = dict(new)
        on_flash.update(kept)  # an unusable value stays reported until it is replaced
        atomicfile.save_json(self._path, on_flash)
        self._kept = kept
        for k in changes:
            self.invalid.pop(k, None)
        old = self._values
        self._values = new
        changed = [k for k in changes if old.get(k) != new[k]]
        for fn in self._listeners:
            fn(changed)
