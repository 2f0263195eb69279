# OCPP-J 1.6 RPC framing (§4): CALL [2, id, action, payload], CALLRESULT [3, id, payload],
# CALLERROR [4, id, code, description, details]. decode() checks the structure of a frame
# and raises RpcError with the error code a CALLERROR answer should carry; the message id
# is "-1" when the frame gives none we could echo (the OCPP 2.0.1 convention: 1.6 says
# nothing for that case).
import gc
import json
import os
from micropython import const

CALL = const(2)
RESULT = const(3)
ERROR = const(4)
MAX_ID = const(36)

_seq = 0
_prefix = None


class RpcError(Exception):
    def __init__(self, code, desc="", msg_id="-1", kind=None):
        super().__init__(desc)
        self.code = code
        self.desc = desc
        self.msg_id = msg_id
        self.kind = kind  # message type id of the frame, when it had a valid one


def new_id():
    """A message id unique in this process and across boots: a random 32-bit prefix per
    boot (two boots share one with odds of about n²/2³³ over n boots) and a counter."""
    global _seq, _prefix
    if _prefix is None:
        _prefix = "%02x%02x%02x%02x" % tuple(os.urandom(4))
    _seq += 1
    return "%s%d" % (_prefix, _seq)


def decode(text):
    """The frame (str, or UTF-8 bytes / a memoryview of the receive buffer: no copy)
    as a list, structurally valid; raises RpcError otherwise."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise RpcError("FormationViolation", "not JSON")
    except MemoryError:
        # Fits the receive buffer but not the heap as it is now: refused, the link stays.
        gc.collect()
        raise RpcError("InternalError", "frame too large for the memory free now")
    if not isinstance(msg, list) or not msg:
        raise RpcError("FormationViolation", "not a JSON array")
    kind = msg[0]
    mid = msg[1] if len(msg) > 1 else None
    echo = mid if isinstance(mid, str) and 0 < len(mid) <= MAX_ID else "-1"
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in (CALL, RESULT, ERROR):
        raise RpcError("FormationViolation", "unknown message type id", echo)
    if echo != mid:
        raise RpcError("FormationViolation", "message id must be a string of 1-36 characters", "-1", kind)
    want = 4 if kind == CALL else (3 if kind == RESULT else 5)
    if len(msg) < want:
        raise RpcError("ProtocolError", "incomplete message", echo, kind)
    if len(msg) > want:
        raise RpcError("FormationViolation", "too many elements", echo, kind)
    if kind == CALL:
        if not isinstance(msg[2], str) or not msg[2]:
            raise RpcError("FormationViolation", "action must be a string", echo, kind)
        if not isinstance(msg[3], dict):
            raise RpcError("FormationViolation", "payload must be an object", echo, kind)
    elif kind == RESULT:
        if not isinstance(msg[2], dict):
            raise RpcError("FormationViolation", "payload must be an object", echo, kind)
    elif not isinstance(msg[2], str) or not isinstance(msg[3], str) or not isinstance(msg[4], dict):
        raise RpcError("FormationViolation", "malformed CALLERROR", echo, kind)
    return msg


def call(msg_id, action, payload):
    return json.dumps([CALL, msg_id, action, payload])


def result(msg_id, payload):
    return json.dumps([RESULT, msg_id, payload])


def error(msg_id, code, desc=""):
    return json.dumps([ERROR, msg_id, code, desc[:255], {}])
