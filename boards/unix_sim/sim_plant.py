# The simulated world outside the controller: the EV on the pilot line and its current
# draw, the cable's PP resistor, the mains, the temperatures, the injected faults and the
# WiFi uplink. The board's sensor objects read it; the control socket writes it.
#
# Faults are physical here (a contact that stays closed, a plateau that moves, a sensor
# that stops answering); deciding that something is wrong is the firmware's job.
from micropython import const

from cpduty import DUTY_F, DUTY_X1

from sim_wake import Sleeper

R1_OHM = 1000  # EVSE source resistor (STANDARDS.md §1.1)
R2_OHM = 2740  # EV: always across CP-PE behind the diode
R3_C_OHM = 1300  # EV: added by S2 in state C
R3_D_OHM = 270  # EV: added by S2 in state D (ventilation)
GEN_MV = const(12000)  # generator amplitude, +-12 V
DIODE_V = 0.8  # EV diode forward drop: puts B/C/D at 9.0/6.05/3.0 V, mid-window
SETTLE_US = const(500_000)  # the EV follows a new PWM offer after it held this long
LIVE_V = 50  # a phase below this voltage is missing: it carries no current
# A car asleep in B wakes on the sequence of IEC 61851-1:2017 A.5.3 (STANDARDS.md §1.4:
# F 4 s, X1 0.75 s, then the PWM), each part with some tolerance, and closes S2 once the
# PWM that followed has lasted WAKE_CLOSE_US.
WAKE_F_US = const(3_500_000)
WAKE_X1_US = const(500_000)
WAKE_CLOSE_US = const(1_000_000)

FAULTS = (
    "rcd_ac",
    "rcd_dc",
    "pe",
    "relay_weld",
    "relay_stuck_open",
    "lock",
    "fan",
    "cp_short",
    "diode",
    "internal_meter",
    "phase_rotation",
    "rfid_reader",
    # A driver bug: the temperature sensors' read() raises an unexpected exception, which
    # kills the protection task; the supervisor must make the charger safe and restart it.
    "sensor_bug",
)
RELAY_FAULTS = ("relay_weld", "relay_stuck_open")


def ev_ohms(state):
    """Resistance the EV puts between CP and PE behind its diode; None when unplugged."""
    if state == "B":
        return R2_OHM
    if state == "C":
        return R2_OHM * R3_C_OHM / (R2_OHM + R3_C_OHM)
    if state == "D":
        return R2_OHM * R3_D_OHM / (R2_OHM + R3_D_OHM)
    return None


def line_mv(gen_mv, ev_ohm, diode, diode_v):
    """CP line voltage (mV) behind R1 while the generator drives gen_mv."""
    if ev_ohm is None:
        return gen_mv  # no load: no current through R1
    if not diode:
        return int(round(gen_mv * ev_ohm / (ev_ohm + R1_OHM)))
    vd_mv = diode_v * 1000
    if gen_mv <= vd_mv:
        return gen_mv  # the diode blocks: no current, the line sits at the generator
    return int(round(vd_mv + (gen_mv - vd_mv) * ev_ohm / (ev_ohm + R1_OHM)))


def plateaus(duty_pm, pos_mv, neg_mv):
    """(hi_mv, lo_mv) the EVSE samples for a generator mode (duty per-mille, -1, -2)."""
    if duty_pm == DUTY_X1 or duty_pm >= 1000:
        return pos_mv, pos_mv  # static +12 V: no low phase to sample
    if duty_pm == DUTY_F or duty_pm == 0:
        return neg_mv, neg_mv  # static -12 V: no high phase
    return pos_mv, neg_mv


def offered_a(duty_pm):
    """Current the EV may draw for a duty (IEC 61851-1 EV-side table, STANDARDS.md §1.3)."""
    if duty_pm < 80 or duty_pm > 970:
        return 0.0  # static, digital mode (3-7 %), or out of range: no charge
    if duty_pm < 100:
        return 6.0  # 8-10 %
    if duty_pm <= 850:
        return duty_pm * 0.06
    if duty_pm <= 960:
        return (duty_pm / 10 - 64) * 2.5
    return 80.0


class Plant:
    def __init__(self):
        # EV (`ev` op)
        self.ev_state = "A"
        self.ev_diode = True
        self.ev_diode_v = DIODE_V
        self.ev_max_a = 32.0
        self.ev_draw_a = None  # forced draw (misbehaving EV), None = follows the PWM
        self.ev_phases = 1
        self.ev_start_min_a = 0.0  # it draws nothing while offered less (Zoe, Kangoo: ~8 A)
        self.ev_start_s = 0.0  # it draws only this long after the contacts closed in C/D
        self._on_us = None  # when current could first flow (contacts closed, in C/D)
        self._now_us = 0
        self.ev_offer_a = 0.0  # the PWM offer the EV is following (lags the PWM)
        # A car that stops asking after `ev_gives_up_after` interruptions (the PWM stopped
        # while it was in C or D): it goes to B and stays there. None: never.
        self.ev_gives_up_after = None
        self.ev_interruptions = 0
        self.ev_gave_up = False
        self._ev_pwm = False
        self.ev_follow_us = None  # time to follow a lower offer or a stop (None: SETTLE_US)
        self._seen_offer_a = 0.0
        self._seen_us = 0
        self.ev_asleep = False  # in B, deaf to the PWM until the wake-up sequence
        self._sleep = Sleeper(WAKE_F_US, WAKE_X1_US, WAKE_CLOSE_US)  # the pilot as it sees it
        # cable (`cable` op), mains (`grid`), sensors (`temp`)
        self.pp_ohms = 220  # a 32 A cable left in the socket; `cable null` unplugs it
        self.grid_v = [230.0, 230.0, 230.0]
        self.grid_hz = 50.0
        self.relay_c = 25.0
        self.socket_c = 25.0
        self.env_c = 25.0
        self.faults = {}  # name -> True while active (relay faults live in the Relays)
        # what flows, and the meter's register
        self.amps = [0.0, 0.0, 0.0]
        self.power_w = 0.0
        self.energy_wh = 0.0
        self._last_us = None
        # operator inputs with a deadline (0 = none)
        self.button_until_us = 0
        self.card_until_us = 0
        self.card = None  # (uid hex, kind) while on the reader
        # WiFi (`wifi` op): scan results as (ssid, rssi, auth), uplink state, AP clients
        self.wifi_networks = []
        self.wifi_up = True
        self.ap_clients = 0
        # pilot line levels for each generator polarity, kept current by update_cp()
        self.cp_pos_mv = GEN_MV
        self.cp_neg_mv = -GEN_MV
        # The charger's own pilot within its tolerances (`pilot` op): the generator's
        # levels, and the zero error of the ADC that reads the line (added to readings).
        self.gen_pos_mv = GEN_MV
        self.gen_neg_mv = -GEN_MV
        self.adc_zero_mv = 0
        self._cp = None
        self._relays = None
        self._chip = None

    def attach(self, cp, relays, chip):
        """The actuators whose outputs drive the physics (set once by the board)."""
        self._cp = cp
        self._relays = relays
        self._chip = chip

    def fault(self, name):
        return bool(self.faults.get(name, False))

    def set_fault(self, name, active, times=None):
        """times: the fault acts that many times, then clears itself (None: until
        cleared)."""
        if active:
            self.faults[name] = True if times is None else times
        else:
            self.faults.pop(name, None)
        if name == "cp_short" or name == "diode":
            self.update_cp()

    def spend(self, name):
        """A fault with a count acted once more: one fewer left."""
        left = self.faults.get(name)
        if left is not True and left is not None:
            if left <= 1:
                del self.faults[name]
            else:
                self.faults[name] = left - 1

    def update_cp(self):
        """Recomputes the pilot levels after an EV or fault change (not ISR-safe: floats)."""
        if self.fault("cp_short"):
            self.cp_pos_mv = 0  # CP shorted to PE: state E
            self.cp_neg_mv = 0
            return
        r = ev_ohms(self.ev_state)
        diode = self.ev_diode and not self.fault("diode")
        self.cp_pos_mv = line_mv(self.gen_pos_mv, r, diode, self.ev_diode_v)
        self.cp_neg_mv = line_mv(self.gen_neg_mv, r, diode, self.ev_diode_v)

    def tick(self, now_us):
        """Advances the physics to now_us: energy, EV response, timed inputs."""
        last = self._last_us
        self._last_us = now_us
        self._now_us = now_us
        if last is not None:
            # The power of the last interval held until now (it changes only at ticks).
            self.energy_wh += self.power_w * (now_us - last) / 3.6e9
        self._watch_sleep(now_us)
        self._follow_pwm(now_us)
        self._count_interruptions()
        self.update_draw()
        if self.button_until_us and now_us >= self.button_until_us:
            self.button_until_us = 0
        if self.card_until_us and now_us >= self.card_until_us:
            self.card_until_us = 0
            self.card = None
        self._chip.tick(now_us)  # the chip drops the cards whose time is up

    def _watch_sleep(self, now_us):
        asleep = self.ev_asleep and self.ev_state == "B"
        if self._sleep.see(now_us, self._cp.duty_pm, asleep):
            self.ev_asleep = False
            self.ev_state = "C"
            self.update_cp()

    def set_follow_s(self, s):
        """`ev follow_s`: seconds the EV takes to follow a lower offer, a stop of the PWM
        (X1) included; it goes on drawing the old current that long. None: SETTLE_US."""
        self.ev_follow_us = None if s is None else int(s * 1_000_000)

    def _follow_pwm(self, now_us):
        offer = offered_a(self._cp.duty_pm)
        settle = SETTLE_US
        if self.ev_follow_us is not None and offer < self.ev_offer_a:
            settle = self.ev_follow_us
        if offer != self._seen_offer_a:
            self._seen_offer_a = offer
            self._seen_us = now_us
        elif offer != self.ev_offer_a and now_us - self._seen_us >= settle:
            self.ev_offer_a = offer

    def _count_interruptions(self):
        pwm = self._cp.duty_pm > 0
        if self._ev_pwm and not pwm and self.ev_state in ("C", "D"):
            self.ev_interruptions += 1
            n = self.ev_gives_up_after
            if n and self.ev_interruptions >= n:
                self.ev_state = "B"  # opens S2 and asks no more
                self.ev_gave_up = True
                self.update_cp()
        self._ev_pwm = pwm

    def update_draw(self):
        """Per-phase current: flows in C/D only through closed contacts on live phases."""
        r = self._relays
        neutral = r.contact(2)  # relay 2 switches L3 + N, relay 1 switches L1 + L2
        l12 = r.contact(1)
        requesting = (self.ev_state == "C" or self.ev_state == "D") and not self.fault(
            "cp_short"
        )
        if self.ev_draw_a is not None:
            want = self.ev_draw_a
        else:
            want = min(self.ev_offer_a, self.ev_max_a)
        if not (requesting and neutral and l12):
            self._on_us = None
        elif self._on_us is None:
            self._on_us = self._now_us
        if self.ev_draw_a is None and self._on_us is not None and (
                want < self.ev_start_min_a
                or self._now_us - self._on_us < self.ev_start_s * 1e6):
            want = 0.0  # a slow starter: not yet, or not at so little current
        power = 0.0
        for i in range(3):
            line = l12 if i < 2 else neutral
            on = requesting and neutral and line and i < self.ev_phases
            a = want if on and self.grid_v[i] >= LIVE_V else 0.0
            self.amps[i] = a
            power += a * self.grid_v[i]
        self.power_w = power

    def pilot_view(self):
        return {
            "offset_v": self.adc_zero_mv / 1000,
            "gen_pos_v": self.gen_pos_mv / 1000,
            "gen_neg_v": self.gen_neg_mv / 1000,
        }

    def ev_view(self):
        return {
            "state": self.ev_state,
            "diode": self.ev_diode,
            "diode_v": self.ev_diode_v,
            "max_a": self.ev_max_a,
            "draw_a": self.ev_draw_a,
            "phases": self.ev_phases,
            "asleep": self.ev_asleep,
            "start_min_a": self.ev_start_min_a,
            "start_s": self.ev_start_s,
            "following_a": self.ev_offer_a,
            "gives_up_after": self.ev_gives_up_after,
            "interruptions": self.ev_interruptions,
            "gave_up": self.ev_gave_up,
            "follow_s": None if self.ev_follow_us is None else self.ev_follow_us / 1e6,
            "amps": list(self.amps),
        }
