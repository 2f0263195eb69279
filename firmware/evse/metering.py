# Internal (MID) meter: read about once a second, feed protection, account session energy.
import time

import log
from evse.protection import meter_valid

_log = log.get("metering")

# The phases the car draws on, as the internal meter measures them: a phase carrying
# PHASE_ON_A while the car draws at least CAR_ON_A on its strongest phase, over
# PHASE_READS readings in a row. Kept for the session and only ever widened (a car that
# adds a phase later counts on it from the next reading).
PHASE_ON_A = 1.0
CAR_ON_A = 3.0
PHASE_READS = 3


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
        # Bits L1-L3 (the charger's terminals) the car draws on in this session; None
        # until it has drawn for PHASE_READS readings: then the configured phases count.
        self.car_mask = None
        self._mask = 0
        self._mask_reads = 0
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
            self._car_phases()
            self._account(now_ms)
        self.prot.on_meter(now_ms, ok)

    def _due(self, now_ms):
        """At every reading, good or not: a sample or record whose time has come is
        marked due, so no time is compared days later (a meter out for a week), when
        the ticks wrap (2**29 ms on a 32-bit port) would make it read as negative."""
        s = self.ch.session
        if s is None:
            self._sample_ms = self._progress_ms = None  # a new session starts with both
            self.car_mask = None  # the next car is measured anew
            self._mask = self._mask_reads = 0
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

    def _car_phases(self):
        if self.ch.session is None:
            return
        a = self.amps
        if max(a) < CAR_ON_A:
            if self.car_mask is None:
                self._mask = self._mask_reads = 0  # readings in a row
            return
        m = 0
        for k in range(3):
            if a[k] >= PHASE_ON_A:
                m |= 1 << k
        self._mask |= m
        self._mask_reads += 1
        if self.car_mask is not None or self._mask_reads >= PHASE_READS:
            if self._mask != self.car_mask:
                _log.info("the car draws on phases %s", "".join(
                    str(k + 1) for k in range(3) if self._mask >> k & 1))
            self.car_mask = self._mask

    def view(self):
        return {
            "ok": self.ok,
            "volts": [round(v, 1) for v in self.volts],
            "amps": [round(a, 2) for a in self.amps],
            "hz": round(self.hz, 2),
            "power_w": round(self.power_w),
            "energy_wh": round(self.energy_wh),
            "car_phases": None if self.car_mask is None else [
                k + 1 for k in range(3) if self.car_mask >> k & 1],
        }
