# OCPP-J framing, payload schemas and ISO 8601 times (firmware/evse/ocpp/rpc, schema, isotime).
import json

from check import eq, true, raises
from evse.ocpp import isotime, rpc, schema
from evse.ocpp.rpc import RpcError


def _err(fn, *args):
    e = raises(RpcError, fn, *args)
    return e.code, e.msg_id


def test_decode_good_frames():
    eq(rpc.decode('[2,"a1","Reset",{"type":"Soft"}]'), [2, "a1", "Reset", {"type": "Soft"}], "call")
    eq(rpc.decode('[3,"a1",{}]'), [3, "a1", {}], "result")
    eq(rpc.decode('[4,"a1","NotImplemented","",{}]')[2], "NotImplemented", "error")


def test_decode_bad_frames():
    eq(_err(rpc.decode, "not json"), ("FormationViolation", "-1"), "not JSON")
    eq(_err(rpc.decode, '{"a":1}'), ("FormationViolation", "-1"), "object")
    eq(_err(rpc.decode, "[]"), ("FormationViolation", "-1"), "empty")
    eq(_err(rpc.decode, '[7,"x",{}]'), ("FormationViolation", "x"), "unknown type id echoes the id")
    eq(_err(rpc.decode, '["2","x","Reset",{}]'), ("FormationViolation", "x"), "type id as string")
    eq(_err(rpc.decode, '[true,"x","Reset",{}]'), ("FormationViolation", "x"), "type id bool")
    eq(_err(rpc.decode, '[2,5,"Reset",{}]'), ("FormationViolation", "-1"), "id not a string")
    eq(_err(rpc.decode, '[2,"%s","Reset",{}]' % ("x" * 37)), ("FormationViolation", "-1"), "id too long")
    eq(_err(rpc.decode, '[2,"x","Reset"]'), ("ProtocolError", "x"), "incomplete")
    eq(_err(rpc.decode, '[2,"x","Reset",{},1]'), ("FormationViolation", "x"), "too long")
    eq(_err(rpc.decode, '[2,"x",5,{}]'), ("FormationViolation", "x"), "action")
    eq(_err(rpc.decode, '[2,"x","Reset",[]]'), ("FormationViolation", "x"), "payload array")
    eq(_err(rpc.decode, '[3,"x","no"]'), ("FormationViolation", "x"), "result payload")
    e = raises(RpcError, rpc.decode, '[3,"x"]')
    eq((e.code, e.kind), ("ProtocolError", 3), "kind kept for answers")


def test_frames_out():
    eq(json.loads(rpc.call("i", "Heartbeat", {})), [2, "i", "Heartbeat", {}], "call")
    eq(json.loads(rpc.error("i", "NotImplemented", "x")), [4, "i", "NotImplemented", "x", {}], "error")
    a = rpc.new_id()
    b = rpc.new_id()
    true(a != b and len(a) <= 36, "ids unique and short")


def _check(action, payload):
    try:
        schema.check(action, payload, "m")
    except RpcError as e:
        return e.code
    return None


def test_schema_codes():
    eq(_check("Reset", {"type": "Soft"}), None, "ok")
    eq(_check("Reset", {}), "OccurenceConstraintViolation", "missing")
    eq(_check("Reset", {"type": 5}), "TypeConstraintViolation", "type")
    eq(_check("Reset", {"type": "Warm"}), "PropertyConstraintViolation", "enum")
    eq(_check("Reset", {"type": "Soft", "x": 1}), "FormationViolation", "extra")
    eq(_check("RemoteStartTransaction", {"idTag": "X" * 21}), "TypeConstraintViolation", "too long")
    eq(_check("RemoteStartTransaction", {"idTag": "A", "connectorId": True}), "TypeConstraintViolation", "bool not int")
    eq(_check("RemoteStartTransaction", {"idTag": "A", "connectorId": 1.5}), "TypeConstraintViolation", "float not int")
    eq(_check("ReserveNow", {"connectorId": 1, "expiryDate": "tomorrow", "idTag": "A", "reservationId": 1}),
       "PropertyConstraintViolation", "date")
    eq(_check("GetConfiguration", {"key": ["a", 5]}), "TypeConstraintViolation", "list item")
    eq(_check("ChangeAvailability", {"connectorId": 1, "type": None}), "TypeConstraintViolation", "null")


def test_schema_nested_profile():
    prof = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}]}}
    eq(_check("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof}), None, "ok")
    prof["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = "10"
    eq(_check("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof}), "TypeConstraintViolation", "limit")
    prof["chargingSchedule"]["chargingSchedulePeriod"] = [{"limit": 10}]
    eq(_check("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof}), "OccurenceConstraintViolation", "startPeriod")
    prof["chargingSchedule"] = {"chargingRateUnit": "kW", "chargingSchedulePeriod": []}
    eq(_check("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof}), "PropertyConstraintViolation", "unit")



def test_every_request_has_one_schema_row_and_one_handler():
    """REQUESTS and handlers.TABLE are tuples of rows (in flash on a board): each action
    once in both, in the same order, its handler a coroutine function of the module."""
    from evse.ocpp import handlers

    actions = [row[0] for row in schema.REQUESTS]
    eq(len(set(actions)), len(actions), "no action twice")
    eq([row[0] for row in handlers.TABLE], actions, "a handler for each schema, and no other")
    for action, name in handlers.TABLE:
        true(callable(getattr(handlers, name, None)), "handler %s of %s" % (name, action))
    for row in schema.REQUESTS:
        for f in row[1]:
            true(isinstance(f, tuple) and len(f) in (3, 4), "field %r of %s" % (f, row[0]))
    eq(_check("ClearCache", {}), None, "an action without fields")
    raises(KeyError, schema.check, "FooBar", {})


def test_isotime():
    eq(isotime.parse("1970-01-01T00:00:00Z"), 0, "epoch")
    eq(isotime.parse("2024-02-29T12:34:56Z"), 1709210096, "leap day")
    eq(isotime.parse("2024-02-29T12:34:56.123456+00:00"), 1709210096, "fraction, offset")
    eq(isotime.parse("2024-02-29T14:34:56+02:00"), 1709210096, "+02:00")
    eq(isotime.parse("2024-02-29T07:34:56-0500"), 1709210096, "-0500")
    eq(isotime.parse("2024-02-29T12:34:56"), 1709210096, "no zone = UTC")
    eq(isotime.fmt(1709210096), "2024-02-29T12:34:56Z", "fmt")
    for bad in ("", "2024-02-29", "2024-13-01T00:00:00Z", "2024-02-29T12:34:56X", "2024-02-29T12:34:56.Z", 5):
        raises(ValueError, isotime.parse, bad)
    for t in (0, 951782400, 4102444799, 1234567890):
        eq(isotime.parse(isotime.fmt(t)), t, "round trip %d" % t)
