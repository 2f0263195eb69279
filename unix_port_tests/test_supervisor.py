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
