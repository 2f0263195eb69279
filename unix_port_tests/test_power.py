# Power management on fakes: a fake Modbus master serving a meter's register image, a
# fake clock, and the charging core's limit and trip entry points. Cuts at once, damped
# raise, pause with resume hysteresis, meter loss -> ERR MET and fallback, recovery.
import struct

from check import eq, true
import fakehw
from evse import faults
from evse import power
from evse.power import PowerManager
from modbus_rtu import ModbusError


class Clock:
    def __init__(self):
        self.ms = 100000

    def __call__(self):
        return self.ms


class FakeCharger:
    def __init__(self, phases=3):
        self.phases = phases
        self.external = {}
        self.trips = []

    def set_external_limit(self, name, amps):
        if amps is None:
            self.external.pop(name, None)
        else:
            self.external[name] = amps

    def trip(self, bit):
        self.trips.append(bit)

    def pause(self, bit):  # a mild condition's pause (evse/charger.py): a trip here
        self.trip(bit)


class FakeProtection:
    external_meter_lost = False


class FakeMetering:
    def __init__(self):
        self.amps = [0.0, 0.0, 0.0]
        self.car_mask = None  # the phases the car draws on (evse/metering.py)


def _words(value):
    b = struct.pack(">f", value)
    return [(b[0] << 8) | b[1], (b[2] << 8) | b[3]]


class FakeMaster:
    """An Eastron-layout meter (SDM630 registers) behind a fake master. `fail` is an
    exception to raise on the next reads (None = answer)."""

    def __init__(self):
        self.regs = {}
        self.fail = None
        self.fail_once = None  # raised by the next read only
        self.calls = 0
        self.set(volts=(230.0, 230.0, 230.0), amps=(0.0, 0.0, 0.0))

    def set(self, volts=None, amps=None, watts=None):
        if volts:
            for k, v in enumerate(volts):
                self._put(0x0000 + 2 * k, v)
        if amps:
            for k, a in enumerate(amps):
                self._put(0x0006 + 2 * k, a)
                self._put(0x000C + 2 * k, a * 230.0 if watts is None else watts[k])
        self._put(0x0048, 1000.0)

    def _put(self, reg, value):
        w = _words(value)
        self.regs[reg] = w[0]
        self.regs[reg + 1] = w[1]

    async def read_registers(self, fc, slave, start, count):
        self.calls += 1
        if self.fail_once is not None:
            e = self.fail_once
            self.fail_once = None
            raise e
        if self.fail is not None:
            raise self.fail
        out = bytearray()
        for r in range(start, start + count):
            w = self.regs.get(r, 0)
            out.append(w >> 8)
            out.append(w & 0xFF)
        return memoryview(out)


class Rig:
    def __init__(self, phases=3, model="SDM630", master=True, **settings):
        s = {"meter_model": model, "max_house_current_a": 25, "phase_set": "L123"}
        s.update(settings)
        self.settings = fakehw.FakeSettings(**s)
        self.clock = Clock()
        self.ch = FakeCharger(phases)
        self.prot = FakeProtection()
        self.metering = FakeMetering()
        self.master = FakeMaster() if master else None
        self.pm = PowerManager(
            self.ch, self.settings, self.prot, self.metering, master=self.master,
            data_dir="/tmp", clock=self.clock,
        )

    def cycle(self, n=1):
        """n cycles of 1 s; the fake master never really waits, so the coroutine
        finishes on its first step."""
        for _ in range(n):
            coro = self.pm.poll_once()
            try:
                coro.send(None)
            except StopIteration:
                pass
            else:
                raise AssertionError("poll_once waited on something")
            self.clock.ms += 1000

    def limit(self):
        return self.ch.external.get("power")

    def house(self, *amps, own=None):
        """Other loads per phase: the meter sees them plus the charger's own current."""
        if own is not None:
            self.metering.amps = list(own)
        o = self.metering.amps
        if self.ch.phases == 3:
            grid = [amps[k] + o[k] for k in range(3)]
        else:
            grid = list(amps)
        self.master.set(amps=grid)


# ---- regulation -------------------------------------------------------------------------------
def test_no_reading_yet_means_no_charging():
    r = Rig()
    r.master.fail = ModbusError("silent", "timeout")
    r.cycle()
    eq(r.limit(), 0.0, "paused until the meter has answered once")


def test_first_reading_sets_the_limit_directly():
    r = Rig()
    r.house(10, 5, 5, own=(0, 0, 0))
    r.cycle()
    eq(r.limit(), 15.0, "25 A contract - 10 A on the busiest phase")
    eq(r.pm.headroom_a, [15.0, 20.0, 20.0])


def test_own_current_is_not_counted_as_house_load():
    r = Rig()
    r.house(10, 5, 5, own=(12, 12, 12))  # the meter reads 22/17/17 A
    r.cycle()
    eq(r.limit(), 15.0, "the charger's 12 A are room, not load")


def test_cuts_at_once_when_the_house_load_rises():
    r = Rig()
    r.house(4, 4, 4, own=(0, 0, 0))
    r.cycle()
    eq(r.limit(), 21.0)
    r.house(4, 14, 4, own=(16, 16, 16))
    r.cycle()
    eq(r.limit(), 11.0, "one cycle: 25 - 14")


def test_raises_by_a_damped_step():
    r = Rig()
    r.house(15, 0, 0)
    r.cycle()
    eq(r.limit(), 10.0)
    r.house(3, 0, 0)
    seen = []
    for _ in range(7):
        r.cycle()
        seen.append(r.limit())
    eq(seen, [12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 22.0], "+2 A per cycle up to 22 A")


def test_pause_below_6_a_and_resume_with_hysteresis():
    r = Rig()
    r.house(10, 0, 0)
    r.cycle()
    eq(r.limit(), 15.0)
    r.house(20, 0, 0)  # 5 A left
    r.cycle()
    eq(r.limit(), 0.0, "pause at once")
    true(r.pm.paused, "paused")
    r.house(18.5, 0, 0)  # 6.5 A: enough to charge, not enough to resume
    r.cycle(10)
    eq(r.limit(), 0.0, "6.5 A is below 6 A + 1 A hysteresis")
    r.house(17.5, 0, 0)  # 7.5 A
    r.cycle(5)
    eq(r.limit(), 0.0, "not yet: must hold 5 s")
    r.cycle()
    eq(r.limit(), 7.5, "resumed after 5 s at 7.5 A")
    r.house(10, 0, 0)
    r.cycle()
    eq(r.limit(), 9.5, "then the damped raise")


def test_resume_needs_the_min_start_current():
    """A car that needs 8 A to start (min_start_a) is not resumed at 7 A, where it would
    not draw: the pause ends at 8 A + the hysteresis, at up to 8 A + one step."""
    r = Rig(min_start_a=8)
    r.house(22, 0, 0, own=(0, 0, 0))
    r.cycle()
    eq(r.limit(), 0.0, "3 A: paused")
    r.house(17, 0, 0)
    r.cycle(8)
    eq(r.limit(), 0.0, "8 A of room: not enough to start it and resume")
    r.house(16, 0, 0)
    r.cycle(7)
    eq(r.limit(), 9.0, "9 A held for 5 s: resumed")


def test_a_dip_restarts_the_resume_timer():
    r = Rig()
    r.house(20, 0, 0)
    r.cycle()
    eq(r.limit(), 0.0)
    r.house(10, 0, 0)
    r.cycle(4)
    r.house(19, 0, 0)  # one reading below 7 A
    r.cycle()
    r.house(10, 0, 0)
    r.cycle(5)
    eq(r.limit(), 0.0, "the 5 s start again after the dip")
    r.cycle()
    eq(r.limit(), 8.0, "resumes at 6 A + one step, not at once at 15 A")


def test_single_phase_charger_on_l2():
    r = Rig(phases=1, phase_set="L2", max_house_current_a=40)
    r.metering.amps = [16.0, 0.0, 0.0]  # its own L1 terminal
    r.master.set(amps=(5.0, 30.0, 5.0))  # the meter sees it on house L2
    r.cycle()
    eq(r.pm.headroom_a, [None, 26.0, None], "40 - (30 - 16) on L2 only")
    eq(r.limit(), 26.0)


def test_single_phase_charger_on_an_unknown_phase_takes_the_worst():
    r = Rig(phases=1, phase_set="L123", max_house_current_a=32)
    r.metering.amps = [10.0, 0.0, 0.0]
    r.master.set(amps=(12.0, 30.0, 8.0))
    r.cycle()
    eq(r.limit(), 12.0, "as if it drew on L2, the busiest")


def test_single_phase_car_on_a_three_phase_charger_uses_its_phase_only():
    """The car draws on L1 only: the busy L2 does not bound its current; before it has
    drawn (phases unknown) all three do."""
    r = Rig(max_house_current_a=32)
    r.house(10, 28, 5, own=(0, 0, 0))
    r.cycle()
    eq(r.limit(), 0.0, "4 A on L2: paused while the car's phases are unknown")
    r.metering.car_mask = 1
    r.house(10, 28, 5, own=(8, 0, 0))
    r.cycle(7)
    eq(r.pm.headroom_a, [22.0, 4.0, 27.0], "every phase's headroom still shown")
    eq(r.pm.target_a, 22.0, "its own phase only")
    true(r.limit() >= 6.0, "charging: %r" % r.limit())
    r.metering.car_mask = 7  # it adds two phases
    r.house(10, 28, 5, own=(8, 8, 8))
    r.cycle()
    eq(r.limit(), 0.0, "L2 binds again at once")


def test_three_phase_car_on_a_single_phase_setting_counts_per_phase():
    """A "7kW" setting on three-phase wiring with a three-phase car: its 16 A per phase
    are room on their own phase, not 48 A of room on every phase."""
    r = Rig(phases=1, phase_set="L123", max_house_current_a=32)
    r.metering.amps = [16.0, 16.0, 16.0]
    r.master.set(amps=(26.0, 40.0, 20.0))  # house L2: 24 A + the car's 16 A
    r.cycle()
    eq(r.pm.headroom_a, [22.0, 8.0, 28.0], "32 - (house - 16) per phase")
    eq(r.limit(), 8.0, "the busiest phase the car loads")


def test_exporting_phase_counts_as_negative_load():
    r = Rig(max_house_current_a=16)
    r.master.set(amps=(10.0, 2.0, 2.0), watts=(-2300.0, 460.0, 460.0))
    r.cycle()
    eq(r.pm.headroom_a[0], 26.0, "PV pushes 10 A out on L1")
    eq(r.limit(), 14.0)


def test_single_phase_meter():
    r = Rig(phases=1, model="SDM120", phase_set="L3", max_house_current_a=32)
    r.metering.amps = [8.0, 0.0, 0.0]
    r.master.set(amps=(20.0, 0.0, 0.0))
    r.cycle()
    eq(r.pm.headroom_a, [None, None, 20.0], "the SDM120's one phase is the charger's")
    eq(r.limit(), 20.0)


def test_settings_are_read_every_cycle():
    r = Rig()
    r.house(10, 0, 0)
    r.cycle()
    eq(r.limit(), 15.0)
    r.settings["max_house_current_a"] = 20
    r.cycle()
    eq(r.limit(), 10.0, "a lower contract applies at once")


# ---- meter loss ---------------------------------------------------------------------------------
def test_meter_loss_trips_met_and_falls_back_then_recovers():
    r = Rig()
    r.house(5, 5, 5)
    r.cycle()
    eq(r.limit(), 20.0)
    r.master.fail = ModbusError("no reply", "timeout")
    r.cycle(4)
    eq(r.ch.trips, [], "4 s blind: not yet")
    eq(r.limit(), 20.0, "the last limit holds while blind")
    r.cycle()
    eq(r.ch.trips, [faults.MET], "5 s without a valid reading -> ERR MET")
    true(r.prot.external_meter_lost, "protection told")
    eq(r.limit(), power.FALLBACK_A, "fallback: pause")
    r.cycle(20)
    eq(r.ch.trips, [faults.MET], "tripped once")
    eq(r.pm.view()["lost"], True)
    r.master.fail = None
    r.cycle(5)
    true(r.prot.external_meter_lost, "back for 5 readings, not 5 s yet")
    eq(r.limit(), 0.0)
    r.cycle()
    true(not r.prot.external_meter_lost, "recovered by itself")
    eq(r.limit(), 8.0, "resumes at once (the hysteresis ran meanwhile), damped")
    r.cycle()
    eq(r.limit(), 10.0)


def test_occasional_errors_do_not_trip():
    r = Rig()
    r.house(5, 5, 5)
    errors = (
        ModbusError("crc", "crc"), ModbusError("exception 4 (slave device failure) to function 4", "exception", 4), ModbusError("noise", "frame"),
        ModbusError("t", "timeout"),
    )
    for i in range(40):
        r.master.fail = errors[(i // 2) % 4] if i % 2 else None
        r.cycle()
    eq(r.ch.trips, [], "never 5 s without a valid reading")
    e = r.pm.view()["errors"]
    eq((e["crc"], e["exception"], e["frame"], e["timeout"]), (10, 10, 10, 10), "each try counted")
    eq(r.pm.reads, 20)


def test_a_bad_exchange_is_retried_within_the_cycle():
    r = Rig()
    r.house(5, 5, 5)
    r.master.fail_once = ModbusError("crc", "crc")
    r.cycle()
    eq(r.pm.reads, 1, "the retry gave a valid reading")
    eq(r.pm.errors["crc"], 1)
    eq(r.master.calls, 2)
    eq(r.limit(), 20.0)


def test_a_broken_serial_port_is_a_failed_read():
    from modbus_rtu import ModbusError

    r = Rig()
    r.master.fail = ModbusError("serial port error: OSError(5)")
    r.cycle(6)
    eq(r.pm.errors["bus"], 12)
    eq(r.ch.trips, [faults.MET], "the task lives on and raises ERR MET")


def test_no_bus_wired_is_a_lost_meter():
    r = Rig(master=False)
    r.cycle(6)
    eq(r.ch.trips, [faults.MET])
    true("RS-485" in r.pm.view()["last_error"], r.pm.view()["last_error"])


def test_bad_custom_map_is_a_lost_meter():
    r = Rig(model="custom")
    r.pm.data_dir = "/nonexistent"
    r.cycle(6)
    eq(r.ch.trips, [faults.MET])
    true("custom" in r.pm.view()["last_error"], r.pm.view()["last_error"])


def test_turning_the_meter_off_clears_everything():
    r = Rig()
    r.master.fail = ModbusError("t", "timeout")
    r.cycle(6)
    true(r.prot.external_meter_lost, "lost")
    r.settings["meter_model"] = "none"
    r.cycle()
    true(not r.prot.external_meter_lost, "no meter, nothing lost")
    eq(r.limit(), None, "limit removed")
    eq(r.pm.view(), None)
    calls = r.master.calls
    r.cycle(3)
    eq(r.master.calls, calls, "no polling while off")


def test_partial_reading_is_not_used():
    r = Rig(model="ABB_B23")
    r.master.regs = {}
    for reg in range(0x5B00, 0x5B1C):
        r.master.regs[reg] = 0
    r.master.regs[0x5B0C] = 0xFFFF  # i_l1 not available
    r.master.regs[0x5B0D] = 0xFFFF
    r.cycle()
    eq(r.pm.errors["value"], 1)
    eq(r.limit(), 0.0)


def test_view_fields():
    r = Rig()
    r.house(10, 5, 5, own=(6, 6, 6))
    r.cycle()
    v = r.pm.view()
    for key in (
        "model", "ok", "lost", "age_s", "volts", "amps", "power_w", "energy_kwh",
        "headroom_a", "own_a", "limit_a", "paused", "exchanges", "cycle_ms", "reads",
        "errors", "last_error",
    ):
        true(key in v, key)
    eq(v["model"], "SDM630")
    eq(v["volts"], [230.0, 230.0, 230.0])
    eq(v["amps"], [16.0, 11.0, 11.0])
    eq(v["exchanges"], 1)
    eq(v["age_s"], 1.0)
    eq(v["energy_kwh"], 1000.0)


# ---- with the real charging core --------------------------------------------------------------------
def test_with_the_charging_core_met_trips_and_clears():
    from evse.charger import Charger
    from evse.protection import Protection

    hw = fakehw.Hw()
    settings = fakehw.FakeSettings(meter_model="SDM630", max_house_current_a=25)
    clock = Clock()
    ch = Charger(hw, settings)
    ch.clock = clock
    prot = Protection(ch, hw, settings, None, "/tmp")
    prot._save_latches = lambda: None
    metering = FakeMetering()
    master = FakeMaster()
    pm = PowerManager(ch, settings, prot, metering, master=master, clock=clock)
    hw.rcd.set_handler(ch.rcd_handler)

    def run(ms):
        for _ in range(ms // 10):
            clock.ms += 10
            ch.tick_pilot()
            if clock.ms % 100 == 0:
                ch.tick_control(clock.ms)
                prot.tick(clock.ms)
            if clock.ms % 1000 == 0:
                prot.on_meter(clock.ms, True)
                coro = pm.poll_once()
                try:
                    coro.send(None)
                except StopIteration:
                    pass
                metering.amps = list(hw.meter.amps)

    master.set(amps=(9.0, 0.0, 0.0))
    # The manager's first cycle before the session, as at boot: its 0 A before the first
    # reading would otherwise stop the offer the session had started, a pause of
    # min_pause_s.
    run(1000)
    hw.ev.state = "B"
    run(300)
    eq(ch.start_session("04A1B2C3", "RFID"), None)
    run(1500)
    hw.ev.state = "C"
    run(2000)
    eq(ch.offered_a, 16.0, "25 - 9 A")
    eq(ch.limit_binding, "power")
    master.set(amps=(15.0, 0.0, 0.0))
    run(1000)
    eq(ch.offered_a, 10.0, "cut within a cycle")
    master.fail = ModbusError("unplugged", "timeout")
    run(6000)
    true(ch.active & faults.MET, "ERR MET")
    eq(ch.offered_a, 0.0)
    master.fail = None
    run(4000)
    true(ch.active & faults.MET, "still MET during the recovery window")
    run(3000)
    true(not ch.active & faults.MET, "MET cleared by protection once the meter is back")
    run(2000)
    true(ch.offered_a >= 6.0, "charging again: %.1f A" % ch.offered_a)
    true(ch.session is not None, "the session survived the non-latching fault")


def test_with_the_real_master_over_a_fake_line():
    import asyncio
    import time
    from modbus_rtu import ModbusRtu
    from test_modbus_rtu import FakeUart, regs_reply

    uart = FakeUart(time.ticks_ms, 9600)
    master = ModbusRtu(uart, None, timeout_ms=100)
    fm = FakeMaster()
    fm.set(amps=(7.0, 0.0, 0.0))

    def answer(req):
        start = (req[2] << 8) | req[3]
        count = (req[4] << 8) | req[5]
        return 3, regs_reply(req[0], req[1], [fm.regs.get(r, 0) for r in range(start, start + count)])

    uart.replies = [answer, answer]
    settings = fakehw.FakeSettings(meter_model="SDM630", max_house_current_a=25)
    ch = FakeCharger()
    pm = PowerManager(ch, settings, FakeProtection(), FakeMetering(), master=master)

    async def main():
        await pm.poll_once()
        await pm.poll_once()

    asyncio.run(main())
    asyncio.new_event_loop()
    eq(pm.reads, 2)
    eq(ch.external["power"], 18.0)
    eq(uart.writes[0], b"\x01\x04\x00\x00\x00\x4a\x71\xfd", "one FC 04 read of 74 registers")


def test_reading_slots_match_the_maps():
    # power.py keeps these slot numbers as its own consts (it imports meters lazily).
    from evse import meters

    eq(
        (meters.N_QTY, meters.I_L1, meters.P_L1, meters.P_TOTAL, meters.E_IMPORT),
        (11, 3, 6, 9, 10),
    )


def test_master_built_on_the_bus_once_a_meter_is_configured():
    from test_modbus_rtu import SilentUart

    settings = fakehw.FakeSettings(meter_model="none")
    pm = PowerManager(FakeCharger(), settings, FakeProtection(), FakeMetering(),
                      rs485=(SilentUart(), None))
    eq(pm.master, None, "nothing built while no meter is configured")
    settings["meter_model"] = "SDM630"
    pm._configure(0)
    true(pm.master is not None, "built on hw.rs485")


def test_a_nan_own_meter_reading_does_not_lift_the_house_limit():
    """A NaN internal-meter current counts as none of the charger's own current: the
    'power' limit stays a number no higher than the house headroom."""
    from test_charger import Rig as ChargerRig

    r = ChargerRig(meter_model="SDM630", max_house_current_a=25, phase_set="L123")
    master = FakeMaster()

    class OwnMeter:
        amps = [0.0, 0.0, 0.0]

        def read(self):
            pass

    own = OwnMeter()
    pm = PowerManager(r.ch, r.settings, FakeProtection(), FakeMetering(), master=master,
                      data_dir="/tmp", clock=r.clock, own_meter=own)

    def cycle():
        try:
            pm.poll_once().send(None)
        except StopIteration:
            pass

    master.set(amps=(15.0, 15.0, 15.0))
    cycle()
    r.charge()
    r.run(6000)
    cycle()
    true(r.ch.offered_a <= 10.0, "10 A of headroom: %.1f A" % r.ch.offered_a)
    own.amps = [float("nan")] * 3
    cycle()
    r.run(300)
    lim = r.ch.external.get("power")
    true(lim is not None and lim == lim and lim <= 10.0, "power limit %r" % lim)
    true(r.ch.offered_a <= 10.0, "offer %.1f A" % r.ch.offered_a)


# ---- the phases the car draws on (evse/metering.py) -----------------------------------------
def test_car_phases_measured_per_session():
    from evse.history import Session
    from evse.metering import Metering

    class Ch:
        session = None

    class Prot:
        readings = None

        def on_meter(self, now, ok):
            pass

    class Hist:
        def session_progress(self, s):
            pass

    hw = fakehw.Hw()
    ch = Ch()
    met = Metering(hw, ch, Prot(), Hist())

    def read(amps, n=1):
        for _ in range(n):
            hw.meter.amps = list(amps)
            met.read(0)

    read((16.0, 0.0, 0.0), 5)
    eq(met.car_mask, None, "no session: nothing measured")
    ch.session = Session("A", "free", 0, 0.0)
    read((0.0, 0.0, 0.0), 5)
    eq(met.car_mask, None, "the car has not drawn yet: unknown")
    read((2.0, 0.5, 0.0), 3)
    eq(met.car_mask, None, "too little to tell")
    read((8.0, 0.4, 0.0), 2)
    eq(met.car_mask, None, "not yet: two readings")
    read((8.0, 0.4, 0.0))
    eq(met.car_mask, 1, "L1 only")
    eq(met.view()["car_phases"], [1], "in the view")
    read((0.0, 0.0, 0.0), 3)
    eq(met.car_mask, 1, "kept through a pause")
    read((10.0, 10.0, 10.0))
    eq(met.car_mask, 7, "a phase added counts at once")
    read((10.0, 0.0, 0.0), 5)
    eq(met.car_mask, 7, "never narrowed within the session")
    ch.session = None
    read((0.0, 0.0, 0.0))
    eq(met.car_mask, None, "the next car is measured anew")


def test_a_huge_current_is_no_reading_and_raises_no_limit():
    # 1e30 A exported on every phase would leave 1e30 A of room.
    r = Rig()
    r.house(10.0, 10.0, 10.0)
    r.cycle()
    eq(r.limit(), 15.0)
    r.master.set(amps=(1e30, 1e30, 1e30), watts=(-2.3e32, -2.3e32, -2.3e32))
    for _ in range(7):
        r.cycle()
        true(r.limit() <= 15.0, "not raised: %r" % r.limit())
    true(r.prot.external_meter_lost, "no valid reading: ERR MET")


def test_a_meter_of_another_make_at_the_address_is_no_reading():
    # An EM340 (32-bit integers, low word first) where an SDM630 is configured: its
    # registers read as floats are tiny, so 30 A of house load would look like none.
    r = Rig(max_house_current_a=25)
    m = r.master
    m.regs = {}
    for k in range(3):
        m.regs[2 * k] = 2300  # 230.0 V in 0.1 V
        m.regs[0x0C + 2 * k] = 30000  # 30 A in mA
    for _ in range(7):
        r.cycle()
        eq(r.limit(), 0.0, "the house load is unknown: nothing offered")
    true(r.prot.external_meter_lost, "ERR MET")
