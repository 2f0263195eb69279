# The socket's lock (Case B): engaged for a session and confirmed by its feedback, released
# only once the contacts are proven open and no weld is known, and the lock test a
# technician's clear of ELK needs. The charger owns it and runs it from its control tick.
import time
from micropython import const

from evse import faults
import log

_log = log.get("charger")

LOCK_CONFIRM_MS = const(1000)  # lock feedback must confirm within 1 s, one retry
# A lock that never confirmed at the start of a session is not a protective trip (no
# current has flowed): ERR ELK, released, cleared by the unplug. This many such failures
# on consecutive plug-ins latch it (the lock is broken, not the plug badly seated).
_LOCK_FAILS_LATCH = const(3)

# Lock states
LOCK_NONE = const(0)  # no lock fitted (Case C)
LOCK_OPEN = const(1)
_LOCK_ENGAGING = const(2)
LOCK_LOCKED = const(3)

# Lock test phases (a technician's clear of ELK)
_LT_IDLE = const(0)
_LT_START = const(1)
_LT_ENGAGE = const(2)
_LT_RELEASE = const(3)


class SocketLock:
    def __init__(self, ch, hw):
        self.ch = ch
        self._hw = hw.lock
        self.state = LOCK_NONE
        self._ms = 0
        self._tries = 0
        self._test = _LT_IDLE
        self._test_ms = 0
        self.tested = False  # the lock engaged and released on command since ELK latched
        self.fails = 0  # plug-ins in a row whose lock never confirmed (RAM only)
        self.seated = False  # the lock confirmed since the vehicle plugged in
        self._unlock_ms = None  # the lock released then: its feedback must fall
        self.elk_unplugged = False  # the vehicle left since a lock that never confirmed

    def manage(self, now_ms, want):
        if self.state == LOCK_NONE:
            return
        ch = self.ch
        lk = self._hw
        if self._unlock_ms is not None:
            if not lk.feedback() or self.state != LOCK_OPEN:
                self._unlock_ms = None
            elif time.ticks_diff(now_ms, self._unlock_ms) >= 2 * LOCK_CONFIRM_MS:
                # Released but still reads engaged (the retry's margin given): the plug
                # is held, the lock is broken.
                self._unlock_ms = None
                self.trip("lock did not unlock: the plug is held")
                return
        if not want:
            if self.state == LOCK_LOCKED and self.ch._relays.closed and not lk.feedback():
                # The session is over but the relays still wait for the vehicle to leave C
                # (up to 6 s): its plug is as live, and now free, as during the session.
                self.trip("lock opened with the relays closed")
                self.state = LOCK_OPEN
                return
            # Release only once both auxiliary contacts have reported open for the
            # whole weld-check window: a relay commanded open may still be welded, and
            # its pins live. A known weld keeps the plug locked for good.
            if self.state != LOCK_OPEN and ch.contacts_open:
                if (ch.active | ch.latched) & (faults.R12 | faults.R3N):
                    return
                lk.release()
                self.state = LOCK_OPEN
                self._unlock_ms = now_ms
            return
        if self.state == LOCK_OPEN:
            lk.engage()
            self.state = _LOCK_ENGAGING
            self._ms = now_ms
            self._tries = 1
            self._unlock_ms = None
        elif self.state == _LOCK_ENGAGING:
            if lk.feedback():
                self.state = LOCK_LOCKED
                self.fails = 0
                self.seated = True
            elif time.ticks_diff(now_ms, self._ms) >= LOCK_CONFIRM_MS:
                if self._tries < 2:
                    if ch.contacts_open:  # a pulse back only with the contacts known open
                        lk.release()
                    lk.engage()
                    self._ms = now_ms
                    self._tries += 1
                elif self.seated:
                    # It locked on this plug-in (the plug is seated): the lock is broken.
                    self.trip("lock did not confirm again on the plug-in it locked")
                else:
                    # Never confirmed, so never charged through it: a plug not fully
                    # seated. No protective trip unless it keeps happening. The release
                    # comes through the path above (fault: want=False): only once the
                    # contacts are confirmed open, never over a weld.
                    self.fails += 1
                    if self.fails >= _LOCK_FAILS_LATCH:
                        self.trip("lock did not confirm on %d plug-ins in a row"
                                  % self.fails)
                    else:
                        ch.trip(faults.ELK)
                        self.elk_unplugged = False
                        _log.error("lock did not confirm: check the plug is pushed fully in")
        elif self.state == LOCK_LOCKED and not lk.feedback():
            self.trip("lock opened during the session")
            self.state = LOCK_OPEN

    def trip(self, why):
        """A protective ELK: tripped and latched in the same step (a technician clears
        it after a lock test)."""
        ch = self.ch
        ch.trip(faults.ELK)  # first: the log may wait on a UART
        # New to protection even when a lock that never confirmed stands as ELK already:
        # the latch has its own record and ends the session.
        ch.latch(faults.ELK, new=faults.ELK & ~ch.latched)
        self.fails = 0
        _log.error("%s: ELK latched", why)

    def start_test(self):
        """A technician asks to clear ELK: the lock must show it works first. The control
        tick engages it, waits for the feedback, releases it and waits for the feedback
        to fall (each within the lock's confirm time, with one retry's margin);
        `tested` then says so."""
        if self._test == _LT_IDLE:
            self.tested = False
            self._test = _LT_START

    def run_test(self, now_ms):
        lt = self._test
        if lt == _LT_IDLE:
            return
        lk = self._hw
        if not self.ch.latched & faults.ELK or self.state == LOCK_NONE:
            self._test = _LT_IDLE  # nothing to test for any more
            if lt != _LT_START and self.state != LOCK_NONE:
                if self._may_open():
                    lk.release()
                else:
                    self.state = LOCK_LOCKED  # manage() releases it when it may
            return
        if lt == _LT_START:
            # Only with the relays open and the contacts proven open (the weld window), as
            # for any release of the lock, and never with a weld known (it keeps the lock).
            if self.state != LOCK_OPEN or not self._may_open():
                return
            lk.engage()
            self._test = _LT_ENGAGE
            self._test_ms = now_ms
        elif lt == _LT_ENGAGE:
            if not self._may_open():
                self._test_end(False, "a weld or closed contacts seen during the test")
            elif lk.feedback():
                lk.release()
                self._test = _LT_RELEASE
                self._test_ms = now_ms
            elif time.ticks_diff(now_ms, self._test_ms) >= 2 * LOCK_CONFIRM_MS:
                self._test_end(False, "did not confirm engaged")
        elif lt == _LT_RELEASE:
            if not lk.feedback():
                self._test_end(True, "engaged and released")
            elif time.ticks_diff(now_ms, self._test_ms) >= 2 * LOCK_CONFIRM_MS:
                self._test_end(False, "still reads engaged when released")

    def _may_open(self):
        """The lock may be released: relays open, both auxiliary contacts proven open for
        the weld window and reading open now, no weld known. Checked before every release
        of the lock test: a weld may show up while it runs."""
        ch = self.ch
        r = ch._relays
        return not (
            r.closed
            or not ch.contacts_open
            or r.feedback(1)
            or r.feedback(2)
            or (ch.active | ch.latched) & (faults.R12 | faults.R3N)
        )

    def _test_end(self, ok, why):
        self._test = _LT_IDLE
        if self._may_open():
            self._hw.release()
            self.state = LOCK_OPEN
        else:
            # A weld (or contacts not proven open) keeps the plug locked: the test fails,
            # and manage() releases only once the contacts are open and no weld known.
            ok = False
            why += "; the lock stays engaged: contacts not proven open or welded"
            self.state = LOCK_LOCKED
        self.tested = ok
        if ok:
            _log.info("lock test passed: %s", why)
        else:
            _log.error("lock test failed: %s", why)
