# The RCD self-test before each charge: the test input must trip the module within
# 500 ms and its fault line fall again once released. The charger owns it: its control
# tick asks `done()` before an offer and `stop()` when nothing waits for the test any more.
import time
from micropython import const

from evse import faults
import log

_log = log.get("charger")

_SELFTEST_MS = const(500)  # RCD test input -> fault line within 500 ms, and back

# RCD self-test phases
_ST_IDLE = const(0)
_ST_DRIVE = const(1)
_ST_RELEASE = const(2)
_ST_PASSED = const(3)
_ST_CANCEL = const(4)  # test input released early: waiting for the fault line to fall


class RcdSelfTest:
    def __init__(self, ch, hw):
        self.ch = ch
        self._rcd = hw.rcd
        self.phase = _ST_IDLE
        self._ms = 0
        # The RCD interrupt reads it: no IRD from the test's own edge while it is set.
        self.testing = False
        self._edges = 0  # rcd_irq_count when the test input was released
        self.failed = False

    def done(self, now_ms):
        st = self.phase
        if st == _ST_PASSED:
            return True
        rcd = self._rcd
        if st == _ST_CANCEL:
            self.stop(now_ms)
            return False
        if st == _ST_IDLE:
            # The test trips the RCD, and the board opens the relays on a trip: only with
            # the contacts known open (a new session inside the 6 s force-open window
            # waits), never under load.
            ch = self.ch
            if ch._relays.closed or not ch.contacts_open:
                return False
            self.testing = True
            rcd.test(True)
            self.phase = _ST_DRIVE
            self._ms = now_ms
        elif st == _ST_DRIVE:
            if rcd.tripped():
                self._release_input()
                self.phase = _ST_RELEASE
                self._ms = now_ms
            elif time.ticks_diff(now_ms, self._ms) >= _SELFTEST_MS:
                self._fail("did not trip on the test input")
        elif st == _ST_RELEASE:
            if not rcd.tripped():
                if not self._watched():
                    return False  # a real trip as the test ended: IRD
                self.phase = _ST_PASSED
                _log.info("RCD self-test passed")
                return True
            if time.ticks_diff(now_ms, self._ms) >= _SELFTEST_MS:
                self._fail("did not release after the test")
        return False

    def stop(self, now_ms, forget=False):
        """No charge waits for the test any more (session ended, vehicle gone, a fault, a
        pause): release the test input now, and watch the RCD again as soon as its fault
        line has fallen. A line still up 500 ms later is a real trip (or a stuck module).
        forget: the passed result belonged to the session that ended."""
        st = self.phase
        if st == _ST_DRIVE or st == _ST_RELEASE:
            if st == _ST_DRIVE:
                self._release_input()
            self.phase = _ST_CANCEL
            self._ms = now_ms
            st = _ST_CANCEL
        if st == _ST_CANCEL:
            if not self._rcd.tripped():
                self._watched()
                self.phase = _ST_IDLE
            elif time.ticks_diff(now_ms, self._ms) >= _SELFTEST_MS:
                self._fail("did not release after the test")
        elif st == _ST_PASSED and forget:
            self.phase = _ST_IDLE

    def _release_input(self):
        # Edges counted from here on are not the test's own: its rising edge came while
        # the input was driven, and the line can only rise again after it has fallen.
        self._edges = self.ch.rcd_irq_count
        self._rcd.test(False)

    def _watched(self):
        """The test is over: the interrupt trips IRD again. An edge it counted since the
        test input was released, or a fault line up now, was a real trip that the test
        flag hid (the line read down, then an edge before the flag fell): IRD. False
        then, True when the RCD is quiet."""
        ch = self.ch
        st = ch._irq_off()
        self.testing = False
        edges = ch.rcd_irq_count - self._edges
        ch._irq_on(st)
        if edges or self._rcd.tripped():
            self.phase = _ST_IDLE
            ch.trip(faults.IRD)
            _log.error("RCD tripped as its self-test ended")
            return False
        return True

    def _fail(self, why):
        self._rcd.test(False)
        self.testing = False
        self.phase = _ST_IDLE
        self.failed = True
        self.ch.trip(faults.IRD)
        _log.error("RCD self-test failed: %s", why)
