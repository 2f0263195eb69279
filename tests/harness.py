"""Start firmware processes on the MicroPython unix port and talk to them.

    c = Charger(workdir, settings={"max_current_a": 16})
    c.start()                        # returns once the simulator socket answers
    c.sim("ev", state="B")           # one request on the simulator socket -> reply dict
    c.wait_for(lambda s: s["cp_state"] == "B")
    status, headers, body = c.http("GET", "/api/status")
    c.kill(); c.start()              # power cut, then power back
    c.stop()

Each charger gets its own data directory, log file and free ports on 127.0.0.1 (HTTP and
simulator over TCP, the CAN bus over UDP) unless `env` names them: give several chargers
the same EVSE_CAN_PORT to put them on one bus. Nothing here sleeps to synchronise: every
wait polls for a condition and has a deadline.
"""

import atexit
import binascii
import hashlib
import http.client
import http.cookies
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02

# The password every charger started here has, set the way the web app sets it after the
# first login (the factory password 123456 may change nothing): `password=None` keeps the
# factory default.
PASSWORD = "test-pass-1"
# The heap of a charger on the 32-bit frozen interpreter: the firmware's data and the
# simulator's (about 40 KB), no code; docs/development.md.
MCU_HEAP = "192k"
FACTORY_PASSWORD = "123456"

_running = set()  # every process started here, until it has been reaped
_json_dumps = json.dumps  # Charger.http's `json` argument shadows the module
_json_loads = json.loads


def micropython():
    """The `micropython` of the environment running this code (the project's .venv)."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    venv = ROOT / ".venv" / "bin" / "micropython"
    return str(venv) if venv.exists() else "micropython"


def mcu_interpreter():
    """EVSE_MCU: a 32-bit interpreter with the firmware frozen in it (`make mcu`,
    tools/mcu.py), or None. Chargers then run from it, their code out of the heap as on a
    board, and their heap is the firmware's data alone."""
    path = os.environ.get("EVSE_MCU")
    return Path(path) if path else None


def mcu_build():
    """The 32-bit frozen interpreter for this test session, built once (tools/mcu.py,
    cached in build/mcu/) and passed to the workers in EVSE_TEST_MCU; None when the
    MicroPython source is not on this machine (tools/mcu.py prints how to get it). A
    build that fails raises."""
    known = os.environ.get("EVSE_TEST_MCU")
    if known is not None:
        return Path(known) if known else None
    mcu = tool("mcu")
    if mcu.source_missing():
        print(mcu.HOW_TO_GET, file=sys.stderr)
        os.environ["EVSE_TEST_MCU"] = ""
        return None
    exe = mcu.build()
    os.environ["EVSE_TEST_MCU"] = str(exe)
    return exe


def tool(name):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def firmware_tree():
    """The firmware as a charger runs it: compiled by mpy-cross (tools/build.py).

    Built once per test session into its own directory under build/test/ (so two
    sessions in one checkout never rebuild under each other's feet), passed to the test
    workers in EVSE_TEST_TREE, and removed when the session's process exits."""
    tree = os.environ.get("EVSE_TEST_TREE")
    if tree:
        return Path(tree)
    import shutil
    import tempfile

    (ROOT / "build" / "test").mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="session-", dir=ROOT / "build" / "test"))
    atexit.register(shutil.rmtree, top, True)
    out = top / "unix_sim"
    tool("build").build("unix_sim", out)
    os.environ["EVSE_TEST_TREE"] = str(out)
    return out


def default_heap(tree=None, data_kb=128):
    """128 KB (data_kb) for the firmware's data plus what its code takes on this port.

    On the charger the code is frozen in flash; on the unix port it sits in the heap, so
    the budget is data only (tools/footprint.py, docs/development.md). EVSE_TEST_HEAP
    overrides it."""
    forced = os.environ.get("EVSE_TEST_HEAP")
    if forced:
        return forced
    return tool("footprint").heapsize(micropython(), data_kb, tree=tree)


def _port_block():
    """This process's own block of ports, below the kernel's ephemeral range: a port
    handed out by bind(0) comes from that range, so while a server the test stopped is
    down (a killed charger, a central system going offline) any outgoing connection on
    the machine could take it, and the restart would fail with EADDRINUSE. Each
    pytest-xdist worker gets its own block, so two workers never pick the same port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")[2:]
    # A process outside xdist (a tool, a test run by hand beside the suite) picks its
    # block and where in it to begin from its pid, to stay clear of others like it.
    n = int(worker) if worker.isdigit() else os.getpid()
    size = 1500
    start = max(1024, low - 8 * size) + (n % 8) * size
    first = 0 if worker.isdigit() else os.getpid() % size
    ports = list(range(start + first, start + size)) + list(range(start, start + first))
    return itertools.cycle(ports)  # a port long let go is free again


_ports = _port_block()


def free_port(kind=socket.SOCK_STREAM):
    """A port on 127.0.0.1, free right now for both TCP and UDP, outside the ephemeral
    range, that this process has not handed out lately (kind: kept for the callers, the
    port is free for either)."""
    for _ in range(1500):
        port = next(_ports)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port left in this test process's block")


def kill_leftovers():
    """SIGKILLs every process still running; returns how many there were."""
    left = [p for p in _running if p.poll() is None]
    for p in left:
        p.kill()
        p.wait()
    _running.clear()
    return len(left)


atexit.register(kill_leftovers)


def wait_until(pred, timeout, what, step=0.05):
    """Polls pred() until it returns something true, which it returns; AssertionError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(step)


class SimError(AssertionError):
    """The simulator socket answered {"ok": false, "error": ...}."""


class NotReady(RuntimeError):
    """The firmware exited or did not answer before the deadline."""


class Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: object  # decoded JSON when the response says it is JSON, else bytes


def password_file(password):
    """password.json as evse/web_auth.py writes it when the password is changed."""
    salt = os.urandom(16)
    h = hashlib.sha256(salt + password.encode()).digest()
    for _ in range(2000):
        h = hashlib.sha256(h + salt).digest()
    return json.dumps({"salt": binascii.hexlify(salt).decode(),
                       "hash": binascii.hexlify(h).decode()})


class Charger:
    def __init__(self, workdir, *, settings=None, env=None, heap=None, board_dir=None,
                 name="charger", password=PASSWORD):
        """Runs `<board_dir>/main.py`: by default the compiled tree of firmware_tree(),
        `ROOT / "firmware"` for the sources; `settings` pre-seeds settings.json before
        the first boot; `password` the login password (None: the factory default) unless
        the data directory has one; `heap` defaults to 128 KB of data (default_heap())."""
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(env or {})
        self.env = {
            "EVSE_DATA_DIR": str(self.workdir / "data"),
            "EVSE_HTTP_HOST": "127.0.0.1",
            "EVSE_HTTP_PORT": str(free_port()),
            "EVSE_SIM_PORT": str(free_port()),
            "EVSE_CAN_PORT": str(free_port(socket.SOCK_DGRAM)),
            **{k: str(v) for k, v in env.items()},
        }
        self.data_dir = Path(self.env["EVSE_DATA_DIR"])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if settings is not None:
            (self.data_dir / "settings.json").write_text(json.dumps(settings))
        self.password = password or FACTORY_PASSWORD
        pw_file = self.data_dir / "password.json"
        if password is not None and not pw_file.exists():
            pw_file.write_text(password_file(password))
        self.http_port = int(self.env["EVSE_HTTP_PORT"])
        self.sim_port = int(self.env["EVSE_SIM_PORT"])
        self.can_port = int(self.env["EVSE_CAN_PORT"])
        entry_dir = Path(board_dir) if board_dir else firmware_tree()
        mcu = None if board_dir else mcu_interpreter()
        if mcu is not None:
            # The frozen main module; the web app's assets from www/ of the directory it
            # starts in, as on a board flashed with the image (tools/manifest.py).
            www = self.workdir / "www"
            if not www.exists():
                www.symlink_to(entry_dir.resolve() / "evse" / "www")
            self.cmd = [str(mcu), "-X", f"heapsize={heap or MCU_HEAP}", "-c", "import main"]
        else:
            heap = heap or default_heap(None if entry_dir == ROOT / "firmware" else entry_dir)
            self.cmd = [micropython(), "-X", f"heapsize={heap}",
                        str(entry_dir.resolve() / "main.py")]
        self.log_path = self.workdir / f"{name}.log"
        self.cookies = {}
        self.proc = None
        self._sock = None
        self._reader = None

    def __repr__(self):
        return f"<Charger {self.name} http={self.http_port} sim={self.sim_port}>"

    # -- process ---------------------------------------------------------------------------

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def launch(self):
        """Starts the process and returns at once (see start())."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._disconnect()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVSE_")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        _running.add(self.proc)
        return self.proc

    def start(self, timeout=READY_TIMEOUT):
        """Starts the process and waits until it is ready; returns the first snapshot."""
        self.launch()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Polls the simulator socket with `snapshot` until a reply says ok."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise NotReady(f"{self.name} exited with status {self.proc.returncode} before "
                               f"it was ready; its log ends:\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotReady(f"{self.name} not ready within {timeout:g} s; its log ends:\n"
                               f"{self.log_tail()}")
            reply = self.try_snapshot(timeout=max(0.2, remaining))
            if reply is not None:
                return reply
            time.sleep(POLL_INTERVAL)

    def try_snapshot(self, timeout=1.0):
        """The snapshot reply, or None while the simulator socket does not answer ok."""
        try:
            reply = self.request({"op": "snapshot"}, timeout=timeout)
        except (OSError, ValueError):
            return None
        return reply if reply.get("ok") else None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status (None if never run)."""
        self._disconnect()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _running.discard(self.proc)
        return self.proc.returncode

    def kill(self):
        """Power cut: SIGKILL, no chance to clean up. Returns the exit status."""
        self._disconnect()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.stop()

    def restart(self, timeout=READY_TIMEOUT):
        """Stops it if running, then starts it again on the same data dir and ports."""
        self.stop()
        return self.start(timeout)

    def wait_exit(self, timeout=REQUEST_TIMEOUT):
        """Waits for the process to end by itself (a reset, say); returns its exit status."""
        status = self.proc.wait(timeout=timeout)
        _running.discard(self.proc)
        self._disconnect()
        return status

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- simulator socket ------------------------------------------------------------------

    def _connect(self, timeout):
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.sim_port), timeout=timeout)
            self._reader = self._sock.makefile("rb")

    def _disconnect(self):
        if self._sock is not None:
            self._reader.close()
            self._sock.close()
            self._sock = self._reader = None

    def request(self, obj, timeout=REQUEST_TIMEOUT):
        """Sends one request object and returns the reply object, whatever it says."""
        try:
            self._connect(timeout)
            self._sock.settimeout(timeout)
            self._sock.sendall(json.dumps(obj).encode() + b"\n")
            line = self._reader.readline()
            if not line:
                raise ConnectionError("simulator socket closed")
            return json.loads(line)
        except BaseException:
            self._disconnect()  # a late reply must not answer the next request
            raise

    def sim(self, op, **fields):
        """One simulator operation; returns the reply, raises SimError unless it is ok."""
        reply = self.request({"op": op, **fields})
        if not reply.get("ok"):
            raise SimError(f"{op} {fields}: {reply.get('error', reply)}")
        return reply

    def tap(self, uid, ms=800, kind="M1", timeout=10.0):
        """A driver's tap: once the last card is off the reader, `uid` for `ms` (most of a
        second: the reader polls every 200 ms, later on a busy machine). A card that never
        left the field stays halted and is not read again, as on the real reader."""
        self.wait_for(lambda s: s["plant"]["card"] is None, timeout)
        return self.sim("card", uid=uid, kind=kind, ms=ms)["t_us"]

    def snapshot(self):
        return self.sim("snapshot")

    def events(self, since=0):
        """The actuator changes after `since` (a t_us), oldest first."""
        return self.sim("events", since=since)["events"]

    def wait_for(self, predicate, timeout=10.0, step=POLL_INTERVAL):
        """Polls snapshots until predicate(snapshot) is true; returns that snapshot. Each
        snapshot costs the firmware a collection: a wait on something slow polls with a
        longer `step`."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: condition not met within {timeout:g} s; "
                                     f"last snapshot: {snap}")
            time.sleep(step)

    # -- HTTP ------------------------------------------------------------------------------

    def http(self, method, path, json=None, headers=None, body=None, timeout=REQUEST_TIMEOUT):
        """One request to the web server; keeps the cookies it sets (a login session)."""
        headers = dict(headers or {})
        if json is not None:
            body = _json_dumps(json).encode()
            headers.setdefault("Content-Type", "application/json")
        if self.cookies:
            headers.setdefault("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self._keep_cookies(resp.headers)
        if "json" in (resp.headers.get("Content-Type") or "") and data:
            return Response(resp.status, resp.headers, _json_loads(data))
        return Response(resp.status, resp.headers, data)

    def login(self, password=None):
        """Logs in (with the charger's password unless told); asserts it worked."""
        r = self.http("POST", "/api/login", json={"password": password or self.password})
        assert r.status == 200, r
        return r

    def _keep_cookies(self, headers):
        for value in headers.get_all("Set-Cookie") or ():
            jar = http.cookies.SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel.value == "" or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
