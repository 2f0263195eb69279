"""Fixtures that run the firmware for a test (see harness.py).

    def test_plug_in(charger):                 # one charger, ready, stopped afterwards
        charger.sim("ev", state="B")

    def test_two_on_one_bus(start_charger):    # several, or with settings / env / a build
        bus = {"EVSE_CAN_PORT": free_port(socket.SOCK_DGRAM)}
        a = start_charger(settings={"can_addr": 1}, env=bus)
        b = start_charger(settings={"can_addr": 2}, env=bus)

When a test fails, the report ends with the tail of each charger's log.
"""

import csms
import pytest
from harness import Charger, firmware_tree, kill_leftovers, mcu_build


def pytest_configure(config):
    """Compile the firmware once, before any test (or test worker) starts: every charger
    of the session runs that tree, the way a charger runs it (harness.firmware_tree)."""
    config.addinivalue_line(
        "markers", "duration(seconds): about how long the test takes (a protocol hold it "
        "waits out); the suite starts the longest tests first")
    if not hasattr(config, "workerinput"):
        firmware_tree()
        mcu_build()


def pytest_collection_modifyitems(session, config, items):
    """The longest tests go first, longest first (a `duration` mark, else a timeout mark
    above the default): the workers run them beside the short ones instead of one alone
    at the end. The Makefile hands tests out one at a time (--maxschedchunk 1): in
    batches, the first worker would get all the long ones."""

    def budget(item):
        for name in ("duration", "timeout"):
            m = item.get_closest_marker(name)
            if m is not None and m.args:
                return m.args[0]
        return 0

    items.sort(key=budget, reverse=True)  # stable: the rest keep their order


@pytest.fixture
def start_charger(request, tmp_path):
    """Factory: start_charger(settings=None, env=None, heap=None, board_dir=None,
    name=None, password=...) starts one more charger, ready, in its own directory under
    tmp_path (harness.Charger)."""
    chargers = []
    request.node.chargers = chargers

    def start(settings=None, env=None, heap=None, board_dir=None, name=None, **kw):
        name = name or f"charger{len(chargers) + 1}"
        c = Charger(tmp_path / name, settings=settings, env=env, heap=heap,
                    board_dir=board_dir, name=name, **kw)
        chargers.append(c)
        c.start()
        return c

    yield start
    for c in chargers:
        c.stop()


@pytest.fixture
def on_mcu(monkeypatch):
    """The chargers of this test run on the 32-bit interpreter with the firmware frozen,
    as a board runs it (tools/mcu.py; heap harness.MCU_HEAP): a MemoryError there is a
    board's. Where the MicroPython source is missing they run on the 64-bit port, and
    the memory checks that need the 32-bit build are skipped (the setup said why)."""
    exe = mcu_build()
    if exe is not None:
        monkeypatch.setenv("EVSE_MCU", str(exe))
    return exe


@pytest.fixture
def charger(start_charger):
    """One charger with default settings, ready."""
    return start_charger()


@pytest.fixture
def meter_rig(request, tmp_path):
    """Factory: meter_rig(cls, *args, **settings) makes a charger with a pymodbus meter on
    a socat pty (tests/test_power_management.py's Rig, or a rig built on it: cls(*args,
    tmp_path=, request=, **settings)), starts it, and closes it after the test."""
    made = []

    def make(cls, *args, **extra):
        r = cls(*args, tmp_path=tmp_path, request=request, **extra)
        made.append(r)
        r.start()
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def cs():
    """A central system on the `ocpp` package (tests/csms.py), closed after the test."""
    yield from csms.running_central_system()


@pytest.fixture
def ocpp(request, tmp_path, cs):
    """Factory of chargers pointed at `cs` (csms.ocpp_chargers)."""
    yield from csms.ocpp_chargers(request, tmp_path, cs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for c in getattr(item, "chargers", ()):
            report.sections.append((f"{c.name} log, last lines ({c.log_path})", c.log_tail()))
    return report


def pytest_sessionfinish(session, exitstatus):
    left = kill_leftovers()
    if left:
        print(f"\nkilled {left} firmware process(es) left running", flush=True)
