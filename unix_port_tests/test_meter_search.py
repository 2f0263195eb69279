# The supply limit as the manual sets it up (Max Current where no house limit is set)
# and the meter search on the RS-485 bus (meter_model "auto"; a configured meter that
# went silent), on the power manager's fakes.
from check import eq, true
from evse import meterprobe
from modbus_rtu import ModbusError
from test_power import FakeMaster, Rig

SWEEP = meterprobe.Probe.count()


class BusMeter(FakeMaster):
    """An SDM630 register image answering at one address only, function 04; every other
    address is silent, other functions get an exception (as a meter of another make)."""

    def __init__(self, addr=1):
        super().__init__()
        self.addr = addr
        self.asked = []  # (fc, slave) of every request

    async def read_registers(self, fc, slave, start, count):
        self.calls += 1
        self.asked.append((fc, slave))
        if self.addr is None or slave != self.addr:
            raise ModbusError("no answer", "timeout")
        if fc != 4:
            raise ModbusError("exception 2 (illegal data address) to function 0", "exception", 2)
        self.calls -= 1  # counted once
        return await super().read_registers(fc, slave, start, count)


def _rig(addr=1, **settings):
    r = Rig(**settings)
    r.master = r.pm.master = BusMeter(addr)
    return r


def test_max_current_is_the_supply_limit_where_no_house_limit_is_set():
    # Manual chapter 10: a 3.7 kW supply -> Max Current 16 A; other loads of 2 kW (8.7 A at
    # 230 V) leave 1.7 kW (7.3 A) for the car.
    r = Rig(phases=1, phase_set="L1", max_house_current_a=0, max_current_a=16)
    r.house(8.7, 0.0, 0.0)
    r.cycle()
    eq(r.limit(), 7.3, "16 A - 8.7 A")
    r.settings["max_house_current_a"] = 25  # the advanced setting, where it is set
    r.cycle()
    true(r.limit() > 7.3, "the house limit rules when set")
    r.settings["max_house_current_a"] = 0
    r.house(12.0, 0.0, 0.0)
    r.cycle()
    eq(r.limit(), 0.0, "16 A - 12 A: below 6 A, a pause")


def test_auto_finds_the_meter_at_the_factory_address_and_stores_it():
    r = _rig(model="auto", max_house_current_a=0, max_current_a=32)
    r.house(10.0, 10.0, 10.0)
    r.cycle(SWEEP - 1)
    eq(r.settings["meter_model"], "auto", "not before the sweep has ended: another may answer")
    r.cycle()
    eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 1), "stored")
    eq(r.limit(), None, "no limit in the cycle that found it")
    r.cycle()
    eq(r.limit(), 22.0, "read from the next cycle: 32 A - 10 A")
    eq(r.pm.search_view(), None, "in use and answering: no search shown")
    eq(r.pm.view()["model"], "SDM630")
    import sys

    true("evse.meterprobe" not in sys.modules, "the search's module let go once it is over")


def test_auto_finds_a_meter_at_another_address_after_the_factory_ones():
    r = _rig(addr=3, model="auto")
    for _ in range(2 * len(meterprobe.MODELS)):  # addresses 1 and 2 of every model
        r.cycle()
        eq(r.settings["meter_model"], "auto", "not yet")
    sv = r.pm.search_view()
    eq((sv["state"], sv["tried"], sv["of"]), ("searching", 10, SWEEP), "progress shown")
    r.cycle(SWEEP - 10)
    eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 3), "found at 3")


def test_auto_with_nothing_on_the_bus_sweeps_again_after_a_pause():
    r = _rig(addr=None, model="auto")
    r.cycle(SWEEP)
    sv = r.pm.search_view()
    eq((sv["state"], sv["sweeps"], sv["found"]), ("waiting", 1, None), "one sweep, none found")
    eq(r.settings["meter_model"], "auto", "nothing stored")
    eq(r.limit(), None, "no power management without a meter")
    calls = r.master.calls
    r.cycle(meterprobe.PAUSE_MS // 1000 - 2)
    eq(r.master.calls, calls, "quiet during the pause")
    r.cycle(3)
    true(r.master.calls > calls, "a new sweep after the pause")
    r.master.addr = 2  # the meter is powered up late
    r.cycle(SWEEP)
    eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 2), "found then")


def test_a_device_that_is_no_meter_is_not_taken():
    r = _rig(model="auto")
    r.master.set(volts=(0.0, 0.0, 0.0))  # answers, but no mains voltage: not a meter
    r.cycle(SWEEP)
    eq(r.settings["meter_model"], "auto", "not taken")
    r.master.set(volts=(float("nan"), 230.0, 230.0))
    r.cycle(meterprobe.PAUSE_MS // 1000 + SWEEP)
    eq(r.settings["meter_model"], "auto", "NaN is no voltage")
    r.master.set(volts=(230.0, 230.0, 230.0), amps=(1e6, 0.0, 0.0))
    r.cycle(meterprobe.PAUSE_MS // 1000 + SWEEP)
    eq(r.settings["meter_model"], "auto", "no house draws 1 MA")


def test_none_means_no_search_and_no_traffic():
    r = _rig(model="none")
    r.cycle(SWEEP + 5)
    eq(r.master.calls, 0, "the bus stays silent")
    eq(r.pm.search_view(), None)


def test_no_bus_wired_is_shown():
    r = Rig(model="auto", master=False)
    r.cycle(3)
    eq(r.pm.search_view()["state"], "no_bus")
    eq(r.settings["meter_model"], "auto")


def test_a_silent_configured_meter_is_looked_for_and_never_replaced():
    # The meter was readdressed to 4: the configured SDM630 at 1 is silent. The search
    # shows where one answers; the configured setting stays, and so does ERR MET.
    r = _rig(addr=1, model="SDM630", meter_addr=1, max_house_current_a=25)
    r.house(5.0, 5.0, 5.0)
    r.cycle(2)
    true(r.limit() > 6, "charging on the meter's headroom")
    eq(r.pm.search_view(), None, "answering: no search")
    r.master.addr = 4
    r.cycle(6)
    true(r.prot.external_meter_lost, "ERR MET after 5 s")
    asked = len(r.master.asked)
    r.cycle(SWEEP)
    probes = [a for a in r.master.asked[asked:] if a != (4, 1)]
    true(probes, "the search tried other candidates")
    sv = r.pm.search_view()
    eq((sv["state"], sv["found"]), ("found", {"model": "SDM630", "addr": 4}), "shown")
    eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 1), "not replaced")
    true(r.prot.external_meter_lost, "still ERR MET")
    eq(r.limit(), 0.0, "still paused")
    # The installer takes it: read at once, the search ends.
    r.settings["meter_addr"] = 4
    r.cycle(7)
    true(not r.prot.external_meter_lost, "answers again")
    eq(r.pm.search_view(), None)
    import sys

    true("evse.meterprobe" not in sys.modules, "the search's module let go")


def test_adoption_that_cannot_be_stored_is_shown_and_tried_again():
    r = _rig(model="auto")

    def refuse(changes):
        raise OSError(28)  # ENOSPC

    r.settings.apply = refuse
    r.cycle(SWEEP)
    eq(r.settings["meter_model"], "auto", "not stored")
    sv = r.pm.search_view()
    true(sv["error"] and "not stored" in sv["error"], "the reason shown: %r" % sv)
    del r.settings.apply
    r.cycle(meterprobe.PAUSE_MS // 1000 + SWEEP + 1)
    eq(r.settings["meter_model"], "SDM630", "stored on the next sweep")


class _Slow(BusMeter):
    """Answers only after one step of the event loop: the power task waits on the bus."""

    async def read_registers(self, fc, slave, start, count):
        await _Pause()
        return await super().read_registers(fc, slave, start, count)


class _Pause:
    def __iter__(self):
        yield None

    __await__ = __iter__


def test_a_meter_found_while_the_installer_chose_another_is_not_stored():
    # The search waits on the bus; meanwhile the installer sets the meter (or none): what
    # the search finds then must not overwrite that choice.
    for choice in (("none", 1), ("EM340", 7)):
        r = _rig(model="auto")
        r.cycle(SWEEP - 1)  # the meter at 1 answered; the sweep's last candidate next
        r.master = r.pm.master = _Slow(1)
        coro = r.pm.poll_once()
        coro.send(None)  # the probe's read is under way
        r.settings["meter_model"], r.settings["meter_addr"] = choice
        try:
            while True:
                coro.send(None)
        except StopIteration:
            pass
        eq((r.settings["meter_model"], r.settings["meter_addr"]), choice, "the installer's")


def _real_settings(text):
    import check
    from evse.settings import Settings

    d = check.tmpdir("msearch")
    with open(d + "/settings.json", "w") as f:
        f.write(text)
    s = Settings(d + "/settings.json")
    s.load()
    return s


def test_a_meter_setting_that_cannot_be_read_is_not_replaced_by_the_search():
    # meter_model unusable: it falls back to its default ("auto"), a configuration
    # error, and the charger offers its minimum. The meter that was configured is
    # unknown: what the search finds is shown, not stored, and the error stays.
    r = _rig(model="auto")
    r.settings = r.pm.settings = _real_settings('{"meter_model": "SDM6300", "meter_addr": 3}')
    true("meter_model" in r.settings.invalid, "a configuration error")
    eq(r.settings["meter_model"], "auto", "the default in use")
    r.cycle(SWEEP + 1)
    eq(r.settings["meter_model"], "auto", "nothing stored")
    true("meter_model" in r.settings.invalid, "the error stays until the installer saves")
    sv = r.pm.search_view()
    eq(sv["found"], {"model": "SDM630", "addr": 1}, "shown")
    true(sv["error"], "why it is not taken: %r" % sv)
    eq(r.settings.apply({"meter_model": "auto"}), {}, "the installer chooses auto")
    r.cycle()
    eq((r.settings["meter_model"], r.settings["meter_addr"]), ("SDM630", 1), "stored then")


def test_an_unreadable_settings_file_is_not_overwritten_by_the_search():
    r = _rig(model="auto")
    r.settings = r.pm.settings = _real_settings('{"max_current_a": 16, "meter_mo')
    true(r.settings.invalid, "unreadable: configuration errors")
    r.cycle(SWEEP + 1)
    eq(r.settings["meter_model"], "auto", "nothing stored")
    with open(r.settings._path) as f:
        true(f.read().startswith('{"max_current_a": 16, "meter_mo'), "the file as it was")


def test_a_lost_sdm72_is_not_probed_at_its_own_address_as_an_sdm630():
    # SDM72 reads as SDM630 (the same registers): that probe is the configured meter's
    # own read again, and its answer would be shown as another meter found.
    r = _rig(addr=2, model="SDM72", meter_addr=2, max_house_current_a=25)
    r.cycle(2)
    r.master.addr = None  # silent
    r.cycle(6)
    true(r.prot.external_meter_lost, "ERR MET")
    n = len(meterprobe.MODELS)
    asked = len(r.master.asked)
    r.cycle(3 * n)  # the candidates at addresses 1..3
    own = [a for a in r.master.asked[asked:] if a == (4, 2)]
    # per cycle the read and its retry; EM340 at 2 is another make (fc 4 too)
    eq(len(own), 2 * 3 * n + 1, "no SDM630 (nor SDM120) probe at its address")


class _TwoMeters(BusMeter):
    """A meter at each of two addresses: `at[addr]` is its register image."""

    def __init__(self, at):
        super().__init__(None)
        self.at = at

    async def read_registers(self, fc, slave, start, count):
        self.calls += 1
        self.asked.append((fc, slave))
        m = self.at.get(slave)
        if m is None:
            raise ModbusError("no answer", "timeout")
        if fc != 4:
            raise ModbusError("exception 2 (illegal data address) to function 0", "exception", 2)
        return await m.read_registers(fc, slave, start, count)


def test_with_two_meters_on_the_bus_none_is_taken():
    # The charger's own billing meter at 1 sees only the car; the grid meter is at 2.
    # Taking the first found would count no other load: the supply overloaded.
    r = _rig(model="auto", max_house_current_a=0, max_current_a=32)
    billing, grid = FakeMaster(), FakeMaster()
    billing.set(amps=(16.0, 16.0, 16.0))
    grid.set(amps=(30.0, 30.0, 30.0))
    r.master = r.pm.master = _TwoMeters({1: billing, 2: grid})
    r.cycle(SWEEP + 2)
    eq(r.settings["meter_model"], "auto", "neither stored: the installer chooses")
    sv = r.pm.search_view()
    eq(sv["found"], None)
    eq(sv["meters"], [{"model": "SDM630", "addr": 1}, {"model": "SDM630", "addr": 2}], "shown")
    true(sv["error"], "why none is taken: %r" % sv)


def test_hostile_answers_over_the_real_master_are_no_meter():
    # Every candidate gets one of these from the line: wrong slave, exception, a short
    # frame, a wrong byte count, noise, NaN, 1e30 A, inf A on L2 with a mains voltage.
    # A whole sweep: no crash, nothing taken, no limit.
    import asyncio
    import struct
    import time
    from modbus_rtu import ModbusRtu
    from test_modbus_rtu import FakeUart, frame, regs_reply
    from test_power import FakeCharger, FakeMetering, FakeProtection
    from evse.power import PowerManager
    import fakehw

    def floats(count, first, rest):
        words = []
        for r in range(0, count, 2):
            b = struct.pack(">f", first if r == 0 else rest)
            words += [(b[0] << 8) | b[1], (b[2] << 8) | b[3]]
        return words[:count]

    def hostile(k):
        def answer(req):
            slave, fc, count = req[0], req[1], (req[4] << 8) | req[5]
            kind = k % 8
            if kind == 0:
                return 3, regs_reply(slave + 1, fc, [0] * count)
            if kind == 1:
                return 3, frame(slave, fc | 0x80, 2)
            if kind == 2:
                return 3, regs_reply(slave, fc, [0] * count)[:5]
            if kind == 3:
                return 3, frame(slave, fc, 2 * count + 2, bytes(2 * count + 2))
            if kind == 4:
                return 3, b"\xff\x00\x13\x37"
            if kind == 5:
                return 3, regs_reply(slave, fc, floats(count, float("nan"), 0.0))
            if kind == 6:
                return 3, regs_reply(slave, fc, floats(count, 230.0, 1e30))
            w = floats(count, 230.0, 10.0)
            if count > 9:
                w[8:10] = floats(2, float("inf"), 0.0)  # i_l2 of the Eastron map
            return 3, regs_reply(slave, fc, w)

        return answer

    uart = FakeUart(time.ticks_ms, 9600)
    master = ModbusRtu(uart, None, timeout_ms=30)
    uart.replies = [hostile(k) for k in range(400)]
    settings = fakehw.FakeSettings(meter_model="auto", max_house_current_a=0)
    ch = FakeCharger()
    pm = PowerManager(ch, settings, FakeProtection(), FakeMetering(), master=master)

    async def main():
        for _ in range(SWEEP + 1):
            await pm.poll_once()

    asyncio.run(main())
    asyncio.new_event_loop()
    true(len(uart.writes) >= SWEEP, "every candidate asked: %d" % len(uart.writes))
    eq(pm.probe.sweeps, 1, "the sweep ended")
    eq(settings["meter_model"], "auto", "nothing taken")
    eq(pm.probe.meters, [], "no meter among them")
    eq(ch.external.get("power"), None, "no limit")


class _Logged(BusMeter):
    def __init__(self, addr):
        super().__init__(addr)
        self.reqs = []  # (fc, slave, start, count)

    async def read_registers(self, fc, slave, start, count):
        self.reqs.append((fc, slave, start, count))
        return await super().read_registers(fc, slave, start, count)


def test_a_lost_meter_s_own_read_is_not_sent_again_as_a_candidate():
    # An SDM120 map reads the SDM630's own registers (a subset, the same request): at the
    # configured address it is the configured read again, and an answer to it (a meter
    # answering now and then) would be shown as an SDM120 there.
    r = _rig(addr=1, model="SDM630", meter_addr=1, max_house_current_a=25)
    r.master = r.pm.master = _Logged(1)
    r.cycle(2)
    own = r.master.reqs[-1]
    r.master.addr = None
    n = len(r.master.reqs)
    r.cycle(6 + SWEEP)
    true(r.prot.external_meter_lost, "ERR MET")
    same = [q for q in r.master.reqs[n:] if q == own]
    eq(len(same), 2 * (6 + SWEEP), "the read and its retry each cycle, no candidate repeating it")


def test_none_set_during_a_sweep_ends_the_traffic_at_once():
    r = _rig(addr=None, model="auto")
    r.cycle(7)
    true(r.master.calls > 0, "searching")
    r.settings["meter_model"] = "none"
    calls = r.master.calls
    r.cycle(SWEEP + meterprobe.PAUSE_MS // 1000)
    eq(r.master.calls, calls, "not one request after 'none'")
    eq((r.pm.search_view(), r.limit()), (None, None))
