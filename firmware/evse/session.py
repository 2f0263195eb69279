# A charging session as the charger runs it and the history keeps it: who started it and
# how, its energy, pauses and wake-ups, and its power over time for the chart.

SESSION_SAMPLES = 48  # power samples kept per session record (history chart)

# Session start/stop modes as the history shows them.
START_MODES = ("RFID", "Free", "OCPP", "App")


class Session:
    def __init__(self, id_tag, start_mode, start_s, start_wh):
        self.id_tag = id_tag
        self.start_mode = start_mode
        self.start_s = start_s
        self.start_wh = start_wh
        self.energy_wh = 0.0
        self.stop_mode = None
        self.end_s = None
        self.charged = False  # relays closed at least once
        self.pauses = 0  # the PWM offer stopped while the session went on (any cause)
        self.tx_id = None  # set by OCPP
        self.wakeups = 0  # wake-up sequences run for a car asleep in B2
        # Power over the session for the history chart: one sample per `sample_s`, in
        # 0.1 kW; when full, pairs are averaged and the interval doubles (bounded).
        self.power_dkw = []
        self.sample_s = 60

    def add_power_sample(self, power_w):
        p = self.power_dkw
        p.append(int(power_w / 100 + 0.5))
        if len(p) >= SESSION_SAMPLES:
            self.power_dkw = [(p[i] + p[i + 1] + 1) // 2 for i in range(0, len(p) - 1, 2)]
            self.sample_s *= 2

    def as_dict(self):
        return {
            "active": self.stop_mode is None,
            "energy_kwh": round(self.energy_wh / 1000, 3),
            "id_tag": self.id_tag,
            "start_mode": self.start_mode,
            "start_s": self.start_s,
            "duration_min": 0,
            "wakeups": self.wakeups,
            "pauses": self.pauses,
        }
