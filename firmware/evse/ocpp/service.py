# The OCPP 1.6J charge point (docs/ocpp.md): the session with the central system
# (BootNotification, heartbeats, status, the transaction queue), authorization as a
# source of the Authorizer, and the charger's side of transactions, meter values,
# smart charging, reservations and availability.
#
# Two tasks: run() keeps one connection (reconnecting with exponential back-off and
# jitter; every CP->CS CALL goes out from its sender loop, one at a time) and _ticker()
# does what must happen whether or not we are connected: queue the transaction
# messages of the charger's sessions, sample meter values, apply the charging-profile
# limit, expire reservations. Charger listeners only note events; flash writes happen
# in the ticker, never in the pilot task.
import asyncio
import binascii
import json
import os
import time
from micropython import const

import atomicfile
import log
import wsclient
from evse import faults
from evse import version
from evse.ocpp import isotime
from evse.ocpp import meterval
from evse.ocpp import rpc
from evse.ocpp import schema
from evse.ocpp.authlist import Cache, TagTable, info_of, valid
from evse.ocpp.config import Config, load_json
from evse.ocpp.link import CallError, Link, LinkDown
from evse.ocpp.rpc import RpcError
from evse.ocpp.smart import Smart
from evse.ocpp.txqueue import TxQueue

_log = log.get("ocpp")

VENDOR = "Cabur"
PROTOCOL = "ocpp1.6"
_TICK_MS = const(1000)
_NOTES = const(10)  # non-transaction messages waiting to go out
_CACHE_LEN = const(32)
_CA_MAX = const(16384)
_BOOT_RETRY_S = const(60)  # Pending/Rejected with interval 0
_PONG_GRACE_MS = const(10000)

# history stop mode -> StopTransaction reason
_REASONS = {
    "RFID": "Local",
    "App": "Local",
    "Free": "Local",
    "OCPP": "Remote",
    "Unplug": "EVDisconnected",
    "PowerLoss": "PowerLoss",
}


def pem_certs(path):
    """The DER certificates of a PEM file (this port's mbedTLS takes DER only)."""
    if os.stat(path)[6] > _CA_MAX:
        raise ValueError("CA file over %d bytes" % _CA_MAX)
    out = []
    cur = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("-----BEGIN CERTIFICATE"):
                cur = []
            elif line.startswith("-----END CERTIFICATE"):
                if cur is not None:
                    out.append(binascii.a2b_base64("".join(cur)))
                cur = None
            elif cur is not None:
                cur.append(line)
    return out


class _Gate:
    """First authorization source: while a reservation holds, only its idTag (or one
    with the same parent) gets past."""

    def __init__(self, svc):
        self.svc = svc

    async def authorize(self, id_tag):
        return await self.svc.reservation_verdict(id_tag)


class Service:
    def __init__(self, app):
        self.app = app
        self.ch = ch = app.charger
        self.hw = app.hw
        self.settings = app.settings
        d = app.data_dir
        self.data_dir = d
        self.cfg = cfg = Config(d + "/ocpp_config.json")
        self.q = TxQueue(d)
        self.smart = Smart(d)
        self.smart.phases = ch.phases
        self.llist = TagTable(d + "/ocpp_list.json", cfg["LocalAuthListMaxLength"])
        self.cache = Cache(d + "/ocpp_cache.json", _CACHE_LEN)
        self._state_path = d + "/ocpp_state.json"
        self.state = load_json(self._state_path, 2048)
        self.ws = wsclient.WsClient(max_message=6144, tx_size=1024)
        self.link = Link(self.ws, self._on_call)
        self._send_ev = asyncio.Event()
        self.link.kick = self._send_ev
        self._tick_ev = asyncio.Event()
        self._wake_ev = asyncio.Event()  # settings changed: reconnect now
        self.accepted = False  # BootNotification accepted since this boot
        self.registration = None
        self.cur = None  # the transaction of the running session (dict)
        self._events = []
        self._notes = []
        self._sent = {}  # connector -> (status, errorCode, vendorErrorCode) delivered
        self._seen = {}  # connector -> (status tuple, ticks_ms since)
        self._force = set()  # connectors whose status must go out even if unchanged
        self._stop_reason = None
        self._remote = None  # RemoteStart waiting for the vehicle: (id_tag, deadline_ms, profile)
        self._q_wait = None  # ticks_ms before which the queue head is not retried
        self._hb_ms = 0
        self._ping_ms = None
        self._boot_now = False
        self._boot_interval = _BOOT_RETRY_S
        self._reconnect = False
        self._next_sample = None
        self._aligned_slot = None
        self._limit = -1.0
        self._addr = None  # (host, address) resolved once
        self.diag_status = "Idle"
        self.fw_status = "Idle"
        self._jobs = {}  # name -> task (reset, diagnostics, firmware)
        self.on_update_firmware = None  # async fn(location, retrieve_date, retries, retry_interval)
        from evse.ocpp import handlers

        self._handlers = handlers.TABLE
        ch.listeners.append(self._on_charger)
        app.auth.sources.insert(0, _Gate(self))
        app.auth.sources.append(self)
        app.auth.stop_checks.append(self)
        app.history.listeners.append(self._on_history)
        app.settings.on_change(self._on_settings)
        cfg.vetoes["SecurityProfile"] = self._veto_profile
        cfg.dynamic["UnlockConnectorOnEVSideDisconnect"] = self._unlock_on_unplug
        cfg.listeners.append(self._on_cfg)
        if self.state.get("inop"):
            ch.unavailable = True
        self._recover()

    # ---- small views ------------------------------------------------------------------------
    @property
    def active(self):
        return bool(self.settings["ocpp_url"])

    @property
    def online(self):
        return self.link.up and self.accepted

    def _unlock_on_unplug(self):
        return self.ch.case_b

    def now(self):
        return self.hw.rtc.now()

    def save_state(self):
        atomicfile.save_json(self._state_path, self.state)

    def kick(self):
        self._tick_ev.set()
        self._send_ev.set()

    def view(self):
        return {
            "configured": self.active,
            "connected": self.link.up,
            "registration": self.registration,
            "queued": self.q.pending,
            "transaction_id": self.cur.get("id") if self.cur else None,
            "reservation": (self.state.get("resv") or {}).get("id"),
        }

    def note(self, action, payload):
        """A non-transaction message to send when possible (oldest dropped when full)."""
        if len(self._notes) >= _NOTES:
            self._notes.pop(0)
        self._notes.append((action, payload))
        self._send_ev.set()

    # ---- boot-time recovery --------------------------------------------------------------------
    def _recover(self):
        op = self.q.open
        if op is not None:
            # The process ended (power cut, crash) with a transaction open: stop it now.
            _log.warning("transaction %d cut by a power loss: queued its stop", op["r"])
            payload = {
                "meterStop": int(op.get("wh") or 0),
                "timestamp": isotime.fmt(op.get("t") or self.now()),
                "reason": "PowerLoss",
            }
            self.q.push("StopTransaction", payload, op["r"], rpc.new_id())
            self.q.close_open()
        fw = self.state.get("fw")
        st = fw.get("st") if fw else None
        if st is not None and st != "Pending":
            # Cut while downloading or installing: say how it ended, honestly.
            if st == "Installing":
                st = "Installed" if fw.get("ver") != version.VERSION else "InstallationFailed"
            else:
                st = "DownloadFailed"
            self.state.pop("fw", None)
            self.firmware_status(st)
            self.save_state()

    # ---- listeners (may run in the pilot task: no I/O here) ------------------------------------
    def _on_charger(self, event, ch, *rest):
        if event == "session_start":
            self._events.append(("start", ch.session, None))
        elif event == "session_end":
            self._events.append(("end", rest[0], self._stop_reason))
            self._stop_reason = None
        self._tick_ev.set()
        self._send_ev.set()

    def _on_history(self, kind, rec):
        if kind == "fault" and self.online:
            self.note("DataTransfer", {"vendorId": VENDOR, "messageId": "FaultReport", "data": json.dumps(rec)})

    def _on_settings(self, changed):
        if "ocpp_url" in changed:
            self._reconnect = True
            self._wake_ev.set()
            self._send_ev.set()
        if "charger_power" in changed:
            self.smart.phases = self.ch.phases

    def _on_cfg(self, name):
        if name in ("SecurityProfile", "AuthorizationKey"):
            self._reconnect = True  # after the answer: the sender loop closes the link
        self.kick()

    def _veto_profile(self, value):
        cur = self.cfg["SecurityProfile"]
        if value <= cur:
            return "the security profile can only be raised"
        if value >= 3:
            return "profile 3 (client certificates) is not supported"
        if not self.cfg["AuthorizationKey"]:
            return "no AuthorizationKey set"
        if value == 2:
            if not self.settings["ocpp_url"].startswith("wss://"):
                return "profile 2 needs a wss:// URL"
            try:
                os.stat(self.data_dir + "/ocpp_ca.pem")
            except OSError:
                return "profile 2 needs the CA file ocpp_ca.pem"
        return None

    # ---- the two tasks --------------------------------------------------------------------------
    def tasks(self):
        return [("ocpp", self.run)]

    async def run(self):
        ticker = asyncio.create_task(self._ticker())
        fails = 0
        try:
            while True:
                if not self.active:
                    self._wake_ev.clear()
                    await self._wake_ev.wait()
                    continue
                self._reconnect = False
                if await self._session():
                    fails = 0
                if self._reconnect:
                    continue
                await self._pause(self._backoff(fails))
                fails += 1
        finally:
            ticker.cancel()
            self.link.down()
            self.ws.abort()

    def _backoff(self, n):
        c = self.cfg
        wait = c["RetryBackOffWaitMinimum"] << min(n, c["RetryBackOffRepeatTimes"])
        jitter = c["RetryBackOffRandomRange"]
        if jitter:
            wait += (os.urandom(1)[0] * jitter) / 255
        return wait

    async def _pause(self, seconds):
        self._wake_ev.clear()
        try:
            await asyncio.wait_for_ms(self._wake_ev.wait(), int(seconds * 1000))
        except asyncio.TimeoutError:
            pass

    async def _ticker(self):
        while True:
            try:
                self._tick()
            except Exception as e:  # a bug must not stop transactions being queued
                _log.exc(e, "ocpp tick")
            self._tick_ev.clear()
            try:
                await asyncio.wait_for_ms(self._tick_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass

    # ---- connection ------------------------------------------------------------------------------
    def _tls(self):
        import ssl

        path = self.data_dir + "/ocpp_ca.pem"
        try:
            certs = pem_certs(path)
        except (OSError, ValueError) as e:
            _log.error("wss:// needs the CA certificate in %s: %r", path, e)
            return None
        if not certs:
            _log.error("no certificate in %s", path)
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        for der in certs:
            ctx.load_verify_locations(cadata=der)
        return ctx

    def _resolve(self, host, port):
        # getaddrinfo blocks the loop: once per host, again only after a failed connect.
        if self._addr is not None and self._addr[0] == host:
            return self._addr[1]
        import socket

        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        addr = host
        if isinstance(ai, tuple):
            addr = ai[0]
        elif len(ai) >= 8 and ai[0] == 2 and ai[1] == 0:  # unix: struct sockaddr_in
            addr = "%d.%d.%d.%d" % (ai[4], ai[5], ai[6], ai[7])
        self._addr = (host, addr)
        return addr

    async def _session(self):
        """One connection, until it ends. True when the handshake succeeded."""
        url = self.settings["ocpp_url"]
        try:
            secure, host, port, path = wsclient.parse_url(url)
        except ValueError as e:
            _log.error("ocpp_url %s: %s", url, e)
            return False
        prof = self.cfg["SecurityProfile"]
        if prof >= 2 and not secure:
            _log.error("security profile %d needs wss://: not connecting", prof)
            return False
        ctx = None
        if secure:
            ctx = self._tls()
            if ctx is None:
                return False
        key = self.cfg["AuthorizationKey"]
        headers = ()
        if key:
            cpid = path.rpartition("/")[2]
            cred = binascii.b2a_base64(("%s:%s" % (cpid, key)).encode(), newline=False)
            headers = (("Authorization", "Basic " + cred.decode()),)
        elif prof >= 1:
            _log.error("security profile %d needs an AuthorizationKey: not connecting", prof)
            return False
        try:
            addr = self._resolve(host, port)
            await self.ws.connect(url, protocols=(PROTOCOL,), headers=headers, ssl=ctx, addr=addr)
        except (OSError, ValueError, wsclient.WsError, asyncio.TimeoutError) as e:
            _log.warning("cannot connect to %s: %r", url, e)
            self._addr = None
            return False
        _log.info("connected to %s", url)
        reader, handler = self.link.start()
        try:
            await self._online()
        except (LinkDown, OSError, wsclient.WsError, asyncio.TimeoutError, CallError) as e:
            _log.warning("connection closed: %r", self.link.error or e)
        finally:
            self.link.down()
            reader.cancel()
            handler.cancel()
            if self.ws.open:
                await self.ws.close()
        return True

    async def call(self, action, payload, msg_id=None):
        return await self.link.call(action, payload, self.cfg["MessageTimeout"] * 1000, msg_id)

    def _sync_clock(self, text):
        try:
            t = isotime.parse(text)
        except ValueError:
            return
        if abs(t - self.now()) > 2:
            _log.info("clock set from the central system (%+d s)", t - self.now())
            self.hw.rtc.set(t)

    def boot_fields(self):
        model = "EV PLUS " + self.settings["charger_power"]
        return {
            "chargePointVendor": VENDOR,
            "chargePointModel": model[:20],
            "chargePointSerialNumber": self.hw.serial[:25],
            "firmwareVersion": version.VERSION[:50],
            "meterType": "internal MID",
        }

    async def boot(self):
        """One BootNotification; returns its status."""
        r = await self.call("BootNotification", self.boot_fields())
        status = r.get("status")
        interval = r.get("interval")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            interval = 0
        self._sync_clock(r.get("currentTime"))
        self.registration = status
        if status == "Accepted":
            if interval:
                self.cfg.set("HeartbeatInterval", interval)
            if not self.accepted:
                self._force = {0, 1}  # SHALL send every connector's status after boot
            self.accepted = True
        self._boot_interval = interval or _BOOT_RETRY_S
        return status

    async def _online(self):
        link = self.link
        self._boot_now = False
        while not self.accepted:
            try:
                status = await self.boot()
            except CallError as e:
                _log.warning("BootNotification refused: %s", e)
                status = "Pending"
                self._boot_interval = _BOOT_RETRY_S
            if status == "Accepted":
                break
            _log.warning("registration %s: next BootNotification in %d s", status, self._boot_interval)
            link.silent = status == "Rejected"
            await self._wait_boot(self._boot_interval)
        link.silent = False
        self._hb_ms = time.ticks_ms()
        self._ping_ms = None
        self._q_wait = None
        while True:
            if not link.up or self._reconnect:
                raise LinkDown()
            if self._boot_now:
                self._boot_now = False
                await self.boot()
            await self._send_queue_head()
            await self._send_statuses()
            await self._send_notes()
            await self._heartbeat()
            await self._keepalive()
            if self._ready():
                await asyncio.sleep_ms(0)
                continue
            self._send_ev.clear()
            try:
                await asyncio.wait_for_ms(self._send_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass

    def _ready(self):
        """More work for the sender right away (a queue to drain, notes waiting)."""
        if self._notes:
            return True
        if self.q.pending and self._q_wait is None and not self._events:
            return True
        return False

    async def _wait_boot(self, seconds):
        deadline = time.ticks_add(time.ticks_ms(), seconds * 1000)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if not self.link.up or self._reconnect:
                raise LinkDown()
            if self._boot_now:
                self._boot_now = False
                return
            self._send_ev.clear()
            try:
                await asyncio.wait_for_ms(self._send_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass

    async def _heartbeat(self):
        iv = self.cfg["HeartbeatInterval"]
        if iv <= 0 or time.ticks_diff(time.ticks_ms(), self._hb_ms) < iv * 1000:
            return
        self._hb_ms = time.ticks_ms()
        r = await self.call("Heartbeat", {})  # no answer: the link is dead (TimeoutError)
        self._sync_clock(r.get("currentTime"))

    async def _keepalive(self):
        iv = self.cfg["WebSocketPingInterval"] * 1000
        if iv <= 0:
            return
        now = time.ticks_ms()
        ws = self.ws
        if self._ping_ms is not None:
            if time.ticks_diff(ws.last_rx_ms, self._ping_ms) >= 0:
                self._ping_ms = None  # something (the pong) came back
            elif time.ticks_diff(now, self._ping_ms) > max(iv, _PONG_GRACE_MS):
                raise LinkDown("no pong")
            return
        if time.ticks_diff(now, ws.last_rx_ms) >= iv:
            self._ping_ms = now
            await ws.ping(b"ka")

    # ---- status ---------------------------------------------------------------------------------
    def status_of(self, conn):
        """(status, errorCode, vendorErrorCode) of connector 0 (the charger) or 1."""
        ch = self.ch
        st = ch.ocpp_status()
        bits = ch.active | ch.latched
        err = faults.ocpp_error(bits)
        codes = faults.codes(bits)
        vendor = codes[0] if codes else None
        if err == "NoError" and self.app.rfid.fault:
            err = "ReaderFailure"
        if conn == 0:
            if st != "Faulted":
                st = "Unavailable" if ch.unavailable else "Available"
        elif st == "Available" and self.reservation() is not None:
            st = "Reserved"
        return st, err, vendor

    async def _send_statuses(self):
        if self._events:
            return  # the ticker first queues the transaction message behind this change
        mind = self.cfg["MinimumStatusDuration"] * 1000
        now = time.ticks_ms()
        for conn in (0, 1):
            st = self.status_of(conn)
            seen = self._seen.get(conn)
            if seen is None or seen[0] != st:
                self._seen[conn] = seen = (st, now)
            if conn not in self._force:
                if self._sent.get(conn) == st:
                    continue
                if mind and time.ticks_diff(now, seen[1]) < mind:
                    continue
            await self.send_status(conn, st)

    async def send_status(self, conn, st=None):
        st = st or self.status_of(conn)
        p = {"connectorId": conn, "errorCode": st[1], "status": st[0], "timestamp": isotime.fmt(self.now())}
        if st[2]:
            p["vendorErrorCode"] = st[2]
            row = faults.row(st[2])
            if row:
                p["info"] = row[4][:50]
        try:
            await self.call("StatusNotification", p)
        except CallError as e:
            _log.warning("StatusNotification refused: %s", e)
        self._sent[conn] = st
        self._force.discard(conn)

    # ---- the transaction queue ------------------------------------------------------------------
    async def _send_queue_head(self):
        if self._q_wait is not None:
            if time.ticks_diff(self._q_wait, time.ticks_ms()) > 0:
                return
            self._q_wait = None
        h = self.q.head()
        if h is None:
            return
        seq, action, payload, mid, ref = h
        try:
            r = await self.call(action, payload, mid)
        except (CallError, asyncio.TimeoutError) as e:
            q = self.q
            q.attempts += 1
            if q.attempts >= self.cfg["TransactionMessageAttempts"]:
                _log.error("%s #%d given up after %d attempts: %r", action, seq, q.attempts, e)
                q.ack(seq, -1 if action == "StartTransaction" else None, ref)
                if action == "StartTransaction":
                    self._started(ref, -1, None, payload["idTag"])
            else:
                wait = self.cfg["TransactionMessageRetryInterval"] * q.attempts
                _log.warning("%s #%d failed (%r): retry in %d s", action, seq, e, wait)
                self._q_wait = time.ticks_add(time.ticks_ms(), wait * 1000)
            return
        if action == "StartTransaction":
            tx_id = r.get("transactionId")
            if not isinstance(tx_id, int) or isinstance(tx_id, bool):
                tx_id = -1
            self.q.ack(seq, tx_id, ref)
            self._started(ref, tx_id, r.get("idTagInfo"), payload["idTag"])
        else:
            self.q.ack(seq)
            if action == "StopTransaction" and "idTag" in payload and r.get("idTagInfo"):
                self._learn(payload["idTag"], r.get("idTagInfo"))

    def _started(self, ref, tx_id, info, tag):
        cur = self.cur
        if cur is None or cur["ref"] != ref:
            return  # that session already ended
        cur["id"] = tx_id
        s = self.ch.session
        if s is not None:
            s.tx_id = tx_id
        if info is None:
            return
        status = self._learn(tag, info)
        if status == "Accepted" or cur["mode"] not in ("RFID", "OCPP"):
            return
        _log.warning("transaction %d: id tag %s is %s", tx_id, tag, status)
        if self.cfg["StopTransactionOnInvalidId"]:
            self.stop_session("DeAuthorized")
        else:
            cur["deauth"] = True  # energy stops after MaxEnergyOnInvalidId
            self._tick_ev.set()

    async def _send_notes(self):
        if not self._notes:
            return
        action, payload = self._notes.pop(0)
        try:
            await self.call(action, payload)
        except CallError as e:
            _log.warning("%s refused: %s", action, e)

    # ---- the central system's CALLs ---------------------------------------------------------------
    async def _on_call(self, mid, action, payload):
        link = self.link
        fn = self._handlers.get(action)
        if fn is None:
            await link.reply_error(mid, "NotImplemented", "unknown action")
            return
        after = None
        try:
            schema.check(action, payload, mid)
            if self.registration == "Pending" and action in ("RemoteStartTransaction", "RemoteStopTransaction"):
                res = {"status": "Rejected"}
            else:
                res, after = await fn(self, mid, payload)
        except RpcError as e:
            _log.warning("%s refused: %s %s", action, e.code, e.desc)
            await link.reply_error(mid, e.code, e.desc)
            return
        except (ValueError, KeyError, TypeError, OSError) as e:
            _log.exc(e, "%s failed", action)
            await link.reply_error(mid, "InternalError", str(e)[:80])
            return
        await link.reply(mid, res)
        if after is not None:
            try:
                await after()
            except (CallError, LinkDown, asyncio.TimeoutError) as e:
                _log.warning("after %s: %r", action, e)

    def job(self, name, coro):
        """Runs coro as a task of its own (outliving the connection), one per name."""
        t = self._jobs.get(name)
        if t is not None and not t.done():
            return False
        self._jobs[name] = asyncio.create_task(coro)
        return True

    # ---- authorization source -------------------------------------------------------------------
    def local_info(self, tag):
        """(status, expiry, parent) from the local list (first) or the cache, or None."""
        if self.cfg["LocalAuthListEnabled"]:
            info = self.llist.get(tag)
            if info is not None:
                return info
        if self.cfg["AuthorizationCacheEnabled"]:
            return self.cache.get(tag)
        return None

    def _learn(self, tag, obj):
        """Stores an idTagInfo from the central system; returns the status now valid."""
        try:
            info = info_of(obj)
        except ValueError:
            return "Invalid"
        listed = self.llist.get(tag)
        if listed is not None:
            if valid(listed, self.now()) != valid(info, self.now()):
                _log.warning("local list and central system disagree on %s", tag)
                self.note("StatusNotification", {"connectorId": 0, "errorCode": "LocalListConflict",
                                                 "status": self.status_of(0)[0],
                                                 "timestamp": isotime.fmt(self.now())})
        elif self.cfg["AuthorizationCacheEnabled"]:
            self.cache.store(tag, info)
        return valid(info, self.now())

    async def authorize(self, id_tag):
        """Authorizer source: 'Accepted', a refusal, or None when OCPP is off."""
        if not self.active:
            return None
        cfg = self.cfg
        info = self.local_info(id_tag)
        local = valid(info, self.now()) if info is not None else None
        if self.online:
            if local == "Accepted" and cfg["LocalPreAuthorize"]:
                return local
            try:
                r = await self.call("Authorize", {"idTag": id_tag})
                return self._learn(id_tag, r.get("idTagInfo"))
            except (LinkDown, CallError, asyncio.TimeoutError) as e:
                _log.warning("Authorize failed (%r): deciding offline", e)
        if local is not None and (cfg["LocalAuthorizeOffline"] or local != "Accepted"):
            return local
        if cfg["AllowOfflineTxForUnknownId"] and (info is None or local == "Accepted"):
            return "Accepted"  # never for a known id that is not Accepted now
        return "Invalid"

    async def parent_of(self, tag):
        info = self.local_info(tag)
        if info is None and self.online:
            try:
                r = await self.call("Authorize", {"idTag": tag})
                self._learn(tag, r.get("idTagInfo"))
                info = info_of(r.get("idTagInfo"))
            except (LinkDown, CallError, asyncio.TimeoutError, ValueError):
                return None
        return info[2] if info else None

    async def may_stop(self, id_tag, session):
        """Stop check: another card may stop a charge when both share a parentIdTag."""
        if not self.active:
            return None
        mine = await self.parent_of(session.id_tag)
        theirs = await self.parent_of(id_tag)
        if mine and theirs and mine.upper() == theirs.upper():
            return True
        return None

    # ---- reservations ---------------------------------------------------------------------------
    def reservation(self):
        r = self.state.get("resv")
        if r is not None and r["exp"] <= self.now():
            _log.info("reservation %d expired", r["id"])
            self.end_reservation()
            return None
        return r

    def end_reservation(self):
        if self.state.get("resv") is not None:
            self.state["resv"] = None
            self.save_state()
            self._send_ev.set()

    async def reservation_verdict(self, tag):
        r = self.reservation() if self.active else None
        if r is None or tag.upper() == r["tag"].upper():
            return None
        if r.get("parent"):
            p = await self.parent_of(tag)
            if p and p.upper() == r["parent"].upper():
                return None
        return "Reserved"

    # ---- sessions and the ticker ----------------------------------------------------------------
    def stop_session(self, reason):
        """Ends the running session with an OCPP stop reason."""
        if self.ch.session is None:
            return False
        self._stop_reason = reason
        self.ch.end_session("OCPP")
        return True

    def start_remote(self, tag, profile):
        """RemoteStart accepted: start now, or when the vehicle arrives in time."""
        if self.ch.connected:
            ok, why = self.app.auth.start(tag, "OCPP")
            if not ok:
                _log.warning("remote start of %s failed: %s", tag, why)
                return
            self._remote = (tag, None, profile)
            return
        ms = self.cfg["ConnectionTimeOut"] * 1000
        self._remote = (tag, time.ticks_add(time.ticks_ms(), ms), profile)

    def _tick(self):
        if not self.active:
            self._events = []
            if self._limit is not None:
                self._limit = None
                self.ch.set_external_limit("ocpp", None)  # OCPP switched off: no profile
            return
        now = self.now()
        while self._events:
            kind, s, reason = self._events.pop(0)
            if kind == "start":
                self._tx_start(s)
            else:
                self._tx_end(s, reason)
        cur = self.cur
        if cur is not None:
            self._sample(now, cur)
        self._aligned(now, cur)
        self._apply_limit(now)
        self.reservation()
        if self.state.get("resv") and self.ch.ocpp_status() in ("Faulted", "Unavailable"):
            _log.info("reservation ended: charger %s", self.ch.ocpp_status())
            self.end_reservation()
        rm = self._remote
        if rm is not None and rm[1] is not None:
            if self.ch.connected and self.ch.session is None:
                self._remote = None
                self.start_remote(rm[0], rm[2])
            elif time.ticks_diff(time.ticks_ms(), rm[1]) >= 0:
                _log.info("remote start of %s: no vehicle within ConnectionTimeOut", rm[0])
                self._remote = None
        sched = self.state.get("sched")
        if sched is not None and self.ch.session is None:
            self.set_available(sched == "Operative")
        fw = self.state.get("fw")
        if fw and fw.get("st") == "Pending" and fw["date"] <= now:
            from evse.ocpp import transfer

            self.job("firmware", transfer.update_firmware(self))

    def _tx_start(self, s):
        q = self.q
        ref = q.next_seq()
        payload = {
            "connectorId": 1,
            "idTag": s.id_tag[:20],
            "meterStart": int(s.start_wh),
            "timestamp": isotime.fmt(s.start_s),
        }
        r = self.reservation()
        if r is not None and s.id_tag.upper() in (r["tag"].upper(), (r.get("parent") or "").upper()):
            payload["reservationId"] = r["id"]
            self.end_reservation()
        elif r is not None:
            info = self.local_info(s.id_tag)
            if info and info[2] and r.get("parent") and info[2].upper() == r["parent"].upper():
                payload["reservationId"] = r["id"]
                self.end_reservation()
        q.push("StartTransaction", payload, ref, rpc.new_id())
        q.set_open(ref, s.id_tag, s.start_wh, s.start_s)
        self.cur = {"ref": ref, "id": None, "start": s.start_s, "mode": s.start_mode,
                    "tag": s.id_tag, "begin": None, "deauth": False}
        names = self.cfg["StopTxnSampledData"]
        if names:
            self.cur["begin"] = meterval.meter_value(self.app, names, "Transaction.Begin", s.start_s)
        self._next_sample = None
        rm = self._remote
        if rm is not None and rm[0].upper() == s.id_tag.upper():
            self._remote = None
            if rm[2] is not None:
                self.smart.install(1, rm[2], -1, self.now())
        self._send_ev.set()

    def _tx_end(self, s, reason):
        cur = self.cur
        if cur is None:
            return
        end = s.end_s or self.now()
        wh = s.start_wh + s.energy_wh
        if reason is None:
            reason = _REASONS.get(s.stop_mode, "Other")
        payload = {"meterStop": int(wh), "timestamp": isotime.fmt(end), "reason": reason}
        if s.stop_mode in ("RFID", "App"):
            payload["idTag"] = s.id_tag[:20]
        names = self.cfg["StopTxnSampledData"]
        if names and cur["begin"] is not None:
            payload["transactionData"] = [
                cur["begin"], meterval.meter_value(self.app, names, "Transaction.End", end)
            ]
        self.q.push("StopTransaction", payload, cur["ref"], rpc.new_id())
        self.q.close_open()
        self.cur = None
        self.smart.tx_ended()
        self._send_ev.set()

    def _sample(self, now, cur):
        iv = self.cfg["MeterValueSampleInterval"]
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
        names = self.cfg["MeterValuesSampledData"]
        if not names:
            return
        mv = meterval.meter_value(self.app, names, "Sample.Periodic", now)
        self.q.push("MeterValues", {"connectorId": 1, "meterValue": [mv]}, cur["ref"], rpc.new_id())
        self.q.touch_open(self.app.metering.energy_wh, now)
        self._send_ev.set()

    def _aligned(self, now, cur):
        iv = self.cfg["ClockAlignedDataInterval"]
        if iv <= 0:
            self._aligned_slot = None
            return
        slot = now // iv
        if self._aligned_slot is None or slot == self._aligned_slot:
            self._aligned_slot = slot
            return
        self._aligned_slot = slot
        names = self.cfg["MeterValuesAlignedData"]
        if not names:
            return
        mv = meterval.meter_value(self.app, names, "Sample.Clock", slot * iv)
        p = {"connectorId": 1, "meterValue": [mv]}
        if cur is not None:
            self.q.push("MeterValues", p, cur["ref"], rpc.new_id())
            self._send_ev.set()
        elif self.online:
            self.note("MeterValues", p)

    def _apply_limit(self, now):
        cur = self.cur
        if cur is None:
            a = self.smart.limit(now)
        else:
            a = self.smart.limit(now, 1, cur["start"], -1 if cur["id"] is None else cur["id"])
        if cur is not None and cur["deauth"]:
            used = self.app.metering.energy_wh - (self.ch.session.start_wh if self.ch.session else 0)
            if used >= self.cfg["MaxEnergyOnInvalidId"]:
                a = 0.0
        if a != self._limit:
            self._limit = a
            _log.info("charging profile limit: %s", "none" if a is None else "%.1f A" % a)
            self.ch.set_external_limit("ocpp", a)

    # ---- availability, reset, firmware --------------------------------------------------------------
    def set_available(self, operative):
        self.state.pop("sched", None)
        self.ch.unavailable = not operative
        self.state["inop"] = not operative
        if not operative:
            self.state["resv"] = None
        self.save_state()
        self._send_ev.set()

    async def reset(self, hard):
        _log.warning("%s reset requested by the central system", "hard" if hard else "soft")
        if self.ch.session is not None:
            self.stop_session("HardReset" if hard else "SoftReset")
        self._tick_ev.set()
        deadline = time.ticks_add(time.ticks_ms(), 3000 if hard else 10000)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if not self._events and (hard or not self.online or not self.q.pending):
                break
            await asyncio.sleep_ms(100)
        if self.ws.open:
            await self.ws.close(1000, 1000)
        self.hw.reset()

    def firmware_status(self, status):
        """FirmwareStatusNotification (installers report through this)."""
        self.fw_status = status
        fw = self.state.get("fw")
        if fw is not None:
            fw["st"] = status
            self.save_state()
        self.note("FirmwareStatusNotification", {"status": status})

    def diagnostics_status(self, status):
        self.diag_status = status
        self.note("DiagnosticsStatusNotification", {"status": status})
