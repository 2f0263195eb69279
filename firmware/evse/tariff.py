# Capacity tariff: the grid import averaged over the tariff's window (15 min in Belgium)
# kept under `tariff_limit_w` (docs/power-management.md, "Capacity tariff").
#
# Every reading of the grid meter adds its import to the window's energy E. For the rest
# of the window (r seconds of T) the grid may then import at most
#
#     G = (MARGIN x limit x T - E) / r
#
# and the charger's share of that, per phase it charges on, is
#
#     plan = (G - (grid power - its own power)) / (phases x voltage)
#
# fed to the charging core as the named limit "tariff": composed with the others
# (evse/limits.py), it can only lower the offer. Down at once, up by at most RAISE_STEP_A
# per reading; below 6 A the charge pauses, and resumes once the plan has stayed at the
# start current + RESUME_HYST_A for RESUME_HOLD_MS and solar_min_on_s has passed since
# the last start (the charger's offer rising from 0, whoever raised it). Windows follow
# the wall clock (multiples of the window since 1970: the quarter hours of the meter
# operator) once the RTC is set, else they count from the first reading. Time the
# charger did not see (before it started, in the middle of a window; a gap in the
# readings) counts as imported at the limit. No meter, a lost one or one without power
# readings: a pause.
#
# In a load balancing pool it runs on the master only, for the pool (docs/load-balancing.md,
# "Capacity tariff in a pool"): its own power is the pool's, the phases and the start
# current the pool's (evse/balance/pooltariff.py), it pauses below the pool's minimum, and
# its limit caps the pool's budget instead of feeding "tariff".
#
# Imported by evse/power.py only while tariff_limit_w is set (in a pool: on its master).
import time

from evse import limits
from evse.power import RAISE_STEP_A, RESUME_HOLD_MS, RESUME_HYST_A
import log

_log = log.get("tariff")

LIMIT_NAME = "tariff"  # the module's name: power._feature removes the limit by it
MARGIN = 0.97  # the plan's share of the limit: the meter's second and the car's reaction
RTC_SET_S = 1609459200  # the RTC shows 2021 or later: set (an unset one starts in 1970/2000)
_MAX_GAP_MS = 5000  # a longer gap between readings counts at the limit (unknown import)


class Tariff:
    def __init__(self, pm):
        self.pm = pm
        self.window_s = None  # the window in use, in seconds
        self.win_id = None  # its number since 1970 (aligned), or None
        self.start_ms = None  # its start on the ticks (not aligned)
        self.into_ms = 0  # how far into the window
        self.left_ms = 0  # and what is left of it
        self.energy_ws = 0.0  # grid import in the window (W s)
        self.last_avg_w = None  # the average of the last window that ended
        self.grid_w = None  # the last reading's signed power (import > 0)
        self.plan_a = None  # the current the rest of the window allows, per phase
        self.limit_a = None  # the "tariff" limit fed to the charger
        self.paused = False
        self.reason = None  # the meter's part in a pause (no_meter, meter_lost, ...)
        self._seen_ms = None  # the reading whose import was last counted
        self._up_since = None  # plan at the start current + RESUME_HYST_A since
        self._up_ok = False  # ... for RESUME_HOLD_MS (a flag: the ticks wrap)
        self._on_since = None  # the charge's last start
        self._on_ok = True  # ... and solar_min_on_s has passed since
        self._offered = False  # the charger offered current at the last step
        # In a pool, on its master (evse/balance/pooltariff.py cap): the plan covers one
        # more node since; the nodes charging at the last cycle; each node's last start.
        self.pool_up = None
        self.pool_on = ()
        self.pool_starts = {}

    def step(self, now, ok):
        """After each power cycle (`ok`: a fresh valid reading in pm.values)."""
        pm = self.pm
        s = pm.settings
        limit_w = s["tariff_limit_w"]
        self._window(now, limit_w, s["tariff_window_min"] * 60)
        if pm.model in ("none", "auto"):
            self._stop("no_meter")
        elif pm.lost:
            self._stop("meter_lost")
        elif ok:
            self._measure(now, limit_w, s)
        elif pm.last_ok_ms is None:
            self._stop("no_reading")
        # else: a read that failed, not yet a lost meter: the last limit stays
        pool = pm.pool
        if pool is None:
            offered = getattr(pm.ch, "offered_a", 0)
        else:
            from evse.balance import pooltariff

            offered = pooltariff.offered(pool)
        if offered and not self._offered:
            # The charge starts (a car, solar, power management, a resume of ours): a
            # pause may follow at once, a resume only solar_min_on_s after this start.
            self._on_since = now
            self._on_ok = False
        self._offered = bool(offered)
        if not self._on_ok and limits.held(now, self._on_since, s["solar_min_on_s"] * 1000):
            self._on_ok = True
        # In a pool the limit caps the pool's budget (node.py): not the charger's as well.
        pm.ch.set_external_limit(LIMIT_NAME, self.limit_a if pool is None else None)

    def _window(self, now, limit_w, win_s):
        """Which window `now` is in. A new one starts with no energy: its counting starts
        at its start (_seen_ms), so the next reading counts the part before it that the
        charger did not see (more than _MAX_GAP_MS: at the limit), and the stamp is never
        older than a window (a meter lost for days would read as the future once the
        ticks wrap)."""
        rtc = self.pm.rtc
        t = rtc() if rtc is not None else 0
        win_ms = win_s * 1000
        same = win_s == self.window_s
        if t >= RTC_SET_S:
            into = t % win_s * 1000
            new = t // win_s != self.win_id or not same
            if new and self.win_id is None and same:
                # The clock was just set: the energy counted so far stays (it may span
                # more than this window: the high side), the part not seen counts.
                self.energy_ws += limit_w * max(0, into - self.into_ms) / 1000
                new = False
            self.win_id = t // win_s
            self.start_ms = None
        else:
            into = 0 if self.start_ms is None else time.ticks_diff(now, self.start_ms)
            if self.win_id is not None and same:
                # The clock no longer shows a set time (set back before 2021): the window
                # goes on from where it was, with its energy, on the ticks.
                into = self.into_ms
                self.start_ms = time.ticks_add(now, -into)
            self.win_id = None
            new = self.start_ms is None or not same or into >= win_ms or into < 0
            if into >= win_ms and into < 2 * win_ms and same:
                self.start_ms = time.ticks_add(self.start_ms, win_ms)
                into -= win_ms
            elif new:
                self.start_ms = now  # the first window, or after a stall past a whole one
                into = 0
        if new:
            if same and self.window_s:
                self.last_avg_w = self.energy_ws / self.window_s
            self.window_s = win_s
            self.energy_ws = 0.0
            self._seen_ms = time.ticks_add(now, -into)
        self.into_ms, self.left_ms = into, win_ms - into

    def _stop(self, why):
        self.reason = why
        self.paused = True
        self.limit_a = 0.0
        self.plan_a = None
        self.grid_w = None
        self._up_since = None
        self._up_ok = False

    def _measure(self, now, limit_w, s):
        from evse import meters  # a valid reading: imported with the meter's map

        pm = self.pm
        v = pm.values
        p = meters.total_w(v)
        last = self._seen_ms
        self._seen_ms = now
        if last is not None:
            dt = time.ticks_diff(now, last)
            if dt > self.into_ms or dt < 0:
                dt = self.into_ms  # the part of the interval in this window
            if dt > _MAX_GAP_MS:
                self.energy_ws += limit_w * dt / 1000  # unseen: at the limit
            elif dt > 0:
                prev = self.grid_w or 0.0
                self.energy_ws += max(0.0, p or 0.0, prev) * dt / 1000
        if p is None:
            self._stop("no_power")  # the meter gives currents only: no direction
            return
        self.grid_w = p
        u = meters.volts(v)
        if pm.pool is None:
            own_w = meters.own_w(pm, u)
            n = meters.charge_phases(pm)
            start = limits.start_a(s)
            low = limits.MIN_A
        else:  # the pool's power, its phases and its minimum (a pause below it)
            from evse.balance import pooltariff

            own_w, n, start = pooltariff.part(pm.pool, pm, u, s)
            low = start
        left_s = max(self.left_ms, 1000) / 1000
        grid_max = (MARGIN * limit_w * self.window_s - self.energy_ws) / left_s
        plan = limits.floor_tenth((grid_max - (p - own_w)) / (n * u))
        self.plan_a = plan = max(0.0, plan)
        if plan >= start + RESUME_HYST_A:
            if self._up_since is None:
                self._up_since = now
            elif not self._up_ok and limits.held(now, self._up_since, RESUME_HOLD_MS):
                self._up_ok = True
        else:
            self._up_since = None
            self._up_ok = False
        lim = self.limit_a
        if lim is None:  # the first reading: taken as it is
            self.paused = plan < start
            self.limit_a = 0.0 if self.paused else plan
        elif self.paused:
            if self._up_ok and self._on_ok:
                _log.info("resume, %.1f A in the window's budget", plan)
                self.paused = False
                self._on_since = now
                self._on_ok = False
                self.limit_a = min(plan, start + RAISE_STEP_A)
            else:
                self.limit_a = 0.0
        elif plan < low:
            _log.info("pause, %.1f A in the window's budget", plan)
            self.paused = True
            self.limit_a = 0.0
        elif plan < lim:
            self.limit_a = plan  # the house needs it: cut at once
        else:
            self.limit_a = min(plan, lim + RAISE_STEP_A)
        self.reason = None  # a pause at the limit: `paused`, the window's figures say why

    def view(self):
        """The Charger State page's capacity tariff line (/api/status `tariff`)."""
        into = self.into_ms
        return {
            "limit_w": self.pm.settings["tariff_limit_w"],
            "window_min": None if self.window_s is None else self.window_s // 60,
            "aligned": self.win_id is not None,
            "avg_w": round(self.energy_ws * 1000 / into) if into >= 1000 else None,
            "last_avg_w": None if self.last_avg_w is None else round(self.last_avg_w),
            "left_s": self.left_ms // 1000,
            "grid_w": None if self.grid_w is None else round(self.grid_w),
            "plan_a": self.plan_a,
            "limit_a": self.limit_a,
            "paused": self.paused,
            "waiting": self.reason,
            "pool_master": None if self.pm.pool is None else self.pm.pool.master,
        }
