# Persistent OCPP state: configuration keys, the transaction queue, the local list and
# cache (firmware/evse/ocpp/config, txqueue, authlist). Each test uses its own directory.
import os

from check import eq, true
from evse.ocpp import authlist
from evse.ocpp.config import Config
from evse.ocpp.txqueue import TxQueue

_n = [0]


def _dir():
    _n[0] += 1
    d = "/tmp/ocpp_store_%d_%d" % (os.urandom(1)[0] * 256 + os.urandom(1)[0], _n[0])
    os.mkdir(d)
    return d


def test_config_access_types_and_persistence():
    d = _dir()
    c = Config(d + "/c.json")
    eq(c["HeartbeatInterval"], 3600, "default")
    eq(c.change("heartbeatinterval", "30"), "Accepted", "case-insensitive key")
    eq(c["HeartbeatInterval"], 30, "typed")
    eq(c.change("HeartbeatInterval", "-1"), "Rejected", "negative")
    eq(c.change("HeartbeatInterval", "abc"), "Rejected", "not a number")
    eq(c.change("NumberOfConnectors", "2"), "Rejected", "read-only")
    eq(c.change("NoSuchKey", "1"), "NotSupported", "unknown")
    eq(c.change("LocalPreAuthorize", "TRUE"), "Accepted", "bool any case")
    eq(c.change("LocalPreAuthorize", "yes"), "Rejected", "bad bool")
    eq(c.change("MeterValuesSampledData", "Energy.Active.Import.Register, Current.Import"), "Accepted", "csl")
    eq(c["MeterValuesSampledData"], "Energy.Active.Import.Register,Current.Import", "csl normalised")
    eq(c.change("MeterValuesSampledData", "SoC"), "Rejected", "unsupported measurand")
    eq(c["MeterValuesSampledData"], "Energy.Active.Import.Register,Current.Import", "unchanged")
    eq(c.change("ConnectorPhaseRotation", "0.RST,1.TSR"), "Accepted", "rotation")
    eq(c.change("ConnectorPhaseRotation", "1.XYZ"), "Rejected", "bad rotation")
    eq(c.change("AuthorizationKey", "short"), "Rejected", "short key")
    eq(c.change("AuthorizationKey", "0123456789abcdef0123"), "Accepted", "key")
    known, unknown = c.listing(["AuthorizationKey", "HeartbeatInterval", "Nope"])
    eq(known[0], {"key": "AuthorizationKey", "readonly": False}, "key never disclosed")
    eq(known[1]["value"], "30", "value as text")
    eq(unknown, ["Nope"], "unknown keys")
    c2 = Config(d + "/c.json")
    eq((c2["HeartbeatInterval"], c2["LocalPreAuthorize"], c2["AuthorizationKey"]),
       (30, True, "0123456789abcdef0123"), "persisted")
    all_keys, _ = c2.listing()
    true(len(all_keys) > 40, "every key listed")


def test_config_veto_and_dynamic():
    c = Config(_dir() + "/c.json")
    c.vetoes["SecurityProfile"] = lambda v: None if v == 1 else "no"
    eq(c.change("SecurityProfile", "2"), "Rejected", "vetoed")
    eq(c.change("SecurityProfile", "1"), "Accepted", "allowed")
    c.dynamic["UnlockConnectorOnEVSideDisconnect"] = lambda: False
    eq(c.listing(["UnlockConnectorOnEVSideDisconnect"])[0][0]["value"], "false", "computed")


def test_queue_order_ids_and_power_cut():
    d = _dir()
    q = TxQueue(d)
    ref = q.next_seq()
    q.push("StartTransaction", {"idTag": "A", "connectorId": 1, "meterStart": 0, "timestamp": "t"}, ref, "m1")
    q.set_open(ref, "A", 0, 100)
    q.push("MeterValues", {"connectorId": 1, "meterValue": []}, ref, "m2")
    q.touch_open(50, 160)
    eq(q.pending, 2, "pending")
    # power cut: a new instance reads the same files
    q = TxQueue(d)
    eq((q.pending, q.open["wh"], q.open["t"]), (2, 50, 160), "survives")
    seq, action, payload, mid, r = q.head()
    eq((action, mid, r), ("StartTransaction", "m1", ref), "oldest first, same message id")
    q.ack(seq, 77, r)
    seq, action, payload, mid, r = q.head()
    eq((action, payload["transactionId"], mid), ("MeterValues", 77, "m2"), "transactionId filled in")
    q = TxQueue(d)  # cut after the first ack: the second record is still due
    seq2, action, payload, mid, r = q.head()
    eq((seq2, action, payload["transactionId"]), (seq, "MeterValues", 77), "resumes after the ack")
    q.ack(seq2)
    eq(q.head(), None, "drained")
    eq(q.ids, {str(ref): 77}, "id of the open transaction kept")
    q.close_open()
    q.push("StopTransaction", {"meterStop": 1, "timestamp": "t", "reason": "Local"}, ref, "m3")
    eq(q.head()[2]["transactionId"], 77, "stop gets the id after the log was cleared")


def test_queue_knows_a_start_or_stop_behind_a_meter_value():
    d = _dir()
    q = TxQueue(d)
    ref = q.next_seq()
    s = q.push("StartTransaction", {"idTag": "A", "connectorId": 1, "meterStart": 0, "timestamp": "t"}, ref, "m1")
    m1 = q.push("MeterValues", {"connectorId": 1, "meterValue": []}, ref, "m2")
    m2 = q.push("MeterValues", {"connectorId": 1, "meterValue": []}, ref, "m3")
    true(not q.tx_behind(m1) and not q.tx_behind(s), "only meter values behind the start")
    q.ack(s, 5, ref)
    eq(TxQueue(d).tx_seq, 0, "at boot: no Start/Stop pending")
    e = q.push("StopTransaction", {"meterStop": 1, "timestamp": "t", "reason": "Local"}, ref, "m4")
    true(q.tx_behind(m1) and q.tx_behind(m2) and not q.tx_behind(e), "the stop is behind")
    q = TxQueue(d)  # power cut: found again in the log
    true(q.tx_behind(m2) and not q.tx_behind(e), "the stop is behind after a reboot")
    q.ack(e)
    ref = q.next_seq()
    q.push("StartTransaction", {"idTag": "A", "connectorId": 1, "meterStart": 0, "timestamp": "t"}, ref, "m5")
    mv = [q.push("MeterValues", {"connectorId": 1, "meterValue": []}, ref, "v") for _ in range(10)]
    q = TxQueue(d)  # the start lies beyond the records read at boot: assumed just before them
    true(q.tx_behind(mv[0]) and not q.tx_behind(mv[1]), "bounded read, on the safe side")


def test_queue_start_never_confirmed_uses_minus_one():
    q = TxQueue(_dir())
    ref = q.next_seq()
    q.push("StartTransaction", {"idTag": "A"}, ref, "a")
    q.push("StopTransaction", {"reason": "Local"}, ref, "b")
    seq = q.head()[0]
    q.ack(seq, -1, ref)
    eq(q.head()[2]["transactionId"], -1, "-1")


def test_queue_drops_meter_values_when_full_never_start_stop():
    import evse.ocpp.txqueue as tq

    old = tq.MAX_PENDING
    tq.MAX_PENDING = 3
    try:
        q = TxQueue(_dir())
        for i in range(3):
            q.push("MeterValues", {}, 1, "m%d" % i)
        eq(q.push("MeterValues", {}, 1, "x"), None, "dropped")
        true(q.push("StopTransaction", {}, 1, "s") is not None, "stop kept")
        eq(q.dropped, 1, "counted")
    finally:
        tq.MAX_PENDING = old


def test_queue_oversized_stop_keeps_the_stop():
    q = TxQueue(_dir())
    big = [{"sampledValue": [{"value": "x" * 100}] * 20}] * 2
    true(q.push("StopTransaction", {"reason": "Local", "transactionData": big}, 1, "s") is not None, "kept")
    eq("transactionData" in q.head()[2], False, "without its transaction data")
    eq(q.push("MeterValues", {"meterValue": big}, 1, "m"), None, "an oversized sample is dropped")


def test_queue_skips_a_corrupt_record():
    d = _dir()
    q = TxQueue(d)
    q.push("MeterValues", {"a": 1}, 1, "m1")
    q._log.append(b"not json")
    q.push("MeterValues", {"a": 2}, 1, "m3")
    seq = q.head()[0]
    q.ack(seq)
    h = q.head()
    eq((h[3], h[2]["a"]), ("m3", 2), "bad record skipped")


class _History:
    def __init__(self, recovered):
        self.started = []
        self.ended = []
        self.listeners = []
        self.recovered = recovered  # what the history closed as PowerLoss at this boot


class _Svc:
    """What Transactions.recover() uses of the service: the queue, the history, the clock."""

    def __init__(self, d, recovered=None):
        self.q = TxQueue(d)
        self.history = _History(recovered)

    def now(self):
        return 5000


def _records(q):
    out = []
    while True:
        h = q.head()
        if h is None:
            return out
        seq, action, payload, mid, ref = h
        out.append((action, ref, payload))
        q.ack(seq, 10 + seq if action == "StartTransaction" else None, ref)


def _used_queue(d):
    """A queue that has delivered a transaction before (its state file exists)."""
    q = TxQueue(d)
    ref = _start(q)
    q.set_open(ref, "A", 1000, 1)
    q.push("StopTransaction", {"meterStop": 1000, "timestamp": "t", "reason": "Local"}, ref, "x")
    q.close_open()
    _records(q)
    return q


def _start(q, wh=1000):
    ref = q.next_seq()
    q.push("StartTransaction", {"idTag": "A", "connectorId": 1, "meterStart": wh, "timestamp": "t"},
           ref, "s%d" % ref)
    return ref


def test_recover_cut_between_stop_and_open_marker_sends_one_stop():
    """OCPP 1.6 §4.7: every transaction is stopped exactly once. A cut after the stop was
    queued but before the open marker was cleared must not queue a second stop."""
    from evse.ocpp.transactions import Transactions

    d = _dir()
    q = _used_queue(d)
    ref = _start(q)
    q.set_open(ref, "A", 1000, 100)
    q.push("StopTransaction", {"meterStop": 1500, "timestamp": "t", "reason": "EVDisconnected"},
           ref, "e1")
    svc = _Svc(d)  # the cut: close_open() never ran
    Transactions(svc).recover()
    recs = _records(svc.q)
    eq([(a, r) for a, r, _ in recs], [("StartTransaction", ref), ("StopTransaction", ref)],
       "one start, one stop")
    eq(recs[1][2]["reason"], "EVDisconnected", "the stop that was queued")
    eq(svc.q.open, None, "open marker cleared")


def test_recover_cut_between_start_and_open_marker_sends_only_the_stop():
    """A cut after the start was queued but before the open marker: the history reports
    the session as cut; the queue must stop the transaction it holds, not start another."""
    from evse.ocpp.transactions import Transactions

    d = _dir()
    q = _used_queue(d)
    ref = _start(q, wh=2000)
    lost = {"id_tag": "A", "start_s": 90, "end_s": 140, "energy_wh": 35}
    svc = _Svc(d, recovered=lost)
    Transactions(svc).recover()
    recs = _records(svc.q)
    eq([(a, r) for a, r, _ in recs], [("StartTransaction", ref), ("StopTransaction", ref)],
       "the queued start and its stop, nothing more")
    eq((recs[1][2]["meterStop"], recs[1][2]["reason"]), (2035, "PowerLoss"), "stop")
    eq(recs[1][2]["transactionId"], 10 + ref, "the id its start got")


def test_recover_open_transaction_and_session_never_queued():
    """The two cuts recover() handled before: an open transaction gets its PowerLoss stop;
    a session the history has but the queue never saw is started and stopped."""
    from evse.ocpp.transactions import Transactions

    d = _dir()
    q = TxQueue(d)
    ref = _start(q)
    q.set_open(ref, "A", 1200, 130)
    svc = _Svc(d)
    Transactions(svc).recover()
    recs = _records(svc.q)
    eq([(a, r) for a, r, _ in recs], [("StartTransaction", ref), ("StopTransaction", ref)], "open")
    eq((recs[1][2]["meterStop"], recs[1][2]["reason"]), (1200, "PowerLoss"), "its stop")
    lost = {"id_tag": "B", "start_s": 200, "end_s": 260, "energy_wh": 12}
    svc = _Svc(d, recovered=lost)
    Transactions(svc).recover()
    recs = _records(svc.q)
    eq([a for a, _, _ in recs], ["StartTransaction", "StopTransaction"], "lost session")
    eq(recs[0][1], recs[1][1], "the stop refers to that start")


class _Hw:
    def __init__(self, cause):
        self.cause = cause

    def reset_cause(self):
        if isinstance(self.cause, Exception):
            raise self.cause
        return self.cause


def test_recover_after_the_charger_reset_itself_reports_reboot():
    """OCPP 1.6 §7.46: a transaction cut by the charger's own reset (watchdog, a reset it
    asked for) ends with Reboot; a power cut, or a board that cannot tell, with PowerLoss."""
    from evse.ocpp.transactions import Transactions

    for cause, want in (("watchdog", "Reboot"), ("reset", "Reboot"), ("power", "PowerLoss"),
                        (OSError(5), "PowerLoss"), ("bogus", "PowerLoss")):
        d = _dir()
        q = TxQueue(d)
        ref = _start(q)
        q.set_open(ref, "A", 1200, 130)
        svc = _Svc(d)
        svc.hw = _Hw(cause)
        Transactions(svc).recover()
        recs = _records(svc.q)
        eq((recs[1][2]["meterStop"], recs[1][2]["reason"]), (1200, want), cause)


class _Meter:
    energy_wh = 1000.0


class _Charger:
    session = None
    phases = 3


def _open_record_rig(cfg, run):
    """A transaction open since 5000 s at 1000 Wh, on the test's ticks; run(tx, svc,
    ticks) drives it. Returns (the queue, the times the open record was written)."""
    from evse.ocpp import transactions
    from evse.ocpp.transactions import Transactions

    svc = _Svc(_dir())
    svc.metering = _Meter()
    svc.ch = _Charger()
    svc.cfg = cfg
    svc.kick = lambda: None
    ticks = _Ticks()
    real = transactions.time
    transactions.time = ticks
    try:
        tx = Transactions(svc)
        tx.apply_limit = lambda now, off=False: None
        q = svc.q
        ref = _start(q)
        q.set_open(ref, "A", 1000, 5000)
        tx.cur = {"ref": ref, "id": 1, "start": 5000, "mode": "RFID", "tag": "A",
                  "begin": None, "deauth": False, "wh": 1000}
        tx._touch(5000)
        writes = []
        touch = q.touch_open
        q.touch_open = lambda wh, t: (writes.append(t), touch(wh, t))
        run(tx, svc, ticks)
    finally:
        transactions.time = real
    return q, writes


def test_open_record_written_at_most_every_persist_wh_or_s():
    """The open-transaction record (a power cut's meterStop) is written once per
    PERSIST_WH or PERSIST_S, whatever MeterValueSampleInterval says: a central system
    that sets 1 s must not turn it into a flash write a second."""
    from evse.ocpp import transactions

    def run(tx, svc, ticks):
        for i in range(1, 121):  # two minutes at 1 Wh a second, a sample every second
            ticks.ms = i * 1000
            svc.metering.energy_wh = 1000.0 + i
            tx.tick(5000 + i)

    q, writes = _open_record_rig({"MeterValueSampleInterval": 1, "ClockAlignedDataInterval": 0,
                                  "MeterValuesSampledData": "Energy.Active.Import.Register"}, run)
    eq(q.pending > 100, True, "the samples were queued")
    true(len(writes) <= 120 // transactions.PERSIST_S, "writes %d" % len(writes))
    true(1120 - q.open["wh"] <= transactions.PERSIST_WH, "meterStop %d behind" % (1120 - q.open["wh"]))


class _Ticks:
    """transactions.time as the test drives it: ticks_ms moves only when told."""

    def __init__(self):
        self.ms = 0

    def ticks_ms(self):
        return self.ms

    def ticks_diff(self, a, b):
        return a - b

    def ticks_add(self, a, b):
        return a + b


def test_a_clock_set_back_and_forth_does_not_add_open_record_writes():
    """A central system that moves the clock back and forth at every heartbeat does not
    turn the open record into a flash write a second: its 60 s are counted on the ticks,
    its time is the wall clock at each write."""
    from evse.ocpp import transactions

    def run(tx, svc, ticks):
        for i in range(1, 121):  # two minutes, the clock 100 s back at every other second
            ticks.ms = i * 1000
            tx.tick(5000 + i - (100 if i % 2 else 0))

    q, writes = _open_record_rig({"MeterValueSampleInterval": 0, "ClockAlignedDataInterval": 0}, run)
    true(len(writes) <= 120 // transactions.PERSIST_S, "writes %d" % len(writes))


class _Smart:
    def tx_ended(self):
        pass


class _NoReservation:
    def uses_reservation(self, tag):
        return None


def test_meter_register_restarted_mid_transaction_keeps_meter_stop_above_meter_start():
    """A meter register that restarts during a transaction (meter replaced, reset):
    metering counts the session's energy on from the new register (metering._account).
    The StopTransaction's meterStop, and the power cut's one from the open record, stay
    meterStart plus that energy: never below meterStart (a negative charge)."""
    from evse.charger import Session
    from evse.ocpp.transactions import Transactions

    d = _dir()
    svc = _Svc(d)
    svc.metering = _Meter()
    svc.metering.energy_wh = 5000.0
    svc.ch = _Charger()
    svc.cfg = {"MeterValueSampleInterval": 0, "ClockAlignedDataInterval": 0,
               "StopTxnSampledData": ""}
    svc.kick = lambda: None
    svc.auth = _NoReservation()
    svc.smart = svc.smart_loaded = _Smart()
    tx = Transactions(svc)
    tx.apply_limit = lambda now, off=False: None
    h = svc.history
    s = Session("A", "RFID", 5000, 5000.0)
    svc.ch.session = s
    h.started.append(s.serial)
    tx.on_charger("session_start", svc.ch)
    tx.tick(5000)
    # 200 Wh in, the register restarts at 0 and counts 100 Wh more (as metering does it).
    svc.metering.energy_wh = 100.0
    s.start_wh = -200.0
    s.energy_wh = 300.0
    tx.tick(5061)
    # A power cut now: recover() stops it with the record's reading as meterStop.
    true(5000 <= svc.q.open["wh"] <= 5300, "open record %d" % svc.q.open["wh"])
    s.stop_mode = "Unplug"
    s.end_s = 5062
    svc.ch.session = None
    h.ended.append(s.serial)
    tx.on_charger("session_end", svc.ch, s)
    tx.tick(5062)
    recs = _records(svc.q)
    eq([a for a, _, _ in recs], ["StartTransaction", "StopTransaction"], "stopped")
    eq((recs[0][2]["meterStart"], recs[1][2]["meterStop"]), (5000, 5300), "meterStart + energy")


def test_local_list_full_differential_and_cache():
    d = _dir()
    ll = authlist.TagTable(d + "/l.json", 3)
    entries = [{"idTag": "aa", "idTagInfo": {"status": "Accepted", "parentIdTag": "P"}},
               {"idTag": "BB", "idTagInfo": {"status": "Blocked"}}]
    eq(authlist.apply_list(ll, "Full", entries, 5), "Accepted", "full")
    eq(ll.get("AA"), ("Accepted", 0, "P"), "case-insensitive")
    eq(authlist.apply_list(ll, "Differential", [], 5), "VersionMismatch", "same version")
    eq(authlist.apply_list(ll, "Differential", [{"idTag": "bb"},
                                                {"idTag": "CC", "idTagInfo": {"status": "Accepted",
                                                                              "expiryDate": "2000-01-01T00:00:00Z"}}], 6),
       "Accepted", "differential")
    eq(ll.get("BB"), None, "removed")
    eq(authlist.valid(ll.get("cc"), 10 ** 9), "Expired", "expired")
    too_many = [{"idTag": "T%d" % i, "idTagInfo": {"status": "Accepted"}} for i in range(4)]
    eq(authlist.apply_list(ll, "Full", too_many, 7), "Failed", "over the max")
    eq((ll.version, ll.get("AA")[0]), (6, "Accepted"), "unchanged after Failed")
    ll2 = authlist.TagTable(d + "/l.json", 3)
    eq((ll2.version, len(ll2)), (6, 2), "persisted")
    c = authlist.Cache(d + "/c.json", 2)
    c.store("X", ("Invalid", 0, None))
    c.store("Y", ("Accepted", 0, None))
    c.store("Z", ("Accepted", 0, None))
    eq((c.get("X"), c.get("Y")[0], c.get("Z")[0]), (None, "Accepted", "Accepted"), "invalid evicted first")
    c.store("W", ("Accepted", 0, None))
    eq((c.get("Y"), c.get("W")[0]), (None, "Accepted"), "then the oldest")


def test_the_history_marks_stored_sessions_without_keeping_them():
    # The queue asks whether a session's start/end is stored; the history answers from
    # serials, so finished sessions (with their power profiles) can be collected.
    from evse.history import History, Session

    h = History(_dir(), lambda: 1700000000)
    a = Session("A", "RFID", 1700000000, 0.0)
    b = Session("B", "RFID", 1700000100, 0.0)
    true(a.serial != b.serial, "each session its own serial")
    for s in (a, b):
        h.session_started(s)
        s.stop_mode = "Unplug"
        s.end_s = s.start_s + 60
        h.session_ended(s)
    eq((h.started, h.ended), ([a.serial, b.serial], [a.serial, b.serial]), "serials kept")
    true(all(type(x) is int for x in h.started + h.ended), "no session object held")
