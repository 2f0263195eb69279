# Charge records and fault reports: bounded, power-safe logs in the data directory, and
# the Session the charger runs, which becomes the record.
#
# Each record is one JSON object in a CRC-checked record log (lib/recordlog): after a
# power cut a record is either whole or absent, and the oldest roll off. The active
# session is also kept in session.json so a charge cut by a power loss is closed (stop
# mode "PowerLoss") at the next boot with the energy last seen.
import json

import atomicfile
import jsonout
import log
import recordlog

_log = log.get("history")

MAX_SESSIONS = 200
MAX_FAULTS = 200

# The session the charger runs (charger.session) is the record kept here when it ends.
SESSION_SAMPLES = 48  # power samples kept per session record (history chart)

# Session start/stop modes as the history shows them.
START_MODES = ("RFID", "Free", "OCPP", "App")


_serial = 0  # numbers the sessions of this boot (History.started / ended)


class Session:
    def __init__(self, id_tag, start_mode, start_s, start_wh):
        global _serial
        _serial += 1
        self.serial = _serial
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


def _iso(epoch_s):
    if not epoch_s:
        return None
    import time

    # MicroPython's gmtime counts from 1970 on the unix port and from 2000 on some MCUs;
    # the board RTC always speaks 1970 epoch seconds, so convert explicitly.
    t = time.gmtime(epoch_s - _EPOCH_SHIFT)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6]


def _solar(rec, wh):
    """`solar_kwh`: of the session's energy, how much came from export. Counted only in
    the charge modes solar and solar_min (evse/solar.py): absent otherwise."""
    if isinstance(wh, (int, float)) and not isinstance(wh, bool):
        rec["solar_kwh"] = round(wh / 1000, 3)


def _epoch_shift():
    import time

    return 0 if time.gmtime(0)[0] == 1970 else 946684800


_EPOCH_SHIFT = _epoch_shift()


class History:
    def __init__(self, data_dir, clock):
        self._dir = data_dir
        self._clock = clock  # () -> epoch seconds (the board RTC)
        self.sessions = recordlog.RecordLog(data_dir, "sessions", MAX_SESSIONS, 512)
        self.faults = recordlog.RecordLog(data_dir, "faults", MAX_FAULTS, 512)
        self._open_path = data_dir + "/session.json"
        self.listeners = []  # fn(kind, record) after a record is stored (OCPP, web)
        # The serials of the last sessions whose open file / record is on disk: OCPP
        # reports a start or an end only after it is stored here, so a power cut never
        # leaves a transaction the history does not have. Serials, not the sessions: eight
        # finished sessions with their power profiles held 1-2 KB of a board's heap.
        self.started = []
        self.ended = []
        self.recovered = None  # the session closed as PowerLoss at this boot, if any

    # ---- sessions ------------------------------------------------------------------------
    def session_started(self, s):
        self._save_open(s)
        _keep(self.started, s.serial)
        for fn in self.listeners:
            fn("open", None)

    def session_progress(self, s):
        """Called about once a minute with the running session (energy so far)."""
        self._save_open(s)

    def _save_open(self, s):
        atomicfile.save_json(
            self._open_path,
            {
                "id_tag": s.id_tag,
                "start_mode": s.start_mode,
                "start_s": s.start_s,
                "energy_wh": s.energy_wh,
                "tx_id": s.tx_id,
                "power_dkw": s.power_dkw,
                "sample_s": s.sample_s,
                "pauses": s.pauses,
                "solar_wh": getattr(s, "solar_wh", None),  # evse/solar.py
                # the number its record will get: sessions are recorded one at a time
                "no": self.sessions.last_seq + 1,
            },
        )

    def session_ended(self, s):
        _keep(self.ended, s.serial)
        return self._close(
            {
                "start": _iso(s.start_s),
                "end": _iso(s.end_s),
                "start_mode": s.start_mode,
                "stop_mode": s.stop_mode,
                "energy_kwh": round(s.energy_wh / 1000, 3),
                "id": s.id_tag,
                # power over the session, 0.1 kW every `sample_s` (the history chart)
                "power_dkw": s.power_dkw,
                "sample_s": s.sample_s,
                # how often the offer stopped while the session went on (docs/errors.md)
                "pauses": s.pauses,
            },
            solar_wh=getattr(s, "solar_wh", None),
        )

    def recover_open_session(self, now_s):
        """A session still open at boot was cut by a power loss: close and record it."""
        data = atomicfile.load_json(self._open_path, lambda: None, _log.error)
        if not isinstance(data, dict):
            return None
        no = data.get("no")
        if isinstance(no, int) and self.sessions.last_seq >= no:
            # Recorded already: the cut came between the append and forgetting the file.
            self._forget_open()
            return None
        rec = self._close(
            {
                "start": _iso(data.get("start_s")),
                "end": _iso(now_s),
                "start_mode": data.get("start_mode"),
                "stop_mode": "PowerLoss",
                "energy_kwh": round((data.get("energy_wh") or 0) / 1000, 3),
                "id": data.get("id_tag"),
                "power_dkw": data.get("power_dkw") or [],
                "sample_s": data.get("sample_s") or 60,
                "pauses": data.get("pauses") or 0,
            },
            tx_id=data.get("tx_id"),
            solar_wh=data.get("solar_wh"),
        )
        _log.warning("session cut by a power loss recorded as No. %d", rec["no"])
        self.recovered = {"id_tag": data.get("id_tag"), "start_s": data.get("start_s"),
                          "end_s": now_s, "energy_wh": data.get("energy_wh") or 0}
        return rec

    def _close(self, rec, tx_id=None, solar_wh=None):
        """Appends a finished session, forgets the open one, tells the listeners."""
        _solar(rec, solar_wh)
        rec["no"] = self.sessions.append(json.dumps(rec).encode())
        if tx_id is not None:
            rec["tx_id"] = tx_id
        self._forget_open()
        for fn in self.listeners:
            fn("session", rec)
        return rec

    def _forget_open(self):
        # Every copy the atomic writer keeps: a .bak left behind would be taken for an
        # open session at the next boot and recorded a second time as PowerLoss.
        import os

        for suffix in (".tmp", ".bak", ""):
            try:
                os.remove(self._open_path + suffix)
            except OSError:
                pass

    def session_list(self, limit=50):
        return _list(self.sessions, limit)

    def session_records(self, limit=50, fix=None):
        """session_list for the web API: read one by one while the answer goes out."""
        return Records(self.sessions, limit, fix)

    # ---- faults ---------------------------------------------------------------------------
    def add_fault(self, code, values, now_s=None):
        rec = {"code": code, "t": _iso(now_s or self._clock()), "values": values}
        try:
            seq = self.faults.append(json.dumps(rec).encode())
        except (OSError, ValueError) as e:
            _log.error("fault record not stored: %r", e)
            return None
        rec["no"] = seq
        for fn in self.listeners:
            fn("fault", rec)
        return rec

    def fault_cleared(self, code):
        for fn in self.listeners:
            fn("fault_cleared", {"code": code})

    def fault_list(self, limit=50):
        return _list(self.faults, limit)

    def fault_records(self, limit=50, fix=None):
        return Records(self.faults, limit, fix)


def _keep(recent, s):
    recent.append(s)
    if len(recent) > 4:
        recent.pop(0)


class Records(jsonout.Lazy):
    """The newest `limit` records of a log as _list gives them (`fix(rec)` applied to
    each), produced one at a time: 200 records as one list or one JSON text would need
    more heap than a charger has. Counted first, then sent: the send takes only the
    records the count saw (an append or a roll-off in between changes nothing else)."""

    def __init__(self, records, limit, fix=None):
        super().__init__()
        self._log = records
        self._limit = limit
        self._fix = fix
        self._hi = self._lo = None  # the numbers the count saw, newest and oldest

    def items(self, counting):
        if not counting and self._hi is None:
            return
        hi = lo = None
        for seq, payload in self._log.records(True, self._limit if counting else None):
            if not counting:
                if seq > self._hi:
                    continue  # appended since the count
                if seq < self._lo:
                    return
            try:
                rec = json.loads(payload)
            except ValueError:
                continue
            rec["no"] = seq
            if self._fix is not None:
                self._fix(rec)
            if counting:
                if hi is None:
                    hi = seq
                lo = seq
            yield rec
        if counting:
            self._hi = hi
            self._lo = lo


def _list(records, limit):
    """The newest records of a log as dicts with their number; unreadable ones skipped."""
    out = []
    for seq, payload in records.records(True, limit):
        try:
            rec = json.loads(payload)
        except ValueError:
            continue
        rec["no"] = seq
        out.append(rec)
    return out

def iso(epoch_s):
    return _iso(epoch_s)
