# The capacity tariff of a load balancing pool (docs/load-balancing.md, "Capacity tariff
# in a pool"): on the master, which reads the grid meter, evse/tariff.py plans the rest of
# the window with the pool's own power in place of the charger's, over the phases the pool
# loads, and pauses below the pool's minimum; its limit caps the pool's budget on every
# phase before the planner shares it (evse/balance/node.py _allocate), so every node's
# allocation obeys it.
#
# Imported by evse/tariff.py only on a pool's master with tariff_limit_w set.
from evse import limits
from evse.balance.codec import ST_WANT, phases
from evse.balance.planner import MIN_ON_OLD_MS, cap_age, capped, loaded, mins, pool_w
from evse.power import RESUME_HOLD_MS, RESUME_HYST_A

_UNDER_A = 0.05  # the limit kept under the room one more node needs


def part(bal, pm, u, s):
    """(the pool's own power at voltage u at the reading of power manager `pm`, the number
    of phases the pool loads, the pool's minimum: the least current a node that needs
    current starts with, else the master's start current). bal: the master's Balancer."""
    nodes = [bal.me] + list(bal.nodes.values())
    low = None
    for n in nodes:
        if n.state == ST_WANT and (low is None or n.min_a < low):
            low = n.min_a
    if low is None:
        low = limits.start_a(s)
    return pool_w(pm, u, nodes[1:], bal.planner.sent), len(phases(loaded(nodes))), low


def offered(bal):
    """True while a node of the pool (the master included) offers current: the pool's
    charge has started (the tariff's resume waits solar_min_on_s after each start)."""
    if getattr(bal.ch, "offered_a", 0):
        return True
    for n in bal.nodes.values():
        if n.offered_a:
            return True
    return False


def cap(bal, now, limit, nodes, raises, only):
    """The master's allocation under its tariff: (the pool limit capped by the tariff's
    plan, raises, the addresses that may charge). With the tariff just set and no plan
    yet, nobody gets more than now (cuts only) until the power task has planned; without
    a power manager, nothing (the import is unknown). One more node starts only once the
    plan has covered the charging nodes' minimums and its own + RESUME_HYST_A for
    RESUME_HOLD_MS (until then the limit on its phases stays just under that, and then it
    starts at its minimum), and a node starts again only solar_min_on_s after its last
    start: a plan wavering around the room for a node neither starts nor stops it over
    and over (one charger's resume rule, node by node). When none charges (the tariff's
    own resume) one node starts, at its minimum + RESUME_HYST_A; a turn handed from one
    node to another needs no more room."""
    tf = getattr(bal.power, "tariff", None)
    t = 0.0 if bal.power is None else getattr(tf, "limit_a", None)
    if t is None:
        return limit, False, only
    limit = [min(x, t) for x in limit]
    if tf is None:
        return limit, raises, only
    pl = bal.planner
    starts = tf.pool_starts
    cap_age(starts, now, MIN_ON_OLD_MS)
    on = []
    wait = []
    for n in nodes:
        if n.state != ST_WANT or (only is not None and n.addr not in only):
            continue
        if pl.sent.get(n.addr, 0.0) > 0 or pl.charging.get(n.addr):  # its turn handed over
            on.append(n)
            if n.addr not in tf.pool_on:
                starts[n.addr] = now
        else:
            wait.append(n)
    tf.pool_on = tuple(n.addr for n in on)
    min_on = bal.settings["solar_min_on_s"] * 1000
    nxt = None
    barred = []  # started within solar_min_on_s: not again yet
    for n in wait:
        if n.addr in starts and not limits.held(now, starts[n.addr], min_on):
            barred.append(n.addr)
        elif nxt is None or n.min_a < nxt.min_a:
            nxt = n
    if barred:
        only = set(x.addr for x in on + wait) if only is None else set(only)
        for a in barred:
            only.discard(a)
    if nxt is None or not on:
        tf.pool_up = None
        if nxt is not None:  # the tariff's resume: one node starts, at its minimum + 1 A
            for p in phases(nxt.mask):
                limit[p] = min(limit[p], nxt.min_a + RESUME_HYST_A)
        return limit, raises, only
    need = [0.0, 0.0, 0.0]
    ps = phases(nxt.mask)
    for p in ps:
        need[p] = mins(on, p) + nxt.min_a
    if all(t >= need[p] + RESUME_HYST_A for p in ps):
        up = capped(tf.pool_up, now, MIN_ON_OLD_MS)
        up = tf.pool_up = now if up is None else up
        if limits.held(now, up, RESUME_HOLD_MS):
            for p in ps:  # it starts at its minimum, not on all the room the plan rose to
                limit[p] = min(limit[p], need[p] + RESUME_HYST_A)
            return limit, raises, only
    else:
        tf.pool_up = None
    for p in ps:  # not yet: room for those charging, not for one more
        limit[p] = min(limit[p], need[p] - _UNDER_A)
    return limit, raises, only
