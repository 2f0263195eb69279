"""An OCPP 1.6J central system on the `ocpp` package and websockets, for tests and people.

In a test (the server runs in a thread of its own, so blocking test code can drive it):

    cs = CentralSystem()                    # free port on 127.0.0.1; ssl=, auth= optional
    cs.start()
    url = cs.url("CP1")                     # ws://127.0.0.1:<port>/ocpp/CP1
    cs.wait_for(lambda: cs.calls("CP1", "BootNotification"))
    cs.call("CP1", "RemoteStartTransaction", idTag="04A1B2C3")   # -> reply payload (camelCase)
    cs.send_raw("CP1", '[2,"x","Reset",{"type":5}]')             # hostile frames
    cs.stop(); cs.start()                   # central system down, then back (same port)
    cs.close()

Everything that crosses the wire is in `cs.frames` ({"cp", "dir": "in"/"out", "t",
"text", "msg"}), in order. Policies a test may set at any time: `boot_status`,
`boot_interval`, `heartbeat_interval`, `tags` (idTag -> status, default Accepted),
`parents` (idTag -> parentIdTag), `drop` (actions left unanswered), `fail` (actions
answered with a CALLERROR). `upload_url()` starts an HTTP server that keeps what is
POSTed to it (GetDiagnostics) in `cs.uploads`.

By hand:

    python tests/csms.py --port 9000 [--cert srv.pem --key srv.key] [--auth CP1=<key>]

prints every frame and reads commands from stdin, one per line:
    <cpid> <Action> <json payload>       e.g.  CP1 RemoteStartTransaction {"idTag": "04A1B2C3"}
"""

import argparse
import asyncio
import base64
import http.server
import itertools
import json
import ssl as ssl_mod
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import websockets
from harness import Charger, free_port
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.exceptions import ConnectionClosed


def now_iso():
    return datetime.now(timezone.utc).isoformat()


class _Recorder:
    """The websocket as the ocpp ChargePoint sees it, recording every frame."""

    def __init__(self, cs, cp_id, ws):
        self.cs = cs
        self.cp_id = cp_id
        self.ws = ws

    async def recv(self):
        while True:
            text = await self.ws.recv()
            msg = self.cs._record(self.cp_id, "in", text)
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
                action = msg[2]
                if action in self.cs.drop:
                    continue
                if action in self.cs.fail:
                    await self.send(json.dumps([4, msg[1], "InternalError", "told to fail", {}]))
                    continue
            return text

    async def send(self, text):
        await self.ws.send(text)  # recorded once it went out: a closing socket loses it
        self.cs._record(self.cp_id, "out", text)


class _ChargePoint(ChargePoint):
    def __init__(self, cs, cp_id, conn):
        super().__init__(cp_id, conn, response_timeout=cs.response_timeout)
        self.cs = cs

    @on(Action.boot_notification)
    def on_boot(self, **kw):
        cs = self.cs
        return call_result.BootNotification(
            current_time=now_iso(),
            interval=cs.heartbeat_interval if cs.boot_status == "Accepted" else cs.boot_interval,
            status=cs.boot_status,
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **kw):
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status(self, **kw):
        return call_result.StatusNotification()

    def _info(self, tag):
        info = {"status": self.cs.tags.get(tag.upper(), self.cs.default_tag_status)}
        if tag.upper() in self.cs.parents:
            info["parent_id_tag"] = self.cs.parents[tag.upper()]
        return info

    @on(Action.authorize)
    def on_authorize(self, id_tag, **kw):
        return call_result.Authorize(id_tag_info=self._info(id_tag))

    @on(Action.start_transaction)
    def on_start(self, id_tag, **kw):
        return call_result.StartTransaction(
            transaction_id=next(self.cs.tx_ids), id_tag_info=self._info(id_tag)
        )

    @on(Action.stop_transaction)
    def on_stop(self, id_tag=None, **kw):
        if id_tag:
            return call_result.StopTransaction(id_tag_info=self._info(id_tag))
        return call_result.StopTransaction()

    @on(Action.meter_values)
    def on_meter_values(self, **kw):
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, **kw):
        return call_result.DataTransfer(status="Accepted")

    @on(Action.firmware_status_notification)
    def on_fw_status(self, **kw):
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diag_status(self, **kw):
        return call_result.DiagnosticsStatusNotification()


class _Uploads(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        self.server.cs.uploads.append(
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class CentralSystem:
    def __init__(self, host="127.0.0.1", port=0, ssl=None, auth=None, path="/ocpp/", verbose=False):
        self.host = host
        self.port = port or free_port()
        self.ssl = ssl
        self.auth = auth  # {cp_id: key}: HTTP Basic required when set
        self.path = path
        self.verbose = verbose
        self.frames = []
        self.connections = []  # (cp_id, t) of each accepted connection
        self.closes = []  # (cp_id, close code the charge point sent or None) per connection
        self.refused = []  # (cp_id or path, status) of each refused handshake
        self.boot_status = "Accepted"
        self.boot_interval = 10
        self.heartbeat_interval = 300
        self.default_tag_status = "Accepted"
        self.tags = {}
        self.parents = {}
        self.drop = set()
        self.fail = set()
        self.response_timeout = 10
        self.tx_ids = itertools.count(1)
        self.uploads = []
        self._cps = {}
        self._loop = None
        self._thread = None
        self._server = None
        self._http = None

    # ---- lifecycle -----------------------------------------------------------------------
    def url(self, cp_id, host=None):
        scheme = "wss" if self.ssl else "ws"
        return f"{scheme}://{host or self.host}:{self.port}{self.path}{cp_id}"

    def start(self):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        self._run(self._serve(), 10)
        return self

    async def _serve(self):
        self._server = await websockets.serve(
            self._on_connect,
            self.host,
            self.port,
            subprotocols=["ocpp1.6"],
            ssl=self.ssl,
            process_request=self._check_request,
            ping_interval=None,
            max_size=2**20,
        )

    def stop(self):
        """The central system goes down: no more connections, open ones closed."""
        if self._server is not None:
            self._run(self._shutdown(), 10)
            self._server = None

    async def _shutdown(self):
        self._server.close()
        await self._server.wait_closed()
        self._cps.clear()

    def close(self):
        self.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._loop = None

    def _run(self, coro, timeout):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def upload_url(self):
        if self._http is None:
            self._http = http.server.ThreadingHTTPServer((self.host, 0), _Uploads)
            self._http.cs = self
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"http://{self.host}:{self._http.server_address[1]}/upload"

    # ---- connections ---------------------------------------------------------------------
    def _check_request(self, connection, request):
        cp_id = request.path.rstrip("/").rpartition("/")[2]
        if not request.path.startswith(self.path):
            self.refused.append((request.path, 404))
            return connection.respond(404, "unknown path\n")
        if self.auth is not None:
            want = self.auth.get(cp_id)
            got = request.headers.get("Authorization", "")
            expect = "Basic " + base64.b64encode(f"{cp_id}:{want}".encode()).decode()
            if want is None or got != expect:
                self.refused.append((cp_id, 401))
                return connection.respond(401, "bad credentials\n")
        return None

    async def _on_connect(self, ws):
        cp_id = ws.request.path.rstrip("/").rpartition("/")[2]
        if ws.subprotocol != "ocpp1.6":
            await ws.close()
            return
        self.connections.append((cp_id, time.time()))
        cp = _ChargePoint(self, cp_id, _Recorder(self, cp_id, ws))
        self._cps[cp_id] = cp
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closes.append((cp_id, ws.close_code))
            if self._cps.get(cp_id) is cp:
                del self._cps[cp_id]

    def connected(self, cp_id):
        return cp_id in self._cps

    def _record(self, cp_id, direction, text):
        try:
            msg = json.loads(text)
        except (ValueError, TypeError):
            msg = None
        self.frames.append(
            {"cp": cp_id, "dir": direction, "t": time.time(), "text": text, "msg": msg}
        )
        if self.verbose:
            print(f"{'<-' if direction == 'in' else '->'} {cp_id} {text}", flush=True)
        return msg

    # ---- what the charge point sent -------------------------------------------------------
    def mark(self):
        """A position in `frames`: calls(since=mark) sees only what came after it."""
        return len(self.frames)

    def calls(self, cp_id=None, action=None, since=0):
        """CALLs from charge points, in order: [(message id, action, payload), ...]."""
        out = []
        for f in self.frames[since:]:
            m = f["msg"]
            if f["dir"] == "in" and isinstance(m, list) and len(m) == 4 and m[0] == 2:
                if (cp_id is None or f["cp"] == cp_id) and (action is None or m[2] == action):
                    out.append((m[1], m[2], m[3]))
        return out

    def answered(self, cp_id=None):
        """Message id -> how many CALLRESULTs the central system sent for it."""
        out = {}
        for f in list(self.frames):
            m = f["msg"]
            if (
                f["dir"] == "out"
                and (cp_id is None or f["cp"] == cp_id)
                and isinstance(m, list)
                and len(m) == 3
                and m[0] == 3
            ):
                out[m[1]] = out.get(m[1], 0) + 1
        return out

    def delivered(self, cp_id, actions, since=0):
        """The CALLs the central system answered, each message id once, in arrival order:
        what it processed. A CALL that reached it but lost its answer (the connection
        closed in between) comes again with the same id; only the answered copy counts."""
        done = self.answered(cp_id)
        seen = set()
        out = []
        for mid, action, payload in self.calls(cp_id, None, since):
            if action in actions and mid in done and mid not in seen:
                seen.add(mid)
                out.append((mid, action, payload))
        return out

    def payloads(self, cp_id, action, since=0):
        return [c[2] for c in self.calls(cp_id, action, since)]

    def replies(self, cp_id=None):
        """CALLRESULT / CALLERROR frames from charge points, in order."""
        return [
            f["msg"]
            for f in list(self.frames)
            if f["dir"] == "in"
            and (cp_id is None or f["cp"] == cp_id)
            and isinstance(f["msg"], list)
            and f["msg"]
            and f["msg"][0] in (3, 4)
        ]

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"central system: {what} not met within {timeout:g} s")
            time.sleep(0.02)

    def wait_connected(self, cp_id, timeout=15.0):
        return self.wait_for(lambda: self.connected(cp_id), timeout, f"{cp_id} connected")

    # ---- talking to a charge point --------------------------------------------------------
    def call(self, cp_id, action, timeout=None, **payload):
        """Sends a CALL built with the ocpp package (schema-checked both ways) and returns
        the CALLRESULT payload in camelCase; raises the OCPPError of a CALLERROR."""
        cls = getattr(call, action)
        req = cls(**camel_to_snake_case(payload))
        cp = self._cps[cp_id]

        async def go():
            return await cp.call(req, suppress=False)

        res = self._run(go(), timeout or self.response_timeout + 5)
        from dataclasses import asdict

        return snake_to_camel_case({k: v for k, v in asdict(res).items() if v is not None})

    def call_raw(self, cp_id, action, payload, timeout=10.0):
        """Sends [2, id, action, payload] without any schema check; returns the answer frame."""
        mid = str(uuid.uuid4())
        self.send_raw(cp_id, json.dumps([2, mid, action, payload]))
        return self.wait_reply(cp_id, mid, timeout)

    def send_raw(self, cp_id, data, may_close=False):
        """Sends a text (str) or binary (bytes) message as it is. may_close: the charge
        point may close the connection before the message is all sent (a frame refused
        from its header): that ends the send, it is not an error."""
        cp = self._cps[cp_id]
        try:
            self._run(cp._connection.ws.send(data), 10)
        except (ConnectionClosed, ConnectionError):
            if not may_close:
                raise
        if isinstance(data, str):
            self._record(cp_id, "out", data)

    def send_bytes(self, cp_id, raw, close=False):
        """Writes raw bytes on the TCP connection (hand-made frames), optionally closing it."""
        cp = self._cps[cp_id]
        tr = cp._connection.ws.transport

        def go():
            tr.write(raw)
            if close:
                tr.close()

        self._loop.call_soon_threadsafe(go)

    def wait_reply(self, cp_id, mid, timeout=10.0):
        return self.wait_for(
            lambda: next((m for m in self.replies(cp_id) if m[1] == mid), None),
            timeout,
            f"answer to {mid}",
        )


# ---- helpers for tests --------------------------------------------------------------------
def make_certs(d, hostname="localhost"):
    """A test CA, a server certificate for `hostname` signed by it, and an unrelated CA,
    made with the openssl command. Returns the paths as a dict."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=EVSE Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    ossl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        f"/CN={hostname}",
    )
    (d / "ext.cnf").write_text(
        f"subjectAltName=DNS:{hostname},IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    ossl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Unrelated CA",
    )
    return {
        k: d / v
        for k, v in (
            ("ca", "ca.pem"),
            ("cert", "srv.pem"),
            ("key", "srv.key"),
            ("other_ca", "other.pem"),
        )
    }


def server_context(cert, key):
    ctx = ssl_mod.SSLContext(ssl_mod.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


# ---- bodies of the `cs` and `ocpp` fixtures (tests/conftest.py) -------------------------


def running_central_system():
    """A central system on a free port, closed after the test."""
    c = CentralSystem()
    c.start()
    yield c
    c.close()


def ocpp_chargers(request, tmp_path, cs):
    """Factory: ocpp(cp_id="CP1", settings=None, config=None, cards=None, files=None,
    wait_boot=True, url=None, env=None, central=None) starts a firmware process pointed at
    the central system, its data directory pre-seeded as an installer would:
    config: OCPP keys in ocpp_config.json; cards: the learned RFID cards; files:
    {name: bytes or str}. Waits for BootNotification and the connector-1 status unless
    wait_boot is False. Chargers are stopped after the test; their logs end a failure."""
    chargers = []
    request.node.chargers = chargers

    def start(
        cp_id="CP1",
        settings=None,
        config=None,
        cards=None,
        files=None,
        wait_boot=True,
        url=None,
        env=None,
        central=None,
        name=None,
    ):
        central = central or cs
        s = {"ocpp_url": url or central.url(cp_id)}
        s.update(settings or {})
        name = name or f"charger{len(chargers) + 1}"
        data = tmp_path / name / "data"
        data.mkdir(parents=True, exist_ok=True)
        if config:
            (data / "ocpp_config.json").write_text(
                json.dumps({k: str(v) for k, v in config.items()})
            )
        if cards:
            (data / "cards.json").write_text(
                json.dumps({"slots": list(cards) + [None] * (3 - len(cards))})
            )
        for fname, content in (files or {}).items():
            (data / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
        c = Charger(tmp_path / name, settings=s, env=env, name=name)
        chargers.append(c)
        mark = central.mark()
        c.start()
        if wait_boot:
            wait_status(central, cp_id, 1, since=mark, timeout=20)
        return c

    yield start
    for c in chargers:
        c.stop()


def ocpp_view(c):
    """The charger's `ocpp` view (GET /api/status): configured, connected, registration,
    queued, transaction_id, reservation."""
    return c.http("GET", "/api/status").body["ocpp"]


def wait_ocpp(c, predicate, timeout=10.0):
    """Polls ocpp_view(c) until predicate(view) is true; returns that view."""
    deadline = time.monotonic() + timeout
    while True:
        view = ocpp_view(c)
        if view is not None and predicate(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{c.name}: ocpp condition not met within {timeout:g} s: {view}")
        time.sleep(0.05)


def wait_status(cs, cp_id, conn, status=None, timeout=15.0, since=0):
    """The latest StatusNotification of a connector (after `since`) once it says `status`
    (any status if None)."""

    def last():
        for p in reversed(cs.payloads(cp_id, "StatusNotification", since)):
            if p["connectorId"] == conn:
                return p if status is None or p["status"] == status else None
        return None

    return cs.wait_for(last, timeout, f"connector {conn} status {status}")


# ---- by hand -----------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description="OCPP 1.6J central system (tests/csms.py)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--auth", action="append", default=[], metavar="CPID=KEY")
    ap.add_argument("--heartbeat", type=int, default=300)
    args = ap.parse_args()
    ctx = server_context(args.cert, args.key) if args.cert else None
    auth = dict(a.split("=", 1) for a in args.auth) or None
    cs = CentralSystem(args.host, args.port, ssl=ctx, auth=auth, verbose=True)
    cs.heartbeat_interval = args.heartbeat
    cs.start()
    print(f"central system on {cs.url('<CPID>')}; commands: <cpid> <Action> <json>", flush=True)
    try:
        for line in sys.stdin:
            parts = line.strip().split(None, 2)
            if not parts:
                continue
            if len(parts) < 2:
                print("usage: <cpid> <Action> [json payload]")
                continue
            try:
                payload = json.loads(parts[2]) if len(parts) > 2 else {}
                ans = cs.call_raw(parts[0], parts[1], payload, timeout=35)
                print("answer:", json.dumps(ans), flush=True)
            except (KeyError, ValueError, AssertionError) as e:
                print("error:", e, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        cs.close()


if __name__ == "__main__":
    sys.exit(main())
