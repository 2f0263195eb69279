# log: line format, level filtering (global and per logger), lazy formatting, the ring.
from check import eq, true
import log


class _Lazy:
    """Counts how often it is turned into text."""

    def __init__(self):
        self.calls = 0

    def __str__(self):
        self.calls += 1
        return "lazy"


def _capture():
    lines = []
    log.set_output(lines.append, lambda: 1234)
    log.set_level(log.INFO)
    return lines


def _reset():
    log.set_output()
    log.set_level(log.INFO)
    log.keep(0)


def test_line_format():
    lines = _capture()
    try:
        lg = log.get("pilot")
        lg.info("cp %d mV state %s", 9000, "B")
        lg.warning("plain %s text without args")
        lg.error("e")
        eq(lines, ["1234 INFO pilot: cp 9000 mV state B",
                   "1234 WARNING pilot: plain %s text without args",
                   "1234 ERROR pilot: e"])
    finally:
        _reset()


def test_same_logger_per_name():
    true(log.get("a") is log.get("a"), "one logger per name")


def test_level_filtering_and_lazy_formatting():
    lines = _capture()
    try:
        lg = log.get("meter")
        lazy = _Lazy()
        lg.debug("value %s", lazy)
        eq((lines, lazy.calls), ([], 0), "debug off by default: never formatted")
        log.set_level(log.DEBUG)
        lg.debug("value %s", lazy)
        eq((lines, lazy.calls), (["1234 DEBUG meter: value lazy"], 1))
        del lines[:]
        log.set_level(log.ERROR)
        lg.info("x")
        lg.warning("x")
        lg.error("shown")
        eq(lines, ["1234 ERROR meter: shown"])
    finally:
        _reset()


def test_per_logger_level_overrides_global():
    lines = _capture()
    try:
        noisy = log.get("noisy")
        noisy.level = log.DEBUG
        noisy.debug("d")
        log.get("quiet").debug("d")
        eq(lines, ["1234 DEBUG noisy: d"])
        noisy.level = None
    finally:
        _reset()


def test_bad_format_does_not_raise():
    lines = _capture()
    try:
        log.get("x").info("%d items", "not a number")
        log.get("x").info("%s and %s", 1)
        eq(len(lines), 2)
        true("not a number" in lines[0], "arguments still shown")
    finally:
        _reset()


def test_ring_keeps_last_warnings_and_errors():
    _capture()
    try:
        log.keep(3)
        lg = log.get("ring")
        lg.info("not kept")
        for i in range(5):
            lg.warning("w%d", i)
        lg.error("e")
        eq(log.recent(), ["1234 WARNING ring: w3", "1234 WARNING ring: w4", "1234 ERROR ring: e"])
        log.keep(0)
        eq(log.recent(), [])
        log.keep(4)
        lg.error("only")
        eq(log.recent(), ["1234 ERROR ring: only"], "partly filled ring")
    finally:
        _reset()


def test_exc_logs_line_and_traceback():
    lines = _capture()
    try:
        log.keep(2)
        try:
            raise ValueError("bad crc")
        except ValueError as e:
            log.get("store").exc(e, "save %s failed", "settings")
        eq(lines[0], "1234 ERROR store: save settings failed: ValueError: bad crc")
        true(lines[1].startswith("Traceback"), "traceback follows")
        eq(log.recent(), [lines[0]], "only the summary is kept")
    finally:
        _reset()


def test_default_clock_is_ticks_ms():
    import time

    lines = []
    log.set_output(lines.append)
    try:
        t0 = time.ticks_ms()
        log.get("clock").warning("x")
        ms, rest = lines[0].split(" ", 1)
        true(0 <= time.ticks_diff(int(ms), t0) < 1000, "ms since boot")
        eq(rest, "WARNING clock: x")
    finally:
        _reset()
