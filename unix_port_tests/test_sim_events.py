# unix_sim board: the actuator event ring and how the `events` op decodes it.
import os

import board
import check
import sim_events


class _FakeClock:
    def __init__(self):
        self.t = 0
        self.now = self._now

    def _now(self):
        return self.t


def _hw():
    port = 30000 + (os.urandom(1)[0] << 4)
    return board.make({"EVSE_DATA_DIR": "/tmp/sim_test_data", "EVSE_CAN_PORT": str(port)})


def _whats(events):
    return [(e["what"], e["value"]) for e in events]


def test_every_actuator_is_recorded_and_decoded():
    hw = _hw()
    t0 = hw.clock_us()
    hw.relays.close()
    hw.relays.close()  # no change: no event
    hw.lock.engage()
    hw.cp.pwm(267)
    hw.cp.high()
    hw.cp.low()
    hw.buzzer.beep(150)
    hw.belt.set("blue", "slow")
    hw.leds.set("fault", "red", "fast")
    hw.display.show("ERR OCP")
    hw.report_error("OCP", True)
    hw.report_error("OCP", True)  # still active: no event
    hw.report_error("OCP", False)
    hw.tap_light.set(True)
    hw.fan.run(True)
    hw.relays.open()
    hw.lock.release()
    ev = hw.events.since(t0)
    check.eq(
        _whats(ev),
        [
            ("relays", True),
            ("lock", "locked"),
            ("pwm_duty_pct", 26.7),
            ("pwm_duty_pct", None),
            ("pwm_duty_pct", None),
            ("buzzer", 150),
            ("led_belt", {"colour": "blue", "pattern": "slow"}),
            ("leds", {"name": "fault", "colour": "red", "pattern": "fast"}),
            ("display", "ERR OCP"),
            ("error", "OCP"),
            ("error", "OCP"),
            ("tap_light", True),
            ("fan", True),
            ("relays", False),
            ("lock", "unlocked"),
        ],
        "events",
    )
    check.eq([e.get("cp") for e in ev[2:5]], ["pwm", "+12", "-12"], "cp mode")
    check.eq([e.get("active") for e in ev[9:11]], [True, False], "error raised, cleared")
    ts = [e["t_us"] for e in ev]
    check.true(ts == sorted(ts) and ts[0] >= t0, "oldest first, after t0")


def test_every_colour_and_led_round_trips():
    hw = _hw()
    t0 = hw.clock_us()
    want = []
    for name in sim_events.LED_NAMES:
        for colour in sim_events.COLOURS:
            for pattern in sim_events.PATTERNS:
                hw.leds.set(name, colour, pattern)
                want.append({"name": name, "colour": colour, "pattern": pattern})
    got = [e["value"] for e in hw.events.since(t0) if e["what"] == "leds"]
    check.eq(got, want, "each set changed the LED, each change decoded back")


def test_since_filters_by_time():
    c = _FakeClock()
    ring = sim_events.EventRing(c.now, size=8)
    for t in (10, 20, 30):
        c.t = t
        ring.record(sim_events.BUZZER, t)
    check.eq([e["t_us"] for e in ring.since(20)], [20, 30], "t_us >= since")
    check.eq(ring.since(31), [], "nothing newer")


def test_ring_keeps_the_newest_and_counts_the_dropped():
    c = _FakeClock()
    ring = sim_events.EventRing(c.now, size=8)
    for t in range(1, 21):
        c.t = t
        ring.record(sim_events.BUZZER, t)
    ev = ring.since(0)
    check.eq([e["value"] for e in ev], list(range(13, 21)), "the last 8")
    check.eq((len(ring), ring.dropped), (8, 12), "count, dropped")


def test_record_allocates_nothing_even_when_wrapping():
    c = _FakeClock()
    ring = sim_events.EventRing(c.now, size=4)
    code = "PE"

    def burst():
        for i in range(10):
            ring.record(sim_events.PWM, i)
            ring.record(sim_events.ERROR, 1, code)

    check.assert_no_alloc(burst)
    check.eq(ring.since(0)[-1]["value"], "PE", "object slot")


def test_display_text_is_copied_not_kept():
    # A reference would keep every string the application let go alive in the ring,
    # counted as the firmware's heap: the text is copied into the slot instead.
    c = _FakeClock()
    ring = sim_events.EventRing(c.now, size=4)
    for i in range(6):
        c.t = i
        ring.record_text(sim_events.DISPLAY, "%d.0 A 7kW°" % i)
    check.eq([e["value"] for e in ring.since(0)],
             ["%d.0 A 7kW°" % i for i in range(2, 6)], "the newest four, intact")
    check.eq(ring._obj, [None] * 4, "no reference kept")
