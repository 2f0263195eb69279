# The JSON API behind the web pages (ARCHITECTURE §7) and its route table.
#
# Everything that changes the charger or reads a secret needs a login session, and a
# password other than the factory default. State-changing requests must be JSON (a
# cross-site form cannot send that without a CORS preflight, which we never grant).
# Every request must name this charger in its Host (a rebound DNS name gets 421) and,
# when the browser sends an Origin, come from that same address (docs/web.md).
import asyncio
import json

import httpd
from httpd import HTTPError, Response
from micropython import const

from evse import faults
from evse import protection
from evse.auth import FREE_TAG
from evse.web_auth import COOKIE, IDLE_MS, AuthError, WebAuth

_BODY = 4096
# Bodies parsed without a session (login) or before the old password is checked: a
# password is at most 64 characters, 4 bytes each in UTF-8.
_LOGIN_BODY = 320
_PASSWORD_BODY = 640
# Checked on the bytes before json.loads: 4 KB of brackets would be ~2,000 lists, more
# heap than a charger has free. No page sends more than one flat object.
_JSON_DEPTH = 8
_JSON_CONTAINERS = 64
_SCAN_YIELD = 256  # bytes scanned between two yields: ~0.05 ms here, a few ms on a board
_READ_WAIT_MS = 20000  # POST /api/cards/read waits this long for a card
_UPGRADE_MAX = const(4 << 20)  # a .bin: the compiled tree is ~0.3 MB
_AP_ADDR = "192.168.1.1"  # the hotspot's own address (manual §8.1)
_LOOPBACK = ("127.0.0.1", "localhost")
_OWN_TAGS = (FREE_TAG, "APP")  # the charger's own id tags: no card behind them
_DEFAULT_PW = "change the default password"
_SCAN_MS = 10000  # a WiFi scan's answer is given again this long (the scan blocks)
_SCAN_MAX = 20  # networks kept from a scan, the strongest
# In every answer. The CSP repeats index.html's meta tag and adds what only a header
# can say: no framing (clickjacking).
_HEADERS = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'\r\n"
    "X-Frame-Options: DENY\r\nX-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
)
# The routes: (method, path, the Api method that answers[, body limit]). A tuple of
# constants, kept in flash on a frozen build: no heap per route (lib/httpd.py).
_ROUTES = (
    ("GET", "/api/status", "status"),
    ("POST", "/api/login", "login"),
    ("POST", "/api/logout", "logout"),
    ("POST", "/api/password", "password"),
    ("GET", "/api/config", "get_config"),
    ("PUT", "/api/config", "put_config"),
    ("GET", "/api/history", "history"),
    ("GET", "/api/history.csv", "history_csv"),
    ("GET", "/api/faults", "faults"),
    ("POST", "/api/faults/clear", "clear_faults"),
    ("POST", "/api/session/start", "session_start"),
    ("POST", "/api/session/stop", "session_stop"),
    ("PUT", "/api/time", "put_time"),
    ("GET", "/api/wifi/scan", "wifi_scan"),
    ("POST", "/api/wifi/connect", "wifi_connect"),
    ("GET", "/api/cards", "cards"),
    ("POST", "/api/cards", "card_add"),
    ("POST", "/api/cards/read", "card_read"),
    ("PUT", "/api/cards/<slot>", "card_put"),
    ("DELETE", "/api/cards/<slot>", "card_delete"),
    ("POST", "/api/upgrade", "upgrade", _UPGRADE_MAX),
    ("GET", "/api/upgrade", "upgrade_status"),
    ("PUT", "/api/upgrade/key", "upgrade_key"),
    ("GET", "/lang/<file>", "lang_file"),
)


class Api:
    """hw: the network interface, clock, relays and listening address; data_dir: the
    password file and language packs; authorizer: starts a session (evse/auth.py); cards
    and rfid: learning cards; protection: the technician's clear; ota: the upgrade
    service as the app holds it (evse/app.py _Upgrades); status() and errors(): the
    application's views. `http`, the server serving the routes, is set by make_server."""

    def __init__(self, hw, data_dir, settings, charger, protection, history, authorizer,
                 cards, rfid, ota, status, errors):
        self.hw = hw
        self.data_dir = data_dir
        self.settings = settings
        self.charger = charger
        self.protection = protection
        self.records = history  # not self.history: that is the route's handler
        self.authorizer = authorizer
        self.card_store = cards  # not self.cards: that is the route's handler
        self.rfid = rfid
        self.ota = ota
        self.status_view = status
        self.errors = errors
        self.http = None
        self.auth = WebAuth(data_dir)
        bind, port = hw.http_addr
        self._bind = None if bind == "0.0.0.0" else bind
        self._port = str(port)
        self._scan = None  # (auth.now_ms() of the scan, answer)

    # ---- guards -------------------------------------------------------------------------
    def host_ok(self, host):
        """Whether a Host header names this charger: one of its addresses, the listening
        port optional. Any other name (DNS rebinding) is refused."""
        name, sep, port = host.lower().rpartition(":")
        if not sep:
            name = port
        elif port != self._port:
            return False
        if name in _LOOPBACK or name == _AP_ADDR or name == self._bind:
            return True
        try:
            own = self.hw.wlan.ifconfig()[0]
        except Exception:  # no network interface: its address is no name of ours
            return False
        return name == own and own != "0.0.0.0"

    def check_request(self, headers):
        """httpd's hook, before routing: 421 for another Host, 403 for another Origin."""
        host = headers.get("host")
        if not host or not self.host_ok(host):
            return 421
        origin = headers.get("origin")
        if origin is not None and origin.lower() != "http://" + host.lower():
            return 403
        return None

    def _need_session(self, req, change=True):
        """A live session, refreshed; and for a change, a password of the owner's own."""
        token = req.cookies.get(COOKIE)
        if not self.auth.valid(token):
            raise HTTPError(401, "login required")
        req.session = token  # after() sends its cookie again
        if change and req.method not in ("GET", "HEAD") and self.auth.factory:
            raise HTTPError(403, _DEFAULT_PW)

    def _authed(self, req):
        """A live session, looked at without making it last longer (pages that poll)."""
        return self.auth.valid(req.cookies.get(COOKIE), False)

    def _sees_uids(self, req):
        """Whole card UIDs: a session, and a password of the owner's own (the factory
        one is public)."""
        return self._authed(req) and not self.auth.factory

    def after(self, req, res):
        """httpd's hook on every route's answer: one to a live session sets its cookie
        again, so the cookie's Max-Age slides with the session's idle time."""
        token = getattr(req, "session", None)
        if token and self.auth.valid(token, False):
            if not isinstance(res, Response):
                res = Response(res, 200 if res is not None else 204)
            if res.headers is None:
                res.headers = []
            elif isinstance(res.headers, dict):
                res.headers = list(res.headers.items())
            res.headers.append(("Set-Cookie", _cookie(token)))
        return res

    async def _json(self, req, limit=_BODY):
        if req.method != "GET":
            ctype = req.headers.get("content-type", "")
            if not ctype.startswith("application/json"):
                raise HTTPError(415, "send application/json")
        if not req.content_length:
            return {}
        if req.left > limit:
            raise HTTPError(413)
        raw = await req.read(req.left)
        await _check_shape(raw)
        try:
            body = json.loads(raw)
        except ValueError:  # includes UnicodeError
            raise HTTPError(400, "bad json") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object")
        return body

    # ---- handlers ---------------------------------------------------------------------------
    async def status(self, req):
        v = self.status_view()
        v["logged_in"] = self._authed(req)  # the web app shows start and stop (APP Control)
        if not self._sees_uids(req):
            s = v["session"]
            s["id_tag"] = mask(s.get("id_tag"))
        return v

    async def login(self, req):
        body = await self._json(req, _LOGIN_BODY)
        try:
            token = await self.auth.login(body.get("password"), client(req))
        except ValueError as e:
            locked = isinstance(e, AuthError) and e.kind == "locked"
            raise HTTPError(429 if locked else 401, str(e))
        return Response(
            {"ok": True, "must_change_password": self.auth.factory},
            headers={"Set-Cookie": _cookie(token)},
        )

    async def logout(self, req):
        self.auth.logout(req.cookies.get(COOKIE))
        cookie = "%s=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0" % COOKIE
        return Response({"ok": True}, headers={"Set-Cookie": cookie})

    async def password(self, req):
        self._need_session(req, change=False)
        body = await self._json(req, _PASSWORD_BODY)
        try:
            await self.auth.change_password(body.get("old"), body.get("new"), client(req))
        except ValueError as e:
            kind = e.kind if isinstance(e, AuthError) else None
            if kind == "locked":
                raise HTTPError(429, str(e))
            msg = str(e)
            field = "old" if kind == "wrong" else "new"
            return Response({"error": msg, "fields": {field: msg}}, 400)
        return {"ok": True}

    async def get_config(self, req):
        self._need_session(req)
        return self.settings.public()

    async def put_config(self, req):
        self._need_session(req)
        body = await self._json(req)
        errors = self.settings.apply(body)
        if errors:
            return Response({"error": "invalid settings", "fields": errors}, 400)
        return self.settings.public()

    async def history(self, req):
        fix = None if self._sees_uids(req) else _mask_record
        return {"sessions": self.records.session_records(_limit(req), fix)}

    async def history_csv(self, req):
        rows = ["No,Start,End,Start Mode,Stop Mode,Energy kWh,Id,Pauses"]
        authed = self._sees_uids(req)
        for r in self.records.session_list(_limit(req, 200)):
            if not authed:
                _mask_record(r)
            rows.append(
                "%s,%s,%s,%s,%s,%.3f,%s,%d"
                % (
                    r.get("no"),
                    r.get("start") or "",
                    r.get("end") or "",
                    r.get("start_mode") or "",
                    r.get("stop_mode") or "",
                    r.get("energy_kwh") or 0,
                    _csv(r.get("id")),
                    _count(r.get("pauses")),
                )
            )
        return Response(
            "\r\n".join(rows) + "\r\n",
            ctype="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="history.csv"'},
        )

    async def faults(self, req):
        ch = self.charger
        return {
            "faults": self.records.fault_records(_limit(req), _describe),
            "active": self.errors(),
            "latched": faults.codes(ch.latched),
        }

    async def clear_faults(self, req):
        self._need_session(req)
        body = await self._json(req)
        codes = body.get("codes")
        if codes is not None and not (
            isinstance(codes, list) and all(isinstance(c, str) for c in codes)
        ):
            return Response({"error": "codes must be a list", "fields": {"codes": "list of codes"}}, 400)
        try:
            cleared = self.protection.technician_clear(codes)
        except ValueError as e:
            raise HTTPError(400, str(e))
        return {"cleared": cleared, "active": self.errors()}

    async def session_start(self, req):
        self._need_session(req)
        await self._json(req)
        ok, msg = self.authorizer.start("APP", "App")
        if not ok:
            raise HTTPError(409, msg)
        return {"ok": True, "result": msg}  # "started", or "plug in": it waits for the vehicle

    async def session_stop(self, req):
        self._need_session(req)
        await self._json(req)
        ch = self.charger
        if ch.end_session("App") is None:
            if ch.auth_pending is None:
                raise HTTPError(409, "no session running")
            ch.auth_pending = None  # a start still waiting for the vehicle: withdrawn
            return {"ok": True, "result": "cancelled"}
        return {"ok": True}

    async def put_time(self, req):
        self._need_session(req)
        body = await self._json(req)
        t = body.get("epoch_s")
        if not isinstance(t, int) or isinstance(t, bool) or not 1_600_000_000 <= t <= 4_102_444_800:
            return Response(
                {"error": "invalid time", "fields": {"epoch_s": "seconds since 1970, UTC"}}, 400
            )
        self.hw.rtc.set(t)
        return {"ok": True, "system_time": t}

    # ---- RFID cards (manual §8.1.2 point 11) ------------------------------------------------
    async def cards(self, req):
        self._need_session(req)
        if self.auth.factory:  # whole UIDs: not to the public factory password
            raise HTTPError(403, _DEFAULT_PW)
        return {"cards": self.card_store.list(), "rfid_type": self.settings["rfid_type"]}

    async def card_read(self, req):
        self._need_session(req)
        if not _standby(self.charger):
            raise HTTPError(409, "cards can be read and learned only in stand-by")
        try:
            got = await self.rfid.read(_READ_WAIT_MS)
        except ValueError as e:
            raise HTTPError(409, str(e))
        if got is None:
            raise HTTPError(408, "no card on the reader")
        return {"uid": got[0], "kind": got[1]}

    def _slot(self, req):
        try:
            slot = int(req.params["slot"])
        except ValueError:
            slot = 0
        if not 1 <= slot <= 3:
            raise HTTPError(404, "slot must be 1, 2 or 3")
        return slot

    async def card_put(self, req):
        self._need_session(req)
        slot = self._slot(req)
        body = await self._json(req)
        if not _standby(self.charger):
            raise HTTPError(409, "cards can be learned only in stand-by")
        try:
            self.card_store.learn(slot, body.get("uid"))
        except ValueError as e:
            return Response({"error": str(e), "fields": {"uid": str(e)}}, 400)
        return {"cards": self.card_store.list()}

    async def card_add(self, req):
        """Learns a card into the first free slot; refused when all three are in use."""
        self._need_session(req)
        body = await self._json(req)
        if not _standby(self.charger):
            raise HTTPError(409, "cards can be learned only in stand-by")
        slot = self.card_store.free_slot()
        if slot is None:
            raise HTTPError(409, "all three card slots are in use: delete one or write over it")
        try:
            self.card_store.learn(slot, body.get("uid"))
        except ValueError as e:
            return Response({"error": str(e), "fields": {"uid": str(e)}}, 400)
        return {"slot": slot, "cards": self.card_store.list()}

    async def card_delete(self, req):
        self._need_session(req)
        slot = self._slot(req)
        if not _standby(self.charger):
            raise HTTPError(409, "cards can be changed only in stand-by")
        self.card_store.forget(slot)
        return {"cards": self.card_store.list()}

    # ---- WiFi (manual §8.1.2 point 5) ----------------------------------------------------
    async def wifi_scan(self, req):
        """The driver's scan blocks the whole loop (1.5-3 s on an ESP32): only for the
        owner's password, only in stand-by, and at most once per _SCAN_MS."""
        self._need_session(req)
        if self.auth.factory:
            raise HTTPError(403, _DEFAULT_PW)
        if not _standby(self.charger) or self.hw.relays.closed:
            raise HTTPError(409, "networks can be scanned only in stand-by")
        now = self.auth.now_ms()
        if self._scan is None or now - self._scan[0] >= _SCAN_MS:
            nets = []
            for ssid, rssi, auth in self.hw.wlan.scan():
                nets.append({"ssid": ssid, "rssi": rssi, "auth": auth})
            nets.sort(key=lambda n: -n["rssi"])
            del nets[_SCAN_MAX:]
            self._scan = (now, nets)
        return {"networks": self._scan[1], "mode": self.settings["wifi_mode"]}

    async def wifi_connect(self, req):
        self._need_session(req)
        body = await self._json(req)
        changes = {"wifi_ssid": body.get("ssid"), "wifi_password": body.get("password", "")}
        if not changes["wifi_ssid"]:
            return Response({"error": "choose a network", "fields": {"ssid": "required"}}, 400)
        errors = self.settings.apply(changes)
        if errors:
            fields = {("ssid" if k == "wifi_ssid" else "password"): v for k, v in errors.items()}
            return Response({"error": "invalid network settings", "fields": fields}, 400)
        return {"ok": True, "ssid": changes["wifi_ssid"], "mode": self.settings["wifi_mode"]}

    # ---- upgrades (manual §12-13, docs/ota.md) ------------------------------------------
    async def upgrade(self, req):
        """POST /api/upgrade?md5=<32 hex>[&downgrade=1]: body = the .bin (octet-stream).
        409 {"error", "refused": "busy" | "charging" | "checking"} when none may start now."""
        self._need_session(req)
        ota = self.ota.get()
        md5 = req.query.get("md5", "").strip().lower()
        if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
            raise HTTPError(400, "md5 must be 32 hexadecimal digits")
        why = ota.refuse()
        if why:
            from evse.ota import drop_body

            await drop_body(req)
            return Response({"error": why[1], "refused": why[0]}, 409)
        status, result = await ota.upload(req, md5, req.query.get("downgrade") == "1")
        return Response(result, status)

    async def upgrade_key(self, req):
        """PUT /api/upgrade/key {"key": PEM public key or 130 hex digits}: installs the
        first signing key. 409 once one is installed (a key file signed by it replaces it)."""
        self._need_session(req)
        ota = self.ota.get()
        body = await self._json(req)
        text = body.get("key")
        if not isinstance(text, str):
            raise HTTPError(400, "key: a PEM public key or 130 hex digits")
        from evse import otaimage

        try:
            raw = otaimage.parse_key_text(text)
        except ValueError as e:
            return Response({"error": "key: %s" % e, "fields": {"key": str(e)}}, 400)
        if ota.key_installed():
            return Response({"error": "a key is installed: only a key file signed by it "
                             "replaces it", "refused": "installed"}, 409)
        if ota.busy:
            return Response({"error": "an upgrade is in progress", "refused": "busy"}, 409)
        try:
            ota.install_key(raw)
        except otaimage.OtaError as e:
            return Response({"error": e.msg}, 500 if e.code == otaimage.E_WRITE else 409)
        return {"ok": True, "key": ota.key_view()}

    async def upgrade_status(self, req):
        self._need_session(req)
        return self.ota.view()

    async def lang_file(self, req):
        """GET /lang/<file>: a language pack's file from <data>/www/lang/ when there is
        one (docs/ota.md), else the shipped file under the web app's static root."""
        name = req.params["file"]
        srv = self.http
        if srv is None:
            raise HTTPError(404)
        try:
            return srv.static_file(req, self.data_dir + "/www/lang/" + name)
        except HTTPError as e:
            if e.status != 404 or srv.static_root is None:
                raise
        return srv.static_file(req, srv.static_root + "/lang/" + name)


async def _check_shape(raw):
    """HTTPError(400) for a body nested deeper than _JSON_DEPTH or with more than
    _JSON_CONTAINERS arrays and objects; brackets inside strings do not count."""
    if raw.count(b"[") + raw.count(b"{") == 0:
        return
    depth = containers = 0
    in_str = esc = False
    for i, ch in enumerate(raw):
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:  # backslash
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch == 0x5B or ch == 0x7B:  # [ {
            depth += 1
            containers += 1
            if depth > _JSON_DEPTH:
                raise HTTPError(400, "JSON nested deeper than %d" % _JSON_DEPTH)
            if containers > _JSON_CONTAINERS:
                raise HTTPError(400, "JSON with more than %d arrays and objects"
                                % _JSON_CONTAINERS)
        elif ch == 0x5D or ch == 0x7D:  # ] }
            depth -= 1
        if i % _SCAN_YIELD == _SCAN_YIELD - 1:
            await asyncio.sleep_ms(0)


def client(req):
    """The client's address as a key: lwIP gives (ip, port), the unix port a sockaddr."""
    peer = req.remote
    if isinstance(peer, tuple):
        return peer[0]
    if isinstance(peer, (bytes, bytearray)) and len(peer) >= 8:
        return bytes(peer[4:8])  # sockaddr_in: family, port, then the IPv4 address
    return peer


def mask(uid):
    """A card UID or OCPP id tag as shown without a session: "****" and its last 4
    characters, or "****" alone when it has fewer than 8. None and the charger's own
    tags (FREE, APP) as they are."""
    if uid is None or uid in _OWN_TAGS:
        return uid
    s = str(uid)
    return "****" + s[-4:] if len(s) >= 8 else "****"


def _standby(ch):
    """No vehicle, no session, no fault: the only time cards may be learned (or a WiFi
    scan blocks the loop)."""
    return ch.ocpp_status() == "Available" and ch.session is None


def _mask_record(rec):
    rec["id"] = mask(rec.get("id"))


def _cookie(token):
    return "%s=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%d" % (COOKIE, token, IDLE_MS // 1000)


def _limit(req, default=50):
    try:
        n = int(req.query.get("limit", default))
    except ValueError:
        raise HTTPError(400, "limit must be a number")
    return max(1, min(n, 200))


def _describe(rec):
    row = faults.row(rec.get("code"))
    if row:
        rec["description"] = row[4]
        rec["clears"] = protection.clear_text(row[0])
        rec["latching"] = row[2]


def _count(v):
    """A record's count as a CSV cell: records older than the field have none."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _csv(v):
    s = "" if v is None else str(v)
    if s[:1] in ("=", "+", "-", "@", "\t", "\r"):
        s = "'" + s  # a spreadsheet evaluates such a cell, quoted or not (CSV injection)
    if any(ch in s for ch in ',"\r\n'):
        s = '"' + s.replace('"', '""') + '"'
    return s


def make_server(api, www_dir):
    """The web server of the API's routes and the web app's static files (www_dir)."""
    import log

    lg = log.get("http")

    def note(msg, exc=None):
        if exc is not None:
            lg.exc(exc, msg)
        else:
            lg.warning("%s", msg)

    # Four slots, not the library's six: the hotspot takes one device, the web app's page
    # asks for at most four files at once, and a fifth connection waits in the backlog
    # while answers say Connection: close (docs/web.md). Each slot keeps 1.6 KB for good.
    # A 1 KB scratch, not 2 KB: files and long answers go out in more, smaller writes.
    api.http = httpd.Server(_ROUTES, static_root=www_dir, log=note, max_conns=4,
                            chunk_size=1024, handlers=api, check_request=api.check_request,
                            after=api.after, extra_headers=_HEADERS)
    return api.http
