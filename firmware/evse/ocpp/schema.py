# Payload checks of the central system's requests (OCPP 1.6 JSON schemas, condensed).
#
# check(action, payload) raises RpcError with the 1.6 error code of the first violation:
#   unexpected field, not an object       FormationViolation (schemas: additionalProperties false)
#   required field missing                OccurenceConstraintViolation
#   wrong JSON type, string over its max  TypeConstraintViolation
#   enum value unknown, bad date-time     PropertyConstraintViolation
# Fields are (name, kind, required[, arg]); kinds: I integer, N number, B boolean,
# S string (arg: max length, 0 none), E enum (arg: values), D date-time, O object
# (arg: fields), L list of objects (arg: fields), T list of strings (arg: max length).
# Every table is a tuple of constants, kept in flash on a board: the parts used in more
# than one place are const() (the compiler puts each in where it is named; a plain name
# would make every tuple that holds it one built in the heap at import).
from micropython import const

from evse.ocpp import isotime
from evse.ocpp.rpc import RpcError

_INF = float("inf")
PURPOSES = const(("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"))
_STATUS = const(("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"))
_PERIOD = const((("startPeriod", "I", 1), ("limit", "N", 1), ("numberPhases", "I", 0)))
_SCHEDULE = const((
    ("duration", "I", 0),
    ("startSchedule", "D", 0),
    ("chargingRateUnit", "E", 1, ("A", "W")),
    ("chargingSchedulePeriod", "L", 1, _PERIOD),
    ("minChargingRate", "N", 0),
))
PROFILE = const((
    ("chargingProfileId", "I", 1),
    ("transactionId", "I", 0),
    ("stackLevel", "I", 1),
    ("chargingProfilePurpose", "E", 1, PURPOSES),
    ("chargingProfileKind", "E", 1, ("Absolute", "Recurring", "Relative")),
    ("recurrencyKind", "E", 0, ("Daily", "Weekly")),
    ("validFrom", "D", 0),
    ("validTo", "D", 0),
    ("chargingSchedule", "O", 1, _SCHEDULE),
))
_ID_TAG_INFO = const((("expiryDate", "D", 0), ("parentIdTag", "S", 0, 20), ("status", "E", 1, _STATUS)))
_LIST_ENTRY = const((("idTag", "S", 1, 20), ("idTagInfo", "O", 0, _ID_TAG_INFO)))
TRIGGERS = const((
    "BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
    "Heartbeat", "MeterValues", "StatusNotification",
))

# (action, fields) of every request the charger takes.
REQUESTS = (
    ("CancelReservation", (("reservationId", "I", 1),)),
    ("ChangeAvailability", (("connectorId", "I", 1), ("type", "E", 1, ("Inoperative", "Operative")))),
    ("ChangeConfiguration", (("key", "S", 1, 50), ("value", "S", 1, 500))),
    ("ClearCache", ()),
    ("ClearChargingProfile", (
        ("id", "I", 0),
        ("connectorId", "I", 0),
        ("chargingProfilePurpose", "E", 0, PURPOSES),
        ("stackLevel", "I", 0),
    )),
    ("DataTransfer", (("vendorId", "S", 1, 255), ("messageId", "S", 0, 50), ("data", "S", 0, 0))),
    ("GetCompositeSchedule", (
        ("connectorId", "I", 1),
        ("duration", "I", 1),
        ("chargingRateUnit", "E", 0, ("A", "W")),
    )),
    ("GetConfiguration", (("key", "T", 0, 50),)),
    ("GetDiagnostics", (
        ("location", "S", 1, 0),
        ("retries", "I", 0),
        ("retryInterval", "I", 0),
        ("startTime", "D", 0),
        ("stopTime", "D", 0),
    )),
    ("GetLocalListVersion", ()),
    ("RemoteStartTransaction", (
        ("connectorId", "I", 0),
        ("idTag", "S", 1, 20),
        ("chargingProfile", "O", 0, PROFILE),
    )),
    ("RemoteStopTransaction", (("transactionId", "I", 1),)),
    ("ReserveNow", (
        ("connectorId", "I", 1),
        ("expiryDate", "D", 1),
        ("idTag", "S", 1, 20),
        ("parentIdTag", "S", 0, 20),
        ("reservationId", "I", 1),
    )),
    ("Reset", (("type", "E", 1, ("Hard", "Soft")),)),
    ("SendLocalList", (
        ("listVersion", "I", 1),
        ("localAuthorizationList", "L", 0, _LIST_ENTRY),
        ("updateType", "E", 1, ("Differential", "Full")),
    )),
    ("SetChargingProfile", (("connectorId", "I", 1), ("csChargingProfiles", "O", 1, PROFILE))),
    ("TriggerMessage", (("requestedMessage", "E", 1, TRIGGERS), ("connectorId", "I", 0))),
    ("UnlockConnector", (("connectorId", "I", 1),)),
    ("UpdateFirmware", (
        ("location", "S", 1, 0),
        ("retries", "I", 0),
        ("retrieveDate", "D", 1),
        ("retryInterval", "I", 0),
    )),
)


def check(action, payload, msg_id="-1"):
    """Raises RpcError unless payload fits the schema of `action` (a row of REQUESTS)."""
    for row in REQUESTS:
        if row[0] == action:
            err = _object(row[1], payload, "")
            if err:
                raise RpcError(err[0], err[1], msg_id)
            return
    raise KeyError(action)


def _object(fields, obj, where):
    if not isinstance(obj, dict):
        return "TypeConstraintViolation", where + " must be an object"
    for k in obj:
        for f in fields:
            if f[0] == k:
                break
        else:
            return "FormationViolation", "unexpected field %s%s" % (where, k)
    for f in fields:
        name = f[0]
        if name not in obj:
            if f[2]:
                return "OccurenceConstraintViolation", "%s%s is required" % (where, name)
            continue
        err = _value(f, obj[name], where + name)
        if err:
            return err
    return None


def _value(f, v, where):
    kind = f[1]
    if kind == "I":
        if not isinstance(v, int) or isinstance(v, bool):
            return "TypeConstraintViolation", where + " must be an integer"
    elif kind == "N":
        # 1e999 parses as inf here: no JSON number, and not storable as JSON either.
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v in (_INF, -_INF):
            return "TypeConstraintViolation", where + " must be a number"
    elif kind == "B":
        if not isinstance(v, bool):
            return "TypeConstraintViolation", where + " must be a boolean"
    elif kind in "SED":
        if not isinstance(v, str):
            return "TypeConstraintViolation", where + " must be a string"
        if kind == "S" and f[3] and len(v) > f[3]:
            return "TypeConstraintViolation", "%s is longer than %d" % (where, f[3])
        if kind == "E" and v not in f[3]:
            return "PropertyConstraintViolation", "%s: %s is not allowed" % (where, v[:40])
        if kind == "D":
            try:
                isotime.parse(v)
            except ValueError:
                return "PropertyConstraintViolation", where + " is not an ISO 8601 date-time"
    elif kind == "O":
        return _object(f[3], v, where + ".")
    elif kind in "LT":
        if not isinstance(v, list):
            return "TypeConstraintViolation", where + " must be an array"
        for i, item in enumerate(v):
            if kind == "L":
                err = _object(f[3], item, "%s[%d]." % (where, i))
            else:
                err = _value((None, "S", 1, f[3]), item, "%s[%d]" % (where, i))
            if err:
                return err
    return None
