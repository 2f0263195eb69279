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
from evse.balance.planner import loaded, pool_w


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


def cap(bal, limit, raises):
    """The master's allocation under its tariff: (the pool limit capped by the tariff's
    plan, raises). With the tariff just set and no plan yet, nobody gets more than now
    (cuts only) until the power task has planned; without a power manager, nothing (the
    import is unknown)."""
    tf = getattr(bal.power, "tariff", None)
    t = 0.0 if bal.power is None else getattr(tf, "limit_a", None)
    if t is None:
        return limit, False
    return [min(x, t) for x in limit], raises
