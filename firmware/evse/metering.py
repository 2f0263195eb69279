# Internal (MID) meter: read about once a second, feed protection, account session energy.
import time

import log
from evse.protection import meter_valid

_log = log.get("metering")


class Metering:
    def __init__(self, hw, charger, protection, history):
        self.hw = hw
        self.ch = charger
        self.prot = protection
        self.history = history
        self.ok = False
        self.volts = [0.0, 0.0, 0.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 0.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True
        # The session's last power sample and progress record; None: one is due.
        self._progress_ms = None
        self._sample_ms = None

    def read(self, now_ms):
        m = self.hw.meter
        try:
            m.read()
            ok = True
        except OSError as e:
            if self.ok:
                _log.error("internal meter not answering: %r", e)
            ok = False
        if ok and not meter_valid(m):
            ok = False  # NaN/inf: neither shown nor counted (protection raises MET)
        self.ok = ok
        self._due(now_ms)
        if ok:
            self.volts = list(m.volts)
            self.amps = list(m.amps)
            self.hz = m.hz
            self.power_w = m.power_w
            self.energy_wh = m.energy_wh
            # Phase sequence is information (OCPP ConnectorPhaseRotation), not a fault:
            # a vehicle's on-board charger does not care about the rotation.
            self.rotation_ok = m.rotation_ok
            self.prot.readings = {"volts": self.volts, "amps": self.amps}
            self._account(now_ms)
        self.prot.on_meter(now_ms, ok)

    def _due(self, now_ms):
        """At every reading, good or not: a sample or record whose time has come is
        marked due, so no time is compared days later (a meter out for a week), when
        the ticks wrap (2**29 ms on a 32-bit port) would make it read as negative."""
        s = self.ch.session
        if s is None:
            self._sample_ms = self._progress_ms = None  # a new session starts with both
            return
        t = self._sample_ms
        if t is not None and time.ticks_diff(now_ms, t) >= s.sample_s * 1000:
            self._sample_ms = None
        t = self._progress_ms
        if t is not None and time.ticks_diff(now_ms, t) >= 60000:
            self._progress_ms = None

    def _account(self, now_ms):
        s = self.ch.session
        if s is None:
            return
        used = self.energy_wh - s.start_wh
        if used < 0:  # register restarted (meter replaced): count from here
            s.start_wh = self.energy_wh - s.energy_wh
            used = s.energy_wh
        s.energy_wh = used
        if self._sample_ms is None:
            self._sample_ms = now_ms
            s.add_power_sample(self.power_w)
        if self._progress_ms is None:
            self._progress_ms = now_ms
            self.history.session_progress(s)

    def view(self):
        return {
            "ok": self.ok,
            "volts": [round(v, 1) for v in self.volts],
            "amps": [round(a, 2) for a in self.amps],
            "hz": round(self.hz, 2),
            "power_w": round(self.power_w),
            "energy_wh": round(self.energy_wh),
        }
