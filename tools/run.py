"""Run the simulated charger and play its power supply.

    python tools/run.py [--entry firmware/main.py] [--heap 128k]

Starts `micropython -X heapsize=<heap> <entry>` with the EVSE_* environment (defaults
from docs/simulator.md) and starts it again whenever it ends the way a power cycle would:

    status 3 (reset: OCPP Reset, watchdog, new firmware)  -> at once
    any other failure, SIGKILL (power cut) included       -> after 1 s
    status 0, or ended by SIGTERM / SIGINT                 -> stop

SIGTERM or Ctrl-C to this script stops the firmware (SIGTERM, then SIGKILL after a
timeout) and exits. The firmware's stdout and stderr are this script's own.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESET = 3
CRASH_DELAY_S = 1.0
STOPPED = {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT}

DEFAULTS = {
    "EVSE_DATA_DIR": "data",
    "EVSE_HTTP_HOST": "127.0.0.1",
    "EVSE_HTTP_PORT": "8080",
    "EVSE_SIM_PORT": "8090",
    "EVSE_CAN_PORT": "29536",
}


def log(msg):
    print(f"run: {msg}", file=sys.stderr, flush=True)


def describe(status):
    if status < 0:
        return f"signal {signal.Signals(-status).name}"
    return f"status {status}"


def charger_env(environ):
    env = dict(environ)
    for key, value in DEFAULTS.items():
        env.setdefault(key, value)
    env["EVSE_DATA_DIR"] = os.path.abspath(env["EVSE_DATA_DIR"])
    return env


class Supervisor:
    def __init__(self, cmd, env, stop_timeout, stop_with_parent):
        self.cmd = cmd
        self.env = env
        self.stop_timeout = stop_timeout
        self.parent = os.getppid() if stop_with_parent else None
        self.stopping = False
        self.child = None

    def request_stop(self, signum, _frame):
        log(f"{signal.Signals(signum).name}: stopping")
        self.stopping = True

    def _should_stop(self):
        if self.parent is not None and os.getppid() != self.parent:
            log("parent process gone: stopping")
            self.stopping = True
        return self.stopping

    def _wait_child(self):
        """The child's exit status, or None once a stop was requested."""
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if self._should_stop():
                    return None

    def _pause(self, seconds):
        deadline = time.monotonic() + seconds
        while not self._should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _stop_child(self):
        if self.child is None or self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log(f"firmware still running after {self.stop_timeout:g} s: SIGKILL")
            self.child.kill()
            self.child.wait()

    def run(self):
        try:
            while not self._should_stop():
                self.child = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT)
                status = self._wait_child()
                if status is None:
                    break
                if status in STOPPED:
                    log(f"firmware stopped ({describe(status)})")
                    break
                if status == RESET:
                    log("firmware reset: starting it again")
                    continue
                log(f"firmware ended with {describe(status)}: starting it again in "
                    f"{CRASH_DELAY_S:g} s")
                self._pause(CRASH_DELAY_S)
        finally:
            self._stop_child()
        return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entry", type=Path, default=ROOT / "build" / "unix_sim" / "main.py",
                    help="script to run: a built tree's main.py (default build/unix_sim/main.py,"
                         " what `make build` makes) or firmware/main.py for the sources")
    ap.add_argument("--heap", default=None,
                    help="MicroPython heap size (default: 128 KB for data plus the code's "
                         "footprint, tools/footprint.py)")
    ap.add_argument("--micropython", default=str(ROOT / ".venv" / "bin" / "micropython"),
                    help="the MicroPython unix port to run")
    ap.add_argument("--stop-timeout", type=float, default=5.0,
                    help="seconds between SIGTERM and SIGKILL when stopping (default %(default)s)")
    ap.add_argument("--stop-with-parent", action="store_true",
                    help="stop when the parent process (e.g. make) goes away")
    args = ap.parse_args(argv)

    entry = args.entry.resolve()
    if args.heap is None:
        sys.path.insert(0, str(ROOT / "tools"))
        from footprint import heapsize

        tree = None if entry.parent == ROOT / "firmware" else entry.parent
        args.heap = heapsize(args.micropython, 128, tree=tree)
    env = charger_env(os.environ)
    os.makedirs(env["EVSE_DATA_DIR"], exist_ok=True)

    host = env["EVSE_HTTP_HOST"]
    log(f"{entry} (heap {args.heap}), data in {env['EVSE_DATA_DIR']}")
    log(f"web app    http://{host}:{env['EVSE_HTTP_PORT']}")
    log(f"simulator  127.0.0.1:{env['EVSE_SIM_PORT']}  (python3 tools/evctl.py snapshot)")
    log(f"CAN bus    udp 127.255.255.255:{env['EVSE_CAN_PORT']}")
    if env.get("EVSE_RS485"):
        log(f"RS-485     {env['EVSE_RS485']}")
    log("Ctrl-C stops")

    cmd = [args.micropython, "-X", f"heapsize={args.heap}", str(entry)]
    supervisor = Supervisor(cmd, env, args.stop_timeout, args.stop_with_parent)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
