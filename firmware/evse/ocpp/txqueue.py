# The persisted queue of transaction messages (StartTransaction, MeterValues of a
# transaction, StopTransaction; OCPP 1.6 §4.7): delivered in order, each until the
# central system confirms it or TransactionMessageAttempts run out, across lost
# connections and power cuts.
#
# Records live in a CRC-checked record log (lib/recordlog, EVSE_DATA_DIR/ocppq.*.log),
# one JSON array each: [action, payload, txref, message id]. txref is the sequence number
# of the transaction's StartTransaction record; MeterValues and StopTransaction get the
# central system's transactionId filled in when they go out (-1 when the Start never got
# one). ocppq.json holds what must survive with them: the last confirmed sequence number,
# the transactionId of each txref still referenced, and the open transaction (txref, id
# tag, last meter reading and time) so a transaction cut by a power loss is stopped with
# reason PowerLoss at the next boot.
#
# Exactly once: a record counts as delivered when its CALLRESULT is in and `acked` is on
# disk, written before anything else happens. A power cut in the few milliseconds between
# the two re-sends that one record after the boot. Each record keeps the message id it was
# queued with for its first try on each connection, so a central system that saw it on
# an earlier connection (the answer lost to a cut or a closed socket) can tell the copy by
# its id. A retry on the same connection (after a timeout or a CALLERROR) gets a fresh id
# from the link: OCPP-J §4.1.1 forbids reusing an id on one connection, so what makes the
# message the same one is its payload (transactionId, timestamps, meter readings).
#
# A MeterValues that fails never holds a StartTransaction or StopTransaction back: when one
# is queued behind it, it is given up at once instead of waiting for its retries (the
# stop's meterStop carries the energy; the service does this with tx_behind()).
import json

import atomicfile
import log
import recordlog
from evse.ocpp.config import load_json

_log = log.get("ocpp.queue")

_MAX_RECORDS = 240  # the log keeps at least this many newest records
_RECORD_BYTES = 2048
MAX_PENDING = 200  # beyond this, periodic MeterValues are dropped (Start/Stop never)
_BATCH = 8


class TxQueue:
    def __init__(self, data_dir):
        self._log = recordlog.RecordLog(data_dir, "ocppq", _MAX_RECORDS, _RECORD_BYTES, segments=4)
        self._path = data_dir + "/ocppq.json"
        st = load_json(self._path, 2048)
        last = self._log.last_seq
        self.acked = min(st.get("acked", last) if isinstance(st.get("acked"), int) else last, last)
        ids = st.get("ids")
        self.ids = ids if isinstance(ids, dict) else {}
        op = st.get("open")
        self.open = op if isinstance(op, dict) and isinstance(op.get("r"), int) else None
        self._batch = []  # (seq, record) read ahead, in order
        self.tx_seq = self._last_tx()  # the newest StartTransaction/StopTransaction record
        self.attempts = 0  # failed attempts of the head record
        self.dropped = 0
        if self._log.discarded:
            _log.warning("queue log: %d torn bytes cut off", self._log.discarded)

    @property
    def pending(self):
        return self._log.last_seq - self.acked

    def _last_tx(self):
        """Sequence number of the newest Start/Stop record not yet confirmed, else 0.
        Reads at most _BATCH records (the service may be built while the charger runs):
        beyond them one is assumed just before, which at worst gives up a failing
        MeterValues that could have been retried."""
        if self.pending <= 0:
            return 0
        seen = self._log.last_seq + 1
        for seq, raw in self._log.records(True, _BATCH):
            if seq <= self.acked:
                return 0
            if not raw.startswith(b'["MeterValues"'):
                return seq  # an unreadable one counts too: it may be a Stop
            seen = seq
        return seen - 1 if seen - 1 > self.acked else 0

    def tx_behind(self, seq):
        """Whether a StartTransaction or StopTransaction waits behind record `seq`."""
        return self.tx_seq > seq

    def _save(self):
        atomicfile.save_json(self._path, {"acked": self.acked, "ids": self.ids, "open": self.open})

    # ---- producing -----------------------------------------------------------------------
    def next_seq(self):
        return self._log.last_seq + 1

    def push(self, action, payload, txref, msg_id):
        """Appends a record; returns its sequence number, or None if dropped (full)."""
        if action == "MeterValues" and self.pending >= MAX_PENDING:
            self.dropped += 1
            _log.warning("queue full: periodic meter values dropped (%d)", self.dropped)
            return None
        rec = json.dumps([action, payload, txref, msg_id]).encode()
        if len(rec) > _RECORD_BYTES and "transactionData" in payload:
            _log.warning("%s: transactionData dropped (%d bytes)", action, len(rec))
            del payload["transactionData"]  # the stop itself must go out
            rec = json.dumps([action, payload, txref, msg_id]).encode()
        if len(rec) > _RECORD_BYTES:
            self.dropped += 1
            _log.error("%s of %d bytes does not fit a queue record: dropped", action, len(rec))
            return None
        seq = self._log.append(rec)
        if action != "MeterValues":
            self.tx_seq = seq
        return seq

    def set_open(self, txref, id_tag, wh, t):
        self.open = {"r": txref, "tag": id_tag, "wh": wh, "t": t}
        self._save()

    def touch_open(self, wh, t):
        if self.open is not None:
            self.open["wh"] = wh
            self.open["t"] = t
            self._save()

    def close_open(self):
        if self.open is not None:
            self.open = None
            self._save()

    def newest(self):
        """(seq, action, payload, txref) of the newest record not yet confirmed, or None:
        at boot it tells whether a cut fell between a record and the open marker."""
        if self.pending <= 0:
            return None
        for seq, raw in self._log.records(True, 1):
            try:
                rec = json.loads(raw)
            except ValueError:
                return None
            if isinstance(rec, list) and len(rec) == 4 and isinstance(rec[1], dict):
                return seq, rec[0], rec[1], rec[2]
        return None

    # ---- delivering ----------------------------------------------------------------------
    def head(self):
        """(seq, action, payload, msg_id, txref) of the oldest unconfirmed record, or None."""
        if self.pending <= 0:
            return None
        b = self._batch
        while b and b[0][0] <= self.acked:
            b.pop(0)
        if not b:
            for seq, raw in self._log.records(False):
                if seq <= self.acked:
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = None
                b.append((seq, rec))
                if len(b) >= _BATCH:
                    break
            if not b:  # everything past `acked` is gone (damaged): nothing to deliver
                _log.error("queue records %d..%d unreadable", self.acked + 1, self._log.last_seq)
                self.acked = self._log.last_seq
                self._save()
                return None
        seq, rec = b[0]
        if not isinstance(rec, list) or len(rec) != 4:
            _log.error("queue record %d unreadable: skipped", seq)
            self.ack(seq)
            return self.head()
        action, payload, txref, msg_id = rec
        if action != "StartTransaction":
            payload["transactionId"] = self.ids.get(str(txref), -1)
        return seq, action, payload, msg_id, txref

    def ack(self, seq, tx_id=None, txref=None):
        """Record `seq` is delivered (or given up); tx_id: what its StartTransaction got."""
        self.acked = seq
        self.attempts = 0
        if tx_id is not None:
            self.ids[str(txref)] = tx_id
        if self.pending <= 0:
            keep = str(self.open["r"]) if self.open else None
            self.ids = {k: v for k, v in self.ids.items() if k == keep}
            self._batch = []
        self._save()
        if self.pending <= 0:
            self._log.clear()  # numbering goes on: txrefs stay unique
