# The charger's sessions as OCPP transactions (1.6 §4.7-4.8, §5.11-5.12): what the
# charging core reports turns into StartTransaction, MeterValues and StopTransaction
# records of the persisted queue (txqueue.py), which the service delivers; plus the
# charging-profile limit, remote starts waiting for the vehicle and the stop reasons.
#
# The charger's listeners run in the pilot task: on_charger only notes the event; tick()
# (the service's ticker, about once a second or when kicked) does the flash writes.
import time

import log
from evse.ocpp import isotime
from evse.ocpp import meterval
from evse.ocpp import rpc

_log = log.get("ocpp.tx")

_HOLD_MAX_MS = 5000  # longest a start or end waits for the history to store it
# The open-transaction record keeps the meter register and the time for a power cut's
# StopTransaction: written again after this much energy or time, whichever comes first
# (bounds both how far behind meterStop can be and the flash writes: docs/ocpp.md).
PERSIST_WH = 100
PERSIST_S = 60

# history stop mode -> StopTransaction reason
_REASONS = (  # pairs: a tuple of constants stays in flash on a frozen build
    ("RFID", "Local"),
    ("App", "Local"),
    ("Free", "Local"),
    ("OCPP", "Remote"),
    ("Unplug", "EVDisconnected"),
    ("PowerLoss", "PowerLoss"),
)


class Transactions:
    def __init__(self, svc):
        self.svc = svc
        self.cur = None  # the running transaction: ref, id, start, mode, tag, begin, deauth, wh (meterStart)
        self.events = []  # (kind, session, stop reason) noted by the listener
        self._stop_reason = None
        self._remote = None  # a RemoteStart's (id_tag, TxProfile or None, its wait or None) until its session starts
        self._next_sample = None
        self._aligned_slot = None
        self.limit = -1.0  # the "ocpp" limit last given to the charger (-1: none yet)
        self._held_ms = None  # since when the head event waits for the history
        self._kept = None  # (Wh, ticks_ms) of the last write of the open-transaction record

    def _history(self):
        h = self.svc.history
        return h if hasattr(h, "started") else None

    def _stored(self, kind, s):
        """Whether the history has stored this start (its open file) or end (its record).
        A transaction goes into the queue only after that, so a power cut in between
        leaves the history with a session the queue lacks, never the reverse; recover()
        reports such a session at the next boot. A history that cannot write holds the
        queue back at most _HOLD_MAX_MS."""
        h = self._history()
        if h is None:
            return True
        if s.serial in (h.started if kind == "start" else h.ended):
            self._held_ms = None
            return True
        now = time.ticks_ms()
        if self._held_ms is None:
            self._held_ms = now
        elif time.ticks_diff(now, self._held_ms) >= _HOLD_MAX_MS:
            _log.warning("history did not store the session: reporting it anyway")
            self._held_ms = None
            return True
        return False

    # ---- the charger's side ------------------------------------------------------------------
    def on_charger(self, event, ch, *rest):
        """Charger listener (pilot task: no I/O)."""
        if event == "session_start":
            self.events.append(("start", ch.session, None))
        elif event == "session_end":
            self.events.append(("end", rest[0], self._stop_reason))
            self._stop_reason = None
        self.svc.kick()

    def stop_session(self, reason):
        """Ends the running session with an OCPP stop reason."""
        ch = self.svc.ch
        if ch.session is None:
            return False
        self._stop_reason = reason
        ch.end_session("OCPP")
        return True

    def start_remote(self, tag, profile, source=None):
        """RemoteStart accepted: starts now, or (no vehicle yet) waits as the charger's one
        authorization before plug-in (auth.py: ConnectionTimeOut, display PLUG IN, status
        Preparing). The embedded TxProfile waits with it for the session of this tag."""
        ok, why = self.svc.authorizer.start(tag, "OCPP", source)
        if not ok:
            _log.warning("remote start of %s failed: %s", tag, why)
            return
        # Tied to this very wait (the tuple itself, not its tag): a card of the same tag
        # tapped after the wait lapsed does not inherit the profile.
        self._remote = (tag, profile, self.svc.ch.auth_pending)

    def recover(self):
        """At boot: a transaction still open was cut by a power loss (or a crash). A start
        or stop record and the open marker are two writes (_start, _end); the newest queue
        record tells whether a cut fell between them."""
        q = self.svc.q
        op = q.open
        last = q.newest()
        h = self._history()
        lost = h.recovered if h is not None else None
        reason = self.cut_reason()
        if op is not None:
            if last is not None and last[1] == "StopTransaction" and last[3] == op["r"]:
                q.close_open()  # cut right after its stop was queued: nothing is missing
                return
            _log.warning("transaction %d cut by a %s: queued its stop", op["r"], reason)
            payload = {
                "meterStop": int(op.get("wh") or 0),
                "timestamp": isotime.fmt(op.get("t") or self.svc.now()),
                "reason": reason,
            }
            q.push("StopTransaction", payload, op["r"], rpc.new_id())
            q.close_open()
            return
        if last is not None and last[1] == "StartTransaction":
            # Cut right after its start was queued, before the open marker: only the stop
            # is missing (reporting the session again would start a second transaction).
            _log.warning("transaction %d cut by a power loss as it began: queued its stop",
                         last[3])
            lost = lost or {}
            start_wh = last[2].get("meterStart")
            payload = {
                "meterStop": int((start_wh if isinstance(start_wh, int) else 0)
                                 + (lost.get("energy_wh") or 0)),
                "timestamp": isotime.fmt(lost.get("end_s") or self.svc.now()),
                "reason": reason,
            }
            q.push("StopTransaction", payload, last[3], rpc.new_id())
            return
        if lost is not None:
            self._report_lost(lost, reason)

    def cut_reason(self):
        """The stop reason of a transaction this boot cut: Reboot when the charger reset
        itself (watchdog, a requested reset), PowerLoss otherwise or when the board cannot
        tell."""
        f = getattr(getattr(self.svc, "hw", None), "reset_cause", None)
        try:
            cause = f() if f is not None else "power"
        except Exception as e:  # noqa: BLE001 - a board that cannot tell: a power loss
            _log.warning("reset cause unknown: %r", e)
            cause = "power"
        return "Reboot" if cause in ("watchdog", "reset") else "PowerLoss"

    def _report_lost(self, lost, reason):
        """A session the history closed as PowerLoss but the queue never heard of (the cut
        came between the two): its StartTransaction and StopTransaction. The meter register
        at the start is not kept with the session: the energy is reported from 0."""
        q = self.svc.q
        ref = q.next_seq()
        _log.warning("session cut by a power loss before it was queued: reporting it")
        start = {
            "connectorId": 1,
            "idTag": (lost.get("id_tag") or "")[:20],
            "meterStart": 0,
            "timestamp": isotime.fmt(lost.get("start_s") or self.svc.now()),
        }
        q.push("StartTransaction", start, ref, rpc.new_id())
        stop = {
            "meterStop": int(lost.get("energy_wh") or 0),
            "timestamp": isotime.fmt(lost.get("end_s") or self.svc.now()),
            "reason": reason,
        }
        q.push("StopTransaction", stop, ref, rpc.new_id())

    # ---- once a second -------------------------------------------------------------------------
    def tick_off(self, now):
        """OCPP switched off (ocpp_url cleared): a session that starts now is never
        reported, as one that began before OCPP was on; but the end of the transaction
        that was running is queued (and its open record kept meanwhile), so the central
        system gets its stop once OCPP is back instead of a transaction open for good."""
        while self.events:
            kind, s, reason = self.events[0]
            if kind == "start":
                self.events.pop(0)
                continue
            if not self._stored(kind, s):
                break
            self.events.pop(0)
            self._end(s, reason)
        if self.cur is not None:
            self._keep(now)

    def tick(self, now):
        while self.events:
            kind, s, reason = self.events[0]
            if not self._stored(kind, s):
                break
            self.events.pop(0)
            if kind == "start":
                self._start(s)
            else:
                self._end(s, reason)
        cur = self.cur
        if cur is not None:
            self._sample(now, cur)
            self._keep(now)
        self._aligned(now, cur)
        self.apply_limit(now)
        rm = self._remote
        ch = self.svc.ch
        if rm is not None and not self.events and ch.session is None:
            if rm[2] is None or ch.auth_pending is not rm[2]:
                # Its wait lapsed, was withdrawn or ended by a fault: the profile goes too.
                _log.info("remote start of %s ended without a session", rm[0])
                self._remote = None

    def _start(self, s):
        svc = self.svc
        q = svc.q
        ref = q.next_seq()
        payload = {
            "connectorId": 1,
            "idTag": s.id_tag[:20],
            "meterStart": int(s.start_wh),
            "timestamp": isotime.fmt(s.start_s),
        }
        rid = svc.auth.uses_reservation(s.id_tag)
        if rid is not None:
            payload["reservationId"] = rid
            svc.auth.end_reservation()
        q.push("StartTransaction", payload, ref, rpc.new_id())
        q.set_open(ref, s.id_tag, s.start_wh, s.start_s)
        self._kept = (s.start_wh, time.ticks_ms())
        self.cur = {"ref": ref, "id": None, "start": s.start_s, "mode": s.start_mode,
                    "tag": s.id_tag, "begin": None, "deauth": False, "wh": payload["meterStart"]}
        names = svc.cfg["StopTxnSampledData"]
        if names:
            self.cur["begin"] = meterval.meter_value(svc, names, "Transaction.Begin", s.start_s)
        self._next_sample = None
        rm = self._remote
        self._remote = None  # any session ends a remote start's wait
        if (rm is not None and rm[1] is not None and s.start_mode == "OCPP"
                and rm[0].upper() == s.id_tag.upper()):
            svc.smart.install(1, rm[1], -1, svc.now())
        svc.kick()

    def _end(self, s, reason):
        cur = self.cur
        if cur is None:
            return  # began before OCPP was on: never reported
        svc = self.svc
        end = s.end_s or svc.now()
        if reason is None:
            reason = "Other"
            for mode, r in _REASONS:
                if mode == s.stop_mode:
                    reason = r
        payload = {"meterStop": self._meter_stop(cur, s), "timestamp": isotime.fmt(end),
                   "reason": reason}
        if s.stop_mode in ("RFID", "App"):
            payload["idTag"] = s.id_tag[:20]
        names = svc.cfg["StopTxnSampledData"]
        if names and cur["begin"] is not None:
            payload["transactionData"] = [
                cur["begin"], meterval.meter_value(svc, names, "Transaction.End", end)
            ]
        svc.q.push("StopTransaction", payload, cur["ref"], rpc.new_id())
        svc.q.close_open()
        self.cur = None
        self._kept = None
        if svc.smart_loaded is not None:
            svc.smart_loaded.tx_ended()
        svc.kick()

    def started(self, ref, tx_id, info, tag):
        """StartTransaction of `ref` answered (tx_id -1 when given up)."""
        cur = self.cur
        if cur is None or cur["ref"] != ref:
            return  # that session already ended
        svc = self.svc
        cur["id"] = tx_id
        s = svc.ch.session
        if s is not None:
            s.tx_id = tx_id
        if info is None:
            return
        status = svc.auth.learn(tag, info)
        if status == "Accepted" or cur["mode"] not in ("RFID", "OCPP"):
            return  # free-mode and web-app charges are the owner's
        _log.warning("transaction %d: id tag %s is %s", tx_id, tag, status)
        if svc.cfg["StopTransactionOnInvalidId"]:
            self.stop_session("DeAuthorized")
        else:
            cur["deauth"] = True  # energy stops after MaxEnergyOnInvalidId
            svc.kick()

    def _sample(self, now, cur):
        svc = self.svc
        iv = svc.cfg["MeterValueSampleInterval"]
        if iv <= 0:
            self._next_sample = None
            return
        if self._next_sample is None:
            self._next_sample = cur["start"] + iv
        if now < self._next_sample:
            return
        self._next_sample += iv
        if self._next_sample <= now:
            self._next_sample = now + iv
        names = svc.cfg["MeterValuesSampledData"]
        if not names:
            return
        mv = meterval.meter_value(svc, names, "Sample.Periodic", now)
        svc.q.push("MeterValues", {"connectorId": 1, "meterValue": [mv]}, cur["ref"], rpc.new_id())
        svc.kick()

    @staticmethod
    def _meter_stop(cur, s):
        """meterStart plus the session's energy. A register that restarted during the
        transaction (metering counts the energy on from the new one) would otherwise
        give a meterStop below meterStart: a negative charge."""
        return max(int(s.start_wh + s.energy_wh), cur["wh"] + int(s.energy_wh))

    def _touch(self, now):
        wh = self.svc.metering.energy_wh
        s = self.svc.ch.session
        cur = self.cur
        if s is not None and cur is not None and s.start_s == cur["start"]:
            wh = self._meter_stop(cur, s)  # the same reading as the stop would carry
        self.svc.q.touch_open(wh, now)
        self._kept = (self.svc.metering.energy_wh, time.ticks_ms())

    def _keep(self, now):
        """Writes the running transaction's meter register and time to its open record
        every PERSIST_WH or PERSIST_S, and only then: a short MeterValueSampleInterval
        does not add flash writes, nor a clock the central system moves back and forth
        (the seconds are counted on the ticks; the record keeps the wall clock)."""
        kept = self._kept
        if kept is None:
            self._touch(now)
            return
        wh = self.svc.metering.energy_wh
        # A negative age: over 2**29 ms (a 32-bit port's ticks wrapped), long due.
        age = time.ticks_diff(time.ticks_ms(), kept[1])
        if wh - kept[0] >= PERSIST_WH or not 0 <= age < PERSIST_S * 1000:
            self._touch(now)

    def _aligned(self, now, cur):
        svc = self.svc
        iv = svc.cfg["ClockAlignedDataInterval"]
        if iv <= 0:
            self._aligned_slot = None
            return
        slot = now // iv
        if self._aligned_slot is None or slot == self._aligned_slot:
            self._aligned_slot = slot
            return
        self._aligned_slot = slot
        names = svc.cfg["MeterValuesAlignedData"]
        if not names:
            return
        mv = meterval.meter_value(svc, names, "Sample.Clock", slot * iv)
        p = {"connectorId": 1, "meterValue": [mv]}
        if cur is not None:
            svc.q.push("MeterValues", p, cur["ref"], rpc.new_id())
            svc.kick()
        elif svc.online:
            svc.note("MeterValues", p)

    def tx_for_smart(self):
        """(start epoch, transaction id) for the profiles: (None, None) with no transaction,
        id -1 while the central system has not given one."""
        cur = self.cur
        if cur is None:
            return None, None
        return cur["start"], (-1 if cur["id"] is None else cur["id"])

    def apply_limit(self, now, off=False):
        """The "ocpp" named limit of the charging core: the profiles' limit now, 0 A for a
        refused id past MaxEnergyOnInvalidId, none when OCPP is off."""
        svc = self.svc
        a = None
        if not off:
            sm = svc.smart_loaded  # none built: no profile was ever set
            if sm is not None:
                start, tx_id = self.tx_for_smart()
                # The phases the car draws on (measured; None before): W limits use them.
                m = getattr(svc.metering, "car_mask", None)
                sm.car_phases = None if not m else (m & 1) + (m >> 1 & 1) + (m >> 2 & 1)
                a = sm.limit(now, 1, start, tx_id)
            cur = self.cur
            if cur is not None and cur["deauth"]:
                s = svc.ch.session
                used = svc.metering.energy_wh - (s.start_wh if s else 0)
                if used >= svc.cfg["MaxEnergyOnInvalidId"]:
                    a = 0.0
        if a != self.limit:
            self.limit = a
            _log.info("charging profile limit: %s", "none" if a is None else "%.1f A" % a)
            svc.ch.set_external_limit("ocpp", a)
        svc.update_store_limit(off)
