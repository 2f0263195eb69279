# The pool's known members (docs/load-balancing.md, "Members and quorum"): the members
# file that keeps them across restarts, and the quorum a node needs to lead.
import time

import atomicfile
import log

from evse.balance.codec import MAX_NODES

_log = log.get("balance")

MEMBERS_FILE = "balance.json"  # in the data dir: the pool's members, survives restarts


def load_members(path, addr, pool):
    """(members, meter address or None) of the last run, from the members file at
    `path`; None for a missing, corrupt or foreign file (another address or pool id)."""
    got = None
    try:
        got = _parse(atomicfile.load_json(path, dict, lambda m: _log.warning("%s", m)),
                     addr, pool)
    except Exception as e:  # a broken flash must not stop the charger
        _log.warning("members file unreadable: %r", e)
    if got is None:
        _log.info("no members file for address %d pool %d: a new pool", addr, pool)
    return got


def load_pool(path, addr, pool, now):
    """(members: addr -> `now`, node `addr` included; the meter address or None; what the
    file holds or None) of the last run, from the members file at `path` (None: kept in
    memory only); a missing, corrupt or foreign file gives an empty pool: the node alone."""
    got = None if path is None else load_members(path, addr, pool)
    members, meter = got if got is not None else ((), None)
    out = {}
    for a in members:
        out[a] = now  # silent since boot: forgotten GONE_HOLD_MS from now
    out[addr] = now
    return out, meter, None if got is None else (addr, pool, sorted(members), meter)


def save_members(path, want):
    """Writes want = (addr, pool, sorted members, meter address or None) to `path`."""
    try:
        atomicfile.save_json(path, {"addr": want[0], "pool": want[1],
                                    "members": want[2], "meter": want[3]})
    except OSError as e:
        _log.error("members file not written: %r", e)


def save_changed(path, want, saved):
    """Writes want = (addr, pool, sorted members, meter address or None) to `path` (None:
    members kept in memory only) unless `saved`, what the file holds, is the same.
    -> what the file holds now."""
    if path is not None and want != saved:
        save_members(path, want)
        return want
    return saved


def forget(members, addr, nodes, now, hold_ms):
    """Forgets every member (addr -> last heard) other than `addr` not in `nodes` and not
    heard for hold_ms. -> True when one was forgotten."""
    out = False
    for a in list(members):
        if a != addr and a not in nodes and time.ticks_diff(now, members[a]) > hold_ms:
            del members[a]
            out = True
            _log.warning("node %d silent for %d ms: no longer a member", a, hold_ms)
    return out


def has_quorum(addr, members, nodes):
    """True when more than half of `members` (addr -> last heard) are live (`nodes`
    heard, node `addr` included), or exactly half with the lowest member among them."""
    n = len(members) + (0 if addr in members else 1)
    low = addr
    for a in members:
        if a < low:
            low = a
    live = 1
    for a in nodes:  # heard nodes are members; be exact should one not be yet
        live += 1
        if a not in members:
            n += 1
        if a < low:
            low = a
    if 2 * live > n:
        return True
    return 2 * live == n and (low == addr or low in nodes)


def _parse(d, addr, pool):
    """(members, meter address or None) of a members file's object, or None when it is
    malformed or belongs to another address or pool id."""
    if type(d) is not dict or d.get("addr") != addr or d.get("pool") != pool:
        return None
    if type(d.get("addr")) is not int or type(d.get("pool")) is not int:
        return None
    members = d.get("members")
    if type(members) is not list or len(members) > MAX_NODES:
        return None
    for a in members:
        if type(a) is not int or not 1 <= a <= MAX_NODES:
            return None
    meter = d.get("meter")
    if meter is not None and (type(meter) is not int or not 1 <= meter <= MAX_NODES):
        return None
    return members, meter
