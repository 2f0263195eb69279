# Smart charging (OCPP 1.6 §3.13): charging profiles -> the current limit of the
# connector, fed to the charging core as its named limit "ocpp".
#
# Per purpose the valid profile with the highest stackLevel that has a period at time t
# wins (before its start, past its duration or outside validFrom/validTo it steps aside
# for the next lower level). The limit of the connector is min(ChargePointMaxProfile,
# TxProfile else TxDefaultProfile); a connector-1 TxDefaultProfile beats one installed
# on connector 0. W are turned into A with the nominal 230 V and the period's
# numberPhases (§3.13), else the phases the car is measured to draw on, else the phases
# this charger is configured for; never fewer than the car is measured to draw on (the
# charger cannot make it use fewer: the power would exceed the limit). Profiles are
# kept in EVSE_DATA_DIR/ocpp_profiles.json with their dates already parsed (_vf, _vt,
# _ss epoch seconds; _c connector).
import atomicfile
import log

from evse.ocpp import isotime
from evse.ocpp.config import load_json
from evse.ocpp.rpc import RpcError

_log = log.get("ocpp.smart")

VOLTS = 230.0
MAX_STACK = 8
MAX_PERIODS = 24
MAX_PROFILES = 8
_PER = {"Daily": 86400, "Weekly": 604800}
_FILE_MAX = 12288  # MAX_PROFILES of MAX_PERIODS periods, as stored


def _start(p, t, tx_start):
    kind = p["chargingProfileKind"]
    if kind == "Relative":
        return t if tx_start is None else tx_start
    st = p["_ss"]
    if kind == "Recurring" and t >= st:
        per = _PER[p["recurrencyKind"]]
        st += (t - st) // per * per
    return st


def evaluate(p, t, tx_start):
    """(limit, unit, numberPhases or None) of profile p at epoch t, or None when it has
    none."""
    vf = p.get("_vf")
    vt = p.get("_vt")
    if (vf is not None and t < vf) or (vt is not None and t >= vt):
        return None
    s = p["chargingSchedule"]
    off = t - _start(p, t, tx_start)
    if off < 0:
        return None
    dur = s.get("duration")
    if dur is not None and off >= dur:
        return None
    hit = None
    for per in s["chargingSchedulePeriod"]:
        if per["startPeriod"] > off:
            break
        hit = per
    if hit is None:
        return None
    return hit["limit"], s["chargingRateUnit"], hit.get("numberPhases")


class Smart:
    def __init__(self, data_dir):
        self._path = data_dir + "/ocpp_profiles.json"
        # Why the stored profiles are unknown, or None. A store that is there but cannot
        # be read (or of which only an older copy, the .bak, can) may have held a ChargePointMaxProfile (a site limit): the service then
        # holds the charger at 6 A (chargepoint.STORE_LIMIT) until the central system installs
        # or clears profiles again, which rewrites the store.
        self.store_error = None
        bad = []
        prof = load_json(self._path, _FILE_MAX, bad.append).get("profiles", [] if not bad else None)
        if not isinstance(prof, list):
            prof = []
            bad.append("ocpp_profiles.json unreadable")
        if bad:
            self.store_error = bad[0]
            _log.error("%s: the charging profiles are unknown, 6 A until the central "
                       "system sets or clears profiles", bad[0])
        self.profiles = prof
        self.phases = 3  # phases this charger uses (charger.phases), set by the service
        # Phases the car draws on as the internal meter measures them (metering.car_mask
        # counted), None before it has drawn: set by the service before each limit.
        self.car_phases = None

    def _save(self):
        atomicfile.save_json(self._path, {"profiles": self.profiles})

    # ---- installing ------------------------------------------------------------------------
    def install(self, conn, prof, tx_id, now, msg_id="-1"):
        """SetChargingProfile: 'Accepted' or 'Rejected' (RpcError for a bad connector).
        tx_id: the running transaction's id (None when none runs; -1 when not known yet)."""
        if conn not in (0, 1):
            raise RpcError("PropertyConstraintViolation", "unknown connectorId", msg_id)
        purpose = prof["chargingProfilePurpose"]
        why = None
        if purpose == "ChargePointMaxProfile" and conn != 0:
            why = "ChargePointMaxProfile only on connector 0"
        elif purpose == "TxProfile":
            if conn == 0:
                why = "TxProfile needs a connector"
            elif tx_id is None:
                why = "no transaction running"
            elif "transactionId" in prof and prof["transactionId"] != tx_id:
                why = "transactionId is not the running transaction"
        if why is None:
            why = self.check(prof)
        if why:
            _log.info("profile %s rejected: %s", prof["chargingProfileId"], why)
            return "Rejected"
        p = dict(prof)
        p["_c"] = conn
        p["_vf"] = isotime.parse(prof["validFrom"]) if "validFrom" in prof else None
        p["_vt"] = isotime.parse(prof["validTo"]) if "validTo" in prof else None
        ss = prof["chargingSchedule"].get("startSchedule")
        p["_ss"] = isotime.parse(ss) if ss else now
        pid = p["chargingProfileId"]
        keep = [
            q for q in self.profiles
            if q["chargingProfileId"] != pid
            and not (q["chargingProfilePurpose"] == purpose and q["stackLevel"] == p["stackLevel"] and q["_c"] == conn)
        ]
        if len(keep) >= MAX_PROFILES:
            _log.info("profile %s rejected: %d installed", pid, len(keep))
            return "Rejected"
        keep.append(p)
        self.profiles = keep
        self._save()
        self.store_error = None  # the central system manages the profiles again
        _log.info("profile %s installed (%s, level %d, connector %d)", pid, purpose, p["stackLevel"], conn)
        return "Accepted"

    @staticmethod
    def check(prof):
        """Why a (schema-valid) profile cannot be installed, or None."""
        kind = prof["chargingProfileKind"]
        s = prof["chargingSchedule"]
        periods = s["chargingSchedulePeriod"]
        if prof["stackLevel"] < 0 or prof["stackLevel"] > MAX_STACK:
            return "stackLevel out of range"
        if not periods or len(periods) > MAX_PERIODS:
            return "1 to %d periods" % MAX_PERIODS
        last = -1
        for per in periods:
            if per["startPeriod"] <= last or per["limit"] < 0 or per.get("numberPhases", 3) not in (1, 2, 3):
                return "bad period"
            last = per["startPeriod"]
        if periods[0]["startPeriod"] != 0:
            return "the first period must start at 0"
        if kind == "Recurring" and ("recurrencyKind" not in prof or "startSchedule" not in s):
            return "Recurring needs recurrencyKind and startSchedule"
        if s.get("duration", 0) < 0:
            return "negative duration"
        return None

    def clear(self, pid=None, conn=None, purpose=None, level=None):
        """ClearChargingProfile: 'Accepted' when something was removed, else 'Unknown'."""
        if pid is not None:
            keep = [q for q in self.profiles if q["chargingProfileId"] != pid]
        else:
            keep = [
                q for q in self.profiles
                if not ((conn is None or q["_c"] == conn)
                        and (purpose is None or q["chargingProfilePurpose"] == purpose)
                        and (level is None or q["stackLevel"] == level))
            ]
        removed = len(keep) != len(self.profiles)
        if not removed and self.store_error is None:
            return "Unknown"
        # Something removed, or an unreadable store that the central system manages
        # again: the store is rewritten.
        self.store_error = None
        self.profiles = keep
        self._save()
        return "Accepted" if removed else "Unknown"

    def tx_ended(self):
        """TxProfiles end with their transaction."""
        if any(q["chargingProfilePurpose"] == "TxProfile" for q in self.profiles):
            self.clear(purpose="TxProfile")

    # ---- limits -----------------------------------------------------------------------------
    def used_phases(self, number=None):
        """The phases a W limit is spread over: numberPhases when the period gives it,
        else the car's measured phases, else the configured ones (the smaller current
        while unknown); never fewer than the car is measured to draw on."""
        if number is None:
            return self.car_phases or self.phases
        return max(number, self.car_phases or 0)

    def _amps(self, r):
        limit, unit, number = r
        if unit == "W":
            return limit / (VOLTS * self.used_phases(number))
        return float(limit)

    def _best(self, purpose, conn, t, tx_start, tx_id):
        best = None
        level = -1
        for p in self.profiles:
            if p["chargingProfilePurpose"] != purpose or p["_c"] != conn or p["stackLevel"] <= level:
                continue
            if purpose == "TxProfile" and (tx_id is None or p.get("transactionId", tx_id) != tx_id):
                continue
            r = evaluate(p, t, tx_start)
            if r is not None:
                best = r
                level = p["stackLevel"]
        return None if best is None else self._amps(best)

    def limit(self, t, conn=1, tx_start=None, tx_id=None):
        """Amps allowed at epoch t (None: no profile limits). conn 0: the whole charger."""
        if not self.profiles:
            return None
        a = self._best("ChargePointMaxProfile", 0, t, tx_start, tx_id)
        if conn == 0:
            return a
        b = None
        if tx_id is not None:
            b = self._best("TxProfile", 1, t, tx_start, tx_id)
        if b is None:
            b = self._best("TxDefaultProfile", 1, t, tx_start, tx_id)
        if b is None:
            b = self._best("TxDefaultProfile", 0, t, tx_start, tx_id)
        if a is None or (b is not None and b < a):
            return b
        return a

    def composite(self, conn, now, duration, unit, max_a, tx_start=None, tx_id=None):
        """The chargingSchedule of GetCompositeSchedule over now..now+duration."""
        end = now + duration
        ts = {now}
        for p in self.profiles:
            for v in (p.get("_vf"), p.get("_vt")):
                if v is not None and now < v < end:
                    ts.add(v)
            s = p["chargingSchedule"]
            kind = p["chargingProfileKind"]
            if kind == "Relative":
                starts = [now if tx_start is None else tx_start]
            elif kind == "Recurring":
                per = _PER[p["recurrencyKind"]]
                first = _start(p, now, tx_start)
                starts = [first + k * per for k in range(min((end - first) // per + 1, 16))]
            else:
                starts = [p["_ss"]]
            for st in starts:
                for per_ in s["chargingSchedulePeriod"]:
                    ts.add(st + per_["startPeriod"])
                if "duration" in s:
                    ts.add(st + s["duration"])
        periods = []
        last = None
        for t in sorted(ts):
            if t < now or t >= end:
                continue
            a = self.limit(t, conn, tx_start if tx_start is not None else now, tx_id)
            a = max_a if a is None else min(a, max_a)
            v = a * VOLTS * self.used_phases() if unit == "W" else a
            v = int(v * 10 + 0.5) / 10
            if v != last:
                periods.append({"startPeriod": t - now, "limit": v})
                last = v
        return {
            "duration": duration,
            "startSchedule": isotime.fmt(now),
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": periods,
        }
