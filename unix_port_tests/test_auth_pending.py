# An authorization given before plug-in (evse/auth.py): what ends it, what it starts, and
# the RemoteStart profile that waits with it (evse/ocpp/transactions.py).
import asyncio

from check import eq, tmpdir, true
from evse.auth import Authorizer
from evse.cards import CardStore
from test_charger import Rig

CARD = "04A1B2C3"


class _Hmi:
    def beep_ok(self):
        pass

    def beep_fail(self):
        pass


def _rig(*sources):
    r = Rig()
    auth = Authorizer(r.ch, r.settings, _Hmi(), r.hw.meter)
    auth.sources.extend(sources)
    return r, auth


def _cards():
    store = CardStore(tmpdir("auth_pending_cards"))
    store.learn(1, CARD)
    return store


def _run(r, auth, ms):
    for _ in range(ms // 100):
        r.run(100)
        auth.tick()


def _tap(r, auth, uid):
    return asyncio.run(auth.present(uid, r.settings["rfid_type"]))


def test_a_safe_state_or_a_fault_withdraws_it_at_once():
    """The supervisor's safe state and a trip end the wait where they happen, not at the
    next control tick: one that comes and goes between two ticks is not missed."""
    for what in ("safe state", "trip"):
        r, auth = _rig(_cards())
        eq(_tap(r, auth, CARD), (True, "plug in"), what)
        if what == "safe state":
            r.ch.emergency_stop()
        else:
            r.ch.trip(1)
        eq(r.ch.auth_pending, None, what)
        r.hw.ev.state = "C"
        _run(r, auth, 1500)
        true(r.ch.session is None and not r.hw.relays.closed, "nothing started after " + what)


class _Smart:
    def __init__(self):
        self.installed = []

    def install(self, conn, prof, tx_id, now, msg_id="-1"):
        self.installed.append(prof)


class _Queue:
    open = None

    def __init__(self):
        self.n = 0

    def next_seq(self):
        self.n += 1
        return self.n

    def push(self, *a):
        pass

    def set_open(self, *a):
        pass


class _Reservations:
    def uses_reservation(self, tag):
        return None


def _transactions(r, auth):
    from evse.ocpp.transactions import Transactions

    class Svc:
        history = None
        cfg = {"StopTxnSampledData": ""}

        def now(self):
            return 1700000000

        def kick(self):
            pass

    svc = Svc()
    svc.authorizer = auth
    svc.ch = r.ch
    svc.q = _Queue()
    svc.auth = _Reservations()
    svc.smart = svc.smart_loaded = _Smart()
    tx = Transactions(svc)
    tx.apply_limit = lambda now, off=False: None
    tx._aligned = lambda now, cur: None
    tx._sample = lambda now, cur: None  # meter values and the open record: not the point here
    tx._keep = lambda now: None
    r.ch.listeners.append(tx.on_charger)
    return tx, svc


def test_a_remote_start_profile_goes_only_to_the_session_of_its_own_wait():
    """A RemoteStart's TxProfile waits with its authorization; a card of the same tag
    tapped after that wait lapsed (before the OCPP ticker noticed) does not inherit it,
    while a remote start that gets its vehicle does."""
    r, auth = _rig(_cards())
    tx, svc = _transactions(r, auth)
    tx.start_remote(CARD, {"p": "lapsed"}, None)
    eq(r.ch.auth_pending[0], CARD)
    _run(r, auth, 60000)
    eq(r.ch.auth_pending, None, "lapsed")
    eq(_tap(r, auth, CARD), (True, "plug in"))
    r.hw.ev.state = "C"
    _run(r, auth, 1500)
    tx.tick(0)
    true(r.ch.session is not None, "the card's session")
    eq(svc.smart.installed, [], "the lapsed RemoteStart's profile stays out of it")

    r, auth = _rig(_cards())
    tx, svc = _transactions(r, auth)
    tx.start_remote(CARD, {"p": "mine"}, None)
    tx.tick(0)
    r.hw.ev.state = "C"
    _run(r, auth, 1500)
    tx.tick(0)
    eq(svc.smart.installed, [{"p": "mine"}])


class _OcppSvc:
    """What evse.ocpp.authsrc.Authorization uses of the OCPP service; `answer` is the
    idTagInfo an Authorize gets, or the exception it raises."""

    active = True
    online = True

    def __init__(self, name, allow_unknown=False, answer=None):
        from evse.ocpp.authlist import Cache, TagTable

        self.cfg = {"LocalAuthListEnabled": True, "AuthorizationCacheEnabled": True,
                    "LocalPreAuthorize": False, "LocalAuthorizeOffline": True,
                    "AllowOfflineTxForUnknownId": allow_unknown, "ConnectionTimeOut": 60}
        self.answer = answer
        d = tmpdir(name)
        self.llist = TagTable(d + "/list.json", 10)
        self.cache = Cache(d + "/cache.json", 10)

    def now(self):
        return 1700000000

    def note(self, *a):
        pass

    def status_of(self, conn):
        return ("Available",)

    async def call(self, action, p):
        if isinstance(self.answer, Exception):
            raise self.answer
        return {"idTagInfo": self.answer}


def test_plug_in_refuses_only_what_changed_since_the_tap():
    """A local list entry Blocked when the central system accepted the tag anyway (a list
    conflict) was known at the tap: it does not refuse at plug-in. An entry that became
    Blocked during the wait does."""
    from evse.ocpp.authsrc import Authorization

    for blocked_at in ("tap", "wait"):
        svc = _OcppSvc("auth_pending_list_" + blocked_at, answer={"status": "Accepted"})
        if blocked_at == "tap":
            svc.llist.put("TAGX", ("Blocked", 0, None))
        r, auth = _rig(Authorization(svc))
        eq(_tap(r, auth, "TAGX"), (True, "plug in"), blocked_at)
        if blocked_at == "wait":
            svc.llist.put("TAGX", ("Blocked", 0, None))
        r.hw.ev.state = "C"
        _run(r, auth, 1500)
        eq(r.ch.session is not None, blocked_at == "tap", blocked_at)


def test_without_ocpp_the_wait_is_the_chargers_own():
    """An OCPP source switched off (no central system configured) does not lend its
    ConnectionTimeOut: the wait is PENDING_MS."""
    from evse.auth import PENDING_MS
    from evse.ocpp.authsrc import Authorization

    class Svc:
        active = False
        cfg = {"ConnectionTimeOut": 3600}

    r, auth = _rig(_cards(), Authorization(Svc()))
    eq(_tap(r, auth, CARD), (True, "plug in"))
    _run(r, auth, PENDING_MS + 200)
    eq(r.ch.auth_pending, None, "lapsed after PENDING_MS")


def test_an_authorize_answered_with_an_error_is_not_offline():
    """With AllowOfflineTxForUnknownId, an unknown tag is accepted while the central
    system cannot be reached; a CALLERROR is an answer from it, so the tag is Invalid
    there, while a tag the local list knows is decided by the list."""
    from evse.ocpp.authsrc import Authorization
    from evse.ocpp.link import CallError, LinkDown

    svc = _OcppSvc("auth_callerror", allow_unknown=True)
    svc.llist.put("KNOWN", ("Accepted", 0, None))
    a = Authorization(svc)
    for fail, tag, want in ((CallError("InternalError"), "UNKNOWN", "Invalid"),
                            (CallError("GenericError"), "KNOWN", "Accepted"),
                            (LinkDown(), "UNKNOWN", "Accepted")):
        svc.answer = fail
        eq(asyncio.run(a.authorize(tag)), want, "%r %s" % (fail, tag))
