# The OCPP 1.6J charge point's connection to the central system (docs/ocpp.md): the
# address (DNS) and TLS, the WebSocket session with its back-off, BootNotification and
# the Pending/Rejected wait, heartbeats and keep-alive pings, and the sender loop, from
# which every CP->CS CALL goes out one at a time: the transaction queue, status changes
# and the other messages. The AuthorizationKey's binding to the central system it is for.
#
# Service is the charge point (chargepoint.py: the stores, status, availability,
# firmware and diagnostics state, the central system's CALLs, the ticker) with its
# connection. run() keeps one connection (reconnecting with exponential back-off and
# jitter) and runs the ticker beside it. Authorization and reservations: authsrc.py.
import asyncio
import binascii
import gc
import os
import time
from micropython import const

import log
import wsclient
import evse
from evse import faults
from evse import version
from evse.ocpp import isotime
from evse.ocpp.chargepoint import ChargePoint
from evse.ocpp import VENDOR
from evse.ocpp.link import CallError, Link, LinkDown

_log = log.get("ocpp")

PROTOCOL = "ocpp1.6"
_TICK_MS = const(1000)
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


class Service(ChargePoint):
    def __init__(self, hw, data_dir, settings, charger, metering, authorizer, history, rfid,
                 ota, status, at_boot=False):
        ChargePoint.__init__(self, hw, data_dir, settings, charger, metering, authorizer,
                             history, rfid, ota, status)
        cfg = self.cfg
        # The largest message the charger takes: a SendLocalList of SendLocalListMaxLength
        # (20) entries with every field, or a profile of ChargingScheduleMaxPeriods (24),
        # is under 3.5 KB. A longer one up to 64 KB is dropped and answered (GenericError),
        # the connection kept; beyond that the connection is closed (1009).
        self.ws = wsclient.WsClient(max_message=4096, max_skip=65536, tx_size=256)
        self.link = Link(self.ws, self._on_call)
        self.link.kick = self._send_ev
        self._wake_ev = asyncio.Event()  # settings changed: reconnect now
        self.accepted = False  # BootNotification accepted since this boot
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
        cfg.vetoes["SecurityProfile"] = self._veto_profile
        cfg.vetoes["AuthorizationKey"] = self._veto_key
        cfg.listeners.append(self._on_cfg)
        # Why the charger does not connect, when it is a rule and not the network (the
        # status page's `refused`), and why the AuthorizationKey was last cleared.
        self.refused = None
        self.key_note = None
        cfg.host_now = self._url_host
        self._check_key(at_boot)
        self._resume()

    @property
    def online(self):
        return self.link.up and self.accepted

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

    # ---- listeners ------------------------------------------------------------------------------
    def on_settings(self, changed):
        if "ocpp_url" in changed:
            self._check_key()
        if "ocpp_url" in changed or "ocpp_allow_insecure_auth" in changed:
            self._reconnect = True
            self._wake_ev.set()
            self._send_ev.set()
        if "charger_power" in changed:
            if self.smart_loaded is not None:
                self.smart_loaded.phases = self.ch.phases

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

    # ---- the connection and the ticker ----------------------------------------------------------
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

    # ---- connection ------------------------------------------------------------------------------
    def tls(self):
        """The client context of wss://, GetDiagnostics' and the firmware download's
        https:// (ocpp_ca.pem); None (logged) when there is none to verify with."""
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
        import dnsclient

        return dnsclient.wlan_server(getattr(self.hw, "wlan", None))

    async def _address(self, host):
        """The address to connect to. A name is asked of the DNS server for every
        connection, without blocking the loop (socket.getaddrinfo would stop the pilot
        and protection for seconds when the server is silent), so a central system
        that moves is found at the next reconnect; while the server does not answer,
        the last answer for this host is used. lib/dnsclient is imported only while a
        connection is made and forgotten after (0.65 KB of a board's heap)."""
        import dnsclient

        try:
            addr = dnsclient.local(host)  # an IP literal or localhost: nothing to ask
            if addr is not None:
                return addr
            try:
                addr = await dnsclient.resolve(host, self.dns_server(), self.dns_timeout_ms)
            except (OSError, ValueError, dnsclient.DnsError, asyncio.TimeoutError) as e:
                last = self._addr
                if last is None or last[0] != host:
                    raise OSError("cannot resolve %s: %r" % (host, e))
                _log.warning("cannot resolve %s (%r): using its last address %s", host, e,
                             last[1])
                return last[1]
            self._addr = (host, addr)
            return addr
        finally:
            evse.unload("dnsclient")

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
            ctx = self.tls()
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
            try:
                self.hw.rtc.set(t)
            except (ValueError, OverflowError) as e:
                # A time the clock cannot hold (before 1970, past a port's gmtime range):
                # kept as it is, the answer is fine otherwise.
                _log.warning("clock not set to %s: %r", text, e)

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
            if interval:  # within the key's range (a day), as a ChangeConfiguration is
                self.cfg.set("HeartbeatInterval", min(interval, 86400))
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
        # The interval has no upper bound (a week is a fair Pending answer): the time
        # left is counted down step by step, never a deadline in ticks (ticks_add takes
        # at most 2**29 ms on a 32-bit port: OverflowError, and the task would die).
        left = seconds * 1000
        mark = time.ticks_ms()
        while left > 0:
            if not self.link.up or self._reconnect:
                raise LinkDown()
            if self.accepted:
                return  # a TriggerMessage(BootNotification) was Accepted meanwhile
            self._send_ev.clear()
            try:
                await asyncio.wait_for_ms(self._send_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass
            now = time.ticks_ms()
            left -= time.ticks_diff(now, mark)
            mark = now

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

    # ---- reset ----------------------------------------------------------------------------------
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
