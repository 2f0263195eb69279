# Authorization through OCPP (1.6 §3.5, STANDARDS.md §4.9) as a source and a stop check
# of the charger's Authorizer, and the reservation that may stand in front of it.
#
# Online: a tag the local list or cache accepts starts at once with LocalPreAuthorize,
# else the central system's Authorize decides. Offline (or with no answer): the local list
# and cache with LocalAuthorizeOffline, then AllowOfflineTxForUnknownId for a tag not
# known as non-Accepted. Every idTagInfo the central system sends is cached unless the
# tag is in the local list, where a disagreement is reported as LocalListConflict.
import asyncio

import log
from evse.ocpp import isotime
from evse.ocpp.authlist import info_of, valid
from evse.ocpp.link import CallError, LinkDown

_log = log.get("ocpp.auth")


class Gate:
    """First authorization source: while a reservation holds, only its idTag (or one
    with the same parent) gets past."""

    def __init__(self, auth):
        self.auth = auth

    async def authorize(self, id_tag):
        return await self.auth.reservation_verdict(id_tag)


class Authorization:
    def __init__(self, svc):
        self.svc = svc

    def connection_timeout_ms(self):
        """How long an authorization given before plug-in waits (auth.py); None while
        OCPP is off (the charger's own 60 s then)."""
        svc = self.svc
        return svc.cfg["ConnectionTimeOut"] * 1000 if svc.active else None

    def local_info(self, tag):
        """(status, expiry, parent) from the local list (first) or the cache, or None."""
        svc = self.svc
        if svc.cfg["LocalAuthListEnabled"]:
            info = svc.llist.get(tag)
            if info is not None:
                return info
        if svc.cfg["AuthorizationCacheEnabled"]:
            return svc.cache.get(tag)
        return None

    def learn(self, tag, obj):
        """Stores an idTagInfo from the central system; returns the status now valid."""
        svc = self.svc
        try:
            info = info_of(obj)
        except ValueError:
            return "Invalid"
        now = svc.now()
        listed = svc.llist.get(tag)
        if listed is not None:
            if valid(listed, now) != valid(info, now):
                _log.warning("local list and central system disagree on %s", tag)
                svc.note("StatusNotification", {
                    "connectorId": 0, "errorCode": "LocalListConflict",
                    "status": svc.status_of(0)[0], "timestamp": isotime.fmt(now)})
        elif svc.cfg["AuthorizationCacheEnabled"]:
            svc.cache.store(tag, info)
        return valid(info, now)

    async def authorize(self, id_tag):
        """Authorizer source: 'Accepted', a refusal, or None when OCPP is off."""
        svc = self.svc
        if not svc.active:
            return None
        cfg = svc.cfg
        info = self.local_info(id_tag)
        local = valid(info, svc.now()) if info is not None else None
        if svc.online:
            if local == "Accepted" and cfg["LocalPreAuthorize"]:
                return local
            try:
                r = await svc.call("Authorize", {"idTag": id_tag})
                return self.learn(id_tag, r.get("idTagInfo"))
            except CallError as e:
                # The central system is there and did not accept the tag: the local list or
                # cache decides a tag they know; the allowance for unknown ids is for a
                # charger that is offline, not for one whose Authorize met an error.
                _log.warning("Authorize answered %s: the local list and cache decide", e.code)
                return local if local is not None else "Invalid"
            except (LinkDown, asyncio.TimeoutError) as e:
                _log.warning("Authorize failed (%r): deciding offline", e)
        if local is not None and (cfg["LocalAuthorizeOffline"] or local != "Accepted"):
            return local
        if cfg["AllowOfflineTxForUnknownId"] and (info is None or local == "Accepted"):
            return "Accepted"  # never for a known id that is not Accepted now
        return "Invalid"

    def recheck(self, id_tag):
        """A tag this source accepted, asked again at plug-in without the network: the
        local list or cache entry as it is now (Blocked, expired), or None when neither
        knows the tag (the central system's answer at the tap stands)."""
        svc = self.svc
        if not svc.active:
            return None
        info = self.local_info(id_tag)
        return valid(info, svc.now()) if info is not None else None

    async def parent_of(self, tag):
        svc = self.svc
        info = self.local_info(tag)
        if info is None and svc.online:
            try:
                r = await svc.call("Authorize", {"idTag": tag})
                self.learn(tag, r.get("idTagInfo"))
                info = info_of(r.get("idTagInfo"))
            except (LinkDown, CallError, asyncio.TimeoutError, ValueError):
                return None
        return info[2] if info else None

    async def may_stop(self, id_tag, session):
        """Stop check: another card may stop a charge when both share a parentIdTag."""
        if not self.svc.active:
            return None
        mine = await self.parent_of(session.id_tag)
        theirs = await self.parent_of(id_tag)
        if mine and theirs and mine.upper() == theirs.upper():
            return True
        return None

    # ---- reservations (ReserveNow keeps them in the service's persisted state) ----------------
    def reservation(self):
        """The reservation holding now ({"id", "tag", "parent", "exp"}), or None."""
        svc = self.svc
        r = svc.state.get("resv")
        if r is not None and r["exp"] <= svc.now():
            _log.info("reservation %d expired", r["id"])
            self.end_reservation()
            return None
        return r

    def end_reservation(self):
        svc = self.svc
        if svc.state.get("resv") is not None:
            svc.state["resv"] = None
            svc.save_state()
            svc.kick()

    def uses_reservation(self, tag):
        """The reservation id a start by `tag` consumes (its tag or parent), or None."""
        r = self.reservation()
        if r is None:
            return None
        t = tag.upper()
        parent = (r.get("parent") or "").upper()
        if t == r["tag"].upper() or (parent and t == parent):
            return r["id"]
        info = self.local_info(tag)
        if parent and info and info[2] and info[2].upper() == parent:
            return r["id"]
        return None

    async def reservation_verdict(self, tag):
        r = self.reservation() if self.svc.active else None
        if r is None or tag.upper() == r["tag"].upper():
            return None
        if r.get("parent"):
            p = await self.parent_of(tag)
            if p and p.upper() == r["parent"].upper():
                return None
        return "Reserved"
