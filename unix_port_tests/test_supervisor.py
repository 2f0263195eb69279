# Supervisor: a task that raises puts the charger in its safe state first, is logged and
# restarted; the watchdog is fed only while the critical tasks check in.
import asyncio

from check import eq, true
from evse.supervisor import Supervisor


class Wdt:
    def __init__(self):
        self.feeds = 0
        self.timeout = None

    def start(self, ms):
        self.timeout = ms

    def feed(self):
        self.feeds += 1


def _run(sup, ms):
    async def main():
        t = asyncio.create_task(sup.run())
        await asyncio.sleep_ms(ms)
        t.cancel()
        for task in sup.tasks.values():
            task.cancel()
        await asyncio.sleep_ms(0)

    asyncio.run(main())
    asyncio.new_event_loop()


def test_dying_task_safe_state_first_then_restart():
    order = []
    runs = [0]
    wdt = Wdt()
    sup = Supervisor(wdt, lambda: order.append("safe"))

    async def flaky():
        runs[0] += 1
        order.append("run")
        await asyncio.sleep_ms(10)
        raise ValueError("driver bug")

    sup.add("flaky", flaky)
    _run(sup, 450)
    true(runs[0] >= 2, "restarted (%d runs)" % runs[0])
    eq(order[:3], ["run", "safe", "run"])
    true(sup.restarts["flaky"] >= 1)


def test_watchdog_fed_only_while_critical_tasks_check_in():
    wdt = Wdt()
    safe = []
    sup = Supervisor(wdt, lambda: safe.append(1))

    async def pilot():
        for _ in range(5):
            sup.checkin("pilot")
            await asyncio.sleep_ms(100)
        while True:  # stuck: still yields but never checks in again
            await asyncio.sleep_ms(100)

    sup.add("pilot", pilot, critical=True, checkin_ms=300)
    _run(sup, 2000)
    eq(wdt.timeout, 5000)
    true(1 <= wdt.feeds <= 3, "fed %d times, then stopped" % wdt.feeds)
    true(safe, "safe state when a critical task stalls")


def _pilot(sup, r):
    """The pilot task on a charger rig: the rig's clock follows the loop's."""

    async def pilot():
        while True:
            r.run(10)
            sup.checkin("pilot")
            await asyncio.sleep_ms(10)

    return pilot


def _count_closes(r):
    closes = [0]
    close = r.hw.relays.close

    def counted():
        closes[0] += 1
        close()

    r.hw.relays.close = counted
    return closes


def test_a_task_that_keeps_dying_does_not_cycle_the_contactor():
    """Each death opens the relays under load; after it charging needs a new
    authorization, so a task that dies again and again cannot close them again."""
    from test_charger import Rig

    r = Rig()
    r.charge()
    true(r.hw.relays.closed, "charging")
    closes = _count_closes(r)
    sup = Supervisor(Wdt(), r.ch.emergency_stop)  # the hold is for late critical tasks
    sup.add("pilot", _pilot(sup, r), critical=True)

    async def flaky():
        await asyncio.sleep_ms(20)
        raise ValueError("driver bug")

    sup.add("flaky", flaky)
    _run(sup, 1600)
    true(sup.restarts["flaky"] >= 3, "died %d times" % sup.restarts.get("flaky", 0))
    eq(closes[0], 0, "relay closes after the first death")
    true(not r.hw.relays.closed, "open")
    true(r.ch.session is None, "the session ended")


def test_a_late_protection_task_stops_and_holds_the_charger():
    """While protection is late nothing charges, not even a new session; once it checks
    in again a new authorization charges through the pilot."""
    from test_charger import Rig

    r = Rig()
    r.charge()
    sup = Supervisor(Wdt(), r.ch.emergency_stop, r.ch.hold)
    sup.add("pilot", _pilot(sup, r), critical=True)
    state = {"hung": False, "closed_while_late": False}

    async def protection():
        while True:
            if not state["hung"]:
                sup.checkin("protection")
            await asyncio.sleep_ms(100)

    sup.add("protection", protection, critical=True, checkin_ms=300)

    async def script():
        await asyncio.sleep_ms(300)
        true(r.hw.relays.closed, "charging while protection checks in")
        state["hung"] = True
        await asyncio.sleep_ms(1000)
        true(not r.hw.relays.closed, "stopped once protection is late")
        true(r.ch.session is None, "session ended")
        why = r.ch.start_session("04A1B2C3", "RFID")
        true(why is not None, "no new session while protection is late")
        await asyncio.sleep_ms(1000)
        state["closed_while_late"] = r.hw.relays.closed
        state["hung"] = False
        await asyncio.sleep_ms(800)
        eq(r.ch.start_session("04A1B2C3", "RFID"), None, "protection back: a new session")

    async def main():
        t = asyncio.create_task(sup.run())
        try:
            await script()
            await asyncio.sleep_ms(1500)
        finally:
            t.cancel()
            for task in sup.tasks.values():
                task.cancel()
            await asyncio.sleep_ms(0)

    try:
        asyncio.run(main())
    finally:
        asyncio.new_event_loop()
    true(not state["closed_while_late"], "relays stayed open while protection was late")
    true(r.hw.relays.closed, "charging again after the fresh handshake")
