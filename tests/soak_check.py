"""The safety invariants of a running charger, checked on its own actuator events.

A `Watcher` is fed the firmware's event stream (`events` op of the simulator socket: each
relay, PWM, lock and error change with its `t_us`) and what the soak commanded on the
same clock (each simulator reply's `t_us`): the EV's pilot state, the authorizations
(card taps), the temperatures. It records a violation whenever (DEVELOPERS.md safety
rules, IEC 61851-1):

- the relays close outside state C, with a fault shown, without an authorized session,
  with the lock not engaged (Case B) or with no PWM offering at least 6 A;
- a fault is reported while the relays are still closed (they must open first);
- the relays stay closed after the vehicle left C (Annex A seq. 8.1: 100 ms; OPEN_S here),
  or longer than FORCE_OPEN_S after the PWM stopped with the vehicle still in C (seq. 10.2);
- the duty offers more than the configured maximum, the cable or the thermal derating.
"""

MIN_A = 6.0
CABLE_A = 32.0  # the simulator's cable at boot (220 ohm)
MODEL_A = 32.0
FORCE_OPEN_S = 6.0  # docs/errors.md, charger.py: PWM stopped, EV still in C
# Reaction allowances measured on the firmware clock. The rules are 100 ms (vehicle leaves
# C) and "at once" (a derating); the firmware runs its control tick every 100 ms, and on a
# shared 2-core machine its event loop can lag: these are the widened bounds.
OPEN_S = 0.5
REDUCE_S = 1.0
SLACK_S = 0.5  # on top of FORCE_OPEN_S
RELAY_DERATE_C = (70.0, 85.0)  # docs/errors.md (ROT): 32 A at 70 C down to 6 A at 85 C
SOCKET_DERATE_C = (60.0, 75.0)  # (OCT)
LATCHING = ("IRD", "PE", "R12", "R3N", "ELK")  # docs/errors.md: end the session


def duty_to_amps(pct):
    """The current a PWM duty offers (IEC 61851-1 Table A.8)."""
    if pct is None or pct < 8 or pct > 97:
        return 0.0
    if pct < 10:
        return 6.0
    if pct <= 85:
        return pct * 0.6
    return (pct - 64) * 2.5


def thermal_cap(relay_c, socket_c):
    cap = MODEL_A
    for temp, (start, trip) in ((relay_c, RELAY_DERATE_C), (socket_c, SOCKET_DERATE_C)):
        if temp is None or temp <= start:
            continue
        frac = (trip - temp) / (trip - start)
        cap = min(cap, MIN_A + (MODEL_A - MIN_A) * frac if frac > 0 else 0.0)
    return cap


class Watcher:
    """One charger's invariants. `free`: auth_mode free (a plugged vehicle is authorized);
    `case_b`: a lock must confirm before the relays close."""

    def __init__(self, name, max_a, free=False, case_b=True):
        self.name = name
        self.max_a = float(max_a)
        self.free = free
        self.case_b = case_b
        self.violations = []
        self.ev = [(0, "A")]  # (t_us, commanded pilot state)
        self.auth = []  # [t_open, t_close or None]: card-authorized windows
        self.temps = [(0, 25.0, 25.0)]  # (t_us, relay_c, socket_c)
        self.relays = False
        self.relays_t = 0
        self.duty = None
        self.pwm_stop_t = None  # PWM stopped while the relays were closed
        self.lock = "unlocked"
        self.errors = set()
        self.last_t = -1
        self.closes = 0
        self.max_duty_a = 0.0
        self.gaps = 0

    # ---- what the soak commanded ----------------------------------------------------------
    def ev_state(self, t_us, state):
        self.ev.append((t_us, state))

    def authorized(self, t_us):
        if not self.auth or self.auth[-1][1] is not None:
            self.auth.append([t_us, None])

    def deauthorized(self, t_us):
        if self.auth and self.auth[-1][1] is None:
            self.auth[-1][1] = t_us

    def temp(self, t_us, relay_c, socket_c):
        self.temps.append((t_us, relay_c, socket_c))

    # ---- timelines -----------------------------------------------------------------------
    @staticmethod
    def _at(series, t_us):
        out = series[0]
        for item in series:
            if item[0] > t_us:
                break
            out = item
        return out

    def _ev_at(self, t_us):
        return self._at(self.ev, t_us)[1]

    def _left_c_at(self, t_us):
        """When the vehicle last left C at or before t_us (None if it is in C then)."""
        if self._ev_at(t_us) in ("C", "D"):
            return None
        left = None
        prev = "A"
        for t, s in self.ev:
            if t > t_us:
                break
            if prev in ("C", "D") and s not in ("C", "D"):
                left = t
            prev = s
        return left

    def _authorized_at(self, t_us):
        if self.free:
            # Plugged since the last unplug: the firmware's free mode starts a session.
            return self._ev_at(t_us) != "A"
        return any(lo <= t_us and (hi is None or t_us < hi) for lo, hi in self.auth)

    def _cap_at(self, t_us):
        """The largest offer allowed at t_us: a reduction gets REDUCE_S to apply."""
        caps = []
        for when in (t_us, t_us - int(REDUCE_S * 1e6)):
            _, relay_c, socket_c = self._at(self.temps, when)
            caps.append(thermal_cap(relay_c, socket_c))
        return min(self.max_a, CABLE_A, max(caps))

    def _bad(self, t_us, what):
        self.violations.append(f"{self.name} t={t_us / 1e6:.3f}s: {what}")

    # ---- the event stream ----------------------------------------------------------------
    def feed(self, events):
        """Events after the last one fed (the caller asks with since=last_t + 1)."""
        for e in events:
            t, what, value = e["t_us"], e["what"], e["value"]
            if t <= self.last_t:
                continue
            self.check_time(t)
            self.last_t = t
            if what == "relays":
                self._on_relays(t, value)
            elif what == "pwm_duty_pct":
                self._on_pwm(t, value)
            elif what == "lock":
                self.lock = value
            elif what == "error":
                if e.get("active"):
                    if self.relays:
                        self._bad(t, f"fault {value} reported with the relays closed")
                    self.errors.add(value)
                    if value in LATCHING:
                        self.deauthorized(t)  # a latched trip ends the session
                else:
                    self.errors.discard(value)

    def _on_relays(self, t, closed):
        if closed and not self.relays:
            self.closes += 1
            why = []
            if self._ev_at(t) not in ("C",):
                why.append(f"vehicle in {self._ev_at(t)}")
            if self.errors:
                why.append(f"faults {sorted(self.errors)} shown")
            if not self._authorized_at(t):
                why.append("no authorized session")
            if self.case_b and self.lock != "locked":
                why.append(f"lock {self.lock}")
            if duty_to_amps(self.duty) < MIN_A:
                why.append(f"PWM offers {duty_to_amps(self.duty):.1f} A")
            if why:
                self._bad(t, "relays closed with " + ", ".join(why))
            self.pwm_stop_t = None if self.duty else t
        self.relays = bool(closed)
        self.relays_t = t
        if not closed:
            self.pwm_stop_t = None

    def _on_pwm(self, t, pct):
        self.duty = pct
        if pct is None:
            if self.relays and self.pwm_stop_t is None:
                self.pwm_stop_t = t
            return
        self.pwm_stop_t = None
        amps = duty_to_amps(pct)
        self.max_duty_a = max(self.max_duty_a, amps)
        cap = self._cap_at(t)
        if amps > cap + 0.05:
            self._bad(t, f"PWM {pct}% offers {amps:.1f} A above the limit {cap:.1f} A")

    def check_time(self, now_us):
        """Rules about how long the relays may stay closed, up to now_us."""
        if not self.relays:
            return
        left = self._left_c_at(now_us)
        if left is not None and left >= self.relays_t and now_us - left > OPEN_S * 1e6:
            self._bad(now_us, f"relays still closed {(now_us - left) / 1e6:.2f} s after the "
                              f"vehicle left C")
            self.relays = False  # reported once
        late = (FORCE_OPEN_S + SLACK_S) * 1e6
        if self.pwm_stop_t is not None and now_us - self.pwm_stop_t > late:
            self._bad(now_us, f"relays closed {(now_us - self.pwm_stop_t) / 1e6:.1f} s after the "
                              f"PWM stopped")
            self.pwm_stop_t = None
