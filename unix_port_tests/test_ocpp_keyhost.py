# The OCPP AuthorizationKey stays with the central system it was set for: cleared when
# ocpp_url names another (scheme, host or port), settable write-only by the technician,
# and never sent over ws:// unless the technician allowed it (docs/ocpp.md).
import asyncio
import json
import os

import board
import check
import log
from check import eq, true
from evse.ocpp.config import Config, check_key

_A = "ws://127.0.0.1:9000/ocpp/CP1"
_KEY = "0123456789abcdef0123"
_NEW = "fedcba9876543210fedc"


def _port():
    b = os.urandom(2)
    return 30000 + ((b[0] << 8 | b[1]) % 9000)


def _app(url=_A, config=None, settings=None):
    d = check.tmpdir("keyhost")
    s = {"ocpp_url": url}
    s.update(settings or {})
    with open(d + "/settings.json", "w") as f:
        json.dump(s, f)
    if config is not None:
        with open(d + "/ocpp_config.json", "w") as f:
            json.dump(config, f)
    hw = board.make({"EVSE_DATA_DIR": d, "EVSE_CAN_PORT": str(_port()),
                     "EVSE_SIM_PORT": str(_port())})
    from evse.app import App

    return App(hw), d


def _stored(d):
    with open(d + "/ocpp_config.json", "rb") as f:
        return f.read()


def _stored_or_none(d):
    try:
        return _stored(d)
    except OSError:
        return None


def test_config_binds_the_key_to_its_central_system():
    d = check.tmpdir("keyhost")
    c = Config(d + "/c.json")
    host = ["ws://a:1"]
    c.host_now = lambda: host[0]
    eq(c.change("AuthorizationKey", _KEY), "Accepted", "set by the central system")
    eq(c.key_host, "ws://a:1", "bound to the URL in force")
    eq(c.bind_key("ws://a:1"), None, "same central system: kept")
    c2 = Config(d + "/c.json")
    eq((c2.key_host, c2["AuthorizationKey"]), ("ws://a:1", _KEY), "binding persisted")
    eq(c2.listing(["_AuthorizationKeyHost"])[1], ["_AuthorizationKeyHost"], "not a key")
    true(all(kv["key"][0] != "_" for kv in c2.listing()[0]), "never listed")
    eq(c2.change("_AuthorizationKeyHost", "ws://evil:1"), "NotSupported", "not settable")
    seen = []
    c2.listeners.append(seen.append)
    for other in ("ws://b:1", "ws://a:2", "wss://a:1"):
        c2.set("AuthorizationKey", _KEY)
        c2.key_host = "ws://a:1"
        why = c2.bind_key(other)
        true(why and "ws://a:1" in why and other in why, "moved to %s: %r" % (other, why))
        eq(c2["AuthorizationKey"], "", "cleared for %s" % other)
    eq(seen[-1], "AuthorizationKey", "listeners told (the link reconnects)")
    eq(Config(d + "/c.json")["AuthorizationKey"], "", "cleared on flash")
    eq(c2.bind_key(""), None, "no URL (OCPP off): nothing to judge")
    # A key stored without its central system (pre-seeded, or from before the binding):
    # bound to the URL stored at boot, cleared by any URL met later.
    with open(d + "/old.json", "w") as f:
        json.dump({"AuthorizationKey": _KEY}, f)
    c3 = Config(d + "/old.json")
    eq((c3.key_host, c3.bind_key("ws://a:1", at_boot=True), c3.key_host), ("", None, "ws://a:1"),
       "bound at boot")
    c4 = Config(d + "/old2.json")
    c4.set("AuthorizationKey", _KEY)  # no host_now: bound to none
    eq(c4.bind_key("", at_boot=True), None, "no URL at boot: nothing to judge")
    true("ws://a:1" in c4.bind_key("ws://a:1"), "a URL set later: cleared")
    eq((c4["AuthorizationKey"], Config(d + "/old2.json")["AuthorizationKey"]), ("", ""),
       "and on flash")
    eq(check_key(_KEY), None, "a good key")
    true(check_key("short") and check_key("x" * 41) and check_key("with space 012345")
         and check_key(5), "bad keys")
    eq(check_key(""), None, "empty clears")


def test_url_swap_clears_the_key_and_the_technician_sets_it_again():
    log.set_level(log.ERROR + 10)
    try:
        app, d = _app(config={"AuthorizationKey": _KEY, "SecurityProfile": "1"})
        svc = app.ocpp.service
        eq(svc.cfg.key_host, "ws://127.0.0.1:9000", "a stored key bound at boot")
        pub = app.settings.public()
        eq((pub["ocpp_auth_key"], pub["ocpp_auth_key_set"]), ("", True), "set, value hidden")
        true(_KEY not in json.dumps(pub), "never in the settings answer")
        # Another central system (another port): the key is cleared, not sent there.
        eq(app.settings.apply({"ocpp_url": "ws://127.0.0.1:9001/ocpp/CP1"}), {}, "url")
        eq(svc.cfg["AuthorizationKey"], "", "cleared")
        true(b"AuthorizationKey" not in _stored(d), "cleared on flash")
        pub = app.settings.public()
        eq(pub["ocpp_auth_key_set"], False, "the page says it is not set")
        true("9000" in pub["ocpp_auth_key_note"] and "9001" in pub["ocpp_auth_key_note"],
             "and why: %r" % pub["ocpp_auth_key_note"])
        # Going back does not bring it back: who moved the URL may have moved it twice.
        app.settings.apply({"ocpp_url": _A})
        eq(svc.cfg["AuthorizationKey"], "", "gone for good")
        # Hostile or bad input: refused, nothing changed.
        before = _stored(d)
        for bad in ("short", "x" * 41, 12345678901234567, None, "spaces in the key 0123"):
            errs = app.settings.apply({"ocpp_auth_key": bad, "max_current_a": 10})
            true("ocpp_auth_key" in errs, "refused %r" % (bad,))
        eq((_stored(d), app.settings["max_current_a"]), (before, 32), "nothing changed")
        # The technician enters the key: bound to the URL of the same request.
        eq(app.settings.apply({"ocpp_url": "wss://127.0.0.1:9443/ocpp/CP1",
                               "ocpp_auth_key": _NEW}), {}, "url and key together")
        eq((svc.cfg["AuthorizationKey"], svc.cfg.key_host), (_NEW, "wss://127.0.0.1:9443"),
           "bound to the new URL")
        pub = app.settings.public()
        eq((pub["ocpp_auth_key"], pub["ocpp_auth_key_set"], pub["ocpp_auth_key_note"]),
           ("", True, None), "set")
        # OCPP off and on again at the same place: kept; anywhere else: cleared.
        app.settings.apply({"ocpp_url": ""})
        app.settings.apply({"ocpp_url": "wss://127.0.0.1:9443/ocpp/CP1"})
        eq(svc.cfg["AuthorizationKey"], _NEW, "kept")
        app.settings.apply({"ocpp_url": "wss://127.0.0.2:9443/ocpp/CP1"})
        eq(svc.cfg["AuthorizationKey"], "", "another host")
    finally:
        log.set_level(log.WARNING)


def test_a_key_needs_a_central_system_and_the_service_clears_at_start():
    log.set_level(log.ERROR + 10)
    try:
        # No URL: no key (it would be bound to whatever URL comes next).
        app, d = _app(url="")
        errs = app.settings.apply({"ocpp_auth_key": _KEY})
        true("ocpp_url" in errs["ocpp_auth_key"], "refused: %r" % errs)
        eq(app.ocpp.service, None, "nothing built")
        # A key bound to A, OCPP off at boot, then a URL elsewhere: the service built
        # for it clears the key before any connection.
        app, d = _app(url="", config={"AuthorizationKey": _KEY,
                                      "_AuthorizationKeyHost": "ws://127.0.0.1:9000"})
        app.settings.apply({"ocpp_url": "ws://10.6.6.6:80/ocpp/CP1"})
        app.ocpp._build()
        eq(app.ocpp.service.cfg["AuthorizationKey"], "", "cleared when the service starts")
    finally:
        log.set_level(log.WARNING)


def _try_session(svc):
    """Runs one _session with a stand-in connect that records its headers and fails."""
    seen = []

    async def connect(url, protocols=(), headers=(), ssl=None, addr=None):
        seen.append(dict(headers))
        raise OSError(111)

    svc.ws.connect = connect
    ok = asyncio.run(svc._session())
    asyncio.new_event_loop()
    return ok, seen


def test_basic_auth_over_ws_only_when_the_technician_allows_it():
    log.set_level(log.ERROR + 10)
    try:
        app, d = _app(config={"AuthorizationKey": _KEY})
        svc = app.ocpp.service
        ok, seen = _try_session(svc)
        eq((ok, seen), (False, []), "no connection at all")
        true("ws://" in svc.refused and "ocpp_allow_insecure_auth" in svc.refused,
             "the status says why: %r" % svc.refused)
        eq(app.status()["ocpp"]["refused"], svc.refused, "on the status page")
        eq(app.settings.apply({"ocpp_allow_insecure_auth": True}), {}, "ticked")
        true(svc._reconnect, "reconnects at once")
        ok, seen = _try_session(svc)
        true(seen and seen[0]["Authorization"].startswith("Basic "), "allowed: %r" % seen)
        eq(svc.refused, None, "no longer refused")
        eq(app.settings.apply({"ocpp_allow_insecure_auth": "yes"}),
           {"ocpp_allow_insecure_auth": "must be true or false"}, "bad value refused")
        # Without a key nothing secret goes: ws:// is as before.
        app.settings.apply({"ocpp_allow_insecure_auth": False, "ocpp_auth_key": ""})
        ok, seen = _try_session(svc)
        eq((seen, svc.refused), ([{}], None), "no key: connects without Authorization")
    finally:
        log.set_level(log.WARNING)


def test_a_key_set_over_plain_ws_does_not_cut_the_charger_off_for_good():
    # At profile 0 over ws:// (no "insecure" tick) a key from ChangeConfiguration would
    # make the charger refuse every connection (Basic over ws:// refused) until a
    # technician comes: one frame injected into the plain link would suffice. It is
    # Rejected there, accepted where it can be sent.
    log.set_level(log.ERROR + 10)
    try:
        app, d = _app()
        svc = app.ocpp.service
        ok, seen = _try_session(svc)
        eq(seen, [{}], "connects without a key")
        before = _stored_or_none(d)
        eq(svc.cfg.change("AuthorizationKey", _NEW), "Rejected", "over ws:// without the tick")
        eq(svc.cfg["AuthorizationKey"], "", "nothing changed")
        ok, seen = _try_session(svc)
        eq((seen, svc.refused), ([{}], None), "still connects")
        eq(_stored_or_none(d), before, "nothing stored")
        # Allowed over ws://, or over wss://: Accepted and sent.
        eq(app.settings.apply({"ocpp_allow_insecure_auth": True}), {}, "ticked")
        eq(svc.cfg.change("AuthorizationKey", _NEW), "Accepted", "insecure allowed")
        ok, seen = _try_session(svc)
        true(seen and seen[0]["Authorization"].startswith("Basic "), "sent: %r" % seen)
        app, d = _app(url="wss://127.0.0.1:9443/ocpp/CP1")
        eq(app.ocpp.service.cfg.change("AuthorizationKey", _NEW), "Accepted", "wss://")
    finally:
        log.set_level(log.WARNING)


def test_a_pre_seeded_key_is_not_bound_to_the_first_url_anyone_sets():
    # docs/ocpp.md: a pre-seeded AuthorizationKey without its central system is bound
    # to the URL stored at boot. With none at boot, whoever sets the URL first (any
    # session) must not have the key sent to a server of theirs: it is cleared.
    log.set_level(log.ERROR + 10)
    try:
        app, d = _app(url="", config={"AuthorizationKey": _KEY},
                      settings={"ocpp_allow_insecure_auth": True})
        eq(app.settings.apply({"ocpp_url": "ws://127.0.0.1:9999/evil/CP1"}), {})
        if app.ocpp.service is None:
            app.ocpp._build()  # what Ocpp.run() does on the wake-up
        svc = app.ocpp.service
        ok, seen = _try_session(svc)
        eq([h for h in seen if "Authorization" in h], [], "the pre-seeded key stays home")
        eq(svc.cfg["AuthorizationKey"], "", "cleared")
        true(b"AuthorizationKey" not in _stored(d), "on flash too")
        true("9999" in app.settings.public()["ocpp_auth_key_note"], "the page says why")
        # Pre-seeded with the URL beside it (settings.json): bound at boot and sent.
        app, d = _app(config={"AuthorizationKey": _KEY},
                      settings={"ocpp_allow_insecure_auth": True})
        svc = app.ocpp.service
        eq(svc.cfg.key_host, "ws://127.0.0.1:9000", "bound to the URL stored at boot")
        ok, seen = _try_session(svc)
        true(seen and "Authorization" in seen[0], "sent there: %r" % seen)
    finally:
        log.set_level(log.WARNING)
