# Who may start and stop a charge.
#
# Sources are asked in order (the learned RFID cards first, then OCPP: local list, cache,
# central system); each answers "Accepted", a refusal such as "Invalid"/"Blocked", or
# None when it does not know the tag. `auth_mode` = "free" lets a plugged vehicle charge
# without any card (start mode "Free").
import time

import log

_log = log.get("auth")

FREE_TAG = "FREE"
PENDING_MS = 60000  # an authorization given before plug-in waits this long (ConnectionTimeOut)
PLUG_IN_TEXT = "PLUG IN"  # the display meanwhile (evse/hmi.py; 12 characters at most)
_NO_VEHICLE = "no vehicle connected"  # charger.start_session: the one refusal a wait cures
_ANOTHER_WAITS = "another card waits for the vehicle"  # one authorization waits at a time


class Authorizer:
    def __init__(self, charger, settings, hmi, metering):
        self.ch = charger
        self.settings = settings
        self.hmi = hmi
        self.met = metering
        self.sources = []  # objects with async authorize(id_tag) -> status or None
        self.stop_checks = []  # objects with async may_stop(id_tag, session) -> bool or None
        # The last present() refused a card no source accepts (not authorized, or not
        # the card of the charge running): what the reader's back-off counts.
        self.unknown = False

    def _pending_ms(self):
        """How long an authorization waits for the vehicle: a source's own figure (OCPP
        ConnectionTimeOut) or PENDING_MS."""
        for src in self.sources:
            fn = getattr(src, "connection_timeout_ms", None)
            ms = fn() if fn is not None else None
            if ms is not None:
                return ms
        return PENDING_MS

    async def authorize(self, id_tag):
        return (await self.ask(id_tag))[0]

    async def ask(self, id_tag):
        """(verdict, the source that gave it or None)."""
        for src in self.sources:
            verdict = await src.authorize(id_tag)
            if verdict is not None:
                return verdict, src
        return "Invalid", None

    async def present(self, id_tag, kind, start_mode="RFID"):
        """A card on the reader: start a session, or stop the one it started.

        Returns (ok, message). One beep on success, two beeps on failure."""
        self.unknown = False
        ok, msg = await self._present(id_tag, kind, start_mode)
        if ok:
            self.hmi.beep_ok()
        else:
            self.hmi.beep_fail()
        _log.info("card %s (%s): %s", id_tag, kind, msg)
        return ok, msg

    async def _present(self, id_tag, kind, start_mode):
        if kind is not None and kind != self.settings["rfid_type"]:
            return False, "card type %s not accepted (reader set to %s)" % (
                kind,
                self.settings["rfid_type"],
            )
        s = self.ch.session
        if s is not None:
            if s.id_tag.upper() == id_tag.upper() or await self._may_stop(id_tag, s):
                self.ch.end_session(start_mode)
                return True, "stopped"
            self.unknown = True
            return False, "another card started this charge"
        pend = self.ch.auth_pending
        if pend is not None and pend[0].upper() == id_tag.upper():
            self.ch.auth_pending = None  # the same card again: it no longer waits
            _log.info("authorization of %s withdrawn before plug-in", id_tag)
            return True, "cancelled"
        if pend is not None:
            return False, _ANOTHER_WAITS
        verdict, src = await self.ask(id_tag)
        if verdict != "Accepted":
            self.unknown = True
            return False, "not authorized (%s)" % verdict
        return self.start(id_tag, start_mode, src)

    async def _may_stop(self, id_tag, session):
        for chk in self.stop_checks:
            ans = await chk.may_stop(id_tag, session)
            if ans is not None:
                return ans
        return False

    def start(self, id_tag, start_mode, source=None):
        """Starts a session now, or (no vehicle yet) keeps the authorization until one
        arrives. `source` is the one that accepted the tag: it is asked again at plug-in.
        One authorization waits at a time: another tag is refused meanwhile."""
        ch = self.ch
        pend = ch.auth_pending
        if pend is not None and pend[0].upper() != id_tag.upper():
            return False, _ANOTHER_WAITS
        why = ch.start_session(id_tag, start_mode, self.met.energy_wh)
        if why is None:
            return True, "started"
        if why == _NO_VEHICLE:
            # Identification before plug-in: the charge starts when the vehicle arrives.
            expires = time.ticks_add(ch.clock(), self._pending_ms())
            verdict = self._local_verdict(source, id_tag)  # what a change is judged against
            ch.auth_pending = (id_tag, start_mode, expires, source, verdict)
            return True, "plug in"
        return False, why

    @staticmethod
    def _local_verdict(source, id_tag):
        """What the source knows of the tag without the network, or None."""
        fn = getattr(source, "recheck", None)
        return fn(id_tag) if fn is not None else None

    def _still_valid(self, pend):
        """At plug-in: None, or why the waiting authorization no longer holds. The source
        that accepted the tag looks again at what it knows without asking the network: a
        refusal that was not there at the tap (a learned card deleted, a local list entry
        now Blocked or expired) ends it; one it already had when the central system
        accepted the tag anyway (a list conflict) does not."""
        verdict = self._local_verdict(pend[3], pend[0])
        if verdict is None or verdict == "Accepted" or verdict == pend[4]:
            return None
        return "no longer authorized (%s)" % verdict

    def tick(self):
        """A vehicle plugged in while an authorization waits gets its session; free mode:
        a plugged vehicle gets a session (once per plug-in)."""
        ch = self.ch
        pend = ch.auth_pending
        if pend is not None:
            if ch.session is not None:
                ch.auth_pending = None
            elif ch.active or ch.latched or ch.unavailable or ch.halted:
                # A fault, Inoperative or a held charger ends the wait: an authorization
                # given before it is not carried past it.
                ch.auth_pending = None
                _log.info("authorization of %s withdrawn: the charger cannot start now", pend[0])
            elif ch.connected:
                ch.auth_pending = None
                why = self._still_valid(pend)
                if why is None:
                    why = ch.start_session(pend[0], pend[1], self.met.energy_wh)
                if why is not None:
                    _log.warning("authorization of %s not used: %s", pend[0], why)
                    if self.hmi is not None:
                        self.hmi.beep_fail()
            elif time.ticks_diff(ch.clock(), pend[2]) >= 0:
                ch.auth_pending = None
                _log.info("authorization of %s lapsed: no vehicle within its timeout", pend[0])
        if (
            self.settings["auth_mode"] == "free"
            and ch.session is None
            and ch.connected
            and not ch.finishing
            and not ch.latched
            and not ch.active
        ):
            ch.start_session(FREE_TAG, "Free", self.met.energy_wh)
