# The OCPP 1.6J charge point (docs/ocpp.md): the session with the central system
# (BootNotification, heartbeats, status, the transaction queue), authorization as a
# source of the Authorizer, and the charger's side of transactions, meter values,
# smart charging, reservations and availability.
#
# Two tasks: run() keeps one connection (reconnecting with exponential back-off and
# jitter; every CP->CS CALL goes out from its sender loop, one at a time) and _ticker()
# does what must happen whether or not we are connected (transactions.py: queue the
# transaction messages, sample meter values, apply the charging-profile limit; expire
# reservations, scheduled availability, a due firmware update). Authorization and
# reservations: authsrc.py.
import asyncio
import binascii
import gc
import json
import os
import time
from micropython import const

import atomicfile
import dnsclient
import log
import wsclient
from evse import faults
from evse import version
from evse.ocpp import isotime
from evse.ocpp import schema
from evse.ocpp.authlist import Cache, TagTable
from evse.ocpp.authsrc import Authorization, Gate
from evse.ocpp.config import Config, load_json
from evse.ocpp.link import CallError, Link, LinkDown
from evse.ocpp.rpc import RpcError
from evse.ocpp import smart
from evse.ocpp.smart import Smart
from evse.ocpp.transactions import Transactions
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
_DNS_TIMEOUT_MS = const(4000)

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


class Service:
    def __init__(self, app, at_boot=False):
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
        # OCPP files that are there but cannot be read: {file: why and what is in use},
        # configuration errors (CFG) until the central system sets them again.
        self.store_errors = {}
        bad = []
        self.state = load_json(self._state_path, 2048, bad.append)
        if bad:
            # Whether the central system had taken the charger out of service is unknown:
            # it stays Inoperative (reported as Unavailable) until a ChangeAvailability.
            self.state = {"inop": True}
            # Unreadable, or only an older copy readable (it may predate an Inoperative).
            self.store_errors["ocpp_state.json"] = (
                "%s: Inoperative until the central system sends ChangeAvailability"
                % bad[0].partition(" ")[2])
            _log.error("%s: Inoperative until ChangeAvailability", bad[0])
        self.ws = wsclient.WsClient(max_message=6144, tx_size=1024)
        self.link = Link(self.ws, self._on_call)
        self._send_ev = asyncio.Event()
        self.link.kick = self._send_ev
        self._tick_ev = asyncio.Event()
        self._wake_ev = asyncio.Event()  # settings changed: reconnect now
        self.accepted = False  # BootNotification accepted since this boot
        self.registration = None
        self.auth = Authorization(self)
        self.tx = Transactions(self)
        self._notes = []
        self._sent = {}  # connector -> (status, errorCode, vendorErrorCode) delivered
        self._seen = {}  # connector -> (status tuple, ticks_ms since)
        self._force = set()  # connectors whose status must go out even if unchanged
        self._q_wait = None  # ticks_ms before which the queue head is not retried
        self._q_wait_mv = None  # the MeterValues record so waiting, if it is one
        self._hb_ms = 0
        self._ping_ms = None
        self._boot_interval = _BOOT_RETRY_S
        self._reconnect = False
        self._addr = None  # (host, address) of the last DNS answer
        # (ip, port) of the DNS server, or None: the network interface's, asked afresh
        # for each connection (DHCP may change it).
        self.dns_server = self._dns_server
        self.dns_timeout_ms = _DNS_TIMEOUT_MS
        self.diag_status = "Idle"
        self.fw_status = "Idle"
        self._jobs = {}  # name -> task (reset, diagnostics, firmware)
        self.on_update_firmware = None  # async fn(location, date, retries, interval, kept)
        from evse.ocpp import handlers

        self._handlers = handlers.TABLE
        ch.listeners.append(self.tx.on_charger)
        app.auth.sources.insert(0, Gate(self.auth))
        app.auth.sources.append(self.auth)
        app.auth.stop_checks.append(self.auth)
        app.history.listeners.append(self._on_history)
        app.settings.on_change(self._on_settings)
        cfg.vetoes["SecurityProfile"] = self._veto_profile
        cfg.vetoes["AuthorizationKey"] = self._veto_key
        cfg.dynamic["UnlockConnectorOnEVSideDisconnect"] = self._unlock_on_unplug
        cfg.listeners.append(self._on_cfg)
        # Why the charger does not connect, when it is a rule and not the network (the
        # status page's `refused`), and why the AuthorizationKey was last cleared.
        self.refused = None
        self.key_note = None
        cfg.host_now = self._url_host
        self._check_key(at_boot)
        if self.state.get("inop"):
            ch.unavailable = True
        self.update_store_limit()
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

    def update_store_limit(self, off=False):
        """The 6 A limit (smart.STORE_LIMIT) while the charging profile store cannot be
        read: it may have held a site limit (ChargePointMaxProfile). None when OCPP is
        off (no profile applies then) or the central system has set profiles again."""
        err = self.smart.store_error
        if err is None:
            self.store_errors.pop("ocpp_profiles.json", None)
        else:
            self.store_errors["ocpp_profiles.json"] = (
                "%s: %d A (limit %s) until the central system sets or clears charging "
                "profiles" % (err.partition(" ")[2], smart.STORE_LIMIT_A, smart.STORE_LIMIT))
        lim = None if err is None or off else smart.STORE_LIMIT_A
        if self.ch.external.get(smart.STORE_LIMIT) != lim:
            self.ch.set_external_limit(smart.STORE_LIMIT, lim)

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
            "transaction_id": self.tx.cur["id"] if self.tx.cur else None,
            "reservation": (self.state.get("resv") or {}).get("id"),
            "refused": self.refused,
        }

    def key_view(self):
        """The web app's view of the AuthorizationKey: whether one is set, never its value."""
        return {"ocpp_auth_key_set": bool(self.cfg["AuthorizationKey"]),
                "ocpp_auth_key_note": self.key_note}

    def set_key(self, text):
        """The technician's AuthorizationKey (web app), bound to the URL in force."""
        self.cfg.set("AuthorizationKey", text)
        self.key_note = None
        _log.info("AuthorizationKey %s by the technician", "set" if text else "cleared")

    # ---- the AuthorizationKey's central system ------------------------------------------------
    def _url_host(self):
        """scheme://host:port of ocpp_url ("" when there is none): whom a key goes to."""
        try:
            secure, host, port, _p = wsclient.parse_url(self.settings["ocpp_url"])
        except ValueError:
            return ""
        return "%s://%s:%d" % ("wss" if secure else "ws", host.lower(), port)

    def _check_key(self, at_boot=False):
        """Clears the AuthorizationKey when ocpp_url names another central system than
        the one it was set for: it is never sent to a server the key's owner did not
        choose (whoever can change the URL is not trusted with the key). A key bound to
        none takes the URL stored at boot only (at_boot)."""
        why = self.cfg.bind_key(self._url_host(), at_boot)
        if why:
            self.key_note = why + ": AuthorizationKey cleared"
            _log.warning("%s: AuthorizationKey cleared; the technician (web app) or the "
                         "central system must set it again", why)

    def note(self, action, payload):
        """A non-transaction message to send when possible (oldest dropped when full)."""
        if len(self._notes) >= _NOTES:
            self._notes.pop(0)
        self._notes.append((action, payload))
        self._send_ev.set()

    # ---- boot-time recovery --------------------------------------------------------------------
    def _recover(self):
        self.tx.recover()
        fw = self.fw_update()
        if fw is not None and fw.resume_kept():
            # Cut while the verified file waited for the charge to end: the installer
            # kept it (evse/ota.py); the request goes on from there, Downloaded already said.
            self.fw_status = "Downloaded"
            return
        ota = getattr(self.app, "ota", None)
        if ota is not None:
            ota.drop_kept()  # no request waits for a kept file
        # Cut while downloading or installing: say how it ended, honestly (a new version
        # on trial says Installed once it proves healthy: firmware_confirmed()).
        st = fw.cut_outcome(version.VERSION, self._on_trial) if fw is not None else None
        if st is not None:
            self.firmware_status(st)

    # ---- listeners --------------------------------------------------------------------------------
    def _on_history(self, kind, rec):
        if kind == "fault" and self.online:
            self.note("DataTransfer", {"vendorId": VENDOR, "messageId": "FaultReport", "data": json.dumps(rec)})

    def _on_settings(self, changed):
        if "ocpp_url" in changed:
            self._check_key()
        if "ocpp_url" in changed or "ocpp_allow_insecure_auth" in changed:
            self._reconnect = True
            self._wake_ev.set()
            self._send_ev.set()
        if "charger_power" in changed:
            self.smart.phases = self.ch.phases

    def _on_cfg(self, name):
        if name in ("SecurityProfile", "AuthorizationKey"):
            self._reconnect = True  # after the answer: the sender loop closes the link
        self.kick()

    def _veto_key(self, value):
        """ChangeConfiguration AuthorizationKey: Rejected where the charger would refuse
        to send it (ws:// without ocpp_allow_insecure_auth), else one frame injected
        into a plain link would cut the charger off until a technician comes."""
        if self.settings["ocpp_url"].startswith("ws://") and \
                not self.settings["ocpp_allow_insecure_auth"]:
            return "a key is never sent over ws:// without ocpp_allow_insecure_auth"
        return None

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
        # MicroPython's own `tls` module (1.23+), not micropython-lib's `ssl` wrapper: its
        # SSLContext takes asyncio's wrap_socket call as it is, and needs no package.
        import tls

        if not hasattr(tls, "CERT_REQUIRED"):
            # A TLS library that cannot check certificates (axTLS): refused, never used
            # unverified.
            _log.error("this firmware's TLS cannot verify certificates: no wss:// or https://")
            return None
        path = self.data_dir + "/ocpp_ca.pem"
        try:
            certs = pem_certs(path)
        except (OSError, ValueError) as e:
            _log.error("wss:// needs the CA certificate in %s: %r", path, e)
            return None
        if not certs:
            _log.error("no certificate in %s", path)
            return None
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        for der in certs:
            ctx.load_verify_locations(der)
        return ctx

    def _dns_server(self):
        return dnsclient.wlan_server(getattr(self.hw, "wlan", None))

    async def _address(self, host):
        """The address to connect to. A name is asked of the DNS server for every
        connection, without blocking the loop (socket.getaddrinfo would stop the pilot
        and protection for seconds when the server is silent), so a central system
        that moves is found at the next reconnect; while the server does not answer,
        the last answer for this host is used."""
        addr = dnsclient.local(host)  # an IP literal or localhost: nothing to ask
        if addr is not None:
            return addr
        try:
            addr = await dnsclient.resolve(host, self.dns_server(), self.dns_timeout_ms)
        except (OSError, ValueError, dnsclient.DnsError, asyncio.TimeoutError) as e:
            last = self._addr
            if last is None or last[0] != host:
                raise OSError("cannot resolve %s: %r" % (host, e))
            _log.warning("cannot resolve %s (%r): using its last address %s", host, e, last[1])
            return last[1]
        self._addr = (host, addr)
        return addr

    async def _session(self):
        """One connection, until it ends. True when the handshake succeeded."""
        self._check_key()
        self.refused = None
        url = self.settings["ocpp_url"]
        try:
            secure, host, port, path = wsclient.parse_url(url)
        except ValueError as e:
            _log.error("ocpp_url %s: %s", url, e)
            return False
        prof = self.cfg["SecurityProfile"]
        if prof >= 2 and not secure:
            return self._refuse("security profile %d needs wss://" % prof)
        ctx = None
        if secure:
            ctx = self._tls()
            if ctx is None:
                return False
        key = self.cfg["AuthorizationKey"]
        headers = ()
        if key and not secure and not self.settings["ocpp_allow_insecure_auth"]:
            # Basic auth over ws:// hands the key to anyone on the path.
            return self._refuse("AuthorizationKey over ws:// (unencrypted) refused: use "
                                "wss:// or allow it (ocpp_allow_insecure_auth)")
        if key:
            cpid = path.rpartition("/")[2]
            cred = binascii.b2a_base64(("%s:%s" % (cpid, key)).encode(), newline=False)
            headers = (("Authorization", "Basic " + cred.decode()),)
        elif prof >= 1:
            return self._refuse("security profile %d needs an AuthorizationKey" % prof)
        try:
            addr = await self._address(host)
            await self.ws.connect(url, protocols=(PROTOCOL,), headers=headers, ssl=ctx, addr=addr)
        except (OSError, ValueError, wsclient.WsError, asyncio.TimeoutError) as e:
            _log.warning("cannot connect to %s: %r", url, e)
            return False
        _log.info("connected to %s", url)
        reader, handler = self.link.start()
        try:
            await self._online()
        except (LinkDown, OSError, wsclient.WsError, asyncio.TimeoutError, CallError, MemoryError) as e:
            if isinstance(e, MemoryError):
                gc.collect()  # no room for one of our calls: reconnect rather than die
            _log.warning("connection closed: %r", self.link.error or e)
        finally:
            self.link.down()
            reader.cancel()
            handler.cancel()
            if self.ws.open:
                await self.ws.close()
        return True

    def _refuse(self, why):
        self.refused = why
        _log.error("%s: not connecting", why)
        return False

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
            self._send_ev.set()  # an Accepted to a triggered boot ends the Pending wait now
        self._boot_interval = interval or _BOOT_RETRY_S
        return status

    async def _online(self):
        link = self.link
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
        self._q_wait_mv = None
        while True:
            if not link.up or self._reconnect:
                raise LinkDown()
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
        if self.q.pending and self._q_wait is None and not self.tx.events:
            return True
        return False

    async def _wait_boot(self, seconds):
        deadline = time.ticks_add(time.ticks_ms(), seconds * 1000)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if not self.link.up or self._reconnect:
                raise LinkDown()
            if self.accepted:
                return  # a TriggerMessage(BootNotification) was Accepted meanwhile
            self._send_ev.clear()
            try:
                await asyncio.wait_for_ms(self._send_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass

    async def _heartbeat(self):
        iv = self.cfg["HeartbeatInterval"]
        # A negative age is a time over 2**29 ms old (the ticks of a 32-bit port wrapped):
        # long due, e.g. an interval switched on after days off. Not "just sent".
        if iv <= 0 or 0 <= time.ticks_diff(time.ticks_ms(), self._hb_ms) < iv * 1000:
            return
        self._hb_ms = time.ticks_ms()
        try:
            r = await self.call("Heartbeat", {})  # no answer: the link is dead (TimeoutError)
        except CallError as e:
            # An answer, if a refusal: the link is alive, and nothing else depends on it.
            _log.warning("Heartbeat refused: %s", e)
            return
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
        if not 0 <= time.ticks_diff(now, ws.last_rx_ms) < iv:  # below zero: as above
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
        elif st == "Available" and self.auth.reservation() is not None:
            st = "Reserved"
        return st, err, vendor

    async def _send_statuses(self):
        if self.tx.events:
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
        q = self.q
        if self._q_wait is not None:
            mv = self._q_wait_mv
            if mv is not None and q.tx_behind(mv):
                # A Start/Stop was queued behind the MeterValues waiting for its retry.
                _log.error("MeterValues #%d given up after %d attempts: a transaction "
                           "message waits behind it", mv, q.attempts)
                q.ack(mv)
            elif time.ticks_diff(self._q_wait, time.ticks_ms()) > 0:
                return
            self._q_wait = None
            self._q_wait_mv = None
        h = q.head()
        if h is None:
            return
        seq, action, payload, mid, ref = h
        try:
            r = await self.call(action, payload, mid)
        except (CallError, asyncio.TimeoutError) as e:
            q.attempts += 1
            if action == "MeterValues" and q.tx_behind(seq):
                # Its retries would hold the Start/Stop behind it for interval x attempts.
                _log.error("MeterValues #%d given up (%r): a transaction message waits "
                           "behind it", seq, e)
                q.ack(seq)
            elif q.attempts >= self.cfg["TransactionMessageAttempts"]:
                _log.error("%s #%d given up after %d attempts: %r", action, seq, q.attempts, e)
                q.ack(seq, -1 if action == "StartTransaction" else None, ref)
                if action == "StartTransaction":
                    self.tx.started(ref, -1, None, payload["idTag"])
            else:
                wait = self.cfg["TransactionMessageRetryInterval"] * q.attempts
                _log.warning("%s #%d failed (%r): retry in %d s", action, seq, e, wait)
                self._q_wait = time.ticks_add(time.ticks_ms(), wait * 1000)
                self._q_wait_mv = seq if action == "MeterValues" else None
            return
        if action == "StartTransaction":
            tx_id = r.get("transactionId")
            if not isinstance(tx_id, int) or isinstance(tx_id, bool):
                tx_id = -1
            self.q.ack(seq, tx_id, ref)
            self.tx.started(ref, tx_id, r.get("idTagInfo"), payload["idTag"])
        else:
            self.q.ack(seq)
            if action == "StopTransaction" and "idTag" in payload and r.get("idTagInfo"):
                self.auth.learn(payload["idTag"], r.get("idTagInfo"))

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

    def _tick(self):
        if not self.active:
            self.tx.events = []
            self.tx.apply_limit(0, off=True)  # OCPP switched off: no profile limits
            return
        now = self.now()
        self.tx.tick(now)
        ch = self.ch
        if self.auth.reservation() is not None and ch.ocpp_status() in ("Faulted", "Unavailable"):
            _log.info("reservation ended: charger %s", ch.ocpp_status())
            self.auth.end_reservation()
        sched = self.state.get("sched")
        if sched is not None and ch.session is None:
            self.set_available(sched == "Operative")
        fw = self.fw_update()
        if fw is not None and fw.due(now):
            from evse.ocpp import transfer

            self.job("firmware", transfer.update_firmware(self))

    # ---- availability, reset, firmware --------------------------------------------------------------
    def set_available(self, operative):
        self.state.pop("sched", None)
        self.ch.unavailable = not operative
        if not operative:
            self.ch.auth_pending = None  # a waiting authorization ends with Inoperative
        self.state["inop"] = not operative
        if not operative:
            self.state["resv"] = None
        self.save_state()
        self._send_ev.set()

    async def reset(self, hard):
        _log.warning("%s reset requested by the central system", "hard" if hard else "soft")
        if self.ch.session is not None:
            self.tx.stop_session("HardReset" if hard else "SoftReset")
        self._tick_ev.set()
        deadline = time.ticks_add(time.ticks_ms(), 3000 if hard else 10000)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if not self.tx.events and (hard or not self.online or not self.q.pending):
                break
            await asyncio.sleep_ms(100)
        if self.ws.open:
            await self.ws.close(1000, 1000)
        self.hw.reset()

    def firmware_status(self, status):
        """FirmwareStatusNotification (installers report through this)."""
        self.fw_status = status
        fw = self.fw_update()
        if fw is not None:
            fw.status(status)
        self.note("FirmwareStatusNotification", {"status": status})

    def firmware_confirmed(self):
        """The new version passed its health check (evse/ota.py): Installed, when an
        UpdateFirmware installed it."""
        fw = self.fw_update()
        if fw is not None and fw.installed(version.VERSION):
            self.firmware_status("Installed")

    def fw_update(self):
        """The UpdateFirmware request under way (evse/ocpp/fwupdate.py), None when none."""
        d = self.state.get("fw")
        if d is None:
            return None
        from evse.ocpp.fwupdate import FwUpdate

        return FwUpdate(self, d)

    def _on_trial(self):
        ota = getattr(self.app, "ota", None)
        return ota is not None and ota.running()["trial"]

    def diagnostics_status(self, status):
        self.diag_status = status
        self.note("DiagnosticsStatusNotification", {"status": status})
