# Solar surplus charging: the charge modes `solar` and `solar_min` on top of power
# management (docs/power-management.md, "Solar charging").
#
# The grid meter's signed total power says how much the house exports. The current the
# charger may draw from that export, per phase it charges on, is
#
#     surplus = (its own power + export) / (phases x voltage)
#
# fed to the charging core as the named limit "solar": composed with the others
# (evse/limits.py), it can only lower the offer. `solar` starts once the surplus has
# covered the start current (6 A, or min_start_a) for `solar_start_s`, follows it (down
# at once, up by at most RAISE_STEP_A per reading), never offers less than 6 A while it
# runs, and stops once the surplus has stayed below 6 A for `solar_stop_s` and the charge
# has run `solar_min_on_s`. `solar_min` offers the start current from the grid at least
# and the surplus above it. No meter, a lost one, or one without power readings: `solar`
# offers nothing, `solar_min` its minimum.
#
# Imported by evse/power.py only while charge_mode is not `normal`.
import time

from evse import limits
from evse.power import RAISE_STEP_A
import log

_log = log.get("solar")

LIMIT_NAME = "solar"  # the module's name: power._feature removes the limit by it
_MAX_GAP_MS = 5000  # a longer gap between readings counts no energy from surplus


class Solar:
    def __init__(self, pm):
        self.pm = pm
        self.mode = None
        self.grid_w = None  # signed power at the grid connection (import > 0)
        self.surplus_a = None  # per charging phase, from the last valid reading
        self.need_w = None  # export still missing to start (waiting in `solar`)
        self.phases = 1
        self.limit_a = None  # the "solar" limit fed to the charger
        self.running = False  # `solar`: a charge started on surplus (start delay passed)
        self.reason = None  # why `solar` offers nothing (None: it offers)
        self._up_since = None  # surplus at or above the start current since
        self._up_ok = False  # ... for solar_start_s (a flag: the ticks wrap)
        self._low_since = None  # surplus below 6 A while running since
        self._low_ok = False  # ... for solar_stop_s
        self._on_since = None  # the charge started on surplus then
        self._on_ok = False  # ... and has run solar_min_on_s
        self._energy_ms = None  # the reading energy from surplus was last counted at
        self._entered = False  # the mode was just set: a charge running on surplus goes on

    def step(self, now, ok):
        """After each power cycle (`ok`: a fresh valid reading in pm.values)."""
        pm = self.pm
        s = pm.settings
        mode = s["charge_mode"]
        if mode != self.mode:
            _log.info("charge mode %s", mode)
            self.mode = mode
            self._reset()
            self._entered = True
        start = limits.start_a(s)
        ch = pm.ch
        if getattr(ch, "session", None) is None:
            self.running = False  # the next session starts on surplus again
            self._energy_ms = None
        if pm.model in ("none", "auto"):
            self._unknown("no_meter")
        elif pm.lost:
            self._unknown("meter_lost")
        elif ok:
            self._measure(now, start)
        elif pm.last_ok_ms is None:
            self._unknown("no_reading")
        # else: a read that failed, not yet a lost meter: the last values stay
        if self.surplus_a is None:
            self.limit_a = start if mode == "solar_min" else 0.0
            if mode == "solar_min":
                self.reason = None
            self.running = False
        elif mode == "solar_min":
            self.reason = None
            self._follow(max(start, self.surplus_a))
        else:
            self._solar(now, start, s)
        ch.set_external_limit(LIMIT_NAME, self.limit_a)

    def _reset(self):
        self.running = False
        self._up_since = self._low_since = self._on_since = None
        self._up_ok = self._low_ok = self._on_ok = False

    def _unknown(self, why):
        self.surplus_a = self.grid_w = self.need_w = None
        self.reason = why
        self._up_since = None
        self._up_ok = False

    def _measure(self, now, start):
        from evse import meters  # a valid reading: imported with the meter's map

        pm = self.pm
        v = pm.values
        p = meters.total_w(v)
        if p is None:
            self._unknown("no_power")  # the meter gives currents only: no direction
            return
        n = meters.charge_phases(pm)
        u = meters.volts(v)
        own_w = meters.own_w(pm, u)
        self.grid_w = p
        self.phases = n
        avail_w = own_w - p
        self.surplus_a = max(0.0, limits.floor_tenth(avail_w / (n * u)))
        self.need_w = max(0.0, start * n * u - avail_w)
        self._count(now, own_w, p)
        if self.surplus_a >= start:
            if self._up_since is None:
                self._up_since = now
        else:
            self._up_since = None
            self._up_ok = False
        if self.running:
            if self.surplus_a < limits.MIN_A:
                if self._low_since is None:
                    self._low_since = now
            else:
                self._low_since = None
                self._low_ok = False

    def _count(self, now, own_w, grid_w):
        """Energy of the session from surplus: the charger's power less what the house
        imports (the import is counted as the charger's first: the low side)."""
        ch = self.pm.ch
        sess = getattr(ch, "session", None)
        last = self._energy_ms
        self._energy_ms = now
        if sess is None:
            return
        if getattr(sess, "solar_wh", None) is None:
            sess.solar_wh = 0.0  # the record names it: counted in this session
        if last is None:
            return
        dt = time.ticks_diff(now, last)
        if not 0 < dt <= _MAX_GAP_MS:
            return
        w = own_w - (grid_w if grid_w > 0 else 0.0)
        if w > own_w:
            w = own_w
        if w > 0:
            sess.solar_wh += w * dt / 3600000

    def _solar(self, now, start, s):
        sur = self.surplus_a
        if self.running:
            if not self._on_ok and limits.held(now, self._on_since, s["solar_min_on_s"] * 1000):
                self._on_ok = True
            if not self._low_ok and limits.held(now, self._low_since, s["solar_stop_s"] * 1000):
                self._low_ok = True
            if self._low_ok and self._on_ok:
                _log.info("solar: stop, %.1f A of surplus", sur)
                self._reset()
                self.limit_a = 0.0
                self.reason = "export"
                return
            self.reason = None
            # Never below 6 A while it runs: the stop delay bridges a passing cloud.
            self._follow(max(limits.MIN_A, sur))
            return
        if not self._up_ok and limits.held(now, self._up_since, s["solar_start_s"] * 1000):
            self._up_ok = True
        ch = self.pm.ch
        if self._entered and sur >= start and getattr(ch, "offered_a", 0):
            self._up_ok = True  # switched to solar while charging with surplus: it goes on
        self._entered = False
        if self._up_ok and getattr(ch, "session", None) is not None:
            _log.info("solar: start, %.1f A of surplus", sur)
            self.running = True
            self._on_since = now
            self._on_ok = False
            self._low_since = None
            self._low_ok = False
            self.reason = None
            self.limit_a = min(sur, start + RAISE_STEP_A)
            return
        self.limit_a = 0.0
        if self._up_ok:
            self.reason = None  # the sun is there: only the car is missing
        else:
            self.reason = "start_delay" if self._up_since is not None else "export"

    def _follow(self, target):
        """Down at once, up by at most RAISE_STEP_A per reading."""
        lim = self.limit_a
        if not lim or target < lim:
            self.limit_a = target
        else:
            self.limit_a = min(target, lim + RAISE_STEP_A)

    def view(self, now):
        """The Charger State page's solar line (/api/status `solar`)."""
        wait = None
        if self.reason == "start_delay" and self._up_since is not None:
            left = self.pm.settings["solar_start_s"] - time.ticks_diff(now, self._up_since) // 1000
            wait = max(0, left)
        stop = None
        if self.running and self._low_since is not None:
            left = self.pm.settings["solar_stop_s"] - time.ticks_diff(now, self._low_since) // 1000
            stop = max(0, left)
        sess = getattr(self.pm.ch, "session", None)
        wh = getattr(sess, "solar_wh", 0.0) if sess is not None else None
        return {
            "mode": self.mode,
            "grid_w": None if self.grid_w is None else round(self.grid_w),
            "surplus_a": self.surplus_a,
            "phases": self.phases,
            "limit_a": self.limit_a,
            "running": self.running,
            "waiting": self.reason,
            "need_w": None if self.need_w is None else round(self.need_w),
            "start_in_s": wait,
            "stop_in_s": stop,
            "session_solar_kwh": None if wh is None else round(wh / 1000, 3),
        }
